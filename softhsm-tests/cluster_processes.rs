//! Appliances as real `hsm-ca serve` processes on one PostgreSQL server (Debian's, started by
//! the test), failing the ways machines fail: the leader killed with `kill -9` (another node
//! leads within the lease, CRL numbers keep growing) and a paused leader resumed after another
//! took over (it writes nothing); a node killed under continuous load (clients that know every
//! node's address get their certificates from another, and every certificate handed out is in
//! the database once the node is back); the database primary killed and a synchronous standby
//! promoted (the nodes find it on their own and no answered issuance is lost); the database
//! stopped for a while (what the README promises for each `[audit] require_shipped` mode, and
//! full recovery).
//!
//! Until each node has its own intermediate, the nodes share one SoftHSM token (SoftHSM's file
//! store is safe for several processes), each with its own data directory, config, node id and
//! listeners on 127.0.0.1.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_ca::cluster::{LEADER_LEASE, LEADER_RENEW};
use serde_json::json;
use support::postgres::{connect, pg, PgCluster};
use support::processes::{issued_more, metric, shipped_serials, wait_for, Ca, Load, Node};

/// Leader-only work that acts at every check: an intermediate lives a day, its successor is
/// prepared after 1 s of its life and activated after 2 s.
const ROTATING: &str = "[intermediate]\nvalidity_days = 1\n[rotation]\nauto = true\n\
                        prepare_at = 0.00001\nactivate_at = 0.00002\ncheck_interval_secs = 1\n";

async fn database() -> PgCluster {
    tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join")
}

/// Starts nodes `ids` one after the other (the first makes the row-signing key they share).
fn start_nodes(ca: &Ca, db: &PgCluster, url: &str, ids: &[&str], extra: &str) -> Vec<Node> {
    ids.iter()
        .map(|id| {
            let config = ca.config(id, url, &db.password_file(), extra);
            tokio::task::block_in_place(|| Node::start(ca, id, &config))
        })
        .collect()
}

/// The live leader's node id and epoch, when another than `not` leads.
async fn leader_other_than(db: &hsm_ca::state::CaState, not: &str) -> Option<(String, u64)> {
    let leader = pg(db).leader().await.ok()??;
    (leader.live && leader.node != not).then_some((leader.node, leader.epoch))
}

/// The CRL number of the CRL `node` serves for the CA `fp`.
async fn crl_number(ca: &Ca, node: &Node, fp: &str) -> u64 {
    use x509_parser::prelude::FromDer;
    let reply = ca.admin(node.admin).get(&format!("/crl/{fp}.crl")).await;
    assert_eq!(reply.status, 200, "{}: {}", node.id, reply.text());
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&reply.body)
        .expect("crl");
    crl.crl_number()
        .expect("a CRL number")
        .to_string()
        .parse()
        .expect("u64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_lease_and_a_paused_one_writes_nothing() {
    let db = database().await;
    let ca = Ca::prepare(&db.settings()).await;
    let extra = format!("{ROTATING}[audit]\nrequire_shipped = true\n");
    let mut nodes = start_nodes(&ca, &db, &db.url(), &["n1", "n2", "n3"], &extra);
    let state = connect(&db.settings()).await;
    let (first, _) = wait_for(Duration::from_secs(20), "a leader", || {
        leader_other_than(&state, "")
    })
    .await;

    // Two leaves from one intermediate; the first revoked, then every node's CRL for it.
    let token = ca.workload_token();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let (leaves, issuer) = loop {
        let (s1, i1, _) = ca.request(&addrs, &token).await.expect("issued");
        let (s2, i2, _) = ca.request(&addrs, &token).await.expect("issued");
        if i1 == i2 {
            break ([s1, s2], i1);
        }
    };
    let fp = hsm_ca::ca::fingerprint_id(&issuer);
    // Rotation moves on: each leaf is revoked under the intermediate that issued it.
    let key_id = state
        .intermediates()
        .await
        .expect("intermediates")
        .into_iter()
        .find(|r| {
            hsm_ca::ca::certificates_from_pem(r.certificate_pem.as_bytes())
                .is_ok_and(|d| hsm_ca::ca::fingerprint_id(&d[0]) == fp)
        })
        .expect("the issuer is installed")
        .key_id
        .to_string();
    let revoke = |node: &Node, serial: &str| {
        let admin = ca.admin(node.admin);
        let body = json!({"serial": serial, "issuer": key_id});
        async move { admin.post("/v1/revocations", body).await }
    };
    let survivor = nodes.iter().find(|n| n.id != first).expect("a follower");
    let reply = revoke(survivor, &leaves[0]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut before = Vec::new();
    for node in &nodes {
        before.push(crl_number(&ca, node, &fp).await);
    }

    // kill -9 of the leader: another node leads once the lease lapsed, before one more renewal.
    let killed_at = Instant::now();
    nodes
        .iter_mut()
        .find(|n| n.id == first)
        .expect("leader")
        .kill();
    let limit = LEADER_LEASE + LEADER_RENEW * 2 + Duration::from_secs(3);
    let (second, epoch) =
        wait_for(limit, "a new leader", || leader_other_than(&state, &first)).await;
    let took = killed_at.elapsed();
    assert!(took <= LEADER_LEASE + LEADER_RENEW * 2, "{took:?}");

    // A revocation through a survivor: the CRLs now served carry higher numbers than any
    // served before, whichever node signs them.
    let alive: Vec<&Node> = nodes.iter().filter(|n| n.id != first).collect();
    let reply = revoke(alive[1], &leaves[1]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mut after = Vec::new();
    for node in &alive {
        after.push(crl_number(&ca, node, &fp).await);
    }
    let mut all = before.clone();
    all.extend(&after);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        all.len(),
        "{all:?}"
    );
    assert!(
        after.iter().min() > before.iter().max(),
        "before {before:?}, after {after:?}"
    );

    // The registry shows the killed node not live within 15 s of its last heartbeat.
    wait_for(
        Duration::from_secs(20),
        "the killed node shown not live",
        || {
            let admin = ca.admin(alive[0].admin);
            let first = first.clone();
            async move {
                let nodes = admin.get("/v1/nodes").await.json();
                let gone = nodes["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["node_id"] == json!(first) && n["live"] == false);
                gone.then_some(())
            }
        },
    )
    .await;
    assert!(killed_at.elapsed() <= Duration::from_secs(15) + LEADER_RENEW * 2);

    // The new leader paused right after renewing its lease (inside its leader-only step), a
    // third node takes over; resumed, the old one writes nothing and says it lost the lease.
    let paused = alive
        .iter()
        .find(|n| n.id == second)
        .expect("the new leader");
    let third = alive
        .iter()
        .find(|n| n.id != second)
        .expect("the third")
        .id
        .clone();
    pause_after_renewal(&db, paused).await;
    let (now_leads, third_epoch) = wait_for(limit, "the third node leads", || {
        leader_other_than(&state, &second)
    })
    .await;
    assert_eq!(now_leads, third);
    assert!(third_epoch > epoch);
    // The rotation's writes to the shared state, as its node's chain in the database records
    // them (each after its write committed).
    let rotations = |node: &str| {
        db.psql(&format!(
            "SELECT count(*) FROM audit_records WHERE node_id = '{node}' AND \
             convert_from(stored, 'UTF8') LIKE '%hsm-ca:auto-rotation%' AND \
             (convert_from(stored, 'UTF8') LIKE '%\"kind\":\"certificate_installed\"%' OR \
              convert_from(stored, 'UTF8') LIKE '%\"kind\":\"activated\"%')"
        ))
        .trim()
        .parse::<u64>()
        .expect("count")
    };
    // Whoever leads runs the job, and it writes: the paused node did while it led, the
    // third does now.
    let written_before = rotations(&second);
    assert!(written_before >= 1, "{}", paused.log());
    wait_for(limit, "the third node rotates", || {
        let n = rotations(&third);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let logged_before = paused.log().len();
    paused.signal("CONT");
    let resumed = wait_for(limit, "the resumed node notices", || {
        let log = paused.log()[logged_before..].to_string();
        let noticed = log.contains("another node leads") || log.contains("no longer the leader");
        async move { noticed.then_some(log) }
    })
    .await;
    // Stopped between its renewal and its step's write, it finds the write refused
    // (`the write was refused`); stopped elsewhere, it finds another leader first.
    tokio::time::sleep(LEADER_RENEW).await;
    let resumed = format!(
        "{resumed}{}",
        &paused.log()[logged_before + resumed.len()..]
    );
    assert!(!resumed.contains("automatic rotation: "), "{resumed}");
    assert_eq!(rotations(&second), written_before);
    let leader = pg(&state).leader().await.expect("leader").expect("one");
    assert_eq!((leader.node, leader.epoch), (third, third_epoch));
    // Both survivors still issue.
    for node in &alive {
        ca.request(&[node.grpc], &token).await.expect("issues");
    }
}

/// Sends SIGSTOP to `node` right after the database shows it renewed its lease, so it stops
/// between the renewal and its leader-only step.
async fn pause_after_renewal(db: &PgCluster, node: &Node) {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=hsmca dbname=hsmca password={}",
            db.port, db.password
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    let expiry = || async {
        client
            .query_one("SELECT expires_at::text, node_id FROM leader", &[])
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .expect("leader row")
    };
    let (start, holder) = expiry().await;
    assert_eq!(holder, node.id);
    let deadline = Instant::now() + LEADER_RENEW * 3;
    while expiry().await.0 == start {
        assert!(Instant::now() < deadline, "{} did not renew", node.id);
    }
    node.signal("STOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_certificate() {
    let db = database().await;
    let ca = Arc::new(Ca::prepare(&db.settings()).await);
    let mut nodes = start_nodes(&ca, &db, &db.url(), &["n1", "n2"], "");
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();

    // Clients that know both addresses, under way; one node killed; they keep getting
    // certificates from the other.
    let load = Load::start(&ca, &addrs, 3);
    issued_more(&load, 20, Duration::from_secs(60)).await;
    nodes[1].kill();
    let killed_after = load.issued();
    issued_more(&load, 20, Duration::from_secs(60)).await;
    let (answers, errors) = load.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    let answered_by = |range: &[(String, SocketAddr)]| {
        range
            .iter()
            .map(|(_, a)| *a)
            .collect::<HashSet<SocketAddr>>()
    };
    assert_eq!(
        answered_by(&answers[..killed_after]).len(),
        2,
        "both nodes served"
    );
    // Requests in flight at the kill may still be answered by it; later ones are not.
    assert_eq!(
        answered_by(&answers[killed_after + 3..]),
        HashSet::from([addrs[0]])
    );
    let serials: Vec<String> = answers.into_iter().map(|(s, _)| s).collect();
    assert_eq!(serials.iter().collect::<HashSet<_>>().len(), serials.len());

    // Back on its own data directory, the killed node ships what it had not: every
    // certificate a client received is in the database, and both chains verify.
    tokio::task::block_in_place(|| nodes[1].spawn());
    let missing = wait_for(Duration::from_secs(30), "every issuance shipped", || {
        let shipped = shipped_serials(&db);
        let missing: Vec<&String> = serials.iter().filter(|s| !shipped.contains(*s)).collect();
        async move { missing.is_empty().then_some(missing.len()) }
    })
    .await;
    assert_eq!(missing, 0);
    let state = connect(&db.settings()).await;
    let chains = hsm_ca::cluster::shipped_chains(pg(&state))
        .await
        .expect("chains");
    assert_eq!(chains.len(), 2);
    for chain in &chains {
        let summary = hsm_ca::cluster::verify_shipped(chain).expect("verifies");
        assert!(summary.signatures_checked, "{}", chain.node);
    }
    for node in &nodes {
        let verify = ca.admin(node.admin).get("/v1/audit/verify").await.json();
        assert_eq!(verify["verified"], true, "{}: {verify}", node.id);
    }
}

/// Whether `node` answers a certificate request on its own address.
async fn issues(ca: &Ca, node: &Node, token: &str) -> Result<String, String> {
    ca.request(&[node.grpc], token)
        .await
        .map(|(serial, _, _)| serial)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_is_found_and_no_answered_issuance_is_lost() {
    let primary = database().await;
    let standby = tokio::task::block_in_place(|| primary.standby());
    primary.require_synchronous_standby();
    wait_for(Duration::from_secs(30), "a synchronous standby", || {
        let state = primary.psql("SELECT sync_state FROM pg_stat_replication");
        async move { (state.trim() == "sync").then_some(()) }
    })
    .await;
    let url = format!(
        "postgresql://hsmca@127.0.0.1:{},127.0.0.1:{}/hsmca?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let ca = Arc::new(Ca::prepare(&primary.settings_for(&url)).await);
    let extra = "[audit]\nrequire_shipped = true\nship_timeout_secs = 2\n";
    let nodes = start_nodes(&ca, &primary, &url, &["n1", "n2"], extra);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();

    let load = Load::start(&ca, &addrs, 2);
    issued_more(&load, 10, Duration::from_secs(60)).await;
    tokio::task::block_in_place(|| primary.stop("immediate"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| standby.promote());

    // Each node issues again on its own, through the promoted standby.
    let token = ca.workload_token();
    for node in &nodes {
        wait_for(
            Duration::from_secs(60),
            "issuing after the failover",
            || {
                let (ca, token) = (ca.clone(), token.clone());
                async move { issues(&ca, node, &token).await.ok() }
            },
        )
        .await;
    }
    issued_more(&load, 10, Duration::from_secs(60)).await;
    let (answers, _) = load.finish().await;
    let serials: Vec<String> = answers.into_iter().map(|(s, _)| s).collect();

    // Every answered issuance was committed on the standby before its answer: none is missing
    // there, without waiting for anything to be shipped.
    let shipped = shipped_serials(&standby);
    let missing: Vec<&String> = serials.iter().filter(|s| !shipped.contains(*s)).collect();
    // Admin changes reach the promoted database too.
    let reply = ca
        .admin(nodes[1].admin)
        .post("/v1/revocations", json!({"serial": serials[0]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        missing.is_empty(),
        "{} of {} missing",
        missing.len(),
        serials.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopped_for_ten_seconds_and_back() {
    let db = database().await;
    let ca = Arc::new(Ca::prepare(&db.settings()).await);
    let strict_extra = "[audit]\nrequire_shipped = true\nship_timeout_secs = 2\n";
    let strict = start_nodes(&ca, &db, &db.url(), &["strict"], strict_extra).remove(0);
    let relaxed = start_nodes(&ca, &db, &db.url(), &["relaxed"], "").remove(0);
    let token = ca.workload_token();
    let mut received = vec![
        issues(&ca, &strict, &token).await.expect("strict issues"),
        issues(&ca, &relaxed, &token).await.expect("relaxed issues"),
    ];

    let stopped_at = Instant::now();
    tokio::task::block_in_place(|| db.stop("fast"));
    // The relaxed node issues from the state it last published; the strict one withholds the
    // certificate (UNAVAILABLE, which clients retry elsewhere).
    received.push(
        issues(&ca, &relaxed, &token)
            .await
            .expect("issues while down"),
    );
    let refused = issues(&ca, &strict, &token).await.expect_err("withheld");
    assert!(refused.contains("Unavailable"), "{refused}");
    // An admin change needs the database: 503, to be retried, naming the database.
    let reply = ca
        .admin(relaxed.admin)
        .post("/v1/revocations", json!({"serial": received[0]}))
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("database"), "{}", reply.text());
    // Shipping falls behind, on /metrics; after 10 s of failures /readyz says so: a warning on
    // the relaxed node, a reason not to route to the strict one.
    while stopped_at.elapsed() < Duration::from_secs(11) {
        received.push(
            issues(&ca, &relaxed, &token)
                .await
                .expect("issues while down"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = ca.admin(relaxed.admin).get("/metrics").await.text();
    let lag = metric(&metrics, "hsmca_audit_shipping_lag_records").expect("lag");
    assert!(lag >= 2.0, "{metrics}");
    let ready = ca.admin(relaxed.admin).get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        ready.text().contains("audit shipping has failed"),
        "{}",
        ready.text()
    );
    let ready = ca.admin(strict.admin).get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("audit shipping"), "{}", ready.text());

    // Back: the strict node issues again, everything is shipped, admin changes work.
    tokio::task::block_in_place(|| db.start_again());
    let back_at = Instant::now();
    received.push(
        wait_for(
            Duration::from_secs(30),
            "the strict node issues again",
            || {
                let (ca, token, strict) = (ca.clone(), token.clone(), &strict);
                async move { issues(&ca, strict, &token).await.ok() }
            },
        )
        .await,
    );
    let recovered = back_at.elapsed();
    wait_for(Duration::from_secs(30), "everything shipped", || {
        let shipped = shipped_serials(&db);
        let all = received.iter().all(|s| shipped.contains(s));
        async move { all.then_some(()) }
    })
    .await;
    for node in [&strict, &relaxed] {
        let metrics = ca.admin(node.admin).get("/metrics").await.text();
        assert_eq!(
            metric(&metrics, "hsmca_audit_shipping_lag_records"),
            Some(0.0),
            "{}",
            node.id
        );
    }
    let withheld = db.psql(
        "SELECT count(*) FROM audit_records WHERE node_id = 'strict' AND \
         convert_from(stored, 'UTF8') LIKE '%\"kind\":\"not_issued\"%'",
    );
    assert!(
        withheld.trim().parse::<u64>().expect("count") >= 1,
        "{withheld}"
    );
    let reply = ca
        .admin(relaxed.admin)
        .post("/v1/revocations", json!({"serial": received[0]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(recovered < Duration::from_secs(30));
    // Both nodes report to the registry again, and one of them leads.
    wait_for(
        LEADER_LEASE + LEADER_RENEW * 2,
        "both live, one leading",
        || {
            let admin = ca.admin(relaxed.admin);
            let settings = db.settings();
            async move {
                let nodes = admin.get("/v1/nodes").await.json();
                let live = nodes["nodes"]
                    .as_array()?
                    .iter()
                    .filter(|n| n["live"] == true)
                    .count();
                let leader = pg(&connect(&settings).await).leader().await.ok()??;
                (live == 2 && leader.live).then_some(())
            }
        },
    )
    .await;
    // The relaxed node said once that it could not follow the others' changes.
    let log = relaxed.log();
    assert_eq!(
        log.matches("cannot follow the shared state's changes")
            .count(),
        1,
        "{log}"
    );
}

/// Certificates per second that `clients` clients get from `addrs` over `span`.
async fn rate(ca: &Arc<Ca>, addrs: &[SocketAddr], clients: usize, span: Duration) -> f64 {
    let load = Load::start(ca, addrs, clients);
    tokio::time::sleep(span).await;
    let (answers, errors) = load.finish().await;
    assert!(errors.is_empty(), "{errors:?}");
    answers.len() as f64 / span.as_secs_f64()
}

/// Figures, not a check: how long a client whose node was killed waits for its certificate,
/// how far audit shipping falls behind under load, and the issuance rate of one node against
/// two on this machine. Run with
/// `cargo test --test cluster_processes -- --ignored --nocapture figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
#[allow(clippy::print_stdout, reason = "prints figures")]
async fn figures_failover_and_scaling() {
    let db = database().await;
    let ca = Arc::new(Ca::prepare(&db.settings()).await);
    let mut nodes = start_nodes(&ca, &db, &db.url(), &["n1", "n2"], "");
    let token = ca.workload_token();

    // Client failover: a client knowing both addresses; the node that answered its last
    // request is killed; the time until its next certificate. Five rounds.
    let mut waits = Vec::new();
    for _ in 0..5 {
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
        let (_, _, used) = ca.request(&addrs, &token).await.expect("issued");
        let node = nodes.iter_mut().find(|n| n.grpc == used).expect("node");
        let killed_at = Instant::now();
        node.kill();
        ca.request(&addrs, &token).await.expect("failed over");
        waits.push(killed_at.elapsed());
        tokio::task::block_in_place(|| node.spawn());
    }
    waits.sort();
    println!(
        "client failover after kill -9 of its node, 5 rounds: median {:?}, max {:?}",
        waits[2], waits[4]
    );

    // Issuance rate, one node then both, 4 clients each; shipping lag sampled meanwhile.
    let span = Duration::from_secs(8);
    let one = rate(&ca, &[nodes[0].grpc], 4, span).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.grpc).collect();
    let sampling = {
        let (ca, admins) = (
            ca.clone(),
            nodes.iter().map(|n| n.admin).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let mut lags = Vec::new();
            let until = Instant::now() + span;
            while Instant::now() < until {
                for admin in &admins {
                    let text = ca.admin(*admin).get("/metrics").await.text();
                    lags.extend(metric(&text, "hsmca_audit_shipping_lag_records"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lags
        })
    };
    let two = rate(&ca, &addrs, 4, span).await;
    let mut lags = sampling.await.expect("sampling");
    lags.sort_by(f64::total_cmp);
    println!(
        "audit shipping lag under load ({} samples over both nodes): p50 {} records, max {}",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    println!(
        "issuance, 4 clients: 1 node {one:.1}/s, 2 nodes {two:.1}/s, ratio {:.2} \
         (2 cores shared by clients, nodes and PostgreSQL: overhead, not scaling)",
        two / one
    );
}
