//! What only the PostgreSQL backend has: its password never shows in an error, a URL with a
//! password is refused, TLS checks the server's chain and name (verify-full), a database with a
//! newer schema is refused, a multi-host URL finds the writable server, and every trust change
//! moves the change sequence the nodes follow, and a leader whose lease lapsed cannot write
//! after another node took over.

use std::path::Path;

use hsm_ca::secret::SecretSource;
use hsm_ca::state::{CaState, PgSettings, StateError, StoreBackend};

use super::support::postgres::{PgCluster, PgOptions};
use super::{intermediate, revocation, root, Backend, Postgres};

async fn connect(settings: PgSettings) -> Result<CaState, StateError> {
    CaState::connect(
        &StoreBackend::Postgres(settings),
        Path::new("/nonexistent"),
        1 << 20,
    )
    .await
}

async fn start(options: PgOptions) -> PgCluster {
    tokio::task::spawn_blocking(move || PgCluster::start_with(options))
        .await
        .expect("join")
}

fn assert_hidden(err: &StateError, secret: &str) {
    let shown = format!("{err} / {err:?}");
    assert!(!shown.contains(secret), "the password leaked: {shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_an_error() {
    let b = Postgres::new().await;
    let cluster = &b.cluster;
    // A wrong password: refused by the server, and the error does not repeat it.
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong");
    let secret = "wrong-Secret-4711";
    std::fs::write(&wrong, secret).expect("write");
    let settings =
        PgSettings::new(&cluster.url(), SecretSource::File(wrong), None, 2).expect("settings");
    assert!(!format!("{settings:?}").contains(secret));
    let err = connect(settings).await.expect_err("wrong password");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert_hidden(&err, secret);
    // The right password and a database that does not exist.
    let url = cluster.url().replace("/hsmca", "/nosuchdb");
    let err = connect(cluster.settings_for(&url))
        .await
        .expect_err("no database");
    assert_hidden(&err, &cluster.password);
    // Errors of a working connection.
    let state = b.open().await;
    assert!(!format!("{state:?}").contains(&cluster.password));
    cluster.psql("DROP TABLE roots");
    let err = state.roots().await.expect_err("no table");
    assert_hidden(&err, &cluster.password);
}

#[test]
fn a_url_with_a_password_is_refused() {
    for url in [
        "postgresql://hsmca:Pa55-word@127.0.0.1/hsmca",
        "host=127.0.0.1 user=hsmca password=Pa55-word dbname=hsmca",
    ] {
        let err = PgSettings::new(url, SecretSource::Env("X".into()), None, 2)
            .expect_err("password in the URL");
        assert!(err.contains("must not contain a password"), "{err}");
        assert!(!err.contains("Pa55"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_server_name_and_chain() {
    let right = start(PgOptions {
        tls_names: Some(vec!["127.0.0.1".into(), "localhost".into()]),
        ..PgOptions::default()
    })
    .await;
    // The right name and CA: connected (the server takes TLS connections only).
    let state = connect(right.settings()).await.expect("verify-full");
    assert!(state.add_root(root("aa", "t")).await.expect("add"));
    let state = connect(right.settings_for(&right.url_for("localhost")))
        .await
        .expect("by DNS name");
    assert_eq!(state.roots().await.expect("roots").len(), 1);
    // Without TLS the server refuses.
    let plain = PgSettings::new(
        &right.url(),
        SecretSource::File(right.password_file()),
        None,
        2,
    )
    .expect("settings");
    connect(plain).await.expect_err("plain connection");

    // A certificate for another name, from the configured CA: refused.
    let wrong = start(PgOptions {
        tls_names: Some(vec!["db.example".into()]),
        ..PgOptions::default()
    })
    .await;
    let err = connect(wrong.settings()).await.expect_err("wrong name");
    let text = format!("{err}");
    assert!(text.contains("certificate"), "{text}");
    assert!(text.to_lowercase().contains("name"), "{text}");
    // The right name from a CA that is not configured: refused.
    let other_ca = PgSettings::new(
        &right.url(),
        SecretSource::File(right.password_file()),
        wrong.ca_file.clone(),
        2,
    )
    .expect("settings");
    let err = connect(other_ca).await.expect_err("unknown CA");
    assert!(format!("{err}").contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trust_change_moves_the_change_sequence_and_notifies_also_one_made_in_sql() {
    let b = Postgres::new().await;
    let state = b.open().await;
    let seq = || async {
        state
            .change_sequence()
            .await
            .expect("seq")
            .expect("postgres")
    };
    let start = seq().await;
    state.add_root(root("aa", "t")).await.expect("add");
    let after_root = seq().await;
    assert!(after_root > start);
    // A refused duplicate changes nothing it would have to publish; a revocation does.
    state.revoke(revocation("aa", "01")).await.expect("revoke");
    let after_revoke = seq().await;
    assert!(after_revoke > after_root);
    // Reads and CRL numbers do not move it.
    state.snapshot().await.expect("snapshot");
    state.next_crl_number("aa").await.expect("crl number");
    assert_eq!(seq().await, after_revoke);
    // Each committed change also notifies a listening connection.
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let listening = {
        let wake = wake.clone();
        let settings = b.cluster.settings();
        tokio::spawn(async move {
            let listener = hsm_ca::state::PgState::open(&settings).await.expect("open");
            listener.listen_for_changes(&wake).await
        })
    };
    // The first wake says the LISTEN is in place.
    tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
        .await
        .expect("listening");
    state.revoke(revocation("aa", "02")).await.expect("revoke");
    tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
        .await
        .expect("a notification for the revocation");
    listening.abort();
    let after_second = seq().await;
    assert!(after_second > after_revoke);
    // A row written straight into the database is seen too.
    b.cluster
        .psql("DELETE FROM revocations WHERE serial = '01'");
    assert!(seq().await > after_second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_leaders_writes_are_refused_after_another_node_took_over() {
    use hsm_ca::state::{fenced, Fence};
    use std::time::Duration;
    let b = Postgres::new().await;
    let state = b.open().await;
    let CaState::Postgres(pg) = &state else {
        unreachable!("postgres")
    };
    let fence = |node: &str, epoch| Fence {
        node: node.into(),
        epoch,
    };
    let short = Duration::from_secs(1);
    let first = pg
        .acquire_leadership("a", short)
        .await
        .expect("take")
        .expect("a leads");
    assert_eq!(pg.acquire_leadership("b", short).await.expect("try"), None);
    assert_eq!(
        pg.acquire_leadership("a", short).await.expect("renew"),
        Some(first),
        "a renewal keeps the epoch"
    );
    fenced(fence("a", first), state.install(intermediate(1)))
        .await
        .expect("the leader writes");

    // a pauses past its lease; b takes over with a new epoch.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = pg
        .acquire_leadership("b", Duration::from_secs(30))
        .await
        .expect("take")
        .expect("b leads");
    assert!(second > first);
    let leader = pg.leader().await.expect("leader").expect("someone");
    assert_eq!(
        (leader.node.as_str(), leader.epoch, leader.live),
        ("b", second, true)
    );

    // a resumes: its write is refused and changes nothing; b's goes through.
    let err = fenced(fence("a", first), state.install(intermediate(2)))
        .await
        .expect_err("fenced");
    assert!(matches!(err, StateError::Fenced { .. }), "{err}");
    assert_eq!(state.intermediates().await.expect("list").len(), 1);
    fenced(fence("b", second), state.install(intermediate(2)))
        .await
        .expect("the new leader writes");
    assert_eq!(pg.acquire_leadership("a", short).await.expect("try"), None);

    // A clean stop gives the lease up at once.
    pg.release_leadership("b").await.expect("release");
    let third = pg.acquire_leadership("a", short).await.expect("take");
    assert!(third.is_some_and(|e| e > second), "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_a_newer_schema_is_refused() {
    let b = Postgres::new().await;
    let state = b.open().await;
    state.add_root(root("aa", "t")).await.expect("add");
    drop(state);
    let newer = hsm_ca::state::postgres::SCHEMA_VERSION + 1;
    b.cluster.psql(&format!(
        "INSERT INTO schema_migrations (version) VALUES ({newer})"
    ));
    let err = connect(b.cluster.settings())
        .await
        .expect_err("newer schema");
    assert!(
        matches!(err, StateError::SchemaTooNew { found, .. } if found == newer),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
    // Nothing was changed by the refused start.
    let version = b.cluster.psql("SELECT max(version) FROM schema_migrations");
    assert_eq!(version.trim(), newer.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_and_a_second_start_finds_the_schema() {
    let b = Postgres::new().await;
    let (first, second) = tokio::join!(b.open(), b.open());
    first.add_root(root("aa", "t")).await.expect("add");
    assert_eq!(second.roots().await.expect("roots").len(), 1);
    let versions = b.cluster.psql("SELECT count(*) FROM schema_migrations");
    assert_eq!(
        versions.trim(),
        hsm_ca::state::postgres::SCHEMA_VERSION.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_url_reaches_the_writable_server() {
    let standby = start(PgOptions {
        read_only: true,
        ..PgOptions::default()
    })
    .await;
    let primary = start(PgOptions::default()).await;
    // Same role and password on both, as on a primary and its standby.
    let password = primary.password.clone();
    standby.psql_in(
        "postgres",
        &[&format!("ALTER ROLE hsmca PASSWORD '{password}'")],
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!(
        "postgresql://hsmca@127.0.0.1:{dead},127.0.0.1:{},127.0.0.1:{}/hsmca\
         ?target_session_attrs=read-write&connect_timeout=2",
        standby.port, primary.port
    );
    let state = connect(primary.settings_for(&url))
        .await
        .expect("the writable host");
    assert!(state.add_root(root("aa", "t")).await.expect("add"));
    let on_primary = primary.psql("SELECT count(*) FROM roots");
    assert_eq!(on_primary.trim(), "1");
    // Without read-write, the first reachable host (the read-only one) is taken, and a
    // change fails there.
    let any = url.replace("target_session_attrs=read-write&", "");
    let err = connect(primary.settings_for(&any))
        .await
        .expect_err("a read-only server cannot migrate");
    assert!(err.to_string().contains("read-only"), "{err}");
}

/// The key id of the intermediate `state` issues with.
async fn active_key(state: &CaState) -> Option<Vec<u8>> {
    state.active().await.expect("active").map(|r| r.key_id.0)
}

/// Activates `key` in `state` at `now`; the activation must take place.
async fn activate(state: &CaState, key: &hsm_ca::keystore::KeyId, now: &str) {
    let done = state.activate(key, now).await.expect("activate");
    assert!(
        matches!(done, hsm_ca::state::Transition::Done(..)),
        "{done:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_activates_only_its_own_intermediates_and_issues_with_its_own() {
    use hsm_ca::state::{IntermediateStatus, Transition};
    let b = Postgres::new().await;
    let (a, c) = (b.open().await, b.open().await);
    let (CaState::Postgres(pa), CaState::Postgres(pc)) = (&a, &c) else {
        unreachable!("postgres");
    };
    pa.own_intermediates("a");
    pc.own_intermediates("c");
    let shared = b.open().await;
    shared.install(intermediate(1)).await.expect("shared");
    // Until a node has its own, it issues with the shared one; its first own one is then
    // prepared and activated through the usual gates, and serves that node alone.
    assert_eq!(active_key(&a).await, Some(vec![1]));
    let own_a = a.install(intermediate(2)).await.expect("install");
    assert_eq!(
        (own_a.status, own_a.node.as_str()),
        (IntermediateStatus::Prepared, "a")
    );
    activate(&a, &own_a.key_id, "2030-01-15T00:00:00Z").await;
    let own_c = c.install(intermediate(3)).await.expect("install");
    assert_eq!(own_c.status, IntermediateStatus::Prepared);
    activate(&c, &own_c.key_id, "2030-01-15T00:00:00Z").await;
    assert_eq!(active_key(&a).await, Some(vec![2]));
    assert_eq!(active_key(&c).await, Some(vec![3]));
    assert_eq!(active_key(&shared).await, Some(vec![1]));
    let snapshot = c.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.intermediates.len(), 3);
    assert_eq!(snapshot.active().map(|r| r.key_id.0.clone()), Some(vec![3]));
    // A's next one is prepared; C cannot activate it, A can, and C keeps its own.
    let next_a = a.install(intermediate(4)).await.expect("install");
    assert_eq!(next_a.status, IntermediateStatus::Prepared);
    match c
        .activate(&next_a.key_id, "2030-02-01T00:00:00Z")
        .await
        .expect("activate")
    {
        Transition::Refused(why) => assert!(why.contains("belongs to node a"), "{why}"),
        other => panic!("{other:?}"),
    }
    activate(&a, &next_a.key_id, "2030-02-01T00:00:00Z").await;
    assert_eq!(active_key(&a).await, Some(vec![4]));
    assert_eq!(active_key(&c).await, Some(vec![3]));
}
