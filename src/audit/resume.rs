//! Where an open log takes up its chain: the verification marker.
//!
//! The marker (in `meta.json`) names the last checkpoint already verified or written by this
//! appliance: its sequence number and the hash of its stored bytes. Opening checks that the
//! record still hashes to it and verifies only the records after it; a marker that does not
//! match (or none) means the whole chain is verified. `hsm-ca audit verify` always verifies the
//! whole chain: records before the marker are not read again at start-up.
//!
//! This part never writes a record of the chain.

use super::record::{self, AuditEvent, AuditRecord, ChainStart, ChainSummary};
use super::segments::{Marker, Store};
use super::verify::verify_store_from;
use super::AuditError;

/// The marker as stored: sequence number and hash of a verified checkpoint.
fn read_marker(store: &Store) -> Option<(u64, [u8; 32])> {
    let m = store.meta().marker?;
    let hash = <[u8; 32]>::try_from(hex::decode(m.hash).ok()?.as_slice()).ok()?;
    Some((m.seq, hash))
}

/// Sets the marker to checkpoint `seq` whose stored bytes hash to `hash` (durable on return).
pub(super) fn set_marker(store: &Store, seq: u64, hash: &[u8; 32]) -> Result<(), AuditError> {
    let mut meta = store.meta();
    meta.marker = Some(Marker {
        seq,
        hash: hex::encode(hash),
    });
    store.set_meta(meta)
}

/// Where verification can start: after the marker's checkpoint, when its record is still
/// there, still hashes to the marker and is a checkpoint.
fn start_at_marker(store: &Store) -> Result<Option<ChainStart>, AuditError> {
    let Some((seq, hash)) = read_marker(store) else {
        return Ok(None);
    };
    if seq == 0 || seq > store.last_seq() {
        return Ok(None);
    }
    let Some(bytes) = store.iter_from(seq).next().transpose()? else {
        return Ok(None);
    };
    if record::link_hash(&bytes) != hash {
        return Ok(None);
    }
    Ok(match serde_json::from_slice::<AuditRecord>(&bytes) {
        Ok(r) if r.seq == seq && matches!(r.event, AuditEvent::Checkpoint { .. }) => {
            Some(ChainStart {
                seq,
                head: hash,
                last_checkpoint: Some((seq, r.time)),
            })
        }
        _ => None,
    })
}

/// Verifies the log for opening: from the marker when it matches, else the whole chain; then
/// moves the marker to the last checkpoint. Returns the summary and whether the whole chain
/// was read.
pub(super) fn verify_for_open(
    store: &Store,
    key: Option<&[u8]>,
) -> Result<(ChainSummary, bool), AuditError> {
    let marker = read_marker(store);
    let (summary, whole) = match start_at_marker(store)? {
        Some(start) => (verify_store_from(store, start, key)?, false),
        None => {
            if marker.is_some() {
                tracing::warn!(
                    "the audit log's verification marker does not match its records; \
                     verifying the whole chain"
                );
            }
            (verify_store_from(store, ChainStart::default(), key)?, true)
        }
    };
    if let Some((seq, _)) = &summary.last_checkpoint {
        if let Some(bytes) = store.iter_from(*seq).next().transpose()? {
            let hash = record::link_hash(&bytes);
            if marker != Some((*seq, hash)) {
                set_marker(store, *seq, &hash)?;
            }
        }
    }
    Ok((summary, whole))
}
