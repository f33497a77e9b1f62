//! Where an open log takes up its chain: the verification marker and the index of issued
//! serials.
//!
//! The marker (in the `meta` tree) names the last checkpoint already verified or written by
//! this appliance: its sequence number and the hash of its stored bytes. Opening checks that
//! the record still hashes to it and verifies only the records after it; a marker that does
//! not match (or none) means the whole chain is verified. `hsm-ca audit verify` always
//! verifies the whole chain: records before the marker are not read again at start-up.
//!
//! The index (tree `issued`) maps "issuing key id / serial" to the sequence number of the
//! `issued` record, written in the same flush as the records; its watermark says up to which
//! record it is complete, so a missing or lagging index is rebuilt from the records after it.
//!
//! This part never writes a record of the chain.

use super::record::{self, AuditEvent, AuditRecord, ChainStart, ChainSummary};
use super::verify::verify_tree_from;
use super::{storage, AuditError, Trees};

const MARKER_SEQ: &[u8] = b"verified_checkpoint_seq";
const MARKER_HASH: &[u8] = b"verified_checkpoint_hash";
/// Key of the index's watermark (no index key starts with 0xff: they are UTF-8).
const INDEXED_UP_TO: &[u8] = b"\xffindexed_up_to";
/// Records indexed per batch while the index catches up.
const INDEX_CHUNK: u64 = 4096;

fn record_at(trees: &Trees, seq: u64) -> Result<Option<sled::IVec>, AuditError> {
    trees.records.get(seq.to_be_bytes()).map_err(storage)
}

/// The marker as stored: sequence number and hash of a verified checkpoint.
fn read_marker(trees: &Trees) -> Result<Option<(u64, [u8; 32])>, AuditError> {
    let seq = trees.meta.get(MARKER_SEQ).map_err(storage)?;
    let hash = trees.meta.get(MARKER_HASH).map_err(storage)?;
    Ok(match (seq, hash) {
        (Some(seq), Some(hash)) => {
            let seq = <[u8; 8]>::try_from(seq.as_ref())
                .ok()
                .map(u64::from_be_bytes);
            let hash = <[u8; 32]>::try_from(hash.as_ref()).ok();
            seq.zip(hash)
        }
        _ => None,
    })
}

/// Sets the marker to checkpoint `seq` whose stored bytes hash to `hash` (durable with the
/// next flush).
pub(super) fn set_marker(trees: &Trees, seq: u64, hash: &[u8; 32]) -> Result<(), AuditError> {
    let mut batch = sled::Batch::default();
    batch.insert(MARKER_SEQ, &seq.to_be_bytes());
    batch.insert(MARKER_HASH, hash.as_slice());
    trees.meta.apply_batch(batch).map_err(storage)
}

/// Where verification can start: after the marker's checkpoint, when its record is still
/// there, still hashes to the marker and is a checkpoint.
fn start_at_marker(trees: &Trees) -> Result<Option<ChainStart>, AuditError> {
    let Some((seq, hash)) = read_marker(trees)? else {
        return Ok(None);
    };
    let Some(bytes) = record_at(trees, seq)? else {
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
    trees: &Trees,
    key: Option<&[u8]>,
) -> Result<(ChainSummary, bool), AuditError> {
    let marker = read_marker(trees)?;
    let (summary, whole) = match start_at_marker(trees)? {
        Some(start) => (verify_tree_from(&trees.records, start, key)?, false),
        None => {
            if marker.is_some() {
                tracing::warn!(
                    "the audit log's verification marker does not match its records; \
                     verifying the whole chain"
                );
            }
            (
                verify_tree_from(&trees.records, ChainStart::default(), key)?,
                true,
            )
        }
    };
    if let Some((seq, _)) = &summary.last_checkpoint {
        if let Some(bytes) = record_at(trees, *seq)? {
            let hash = record::link_hash(&bytes);
            if marker != Some((*seq, hash)) {
                set_marker(trees, *seq, &hash)?;
                trees.db.flush().map_err(storage)?;
            }
        }
    }
    Ok((summary, whole))
}

/// The index key of a serial issued by the key `ca_key` (serials as lowercase hex without
/// leading zero bytes, as audited and as revocations name them).
pub(super) fn issued_key(ca_key: &str, serial: &str) -> Vec<u8> {
    let mut serial = serial.to_ascii_lowercase();
    while serial.len() > 2 && serial.starts_with("00") {
        serial.drain(..2);
    }
    format!("{ca_key}/{serial}").into_bytes()
}

/// Adds the index entry of `event` (when it is an issuance) as record `seq` to `batch`.
pub(super) fn index_event(batch: &mut sled::Batch, seq: u64, event: &AuditEvent) {
    if let AuditEvent::Issued { serial, ca_key, .. } = event {
        batch.insert(issued_key(ca_key, serial), &seq.to_be_bytes());
    }
}

/// Marks the index complete up to record `seq` (in the same batch as its entries).
pub(super) fn index_watermark(batch: &mut sled::Batch, seq: u64) {
    batch.insert(INDEXED_UP_TO, &seq.to_be_bytes());
}

/// Brings the index up to the last record: indexes every record after its watermark (all of
/// them when the index is missing). Returns how many records were read.
pub(super) fn catch_up_index(trees: &Trees) -> Result<u64, AuditError> {
    let up_to = trees
        .issued
        .get(INDEXED_UP_TO)
        .map_err(storage)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let mut batch = sled::Batch::default();
    let (mut read, mut last) = (0u64, up_to);
    for item in trees.records.range((up_to + 1).to_be_bytes()..) {
        let (_, bytes) = item.map_err(storage)?;
        let r: AuditRecord = serde_json::from_slice(&bytes).map_err(storage)?;
        index_event(&mut batch, r.seq, &r.event);
        (read, last) = (read + 1, r.seq);
        if read % INDEX_CHUNK == 0 {
            index_watermark(&mut batch, last);
            let full = std::mem::take(&mut batch);
            trees.issued.apply_batch(full).map_err(storage)?;
        }
    }
    if read % INDEX_CHUNK != 0 {
        index_watermark(&mut batch, last);
        trees.issued.apply_batch(batch).map_err(storage)?;
    }
    if read > 0 {
        trees.db.flush().map_err(storage)?;
    }
    Ok(read)
}

/// Whether the index holds `serial` issued by `ca_key`.
pub(super) fn was_issued(trees: &Trees, ca_key: &str, serial: &str) -> Result<bool, AuditError> {
    trees
        .issued
        .contains_key(issued_key(ca_key, serial))
        .map_err(storage)
}
