//! What someone with write access to the shared database can no longer do to a sealed table:
//! delete a revocation, edit an intermediate's status, lower a CRL number, put back an older
//! copy of a table, or delete a seal and have it made again. Every reader and writer refuses
//! the table (`StateError::Untrusted`) until it matches its seal again, and a root row nobody
//! signed is ignored without stopping the table.

use std::path::Path;
use std::sync::Arc;

use hsm_ca::state::rows::{RowSign, RowTrust};
use hsm_ca::state::{CaState, StateError, StoreBackend};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::support::postgres::PgCluster;
use super::{intermediate, revocation, root, Backend, Sealed};

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Opens the database of `cluster` as a node with the member key `pkcs8` opens it, keeping the
/// seals it saw in `seen` (a node's own disk) when given, and seals what has no seal yet.
pub async fn try_open_sealed(
    cluster: &PgCluster,
    pkcs8: &[u8],
    seen: Option<&Path>,
) -> Result<CaState, StateError> {
    let state = CaState::connect(
        &StoreBackend::Postgres(cluster.settings()),
        Path::new("/nonexistent"),
        1 << 20,
    )
    .await?;
    let CaState::Postgres(pg) = &state else {
        unreachable!("a PostgreSQL backend");
    };
    let rng = ring::rand::SystemRandom::new();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng).expect("key");
    let spki = [&P256_SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
    let sign: RowSign = Arc::new(move |message: &[u8]| {
        pair.sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| e.to_string())
    });
    let mut trust =
        RowTrust::new(sign, &spki, &[], Arc::new(|_: &str, _: &str| {})).expect("trust");
    if let Some(seen) = seen {
        trust = trust.with_seen_file(seen.to_path_buf()).expect("seen file");
    }
    pg.trust_rows(Arc::new(trust));
    pg.seal_unsealed().await?;
    Ok(state)
}

pub async fn open_sealed(cluster: &PgCluster, pkcs8: &[u8], seen: Option<&Path>) -> CaState {
    try_open_sealed(cluster, pkcs8, seen)
        .await
        .expect("open sealed")
}

/// The table a refusal names, or a panic naming what came instead.
fn untrusted<T: std::fmt::Debug>(result: Result<T, StateError>) -> String {
    match result {
        Err(StateError::Untrusted { table, .. }) => table,
        other => panic!("expected the table to be refused, got {other:?}"),
    }
}

fn rejected(state: &CaState) -> u64 {
    match state {
        CaState::Postgres(pg) => pg.row_trust().expect("row trust").rejected(),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_deleted_in_sql_makes_every_reader_and_writer_refuse_the_table() {
    let b = Sealed::new().await;
    let state = b.open().await;
    state.revoke(revocation("aa", "01")).await.expect("revoke");
    state.revoke(revocation("aa", "02")).await.expect("revoke");
    assert_eq!(state.revocations("aa").await.expect("read").len(), 2);
    b.cluster
        .psql("CREATE TABLE kept AS SELECT * FROM revocations WHERE serial = '01'");
    b.cluster
        .psql("DELETE FROM revocations WHERE serial = '01'");

    // Un-revoking by deleting the row does not work: every node refuses the table rather
    // than read it short.
    assert_eq!(untrusted(state.revocations("aa").await), "revocations");
    assert_eq!(untrusted(state.snapshot().await), "revocations");
    assert!(rejected(&state) > 0, "the refusal is counted");
    let other_node = open_sealed(&b.cluster, &b.key, None).await;
    assert_eq!(untrusted(other_node.revocations("aa").await), "revocations");
    // Nor is the deletion sealed by the next revocation.
    assert_eq!(
        untrusted(state.revoke(revocation("aa", "03")).await),
        "revocations"
    );
    // A handle without the node key does not write a sealed table at all.
    let plain = b.plain().await;
    assert!(matches!(
        plain.revoke(revocation("aa", "04")).await,
        Err(StateError::Conflict(_))
    ));

    // Put back as it was, the table is read again, with neither refused write in it.
    b.cluster.psql("INSERT INTO revocations SELECT * FROM kept");
    let serials: Vec<String> = state
        .revocations("aa")
        .await
        .expect("read")
        .into_iter()
        .map(|r| r.serial)
        .collect();
    assert_eq!(serials, ["01", "02"]);
    state.revoke(revocation("aa", "03")).await.expect("revoke");
    assert_eq!(other_node.revocations("aa").await.expect("read").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_rolled_back_to_an_older_seal_is_refused_also_after_a_restart() {
    let b = Sealed::new().await;
    let state = b.open().await;
    state.revoke(revocation("aa", "01")).await.expect("revoke");
    b.cluster
        .psql("CREATE TABLE old_revocations AS SELECT * FROM revocations");
    b.cluster
        .psql("CREATE TABLE old_seal AS SELECT * FROM seals WHERE name = 'revocations'");
    state.revoke(revocation("aa", "02")).await.expect("revoke");
    assert_eq!(state.revocations("aa").await.expect("read").len(), 2);

    // The whole table and its seal put back as they were before the second revocation: a
    // consistent, validly signed, older state.
    b.cluster.psql("DELETE FROM revocations");
    b.cluster
        .psql("INSERT INTO revocations SELECT * FROM old_revocations");
    b.cluster.psql(
        "UPDATE seals SET sequence = o.sequence, digest = o.digest, signature = o.signature \
         FROM old_seal o WHERE seals.name = 'revocations'",
    );
    assert_eq!(untrusted(state.revocations("aa").await), "revocations");
    drop(state);
    // A restarted node remembers the newest seal it saw on its own disk.
    let restarted = b.open().await;
    assert_eq!(untrusted(restarted.revocations("aa").await), "revocations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_intermediates_and_crl_numbers_are_refused_and_an_unsigned_root_ignored() {
    let b = Sealed::new().await;
    let state = b.open().await;
    state.install(intermediate(1)).await.expect("install");
    state.install(intermediate(2)).await.expect("install");
    state.add_root(root("aa", "t1")).await.expect("root");
    assert_eq!(state.next_crl_number("aa").await.expect("number"), 1);
    assert_eq!(state.next_crl_number("aa").await.expect("number"), 2);

    // A root inserted with SQL is not signed: ignored, and the bundle still reads.
    b.cluster.psql(
        "INSERT INTO roots (fingerprint, added_at, record) \
         SELECT 'bb', added_at, jsonb_set(record, '{fingerprint}', '\"bb\"') FROM roots",
    );
    let roots: Vec<String> = state
        .roots()
        .await
        .expect("roots")
        .into_iter()
        .map(|r| r.fingerprint)
        .collect();
    assert_eq!(roots, ["aa"]);
    assert!(state.add_root(root("cc", "t2")).await.expect("root"));
    assert_eq!(state.roots().await.expect("roots").len(), 2);

    // The prepared intermediate's record edited to say "active": refused.
    b.cluster.psql(
        "UPDATE intermediates SET record = jsonb_set(record, '{status}', '\"active\"') \
         WHERE key_id = '02'",
    );
    assert_eq!(untrusted(state.intermediates().await), "intermediates");
    assert_eq!(untrusted(state.active().await), "intermediates");

    // A CRL number lowered to be used again: refused, no number handed out.
    b.cluster
        .psql("UPDATE crl_numbers SET last_number = 1 WHERE issuer = 'aa'");
    assert_eq!(untrusted(state.next_crl_number("aa").await), "crl_numbers");
    b.cluster
        .psql("UPDATE crl_numbers SET last_number = 2 WHERE issuer = 'aa'");
    assert_eq!(state.next_crl_number("aa").await.expect("number"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_seal_is_not_made_again_by_a_node_that_saw_it() {
    let b = Sealed::new().await;
    let state = b.open().await;
    state.revoke(revocation("aa", "01")).await.expect("revoke");
    assert_eq!(state.revocations("aa").await.expect("read").len(), 1);
    b.cluster.psql("DELETE FROM revocations");
    b.cluster
        .psql("DELETE FROM seals WHERE name = 'revocations'");
    assert_eq!(untrusted(state.revocations("aa").await), "revocations");
    drop(state);
    let refused = try_open_sealed(&b.cluster, &b.key, Some(&b.seen_file())).await;
    assert_eq!(untrusted(refused), "revocations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_sealed_an_unsigned_root_is_never_adopted_even_one_a_node_knows() {
    let b = Sealed::new().await;
    let state = b.open().await;
    // A root this node knows from its own files, removed by the officers since…
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("root");
    let fp = hsm_ca::ca::fingerprint_id(cert.der());
    let mut record = root(&fp, "t1");
    record.certificate_pem = cert.pem();
    state.add_root(record.clone()).await.expect("add");
    assert!(state.remove_root(&fp).await.expect("remove"));
    // …put back by someone with database access, unsigned: a restart does not adopt it.
    let json = serde_json::to_string(&record).expect("json");
    b.cluster.psql(&format!(
        "INSERT INTO roots (fingerprint, added_at, record) VALUES ('{fp}', 't1', '{json}'::jsonb)"
    ));
    let CaState::Postgres(pg) = &state else {
        unreachable!()
    };
    assert_eq!(
        pg.adopt_roots(std::slice::from_ref(&fp))
            .await
            .expect("adopt"),
        0
    );
    assert_eq!(state.roots().await.expect("roots"), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_number_lowered_while_the_node_waits_for_its_row_is_not_sealed() {
    use std::str::FromStr;
    let b = Sealed::new().await;
    let state = b.open().await;
    for n in 1..=5 {
        assert_eq!(state.next_crl_number("aa").await.expect("number"), n);
    }
    // Someone with database access holds the row, lowers it, and lets go while the node's
    // statement waits for it: the number the database then hands out is not the sealed one's
    // successor, and is refused rather than sealed.
    let mut config = tokio_postgres::Config::from_str(&b.cluster.url()).expect("url");
    config.password(b.cluster.password.clone());
    let (sql, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    sql.batch_execute("BEGIN; UPDATE crl_numbers SET last_number = 2 WHERE issuer = 'aa'")
        .await
        .expect("hold the row");
    let waiting = tokio::spawn(async move { state.next_crl_number("aa").await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sql.batch_execute("COMMIT").await.expect("commit");
    let answer = waiting.await.expect("join");
    assert_eq!(untrusted(answer), "crl_numbers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_go_back_before_its_own_last_write() {
    let b = Sealed::new().await;
    let state = b.open().await;
    assert_eq!(state.next_crl_number("aa").await.expect("number"), 1);
    b.cluster
        .psql("CREATE TABLE old_numbers AS SELECT * FROM crl_numbers");
    b.cluster
        .psql("CREATE TABLE old_seal AS SELECT * FROM seals WHERE name = 'crl_numbers'");
    assert_eq!(state.next_crl_number("aa").await.expect("number"), 2);
    // Put back as before the last number, which this node wrote and never read back: the
    // same number would be handed out twice.
    b.cluster.psql("UPDATE crl_numbers SET last_number = 1");
    b.cluster.psql(
        "UPDATE seals SET sequence = o.sequence, digest = o.digest, signature = o.signature \
         FROM old_seal o WHERE seals.name = 'crl_numbers'",
    );
    assert_eq!(untrusted(state.next_crl_number("aa").await), "crl_numbers");
}
