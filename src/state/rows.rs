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
    /// The newest seal seen per table, and the file that keeps it.
    seen: Mutex<BTreeMap<String, Seen>>,
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

    /// Remembers the highest seal seen per table in `path` (on the node's own disk), starting
    /// from what it holds: a restarted node still refuses a rolled-back database.
    pub fn with_seen_file(mut self, path: PathBuf) -> Result<Self, String> {
        let seen = read_seen(&path)?;
        self.seen = Mutex::new(seen);
        self.seen_file = Some(path);
        Ok(self)
    }

    /// The highest seal sequence of `table` seen so far (0: none).
    pub fn seen(&self, table: &str) -> u64 {
        lock(&self.seen).get(table).map_or(0, |s| s.sequence)
    }

    /// Takes note of `table`'s seal `sequence` over `digest` (hex); refused, with the seal
    /// seen before, when it is older than that one, or as new with other rows (a fork: two
    /// writers each shown a different state). A newer seal is written to the seen file, merged
    /// with what other processes of this node (the CLI) wrote there.
    pub fn saw(&self, table: &str, sequence: u64, digest: &str) -> Result<(), u64> {
        let mut seen = lock(&self.seen);
        let last = seen.get(table).cloned().unwrap_or_default();
        if sequence < last.sequence
            || (sequence == last.sequence && digest != last.digest && last.sequence > 0)
        {
            return Err(last.sequence);
        }
        if sequence > last.sequence {
            seen.insert(
                table.to_string(),
                Seen {
                    sequence,
                    digest: digest.to_string(),
                },
            );
            if let Some(path) = &self.seen_file {
                if let Err(e) = write_seen(path, &mut seen) {
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

/// The newest seal of a table a node has seen: its sequence and digest (hex).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub sequence: u64,
    pub digest: String,
}

fn read_seen(path: &std::path::Path) -> Result<BTreeMap<String, Seen>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: unreadable seal sequences: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `seen` to `path` after taking in what is there already (newer seals another process
/// of this node saw), through a temporary file of this process, synced.
fn write_seen(path: &std::path::Path, seen: &mut BTreeMap<String, Seen>) -> std::io::Result<()> {
    if let Ok(on_disk) = read_seen(path) {
        for (table, other) in on_disk {
            let newer = seen.get(&table).is_none_or(|s| other.sequence > s.sequence);
            if newer {
                seen.insert(table, other);
            }
        }
    }
    let bytes = serde_json::to_vec(&*seen).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
