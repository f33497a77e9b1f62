//! Export: a log written out as JSON Lines, one record per line as its exact stored bytes,
//! so that [`verify_file`](super::verify_file) can check it offline with the exported public
//! key.
//!
//! An export never re-encodes a record (the hash covers the stored bytes) and never leaves a
//! log that does not verify: the store is verified before the first line is written.

use std::io::Write;
use std::path::Path;

use super::key::stored_key;
use super::segments::Store;
use super::verify::verify_whole;
use super::{open_store, storage, AuditError};

/// Writes every record as one JSON line (the exact stored bytes) and returns how many.
pub fn export(dir: &Path, out: &mut dyn Write) -> Result<u64, AuditError> {
    let store = open_store(dir)?;
    let stored = stored_key(&store)?;
    verify_whole(&store, stored.as_ref().map(|k| k.spki.as_slice()))?;
    write_lines(&store, out)
}

/// Writes every record of `tree` as one line (its exact stored bytes); returns how many.
pub(super) fn write_lines(store: &Store, out: &mut dyn Write) -> Result<u64, AuditError> {
    let mut n = 0;
    for value in store.iter_from(1) {
        let value = value?;
        out.write_all(&value).map_err(storage)?;
        out.write_all(b"\n").map_err(storage)?;
        n += 1;
    }
    out.flush().map_err(storage)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::AuditLog;
    use crate::audit::record::{AuditEvent, ChainError};
    use crate::audit::verify::verify_file;

    fn refused(i: usize) -> AuditEvent {
        AuditEvent::Refused {
            caller: Some(format!("spiffe://td/ns/a/sa/w{i}")),
            code: "PermissionDenied".into(),
            reason: "SAN mismatch".into(),
            folded: 0,
        }
    }

    #[test]
    fn exports_verify_offline_and_edits_to_them_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path()).expect("open");
        for i in 0..20 {
            log.append_blocking(refused(i)).expect("append");
        }
        drop(log);
        let file = dir.path().join("audit.jsonl");
        let mut out = std::fs::File::create(&file).expect("create");
        assert_eq!(export(dir.path(), &mut out).expect("export"), 20);
        drop(out);
        assert_eq!(verify_file(&file, None).expect("verify").records, 20);
        let text = std::fs::read_to_string(&file).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        let edited = lines[7].replace("w7", "w8");
        lines[7] = &edited;
        std::fs::write(&file, lines.join("\n")).expect("write");
        assert!(matches!(
            verify_file(&file, None),
            Err(AuditError::Chain(ChainError::Link { seq: 9, .. }))
        ));
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(3);
        std::fs::write(&file, lines.join("\n")).expect("write");
        assert!(matches!(
            verify_file(&file, None),
            Err(AuditError::Chain(ChainError::Sequence { .. }))
        ));
    }
}
