//! Verification of a log: the hash chain and every checkpoint signature, over a stored log
//! (`dir/audit`, read without opening it for writing) or over an exported JSON Lines file.
//!
//! This part only reads: it never writes a record, never repairs a chain, and never signs.
//! What a chain must satisfy is [`record`](super::record)'s to say; this part feeds it the
//! stored bytes and the key to check checkpoints against.

use std::path::Path;

use super::key::stored_key;
use super::record::{self, ChainSummary};
use super::{records_tree, storage, AuditError};

/// Verifies the chain stored in a tree, in key (= sequence) order.
pub(super) fn verify_tree(
    tree: &sled::Tree,
    key: Option<&[u8]>,
) -> Result<ChainSummary, AuditError> {
    let values = tree
        .iter()
        .values()
        .collect::<Result<Vec<_>, _>>()
        .map_err(storage)?;
    Ok(record::verify_chain_with_key(
        values.iter().map(|v| v.as_ref()),
        key,
    )?)
}

/// Verifies the log under `dir/audit` without opening it for writing. Checkpoint signatures
/// are checked against `key` (DER SubjectPublicKeyInfo) when given, else against the public
/// key recorded in the log.
pub fn verify_store(dir: &Path, key: Option<&[u8]>) -> Result<ChainSummary, AuditError> {
    let (db, tree) = records_tree(dir)?;
    let stored = stored_key(&db)?;
    let key = key.or(stored.as_ref().map(|k| k.spki.as_slice()));
    verify_tree(&tree, key)
}

/// Verifies an exported JSON Lines file; checkpoint signatures against `key` when given.
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
    verify_lines(&text, keys)
}

/// Verifies exported JSON Lines held in memory (one record per line, empty lines skipped);
/// every checkpoint must be signed by one of `keys` (none given: signatures are not checked).
pub fn verify_lines(text: &str, keys: &[&[u8]]) -> Result<ChainSummary, AuditError> {
    Ok(record::verify_chain_with_keys(
        text.lines().filter(|l| !l.is_empty()).map(str::as_bytes),
        keys,
    )?)
}
