//! Worker threads that own device sessions, fed by one bounded queue.
//!
//! Every call carries a deadline. A full queue is refused at once with
//! [`KeystoreError::Overloaded`]; a call still queued at its deadline is dropped with
//! [`KeystoreError::DeadlineExceeded`] without touching the device. A worker whose session
//! broke opens a new one on its next call; a panic inside a device call costs that call only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{DeviceSession, KeyDevice, KeyId, KeyInfo, KeyRequest, KeystoreError, SignatureScheme};

/// Sizing of a [`KeyStore`].
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// Worker threads, each with its own device session.
    pub workers: usize,
    /// Calls that may wait in the queue before callers are told the keystore is overloaded.
    pub queue_depth: usize,
    /// Deadline of a call, from the moment it is queued.
    pub call_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            workers: 2,
            queue_depth: 1024,
            call_timeout: Duration::from_secs(5),
        }
    }
}

enum Op {
    Generate(KeyRequest),
    KeyInfo(KeyId),
    Sign {
        id: KeyId,
        scheme: SignatureScheme,
        message: Vec<u8>,
    },
    List,
}

enum Answer {
    Key(KeyInfo),
    Signature(Vec<u8>),
    Keys(Vec<KeyInfo>),
}

struct Job {
    op: Op,
    deadline: Instant,
    reply: oneshot::Sender<Result<Answer, KeystoreError>>,
}

/// The handle through which all code reaches the key device. Cheap to clone.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Job>,
    description: String,
    call_timeout: Duration,
    workers: usize,
    threads: Vec<JoinHandle<()>>,
    /// Time each device call took on its worker (not counting the queue).
    latency: Arc<crate::metrics::Histogram>,
    /// The device trouble the last device call ended in; `None` once a call succeeds.
    trouble: Arc<Mutex<Option<String>>>,
    /// Device calls that ended in device trouble, since start.
    errors: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Disconnect the queue so workers finish, then wait for them: their sessions must be
        // closed before the device (and its library) goes away.
        let (disconnected, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.tx, disconnected));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("device", &self.inner.description)
            .field("workers", &self.inner.workers)
            .finish()
    }
}

impl KeyStore {
    /// Starts `options.workers` threads on `device`. Each opens its session on first use.
    pub fn start(device: Arc<dyn KeyDevice>, options: PoolOptions) -> Result<Self, KeystoreError> {
        let workers = options.workers.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(options.queue_depth.max(1));
        let mut threads = Vec::with_capacity(workers);
        let latency = Arc::new(crate::metrics::Histogram::default());
        let trouble = Arc::new(Mutex::new(None));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for index in 0..workers {
            let rx = rx.clone();
            let device = device.clone();
            let latency = latency.clone();
            let trouble = trouble.clone();
            let errors = errors.clone();
            let handle = std::thread::Builder::new()
                .name(format!("keystore-{index}"))
                .spawn(move || worker_loop(device, rx, &latency, &trouble, &errors))
                .map_err(|e| KeystoreError::Device {
                    operation: "spawn worker".into(),
                    reason: e.to_string(),
                })?;
            threads.push(handle);
        }
        Ok(KeyStore {
            inner: Arc::new(Inner {
                tx,
                description: device.describe(),
                call_timeout: options.call_timeout,
                workers,
                threads,
                latency,
                trouble,
                errors,
            }),
        })
    }

    /// How long device calls take (for `/metrics`).
    pub fn device_latency(&self) -> &crate::metrics::Histogram {
        &self.inner.latency
    }

    /// Device calls that ended in device trouble since start (for `/metrics`).
    pub fn device_errors(&self) -> u64 {
        self.inner.errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What device this keystore talks to (safe to log).
    pub fn describe(&self) -> &str {
        &self.inner.description
    }

    /// `Ok` when the device answered the last call made to it; otherwise the trouble that call
    /// ended in (safe to show: device errors never carry a secret). A probe such as
    /// [`KeyStore::key_info`] refreshes it.
    pub fn health(&self) -> Result<(), String> {
        match &*self.inner.trouble.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(trouble) => Err(trouble.clone()),
            None => Ok(()),
        }
    }

    /// Calls waiting in the queue now.
    pub fn queue_len(&self) -> usize {
        self.inner.tx.len()
    }

    fn enqueue(
        &self,
        op: Op,
    ) -> Result<(oneshot::Receiver<Result<Answer, KeystoreError>>, Instant), KeystoreError> {
        let deadline = Instant::now() + self.inner.call_timeout;
        let (reply, rx) = oneshot::channel();
        match self.inner.tx.try_send(Job {
            op,
            deadline,
            reply,
        }) {
            Ok(()) => Ok((rx, deadline)),
            Err(TrySendError::Full(_)) => Err(KeystoreError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(KeystoreError::Closed),
        }
    }

    fn call_blocking(&self, op: Op) -> Result<Answer, KeystoreError> {
        let (rx, deadline) = self.enqueue(op)?;
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(answer) => answer,
            Err(oneshot::RecvTimeoutError::Timeout) => Err(KeystoreError::DeadlineExceeded),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(KeystoreError::Closed),
        }
    }

    async fn call(&self, op: Op) -> Result<Answer, KeystoreError> {
        let (rx, deadline) = self.enqueue(op)?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(KeystoreError::Closed),
            Err(_) => Err(KeystoreError::DeadlineExceeded),
        }
    }

    /// Signs on a worker thread and waits for the answer (for synchronous callers).
    pub fn sign_blocking(
        &self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        let op = Op::Sign {
            id: id.clone(),
            scheme,
            message: message.to_vec(),
        };
        match self.call_blocking(op)? {
            Answer::Signature(s) => Ok(s),
            _ => Err(unexpected("sign")),
        }
    }

    /// Signs on a worker thread without blocking the async runtime.
    pub async fn sign(
        &self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        let op = Op::Sign {
            id: id.clone(),
            scheme,
            message: message.to_vec(),
        };
        match self.call(op).await? {
            Answer::Signature(s) => Ok(s),
            _ => Err(unexpected("sign")),
        }
    }

    /// Creates a key pair inside the device.
    pub fn generate_blocking(&self, request: KeyRequest) -> Result<KeyInfo, KeystoreError> {
        match self.call_blocking(Op::Generate(request))? {
            Answer::Key(k) => Ok(k),
            _ => Err(unexpected("generate")),
        }
    }

    /// Describes one key without blocking the async runtime (also a cheap device probe).
    pub async fn key_info(&self, id: &KeyId) -> Result<KeyInfo, KeystoreError> {
        match self.call(Op::KeyInfo(id.clone())).await? {
            Answer::Key(k) => Ok(k),
            _ => Err(unexpected("key info")),
        }
    }

    /// Describes one key.
    pub fn key_info_blocking(&self, id: &KeyId) -> Result<KeyInfo, KeystoreError> {
        match self.call_blocking(Op::KeyInfo(id.clone()))? {
            Answer::Key(k) => Ok(k),
            _ => Err(unexpected("key info")),
        }
    }

    /// Lists the private keys on the device.
    pub fn list_blocking(&self) -> Result<Vec<KeyInfo>, KeystoreError> {
        match self.call_blocking(Op::List)? {
            Answer::Keys(k) => Ok(k),
            _ => Err(unexpected("list")),
        }
    }

    /// Finds the key whose public half is `spki` (DER SubjectPublicKeyInfo).
    pub fn find_by_public_key(&self, spki: &[u8]) -> Result<Option<KeyInfo>, KeystoreError> {
        Ok(self
            .list_blocking()?
            .into_iter()
            .find(|k| k.public_key == spki))
    }
}

fn unexpected(operation: &str) -> KeystoreError {
    KeystoreError::Device {
        operation: operation.into(),
        reason: "worker answered a different operation".into(),
    }
}

fn worker_loop(
    device: Arc<dyn KeyDevice>,
    rx: Receiver<Job>,
    latency: &crate::metrics::Histogram,
    trouble: &Mutex<Option<String>>,
    errors: &std::sync::atomic::AtomicU64,
) {
    let note = |result: &Result<Answer, KeystoreError>| {
        let mut trouble = trouble.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => *trouble = None,
            Err(e) if e.is_device_trouble() => {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *trouble = Some(e.to_string());
            }
            Err(_) => {}
        }
    };
    let mut session: Option<Box<dyn DeviceSession>> = None;
    while let Ok(job) = rx.recv() {
        if Instant::now() >= job.deadline {
            let _ = job.reply.send(Err(KeystoreError::DeadlineExceeded));
            continue;
        }
        if session.is_none() {
            match device.open_session() {
                Ok(s) => session = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "keystore worker could not open a session");
                    let failed: Result<Answer, KeystoreError> = Err(e);
                    note(&failed);
                    let _ = job.reply.send(failed);
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else {
            continue;
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run(s.as_mut(), job.op)));
        latency.observe(started.elapsed());
        let result = match outcome {
            Ok(result) => result,
            Err(_) => {
                tracing::error!("keystore worker panicked in a device call; reopening its session");
                session = None;
                Err(KeystoreError::Unavailable("device call panicked".into()))
            }
        };
        note(&result);
        let _ = job.reply.send(result);
    }
}

fn run(session: &mut dyn DeviceSession, op: Op) -> Result<Answer, KeystoreError> {
    match op {
        Op::Generate(request) => session.generate(&request).map(Answer::Key),
        Op::KeyInfo(id) => session.key_info(&id).map(Answer::Key),
        Op::Sign {
            id,
            scheme,
            message,
        } => session.sign(&id, scheme, &message).map(Answer::Signature),
        Op::List => session.list().map(Answer::Keys),
    }
}
