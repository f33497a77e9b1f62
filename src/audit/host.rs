//! The log of an offline host (the root ceremony's): [`HostLog`], appended to by one process
//! at a time without a writer thread, each record flushed before `append` returns.
//!
//! It shares the store layout and record format of the appliance's log, so `audit verify` and
//! `audit export` read it too. It never signs on its own: checkpoints are written only when the
//! caller asks, by the key the caller names.

use std::io::Write;
use std::path::Path;

use super::export::write_lines;
use super::key::sign_checkpoint;
use super::record::{self, AuditEvent, AuditRecord};
use super::segments::{index_key, Store};
use super::verify::verify_whole;
use super::{open_store, storage, AuditError};
use crate::keystore::{KeyId, KeyStore, SignatureScheme};

/// The log of an offline host (the root ceremony's): one process appends at a time, each
/// record is durable when `append` returns, and checkpoints are signed when the caller asks,
/// by the key it names (the root key the ceremony used). Same store layout and record format
/// as [`AuditLog`](super::AuditLog), so `audit verify` and `audit export` read it too.
pub struct HostLog {
    store: Store,
    head: [u8; 32],
    next: u64,
}

impl HostLog {
    /// Opens (or creates) the log under `dir/audit`; its chain must verify.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let store = open_store(dir)?;
        let summary = verify_whole(&store, None)?;
        Ok(HostLog {
            store,
            head: summary.head,
            next: summary.records + 1,
        })
    }

    fn now() -> String {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    /// Appends `event`; returns its sequence number once it is on disk.
    pub fn append(&mut self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_at(event, Self::now())
    }

    fn append_at(&mut self, event: AuditEvent, time: String) -> Result<u64, AuditError> {
        let seq = self.next;
        let key = index_key(&event);
        let (bytes, head) = record::seal(seq, time, &self.head, event);
        self.store.append(&[(seq, bytes, key)])?;
        self.head = head;
        self.next += 1;
        Ok(seq)
    }

    /// Signs the chain head with `key` in `store` and appends that checkpoint.
    pub fn checkpoint(
        &mut self,
        store: &KeyStore,
        key: &KeyId,
        scheme: SignatureScheme,
    ) -> Result<u64, AuditError> {
        let time = Self::now();
        let event = sign_checkpoint(store, key, scheme, self.next - 1, &self.head, &time)
            .map_err(|e| AuditError::Key(format!("cannot sign the checkpoint: {e}")))?;
        self.append_at(event, time)
    }

    /// Every record, as stored (one JSON line each).
    pub fn export(&self, out: &mut dyn Write) -> Result<u64, AuditError> {
        write_lines(&self.store, out)
    }

    /// Records from sequence number `from` on.
    pub fn records_from(&self, from: u64) -> Result<Vec<AuditRecord>, AuditError> {
        self.store
            .iter_from(from)
            .map(|v| serde_json::from_slice(&v?).map_err(storage))
            .collect()
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
}
