//! The CA state on disk (sled): the trust bundle (roots and its sequence number), the installed
//! intermediates and which one issues, revocations, CRL numbers and imported root CRLs. Records
//! are versioned JSON so later versions can read what earlier ones wrote.
//!
//! Only public material lives here: certificates and key identifiers. Keys stay in the device.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::keystore::KeyId;

/// Version of [`IntermediateRecord`] written by this build.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open CA state at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("CA state storage error: {0}")]
    Storage(String),
    #[error("CA state record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Where an intermediate is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntermediateStatus {
    /// Installed, not yet issuing.
    Prepared,
    /// Issuing workload certificates.
    Active,
    /// No longer issuing; kept until its last leaf has expired.
    Retired,
}

/// One installed intermediate certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntermediateRecord {
    pub version: u32,
    pub key_id: KeyId,
    pub certificate_pem: String,
    pub status: IntermediateStatus,
    /// RFC 3339 time of installation.
    pub installed_at: String,
    pub not_after: String,
    pub subject: String,
    /// When it started issuing (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    /// When it stopped issuing (RFC 3339): its last leaf was issued no later than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

/// A root certificate in the trust bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    pub version: u32,
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    pub certificate_pem: String,
    pub subject: String,
    pub not_after: String,
    /// When it entered the bundle (RFC 3339).
    pub added_at: String,
}

/// A revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub version: u32,
    /// Hex SHA-256 fingerprint of the CA certificate that issued the revoked certificate.
    pub issuer: String,
    /// Hex serial number.
    pub serial: String,
    pub reason: String,
    pub revoked_at: String,
}

/// A root's CRL, signed offline in a ceremony and imported through the admin API. Served for
/// roots whose key is not in this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCrl {
    pub version: u32,
    /// Hex SHA-256 fingerprint of the root that signed it.
    pub issuer: String,
    pub number: u64,
    /// The CRL as signed (PEM, `X509 CRL`).
    pub crl_pem: String,
    pub this_update: String,
    pub next_update: Option<String>,
    pub imported_at: String,
}

/// The CA state store.
pub struct CaState {
    db: sled::Db,
    intermediates: sled::Tree,
    roots: sled::Tree,
    revocations: sled::Tree,
    meta: sled::Tree,
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(v).map_err(|e| StateError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(storage)
}

/// Why a state change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Done(Box<IntermediateRecord>, Option<Box<IntermediateRecord>>),
    NotFound,
    Refused(String),
}

const BUNDLE_SEQUENCE: &[u8] = b"bundle_sequence";

impl CaState {
    /// Opens (creating if needed) the state under `data_dir/state`, with the default page
    /// cache.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        Self::open_with_cache(data_dir, crate::store::DEFAULT_CACHE_BYTES)
    }

    /// [`CaState::open`] with a page cache of at most `cache_bytes` (`[store] cache_mb`).
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
        let (intermediates, roots, revocations, meta) = (
            tree("intermediates")?,
            tree("roots")?,
            tree("revocations")?,
            tree("meta")?,
        );
        Ok(CaState {
            db,
            intermediates,
            roots,
            revocations,
            meta,
        })
    }

    fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(storage)
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
        let Some(mut next) = self.intermediate(key_id)? else {
            return Ok(Transition::NotFound);
        };
        match next.status {
            IntermediateStatus::Prepared => {}
            IntermediateStatus::Active => {
                return Ok(Transition::Refused(format!("{key_id} is already active")))
            }
            IntermediateStatus::Retired => {
                return Ok(Transition::Refused(format!(
                    "{key_id} is retired; a retired intermediate is not activated again"
                )))
            }
        }
        let mut previous = self.active()?;
        next.status = IntermediateStatus::Active;
        next.activated_at = Some(now.to_string());
        let mut batch = sled::Batch::default();
        if let Some(prev) = previous.as_mut() {
            prev.status = IntermediateStatus::Retired;
            prev.retired_at = Some(now.to_string());
            batch.insert(prev.key_id.to_string().as_bytes(), encode(&*prev)?);
        }
        batch.insert(key_id.to_string().as_bytes(), encode(&next)?);
        self.intermediates.apply_batch(batch).map_err(storage)?;
        self.flush()?;
        Ok(Transition::Done(Box::new(next), previous.map(Box::new)))
    }

    /// Retires a prepared intermediate (the active one is retired by activating its successor).
    pub fn retire(&self, key_id: &KeyId, now: &str) -> Result<Transition, StateError> {
        let Some(mut record) = self.intermediate(key_id)? else {
            return Ok(Transition::NotFound);
        };
        match record.status {
            IntermediateStatus::Prepared => {}
            IntermediateStatus::Active => {
                return Ok(Transition::Refused(format!(
                    "{key_id} is the active intermediate; activate its successor instead"
                )))
            }
            IntermediateStatus::Retired => {
                return Ok(Transition::Refused(format!("{key_id} is already retired")))
            }
        }
        record.status = IntermediateStatus::Retired;
        record.retired_at = Some(now.to_string());
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
        let inserted = self
            .revocations
            .compare_and_swap(
                key.as_bytes(),
                None as Option<&[u8]>,
                Some(encode(&record)?),
            )
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
    pub fn install(
        &self,
        mut record: IntermediateRecord,
    ) -> Result<IntermediateRecord, StateError> {
        record.version = RECORD_VERSION;
        if self.active()?.is_none() {
            record.status = IntermediateStatus::Active;
            record.activated_at = Some(record.installed_at.clone());
        } else {
            record.status = IntermediateStatus::Prepared;
        }
        let value = serde_json::to_vec(&record).map_err(|e| StateError::Storage(e.to_string()))?;
        self.intermediates
            .insert(record.key_id.to_string().as_bytes(), value)
            .map_err(|e| StateError::Storage(e.to_string()))?;
        self.db
            .flush()
            .map_err(|e| StateError::Storage(e.to_string()))?;
        Ok(record)
    }

    /// All installed intermediates.
    pub fn intermediates(&self) -> Result<Vec<IntermediateRecord>, StateError> {
        self.intermediates
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(|e| StateError::Storage(e.to_string()))?;
                serde_json::from_slice::<IntermediateRecord>(&v).map_err(|e| StateError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: e.to_string(),
                })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u8) -> IntermediateRecord {
        IntermediateRecord {
            version: 0,
            key_id: KeyId(vec![id]),
            certificate_pem: "pem".into(),
            status: IntermediateStatus::Prepared,
            installed_at: "now".into(),
            not_after: "later".into(),
            subject: "CN=x".into(),
            activated_at: None,
            retired_at: None,
        }
    }

    #[test]
    fn first_install_is_active_second_is_prepared_and_both_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let state = CaState::open(dir.path()).expect("open");
            assert_eq!(
                state.install(record(1)).expect("install").status,
                IntermediateStatus::Active
            );
            assert_eq!(
                state.install(record(2)).expect("install").status,
                IntermediateStatus::Prepared
            );
        }
        let state = CaState::open(dir.path()).expect("reopen");
        let all = state.intermediates().expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(
            state.active().expect("active").map(|r| r.key_id),
            Some(KeyId(vec![1]))
        );
        assert!(all.iter().all(|r| r.version == RECORD_VERSION));
    }

    #[test]
    fn an_imported_crl_is_replaced_only_by_a_higher_number_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crl = |number: u64| ImportedCrl {
            version: 0,
            issuer: "ab".into(),
            number,
            crl_pem: format!("crl {number}"),
            this_update: "t".into(),
            next_update: None,
            imported_at: "t".into(),
        };
        {
            let state = CaState::open(dir.path()).expect("open");
            assert_eq!(state.imported_crl("ab").expect("get"), None);
            assert_eq!(state.store_imported_crl(crl(2)).expect("store"), Ok(()));
            let kept = state.store_imported_crl(crl(2)).expect("store");
            assert_eq!(kept.map_err(|c| c.number), Err(2));
            let kept = state.store_imported_crl(crl(1)).expect("store");
            assert_eq!(kept.map_err(|c| c.crl_pem), Err("crl 2".to_string()));
            assert_eq!(state.store_imported_crl(crl(3)).expect("store"), Ok(()));
            assert_eq!(state.imported_crl("other").expect("get"), None);
        }
        let state = CaState::open(dir.path()).expect("reopen");
        let stored = state.imported_crl("ab").expect("get").expect("kept");
        assert_eq!((stored.number, stored.version), (3, RECORD_VERSION));
    }

    #[test]
    fn activation_retires_the_previous_one_atomically_and_refuses_bad_transitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = CaState::open(dir.path()).expect("open");
        state.install(record(1)).expect("install");
        state.install(record(2)).expect("install");
        state.install(record(3)).expect("install");
        let Transition::Done(next, prev) = state.activate(&KeyId(vec![2]), "t1").expect("activate")
        else {
            panic!("not activated")
        };
        assert_eq!(next.activated_at.as_deref(), Some("t1"));
        let prev = prev.expect("previous");
        assert_eq!(prev.key_id, KeyId(vec![1]));
        assert_eq!(prev.retired_at.as_deref(), Some("t1"));
        let stored = state
            .intermediate(&KeyId(vec![1]))
            .expect("get")
            .expect("one");
        assert_eq!(stored.status, IntermediateStatus::Retired);
        assert_eq!(
            state.active().expect("active").map(|r| r.key_id),
            Some(KeyId(vec![2]))
        );
        assert!(matches!(
            state.activate(&KeyId(vec![1]), "t2"),
            Ok(Transition::Refused(_))
        ));
        assert!(matches!(
            state.activate(&KeyId(vec![2]), "t2"),
            Ok(Transition::Refused(_))
        ));
        assert!(matches!(
            state.retire(&KeyId(vec![2]), "t2"),
            Ok(Transition::Refused(_))
        ));
        assert!(matches!(
            state.activate(&KeyId(vec![9]), "t2"),
            Ok(Transition::NotFound)
        ));
        assert!(matches!(
            state.retire(&KeyId(vec![3]), "t2"),
            Ok(Transition::Done(..))
        ));
    }

    #[test]
    fn roots_revocations_and_counters_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = |fp: &str, at: &str| RootRecord {
            version: 0,
            fingerprint: fp.into(),
            certificate_pem: "pem".into(),
            subject: "CN=r".into(),
            not_after: "later".into(),
            added_at: at.into(),
        };
        {
            let state = CaState::open(dir.path()).expect("open");
            assert_eq!(state.bundle_sequence().expect("seq"), 0);
            assert!(state.add_root(root("bb", "t2")).expect("add"));
            assert!(state.add_root(root("aa", "t1")).expect("add"));
            assert!(!state.add_root(root("aa", "t3")).expect("add again"));
            assert_eq!(state.bundle_sequence().expect("seq"), 2);
            assert!(state.remove_root("bb").expect("remove"));
            assert!(!state.remove_root("bb").expect("remove again"));
            let rev = RevocationRecord {
                version: 0,
                issuer: "ca7".into(),
                serial: "01".into(),
                reason: "keyCompromise".into(),
                revoked_at: "t".into(),
            };
            assert!(state.revoke(rev.clone()).expect("revoke"));
            assert!(!state.revoke(rev).expect("revoke again"));
            assert_eq!(state.next_crl_number("ca7").expect("n"), 1);
            assert_eq!(state.next_crl_number("ca7").expect("n"), 2);
        }
        let state = CaState::open(dir.path()).expect("reopen");
        let roots = state.roots().expect("roots");
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].fingerprint, "aa");
        assert_eq!(state.bundle_sequence().expect("seq"), 3);
        assert_eq!(state.revocations("ca7").expect("revs").len(), 1);
        assert!(state.revocations("ca8").expect("revs").is_empty());
        assert_eq!(state.next_crl_number("ca7").expect("n"), 3);
    }
}
