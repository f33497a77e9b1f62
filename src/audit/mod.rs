//! The tamper-evident audit log: hash-chained records in sled, written by one thread that
//! commits in groups (many records, one fsync) and answers each caller only once its record is
//! durable. Opening a log whose chain does not verify is refused.
//!
//! Never written here: PINs, tokens, key material. Records name identities, serials, key ids.

pub mod record;

use std::io::{BufRead, Write};
use std::path::Path;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
pub use record::{AuditEvent, AuditRecord, ChainError, ChainSummary};

/// Records committed with one flush at most.
pub const MAX_GROUP: usize = 256;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the audit log does not verify: {0}")]
    Chain(#[from] ChainError),
    #[error("audit storage: {0}")]
    Storage(String),
    #[error("the audit log has stopped after a storage error; nothing more is accepted")]
    Stopped,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<u64, AuditError>>,
}

/// An open audit log. Appends are durable when they return.
pub struct AuditLog {
    tx: Option<Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
}

fn storage(e: impl std::fmt::Display) -> AuditError {
    AuditError::Storage(e.to_string())
}

fn records_tree(dir: &Path) -> Result<(sled::Db, sled::Tree), AuditError> {
    let path = dir.join("audit");
    let open = |reason: String| AuditError::Open {
        path: path.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| open(e.to_string()))?;
    let db = sled::open(&path).map_err(|e| open(e.to_string()))?;
    let tree = db.open_tree("records").map_err(|e| open(e.to_string()))?;
    Ok((db, tree))
}

/// Verifies the chain stored in a tree, in key (= sequence) order.
fn verify_tree(tree: &sled::Tree) -> Result<ChainSummary, AuditError> {
    let values = tree
        .iter()
        .values()
        .collect::<Result<Vec<_>, _>>()
        .map_err(storage)?;
    Ok(record::verify_chain(values.iter().map(|v| v.as_ref()))?)
}

impl AuditLog {
    /// Opens (or creates) the log under `dir/audit`, verifying the whole chain first.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let (db, tree) = records_tree(dir)?;
        let summary = verify_tree(&tree)?;
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(4 * MAX_GROUP);
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(db, tree, rx, summary))
            .map_err(storage)?;
        Ok(AuditLog {
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    fn submit(
        &self,
        event: AuditEvent,
    ) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(AuditError::Stopped)?
            .send(Pending { event, done })
            .map_err(|_| AuditError::Stopped)?;
        Ok(rx)
    }

    /// Appends `event`; returns its sequence number once it is on disk.
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.submit(event)?.await.map_err(|_| AuditError::Stopped)?
    }

    /// [`AuditLog::append`] for synchronous callers.
    pub fn append_blocking(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.submit(event)?
            .recv()
            .map_err(|_| AuditError::Stopped)?
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(db: sled::Db, tree: sled::Tree, rx: Receiver<Pending>, start: ChainSummary) {
    let mut head = start.head;
    let mut next = start.records + 1;
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        if failed {
            for p in group {
                let _ = p.done.send(Err(AuditError::Stopped));
            }
            continue;
        }
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut batch = sled::Batch::default();
        let (mut h, mut seq) = (head, next);
        let mut assigned = Vec::with_capacity(group.len());
        for p in &group {
            let (bytes, new_head) = record::seal(seq, time.clone(), &h, p.event.clone());
            batch.insert(&seq.to_be_bytes(), bytes);
            assigned.push(seq);
            h = new_head;
            seq += 1;
        }
        let outcome = tree
            .apply_batch(batch)
            .and_then(|()| db.flush().map(|_| ()));
        match outcome {
            Ok(()) => {
                head = h;
                next = seq;
                for (p, s) in group.into_iter().zip(assigned) {
                    let _ = p.done.send(Ok(s));
                }
            }
            Err(e) => {
                // What reached the disk is unknown: accept nothing more (a restart re-verifies).
                tracing::error!(error = %e, "audit log write failed; the log is stopped");
                failed = true;
                for p in group {
                    let _ = p.done.send(Err(storage(&e)));
                }
            }
        }
    }
}

/// Verifies the log under `dir/audit` without opening it for writing.
pub fn verify_store(dir: &Path) -> Result<ChainSummary, AuditError> {
    let (_db, tree) = records_tree(dir)?;
    verify_tree(&tree)
}

/// Writes every record as one JSON line (the exact stored bytes) and returns how many.
pub fn export(dir: &Path, out: &mut dyn Write) -> Result<u64, AuditError> {
    let (_db, tree) = records_tree(dir)?;
    verify_tree(&tree)?;
    let mut n = 0;
    for value in tree.iter().values() {
        let value = value.map_err(storage)?;
        out.write_all(&value).map_err(storage)?;
        out.write_all(b"\n").map_err(storage)?;
        n += 1;
    }
    out.flush().map_err(storage)?;
    Ok(n)
}

/// Verifies an exported JSON Lines file.
pub fn verify_file(path: &Path) -> Result<ChainSummary, AuditError> {
    let file_err = |reason: String| AuditError::File {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?;
    let lines = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    Ok(record::verify_chain(lines.iter().map(|l| l.as_bytes()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(i: usize) -> AuditEvent {
        AuditEvent::Refused {
            caller: Some(format!("spiffe://td/ns/a/sa/w{i}")),
            code: "PermissionDenied".into(),
            reason: "SAN mismatch".into(),
        }
    }

    #[test]
    fn concurrent_appends_are_durable_numbered_and_chained() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = AuditLog::open(dir.path()).expect("open");
            let seqs: Vec<u64> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|t| {
                        let log = &log;
                        s.spawn(move || {
                            (0..125)
                                .map(|i| {
                                    log.append_blocking(refused(t * 1000 + i)).expect("append")
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("thread"))
                    .collect()
            });
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted, (1..=1000).collect::<Vec<_>>());
        }
        assert_eq!(verify_store(dir.path()).expect("verify").records, 1000);
        // Reopening continues the chain.
        let log = AuditLog::open(dir.path()).expect("reopen");
        assert_eq!(
            log.append_blocking(AuditEvent::Stopped {}).expect("append"),
            1001
        );
        drop(log);
        assert_eq!(verify_store(dir.path()).expect("verify").records, 1001);
    }

    fn tamper(dir: &Path, f: impl FnOnce(&sled::Tree)) {
        let (db, tree) = records_tree(dir).expect("tree");
        f(&tree);
        db.flush().expect("flush");
    }

    #[test]
    fn tampering_with_the_store_is_found_and_the_log_refuses_to_open() {
        let make = || {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = AuditLog::open(dir.path()).expect("open");
            for i in 0..10 {
                log.append_blocking(refused(i)).expect("append");
            }
            drop(log);
            dir
        };
        let edited = make();
        tamper(edited.path(), |t| {
            let v = t.get(4u64.to_be_bytes()).expect("get").expect("record");
            let text = String::from_utf8(v.to_vec())
                .expect("utf8")
                .replace("SAN mismatch", "fine");
            t.insert(4u64.to_be_bytes(), text.as_bytes())
                .expect("insert");
        });
        assert!(matches!(
            verify_store(edited.path()),
            Err(AuditError::Chain(ChainError::Link { seq: 5, .. }))
        ));
        assert!(matches!(
            AuditLog::open(edited.path()),
            Err(AuditError::Chain(_))
        ));

        let deleted = make();
        tamper(deleted.path(), |t| {
            t.remove(6u64.to_be_bytes()).expect("remove");
        });
        assert!(matches!(
            verify_store(deleted.path()),
            Err(AuditError::Chain(ChainError::Sequence { .. }))
        ));

        let reordered = make();
        tamper(reordered.path(), |t| {
            let a = t.get(2u64.to_be_bytes()).expect("get").expect("a");
            let b = t.get(3u64.to_be_bytes()).expect("get").expect("b");
            t.insert(2u64.to_be_bytes(), b).expect("insert");
            t.insert(3u64.to_be_bytes(), a).expect("insert");
        });
        assert!(matches!(
            verify_store(reordered.path()),
            Err(AuditError::Chain(_))
        ));
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
        assert_eq!(verify_file(&file).expect("verify").records, 20);
        let text = std::fs::read_to_string(&file).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        let edited = lines[7].replace("w7", "w8");
        lines[7] = &edited;
        std::fs::write(&file, lines.join("\n")).expect("write");
        assert!(matches!(
            verify_file(&file),
            Err(AuditError::Chain(ChainError::Link { seq: 9, .. }))
        ));
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(3);
        std::fs::write(&file, lines.join("\n")).expect("write");
        assert!(matches!(
            verify_file(&file),
            Err(AuditError::Chain(ChainError::Sequence { .. }))
        ));
    }
}
