use super::*;
use crate::audit::record::{self, AuditRecord, GENESIS};

/// An issuance record's event; record `i` carries serial `i + 1`.
pub(in crate::audit) fn issued(i: u64) -> AuditEvent {
    AuditEvent::Issued {
        serial: format!("{:040x}", i + 1),
        identity: "spiffe://td/ns/a/sa/w".into(),
        caller: "spiffe://td/ns/a/sa/w".into(),
        method: "jwt".into(),
        ca_key: "0a0b".into(),
        not_before: "2026-12-01T00:00:00Z".into(),
        not_after: "2026-12-02T00:00:00Z".into(),
        csr_key_sha256: hex::encode([1u8; 32]),
        certificate_sha256: None,
    }
}

/// Appends `n` issuance records in groups of `group`, chained on from `head` at `next`.
fn append(store: &Store, head: &mut [u8; 32], next: &mut u64, n: u64, group: u64) {
    let mut left = n;
    while left > 0 {
        let k = left.min(group);
        let mut batch = Vec::new();
        for _ in 0..k {
            let event = issued(*next);
            let key = index_key(&event);
            let (bytes, h) = record::seal(*next, "2026-12-01T00:00:00Z".into(), head, event);
            batch.push((*next, bytes, key));
            *head = h;
            *next += 1;
        }
        store.append(&batch).expect("append");
        left -= k;
    }
}

/// The whole stored chain verifies (no checkpoints): how many records.
fn verify_whole(store: &Store, _key: Option<&[u8]>) -> Result<u64, record::ChainError> {
    let lines: Vec<Vec<u8>> = store.iter_from(1).map(|b| b.expect("read")).collect();
    record::verify_chain_from(
        record::ChainStart::default(),
        lines.iter().map(|l| l.as_slice()),
        &[],
    )
    .map(|s| s.records)
}

/// A closed log of `n` records appended in groups of `group`: its folder, head and next number.
fn closed_log(n: u64, group: u64) -> (tempfile::TempDir, [u8; 32], u64) {
    let dir = tempfile::tempdir().expect("dir");
    let (mut head, mut next) = (GENESIS, 1);
    let store = Store::open(dir.path()).expect("open");
    append(&store, &mut head, &mut next, n, group);
    (dir, head, next)
}

/// Adds `bytes` at the end of the first segment of a closed log, as a crash could leave them.
fn add_to_segment(dir: &Path, bytes: &[u8]) {
    let segment = dir.join("audit").join(segment_name(1));
    let mut f = OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("segment");
    std::io::Write::write_all(&mut f, bytes).expect("write");
}

/// Files set aside as torn.
fn torn_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("audit"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect()
}

fn seq_of(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<AuditRecord>(bytes)
        .expect("record")
        .seq
}

#[test]
fn records_cross_a_sealed_segment_and_are_found_again_after_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let n = SEGMENT_RECORDS + 1000;
    {
        let store = Store::open(dir.path()).expect("open");
        let (mut head, mut next) = (GENESIS, 1);
        append(&store, &mut head, &mut next, n, 250);
        assert_eq!(store.last_seq(), n);
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.last_seq(), n);
    let path = dir.path().join("audit");
    assert!(side_path(&path, 1, "issued").exists());
    assert!(side_path(&path, 1, "offsets").exists());
    // The first segment closes with the group that reached the limit.
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[1], path.join(segment_name(SEGMENT_RECORDS + 215)));
    // Reading from anywhere, across the boundary, in order.
    for from in [
        1,
        255,
        256,
        257,
        SEGMENT_RECORDS - 3,
        SEGMENT_RECORDS + 1,
        n,
    ] {
        let seqs: Vec<u64> = store
            .iter_from(from)
            .take(8)
            .map(|b| seq_of(&b.expect("read")))
            .collect();
        let want: Vec<u64> = (from..=n).take(8).collect();
        assert_eq!(seqs, want, "from {from}");
    }
    assert_eq!(store.iter_from(1).count() as u64, n);
    assert_eq!(verify_whole(&store, None).expect("chain"), n);
    // The index: a serial in the sealed segment, one in the active one, one never issued
    // (record `seq` carries serial `seq + 1`).
    for (seq, want) in [(1, true), (70, true), (n, true), (n + 5, false)] {
        let key = issued_key("0a0b", &format!("{:040x}", seq + 1));
        assert_eq!(store.was_issued(&key).expect("index"), want, "record {seq}");
    }
    assert!(!store.was_issued(&issued_key("0a0c", "02")).expect("index"));
    // Leading zeros and case do not matter.
    assert!(store
        .was_issued(&issued_key("0a0b", "0002"))
        .expect("index"));
}

#[test]
fn a_broken_line_with_records_after_it_is_left_for_verification() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let store = Store::open(dir.path()).expect("open");
        let (mut head, mut next) = (GENESIS, 1);
        append(&store, &mut head, &mut next, 10, 10);
    }
    let segment = dir.path().join("audit").join(segment_name(1));
    let text = std::fs::read_to_string(&segment).expect("read");
    let mut lines: Vec<&str> = text.lines().collect();
    lines[4] = "not a record";
    std::fs::write(&segment, lines.join("\n") + "\n").expect("write");
    let store = Store::open(dir.path()).expect("opens; verification decides");
    assert_eq!(store.last_seq(), 10);
    assert!(verify_whole(&store, None).is_err());
}

/// The segment file's bytes.
fn segment_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("audit").join(segment_name(1))).expect("segment")
}

#[test]
fn the_segment_is_written_ahead_with_zeros_while_open_and_ends_with_its_last_record_once_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut head, mut next) = (GENESIS, 1);
    let store = Store::open(dir.path()).expect("open");
    append(&store, &mut head, &mut next, 10, 3);
    let open = segment_bytes(dir.path());
    let records = open.iter().rposition(|b| *b != 0).expect("records") + 1;
    // The first group wrote its records and WRITTEN_AHEAD zeros after them.
    assert!(
        open.len() as u64 > WRITTEN_AHEAD && records < open.len(),
        "{} bytes, records end at {records}",
        open.len()
    );
    assert_eq!(open[records - 1], b'\n');
    drop(store);
    let closed = segment_bytes(dir.path());
    assert_eq!(closed, open[..records]);
    assert_eq!(closed.split(|b| *b == b'\n').count(), 11);
    // A segment file verifies as an export, open or closed.
    std::fs::write(dir.path().join("open.jsonl"), &open).expect("write");
    let summary = crate::audit::verify_file(&dir.path().join("open.jsonl"), None).expect("verify");
    assert_eq!(summary.records, 10);
}

#[test]
fn zeros_left_by_a_crash_are_unused_space_not_a_torn_record() {
    let (dir, mut head, mut next) = closed_log(10, 4);
    // What a crash leaves: the records, then zeros written ahead.
    add_to_segment(dir.path(), &[0u8; 5000]);
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.last_seq(), 10);
    assert!(torn_files(dir.path()).is_empty());
    append(&store, &mut head, &mut next, 5, 5);
    assert_eq!(verify_whole(&store, None).expect("chain"), 15);
    drop(store);
    let closed = segment_bytes(dir.path());
    assert!(!closed.contains(&0), "zeros left among the records");
    assert_eq!(closed.last(), Some(&b'\n'));
}

#[test]
fn a_torn_last_record_is_set_aside_alone_and_the_log_goes_on() {
    let torn = br#"{"v":2,"seq":11,"time":"2026"#;
    // As a crash leaves it: right at the end of the file, or before zeros written ahead.
    for after in [&[][..], &[0u8; 3000][..]] {
        let (dir, mut head, mut next) = closed_log(10, 4);
        add_to_segment(dir.path(), &[torn.as_slice(), after].concat());
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.last_seq(), 10);
        let kept = torn_files(dir.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(std::fs::read(&kept[0]).expect("kept"), torn);
        append(&store, &mut head, &mut next, 5, 5);
        assert_eq!(verify_whole(&store, None).expect("chain"), 15);
    }
}
