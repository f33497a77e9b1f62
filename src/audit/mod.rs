//! The tamper-evident audit log: hash-chained records in JSON Lines segment files, written by
//! one thread that commits in groups (many records, one write that is durable on return) and answers
//! each caller only once its record is durable. Opening a log whose chain does not verify is
//! refused; opening reads only the last segment and the records after the last checkpoint
//! already verified (the marker in `meta.json`), so start time and memory do not grow with the
//! log; full verification reads them all.
//!
//! Checkpoints: every `checkpoint_every` records or `checkpoint_interval` (whichever comes
//! first), and when the log closes, the writer appends a [`AuditEvent::Checkpoint`] record: an
//! ECDSA P-256 signature by the audit key — generated in the device on first use, its id kept in
//! the log's own `meta` tree — over the hash of the record before it and over the checkpoint
//! record's own sequence number, time and key id. The checkpoint is itself a record of the
//! chain and rides in the same group commit as the records it covers.
//!
//! What verification detects: any edited, removed, inserted or reordered record (the hash chain),
//! forged or altered checkpoints (the signature, checked against the device's public key or an
//! exported copy of it), and a cut-off tail when the log does not end with a checkpoint (a log
//! closed cleanly always does; after a crash the next start covers the tail with the next
//! checkpoint). A cut that removes whole checkpoints at the end leaves a shorter log that still
//! verifies: compare with a head an auditor kept (`verify` prints it) or with an export.
//!
//! Refusals are rate limited per caller ([`limiter`]) and never wait for the disk.
//!
//! The parts, each importing (outside its tests) only those listed before it:
//! - [`record`]: the record format and the hash chain; [`limiter`]: refusal rate limits.
//! - `segments`: the files (segments, their index side files, `meta.json`, the lock);
//!   `migrate`: moving a log kept in sled by an earlier version to segments, once.
//! - `key`: the audit key (found or created in the device, kept in `meta.json`) and the
//!   checkpoint it signs.
//! - `verify`: verification of a stored log or an exported JSON Lines file.
//! - `resume`: where an open log takes up its chain (the verification marker).
//! - `export`: writing a log out as JSON Lines.
//! - `writer`: the writer thread (group commit, when checkpoints are due, live figures,
//!   retries after a storage error).
//! - `log`: the appliance's [`AuditLog`] handle (open, append, refusals, pages).
//! - `host`: the offline ceremony host's [`HostLog`].
//!
//! This file holds what they all share: the error type.
//!
//! Never written here: PINs, tokens, key material. Records name identities, serials, key ids.

mod export;
mod host;
mod key;
pub mod limiter;
mod log;
mod migrate;
pub mod record;
mod resume;
pub mod segments;
mod verify;
mod writer;

use std::path::Path;

pub use self::export::export;
pub use self::host::HostLog;
pub use self::key::{read_public_key, recorded_key, AuditKey, AUDIT_KEY_LABEL};
pub use self::log::{
    AuditLog, AuditOptions, NotIssued, ShipGate, ShippingStatus, DEFAULT_AUDIT_CACHE_BYTES,
};
pub use self::verify::{verify_file, verify_file_with_keys, verify_lines, verify_store};
pub use self::writer::{AuditStats, CheckpointPolicy, MAX_GROUP, RETRY_FIRST, RETRY_MAX};
pub use limiter::RefusalLimits;
pub use record::{AuditEvent, AuditRecord, ChainError, ChainStart, ChainSummary};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the audit log does not verify: {0}")]
    Chain(#[from] ChainError),
    #[error("audit storage: {0}")]
    Storage(String),
    #[error("the audit log is closed; nothing more is accepted")]
    Stopped,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("audit key: {0}")]
    Key(String),
    /// `[audit] require_shipped`: the record is durable on this node, but did not reach the
    /// shared database in time, so the answer it belongs to is not given.
    #[error("audit record {seq} did not reach the shared database in time")]
    NotShipped { seq: u64 },
}

fn storage(e: impl std::fmt::Display) -> AuditError {
    AuditError::Storage(e.to_string())
}

/// Opens the log store under `dir/audit` (created when missing), moving a log kept in sled by
/// an earlier version to segment files first.
fn open_store(dir: &Path) -> Result<segments::Store, AuditError> {
    migrate::from_sled_if_needed(dir)?;
    segments::Store::open(dir)
}
