//! Sealed tables: with row trust, each table that decides trust (roots, intermediates,
//! revocations, imported CRLs, cross-certificates, CRL numbers, proposals) has one row in
//! `seals` (schema version 11): a sequence number that grows with every write and a SHA-256
//! digest of all its rows, signed by the writing node's device-held key. A signed row proves
//! only that a member wrote it once; the seal also shows what was deleted (a revocation taken
//! out un-revokes a certificate), what was put back (an old copy of a row, or of the whole
//! table) and what was changed in place.
//!
//! Readers read a table and its seal in one snapshot and keep the rows only when a member
//! signed the seal, the rows hash to its digest and its sequence is not below the highest this
//! node has seen ([`RowTrust::saw`]); otherwise the read fails with
//! [`StateError::Untrusted`], reported once, and the node keeps serving what it published last.
//! A verified table is kept in memory until its seal or the change sequence moves. In tables whose rows are signed one
//! by one (roots, proposals) a row no member signed is ignored, as before, and not hashed.
//!
//! Writers lock the seal row, verify the table as it is, apply their change, and seal the rows
//! they verified plus exactly what their own statements returned — never rows re-read after the
//! change — so a row slipped in meanwhile is not sealed with theirs.
//!
//! It must never seal a table it did not verify first, nor accept a seal older than one seen.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio_postgres::Transaction;

use super::{db, lock, PgState};
use crate::state::rows::RowTrust;
use crate::state::{ProposalRecord, RootRecord, StateError};

/// The advisory lock (within the backend's lock class) taken while sealing a table for the
/// first time.
const FIRST_SEAL_LOCK: i32 = 2;

/// Whether a member signed one row: (trust, table, key, content text, signature).
type Believe = fn(&RowTrust, &str, &str, &str, Option<&[u8]>) -> bool;

/// A sealed table: its name and the statement that reads every row as (key, content,
/// signature), the content in the database's own text form.
pub(super) struct Table {
    pub name: &'static str,
    rows: &'static str,
    /// Rows are also signed one by one: only those a member signed count.
    believe: Option<Believe>,
}

pub(super) const ROOTS: Table = Table {
    name: "roots",
    rows: "SELECT fingerprint, record::text, signature FROM roots",
    believe: Some(believe_as::<RootRecord>),
};
pub(super) const INTERMEDIATES: Table = Table {
    name: "intermediates",
    rows: "SELECT key_id, record::text, NULL::bytea FROM intermediates",
    believe: None,
};
pub(super) const REVOCATIONS: Table = Table {
    name: "revocations",
    rows: "SELECT issuer || '/' || serial, record::text, NULL::bytea FROM revocations",
    believe: None,
};
pub(super) const IMPORTED_CRLS: Table = Table {
    name: "imported_crls",
    rows: "SELECT issuer, record::text, NULL::bytea FROM imported_crls",
    believe: None,
};
pub(super) const CROSS_CERTIFICATES: Table = Table {
    name: "cross_certificates",
    rows: "SELECT fingerprint, record::text, NULL::bytea FROM cross_certificates",
    believe: None,
};
pub(super) const CRL_NUMBERS: Table = Table {
    name: "crl_numbers",
    rows: "SELECT issuer, last_number::text, NULL::bytea FROM crl_numbers",
    believe: None,
};
pub(super) const PROPOSALS: Table = Table {
    name: "proposals",
    rows: "SELECT id, record::text, signature FROM proposals",
    believe: Some(believe_as::<ProposalRecord>),
};

/// Every sealed table.
pub(super) const ALL: [&Table; 7] = [
    &ROOTS,
    &INTERMEDIATES,
    &REVOCATIONS,
    &IMPORTED_CRLS,
    &CROSS_CERTIFICATES,
    &CRL_NUMBERS,
    &PROPOSALS,
];

/// One row's content (the database's text form) and its own signature, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Row {
    pub text: String,
    pub signature: Option<Vec<u8>>,
}

/// A table's rows by key.
pub(super) type Rows = BTreeMap<String, Row>;

/// Whether a member signed a row holding a `T` (its signature covers the record as this
/// binary serializes it, like every signed row).
fn believe_as<T: serde::Serialize + serde::de::DeserializeOwned>(
    trust: &RowTrust,
    table: &str,
    key: &str,
    text: &str,
    signature: Option<&[u8]>,
) -> bool {
    let content = serde_json::from_str::<T>(text)
        .ok()
        .and_then(|value| serde_json::to_vec(&value).ok());
    match content {
        Some(content) => trust.believe(table, key, &content, signature),
        None => {
            trust.reject(table, key);
            false
        }
    }
}

/// The digest a seal signs: every row's key and content, in key order, each length-prefixed.
fn digest(rows: &Rows) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, row) in rows {
        for part in [key.as_bytes(), row.text.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// What a seal's signature covers (as the row `seals`/`<table>`).
fn sealed_content(sequence: u64, digest: &[u8]) -> Vec<u8> {
    format!("sequence {sequence}\ndigest {}", hex::encode(digest)).into_bytes()
}

/// A seal as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seal {
    sequence: u64,
    digest: Vec<u8>,
    signature: Vec<u8>,
}

impl Seal {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, StateError> {
        Ok(Seal {
            sequence: super::unsigned(row.try_get(0).map_err(db)?, "seal sequence")?,
            digest: row.try_get(1).map_err(db)?,
            signature: row.try_get(2).map_err(db)?,
        })
    }
}

/// Tables verified against their seals, with the change sequence they were read at; kept until
/// either moves.
#[derive(Default)]
pub(super) struct Verified(Mutex<HashMap<&'static str, VerifiedTable>>);

/// A verified table: the seal and change sequence it was read at, and its rows.
type VerifiedTable = (Seal, i64, Arc<Rows>);

fn untrusted(table: &Table, reason: impl Into<String>) -> StateError {
    StateError::Untrusted {
        table: table.name.to_string(),
        reason: reason.into(),
    }
}

/// The rows of `table` as `client` reads them, with those not signed one by one by a member
/// left out (tables with row signatures).
async fn read_rows(
    client: &Transaction<'_>,
    table: &Table,
    trust: Option<&RowTrust>,
) -> Result<Rows, StateError> {
    let mut rows = Rows::new();
    for row in client.query(table.rows, &[]).await.map_err(db)? {
        let key: String = row.try_get(0).map_err(db)?;
        let text: String = row.try_get(1).map_err(db)?;
        let signature: Option<Vec<u8>> = row.try_get(2).map_err(db)?;
        if let (Some(trust), Some(believe)) = (trust, table.believe) {
            if !believe(trust, table.name, &key, &text, signature.as_deref()) {
                continue;
            }
        }
        rows.insert(key, Row { text, signature });
    }
    Ok(rows)
}

/// Checks `rows` against `seal`: signed by a member, same digest, not older than seen.
fn verify(
    trust: &RowTrust,
    table: &Table,
    seal: Option<&Seal>,
    rows: &Rows,
) -> Result<(), StateError> {
    let fail = |reason: String| {
        trust.reject("seals", table.name);
        Err(untrusted(table, reason))
    };
    let Some(seal) = seal else {
        return fail("the table has no seal".into());
    };
    let content = sealed_content(seal.sequence, &seal.digest);
    if !trust.verifies("seals", table.name, &content, Some(&seal.signature)) {
        return fail(format!("seal {} is not signed by a member", seal.sequence));
    }
    if digest(rows) != seal.digest {
        return fail(format!(
            "the rows do not match seal {}: rows were added, changed or deleted outside hsm-ca",
            seal.sequence
        ));
    }
    if let Err(last) = trust.saw(table.name, seal.sequence, &hex::encode(&seal.digest)) {
        return fail(format!(
            "seal {} is not newer than seal {last} seen before with other rows: the table was \
             rolled back or forked",
            seal.sequence
        ));
    }
    Ok(())
}

/// A table locked and verified for a change within a transaction; [`PgState::seal`] seals it.
pub(super) struct Open {
    table: &'static Table,
    sequence: u64,
    rows: Rows,
}

impl Open {
    /// A row the transaction wrote, as its statement returned it (key, content, signature):
    /// it must be the row `key` holding `expected`, or the database changed it on the way
    /// (a trigger, a concurrent writer) and nothing is sealed.
    pub fn put<T>(
        &mut self,
        row: Option<&tokio_postgres::Row>,
        key: &str,
        expected: &T,
    ) -> Result<(), StateError>
    where
        T: serde::de::DeserializeOwned + PartialEq,
    {
        let changed = || untrusted(self.table, format!("row {key} was not written as sent"));
        let row = row.ok_or_else(changed)?;
        let got: String = row.try_get(0).map_err(db)?;
        let text: String = row.try_get(1).map_err(db)?;
        let signature: Option<Vec<u8>> = row.try_get(2).map_err(db)?;
        let same = got == key && serde_json::from_str::<T>(&text).is_ok_and(|v| v == *expected);
        if !same {
            return Err(changed());
        }
        self.rows.insert(got, Row { text, signature });
        Ok(())
    }

    /// An insert found row `key` there already: it must be one of the verified rows.
    pub fn present(&self, key: &str) -> Result<(), StateError> {
        if self.rows.contains_key(key) {
            Ok(())
        } else {
            Err(untrusted(
                self.table,
                format!("row {key} is in the database but not in the sealed table"),
            ))
        }
    }

    /// A row the transaction deleted.
    pub fn remove(&mut self, key: &str) {
        self.rows.remove(key);
    }

    /// The verified rows (before this transaction's own changes are put).
    pub fn rows(&self) -> &Rows {
        &self.rows
    }
}

/// `table`'s seal (if any) and the change sequence, as `client` reads them.
async fn head(
    client: &impl tokio_postgres::GenericClient,
    table: &Table,
) -> Result<(Option<Seal>, i64), StateError> {
    let row = client
        .query_one(
            "SELECT s.sequence, s.digest, s.signature, c.sequence
             FROM changes c LEFT JOIN seals s ON s.name = $1",
            &[&table.name],
        )
        .await
        .map_err(db)?;
    let changes: i64 = row.try_get(3).map_err(db)?;
    let seal = match row.try_get::<_, Option<i64>>(0).map_err(db)? {
        Some(_) => Some(Seal::from_row(&row)?),
        None => None,
    };
    Ok((seal, changes))
}

/// A seal written by a transaction, taken note of once it commits.
pub(super) struct Written {
    table: &'static str,
    sequence: u64,
    digest: String,
}

impl PgState {
    /// Every row of `table`; with row trust, verified against its seal (kept until the seal
    /// moves).
    pub(super) async fn sealed_rows(&self, table: &'static Table) -> Result<Arc<Rows>, StateError> {
        let mut client = self.client().await?;
        let Some(trust) = self.row_trust() else {
            let tx = client.transaction().await.map_err(db)?;
            let rows = read_rows(&tx, table, None).await?;
            tx.commit().await.map_err(db)?;
            return Ok(Arc::new(rows));
        };
        // The cached copy stands while neither the seal nor the change sequence moved. The
        // sequence's triggers fire on any statement on roots, intermediates, revocations and
        // imported CRLs (unless disabled), so a row of those changed in place is read and
        // reported at once; in the other tables it is found by the next write, which refuses.
        // Either way only verified rows are ever returned.
        let (current, changes) = head(&**client, table).await?;
        if let Some(current) = &current {
            let cache = lock(&self.verified.0);
            if let Some((seal, seen_changes, rows)) = cache.get(table.name) {
                if seal == current && *seen_changes == changes {
                    return Ok(rows.clone());
                }
            }
        }
        let tx = super::read_only(&mut client).await?;
        let (seal, changes) = head(&*tx, table).await?;
        let rows = read_rows(&tx, table, Some(trust)).await?;
        tx.commit().await.map_err(db)?;
        verify(trust, table, seal.as_ref(), &rows)?;
        let rows = Arc::new(rows);
        if let Some(seal) = seal {
            lock(&self.verified.0).insert(table.name, (seal, changes, rows.clone()));
        }
        Ok(rows)
    }

    /// Locks `table`'s seal for the transaction and verifies the table as it is (`None`
    /// without row trust). Without row trust a sealed table is not written: its readers would
    /// refuse it.
    pub(super) async fn open_seal(
        &self,
        tx: &Transaction<'_>,
        table: &'static Table,
    ) -> Result<Option<Open>, StateError> {
        let seal = tx
            .query_opt(
                "SELECT sequence, digest, signature FROM seals WHERE name = $1 FOR UPDATE",
                &[&table.name],
            )
            .await
            .map_err(db)?
            .as_ref()
            .map(Seal::from_row)
            .transpose()?;
        let Some(trust) = self.row_trust() else {
            return match seal {
                None => Ok(None),
                Some(_) => Err(StateError::Conflict(format!(
                    "the {} are sealed by the appliances' keys: change them through a running \
                     appliance or a command that opens the node's device",
                    table.name
                ))),
            };
        };
        let rows = read_rows(tx, table, Some(trust)).await?;
        verify(trust, table, seal.as_ref(), &rows)?;
        Ok(Some(Open {
            table,
            sequence: seal.map_or(0, |s| s.sequence),
            rows,
        }))
    }

    /// Commits `tx`, then takes note of the seal it wrote (so this node refuses to go back
    /// before its own writes).
    pub(super) async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        written: Option<Written>,
    ) -> Result<(), StateError> {
        tx.commit().await.map_err(db)?;
        if let (Some(w), Some(trust)) = (written, self.row_trust()) {
            if trust.saw(w.table, w.sequence, &w.digest).is_err() {
                tracing::warn!(
                    table = w.table,
                    sequence = w.sequence,
                    "a newer seal was seen"
                );
            }
        }
        Ok(())
    }

    /// Seals what `open` holds now with the next sequence number (nothing without row trust);
    /// pass what it returns to [`PgState::commit`].
    pub(super) async fn seal(
        &self,
        tx: &Transaction<'_>,
        open: Option<Open>,
    ) -> Result<Option<Written>, StateError> {
        let (Some(open), Some(trust)) = (open, self.row_trust()) else {
            return Ok(None);
        };
        let sequence = open.sequence + 1;
        let digest = digest(&open.rows);
        let content = sealed_content(sequence, &digest);
        let signature = super::signed(trust, "seals", open.table.name, &content)?;
        let sequence_db = super::bigint(sequence, "seal sequence")?;
        tx.execute(
            "INSERT INTO seals (name, sequence, digest, signature) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE
                 SET sequence = EXCLUDED.sequence, digest = EXCLUDED.digest,
                     signature = EXCLUDED.signature",
            &[&open.table.name, &sequence_db, &digest, &signature],
        )
        .await
        .map_err(db)?;
        Ok(Some(Written {
            table: open.table.name,
            sequence,
            digest: hex::encode(&digest),
        }))
    }

    /// Seals every table when none has a seal yet (a new database, or one from before seals)
    /// with what it holds now, in one transaction. Refused when only some tables have lost
    /// their seals, or when this node has seen a seal before (seals deleted from the
    /// database). Returns the tables sealed.
    pub async fn seal_unsealed(&self) -> Result<Vec<&'static str>, StateError> {
        let Some(trust) = self.row_trust() else {
            return Ok(Vec::new());
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        first_seal_lock(&tx).await?;
        let mut missing = Vec::new();
        for table in ALL {
            let exists = tx
                .query_opt("SELECT 1 FROM seals WHERE name = $1", &[&table.name])
                .await
                .map_err(db)?
                .is_some();
            if !exists {
                missing.push(table);
            }
        }
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        for table in &missing {
            let seen = trust.seen(table.name);
            if seen > 0 || missing.len() < ALL.len() {
                trust.reject("seals", table.name);
                return Err(untrusted(
                    table,
                    format!(
                        "its seal is gone from the database while other tables keep theirs \
                         (this node saw seal {seen})"
                    ),
                ));
            }
        }
        let mut written = Vec::new();
        for table in ALL {
            let rows = read_rows(&tx, table, Some(trust)).await?;
            let open = Open {
                table,
                sequence: 0,
                rows,
            };
            written.extend(self.seal(&tx, Some(open)).await?);
        }
        tx.commit().await.map_err(db)?;
        for w in written {
            let _ = trust.saw(w.table, w.sequence, &w.digest);
        }
        Ok(ALL.iter().map(|t| t.name).collect())
    }
}

/// Serializes first sealing (and the adoption of roots before it) across appliances.
pub(super) async fn first_seal_lock(tx: &Transaction<'_>) -> Result<(), StateError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&super::LOCK_CLASS, &FIRST_SEAL_LOCK],
    )
    .await
    .map_err(db)?;
    Ok(())
}
