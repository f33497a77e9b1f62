//! The appliance's audit log handle, [`AuditLog`]: opening (the chain verified from the last
//! checkpoint already verified, the whole chain when that marker does not match, the audit key
//! found or created in the device), appends that return once durable, rate-limited refusals
//! that never wait, the live figures and health, the index of issued serials, and pages of
//! records for the admin API.
//!
//! The handle never writes to the store itself: every record goes through the writer thread's
//! queue, so the chain has one writer. Dropping the handle closes the queue and waits for the
//! writer's last commit.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;

use super::key::{device_key, AuditKey};
use super::limiter::{Decision, RefusalLimiter, RefusalLimits};
use super::record::{AuditEvent, AuditRecord, ChainSummary};
use super::segments::{issued_key, Store};
use super::verify::verify_whole;
use super::writer::{self, AuditStats, CheckpointPolicy, Pending, Signer};
use super::{open_store, resume, storage, AuditError};
use crate::keystore::KeyStore;

/// Accepted for configurations written for the sled-backed log (`[audit] cache_mb`); the
/// segment files need no page cache of their own.
pub const DEFAULT_AUDIT_CACHE_BYTES: u64 = 16 << 20;

/// How the log behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AuditOptions {
    pub checkpoints: CheckpointPolicy,
    pub refusals: RefusalLimits,
    /// No longer used (the sled-backed log's page cache); kept so configurations still load.
    pub cache_bytes: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoints: CheckpointPolicy::default(),
            refusals: RefusalLimits::default(),
            cache_bytes: DEFAULT_AUDIT_CACHE_BYTES,
        }
    }
}

/// What an append waits for besides the local disk when records must reach the shared
/// database first (`[audit] require_shipped`): the sequence number shipped so far, a wake-up
/// for the shipper, and how long to wait.
#[derive(Clone, Debug)]
pub struct ShipGate {
    pub shipped: tokio::sync::watch::Receiver<u64>,
    pub wake: Arc<tokio::sync::Notify>,
    pub timeout: std::time::Duration,
}

/// How far the chain has reached the shared database, kept by whoever ships it and read by
/// `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct ShippingStatus {
    /// The highest sequence number committed in the database.
    pub shipped: std::sync::atomic::AtomicU64,
    /// Shipments that failed.
    pub failures: std::sync::atomic::AtomicU64,
    /// While shipments fail: the last error and when the failures began.
    pub failing: Mutex<Option<(String, Instant)>>,
}

/// Why [`AuditLog::record_while_signing`] let no certificate out.
#[derive(Debug)]
pub enum NotIssued<E> {
    /// The device did not sign.
    Sign(E),
    /// The record could not be made durable (or shipped, when that is required).
    Audit(AuditError),
}

/// An open audit log. Appends are durable when they return.
pub struct AuditLog {
    /// Set once when records must be shipped before an append returns.
    gate: std::sync::OnceLock<ShipGate>,
    /// Set once when the chain is shipped to a shared database.
    shipping: std::sync::OnceLock<Arc<ShippingStatus>>,
    tx: Option<Sender<Pending>>,
    writer: Option<JoinHandle<()>>,
    store: Store,
    key: Option<AuditKey>,
    stats: Arc<AuditStats>,
    limiter: Arc<Mutex<RefusalLimiter>>,
    whole_chain_verified: bool,
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

    /// Opens the log with its audit key in `store` (created on first use), verifying the
    /// chain (from the last checkpoint already verified) and its checkpoints first.
    pub fn open_signed(
        dir: &Path,
        store: &KeyStore,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        Self::open_with(dir, Some(store), options)
    }

    /// [`AuditLog::open`] with `options` (checkpoints are never signed without a key).
    pub fn open_unsigned(dir: &Path, options: AuditOptions) -> Result<Self, AuditError> {
        Self::open_with(dir, None, options)
    }

    fn open_with(
        dir: &Path,
        store: Option<&KeyStore>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let log = open_store(dir)?;
        let signer = match store {
            Some(store) => Some(Signer {
                store: store.clone(),
                key: device_key(&log, store)?,
            }),
            None => None,
        };
        let key = signer.as_ref().map(|s| s.key.clone());
        let (summary, whole_chain_verified) =
            resume::verify_for_open(&log, key.as_ref().map(|k| k.spki.as_slice()))?;
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
        let (tx, writer) = writer::start(
            log.clone(),
            signer,
            options.checkpoints,
            &summary,
            stats.clone(),
            limiter.clone(),
        )?;
        Ok(AuditLog {
            gate: std::sync::OnceLock::new(),
            shipping: std::sync::OnceLock::new(),
            tx: Some(tx),
            writer: Some(writer),
            store: log,
            key,
            stats,
            limiter,
            whole_chain_verified,
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

    /// Appends `event`; returns its sequence number once it is on disk, and, with a
    /// [`ShipGate`], once it is in the shared database too (the start and stop records do not
    /// wait for it).
    pub async fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let waits = !matches!(event, AuditEvent::Started { .. } | AuditEvent::Stopped {});
        let seq = self
            .submit(event)?
            .await
            .map_err(|_| AuditError::Stopped)??;
        if let Some(gate) = self.gate.get().filter(|_| waits) {
            gate.wake.notify_one();
            let mut shipped = gate.shipped.clone();
            let reached = tokio::time::timeout(gate.timeout, shipped.wait_for(|s| *s >= seq)).await;
            if !matches!(reached, Ok(Ok(_))) {
                return Err(AuditError::NotShipped { seq });
            }
        }
        Ok(seq)
    }

    /// The shipping status, made on first use (the shipper keeps it).
    pub fn shipping_status(&self) -> Arc<ShippingStatus> {
        self.shipping.get_or_init(Arc::default).clone()
    }

    /// The shipping status when the chain is shipped.
    pub fn shipping(&self) -> Option<&ShippingStatus> {
        self.shipping.get().map(|s| s.as_ref())
    }

    /// Issues with `sign` while `record` — the `issued` record of `serial` by `ca_key` — is
    /// made durable: the disk sync and the device signature overlap, and the certificate may
    /// leave only when this returns `Ok`. A signature that fails after its record was made is
    /// recorded as `not_issued`; a record durable here but not shipped in time withholds the
    /// certificate and records that too ([`AuditLog::record_withheld`]).
    pub async fn record_while_signing<T, E: std::fmt::Display>(
        &self,
        record: AuditEvent,
        serial: &str,
        ca_key: &str,
        sign: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, NotIssued<E>> {
        let (signed, recorded) = tokio::join!(sign, self.append(record));
        match (signed, recorded) {
            (Ok(signed), Ok(_)) => Ok(signed),
            (Err(e), recorded) => {
                if recorded.is_ok() {
                    let not_issued = AuditEvent::NotIssued {
                        serial: serial.to_string(),
                        ca_key: ca_key.to_string(),
                        reason: e.to_string(),
                    };
                    if let Err(a) = self.append(not_issued).await {
                        tracing::warn!(error = %a, "a failed signature was not recorded");
                    }
                }
                Err(NotIssued::Sign(e))
            }
            (Ok(_), Err(e)) => {
                self.record_withheld(&e, serial, ca_key).await;
                Err(NotIssued::Audit(e))
            }
        }
    }

    /// After an `issued` record's append failed with [`AuditError::NotShipped`] (durable here,
    /// not in the shared database in time, so the certificate is withheld): records that it
    /// never left, without waiting for shipping again. Other errors need nothing.
    pub async fn record_withheld(&self, error: &AuditError, serial: &str, ca_key: &str) {
        if !matches!(error, AuditError::NotShipped { .. }) {
            return;
        }
        let event = AuditEvent::NotIssued {
            serial: serial.to_string(),
            ca_key: ca_key.to_string(),
            reason: error.to_string(),
        };
        let recorded = match self.submit(event) {
            Ok(rx) => rx.await.map_err(|_| AuditError::Stopped).and_then(|r| r),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "a withheld certificate was not recorded as not issued");
        }
    }

    /// From now on, appends wait for their record to be shipped ([`ShipGate`]). Only the first
    /// gate set counts.
    pub fn require_shipped(&self, gate: ShipGate) {
        let _ = self.gate.set(gate);
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

    /// `Ok` when the writer's last commit succeeded; otherwise why records cannot be made
    /// durable now (issuance waits for the log, so it cannot go on).
    pub fn health(&self) -> Result<(), String> {
        match &*self
            .stats
            .storage_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Live figures.
    /// Whether the writer thread is still running (it ends only when the log is closed, or
    /// if it panicked).
    pub fn writer_running(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.is_finished())
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Whether opening read the whole chain (no verification marker, or one that did not
    /// match); otherwise only the records after the last checkpoint verified before.
    pub fn whole_chain_verified(&self) -> bool {
        self.whole_chain_verified
    }

    /// Whether the key `ca_key` (an intermediate's key id) issued `serial` (hex, as audited)
    /// according to this log's `issued` records.
    pub fn was_issued(&self, ca_key: &str, serial: &str) -> Result<bool, AuditError> {
        self.store.was_issued(&issued_key(ca_key, serial))
    }

    /// Up to `limit` records from sequence number `from` on, as stored.
    pub fn page(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        self.store
            .iter_from(from)
            .take(limit)
            .map(|v| serde_json::from_slice(&v?).map_err(storage))
            .collect()
    }

    /// Up to `limit` records from sequence number `from` on, each with the exact bytes stored
    /// (what the next record's `prev` hashes).
    pub fn stored_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(AuditRecord, Vec<u8>)>, AuditError> {
        self.store
            .iter_from(from)
            .take(limit)
            .map(|v| {
                let bytes = v?;
                let record: AuditRecord = serde_json::from_slice(&bytes).map_err(storage)?;
                Ok((record, bytes))
            })
            .collect()
    }

    /// Verifies the whole chain and checkpoints as they are on disk now.
    pub fn verify(&self) -> Result<ChainSummary, AuditError> {
        verify_whole(&self.store, self.key.as_ref().map(|k| k.spki.as_slice()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::ChainError;
    use crate::audit::verify::verify_store;

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

    /// Edits the log's lines (record `n` is line `n - 1`) as someone with the files would.
    fn tamper(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let files = crate::audit::segments::segment_files(dir);
        let path = files.last().expect("a segment");
        let text = std::fs::read_to_string(path).expect("read");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
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
        tamper(edited.path(), |lines| {
            lines[3] = lines[3].replace("SAN mismatch", "fine");
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
        tamper(deleted.path(), |lines| {
            lines.remove(5);
        });
        assert!(matches!(
            verify_store(deleted.path(), None),
            Err(AuditError::Chain(ChainError::Sequence { .. }))
        ));

        let reordered = make();
        tamper(reordered.path(), |lines| {
            lines.swap(1, 2);
        });
        assert!(matches!(
            verify_store(reordered.path(), None),
            Err(AuditError::Chain(_))
        ));
    }
}
