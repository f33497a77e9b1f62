//! The writer thread: the only code that appends to an open [`AuditLog`](super::AuditLog)'s
//! store. It takes records from a bounded queue, commits them in groups (many records, one
//! flush), folds in due refusal summaries, appends a checkpoint signed in the device when one
//! is due, and answers each caller only once its record is durable.
//!
//! It never answers a caller before the flush that makes its record durable, and after a failed
//! write it accepts nothing more (what reached the disk is unknown; a restart re-verifies).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::key::{sign_checkpoint, AuditKey};
use super::limiter::RefusalLimiter;
use super::record::{self, AuditEvent, ChainSummary};
use super::{storage, AuditError};
use crate::keystore::{KeyStore, SignatureScheme};

/// Records committed with one flush at most.
pub const MAX_GROUP: usize = 256;

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

/// Live figures for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records in the chain.
    pub records: AtomicU64,
    /// Unix time of the last checkpoint (0: none yet).
    pub last_checkpoint_unix: AtomicI64,
    /// Refusals folded into counts instead of records of their own.
    pub refusals_folded: AtomicU64,
    /// The storage error the writer's last commit ended in; `None` once a commit succeeds.
    pub storage_error: Mutex<Option<String>>,
}

/// The device key that signs checkpoints.
pub(super) struct Signer {
    pub(super) store: KeyStore,
    pub(super) key: AuditKey,
}

/// A record waiting for the writer, and where to send its sequence number once durable
/// (`None`: nobody waits, as for refusals).
pub(super) struct Pending {
    pub(super) event: AuditEvent,
    pub(super) done: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

/// Starts the writer thread on a store whose chain verified as `chain`. The thread ends, after
/// a last commit (with a checkpoint when one is owed), once every sender is dropped.
pub(super) fn start(
    db: sled::Db,
    tree: sled::Tree,
    signer: Option<Signer>,
    policy: CheckpointPolicy,
    chain: &ChainSummary,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
) -> Result<(Sender<Pending>, JoinHandle<()>), AuditError> {
    let (tx, rx) = crossbeam_channel::bounded::<Pending>(4 * MAX_GROUP);
    let writer = Writer {
        db,
        tree,
        signer,
        policy,
        head: chain.head,
        next: chain.records + 1,
        since_checkpoint: chain.unsigned_tail,
        last_checkpoint: Instant::now(),
        stats,
        limiter,
        failed: false,
    };
    let handle = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(storage)?;
    Ok((tx, handle))
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
                *self
                    .stats
                    .storage_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("the audit log cannot be written: {e}"));
                for p in group {
                    if let Some(done) = p.done {
                        let _ = done.send(Err(storage(&e)));
                    }
                }
            }
        }
    }
}
