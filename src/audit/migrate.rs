//! Moving a log kept by an earlier version in sled (`<data_dir>/audit` holding sled's `conf`
//! and `db`) to segment files, once, before the log is opened: every record byte for byte (so
//! the chain and its checkpoints verify as before), the audit key and the verification
//! marker. The segments are assembled in `audit.migrating`, marked complete, then put in
//! place; the sled store is kept as `audit.sled-<unix time>` (nothing is deleted). A migration
//! cut short starts again; one completed but not yet put in place is put in place.
//!
//! This part never changes a record.

use std::path::Path;

use super::segments::{self, Marker, SEGMENT_RECORDS};
use super::AuditError;

const COMPLETE: &str = "complete";

fn fail(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Open {
        path: path.display().to_string(),
        reason: format!("migrating the audit log to segment files: {e}"),
    }
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Migrates `dir/audit` when it is a sled store; finishes a migration that was cut short.
pub(super) fn from_sled_if_needed(dir: &Path) -> Result<(), AuditError> {
    let path = dir.join("audit");
    let work = dir.join("audit.migrating");
    if work.join(COMPLETE).exists() && (!path.exists() || is_empty_dir(&path)) {
        return put_in_place(dir, &work, &path);
    }
    if !(path.join("conf").exists() && path.join("db").exists()) {
        return Ok(());
    }
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(|e| fail(&work, e))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| fail(&work, e))?;
    tracing::warn!(
        path = %path.display(),
        "moving the audit log from sled to segment files (once; the sled store is kept)"
    );
    let db = crate::store::open(&path).map_err(|e| fail(&path, crate::store::explain(&e)))?;
    let records = db.open_tree("records").map_err(|e| fail(&path, e))?;
    let meta_tree = db.open_tree("meta").map_err(|e| fail(&path, e))?;
    let get = |k: &[u8]| meta_tree.get(k).ok().flatten();
    let mut meta = segments::new_meta();
    meta.key_id = get(b"audit_key_id").map(hex::encode);
    meta.key_spki = get(b"audit_key_spki").map(hex::encode);
    let marker_seq = get(b"verified_checkpoint_seq")
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes);
    meta.marker = marker_seq
        .zip(get(b"verified_checkpoint_hash"))
        .map(|(seq, hash)| Marker {
            seq,
            hash: hex::encode(hash),
        });
    let mut first = 1u64;
    let mut lines = Vec::new();
    let mut moved = 0u64;
    for item in records.iter() {
        let (_, value) = item.map_err(|e| fail(&path, e))?;
        lines.push(value);
        if lines.len() as u64 == SEGMENT_RECORDS {
            segments::write_segment(&work, first, &lines, true)?;
            first += SEGMENT_RECORDS;
            moved += SEGMENT_RECORDS;
            lines.clear();
        }
    }
    moved += lines.len() as u64;
    segments::write_segment(&work, first, &lines, false)?;
    segments::write_meta(&work, &meta)?;
    std::fs::write(work.join(COMPLETE), b"").map_err(|e| fail(&work, e))?;
    segments::sync_dir(&work)?;
    drop((records, meta_tree, db));
    let unix = time::OffsetDateTime::now_utc().unix_timestamp();
    let kept = dir.join(format!("audit.sled-{unix}"));
    std::fs::rename(&path, &kept).map_err(|e| fail(&kept, e))?;
    put_in_place(dir, &work, &path)?;
    tracing::warn!(
        records = moved,
        kept = %kept.display(),
        "audit log moved to segment files"
    );
    Ok(())
}

fn put_in_place(dir: &Path, work: &Path, path: &Path) -> Result<(), AuditError> {
    if path.exists() {
        std::fs::remove_dir(path).map_err(|e| fail(path, e))?;
    }
    std::fs::rename(work, path).map_err(|e| fail(path, e))?;
    segments::sync_dir(dir)?;
    let _ = std::fs::remove_file(path.join(COMPLETE));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::open_store;
    use super::super::record::{self, GENESIS};
    use super::super::segments::issued_key;
    use super::super::segments::tests::issued;

    #[test]
    fn a_log_kept_in_sled_is_moved_to_segments_byte_for_byte() {
        let dir = tempfile::tempdir().expect("dir");
        let mut lines = Vec::new();
        {
            let db = crate::store::open(&dir.path().join("audit")).expect("sled");
            let records = db.open_tree("records").expect("records");
            let meta = db.open_tree("meta").expect("meta");
            let mut head = GENESIS;
            for seq in 1..=300u64 {
                let (bytes, h) =
                    record::seal(seq, "2026-12-01T00:00:00Z".into(), &head, issued(seq));
                records
                    .insert(seq.to_be_bytes(), bytes.clone())
                    .expect("insert");
                lines.push(bytes);
                head = h;
            }
            meta.insert("audit_key_id", b"\x01\x02".as_slice())
                .expect("meta");
            meta.insert("audit_key_spki", b"\x30\x00".as_slice())
                .expect("meta");
            db.flush().expect("flush");
        }
        let store = open_store(dir.path()).expect("migrated");
        assert_eq!(store.last_seq(), 300);
        let moved: Vec<Vec<u8>> = store.iter_from(1).map(|b| b.expect("read")).collect();
        assert_eq!(moved, lines);
        let meta = store.meta();
        assert_eq!(meta.key_id.as_deref(), Some("0102"));
        assert_eq!(meta.key_spki.as_deref(), Some("3000"));
        assert!(store
            .was_issued(&issued_key("0a0b", &format!("{:040x}", 43)))
            .expect("index"));
        let kept = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit.sled-"))
            .count();
        assert_eq!(kept, 1, "the sled store is kept");
        drop(store);
        // Opening again does not migrate again.
        assert_eq!(open_store(dir.path()).expect("reopen").last_seq(), 300);
    }
}
