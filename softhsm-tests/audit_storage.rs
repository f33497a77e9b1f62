//! The audit log's storage with its key in a real SoftHSM token: a real full disk (a small
//! tmpfs in a private mount namespace) that the writer recovers from without a restart,
//! start-up verification from the last verified checkpoint, and checkpoints whose signature
//! covers their own record (the last record of an export or a transcript cannot be edited).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm_ca::audit::record::{self, AuditEvent, AuditRecord, GENESIS};
use hsm_ca::audit::{
    self, AuditError, AuditLog, AuditOptions, ChainError, CheckpointPolicy, HostLog, RefusalLimits,
};
use hsm_ca::keystore::{KeyAlgorithm, KeyRequest, SignatureScheme};
use support::TestToken;

fn options(every: u64) -> AuditOptions {
    AuditOptions {
        checkpoints: CheckpointPolicy {
            every,
            interval: Duration::from_secs(3600),
        },
        refusals: RefusalLimits {
            burst: 3,
            per_minute: 1,
            ..RefusalLimits::default()
        },
        ..AuditOptions::default()
    }
}

fn event(name: &str) -> AuditEvent {
    AuditEvent::Refused {
        caller: Some(format!("spiffe://cluster.local/ns/a/sa/{name}")),
        code: "PermissionDenied".into(),
        reason: "SAN mismatch".into(),
        folded: 0,
    }
}

fn records(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    audit::export(dir, &mut out).expect("export");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn parsed(line: &str) -> AuditRecord {
    serde_json::from_str(line).expect("record")
}

/// Runs the test named `name` again in a private mount namespace (where it may mount a
/// tmpfs); returns true when the caller is already in it and should do the work.
fn in_mount_namespace(name: &str) -> bool {
    const INSIDE: &str = "HSMCA_TEST_MOUNT_NAMESPACE";
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let out = Command::new("unshare")
        .args(["--map-root-user", "--mount", "--propagation", "private"])
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    false
}

/// Fills the file system of `path` until it is full; returns the file holding the space.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 16 << 10];
    loop {
        if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
    path
}

#[test]
fn a_full_disk_stops_the_log_and_the_writer_recovers_once_space_is_freed() {
    if !in_mount_namespace("a_full_disk_stops_the_log_and_the_writer_recovers_once_space_is_freed")
    {
        return;
    }
    let outer = tempfile::tempdir().expect("dir");
    let disk = outer.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let dir = disk.join("data");
    let token = TestToken::new();
    let store = token.keystore(1);
    let log = AuditLog::open_signed(&dir, &store, options(20)).expect("open");
    let mut written = Vec::new();
    for i in 0..30 {
        let name = format!("before{i}");
        written.push((log.append_blocking(event(&name)).expect("append"), name));
    }
    assert!(log.health().is_ok());

    // The disk fills up: appends fail, and the log says why (once the zeros the segment was
    // written ahead with are used up: about 1 MiB, a few thousand of these records).
    let filler = fill(&disk);
    let mut failed = Vec::new();
    for i in 0..20_000 {
        let name = format!("full{i}");
        match log.append_blocking(event(&name)) {
            Ok(seq) => written.push((seq, name)),
            Err(e) => {
                failed.push((name, e.to_string()));
                if failed.len() >= 5 {
                    break;
                }
            }
        }
    }
    assert_eq!(failed.len(), 5, "appends never failed on a full disk");
    let health = log.health().expect_err("the log reports the storage error");
    assert!(health.contains("cannot be written"), "{health}");
    // Refusals meanwhile are counted, not lost.
    const REFUSALS: u64 = 40;
    for _ in 0..REFUSALS {
        log.refused(
            Some("spiffe://cluster.local/ns/x/sa/intruder"),
            "PermissionDenied",
            "not allowed",
        );
    }
    std::thread::sleep(audit::RETRY_FIRST * 3);
    assert!(log.health().is_err(), "still full");
    assert!(log.append_blocking(event("still-full")).is_err());

    // Space is freed: the writer takes up the chain again without a restart.
    std::fs::remove_file(&filler).expect("free");
    let started = Instant::now();
    let seq = loop {
        match log.append_blocking(event("after")) {
            Ok(seq) => break seq,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no recovery after 60 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    written.push((seq, "after".into()));
    assert!(log.health().is_ok(), "{:?}", log.health());
    for i in 0..30 {
        let name = format!("later{i}");
        written.push((log.append_blocking(event(&name)).expect("append"), name));
    }
    let key = log.key().expect("signed").spki.clone();
    drop(log);

    // The chain verifies, every acknowledged record is where its caller was told, none twice,
    // and every refusal is in a record or a folded count.
    let summary = audit::verify_store(&dir, Some(&key)).expect("verifies");
    assert_eq!(summary.unsigned_tail, 0);
    let lines = records(&dir);
    let all: Vec<AuditRecord> = lines.iter().map(|l| parsed(l)).collect();
    for (seq, name) in &written {
        let r = &all[usize::try_from(*seq).expect("seq") - 1];
        assert_eq!(r.event, event(name), "record {seq}");
    }
    let mut callers: Vec<String> = all
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::Refused {
                caller: Some(c),
                code,
                ..
            } if code == "PermissionDenied" => Some(c.clone()),
            _ => None,
        })
        .collect();
    let n = callers.len();
    callers.sort();
    callers.dedup();
    assert_eq!(callers.len(), n, "a record was written twice");
    let counted: u64 = all
        .iter()
        .map(|r| match &r.event {
            AuditEvent::Refused {
                caller: Some(c),
                code,
                folded,
                ..
            } if c.ends_with("/intruder") => {
                if code == "folded" {
                    *folded
                } else {
                    folded + 1
                }
            }
            _ => 0,
        })
        .sum();
    assert_eq!(counted, REFUSALS, "refusals made while the disk was full");
    let resumed: Vec<u64> = all
        .iter()
        .filter_map(|r| match r.event {
            AuditEvent::StorageResumed { errors, .. } => Some(errors),
            _ => None,
        })
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert!(resumed[0] >= 6, "{resumed:?}");
    let unmounted = Command::new("umount").arg(&disk).status().expect("umount");
    assert!(unmounted.success());
}

/// Replaces the stored bytes of record `seq` in the log under `dir`.
fn edit_record(dir: &Path, seq: u64, from: &str, to: &str) {
    support::edit_audit_record(dir, seq, |text| {
        assert!(text.contains(from), "{text}");
        text.replace(from, to)
    });
}

#[test]
fn start_up_verifies_from_the_last_verified_checkpoint_and_audit_verify_reads_everything() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(10)).expect("open");
        assert!(log.whole_chain_verified(), "a new log");
        for i in 0..35 {
            log.append_blocking(event(&format!("w{i}")))
                .expect("append");
        }
    }
    // Record 3 was verified (and covered by checkpoints) before: start-up does not read it
    // again, so an edit there does not stop the appliance; full verification finds it.
    edit_record(dir.path(), 3, "SAN mismatch", "all fine");
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(10)).expect("opens");
        assert!(!log.whole_chain_verified());
        log.append_blocking(event("next")).expect("append");
        assert!(matches!(
            log.verify(),
            Err(AuditError::Chain(ChainError::Link { seq: 4, .. }))
        ));
    }
    let key = audit::recorded_key(dir.path()).expect("meta").expect("key");
    assert!(matches!(
        audit::verify_store(dir.path(), Some(&key.spki)),
        Err(AuditError::Chain(ChainError::Link { seq: 4, .. }))
    ));
    // A marker that no longer matches its record means the whole chain is verified: the
    // edit is found and the log is refused.
    support::edit_audit_meta(dir.path(), |meta| {
        meta["marker"]["hash"] = hex::encode([7u8; 32]).into();
    });
    assert!(matches!(
        AuditLog::open_signed(dir.path(), &store, options(10)),
        Err(AuditError::Chain(ChainError::Link { seq: 4, .. }))
    ));
}

#[test]
fn a_log_with_a_good_marker_opens_without_reading_old_records_and_a_new_one_reads_all() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(5)).expect("open");
        for i in 0..12 {
            log.append_blocking(event(&format!("w{i}")))
                .expect("append");
        }
    }
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(5)).expect("reopen");
        assert!(!log.whole_chain_verified());
        assert!(log.verify().expect("intact").records >= 12);
    }
    // Without a marker (a log written by an older build) the whole chain is read.
    support::edit_audit_meta(dir.path(), |meta| {
        meta.as_object_mut().expect("object").remove("marker");
    });
    let log = AuditLog::open_signed(dir.path(), &store, options(5)).expect("reopen");
    assert!(log.whole_chain_verified());
}

/// Rewrites the field `field` of the event or record in the last line.
fn edit_last(lines: &[String], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<String> {
    let mut out = lines.to_vec();
    let last = out.last_mut().expect("a line");
    let mut v: serde_json::Value = serde_json::from_str(last).expect("json");
    edit(&mut v);
    *last = serde_json::to_string(&v).expect("json");
    out
}

fn verify(lines: &[String], key: &[u8]) -> Result<audit::ChainSummary, ChainError> {
    record::verify_chain_with_key(lines.iter().map(|l| l.as_bytes()), Some(key))
}

/// A change to one record (as JSON).
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

fn assert_last_checkpoint_edits_are_found(lines: &[String], key: &[u8]) {
    assert!(lines
        .last()
        .expect("line")
        .contains("\"kind\":\"checkpoint\""));
    let n = u64::try_from(lines.len()).expect("len");
    verify(lines, key).expect("intact");
    let edits: [(&str, Edit); 3] = [
        (
            "time",
            Box::new(|v| v["time"] = "2031-01-01T00:00:00Z".into()),
        ),
        (
            "key_id",
            Box::new(|v| v["event"]["key_id"] = "00112233445566778899".into()),
        ),
        ("version", Box::new(|v| v["v"] = 1.into())),
    ];
    for (what, edit) in edits {
        let edited = edit_last(lines, edit);
        assert!(
            matches!(verify(&edited, key), Err(ChainError::Checkpoint { seq, .. }) if seq == n),
            "an edited {what} of the last checkpoint verified"
        );
    }
}

#[test]
fn editing_the_last_checkpoint_of_an_export_or_a_transcript_is_found() {
    let token = TestToken::new();
    let store = token.keystore(1);
    // An appliance's export.
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(10)).expect("open");
        for i in 0..15 {
            log.append_blocking(event(&format!("w{i}")))
                .expect("append");
        }
    }
    let key = audit::recorded_key(dir.path()).expect("meta").expect("key");
    assert_last_checkpoint_edits_are_found(&records(dir.path()), &key.spki);

    // A ceremony host's transcript, its checkpoint signed by a root key in the device.
    let root = store
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: "root".into(),
        })
        .expect("root key");
    let host = tempfile::tempdir().expect("dir");
    let mut log = HostLog::open(host.path()).expect("host log");
    for i in 0..4 {
        log.append(event(&format!("officer{i}"))).expect("append");
    }
    log.checkpoint(&store, &root.id, SignatureScheme::EcdsaSha256)
        .expect("checkpoint");
    let mut out = Vec::new();
    log.export(&mut out).expect("export");
    let lines: Vec<String> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect();
    assert_last_checkpoint_edits_are_found(&lines, &root.public_key);
}

#[test]
fn version_1_checkpoints_written_by_older_builds_still_verify() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .expect("key");
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .expect("key");
    use ring::signature::KeyPair;
    let spki = spki_of(pair.public_key().as_ref());
    // Version 1 records, as an older build wrote them.
    let mut head = GENESIS;
    let mut lines = Vec::new();
    let v1 = |seq: u64, head: &mut [u8; 32], event: AuditEvent| {
        let rec = AuditRecord {
            v: 1,
            seq,
            time: "2026-01-01T00:00:00Z".into(),
            prev: hex::encode(*head),
            event,
        };
        let bytes = serde_json::to_vec(&rec).expect("json");
        *head = record::link_hash(&bytes);
        String::from_utf8(bytes).expect("utf8")
    };
    for seq in 1..=3 {
        lines.push(v1(seq, &mut head, event(&format!("old{seq}"))));
    }
    let sig = pair
        .sign(&rng, &record::checkpoint_message(3, &hex::encode(head)))
        .expect("sign");
    use base64::Engine;
    let cp = AuditEvent::Checkpoint {
        head_seq: 3,
        head: hex::encode(head),
        key_id: "0a0b".into(),
        signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
    };
    lines.push(v1(4, &mut head, cp));
    let summary = verify(&lines, &spki).expect("a version 1 log verifies");
    assert_eq!((summary.records, summary.checkpoints), (4, 1));
    // New records continue the chain in version 2.
    let (bytes, _) = record::seal(5, "2026-01-02T00:00:00Z".into(), &head, event("new"));
    assert_eq!(parsed(std::str::from_utf8(&bytes).expect("utf8")).v, 2);
    lines.push(String::from_utf8(bytes).expect("utf8"));
    assert_eq!(verify(&lines, &spki).expect("mixed").records, 5);
}

/// DER SubjectPublicKeyInfo of an uncompressed P-256 point.
fn spki_of(point: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    [PREFIX.as_slice(), point].concat()
}

#[test]
fn audit_verify_on_a_ceremony_host_checks_the_hosts_log() {
    let env = support::CliEnv::new("");
    let config = std::fs::read_to_string(env.path("hsm-ca.toml")).expect("config");
    std::fs::write(
        env.path("hsm-ca.toml"),
        config.replace("pin_file = \"pin\"", "pin_shares = true"),
    )
    .expect("config");
    std::fs::write(env.path("so-pin"), "so-secret-1").expect("so pin");
    let out = support::offline(
        env.dir.path(),
        &env.path("hsm-ca.toml"),
        &[
            "ceremony",
            "init-quorum",
            "--officers",
            "3",
            "--threshold",
            "2",
            "--so-pin-file",
            "so-pin",
            "--out-dir",
            "media/q",
            "--yes",
        ],
        None,
    );
    assert!(out.ok, "{out:?}");
    let out = env.run(&["audit", "verify", "--allow-unsigned-tail"]);
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("the ceremony host's log"), "{out:?}");
    assert!(!out.stdout.contains(": 0 records"), "{out:?}");
    assert!(out.stdout.contains("signatures NOT checked"), "{out:?}");
    // Nothing was created for an appliance log that is not there.
    assert!(!env.path("data/audit").exists());
}
