//! The CA state on disk (sled): which intermediate certificates are installed and which one
//! issues. Records are versioned JSON so later versions can read what earlier ones wrote.
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
}

/// The CA state store.
pub struct CaState {
    db: sled::Db,
    intermediates: sled::Tree,
}

impl CaState {
    /// Opens (creating if needed) the state under `data_dir/state`.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        let path = data_dir.join("state");
        let open_err = |reason: String| StateError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| open_err(e.to_string()))?;
        let db = sled::open(&path).map_err(|e| open_err(e.to_string()))?;
        let intermediates = db
            .open_tree("intermediates")
            .map_err(|e| open_err(e.to_string()))?;
        Ok(CaState { db, intermediates })
    }

    /// Records an intermediate; it becomes active when no other is. Durable on return.
    pub fn install(
        &self,
        mut record: IntermediateRecord,
    ) -> Result<IntermediateRecord, StateError> {
        record.version = RECORD_VERSION;
        if self.active()?.is_none() {
            record.status = IntermediateStatus::Active;
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
}
