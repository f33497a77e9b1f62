//! Verification of a log: the hash chain and every checkpoint signature, over a stored log
//! (`dir/audit`, read without opening it for writing) or over an exported JSON Lines file.
//!
//! This part only reads: it never writes a record, never repairs a chain, and never signs.
//! What a chain must satisfy is [`record`](super::record)'s to say; this part feeds it the
//! stored bytes and the key to check checkpoints against.

use std::path::Path;

use super::key::stored_key;
use super::record::{self, ChainStart, ChainSummary};
use super::segments::Store;
use super::{open_store, AuditError};

/// Records read into memory at once while verifying a stored chain.
const CHUNK: usize = 4096;

/// Verifies a whole stored log against `key` (the checkpoints' key; none: chain only).
pub(super) fn verify_whole(store: &Store, key: Option<&[u8]>) -> Result<ChainSummary, AuditError> {
    verify_store_from(store, ChainStart::default(), key)
}

/// Verifies the stored records after `start` (a point already verified), in chunks.
pub(super) fn verify_store_from(
    store: &Store,
    start: ChainStart,
    key: Option<&[u8]>,
) -> Result<ChainSummary, AuditError> {
    let mut values = store.iter_from(start.seq + 1);
    let mut at = start;
    let mut checkpoints = 0;
    loop {
        let chunk = values.by_ref().take(CHUNK).collect::<Result<Vec<_>, _>>()?;
        let done = chunk.len() < CHUNK;
        let mut summary =
            record::verify_chain_from(at, chunk.iter().map(|v| v.as_slice()), key.as_slice())?;
        checkpoints += summary.checkpoints;
        if done {
            summary.checkpoints = checkpoints;
            return Ok(summary);
        }
        at = ChainStart {
            seq: summary.records,
            head: summary.head,
            last_checkpoint: summary.last_checkpoint,
        };
    }
}

/// Verifies the whole log under `dir` against `key`, or against the key it records.
pub fn verify_store(dir: &Path, key: Option<&[u8]>) -> Result<ChainSummary, AuditError> {
    let store = open_store(dir)?;
    let stored = stored_key(&store)?;
    let key = key.or(stored.as_ref().map(|k| k.spki.as_slice()));
    verify_whole(&store, key)
}

/// Verifies an exported JSON Lines file or a segment; checkpoint signatures against `key` when
/// given.
pub fn verify_file(path: &Path, key: Option<&[u8]>) -> Result<ChainSummary, AuditError> {
    verify_file_with_keys(path, key.as_slice())
}

/// Verifies an exported JSON Lines file; every checkpoint must be signed by one of `keys`
/// (none given: signatures are not checked).
pub fn verify_file_with_keys(path: &Path, keys: &[&[u8]]) -> Result<ChainSummary, AuditError> {
    let file_err = |reason: String| AuditError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    // The last segment of a running (or crashed) appliance ends with zeros written ahead.
    verify_lines(text.trim_end_matches('\0'), keys)
}

/// Verifies exported JSON Lines held in memory (one record per line, empty lines skipped);
/// every checkpoint must be signed by one of `keys` (none given: signatures are not checked).
pub fn verify_lines(text: &str, keys: &[&[u8]]) -> Result<ChainSummary, AuditError> {
    Ok(record::verify_chain_with_keys(
        text.lines().filter(|l| !l.is_empty()).map(str::as_bytes),
        keys,
    )?)
}
