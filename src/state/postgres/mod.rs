//! The CA state in PostgreSQL, the backend several appliances share. The same records and the
//! same semantics as [`super::sled`], each change one transaction: a root added or removed
//! moves the bundle sequence in the same transaction; CRL numbers come from one
//! `INSERT .. ON CONFLICT .. RETURNING` (strictly increasing per issuer however many nodes
//! ask); an imported CRL replaces the stored one only when its number is greater; intermediate
//! state changes run under an advisory lock, and a partial unique index keeps "at most one
//! active" even against a writer that skips the lock. Officer proposals are in [`proposals`]:
//! each step locks its row, so exactly one caller claims a proposal for execution.
//!
//! With row trust (several appliances on one database) the database is not trusted for
//! integrity: root and proposal rows are signed one by one ([`super::rows`]) and every table
//! that decides trust is sealed ([`seals`]); reads return only what a member signed, and a
//! table that does not match its seal is refused ([`StateError::Untrusted`]).
//!
//! It must never put the database password into an error or a log line (see [`settings`]),
//! and never return a row of a sealed table that its seal does not cover.

mod acme;
mod audit;
mod leader;
mod nodes;
mod proposals;
mod schema;
mod seals;
mod settings;
mod tls;
mod tokens;

use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::Json;
use tokio_postgres::IsolationLevel;

use super::records::{activated, active_for, installing, retired, superseded};
use super::rows::RowTrust;
use super::{
    CrossCertificate, ImportedCrl, IntermediateRecord, IntermediateStatus, RevocationRecord,
    RootRecord, Snapshot, StateError, Transition, RECORD_VERSION,
};
use crate::keystore::KeyId;

pub use audit::ShippedRecord;
pub use leader::Leader;
pub use nodes::{NodeReport, NodeStatus, NODE_LIVE_SECS};
pub use schema::SCHEMA_VERSION;
pub use settings::{PgSettings, DEFAULT_POOL_SIZE};

/// The advisory-lock class of hsm-ca's locks ("HSMC").
const LOCK_CLASS: i32 = 0x4853_4d43;
/// The lock (within [`LOCK_CLASS`]) intermediate state changes hold.
const TRANSITION_LOCK: i32 = 1;

fn db(e: impl std::fmt::Display) -> StateError {
    StateError::Database(e.to_string())
}

/// The channel the change-sequence trigger notifies (schema version 10).
pub const CHANGES_CHANNEL: &str = "hsmca_changes";

/// The CA state in a PostgreSQL database.
pub struct PgState {
    pool: Pool,
    settings: PgSettings,
    described: String,
    /// Set once the node can sign: roots are then signed when written and believed only when
    /// a member signed them.
    rows: std::sync::OnceLock<Arc<RowTrust>>,
    /// Tables verified against their seals.
    verified: seals::Verified,
    /// The node whose own intermediates this handle installs and activates (unset: shared
    /// intermediates, as on one appliance).
    node: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("database", &self.described)
            .finish_non_exhaustive()
    }
}

/// A u64 as PostgreSQL's bigint.
fn bigint(value: u64, what: &str) -> Result<i64, StateError> {
    i64::try_from(value).map_err(|_| StateError::Storage(format!("{what} {value} is too large")))
}

/// A bigint read back; the tables' checks keep it non-negative.
fn unsigned(value: i64, what: &str) -> Result<u64, StateError> {
    u64::try_from(value).map_err(|_| StateError::Corrupt {
        key: what.into(),
        reason: format!("negative value {value}"),
    })
}

fn records<T: serde::de::DeserializeOwned>(
    rows: Vec<tokio_postgres::Row>,
) -> Result<Vec<T>, StateError> {
    rows.iter().map(record).collect()
}

fn record<T: serde::de::DeserializeOwned>(row: &tokio_postgres::Row) -> Result<T, StateError> {
    let Json(value): Json<T> = row.try_get("record").map_err(|e| StateError::Corrupt {
        key: "record".into(),
        reason: e.to_string(),
    })?;
    Ok(value)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `trust`'s signature over row `key` of `table` holding `content`, made in the device (off
/// the runtime's worker when it is a multi-threaded one).
fn signed(trust: &RowTrust, table: &str, key: &str, content: &[u8]) -> Result<Vec<u8>, StateError> {
    let sign = || trust.sign(table, key, content);
    let signature = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(sign)
        }
        _ => sign(),
    };
    signature.map_err(|e| StateError::Storage(format!("the row cannot be signed: {e}")))
}

/// A sealed row's content decoded.
fn decode<T: serde::de::DeserializeOwned>(key: &str, row: &seals::Row) -> Result<T, StateError> {
    serde_json::from_str(&row.text).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Every row of a sealed table decoded, in key order.
fn decode_all<T: serde::de::DeserializeOwned>(rows: &seals::Rows) -> Result<Vec<T>, StateError> {
    rows.iter().map(|(k, r)| decode(k, r)).collect()
}

/// The statement's returned row (key, content, signature) put into the table's seal,
/// checked to be row `key` holding `expected` (nothing without row trust).
fn put<T: serde::de::DeserializeOwned + PartialEq>(
    open: &mut Option<seals::Open>,
    row: Option<&tokio_postgres::Row>,
    key: &str,
    expected: &T,
) -> Result<(), StateError> {
    match open {
        Some(open) => open.put(row, key, expected),
        None => Ok(()),
    }
}

/// A read-only transaction on `client` that sees one snapshot throughout.
async fn read_only(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, StateError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)
}

/// Serializes intermediate transitions (install, activate, retire) across every appliance on
/// the database, until the transaction ends.
async fn transition_lock(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StateError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &TRANSITION_LOCK],
    )
    .await
    .map_err(db)?;
    leader::check_fence(tx).await
}

/// Every intermediate as the transaction may change it: the verified rows of the open seal,
/// or (without row trust) the rows read and locked.
async fn current_intermediates(
    tx: &tokio_postgres::Transaction<'_>,
    open: &Option<seals::Open>,
) -> Result<Vec<IntermediateRecord>, StateError> {
    match open {
        Some(open) => decode_all(open.rows()),
        None => records(
            tx.query(
                "SELECT record FROM intermediates ORDER BY key_id FOR UPDATE",
                &[],
            )
            .await
            .map_err(db)?,
        ),
    }
}

/// Writes an intermediate's status and record, and puts it into the open seal.
async fn update_intermediate(
    tx: &tokio_postgres::Transaction<'_>,
    open: &mut Option<seals::Open>,
    change: &IntermediateRecord,
) -> Result<(), StateError> {
    let row = tx
        .query_opt(
            "UPDATE intermediates SET status = $2, record = $3 WHERE key_id = $1
             RETURNING key_id, record::text, NULL::bytea",
            &[
                &change.key_id.to_string(),
                &change.status.as_str(),
                &Json(change),
            ],
        )
        .await
        .map_err(db)?;
    put(open, row.as_ref(), &change.key_id.to_string(), change)
}

impl PgState {
    /// Connects (through the first host of the URL that takes it as asked) and brings the
    /// schema up to date. A database newer than this binary is refused.
    pub async fn open(settings: &PgSettings) -> Result<Self, StateError> {
        let described = settings.describe();
        let pool = settings.pool()?;
        let mut client = pool.get().await.map_err(|e| StateError::Open {
            path: described.clone(),
            reason: e.to_string(),
        })?;
        schema::migrate(&mut client).await?;
        drop(client);
        Ok(PgState {
            pool,
            settings: settings.clone(),
            described,
            rows: std::sync::OnceLock::new(),
            verified: seals::Verified::default(),
            node: std::sync::OnceLock::new(),
        })
    }

    /// Wakes `wake` whenever a trust change commits (the change-sequence trigger's
    /// notification), on a connection of its own; returns when that connection ends.
    pub async fn listen_for_changes(&self, wake: &tokio::sync::Notify) -> Result<(), StateError> {
        self.settings.listen(CHANGES_CHANNEL, wake).await
    }

    /// User, hosts and database (no password).
    pub fn describe(&self) -> &str {
        &self.described
    }

    async fn client(&self) -> Result<Object, StateError> {
        self.pool.get().await.map_err(db)
    }

    /// One intermediate by key id.
    pub async fn intermediate(
        &self,
        key_id: &KeyId,
    ) -> Result<Option<IntermediateRecord>, StateError> {
        let key = key_id.to_string();
        let rows = self.sealed_rows(&seals::INTERMEDIATES).await?;
        rows.get(&key).map(|row| decode(&key, row)).transpose()
    }

    /// Makes a prepared intermediate the active one, retiring the previous one in the same
    /// transaction.
    pub async fn activate(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        transition_lock(&tx).await?;
        let mut open = self.open_seal(&tx, &seals::INTERMEDIATES).await?;
        let current = current_intermediates(&tx, &open).await?;
        let Some(found) = current.iter().find(|r| r.key_id == *key_id) else {
            return Ok(Transition::NotFound);
        };
        if found.node != self.node() {
            return Ok(Transition::Refused(match found.node.as_str() {
                "" => format!("{key_id} is shared by the nodes; this node issues with its own"),
                owner => format!("{key_id} belongs to node {owner}: activate it through that node"),
            }));
        }
        let next = match activated(found.clone(), now) {
            Ok(next) => next,
            Err(refused) => return Ok(refused),
        };
        let previous = current
            .into_iter()
            .find(|r| r.status == IntermediateStatus::Active && r.node == next.node)
            .map(|p| superseded(p, now));
        // Retire first: the unique index allows one active row per node at every moment.
        for change in previous.iter().chain(std::iter::once(&next)) {
            update_intermediate(&tx, &mut open, change).await?;
        }
        let written = self.seal(&tx, open).await?;
        self.commit(tx, written).await?;
        Ok(Transition::Done(Box::new(next), previous.map(Box::new)))
    }

    /// Retires a prepared intermediate.
    pub async fn retire(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        transition_lock(&tx).await?;
        let mut open = self.open_seal(&tx, &seals::INTERMEDIATES).await?;
        let current = current_intermediates(&tx, &open).await?;
        let Some(found) = current.into_iter().find(|r| r.key_id == *key_id) else {
            return Ok(Transition::NotFound);
        };
        let record = match retired(found, now) {
            Ok(record) => record,
            Err(refused) => return Ok(refused),
        };
        update_intermediate(&tx, &mut open, &record).await?;
        let written = self.seal(&tx, open).await?;
        self.commit(tx, written).await?;
        Ok(Transition::Done(Box::new(record), None))
    }

    /// Records an intermediate; it becomes active when no other is.
    pub async fn install(
        &self,
        record: IntermediateRecord,
    ) -> Result<IntermediateRecord, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        transition_lock(&tx).await?;
        let mut open = self.open_seal(&tx, &seals::INTERMEDIATES).await?;
        let node = self.node().to_string();
        // Active at once only when this node issues with none yet (its own or a shared one):
        // otherwise it is prepared and activated like any other, through its gates.
        let active = active_for(&current_intermediates(&tx, &open).await?, &node).is_some();
        let record = installing(IntermediateRecord { node, ..record }, active);
        let row = tx
            .query_one(
                "INSERT INTO intermediates (key_id, node_id, status, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key_id) DO UPDATE
                     SET node_id = EXCLUDED.node_id, status = EXCLUDED.status,
                         record = EXCLUDED.record, signature = NULL
                 RETURNING key_id, record::text, NULL::bytea",
                &[
                    &record.key_id.to_string(),
                    &record.node,
                    &record.status.as_str(),
                    &Json(&record),
                ],
            )
            .await
            .map_err(db)?;
        put(&mut open, Some(&row), &record.key_id.to_string(), &record)?;
        let written = self.seal(&tx, open).await?;
        self.commit(tx, written).await?;
        Ok(record)
    }

    /// All installed intermediates, by key id.
    pub async fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StateError> {
        decode_all(&*self.sealed_rows(&seals::INTERMEDIATES).await?)
    }

    /// The intermediate this node issues with now, if any: its own active one, else the
    /// shared one.
    pub async fn active(&self) -> Result<Option<IntermediateRecord>, StateError> {
        Ok(active_for(&self.intermediates().await?, self.node()).cloned())
    }

    /// From now on this handle installs and activates intermediates as `node`'s own (their
    /// keys are in its device), and issues with its own active one. Only the first call
    /// counts.
    pub fn own_intermediates(&self, node: &str) {
        let _ = self.node.set(node.to_string());
    }

    /// The node whose intermediates this handle installs ("" when they are shared).
    pub fn node(&self) -> &str {
        self.node.get().map_or("", String::as_str)
    }

    /// From now on roots are signed with `trust`'s key when written, and only those a member
    /// signed are read. Only the first call counts.
    pub fn trust_rows(&self, trust: Arc<RowTrust>) {
        let _ = self.rows.set(trust);
    }

    /// The row trust, when set.
    pub fn row_trust(&self) -> Option<&Arc<RowTrust>> {
        self.rows.get()
    }

    /// The roots of the trust bundle, oldest first (with row trust: the believed ones).
    pub async fn roots(&self) -> Result<Vec<RootRecord>, StateError> {
        let mut roots: Vec<RootRecord> = decode_all(&*self.sealed_rows(&seals::ROOTS).await?)?;
        roots.sort_by(|a, b| (&a.added_at, &a.fingerprint).cmp(&(&b.added_at, &b.fingerprint)));
        Ok(roots)
    }

    /// The signature of a row of `table` named `key` holding `value` (none without row trust).
    fn row_signature<T: serde::Serialize>(
        &self,
        table: &str,
        key: &str,
        value: &T,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let Some(trust) = self.rows.get() else {
            return Ok(None);
        };
        let content = serde_json::to_vec(value).map_err(db)?;
        signed(trust, table, key, &content).map(Some)
    }

    /// Signs the unsigned root rows whose fingerprint is in `known` (roots this node served
    /// before rows were signed, from its own files) and whose certificate has that
    /// fingerprint; returns how many. Only before the roots are first sealed: once sealed, an
    /// unsigned row is never adopted (it could bring back a root removed since).
    pub async fn adopt_roots(&self, known: &[String]) -> Result<u64, StateError> {
        if self.rows.get().is_none() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        seals::first_seal_lock(&tx).await?;
        let sealed = tx
            .query_opt("SELECT 1 FROM seals LIMIT 1", &[])
            .await
            .map_err(db)?
            .is_some();
        let seen = self
            .rows
            .get()
            .is_some_and(|t| t.seen(seals::ROOTS.name) > 0);
        if sealed || seen {
            return Ok(0);
        }
        let rows = tx
            .query(
                "SELECT record FROM roots WHERE signature IS NULL AND fingerprint = ANY($1)
                 FOR UPDATE",
                &[&known],
            )
            .await
            .map_err(db)?;
        let mut adopted = 0;
        for row in &rows {
            let mut root: RootRecord = record(row)?;
            let matches = crate::ca::certificates_from_pem(root.certificate_pem.as_bytes())
                .ok()
                .and_then(|ders| ders.into_iter().next())
                .is_some_and(|der| crate::ca::fingerprint_id(&der) == root.fingerprint);
            if !matches {
                continue;
            }
            root.version = RECORD_VERSION;
            let signature = self.row_signature(seals::ROOTS.name, &root.fingerprint, &root)?;
            adopted += tx
                .execute(
                    "UPDATE roots SET record = $2, signature = $3
                     WHERE fingerprint = $1 AND signature IS NULL",
                    &[&root.fingerprint, &Json(&root), &signature],
                )
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(adopted)
    }

    /// Adds a root and bumps the bundle sequence in one transaction; false when present.
    pub async fn add_root(&self, mut record: RootRecord) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        let signature = self.row_signature(seals::ROOTS.name, &record.fingerprint, &record)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, &seals::ROOTS).await?;
        let row = tx
            .query_opt(
                "INSERT INTO roots (fingerprint, added_at, record, signature)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (fingerprint) DO NOTHING
                 RETURNING fingerprint, record::text, signature",
                &[
                    &record.fingerprint,
                    &record.added_at,
                    &Json(&record),
                    &signature,
                ],
            )
            .await
            .map_err(db)?;
        let inserted = row.is_some();
        let mut written = None;
        if inserted {
            put(&mut open, row.as_ref(), &record.fingerprint, &record)?;
            written = self.seal(&tx, open).await?;
            bump_bundle_sequence(&tx).await?;
        } else if let Some(open) = &open {
            open.present(&record.fingerprint)?;
        }
        self.commit(tx, written).await?;
        Ok(inserted)
    }

    /// Removes a root and bumps the bundle sequence in one transaction; false when absent.
    pub async fn remove_root(&self, fingerprint: &str) -> Result<bool, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, &seals::ROOTS).await?;
        if let Some(open) = &open {
            // A row no member signed is not a root of this bundle: nothing to remove.
            if !open.rows().contains_key(fingerprint) {
                return Ok(false);
            }
        }
        let removed = tx
            .execute("DELETE FROM roots WHERE fingerprint = $1", &[&fingerprint])
            .await
            .map_err(db)?
            == 1;
        let mut written = None;
        if removed {
            if let Some(open) = &mut open {
                open.remove(fingerprint);
            }
            written = self.seal(&tx, open).await?;
            bump_bundle_sequence(&tx).await?;
        }
        self.commit(tx, written).await?;
        Ok(removed)
    }

    /// Increases on every change of the trust bundle.
    pub async fn bundle_sequence(&self) -> Result<u64, StateError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT sequence FROM bundle", &[])
            .await
            .map_err(db)?;
        unsigned(row.get(0), "bundle sequence")
    }

    /// Raised by every committed change of roots, intermediates, revocations or imported
    /// CRLs (schema version 5's triggers).
    pub async fn change_sequence(&self) -> Result<u64, StateError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT sequence FROM changes", &[])
            .await
            .map_err(db)?;
        unsigned(row.get(0), "change sequence")
    }

    /// Records a revocation; false when that serial was revoked already.
    pub async fn revoke(&self, mut record: RevocationRecord) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        self.insert_sealed(
            &seals::REVOCATIONS,
            &format!("{}/{}", record.issuer, record.serial),
            &record,
            "INSERT INTO revocations (issuer, serial, record) VALUES ($1, $2, $3)
             ON CONFLICT (issuer, serial) DO NOTHING
             RETURNING issuer || '/' || serial, record::text, NULL::bytea",
            &[&record.issuer, &record.serial, &Json(&record)],
        )
        .await
    }

    /// Runs `insert` (an `INSERT .. ON CONFLICT DO NOTHING` returning the row as `table`'s
    /// seal reads it) in one transaction with the table's seal; false when nothing was
    /// inserted.
    async fn insert_sealed<T: serde::de::DeserializeOwned + PartialEq>(
        &self,
        table: &'static seals::Table,
        key: &str,
        expected: &T,
        insert: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, table).await?;
        let row = tx.query_opt(insert, params).await.map_err(db)?;
        let inserted = row.is_some();
        let mut written = None;
        if inserted {
            put(&mut open, row.as_ref(), key, expected)?;
            written = self.seal(&tx, open).await?;
        } else if let Some(open) = &open {
            // Already there: only if the sealed table holds it (not a row slipped in).
            open.present(key)?;
        }
        self.commit(tx, written).await?;
        Ok(inserted)
    }

    /// Every revocation by the CA whose certificate fingerprint is `issuer`.
    pub async fn revocations(&self, issuer: &str) -> Result<Vec<RevocationRecord>, StateError> {
        Ok(self
            .all_revocations()
            .await?
            .into_iter()
            .filter(|r| r.issuer == issuer)
            .collect())
    }

    /// Every revocation, of every CA.
    pub async fn all_revocations(&self) -> Result<Vec<RevocationRecord>, StateError> {
        decode_all(&*self.sealed_rows(&seals::REVOCATIONS).await?)
    }

    /// The next CRL number for `issuer`: one statement, so concurrent callers on any node get
    /// distinct, increasing numbers.
    pub async fn next_crl_number(&self, issuer: &str) -> Result<u64, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, &seals::CRL_NUMBERS).await?;
        // With a seal, the next number follows the sealed one, whatever the row says now.
        let expected = match &open {
            Some(open) => match open.rows().get(issuer) {
                Some(row) => decode::<u64>(issuer, row)? + 1,
                None => 1,
            },
            None => 0,
        };
        let row = tx
            .query_one(
                "INSERT INTO crl_numbers (issuer, last_number) VALUES ($1, 1)
                 ON CONFLICT (issuer) DO UPDATE SET last_number = crl_numbers.last_number + 1
                 RETURNING issuer, last_number::text, NULL::bytea, last_number",
                &[&issuer],
            )
            .await
            .map_err(db)?;
        put(&mut open, Some(&row), issuer, &expected)?;
        let written = self.seal(&tx, open).await?;
        self.commit(tx, written).await?;
        unsigned(row.get(3), "CRL number")
    }

    /// The last CRL imported for the root `issuer`.
    pub async fn imported_crl(&self, issuer: &str) -> Result<Option<ImportedCrl>, StateError> {
        let rows = self.sealed_rows(&seals::IMPORTED_CRLS).await?;
        rows.get(issuer).map(|row| decode(issuer, row)).transpose()
    }

    /// Keeps a cross-certificate; false when it is kept already.
    pub async fn add_cross_certificate(
        &self,
        mut record: CrossCertificate,
    ) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        self.insert_sealed(
            &seals::CROSS_CERTIFICATES,
            &record.fingerprint,
            &record,
            "INSERT INTO cross_certificates (fingerprint, record) VALUES ($1, $2)
             ON CONFLICT (fingerprint) DO NOTHING
             RETURNING fingerprint, record::text, NULL::bytea",
            &[&record.fingerprint, &Json(&record)],
        )
        .await
    }

    /// Every cross-certificate kept, by fingerprint.
    pub async fn cross_certificates(&self) -> Result<Vec<CrossCertificate>, StateError> {
        decode_all(&*self.sealed_rows(&seals::CROSS_CERTIFICATES).await?)
    }

    /// Stores an imported CRL if its number is greater than the stored one's (one statement);
    /// otherwise returns the stored one.
    pub async fn store_imported_crl(
        &self,
        mut record: ImportedCrl,
    ) -> Result<Result<(), ImportedCrl>, StateError> {
        record.version = RECORD_VERSION;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, &seals::IMPORTED_CRLS).await?;
        // With a seal, the sealed record decides (the `number` column is not sealed).
        if let Some(open) = &open {
            if let Some(row) = open.rows().get(&record.issuer) {
                let stored: ImportedCrl = decode(&record.issuer, row)?;
                if stored.number >= record.number {
                    return Ok(Err(stored));
                }
            }
        }
        let condition = if open.is_some() {
            ""
        } else {
            "WHERE imported_crls.number < EXCLUDED.number"
        };
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO imported_crls (issuer, number, record) VALUES ($1, $2, $3)
                     ON CONFLICT (issuer) DO UPDATE
                         SET number = EXCLUDED.number, record = EXCLUDED.record
                         {condition}
                     RETURNING issuer, record::text, NULL::bytea"
                ),
                &[
                    &record.issuer,
                    &bigint(record.number, "CRL number")?,
                    &Json(&record),
                ],
            )
            .await
            .map_err(db)?;
        if row.is_some() || open.is_some() {
            put(&mut open, row.as_ref(), &record.issuer, &record)?;
            let written = self.seal(&tx, open).await?;
            self.commit(tx, written).await?;
            return Ok(Ok(()));
        }
        let stored = tx
            .query_opt(
                "SELECT record FROM imported_crls WHERE issuer = $1",
                &[&record.issuer],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(self::record)
            .transpose()?
            .ok_or_else(|| StateError::Conflict("the stored CRL vanished".into()))?;
        tx.commit().await.map_err(db)?;
        Ok(Err(stored))
    }

    /// The bundle, the intermediates and the revocations (each table as its seal covers it;
    /// without row trust, read in one repeatable-read transaction).
    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        if self.rows.get().is_some() {
            return Ok(Snapshot {
                roots: self.roots().await?,
                intermediates: self.intermediates().await?,
                revocations: self.all_revocations().await?,
                node: self.node().to_string(),
            });
        }
        let mut client = self.client().await?;
        let tx = read_only(&mut client).await?;
        let roots = tx
            .query(
                "SELECT record FROM roots ORDER BY added_at, fingerprint",
                &[],
            )
            .await
            .map_err(db)?;
        let intermediates = tx
            .query("SELECT record FROM intermediates ORDER BY key_id", &[])
            .await
            .map_err(db)?;
        let revocations = tx
            .query(
                "SELECT record FROM revocations ORDER BY issuer, serial",
                &[],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Snapshot {
            roots: records(roots)?,
            intermediates: records(intermediates)?,
            revocations: records(revocations)?,
            node: self.node().to_string(),
        })
    }
}

async fn bump_bundle_sequence(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StateError> {
    tx.execute("UPDATE bundle SET sequence = sequence + 1", &[])
        .await
        .map_err(db)?;
    Ok(())
}
