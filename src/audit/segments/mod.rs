//! Where the audit log's records live: JSON Lines segment files under `<data_dir>/audit`, each
//! named by the sequence number of its first record (`00000000000000000001.jsonl`), one record
//! per line exactly as it was sealed — a segment is an export. Only the last segment is written
//! to: a group of records is appended with one write that returns once it is on disk (the
//! file is opened with `O_DSYNC`: the kernel syncs the range written, as `fdatasync` would,
//! without a second system call); after a failed write the file is cut back to what was
//! committed before. The segment being written is kept
//! [`WRITTEN_AHEAD`] bytes of zeros longer than its records, written once, so that a group's
//! sync flushes data only: the file's size and blocks do not change, and the filesystem
//! commits no metadata for it (on ext4 under load that halves the time a sync takes). The
//! zeros are cut off when the segment is sealed and when the store closes; a crash leaves them,
//! and opening takes a run of zeros at the end of the file as unused space. A segment is sealed after
//! [`SEGMENT_RECORDS`] records: it gets two sorted side files, `.issued` (the issued-serial
//! index: 16 bytes of SHA-256 of "issuing key id / serial", then the record's sequence number)
//! and `.offsets` (every [`SPARSE_EVERY`]th record's sequence number and byte offset), and is
//! never written again. `meta.json` holds the audit key's id and public key and the
//! verification marker (replaced atomically). An exclusive lock (`lock`) keeps a second process
//! out.
//!
//! Opening reads only the last segment (to find where it ends and index its serials), so start
//! time and memory do not grow with the log. A last line cut short by a crash (never
//! acknowledged: it was not synced) is moved to a `.torn` file next to the segment, never
//! dropped; a broken line followed by good ones is left for verification to report.
//!
//! This part never interprets a record beyond its sequence number and issued serial, and
//! never decides whether a chain is valid.

mod files;
#[cfg(test)]
pub(super) mod tests;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use self::files::{lock, replace_file, scan, search_side, side_path, write_sides};
pub(super) use self::files::{sync_dir, write_segment};

use serde::{Deserialize, Serialize};

use super::record::AuditEvent;
use super::AuditError;

/// Records per segment file.
pub const SEGMENT_RECORDS: u64 = 65_536;
/// One `.offsets` entry per this many records.
pub(super) const SPARSE_EVERY: u64 = 256;
/// Bytes of zeros the segment being written is kept longer than its records (written whenever
/// a group reaches the end of them, in the same sync).
pub const WRITTEN_AHEAD: u64 = 1 << 20;

const META: &str = "meta.json";
const META_VERSION: u32 = 1;

pub(super) fn io_err(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Storage(format!("{}: {e}", path.display()))
}

/// The verification marker: the last checkpoint record verified or written by this appliance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Marker {
    pub seq: u64,
    /// Hex SHA-256 of that record's stored bytes.
    pub hash: String,
}

/// `meta.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    pub version: u32,
    /// The audit key's id in the device (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The audit key's DER SubjectPublicKeyInfo (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spki: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<Marker>,
}

/// The index key of a serial issued by the key `ca_key` (serials as lowercase hex without
/// leading zero bytes, as audited and as revocations name them).
pub(super) fn issued_key(ca_key: &str, serial: &str) -> [u8; 16] {
    let mut serial = serial.to_ascii_lowercase();
    while serial.len() > 2 && serial.starts_with("00") {
        serial.drain(..2);
    }
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{ca_key}/{serial}").as_bytes(),
    );
    let mut key = [0u8; 16];
    key.copy_from_slice(&d.as_ref()[..16]);
    key
}

/// The index key of `event`, when it is an issuance.
pub(super) fn index_key(event: &AuditEvent) -> Option<[u8; 16]> {
    match event {
        AuditEvent::Issued { serial, ca_key, .. } => Some(issued_key(ca_key, serial)),
        _ => None,
    }
}

/// A record to append: sequence number, stored bytes, index key (see [`index_key`]).
pub(super) type Entry = (u64, Vec<u8>, Option<[u8; 16]>);

pub(super) fn segment_name(first: u64) -> String {
    format!("{first:020}.jsonl")
}

/// The segment being written.
struct Active {
    first: u64,
    path: PathBuf,
    file: File,
    /// Committed bytes.
    len: u64,
    /// The file's size: committed bytes, then zeros written ahead.
    size: u64,
    /// Committed records.
    count: u64,
    index: HashMap<[u8; 16], u64>,
    /// (sequence number, offset) of records `first + k * SPARSE_EVERY`.
    sparse: Vec<(u64, u64)>,
}

impl Active {
    /// Cuts the zeros written ahead off the file, so that it ends with its last record.
    fn cut_zeros(&mut self) -> Result<(), AuditError> {
        if self.size > self.len {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| io_err(&self.path, e))?;
            self.size = self.len;
        }
        Ok(())
    }
}

struct Inner {
    _lock: File,
    /// First sequence number of each sealed segment.
    sealed: Vec<u64>,
    active: Active,
    meta: Meta,
}

impl Drop for Inner {
    /// A closed store's last segment ends with its last record (the lock is still held here).
    fn drop(&mut self) {
        if let Err(e) = self.active.cut_zeros() {
            tracing::warn!(error = %e, "the audit segment's unused space was not cut off; the next open skips it");
        }
    }
}

/// An open log store; clones share it.
#[derive(Clone)]
pub(super) struct Store {
    dir: Arc<PathBuf>,
    inner: Arc<Mutex<Inner>>,
}

impl Store {
    /// Opens (creating when missing) the log under `dir/audit` (a log kept in sled by an
    /// earlier version is migrated first: see [`open_store`](super::open_store)).
    pub(super) fn open(dir: &Path) -> Result<Store, AuditError> {
        let path = dir.join("audit");
        std::fs::create_dir_all(&path).map_err(|e| AuditError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let lock = lock(&path)?;
        let meta = match std::fs::read(path.join(META)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuditError::Open {
                path: path.join(META).display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_meta(),
            Err(e) => return Err(io_err(&path.join(META), e)),
        };
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(|e| io_err(&path, e))? {
            let name = entry.map_err(|e| io_err(&path, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(".jsonl")
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let active_first = firsts.pop().unwrap_or(1);
        for first in &firsts {
            let missing = !side_path(&path, *first, "issued").exists()
                || !side_path(&path, *first, "offsets").exists();
            if missing {
                let s = scan(&path.join(segment_name(*first)), *first)?;
                write_sides(&path, *first, &s.index, &s.sparse)?;
            }
        }
        let active = Self::open_active(&path, active_first)?;
        Ok(Store {
            dir: Arc::new(path),
            inner: Arc::new(Mutex::new(Inner {
                _lock: lock,
                sealed: firsts,
                active,
                meta,
            })),
        })
    }

    /// Opens the segment being written, setting aside a torn tail.
    fn open_active(dir: &Path, first: u64) -> Result<Active, AuditError> {
        let path = dir.join(segment_name(first));
        let created = !path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DSYNC)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        if created {
            sync_dir(dir)?;
        }
        let s = scan(&path, first)?;
        let mut size = file.metadata().map_err(|e| io_err(&path, e))?.len();
        if let Some(torn) = s.torn {
            let mut tail = vec![0u8; usize::try_from(torn).unwrap_or(0)];
            file.read_exact_at(&mut tail, s.len)
                .map_err(|e| io_err(&path, e))?;
            let unix = time::OffsetDateTime::now_utc().unix_timestamp();
            let keep = dir.join(format!("{}.torn-{unix}", segment_name(first)));
            std::fs::write(&keep, &tail).map_err(|e| io_err(&keep, e))?;
            file.set_len(s.len).map_err(|e| io_err(&path, e))?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
            size = s.len;
            tracing::warn!(
                bytes = torn,
                kept = %keep.display(),
                "the audit log's last segment ended in an incomplete record (a write cut short, \
                 never acknowledged); those bytes were set aside"
            );
        }
        Ok(Active {
            first,
            path,
            file,
            len: s.len,
            size,
            count: s.count,
            index: s.index,
            sparse: s.sparse,
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sequence number of the last record (0: none).
    pub(super) fn last_seq(&self) -> u64 {
        let inner = self.inner();
        (inner.active.first + inner.active.count).saturating_sub(1)
    }

    /// `meta.json` as read or last written.
    pub(super) fn meta(&self) -> Meta {
        self.inner().meta.clone()
    }

    /// Replaces `meta.json` (durable on return).
    pub(super) fn set_meta(&self, meta: Meta) -> Result<(), AuditError> {
        let mut inner = self.inner();
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| io_err(&self.dir, e))?;
        replace_file(&self.dir, META, &bytes)?;
        inner.meta = meta;
        Ok(())
    }

    /// Appends records `(sequence number, stored bytes, index key)`, numbered on from the last
    /// one, with one write and one sync. On failure nothing of them stays in the file.
    pub(super) fn append(&self, records: &[Entry]) -> Result<(), AuditError> {
        let mut inner = self.inner();
        let a = &mut inner.active;
        let next = a.first + a.count;
        match records.first() {
            None => return Ok(()),
            Some((seq, _, _)) if *seq != next => {
                return Err(AuditError::Storage(format!(
                    "record {seq} appended where record {next} belongs"
                )))
            }
            Some(_) => {}
        }
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.1.len() + 1).sum());
        let mut offsets = Vec::with_capacity(records.len());
        for (_, bytes, _) in records {
            offsets.push(a.len + buf.len() as u64);
            buf.extend_from_slice(bytes);
            buf.push(b'\n');
        }
        let end = a.len + buf.len() as u64;
        // Past the zeros written ahead, the next ones go in the same write and sync.
        if end > a.size {
            buf.resize(buf.len() + usize::try_from(WRITTEN_AHEAD).unwrap_or(0), 0);
        }
        // Durable on return: the file is opened with O_DSYNC.
        if let Err(e) = a.file.write_all_at(&buf, a.len) {
            // Cutting back needs no space; what stays beyond `len` is set aside at the next open.
            let _ = a.file.set_len(a.len);
            a.size = a.len;
            return Err(io_err(&a.path, e));
        }
        a.size = a.size.max(a.len + buf.len() as u64);
        for ((seq, _, key), off) in records.iter().zip(offsets) {
            if (seq - a.first).is_multiple_of(SPARSE_EVERY) {
                a.sparse.push((*seq, off));
            }
            if let Some(k) = key {
                a.index.insert(*k, *seq);
            }
        }
        a.len = end;
        a.count += records.len() as u64;
        if a.count >= SEGMENT_RECORDS {
            if let Err(e) = Self::seal(&self.dir, &mut inner) {
                tracing::warn!(error = %e, "audit segment not sealed yet; retrying after the next append");
            }
        }
        Ok(())
    }

    /// Seals the segment being written and starts the next one.
    fn seal(dir: &Path, inner: &mut Inner) -> Result<(), AuditError> {
        let a = &mut inner.active;
        a.cut_zeros()?;
        write_sides(dir, a.first, &a.index, &a.sparse)?;
        let next = Self::open_active(dir, a.first + a.count)?;
        let old = std::mem::replace(&mut inner.active, next);
        inner.sealed.push(old.first);
        Ok(())
    }

    /// Reads the last segment again from disk (after a storage error): what is committed,
    /// with a torn tail set aside.
    pub(super) fn recover(&self) -> Result<(), AuditError> {
        let mut inner = self.inner();
        let first = inner.active.first;
        inner.active = Self::open_active(&self.dir, first)?;
        Ok(())
    }

    /// Whether the index holds `key` (see [`issued_key`]).
    pub(super) fn was_issued(&self, key: &[u8; 16]) -> Result<bool, AuditError> {
        let sealed = {
            let inner = self.inner();
            if inner.active.index.contains_key(key) {
                return Ok(true);
            }
            inner.sealed.clone()
        };
        Ok(sealed.iter().rev().any(|first| {
            search_side(&side_path(&self.dir, *first, "issued"), 24, key, true).is_some()
        }))
    }

    /// The stored records from sequence number `from` on, in file order.
    pub(super) fn iter_from(&self, from: u64) -> Records {
        let inner = self.inner();
        let mut segments: Vec<(u64, Option<u64>)> =
            inner.sealed.iter().map(|f| (*f, None)).collect();
        segments.push((inner.active.first, Some(inner.active.len)));
        // The segment holding `from` (by its number), and where in it to start.
        let from = from.max(1);
        let at = segments
            .iter()
            .rposition(|(first, _)| *first <= from)
            .unwrap_or(0);
        let (first, _) = segments[at];
        let (seq, offset) = if at + 1 == segments.len() {
            inner
                .active
                .sparse
                .iter()
                .rev()
                .find(|(s, _)| *s <= from)
                .copied()
                .unwrap_or((first, 0))
        } else {
            search_side(
                &side_path(&self.dir, first, "offsets"),
                16,
                &from.to_be_bytes(),
                false,
            )
            .map(|e| {
                let mut s = [0u8; 8];
                let mut o = [0u8; 8];
                s.copy_from_slice(&e[..8]);
                o.copy_from_slice(&e[8..16]);
                (u64::from_be_bytes(s), u64::from_be_bytes(o))
            })
            .unwrap_or((first, 0))
        };
        Records {
            dir: self.dir.clone(),
            segments: segments.split_off(at),
            reader: None,
            start: Some((offset, from.saturating_sub(seq))),
            line: Vec::new(),
        }
    }
}

/// Stored records in file order (see [`Store::iter_from`]).
pub(super) struct Records {
    dir: Arc<PathBuf>,
    /// Segments still to read: first sequence number, committed length (the last one).
    segments: Vec<(u64, Option<u64>)>,
    reader: Option<BufReader<std::io::Take<File>>>,
    /// Where to start in the first segment: byte offset, lines to skip.
    start: Option<(u64, u64)>,
    line: Vec<u8>,
}

impl Iterator for Records {
    type Item = Result<Vec<u8>, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.reader.is_none() {
                if self.segments.is_empty() {
                    return None;
                }
                let (first, len) = self.segments.remove(0);
                let path = self.dir.join(segment_name(first));
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => return Some(Err(io_err(&path, e))),
                };
                let (offset, skip) = self.start.take().unwrap_or((0, 0));
                let limit = len.unwrap_or(u64::MAX).saturating_sub(offset);
                let mut file = file;
                if let Err(e) = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)) {
                    return Some(Err(io_err(&path, e)));
                }
                let mut reader = BufReader::with_capacity(1 << 16, file.take(limit));
                for _ in 0..skip {
                    self.line.clear();
                    match reader.read_until(b'\n', &mut self.line) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => return Some(Err(io_err(&path, e))),
                    }
                }
                self.reader = Some(reader);
            }
            let reader = self.reader.as_mut()?;
            self.line.clear();
            match reader.read_until(b'\n', &mut self.line) {
                Ok(0) => self.reader = None,
                Ok(_) => {
                    if self.line.last() == Some(&b'\n') {
                        self.line.pop();
                    }
                    return Some(Ok(std::mem::take(&mut self.line)));
                }
                Err(e) => return Some(Err(io_err(&self.dir, e))),
            }
        }
    }
}

/// Writes `meta.json` into a log folder being assembled (migration).
pub(super) fn write_meta(dir: &Path, meta: &Meta) -> Result<(), AuditError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| io_err(dir, e))?;
    replace_file(dir, META, &bytes)
}

/// A new `meta.json` of this version.
pub(super) fn new_meta() -> Meta {
    Meta {
        version: META_VERSION,
        ..Meta::default()
    }
}

/// All segment files of a log folder, in order (for tests and tools that read them).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let path = dir.join("audit");
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let first = name.strip_suffix(".jsonl")?.parse().ok()?;
            Some((first, e.path()))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The segment file a log folder's record `first` starts (for tools that write logs in bulk).
pub fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join("audit").join(segment_name(first))
}
