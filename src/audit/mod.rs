//! The tamper-evident audit log: hash-chained records in sled, written by one thread that
//! commits in groups (many records, one fsync) and answers each caller only once its record is
//! durable. Opening a log whose chain does not verify is refused.
//!
//! Checkpoints: every `checkpoint_every` records or `checkpoint_interval` (whichever comes
//! first), and when the log closes, the writer appends a [`AuditEvent::Checkpoint`] record: an
//! ECDSA P-256 signature by the audit key — generated in the device on first use, its id kept in
//! the log's own `meta` tree — over the hash of the record before it. The checkpoint is itself
//! a record of the chain and rides in the same group commit as the records it covers.
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
//! Never written here: PINs, tokens, key material. Records name identities, serials, key ids.

pub mod limiter;
pub mod record;

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
pub use limiter::RefusalLimits;
use limiter::{Decision, RefusalLimiter};
pub use record::{AuditEvent, AuditRecord, ChainError, ChainSummary};

use crate::keystore::{KeyAlgorithm, KeyId, KeyRequest, KeyStore, SignatureScheme};

/// Records committed with one flush at most.
pub const MAX_GROUP: usize = 256;

/// The label of the audit key in the device.
pub const AUDIT_KEY_LABEL: &str = "hsm-ca audit";

const META_KEY_ID: &[u8] = b"audit_key_id";
const META_KEY_SPKI: &[u8] = b"audit_key_spki";

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
    #[error("audit key: {0}")]
    Key(String),
}

/// When checkpoints are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointPolicy {
    pub every: u64,
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// How the log behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AuditOptions {
    pub checkpoints: CheckpointPolicy,
    pub refusals: RefusalLimits,
}

/// The audit key: where it lives and its public half.
#[derive(Clone, Debug)]
pub struct AuditKey {
    pub id: KeyId,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl AuditKey {
    /// The public key as PEM, for offline verification of exports.
    pub fn public_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }
}

struct Signer {
    store: KeyStore,
    key: AuditKey,
}

struct Pending {
    event: AuditEvent,
    done: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

/// Live figures for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records in the chain.
    pub records: AtomicU64,
    /// Unix time of the last checkpoint (0: none yet).
    pub last_checkpoint_unix: AtomicI64,
    /// Refusals folded into counts instead of records of their own.
    pub refusals_folded: AtomicU64,
}

/// An open audit log. Appends are durable when they return.
pub struct AuditLog {
    tx: Option<Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
    tree: sled::Tree,
    key: Option<AuditKey>,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
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
    let db = crate::store::open(&path).map_err(|e| open(crate::store::explain(&e)))?;
    let tree = db.open_tree("records").map_err(|e| open(e.to_string()))?;
    Ok((db, tree))
}

/// Verifies the chain stored in a tree, in key (= sequence) order.
fn verify_tree(tree: &sled::Tree, key: Option<&[u8]>) -> Result<ChainSummary, AuditError> {
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

/// The audit key recorded in the log, if any (id and public key as stored).
fn stored_key(db: &sled::Db) -> Result<Option<AuditKey>, AuditError> {
    let meta = db.open_tree("meta").map_err(storage)?;
    let id = meta.get(META_KEY_ID).map_err(storage)?;
    let spki = meta.get(META_KEY_SPKI).map_err(storage)?;
    Ok(match (id, spki) {
        (Some(id), Some(spki)) => Some(AuditKey {
            id: KeyId(id.to_vec()),
            spki: spki.to_vec(),
        }),
        _ => None,
    })
}

/// Finds the log's audit key in the device, or creates it on first use. A log whose key is not
/// in this device, or whose stored public key differs from the device's, is refused.
fn device_key(db: &sled::Db, store: &KeyStore) -> Result<AuditKey, AuditError> {
    if let Some(stored) = stored_key(db)? {
        let info = store.key_info_blocking(&stored.id).map_err(|e| {
            AuditError::Key(format!(
                "the log's audit key {} is not usable in this device: {e}",
                stored.id
            ))
        })?;
        if info.public_key != stored.spki {
            return Err(AuditError::Key(format!(
                "the public key recorded for audit key {} is not the device's",
                stored.id
            )));
        }
        return Ok(stored);
    }
    let info = store
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: AUDIT_KEY_LABEL.into(),
        })
        .map_err(|e| AuditError::Key(format!("cannot create the audit key: {e}")))?;
    let meta = db.open_tree("meta").map_err(storage)?;
    meta.insert(META_KEY_ID, info.id.0.clone())
        .map_err(storage)?;
    meta.insert(META_KEY_SPKI, info.public_key.clone())
        .map_err(storage)?;
    db.flush().map_err(storage)?;
    Ok(AuditKey {
        id: info.id,
        spki: info.public_key,
    })
}

fn unix_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .unwrap_or(0)
}

impl AuditLog {
    /// Opens (or creates) the log under `dir/audit` without an audit key: no checkpoints.
    /// For tests and tools; the appliance opens it with [`AuditLog::open_signed`].
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(dir, None, AuditOptions::default())
    }

    /// Opens the log with its audit key in `store` (created on first use), verifying the whole
    /// chain and every checkpoint first.
    pub fn open_signed(
        dir: &Path,
        store: &KeyStore,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        Self::open_with(dir, Some(store), options)
    }

    fn open_with(
        dir: &Path,
        store: Option<&KeyStore>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let (db, tree) = records_tree(dir)?;
        let signer = match store {
            Some(store) => Some(Signer {
                store: store.clone(),
                key: device_key(&db, store)?,
            }),
            None => None,
        };
        let key = signer.as_ref().map(|s| s.key.clone());
        let summary = verify_tree(&tree, key.as_ref().map(|k| k.spki.as_slice()))?;
        if summary.unsigned_tail > 0 && signer.is_some() {
            tracing::warn!(
                records = summary.unsigned_tail,
                "the audit log does not end with a checkpoint (the last stop was not clean); \
                 the next checkpoint covers those records"
            );
        }
        let stats = Arc::new(AuditStats::default());
        stats.records.store(summary.records, Ordering::Relaxed);
        if let Some((_, t)) = &summary.last_checkpoint {
            stats
                .last_checkpoint_unix
                .store(unix_of(t), Ordering::Relaxed);
        }
        let limiter = Arc::new(Mutex::new(RefusalLimiter::new(options.refusals)));
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(4 * MAX_GROUP);
        let writer = {
            let (tree, stats, limiter) = (tree.clone(), stats.clone(), limiter.clone());
            let writer = Writer {
                db,
                tree,
                signer,
                policy: options.checkpoints,
                head: summary.head,
                next: summary.records + 1,
                since_checkpoint: summary.unsigned_tail,
                last_checkpoint: Instant::now(),
                stats,
                limiter,
                failed: false,
            };
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(storage)?
        };
        Ok(AuditLog {
            tx: Some(tx),
            writer: Some(writer),
            tree,
            key,
            stats,
            limiter,
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
            .send(Pending {
                event,
                done: Some(done),
            })
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

    /// Records a refusal without waiting for the disk, within the caller's rate limit; what is
    /// over the limit is counted and written later as `folded`.
    pub fn refused(&self, caller: Option<&str>, code: &str, reason: &str) {
        let who = caller.unwrap_or("(unauthenticated)");
        let now = Instant::now();
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let Decision::Record { folded } = limiter.decide(who, now) else {
            self.stats.refusals_folded.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pending = Pending {
            event: AuditEvent::Refused {
                caller: caller.map(str::to_string),
                code: code.to_string(),
                reason: reason.to_string(),
                folded,
            },
            done: None,
        };
        let sent = self.tx.as_ref().map(|tx| tx.try_send(pending).is_ok());
        if sent != Some(true) {
            limiter.unrecorded(who, folded, now);
            self.stats.refusals_folded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The audit key (when the log has one).
    pub fn key(&self) -> Option<&AuditKey> {
        self.key.as_ref()
    }

    /// Live figures.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Up to `limit` records from sequence number `from` on, as stored.
    pub fn page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        self.tree
            .range(from.max(1).to_be_bytes()..)
            .values()
            .take(limit)
            .map(|v| {
                let v = v.map_err(storage)?;
                serde_json::from_slice(&v).map_err(storage)
            })
            .collect()
    }

    /// Verifies the chain and checkpoints as they are on disk now.
    pub fn verify(&self) -> Result<ChainSummary, AuditError> {
        verify_tree(&self.tree, self.key.as_ref().map(|k| k.spki.as_slice()))
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

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    signer: Option<Signer>,
    policy: CheckpointPolicy,
    head: [u8; 32],
    next: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
    failed: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Pending>) {
        let tick = self.policy.interval.min(Duration::from_secs(1));
        loop {
            let mut group = Vec::new();
            let closing = match rx.recv_timeout(tick) {
                Ok(first) => {
                    group.push(first);
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(p) => group.push(p),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.commit(group, closing);
            if closing {
                break;
            }
        }
    }

    fn checkpoint_event(&self, head_seq: u64, head: &[u8; 32]) -> Option<AuditEvent> {
        let signer = self.signer.as_ref()?;
        match sign_checkpoint(
            &signer.store,
            &signer.key.id,
            SignatureScheme::EcdsaSha256,
            head_seq,
            head,
        ) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpoint not signed; retrying later");
                None
            }
        }
    }

    /// Writes `group`, due refusal summaries and a checkpoint when one is due, with one flush.
    fn commit(&mut self, group: Vec<Pending>, closing: bool) {
        if self.failed {
            for p in group {
                if let Some(done) = p.done {
                    let _ = done.send(Err(AuditError::Stopped));
                }
            }
            return;
        }
        let now = Instant::now();
        let summaries = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now, closing);
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut events: Vec<AuditEvent> = group.iter().map(|p| p.event.clone()).collect();
        events.extend(
            summaries
                .into_iter()
                .map(|(caller, n)| AuditEvent::Refused {
                    caller: (caller != "(unauthenticated)").then_some(caller),
                    code: "folded".into(),
                    reason: "refusals over the rate limit, not recorded one by one".into(),
                    folded: n,
                }),
        );
        let mut batch = sled::Batch::default();
        let (mut h, mut seq) = (self.head, self.next);
        let mut assigned = Vec::with_capacity(group.len());
        let mut since = self.since_checkpoint;
        for event in events {
            let (bytes, new_head) = record::seal(seq, time.clone(), &h, event);
            batch.insert(&seq.to_be_bytes(), bytes);
            assigned.push(seq);
            h = new_head;
            seq += 1;
            since += 1;
        }
        let due = since > 0
            && (since >= self.policy.every
                || now.duration_since(self.last_checkpoint) >= self.policy.interval
                || closing);
        let mut checkpointed = false;
        if due {
            if let Some(cp) = self.checkpoint_event(seq - 1, &h) {
                let (bytes, new_head) = record::seal(seq, time.clone(), &h, cp);
                batch.insert(&seq.to_be_bytes(), bytes);
                h = new_head;
                seq += 1;
                checkpointed = true;
            }
        }
        if seq == self.next {
            return;
        }
        let outcome = self
            .tree
            .apply_batch(batch)
            .and_then(|()| self.db.flush().map(|_| ()));
        match outcome {
            Ok(()) => {
                self.head = h;
                self.next = seq;
                self.since_checkpoint = if checkpointed { 0 } else { since };
                if checkpointed {
                    self.last_checkpoint = now;
                    self.stats.last_checkpoint_unix.store(
                        time::OffsetDateTime::now_utc().unix_timestamp(),
                        Ordering::Relaxed,
                    );
                }
                self.stats.records.store(seq - 1, Ordering::Relaxed);
                for (p, s) in group.into_iter().zip(assigned) {
                    if let Some(done) = p.done {
                        let _ = done.send(Ok(s));
                    }
                }
            }
            Err(e) => {
                // What reached the disk is unknown: accept nothing more (a restart re-verifies).
                tracing::error!(error = %e, "audit log write failed; the log is stopped");
                self.failed = true;
                for p in group {
                    if let Some(done) = p.done {
                        let _ = done.send(Err(storage(&e)));
                    }
                }
            }
        }
    }
}

/// A checkpoint over the chain head `head` (record `head_seq`), signed in the device by `key`.
fn sign_checkpoint(
    store: &KeyStore,
    key: &KeyId,
    scheme: SignatureScheme,
    head_seq: u64,
    head: &[u8; 32],
) -> Result<AuditEvent, crate::keystore::KeystoreError> {
    let head_hex = hex::encode(head);
    let message = record::checkpoint_message(head_seq, &head_hex);
    let sig = store.sign_blocking(key, scheme, &message)?;
    Ok(AuditEvent::Checkpoint {
        head_seq,
        head: head_hex,
        key_id: key.to_string(),
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    })
}

/// The log of an offline host (the root ceremony's): one process appends at a time, each
/// record is durable when `append` returns, and checkpoints are signed when the caller asks,
/// by the key it names (the root key the ceremony used). Same store layout and record format
/// as [`AuditLog`], so `audit verify` and `audit export` read it too.
pub struct HostLog {
    db: sled::Db,
    tree: sled::Tree,
    head: [u8; 32],
    next: u64,
}

impl HostLog {
    /// Opens (or creates) the log under `dir/audit`; its chain must verify.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let (db, tree) = records_tree(dir)?;
        let summary = verify_tree(&tree, None)?;
        Ok(HostLog {
            db,
            tree,
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
        let seq = self.next;
        let (bytes, head) = record::seal(seq, Self::now(), &self.head, event);
        self.tree
            .insert(seq.to_be_bytes(), bytes)
            .map_err(storage)?;
        self.db.flush().map_err(storage)?;
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
        let event = sign_checkpoint(store, key, scheme, self.next - 1, &self.head)
            .map_err(|e| AuditError::Key(format!("cannot sign the checkpoint: {e}")))?;
        self.append(event)
    }

    /// Every record, as stored (one JSON line each).
    pub fn export(&self, out: &mut dyn Write) -> Result<u64, AuditError> {
        write_lines(&self.tree, out)
    }

    /// Records from sequence number `from` on.
    pub fn records_from(&self, from: u64) -> Result<Vec<AuditRecord>, AuditError> {
        self.tree
            .range(from.max(1).to_be_bytes()..)
            .values()
            .map(|v| serde_json::from_slice(&v.map_err(storage)?).map_err(storage))
            .collect()
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }
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

/// The audit key recorded in the log under `dir`.
pub fn recorded_key(dir: &Path) -> Result<Option<AuditKey>, AuditError> {
    let (db, _) = records_tree(dir)?;
    stored_key(&db)
}

/// Writes every record as one JSON line (the exact stored bytes) and returns how many.
pub fn export(dir: &Path, out: &mut dyn Write) -> Result<u64, AuditError> {
    let (db, tree) = records_tree(dir)?;
    let stored = stored_key(&db)?;
    verify_tree(&tree, stored.as_ref().map(|k| k.spki.as_slice()))?;
    write_lines(&tree, out)
}

/// Writes every record of `tree` as one line (its exact stored bytes); returns how many.
fn write_lines(tree: &sled::Tree, out: &mut dyn Write) -> Result<u64, AuditError> {
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
    let file = std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?;
    let lines = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    Ok(record::verify_chain_with_keys(
        lines.iter().filter(|l| !l.is_empty()).map(|l| l.as_bytes()),
        keys,
    )?)
}

/// Reads a PEM `PUBLIC KEY` (as `audit export` writes it) into DER.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, AuditError> {
    let err = |reason: String| AuditError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let block = pem::parse(text).map_err(|e| err(e.to_string()))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(err(format!("expected a PUBLIC KEY, found {}", block.tag())));
    }
    Ok(block.into_contents())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(i: usize) -> AuditEvent {
        AuditEvent::Refused {
            caller: Some(format!("spiffe://td/ns/a/sa/w{i}")),
            code: "PermissionDenied".into(),
            reason: "SAN mismatch".into(),
            folded: 0,
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
        assert_eq!(
            verify_store(dir.path(), None).expect("verify").records,
            1000
        );
        // Reopening continues the chain.
        let log = AuditLog::open(dir.path()).expect("reopen");
        assert_eq!(
            log.append_blocking(AuditEvent::Stopped {}).expect("append"),
            1001
        );
        drop(log);
        assert_eq!(
            verify_store(dir.path(), None).expect("verify").records,
            1001
        );
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
            verify_store(edited.path(), None),
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
            verify_store(deleted.path(), None),
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
            verify_store(reordered.path(), None),
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
