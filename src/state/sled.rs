//! The CA state in sled, the embedded default: one node, nothing to install. Trees for the
//! intermediates, the roots, the revocations, `meta` (counters, imported CRLs) and the
//! officers' proposals ([`proposals`]), holding the versioned JSON records of
//! [`super::records`]. Synchronous: the offline ceremony uses it as it is, the running
//! appliance through [`super::CaState`]. Every change is flushed before it returns.
//!
//! It must never hold key material, and never let two intermediate state changes interleave
//! (they run under one lock, so "at most one active" holds within the process; sled's own lock
//! keeps other processes out).

use std::path::Path;
use std::sync::Mutex;

use super::records::{activated, decode, encode, installing, retired, superseded};
use super::{
    CrossCertificate, ImportedCrl, IntermediateRecord, IntermediateStatus, RevocationRecord,
    RootRecord, Snapshot, StateError, Transition, RECORD_VERSION,
};
use crate::keystore::KeyId;

/// The CA state store in sled.
pub struct SledState {
    db: sled::Db,
    intermediates: sled::Tree,
    roots: sled::Tree,
    revocations: sled::Tree,
    meta: sled::Tree,
    proposals: sled::Tree,
    /// Vault front-door tokens by hash ([`tokens`]).
    tokens: sled::Tree,
    /// ACME front-door objects by kind and id ([`acme`]).
    acme: sled::Tree,
    /// Intermediate state changes (install, activate, retire) run one at a time.
    transitions: Mutex<()>,
}

impl std::fmt::Debug for SledState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledState").finish_non_exhaustive()
    }
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(e.to_string())
}

const BUNDLE_SEQUENCE: &[u8] = b"bundle_sequence";

impl SledState {
    /// Opens (creating if needed) the state under `data_dir/state`, with the default page
    /// cache.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        Self::open_with_cache(data_dir, crate::store::DEFAULT_CACHE_BYTES)
    }

    /// [`SledState::open`] with a page cache of at most `cache_bytes` (`[store] cache_mb`).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: u64) -> Result<Self, StateError> {
        let path = data_dir.join("state");
        let open_err = |reason: String| StateError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(e.to_string()))?;
        let db = crate::store::open_with_cache(&path, cache_bytes)
            .map_err(|e| open_err(crate::store::explain(&e)))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        let (intermediates, roots, revocations, meta, proposals, tokens, acme) = (
            tree("intermediates")?,
            tree("roots")?,
            tree("revocations")?,
            tree("meta")?,
            tree("proposals")?,
            tree("vault_tokens")?,
            tree("acme")?,
        );
        Ok(SledState {
            db,
            intermediates,
            roots,
            revocations,
            meta,
            proposals,
            tokens,
            acme,
            transitions: Mutex::new(()),
        })
    }

    fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(storage)
    }

    fn transition_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One intermediate by key id.
    pub fn intermediate(&self, key_id: &KeyId) -> Result<Option<IntermediateRecord>, StateError> {
        let k = key_id.to_string();
        self.intermediates
            .get(k.as_bytes())
            .map_err(storage)?
            .map(|v| decode(k.as_bytes(), &v))
            .transpose()
    }

    /// Makes a prepared intermediate the active one; the previous active one is retired in the
    /// same step. Durable on return.
    pub fn activate(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        let _one_at_a_time = self.transition_lock();
        let Some(record) = self.intermediate(key_id)? else {
            return Ok(Transition::NotFound);
        };
        let next = match activated(record, now) {
            Ok(next) => next,
            Err(refused) => return Ok(refused),
        };
        let previous = self.active()?.map(|prev| superseded(prev, now));
        let mut batch = sled::Batch::default();
        if let Some(prev) = &previous {
            batch.insert(prev.key_id.to_string().as_bytes(), encode(prev)?);
        }
        batch.insert(key_id.to_string().as_bytes(), encode(&next)?);
        self.intermediates.apply_batch(batch).map_err(storage)?;
        self.flush()?;
        Ok(Transition::Done(Box::new(next), previous.map(Box::new)))
    }

    /// Retires a prepared intermediate (the active one is retired by activating its successor).
    pub fn retire(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        let _one_at_a_time = self.transition_lock();
        let Some(record) = self.intermediate(key_id)? else {
            return Ok(Transition::NotFound);
        };
        let record = match retired(record, now) {
            Ok(record) => record,
            Err(refused) => return Ok(refused),
        };
        self.intermediates
            .insert(key_id.to_string().as_bytes(), encode(&record)?)
            .map_err(storage)?;
        self.flush()?;
        Ok(Transition::Done(Box::new(record), None))
    }

    /// The roots of the trust bundle, oldest first.
    pub fn roots(&self) -> Result<Vec<RootRecord>, StateError> {
        let mut roots = self
            .roots
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                decode::<RootRecord>(&k, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        roots.sort_by(|a, b| a.added_at.cmp(&b.added_at));
        Ok(roots)
    }

    /// Adds a root to the bundle. Returns false (and changes nothing) when it is there already.
    pub fn add_root(&self, mut record: RootRecord) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        let key = record.fingerprint.clone();
        let value = encode(&record)?;
        let inserted = self
            .roots
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(value))
            .map_err(storage)?
            .is_ok();
        if inserted {
            self.bump_bundle_sequence()?;
        }
        self.flush()?;
        Ok(inserted)
    }

    /// Removes a root from the bundle; false when it was not there.
    pub fn remove_root(&self, fingerprint: &str) -> Result<bool, StateError> {
        let removed = self
            .roots
            .remove(fingerprint.as_bytes())
            .map_err(storage)?
            .is_some();
        if removed {
            self.bump_bundle_sequence()?;
        }
        self.flush()?;
        Ok(removed)
    }

    fn bump_bundle_sequence(&self) -> Result<u64, StateError> {
        self.increment(BUNDLE_SEQUENCE)
    }

    /// Adds one to the counter `key` in the meta tree (missing: 0) and returns the new value.
    fn increment(&self, key: &[u8]) -> Result<u64, StateError> {
        let value = |b: Option<&[u8]>| {
            b.and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
        };
        let next = self
            .meta
            .update_and_fetch(key, |old| Some((value(old) + 1).to_be_bytes().to_vec()))
            .map_err(storage)?;
        Ok(value(next.as_deref()))
    }

    /// Increases on every change of the trust bundle (SPIFFE `spiffe_sequence`).
    pub fn bundle_sequence(&self) -> Result<u64, StateError> {
        Ok(self
            .meta
            .get(BUNDLE_SEQUENCE)
            .map_err(storage)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Records a revocation; false when that serial was revoked already.
    pub fn revoke(&self, mut record: RevocationRecord) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        let key = format!("{}/{}", record.issuer, record.serial);
        self.insert_new(&self.revocations, key, &record)
    }

    /// Stores `record` under `key` in `tree` unless the key is taken; false when it is.
    /// Durable on return.
    fn insert_new<T: serde::Serialize>(
        &self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
        record: &T,
    ) -> Result<bool, StateError> {
        let inserted = tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(encode(record)?))
            .map_err(storage)?
            .is_ok();
        self.flush()?;
        Ok(inserted)
    }

    /// Every revocation by the CA whose certificate fingerprint is `issuer`.
    pub fn revocations(&self, issuer: &str) -> Result<Vec<RevocationRecord>, StateError> {
        self.revocations
            .scan_prefix(format!("{issuer}/").as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every revocation, of every CA.
    pub fn all_revocations(&self) -> Result<Vec<RevocationRecord>, StateError> {
        self.revocations
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The next CRL number for the CA whose certificate fingerprint is `issuer` (1, 2, …).
    /// Durable on return.
    pub fn next_crl_number(&self, issuer: &str) -> Result<u64, StateError> {
        let next = self.increment(format!("crl_number/{issuer}").as_bytes())?;
        self.flush()?;
        Ok(next)
    }

    /// Keeps a cross-certificate; false when it is kept already. Durable on return.
    pub fn add_cross_certificate(&self, mut record: CrossCertificate) -> Result<bool, StateError> {
        record.version = RECORD_VERSION;
        let key = format!("cross_cert/{}", record.fingerprint);
        self.insert_new(&self.meta, key, &record)
    }

    /// Every cross-certificate kept, by fingerprint.
    pub fn cross_certificates(&self) -> Result<Vec<CrossCertificate>, StateError> {
        self.meta
            .scan_prefix(b"cross_cert/")
            .map(|kv| {
                let (k, v) = kv.map_err(storage)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The last CRL imported for the root whose fingerprint is `issuer`.
    pub fn imported_crl(&self, issuer: &str) -> Result<Option<ImportedCrl>, StateError> {
        let key = format!("imported_crl/{issuer}");
        self.meta
            .get(key.as_bytes())
            .map_err(storage)?
            .map(|v| decode(key.as_bytes(), &v))
            .transpose()
    }

    /// Stores an imported CRL if its number is greater than the stored one's; otherwise
    /// returns the stored one and changes nothing. Durable on return.
    pub fn store_imported_crl(
        &self,
        mut record: ImportedCrl,
    ) -> Result<Result<(), ImportedCrl>, StateError> {
        record.version = RECORD_VERSION;
        let key = format!("imported_crl/{}", record.issuer);
        loop {
            let old = self.meta.get(key.as_bytes()).map_err(storage)?;
            if let Some(bytes) = &old {
                let stored: ImportedCrl = decode(key.as_bytes(), bytes)?;
                if stored.number >= record.number {
                    return Ok(Err(stored));
                }
            }
            let swapped = self
                .meta
                .compare_and_swap(key.as_bytes(), old, Some(encode(&record)?))
                .map_err(storage)?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(Ok(()));
            }
        }
    }

    /// Records an intermediate; it becomes active when no other is. Durable on return.
    pub fn install(&self, record: IntermediateRecord) -> Result<IntermediateRecord, StateError> {
        let _one_at_a_time = self.transition_lock();
        let record = installing(record, self.active()?.is_some());
        self.intermediates
            .insert(record.key_id.to_string().as_bytes(), encode(&record)?)
            .map_err(storage)?;
        self.flush()?;
        Ok(record)
    }

    /// All installed intermediates, by key id.
    pub fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StateError> {
        self.intermediates
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(storage)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The intermediate that issues now, if any.
    pub fn active(&self) -> Result<Option<IntermediateRecord>, StateError> {
        Ok(self
            .intermediates()?
            .into_iter()
            .find(|r| r.status == IntermediateStatus::Active))
    }

    /// The bundle, the intermediates and the revocations.
    pub fn snapshot(&self) -> Result<Snapshot, StateError> {
        Ok(Snapshot {
            roots: self.roots()?,
            intermediates: self.intermediates()?,
            revocations: self.all_revocations()?,
            node: String::new(),
        })
    }
}

mod acme;
mod proposals;
#[cfg(test)]
mod tests;
mod tokens;
