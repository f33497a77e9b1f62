//! The files of a segmented log: taking its lock, reading a segment back (where its committed
//! records end, their index entries and sparse offsets, a torn tail), the sorted side files of
//! a sealed segment and their binary search, whole segments written at once (migration), and
//! durable replacement of small files. It never decides what a record means beyond its
//! sequence number and issued serial.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{index_key, io_err, segment_name, SPARSE_EVERY};
use crate::audit::record::AuditRecord;
use crate::audit::AuditError;

/// How long opening waits for another handle to let go of the lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

pub(in crate::audit) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename, both synced.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AuditError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    sync_dir(dir)
}

pub(super) fn lock(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Open {
                    path: dir.display().to_string(),
                    reason: "could not acquire lock (another process holds it open: is the \
                             appliance or a ceremony running?)"
                        .into(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
    }
}

/// What a scan of a segment found: committed length, records, index entries, sparse offsets.
pub(super) struct Scan {
    pub(super) len: u64,
    pub(super) count: u64,
    pub(super) index: HashMap<[u8; 16], u64>,
    pub(super) sparse: Vec<(u64, u64)>,
    /// Bytes after the last good line when nothing good follows them.
    pub(super) torn: Option<u64>,
}

/// Where a segment's content ends: after its last byte that is not zero (records never hold a
/// zero byte; the zeros after them are space written ahead).
fn content_end(file: &File, path: &Path) -> Result<u64, AuditError> {
    let mut end = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut buf = vec![0u8; 1 << 16];
    while end > 0 {
        let n = usize::try_from(end.min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, end - n as u64)
            .map_err(|e| io_err(path, e))?;
        if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
            return Ok(end - n as u64 + last as u64 + 1);
        }
        end -= n as u64;
    }
    Ok(0)
}

/// Reads a segment whose first record is `first`: every complete line that parses as a
/// record counts; trailing bytes that are not such lines are reported as torn, and zeros after
/// the content are neither.
pub(super) fn scan(path: &Path, first: u64) -> Result<Scan, AuditError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let end = content_end(&file, path)?;
    let mut reader = BufReader::with_capacity(1 << 16, file.take(end));
    let mut line = Vec::new();
    let (mut offset, mut good_end, mut count) = (0u64, 0u64, 0u64);
    let mut index = HashMap::new();
    let mut sparse = Vec::new();
    let mut bad_since: Option<u64> = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        let record = complete
            .then(|| serde_json::from_slice::<AuditRecord>(&line[..n - 1]).ok())
            .flatten();
        match record {
            Some(r) => {
                // A bad line with good ones after it stays: verification reports it.
                if let Some(at) = bad_since.take() {
                    count += count_lines(path, at, offset)?;
                }
                if count.is_multiple_of(SPARSE_EVERY) {
                    sparse.push((first + count, offset));
                }
                if let Some(k) = index_key(&r.event) {
                    index.insert(k, r.seq);
                }
                count += 1;
                good_end = offset + n as u64;
            }
            None => {
                bad_since.get_or_insert(offset);
            }
        }
        offset += n as u64;
    }
    Ok(Scan {
        len: good_end,
        count,
        index,
        sparse,
        torn: bad_since.map(|_| offset - good_end),
    })
}

/// Complete lines between two offsets of a file (read in pieces: a broken region may be large).
fn count_lines(path: &Path, from: u64, to: u64) -> Result<u64, AuditError> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from)).map_err(|e| io_err(path, e))?;
    let mut region = f.take(to.saturating_sub(from));
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = region.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

pub(super) fn side_path(dir: &Path, first: u64, ext: &str) -> PathBuf {
    dir.join(format!("{first:020}.{ext}"))
}

/// Writes a sealed segment's `.issued` and `.offsets` files.
pub(super) fn write_sides(
    dir: &Path,
    first: u64,
    index: &HashMap<[u8; 16], u64>,
    sparse: &[(u64, u64)],
) -> Result<(), AuditError> {
    let mut entries: Vec<(&[u8; 16], &u64)> = index.iter().collect();
    entries.sort();
    let mut issued = Vec::with_capacity(entries.len() * 24);
    for (k, seq) in entries {
        issued.extend_from_slice(k);
        issued.extend_from_slice(&seq.to_be_bytes());
    }
    let mut offsets = Vec::with_capacity(sparse.len() * 16);
    for (seq, off) in sparse {
        offsets.extend_from_slice(&seq.to_be_bytes());
        offsets.extend_from_slice(&off.to_be_bytes());
    }
    replace_file(dir, &format!("{first:020}.offsets"), &offsets)?;
    replace_file(dir, &format!("{first:020}.issued"), &issued)
}

/// Binary search of a side file of fixed-size entries whose first `key.len()` bytes are the
/// sort key: the last entry whose key is <= `key` (`exact`: equal), as raw bytes.
pub(super) fn search_side(path: &Path, width: usize, key: &[u8], exact: bool) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let n = file.metadata().ok()?.len() / width as u64;
    let (mut lo, mut hi) = (0u64, n);
    let mut entry = vec![0u8; width];
    let mut best = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        file.read_exact_at(&mut entry, mid * width as u64).ok()?;
        match entry[..key.len()].cmp(key) {
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(entry),
            std::cmp::Ordering::Less => {
                best = Some(entry.clone());
                lo = mid + 1;
            }
        }
    }
    if exact {
        None
    } else {
        best
    }
}

/// Writes a whole segment whose first record is `first` (migration from an earlier store):
/// the file, synced, and its side files when `seal`.
pub(in crate::audit) fn write_segment(
    dir: &Path,
    first: u64,
    lines: &[sled::IVec],
    seal: bool,
) -> Result<(), AuditError> {
    let path = dir.join(segment_name(first));
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    let mut index = HashMap::new();
    let mut sparse = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let i = i as u64;
        if i.is_multiple_of(SPARSE_EVERY) {
            sparse.push((first + i, buf.len() as u64));
        }
        if let Ok(r) = serde_json::from_slice::<AuditRecord>(line) {
            if let Some(k) = index_key(&r.event) {
                index.insert(k, r.seq);
            }
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    let mut f = File::create(&path).map_err(|e| io_err(&path, e))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(&path, e))?;
    if seal {
        write_sides(dir, first, &index, &sparse)?;
    }
    Ok(())
}
