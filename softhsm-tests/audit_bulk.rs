//! A measurement, not a check: how long a log with many records takes to open, and the memory
//! of the process that opened it. Ignored by default; run by hand in release.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm_ca::audit::record::{self, AuditEvent, GENESIS};
use hsm_ca::audit::{self, segments, AuditLog, AuditOptions};
use hsm_ca::keystore::SignatureScheme;
use support::TestToken;

fn event(name: &str) -> AuditEvent {
    AuditEvent::Refused {
        caller: Some(format!("spiffe://cluster.local/ns/a/sa/{name}")),
        code: "PermissionDenied".into(),
        reason: "SAN mismatch".into(),
        folded: 0,
    }
}

/// A measurement, not a check (run by hand, in release):
/// `HSMCA_BULK_RECORDS=10000000 cargo test --release --test audit_bulk -- --ignored
/// --nocapture bulk_log_open_time`. Writes that many signed records (a checkpoint every 1000)
/// straight into a log's segment files, opens it once (no marker and no index side files yet:
/// the whole chain is read and every sealed segment indexed), then opens it again in a fresh
/// process (from the verification marker) and prints both times and that process's memory.
#[test]
#[ignore]
fn bulk_log_open_time() {
    const CHILD: &str = "HSMCA_BULK_CHILD_DIR";
    let key_store = |label: &str, pin: &Path| {
        let settings = hsm_ca::keystore::pkcs11::Pkcs11Settings {
            module: support::module(),
            token: hsm_ca::keystore::pkcs11::TokenSelector::Label(label.into()),
            pin: hsm_ca::secret::SecretSource::File(pin.to_path_buf()),
            verify_signatures: true,
        };
        let device = hsm_ca::keystore::pkcs11::Pkcs11Device::open(settings).expect("token");
        hsm_ca::keystore::KeyStore::start(
            std::sync::Arc::new(device),
            hsm_ca::keystore::PoolOptions {
                workers: 1,
                queue_depth: 64,
                call_timeout: Duration::from_secs(10),
            },
        )
        .expect("keystore")
    };
    if let Some(dir) = std::env::var_os(CHILD) {
        let dir = std::path::PathBuf::from(dir);
        let label = std::env::var("HSMCA_BULK_LABEL").expect("label");
        let store = key_store(&label, &dir.join("pin"));
        let started = Instant::now();
        let log = AuditLog::open_signed(&dir, &store, AuditOptions::default()).expect("open");
        let took = started.elapsed();
        assert!(!log.whole_chain_verified());
        for i in 0..1000 {
            log.append_blocking(event(&format!("after{i}")))
                .expect("append");
        }
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let mem: Vec<&str> = status
            .lines()
            .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
            .collect();
        println!(
            "open from the marker (fresh process): {took:?}; after 1000 more appends: {}",
            mem.join(", ").replace('\t', " ")
        );
        return;
    }
    let n: u64 = std::env::var("HSMCA_BULK_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let token = TestToken::new();
    let store = token.keystore(1);
    let work = tempfile::tempdir_in(std::env::var_os("HSMCA_BULK_TMP").unwrap_or(".".into()))
        .expect("dir");
    let dir = work.path();
    std::fs::copy(token.dir.path().join("pin"), dir.join("pin")).expect("pin");
    drop(AuditLog::open_signed(dir, &store, AuditOptions::default()).expect("create"));
    let key = audit::recorded_key(dir).expect("meta").expect("key");
    let started = Instant::now();
    {
        use std::io::Write;
        let (mut head, mut seq) = (GENESIS, 1u64);
        let time = "2026-12-01T00:00:00Z".to_string();
        let mut first = 1u64;
        let mut segment = std::io::BufWriter::new(
            std::fs::File::create(segments::segment_path(dir, first)).expect("segment"),
        );
        let mut put =
            |seq: u64, bytes: Vec<u8>, segment: &mut std::io::BufWriter<std::fs::File>| {
                if seq - first == segments::SEGMENT_RECORDS {
                    segment.flush().expect("flush");
                    first = seq;
                    *segment = std::io::BufWriter::new(
                        std::fs::File::create(segments::segment_path(dir, first)).expect("segment"),
                    );
                }
                segment.write_all(&bytes).expect("write");
                segment.write_all(b"\n").expect("write");
            };
        for i in 0..n {
            let ev = AuditEvent::Issued {
                serial: format!("{:040x}", u128::from(i) * 7919 + 1),
                identity: format!("spiffe://cluster.local/ns/bulk/sa/w{}", i % 1000),
                caller: format!("spiffe://cluster.local/ns/bulk/sa/w{}", i % 1000),
                method: "jwt".into(),
                ca_key: "0a0b0c0d".into(),
                not_before: time.clone(),
                not_after: "2026-12-02T00:00:00Z".into(),
                csr_key_sha256: hex::encode([u8::try_from(i % 251).expect("small"); 32]),
                certificate_sha256: None,
            };
            let (bytes, next) = record::seal(seq, time.clone(), &head, ev);
            put(seq, bytes, &mut segment);
            head = next;
            seq += 1;
            if i % 1000 == 999 || i + 1 == n {
                let head_hex = hex::encode(head);
                let key_id = key.id.to_string();
                let msg =
                    record::checkpoint_record_message(seq, &time, &key_id, seq - 1, &head_hex);
                let sig = store
                    .sign_blocking(&key.id, SignatureScheme::EcdsaSha256, &msg)
                    .expect("sign");
                use base64::Engine;
                let cp = AuditEvent::Checkpoint {
                    head_seq: seq - 1,
                    head: head_hex,
                    key_id,
                    signature: base64::engine::general_purpose::STANDARD.encode(sig),
                };
                let (bytes, next) = record::seal(seq, time.clone(), &head, cp);
                put(seq, bytes, &mut segment);
                head = next;
                seq += 1;
            }
        }
        segment.flush().expect("flush");
        println!("wrote {} records in {:?}", seq - 1, started.elapsed());
    }
    let started = Instant::now();
    let log = AuditLog::open_signed(dir, &store, AuditOptions::default()).expect("open");
    println!(
        "first open (whole chain read and verified, index built): {:?}",
        started.elapsed()
    );
    assert!(log.whole_chain_verified());
    drop(log);
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "bulk_log_open_time", "--ignored", "--nocapture"])
        .env(CHILD, dir)
        .env("HSMCA_BULK_LABEL", &token.label)
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in text
        .lines()
        .filter(|l| l.starts_with("open from the marker"))
    {
        println!("{line}");
    }
    let du = Command::new("du")
        .args(["-sh"])
        .arg(dir.join("audit"))
        .output()
        .expect("du");
    println!("store size: {}", String::from_utf8_lossy(&du.stdout).trim());
}
