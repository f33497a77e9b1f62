//! The CA state: the trust bundle (roots and its sequence number), the installed intermediates
//! and which one issues, revocations, CRL numbers, imported root CRLs and the officers'
//! proposals with their approvals ([`proposals`]), the hashes of the Vault front door's
//! tokens ([`tokens`]) and the ACME front door's objects ([`acme`]). Two backends keep it
//! with the same semantics: [`sled`] (embedded, the default, synchronous; the offline ceremony
//! uses it directly) and [`postgres`] (shared by several appliances, asynchronous). The running
//! appliance holds a [`CaState`], which names its backend and whose `async` methods delegate.
//!
//! Only public material lives here: certificates and key identifiers. It must never hold key
//! material, speak a client protocol (HTTP, gRPC), or put a database password into an error,
//! a log line or a record.

pub mod acme;
pub mod postgres;
pub mod proposals;
mod records;
pub mod rows;
pub mod sled;
pub mod tokens;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::keystore::KeyId;

pub use acme::{AcmeKind, AcmeObject};
pub use postgres::{Leader, PgSettings, PgState};
pub use proposals::{Claim, ProposalRecord, ProposalStatus, ProposalStep};
pub use records::{
    active_for, CrossCertificate, ImportedCrl, IntermediateRecord, IntermediateStatus,
    RevocationRecord, RootRecord, Snapshot, Transition, RECORD_VERSION,
};
pub use sled::SledState;
pub use tokens::TokenRecord;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open CA state at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("CA state storage error: {0}")]
    Storage(String),
    #[error("CA state record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// The database refused or failed a statement, or could not be reached.
    #[error("CA state database: {0}")]
    Database(String),
    /// The store settings cannot work (a password in the URL, an unreadable CA file, ...).
    #[error("CA state settings: {0}")]
    Settings(String),
    #[error(
        "the CA state database has schema version {found}, newer than version {known} this \
         hsm-ca knows: run the newer hsm-ca that upgraded it"
    )]
    SchemaTooNew { found: i32, known: i32 },
    /// What is to be written contradicts what is there and must not be replaced.
    #[error("CA state conflict: {0}")]
    Conflict(String),
    /// A table on the shared database does not match its seal (rows written, deleted or put
    /// back by other means than an appliance, or the table rolled back): it is not read.
    #[error(
        "the {table} in the CA state database are not believed: {reason}; the node keeps \
         serving what it published last (see ops/runbooks/cluster.md, \"Tampered state\")"
    )]
    Untrusted { table: String, reason: String },
    /// A leader-only write by a node that no longer holds the leadership it started with.
    #[error("node {node} is no longer the leader of epoch {epoch}: the write was refused")]
    Fenced { node: String, epoch: u64 },
}

/// The leadership a leader-only job runs under: node id and epoch. While [`fenced`] runs a
/// job, every intermediate transition it writes to PostgreSQL commits only if the database
/// still names this node leader of this epoch (a paused old leader cannot write after a new
/// one took over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub node: String,
    pub epoch: u64,
}

tokio::task_local! {
    static FENCE: Fence;
}

/// Runs `job` with its intermediate transitions fenced by `fence`.
pub async fn fenced<F: std::future::Future>(fence: Fence, job: F) -> F::Output {
    FENCE.scope(fence, job).await
}

/// The fence of the leader-only job running in this task, if any.
pub(crate) fn current_fence() -> Option<Fence> {
    FENCE.try_with(Fence::clone).ok()
}

/// Which backend keeps the CA state (`[store] backend`).
#[derive(Clone, Debug, Default)]
pub enum StoreBackend {
    /// sled under `data_dir/state` (the default).
    #[default]
    Sled,
    /// A PostgreSQL database, shared by the appliances of a cluster.
    Postgres(PgSettings),
}

/// The CA state the running appliance reads and changes, in the backend its config names.
#[derive(Debug)]
pub enum CaState {
    Sled(SledState),
    Postgres(PgState),
}

impl From<SledState> for CaState {
    fn from(s: SledState) -> Self {
        CaState::Sled(s)
    }
}

impl From<PgState> for CaState {
    fn from(p: PgState) -> Self {
        CaState::Postgres(p)
    }
}

impl CaState {
    /// The sled state under `data_dir/state`, with the default page cache (tests, the dev
    /// appliance).
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        Ok(SledState::open(data_dir)?.into())
    }

    /// Opens the backend `backend` names: sled under `data_dir/state` with a page cache of at
    /// most `cache_bytes`, or the PostgreSQL database (connecting, and bringing its schema up
    /// to date).
    pub async fn connect(
        backend: &StoreBackend,
        data_dir: &Path,
        cache_bytes: u64,
    ) -> Result<Self, StateError> {
        match backend {
            StoreBackend::Sled => {
                let dir: PathBuf = data_dir.to_path_buf();
                // Opening may wait for sled's lock; keep that off the runtime's workers.
                tokio::task::spawn_blocking(move || SledState::open_with_cache(&dir, cache_bytes))
                    .await
                    .map_err(|e| StateError::Storage(format!("opening the state: {e}")))?
                    .map(CaState::Sled)
            }
            StoreBackend::Postgres(settings) => Ok(PgState::open(settings).await?.into()),
        }
    }

    /// The backend's name, for logs (`sled` or `postgres`).
    pub fn backend(&self) -> &'static str {
        match self {
            CaState::Sled(_) => "sled",
            CaState::Postgres(_) => "postgres",
        }
    }

    /// One intermediate by key id.
    pub async fn intermediate(
        &self,
        key_id: &KeyId,
    ) -> Result<Option<IntermediateRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.intermediate(key_id),
            CaState::Postgres(p) => p.intermediate(key_id).await,
        }
    }

    /// Makes a prepared intermediate the active one; the previous active one is retired in the
    /// same step. Durable on return.
    pub async fn activate(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        match self {
            CaState::Sled(s) => s.activate(key_id, now),
            CaState::Postgres(p) => p.activate(key_id, now).await,
        }
    }

    /// Retires a prepared intermediate (the active one is retired by activating its successor).
    pub async fn retire(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        match self {
            CaState::Sled(s) => s.retire(key_id, now),
            CaState::Postgres(p) => p.retire(key_id, now).await,
        }
    }

    /// The roots of the trust bundle, oldest first.
    pub async fn roots(&self) -> Result<Vec<RootRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.roots(),
            CaState::Postgres(p) => p.roots().await,
        }
    }

    /// Adds a root to the bundle and bumps the bundle sequence. Returns false (and changes
    /// nothing) when it is there already.
    pub async fn add_root(&self, record: RootRecord) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.add_root(record),
            CaState::Postgres(p) => p.add_root(record).await,
        }
    }

    /// Removes a root from the bundle; false when it was not there.
    pub async fn remove_root(&self, fingerprint: &str) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.remove_root(fingerprint),
            CaState::Postgres(p) => p.remove_root(fingerprint).await,
        }
    }

    /// Increases on every change of the trust bundle (SPIFFE `spiffe_sequence`).
    pub async fn bundle_sequence(&self) -> Result<u64, StateError> {
        match self {
            CaState::Sled(s) => s.bundle_sequence(),
            CaState::Postgres(p) => p.bundle_sequence().await,
        }
    }

    /// The shared change sequence (see [`postgres::PgState::change_sequence`]): `None` on
    /// sled, whose state only this process can change.
    pub async fn change_sequence(&self) -> Result<Option<u64>, StateError> {
        match self {
            CaState::Sled(_) => Ok(None),
            CaState::Postgres(p) => p.change_sequence().await.map(Some),
        }
    }

    /// Whether another node's shipped audit records hold this issuance (always false on
    /// sled, where there are no other nodes).
    pub async fn audit_issued(&self, ca_key: &str, serial: &str) -> Result<bool, StateError> {
        match self {
            CaState::Sled(_) => Ok(false),
            CaState::Postgres(p) => p.audit_issued(ca_key, serial).await,
        }
    }

    /// Records a revocation; false when that serial was revoked already.
    pub async fn revoke(&self, record: RevocationRecord) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.revoke(record),
            CaState::Postgres(p) => p.revoke(record).await,
        }
    }

    /// Every revocation by the CA whose certificate fingerprint is `issuer`.
    pub async fn revocations(&self, issuer: &str) -> Result<Vec<RevocationRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.revocations(issuer),
            CaState::Postgres(p) => p.revocations(issuer).await,
        }
    }

    /// Every revocation, of every CA.
    pub async fn all_revocations(&self) -> Result<Vec<RevocationRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.all_revocations(),
            CaState::Postgres(p) => p.all_revocations().await,
        }
    }

    /// The next CRL number for the CA whose certificate fingerprint is `issuer` (1, 2, …),
    /// strictly increasing however many callers ask at once. Durable on return.
    pub async fn next_crl_number(&self, issuer: &str) -> Result<u64, StateError> {
        match self {
            CaState::Sled(s) => s.next_crl_number(issuer),
            CaState::Postgres(p) => p.next_crl_number(issuer).await,
        }
    }

    /// Keeps a cross-certificate; false when it is kept already.
    pub async fn add_cross_certificate(
        &self,
        record: CrossCertificate,
    ) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.add_cross_certificate(record),
            CaState::Postgres(p) => p.add_cross_certificate(record).await,
        }
    }

    /// Every cross-certificate kept, by fingerprint.
    pub async fn cross_certificates(&self) -> Result<Vec<CrossCertificate>, StateError> {
        match self {
            CaState::Sled(s) => s.cross_certificates(),
            CaState::Postgres(p) => p.cross_certificates().await,
        }
    }

    /// The last CRL imported for the root whose fingerprint is `issuer`.
    pub async fn imported_crl(&self, issuer: &str) -> Result<Option<ImportedCrl>, StateError> {
        match self {
            CaState::Sled(s) => s.imported_crl(issuer),
            CaState::Postgres(p) => p.imported_crl(issuer).await,
        }
    }

    /// Stores an imported CRL if its number is greater than the stored one's; otherwise
    /// returns the stored one and changes nothing. Durable on return.
    pub async fn store_imported_crl(
        &self,
        record: ImportedCrl,
    ) -> Result<Result<(), ImportedCrl>, StateError> {
        match self {
            CaState::Sled(s) => s.store_imported_crl(record),
            CaState::Postgres(p) => p.store_imported_crl(record).await,
        }
    }

    /// Records an intermediate; it becomes active when no other is. Durable on return.
    pub async fn install(
        &self,
        record: IntermediateRecord,
    ) -> Result<IntermediateRecord, StateError> {
        match self {
            CaState::Sled(s) => s.install(record),
            CaState::Postgres(p) => p.install(record).await,
        }
    }

    /// All installed intermediates, by key id.
    pub async fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.intermediates(),
            CaState::Postgres(p) => p.intermediates().await,
        }
    }

    /// The intermediate that issues now, if any.
    pub async fn active(&self) -> Result<Option<IntermediateRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.active(),
            CaState::Postgres(p) => p.active().await,
        }
    }

    /// Refused ([`StateError::Fenced`]) when the running leader-only job's fence no longer
    /// holds; always fine on sled and outside such a job.
    pub async fn check_fence(&self) -> Result<(), StateError> {
        match self {
            CaState::Sled(_) => Ok(()),
            CaState::Postgres(p) => p.check_fence().await,
        }
    }

    /// The node whose intermediates this handle installs ("" when shared, and on sled).
    pub fn intermediate_node(&self) -> &str {
        match self {
            CaState::Sled(_) => "",
            CaState::Postgres(p) => p.node(),
        }
    }

    /// The bundle, the intermediates and the revocations, read at one moment.
    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        match self {
            CaState::Sled(s) => s.snapshot(),
            CaState::Postgres(p) => p.snapshot().await,
        }
    }

    /// Files a new proposal (pending); false, changing nothing, when its id is taken.
    pub async fn file_proposal(&self, record: ProposalRecord) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.file_proposal(record),
            CaState::Postgres(p) => p.file_proposal(record).await,
        }
    }

    /// One proposal by id, whatever its status.
    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.proposal(id),
            CaState::Postgres(p) => p.proposal(id).await,
        }
    }

    /// The proposals, oldest first: all, or the open ones (pending or executing).
    pub async fn proposals(&self, all: bool) -> Result<Vec<ProposalRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.proposals(all),
            CaState::Postgres(p) => p.proposals(all).await,
        }
    }

    /// `officer` approves proposal `id`: once per officer, only while it is pending and has
    /// not expired (an expired one is recorded as expired). Durable on return.
    pub async fn approve_proposal(
        &self,
        id: &str,
        officer: &str,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        match self {
            CaState::Sled(s) => s.approve_proposal(id, officer, now),
            CaState::Postgres(p) => p.approve_proposal(id, officer, now).await,
        }
    }

    /// Claims proposal `id` for execution, atomically: pending → executing only with enough
    /// approvals and before it expires, so of any number of callers on any number of nodes
    /// exactly one gets [`ProposalStep::Done`] and runs it. Durable on return.
    pub async fn claim_proposal(
        &self,
        id: &str,
        claim: &Claim<'_>,
    ) -> Result<ProposalStep, StateError> {
        match self {
            CaState::Sled(s) => s.claim_proposal(id, claim),
            CaState::Postgres(p) => p.claim_proposal(id, claim).await,
        }
    }

    /// Records what running an executing proposal came to. Durable on return.
    pub async fn finish_proposal(
        &self,
        id: &str,
        outcome: &Result<serde_json::Value, String>,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        match self {
            CaState::Sled(s) => s.finish_proposal(id, outcome, now),
            CaState::Postgres(p) => p.finish_proposal(id, outcome, now).await,
        }
    }

    /// Stores (or replaces) a Vault front-door token record under its hash. Durable on return.
    pub async fn put_token(&self, record: &TokenRecord) -> Result<(), StateError> {
        match self {
            CaState::Sled(s) => s.put_token(record),
            CaState::Postgres(p) => p.put_token(record).await,
        }
    }

    /// The token record whose hash is `sha256`, expired or not.
    pub async fn token(&self, sha256: &str) -> Result<Option<TokenRecord>, StateError> {
        match self {
            CaState::Sled(s) => s.token(sha256),
            CaState::Postgres(p) => p.token(sha256).await,
        }
    }

    /// Forgets a token; false when it was not there. Durable on return.
    pub async fn delete_token(&self, sha256: &str) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.delete_token(sha256),
            CaState::Postgres(p) => p.delete_token(sha256).await,
        }
    }

    /// Forgets every token that expired at or before `now` (unix seconds); returns how many.
    pub async fn prune_tokens(&self, now: i64) -> Result<u64, StateError> {
        match self {
            CaState::Sled(s) => s.prune_tokens(now),
            CaState::Postgres(p) => p.prune_tokens(now).await,
        }
    }
    /// Stores a new ACME object; false (changing nothing) when (kind, id) is taken. Durable
    /// on return.
    pub async fn acme_insert(
        &self,
        kind: AcmeKind,
        id: &str,
        object: &AcmeObject,
    ) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.acme_insert(kind, id, object),
            CaState::Postgres(p) => p.acme_insert(kind, id, object).await,
        }
    }

    /// Stores (or replaces) an ACME object. Durable on return.
    pub async fn acme_put(
        &self,
        kind: AcmeKind,
        id: &str,
        object: &AcmeObject,
    ) -> Result<(), StateError> {
        match self {
            CaState::Sled(s) => s.acme_put(kind, id, object),
            CaState::Postgres(p) => p.acme_put(kind, id, object).await,
        }
    }

    /// One ACME object, expired or not.
    pub async fn acme_get(
        &self,
        kind: AcmeKind,
        id: &str,
    ) -> Result<Option<AcmeObject>, StateError> {
        match self {
            CaState::Sled(s) => s.acme_get(kind, id),
            CaState::Postgres(p) => p.acme_get(kind, id).await,
        }
    }

    /// Replaces an ACME object with `new` only if its record is still `old`: of callers on any
    /// number of nodes racing from the same record, exactly one gets true. Durable on return.
    pub async fn acme_update(
        &self,
        kind: AcmeKind,
        id: &str,
        old: &serde_json::Value,
        new: &AcmeObject,
    ) -> Result<bool, StateError> {
        match self {
            CaState::Sled(s) => s.acme_update(kind, id, old, new),
            CaState::Postgres(p) => p.acme_update(kind, id, old, new).await,
        }
    }

    /// Removes an ACME object and returns it: of any number of callers on any number of
    /// nodes, exactly one gets it (a nonce is used once). Durable on return.
    pub async fn acme_take(
        &self,
        kind: AcmeKind,
        id: &str,
    ) -> Result<Option<AcmeObject>, StateError> {
        match self {
            CaState::Sled(s) => s.acme_take(kind, id),
            CaState::Postgres(p) => p.acme_take(kind, id).await,
        }
    }

    /// Every ACME object of a kind, by id.
    pub async fn acme_list(&self, kind: AcmeKind) -> Result<Vec<(String, AcmeObject)>, StateError> {
        match self {
            CaState::Sled(s) => s.acme_list(kind),
            CaState::Postgres(p) => p.acme_list(kind).await,
        }
    }

    /// Forgets every ACME object that expired at or before `now` (unix seconds); returns how
    /// many.
    pub async fn acme_prune(&self, now: i64) -> Result<u64, StateError> {
        match self {
            CaState::Sled(s) => s.acme_prune(now),
            CaState::Postgres(p) => p.acme_prune(now).await,
        }
    }
}
