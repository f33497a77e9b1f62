//! Signed rows: on a shared database, the trust bundle's rows carry a signature by the writing
//! node's device-held key over their table, key and content, and every reader keeps only rows
//! signed by a member key (this node's own, and those its config lists). A row written into the
//! database by other means — a root inserted with SQL — is ignored, counted and reported once.
//!
//! Rows alone cannot show what was taken away or put back: a deleted revocation, a root removed
//! and then restored from an old copy of its row. So each trust table also has a seal (see the
//! PostgreSQL backend's `seals`): a signed digest of all its rows with a sequence number that
//! grows with every write. The highest sequence a node has seen per table is remembered here
//! (and kept in a file on the node's own disk when one is given), so a database rolled back to
//! an older, validly sealed state is refused rather than believed.
//!
//! The keys stay in the devices: this module only sees a signing function and public keys. It
//! must never accept a row it could not verify, nor a seal older than one it has seen.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Signs a row's message with this node's device-held key (ECDSA P-256, SHA-256, DER).
pub type RowSign = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Told once per rejected row: its table and key.
pub type OnReject = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How this node signs rows and whom it believes.
pub struct RowTrust {
    sign: RowSign,
    /// This node's own public key (DER SubjectPublicKeyInfo).
    own: Vec<u8>,
    /// Member public keys as ring reads them (the SubjectPublicKeyInfo's key bits).
    members: Vec<Vec<u8>>,
    rejected: AtomicU64,
    reported: Mutex<HashSet<String>>,
    on_reject: OnReject,
    /// The highest seal sequence seen per table, and the file that keeps it.
    seen: Mutex<BTreeMap<String, u64>>,
    seen_file: Option<PathBuf>,
}

impl std::fmt::Debug for RowTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowTrust")
            .field("members", &self.members.len())
            .field("rejected", &self.rejected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a row's signature covers.
pub fn message(table: &str, key: &str, content: &[u8]) -> Vec<u8> {
    let mut m = format!("hsm-ca state row v1\n{table}\n{key}\n").into_bytes();
    m.extend_from_slice(content);
    m
}

impl RowTrust {
    /// `own`: this node's public key (DER SubjectPublicKeyInfo, P-256), whose private half
    /// `sign` uses; `others`: the other members' keys. Rows signed by any of them are believed.
    pub fn new(
        sign: RowSign,
        own: &[u8],
        others: &[Vec<u8>],
        on_reject: OnReject,
    ) -> Result<Self, String> {
        let members = std::iter::once(own)
            .chain(others.iter().map(Vec::as_slice))
            .map(|spki| {
                crate::keystore::der::subject_public_key_bits(spki)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| "a member key is not a SubjectPublicKeyInfo".to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(RowTrust {
            sign,
            own: own.to_vec(),
            members,
            rejected: AtomicU64::new(0),
            reported: Mutex::new(HashSet::new()),
            on_reject,
            seen: Mutex::new(BTreeMap::new()),
            seen_file: None,
        })
    }

    /// Remembers the highest seal sequence seen per table in `path` (on the node's own disk),
    /// starting from what it holds: a restarted node still refuses a rolled-back database.
    pub fn with_seen_file(mut self, path: PathBuf) -> Result<Self, String> {
        let seen = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: unreadable seal sequences: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        self.seen = Mutex::new(seen);
        self.seen_file = Some(path);
        Ok(self)
    }

    /// The highest seal sequence of `table` seen so far (0: none).
    pub fn seen(&self, table: &str) -> u64 {
        lock(&self.seen).get(table).copied().unwrap_or(0)
    }

    /// Takes note of `table`'s seal `sequence`; refused (with the highest seen) when it is
    /// older than one seen before. A grown sequence is written to the seen file.
    pub fn saw(&self, table: &str, sequence: u64) -> Result<(), u64> {
        let mut seen = lock(&self.seen);
        let last = seen.get(table).copied().unwrap_or(0);
        if sequence < last {
            return Err(last);
        }
        if sequence > last {
            seen.insert(table.to_string(), sequence);
            if let Some(path) = &self.seen_file {
                let written = serde_json::to_vec(&*seen)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| {
                        let tmp = path.with_extension("tmp");
                        std::fs::write(&tmp, bytes)?;
                        std::fs::rename(&tmp, path)
                    });
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), error = %e, "seal sequences not kept");
                }
            }
        }
        Ok(())
    }

    /// Counts a row (or seal) that is not believed and reports it once per `table`/`key`.
    pub fn reject(&self, table: &str, key: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let first = lock(&self.reported).insert(format!("{table}/{key}"));
        if first {
            (self.on_reject)(table, key);
        }
    }

    /// The signature for a row.
    pub fn sign(&self, table: &str, key: &str, content: &[u8]) -> Result<Vec<u8>, String> {
        (self.sign)(&message(table, key, content))
    }

    /// Whether a member signed this row; a row that fails is counted and reported once.
    pub fn believe(
        &self,
        table: &str,
        key: &str,
        content: &[u8],
        signature: Option<&[u8]>,
    ) -> bool {
        let good = self.verifies(table, key, content, signature);
        if !good {
            self.reject(table, key);
        }
        good
    }

    /// Whether a member signed this row (nothing counted or reported).
    pub fn verifies(
        &self,
        table: &str,
        key: &str,
        content: &[u8],
        signature: Option<&[u8]>,
    ) -> bool {
        let msg = message(table, key, content);
        let good = signature.is_some_and(|sig| {
            self.members.iter().any(|m| {
                crate::keystore::signature_verifies(
                    crate::keystore::SignatureScheme::EcdsaSha256,
                    m,
                    &msg,
                    sig,
                )
            })
        });
        good
    }

    /// This node's public key (DER SubjectPublicKeyInfo).
    pub fn own_key(&self) -> &[u8] {
        &self.own
    }

    /// Rows read and not believed so far (each read counts).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
