//! One CA state conformance suite, run against every backend: sled and a real PostgreSQL
//! (Debian's, started by the test). Each test is written once as a generic function over a
//! [`Backend`] fixture; the `conformance!` macro makes one `#[tokio::test]` per backend. The
//! PostgreSQL-only tests (secrets, TLS, schema versions, several hosts) are in `state/pg.rs`.
//! PostgreSQL runs twice: as a lone appliance uses it, and sealed as a cluster's nodes use it
//! (rows signed, tables sealed; what a tampered table does is in `state/sealed.rs`).

#[path = "state/acme.rs"]
mod acme;
#[path = "state/pg.rs"]
mod pg;
#[path = "state/proposals.rs"]
mod proposals;
#[path = "state/sealed.rs"]
mod sealed;
mod support;
#[path = "state/tokens.rs"]
mod tokens;

use std::sync::Arc;

use acme::{
    acme_nonces_are_taken_once_from_any_node, acme_records_change_only_if_unchanged_and_expire,
};
use hsm_ca::keystore::KeyId;
use hsm_ca::state::{
    CaState, ImportedCrl, IntermediateRecord, IntermediateStatus, RevocationRecord, RootRecord,
    Transition, RECORD_VERSION,
};
use proposals::{
    an_expired_proposal_cannot_be_approved_or_claimed, of_eight_racing_claims_exactly_one_wins,
    proposals_are_filed_approved_once_per_officer_and_claimed, proposals_survive_a_reopen,
};
use support::postgres::PgCluster;
use tokens::{
    expired_tokens_are_pruned_live_ones_kept,
    tokens_are_found_by_hash_from_another_handle_renewed_and_revoked,
};

/// What the suite needs from a backend: a place for the state, opened as often as a test asks
/// (one handle at a time).
trait Backend: Sized {
    async fn new() -> Self;
    async fn open(&self) -> CaState;
}

struct Sled {
    dir: tempfile::TempDir,
}

impl Backend for Sled {
    async fn new() -> Self {
        Sled {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    async fn open(&self) -> CaState {
        let path = self.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || CaState::open(&path))
            .await
            .expect("join")
            .expect("open sled")
    }
}

struct Postgres {
    cluster: PgCluster,
}

impl Backend for Postgres {
    async fn new() -> Self {
        Postgres {
            cluster: tokio::task::spawn_blocking(PgCluster::start)
                .await
                .expect("join"),
        }
    }
    async fn open(&self) -> CaState {
        connect(&self.cluster).await
    }
}

/// A handle on the database of `cluster`, without row trust.
async fn connect(cluster: &PgCluster) -> CaState {
    support::postgres::connect(&cluster.settings()).await
}

/// PostgreSQL with row trust, as a cluster node opens it: every handle signs with the same
/// member key, so one handle believes what another wrote. (A software P-256 key stands in for
/// the node key a device holds; the state layer only sees a signing function.)
struct Sealed {
    cluster: PgCluster,
    key: Vec<u8>,
    seen: tempfile::TempDir,
}

impl Backend for Sealed {
    async fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .expect("key");
        Sealed {
            cluster: tokio::task::spawn_blocking(PgCluster::start)
                .await
                .expect("join"),
            key: key.as_ref().to_vec(),
            seen: tempfile::tempdir().expect("tempdir"),
        }
    }
    async fn open(&self) -> CaState {
        sealed::open_sealed(&self.cluster, &self.key, Some(&self.seen_file())).await
    }
}

impl Sealed {
    /// Where [`Backend::open`]'s handles keep the seals they saw.
    fn seen_file(&self) -> std::path::PathBuf {
        self.seen.path().join("seen.json")
    }

    /// A handle without row trust (as a command that cannot open the node's device).
    async fn plain(&self) -> CaState {
        connect(&self.cluster).await
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sled_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::Sled>().await
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::Postgres>().await
                }
            )*
        }
        mod sealed_postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::Sealed>().await
                }
            )*
        }
    };
}

conformance!(
    the_first_install_is_active_the_next_prepared,
    activation_retires_the_previous_one_and_refuses_bad_transitions,
    roots_move_the_bundle_sequence_only_when_they_change,
    revocations_are_idempotent_and_listed_per_issuer,
    crl_numbers_increase_per_issuer,
    an_imported_crl_is_replaced_only_by_a_greater_number,
    cross_certificates_are_kept_once_and_survive_a_reopen,
    a_reopen_keeps_everything,
    concurrent_crl_numbers_are_distinct_and_increasing,
    racing_activations_leave_exactly_one_active,
    a_snapshot_holds_the_bundle_intermediates_and_revocations,
    proposals_are_filed_approved_once_per_officer_and_claimed,
    an_expired_proposal_cannot_be_approved_or_claimed,
    of_eight_racing_claims_exactly_one_wins,
    proposals_survive_a_reopen,
    tokens_are_found_by_hash_from_another_handle_renewed_and_revoked,
    expired_tokens_are_pruned_live_ones_kept,
    acme_nonces_are_taken_once_from_any_node,
    acme_records_change_only_if_unchanged_and_expire,
);

fn intermediate(id: u8) -> IntermediateRecord {
    IntermediateRecord {
        version: 0,
        key_id: KeyId(vec![id]),
        certificate_pem: format!("pem {id}"),
        status: IntermediateStatus::Prepared,
        installed_at: "2030-01-01T00:00:00Z".into(),
        not_after: "2031-01-01T00:00:00Z".into(),
        subject: format!("CN=intermediate {id}"),
        activated_at: None,
        retired_at: None,
        node: String::new(),
    }
}

fn root(fingerprint: &str, added_at: &str) -> RootRecord {
    RootRecord {
        version: 0,
        fingerprint: fingerprint.into(),
        certificate_pem: format!("pem {fingerprint}"),
        subject: format!("CN={fingerprint}"),
        not_after: "2040-01-01T00:00:00Z".into(),
        added_at: added_at.into(),
    }
}

fn revocation(issuer: &str, serial: &str) -> RevocationRecord {
    RevocationRecord {
        version: 0,
        issuer: issuer.into(),
        serial: serial.into(),
        reason: "keyCompromise".into(),
        revoked_at: "2030-01-02T00:00:00Z".into(),
    }
}

fn crl(issuer: &str, number: u64) -> ImportedCrl {
    ImportedCrl {
        version: 0,
        issuer: issuer.into(),
        number,
        crl_pem: format!("crl {number}"),
        this_update: "t".into(),
        next_update: Some("u".into()),
        imported_at: "t".into(),
    }
}

fn id(n: u8) -> KeyId {
    KeyId(vec![n])
}

async fn active_id(state: &CaState) -> Option<KeyId> {
    state.active().await.expect("active").map(|r| r.key_id)
}

async fn the_first_install_is_active_the_next_prepared<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    assert_eq!(state.active().await.expect("active"), None);
    let first = state.install(intermediate(1)).await.expect("install");
    assert_eq!(first.status, IntermediateStatus::Active);
    assert_eq!(first.activated_at.as_deref(), Some("2030-01-01T00:00:00Z"));
    assert_eq!(first.version, RECORD_VERSION);
    let second = state.install(intermediate(2)).await.expect("install");
    assert_eq!(second.status, IntermediateStatus::Prepared);
    let all = state.intermediates().await.expect("list");
    assert_eq!(all, vec![first.clone(), second]);
    assert_eq!(state.intermediate(&id(1)).await.expect("get"), Some(first));
    assert_eq!(state.intermediate(&id(9)).await.expect("get"), None);
}

async fn activation_retires_the_previous_one_and_refuses_bad_transitions<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    for n in 1..=3 {
        state.install(intermediate(n)).await.expect("install");
    }
    let Transition::Done(next, previous) = state.activate(&id(2), "t1").await.expect("activate")
    else {
        panic!("not activated")
    };
    assert_eq!(
        (next.status, next.activated_at.as_deref()),
        (IntermediateStatus::Active, Some("t1"))
    );
    let previous = previous.expect("the previous active one");
    assert_eq!(previous.key_id, id(1));
    assert_eq!(previous.retired_at.as_deref(), Some("t1"));
    let stored = state
        .intermediate(&id(1))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(stored.status, IntermediateStatus::Retired);
    assert_eq!(active_id(&state).await, Some(id(2)));
    for (key, refused) in [(1, "retired"), (2, "already active")] {
        match state.activate(&id(key), "t2").await.expect("activate") {
            Transition::Refused(why) => assert!(why.contains(refused), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        state.retire(&id(2), "t2").await.expect("retire"),
        Transition::Refused(_)
    ));
    assert_eq!(
        state.activate(&id(9), "t2").await.expect("activate"),
        Transition::NotFound
    );
    assert_eq!(
        state.retire(&id(9), "t2").await.expect("retire"),
        Transition::NotFound
    );
    let Transition::Done(retired, None) = state.retire(&id(3), "t3").await.expect("retire") else {
        panic!("not retired")
    };
    assert_eq!(retired.retired_at.as_deref(), Some("t3"));
    assert!(matches!(
        state.retire(&id(3), "t4").await.expect("retire"),
        Transition::Refused(_)
    ));
    assert_eq!(active_id(&state).await, Some(id(2)));
}

async fn roots_move_the_bundle_sequence_only_when_they_change<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    assert_eq!(state.bundle_sequence().await.expect("seq"), 0);
    assert!(state.add_root(root("bb", "t2")).await.expect("add"));
    assert!(state.add_root(root("aa", "t1")).await.expect("add"));
    assert!(!state.add_root(root("aa", "t3")).await.expect("add again"));
    assert_eq!(state.bundle_sequence().await.expect("seq"), 2);
    let roots = state.roots().await.expect("roots");
    let order: Vec<_> = roots.iter().map(|r| r.fingerprint.as_str()).collect();
    assert_eq!(order, ["aa", "bb"], "oldest first");
    assert_eq!(roots[0].added_at, "t1", "the first record is kept");
    assert!(roots.iter().all(|r| r.version == RECORD_VERSION));
    assert!(state.remove_root("bb").await.expect("remove"));
    assert!(!state.remove_root("bb").await.expect("remove again"));
    assert_eq!(state.bundle_sequence().await.expect("seq"), 3);
    assert_eq!(state.roots().await.expect("roots").len(), 1);
}

async fn revocations_are_idempotent_and_listed_per_issuer<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    assert!(state.revoke(revocation("ca7", "02")).await.expect("revoke"));
    assert!(state.revoke(revocation("ca7", "01")).await.expect("revoke"));
    assert!(state.revoke(revocation("ca8", "01")).await.expect("revoke"));
    let mut again = revocation("ca7", "01");
    again.reason = "superseded".into();
    assert!(!state.revoke(again).await.expect("revoke again"));
    let ca7 = state.revocations("ca7").await.expect("list");
    let serials: Vec<_> = ca7.iter().map(|r| r.serial.as_str()).collect();
    assert_eq!(serials, ["01", "02"]);
    assert_eq!(
        ca7[0].reason, "keyCompromise",
        "the first revocation stands"
    );
    assert_eq!(ca7[0].version, RECORD_VERSION);
    assert!(state.revocations("ca9").await.expect("list").is_empty());
    assert_eq!(state.all_revocations().await.expect("all").len(), 3);
}

async fn crl_numbers_increase_per_issuer<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    for expected in 1..=3 {
        assert_eq!(state.next_crl_number("ca7").await.expect("n"), expected);
    }
    assert_eq!(state.next_crl_number("ca8").await.expect("n"), 1);
}

async fn cross_certificates_are_kept_once_and_survive_a_reopen<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    let cross = |fp: &str| hsm_ca::state::CrossCertificate {
        version: 0,
        fingerprint: fp.into(),
        subject_root: "bb".into(),
        issuer_root: "aa".into(),
        certificate_pem: format!("pem of {fp}"),
        created_at: "t".into(),
    };
    assert!(state.cross_certificates().await.expect("list").is_empty());
    assert!(state.add_cross_certificate(cross("c2")).await.expect("add"));
    assert!(state.add_cross_certificate(cross("c1")).await.expect("add"));
    assert!(!state
        .add_cross_certificate(cross("c1"))
        .await
        .expect("again"));
    drop(state);
    let state = b.open().await;
    let kept = state.cross_certificates().await.expect("list");
    let fps: Vec<_> = kept.iter().map(|c| c.fingerprint.as_str()).collect();
    assert_eq!(fps, ["c1", "c2"]);
    assert!(kept.iter().all(|c| c.version == RECORD_VERSION));
}

async fn an_imported_crl_is_replaced_only_by_a_greater_number<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    assert_eq!(state.imported_crl("ab").await.expect("get"), None);
    assert_eq!(
        state.store_imported_crl(crl("ab", 2)).await.expect("store"),
        Ok(())
    );
    let kept = state.store_imported_crl(crl("ab", 2)).await.expect("store");
    assert_eq!(kept.map_err(|c| c.number), Err(2));
    let kept = state.store_imported_crl(crl("ab", 1)).await.expect("store");
    assert_eq!(kept.map_err(|c| c.crl_pem), Err("crl 2".to_string()));
    assert_eq!(
        state.store_imported_crl(crl("ab", 3)).await.expect("store"),
        Ok(())
    );
    let stored = state.imported_crl("ab").await.expect("get").expect("kept");
    assert_eq!((stored.number, stored.version), (3, RECORD_VERSION));
    assert_eq!(stored.next_update.as_deref(), Some("u"));
    assert_eq!(state.imported_crl("other").await.expect("get"), None);
}

async fn a_reopen_keeps_everything<B: Backend>() {
    let b = B::new().await;
    let before = {
        let state = b.open().await;
        state.install(intermediate(1)).await.expect("install");
        state.install(intermediate(2)).await.expect("install");
        state.activate(&id(2), "t1").await.expect("activate");
        state.add_root(root("aa", "t1")).await.expect("add");
        state.revoke(revocation("aa", "05")).await.expect("revoke");
        state.next_crl_number("aa").await.expect("n");
        let stored = state.store_imported_crl(crl("aa", 7)).await.expect("crl");
        assert_eq!(stored, Ok(()));
        state.snapshot().await.expect("snapshot")
    };
    let state = b.open().await;
    assert_eq!(state.snapshot().await.expect("snapshot"), before);
    assert_eq!(active_id(&state).await, Some(id(2)));
    assert_eq!(state.bundle_sequence().await.expect("seq"), 1);
    assert_eq!(state.next_crl_number("aa").await.expect("n"), 2);
    assert_eq!(
        state
            .imported_crl("aa")
            .await
            .expect("get")
            .map(|c| c.number),
        Some(7)
    );
}

async fn concurrent_crl_numbers_are_distinct_and_increasing<B: Backend>() {
    let b = B::new().await;
    let state = Arc::new(b.open().await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..4 {
                    got.push(state.next_crl_number("ca").await.expect("n"));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.expect("task");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=32).collect::<Vec<u64>>());
}

async fn racing_activations_leave_exactly_one_active<B: Backend>() {
    let b = B::new().await;
    let state = Arc::new(b.open().await);
    for n in 1..=9 {
        state.install(intermediate(n)).await.expect("install");
    }
    let tasks: Vec<_> = (2..=9)
        .map(|n| {
            let state = state.clone();
            tokio::spawn(async move { state.activate(&id(n), "t").await.expect("activate") })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        if let Transition::Done(..) = task.await.expect("task") {
            done += 1;
        }
    }
    assert!(done >= 1);
    let all = state.intermediates().await.expect("list");
    let active: Vec<_> = all
        .iter()
        .filter(|r| r.status == IntermediateStatus::Active)
        .collect();
    assert_eq!(active.len(), 1, "{all:?}");
    let retired = all
        .iter()
        .filter(|r| r.status == IntermediateStatus::Retired)
        .count();
    assert_eq!(retired, done, "each activation retired its predecessor");
}

async fn a_snapshot_holds_the_bundle_intermediates_and_revocations<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    state.add_root(root("r2", "t2")).await.expect("add");
    state.add_root(root("r1", "t1")).await.expect("add");
    state.install(intermediate(1)).await.expect("install");
    state.install(intermediate(2)).await.expect("install");
    state.revoke(revocation("r1", "0a")).await.expect("revoke");
    let snapshot = state.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.roots, state.roots().await.expect("roots"));
    assert_eq!(
        snapshot.intermediates,
        state.intermediates().await.expect("list")
    );
    assert_eq!(
        snapshot.revocations,
        state.all_revocations().await.expect("all")
    );
    assert_eq!(snapshot.active().map(|r| r.key_id.clone()), Some(id(1)));
}
