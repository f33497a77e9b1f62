//! The writer thread: the only code that appends to an open [`AuditLog`](super::AuditLog)'s
//! store. It takes records from a bounded queue, commits them in groups (many records, one
//! write, durable on return), folds in due refusal summaries, appends a checkpoint signed in
//! the device when one is due, moves the verification marker now and then (at most every
//! [`MARKER_EVERY`], and when the log closes), and answers each caller only once its record is
//! durable.
//!
//! After a failed write (a full disk) the writer answers the callers of that group and of every
//! record that comes meanwhile with an error (refusals are folded into counts instead), and
//! retries with a growing pause. A retry reads the last segment again, verifies it from the
//! marker, and takes up the chain from the last record really there; its first commit is a
//! [`AuditEvent::StorageResumed`] record with every folded count. A record may thus be on disk
//! for a caller answered with an error (its group reached the disk before the failure was
//! reported), never the reverse, and no record is written twice.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::key::{sign_checkpoint, AuditKey};
use super::limiter::RefusalLimiter;
use super::record::{self, AuditEvent, ChainSummary};
use super::segments::{index_key, Store};
use super::{resume, storage, AuditError};
use crate::keystore::{KeyStore, SignatureScheme};

/// How often the verification marker moves forward at most (it also moves when the log
/// closes): a start verifies the records written since.
pub const MARKER_EVERY: Duration = Duration::from_secs(10);

/// Records committed with one write at most.
pub const MAX_GROUP: usize = 256;

/// The first pause before a retry after a storage error; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between retries after a storage error.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

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
    /// Groups of records committed with one write and one disk sync.
    pub syncs: AtomicU64,
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
    store: Store,
    signer: Option<Signer>,
    policy: CheckpointPolicy,
    chain: &ChainSummary,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
) -> Result<(Sender<Pending>, JoinHandle<()>), AuditError> {
    let (tx, rx) = crossbeam_channel::bounded::<Pending>(4 * MAX_GROUP);
    let writer = Writer {
        store,
        marker_moved: Instant::now(),
        signer,
        policy,
        head: chain.head,
        next: chain.records + 1,
        since_checkpoint: chain.unsigned_tail,
        last_checkpoint: Instant::now(),
        stats,
        limiter,
        failure: None,
    };
    let handle = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(storage)?;
    Ok((tx, handle))
}

/// A storage error the writer has not yet recovered from.
struct Failure {
    /// RFC 3339 time of the first failed write.
    since: String,
    /// Callers answered with an error since.
    errors: u64,
    /// Refusals in failed groups (sequence number they were given, caller, count): those not
    /// on disk after the reopen are folded again.
    refusals: Vec<(u64, String, u64)>,
    pause: Duration,
    retry_at: Instant,
}

struct Writer {
    store: Store,
    /// When the verification marker last moved.
    marker_moved: Instant,
    signer: Option<Signer>,
    policy: CheckpointPolicy,
    head: [u8; 32],
    next: u64,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
    failure: Option<Failure>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The limiter key of a refusal record and how many refusals it stands for.
fn refusal_count(event: &AuditEvent) -> Option<(String, u64)> {
    match event {
        AuditEvent::Refused {
            caller,
            code,
            folded,
            ..
        } => Some((
            caller.clone().unwrap_or_else(|| "(unauthenticated)".into()),
            if code == "folded" {
                *folded
            } else {
                folded + 1
            },
        )),
        _ => None,
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Pending>) {
        let tick = self.policy.interval.min(Duration::from_secs(1));
        loop {
            let wait = match &self.failure {
                Some(f) => tick.min(f.retry_at.saturating_duration_since(Instant::now())),
                None => tick,
            };
            let mut group = Vec::new();
            let closing = match rx.recv_timeout(wait) {
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
            if self.failure.is_some() {
                self.refuse(group);
                let due = self
                    .failure
                    .as_ref()
                    .is_some_and(|f| closing || Instant::now() >= f.retry_at);
                if due {
                    self.retry(closing);
                }
            } else {
                self.commit(group, closing, None);
            }
            if closing {
                break;
            }
        }
    }

    /// Answers a group that arrives while the store cannot be written: callers get an error,
    /// refusals are folded into their caller's count.
    fn refuse(&mut self, group: Vec<Pending>) {
        let now = Instant::now();
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let mut errors = 0;
        for p in group {
            match p.done {
                Some(done) => {
                    errors += 1;
                    let _ = done.send(Err(AuditError::Storage(
                        "the audit log cannot be written now (storage error); retrying".into(),
                    )));
                }
                None => {
                    if let Some((who, n)) = refusal_count(&p.event) {
                        limiter.refold(&who, n, now);
                    }
                }
            }
        }
        if let Some(f) = &mut self.failure {
            f.errors += errors;
        }
    }

    /// Opens the store again and takes up the chain from what is on disk; then writes the
    /// `storage_resumed` record (with every folded count). A failure waits for the next retry.
    fn retry(&mut self, closing: bool) {
        match self.reopen() {
            Ok(()) => {
                let Some(f) = &self.failure else { return };
                let resumed = AuditEvent::StorageResumed {
                    failed_at: f.since.clone(),
                    errors: f.errors,
                };
                self.commit(Vec::new(), closing, Some(resumed));
            }
            Err(e) => self.fail(&e.to_string(), Vec::new(), 0),
        }
    }

    fn reopen(&mut self) -> Result<(), AuditError> {
        // What reached the disk before the error is read back, a torn tail set aside.
        self.store.recover()?;
        let key = self.signer.as_ref().map(|s| s.key.spki.as_slice());
        let (chain, _) = resume::verify_for_open(&self.store, key)?;
        self.head = chain.head;
        self.next = chain.records + 1;
        self.since_checkpoint = chain.unsigned_tail;
        self.stats.records.store(chain.records, Ordering::Relaxed);
        if let Some(f) = &mut self.failure {
            let now = Instant::now();
            let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            for (seq, who, n) in f.refusals.drain(..) {
                if seq > chain.records {
                    limiter.refold(&who, n, now);
                }
            }
        }
        Ok(())
    }

    /// Records a storage error: the writer stops writing until the next retry.
    fn fail(&mut self, error: &str, refusals: Vec<(u64, String, u64)>, errors: u64) {
        let message = format!("the audit log cannot be written: {error}");
        let now = Instant::now();
        let f = self.failure.get_or_insert_with(|| {
            tracing::error!(error = %error, "audit log write failed; retrying");
            Failure {
                since: now_rfc3339(),
                errors: 0,
                refusals: Vec::new(),
                pause: RETRY_FIRST / 2,
                retry_at: now,
            }
        });
        f.errors += errors;
        f.refusals.extend(refusals);
        f.pause = (f.pause * 2).min(RETRY_MAX);
        f.retry_at = now + f.pause;
        *self
            .stats
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    fn checkpoint_event(&self, head_seq: u64, head: &[u8; 32], time: &str) -> Option<AuditEvent> {
        let signer = self.signer.as_ref()?;
        match sign_checkpoint(
            &signer.store,
            &signer.key.id,
            SignatureScheme::EcdsaSha256,
            head_seq,
            head,
            time,
        ) {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpoint not signed; retrying later");
                None
            }
        }
    }

    /// Writes `first` (a record of the writer's own), `group`, due refusal summaries (all of
    /// them after a recovery) and a checkpoint when one is due, with one flush.
    fn commit(&mut self, group: Vec<Pending>, closing: bool, first: Option<AuditEvent>) {
        let resuming = first.is_some();
        let now = Instant::now();
        let summaries = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now, closing || resuming);
        let time = now_rfc3339();
        let mut events: Vec<AuditEvent> = first.into_iter().collect();
        let own = events.len();
        events.extend(group.iter().map(|p| p.event.clone()));
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
        let mut batch = Vec::with_capacity(events.len() + 1);
        let (mut h, mut seq) = (self.head, self.next);
        let mut assigned = Vec::with_capacity(events.len());
        let mut since = self.since_checkpoint;
        for event in events {
            let key = index_key(&event);
            let (bytes, new_head) = record::seal(seq, time.clone(), &h, event.clone());
            batch.push((seq, bytes, key));
            assigned.push((seq, event));
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
            if let Some(cp) = self.checkpoint_event(seq - 1, &h, &time) {
                let (bytes, new_head) = record::seal(seq, time.clone(), &h, cp);
                batch.push((seq, bytes, None));
                h = new_head;
                seq += 1;
                checkpointed = true;
            }
        }
        if seq == self.next {
            return;
        }
        let outcome = self.store.append(&batch);
        match outcome {
            Ok(()) => {
                if checkpointed
                    && (closing || now.duration_since(self.marker_moved) >= MARKER_EVERY)
                {
                    // The checkpoint is durable; the marker only shortens the next start.
                    match resume::set_marker(&self.store, seq - 1, &h) {
                        Ok(()) => self.marker_moved = now,
                        Err(e) => tracing::warn!(error = %e, "audit verification marker not moved"),
                    }
                }
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
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                if self.failure.take().is_some() {
                    tracing::info!("the audit log is written again");
                }
                *self
                    .stats
                    .storage_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                for (p, (s, _)) in group.into_iter().zip(assigned.into_iter().skip(own)) {
                    if let Some(done) = p.done {
                        let _ = done.send(Ok(s));
                    }
                }
            }
            Err(e) => {
                // What reached the disk is unknown: the next retry reads it back.
                let refusals = assigned
                    .iter()
                    .filter_map(|(s, ev)| refusal_count(ev).map(|(who, n)| (*s, who, n)))
                    .collect();
                let reason = match &e {
                    AuditError::Storage(m) => m.clone(),
                    other => other.to_string(),
                };
                let mut errors = 0;
                for p in group {
                    if let Some(done) = p.done {
                        errors += 1;
                        let _ = done.send(Err(AuditError::Storage(reason.clone())));
                    }
                }
                self.fail(&reason, refusals, errors);
            }
        }
    }
}
