//! Opening the sled stores (audit log, CA state, the ceremony host's data). Every sled store
//! is opened here, with its page cache bounded ([`DEFAULT_CACHE_BYTES`] unless the config
//! says otherwise): sled's own default (1 GiB) would let memory grow with the store.
//!
//! sled takes an exclusive lock on its directory and gives it back only when the last of its
//! internal handles is gone, which can be shortly after the `Db` itself was dropped (its
//! background flusher holds one too), and a restarted appliance may start while the old
//! process is still exiting. Opening therefore waits a little for a lock that is about to be
//! released, and then reports the store as held by another process.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`open`] waits for another handle to let go of the store.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The page cache of a store opened without a size of its own (the CA state, the ceremony
/// host's stores).
pub const DEFAULT_CACHE_BYTES: u64 = 8 << 20;

/// Opens (creating if needed) the sled store at `path` with the default cache, waiting up to
/// [`LOCK_WAIT`] for a lock held elsewhere.
pub fn open(path: &Path) -> sled::Result<sled::Db> {
    open_with_cache(path, DEFAULT_CACHE_BYTES)
}

/// [`open`] with a page cache of at most `cache_bytes`.
pub fn open_with_cache(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    open_sized(path, cache_bytes, LOCK_WAIT)
}

/// Opens the store at `path` with the default cache, retrying while its lock is held, for at
/// most `wait`.
pub fn open_waiting(path: &Path, wait: Duration) -> sled::Result<sled::Db> {
    open_sized(path, DEFAULT_CACHE_BYTES, wait)
}

/// Opens the store at `path` with a page cache of at most `cache_bytes`, retrying while its
/// lock is held, for at most `wait`.
pub fn open_sized(path: &Path, cache_bytes: u64, wait: Duration) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(10);
    let config = sled::Config::new().path(path).cache_capacity(cache_bytes);
    loop {
        match config.open() {
            Err(e) if is_locked(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// An open failure as an officer should read it: a held lock names the likely holder.
pub fn explain(e: &sled::Error) -> String {
    if is_locked(e) {
        format!("{e} (another process holds it open: is the appliance or a ceremony running?)")
    } else {
        e.to_string()
    }
}

/// Whether sled refused to open because another handle holds the store's lock.
pub fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_released_shortly_after_is_waited_for() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db");
        let held = sled::open(&path).expect("open");
        held.insert(b"k", b"v".as_slice()).expect("insert");
        held.flush().expect("flush");
        // A plain second open fails at once while the first handle lives.
        assert!(is_locked(&sled::open(&path).expect_err("locked")));
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let db = open_waiting(&path, Duration::from_secs(10)).expect("opened after release");
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(b"v".as_slice()));
        releaser.join().expect("join");
    }

    #[test]
    fn a_lock_held_throughout_is_reported_after_the_wait() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db");
        let _held = sled::open(&path).expect("open");
        let started = Instant::now();
        let e = open_waiting(&path, Duration::from_millis(300)).expect_err("still locked");
        assert!(is_locked(&e), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
