//! The audit log with its key in a real SoftHSM token: signed checkpoints, what tampering is
//! found (in the sled store and in exports), refusal floods that cannot fill the disk, and a
//! SIGKILL under load after which every certificate a client received is in a log that verifies.

mod support;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hsm_ca::audit::record::{self, AuditEvent, GENESIS};
use hsm_ca::audit::{
    self, AuditError, AuditLog, AuditOptions, ChainError, CheckpointPolicy, RefusalLimits,
};
use hsm_ca::client::{self, WorkloadKey};
use support::appliance::Appliance;
use support::TestToken;

fn refused(i: u64) -> AuditEvent {
    AuditEvent::Refused {
        caller: Some(format!("spiffe://cluster.local/ns/a/sa/w{i}")),
        code: "PermissionDenied".into(),
        reason: "SAN mismatch".into(),
        folded: 0,
    }
}

fn options(every: u64) -> AuditOptions {
    AuditOptions {
        checkpoints: CheckpointPolicy {
            every,
            interval: Duration::from_secs(3600),
        },
        refusals: RefusalLimits::default(),
        ..AuditOptions::default()
    }
}

fn lines(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    audit::export(dir, &mut out).expect("export");
    String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(str::to_string)
        .collect()
}

fn check(lines: &[String], key: Option<&[u8]>) -> Result<audit::ChainSummary, ChainError> {
    record::verify_chain_with_key(lines.iter().map(|l| l.as_bytes()), key)
}

#[test]
fn checkpoints_are_signed_in_the_device_and_tampering_is_found() {
    let token = TestToken::new();
    let store = token.keystore(1);
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = AuditLog::open_signed(dir.path(), &store, options(10)).expect("open");
        for i in 0..35 {
            log.append_blocking(refused(i)).expect("append");
        }
    }
    let key = audit::recorded_key(dir.path()).expect("meta").expect("key");
    // The audit key was born in the device and cannot leave it.
    let info = store.key_info_blocking(&key.id).expect("in the device");
    assert!(info.is_device_bound(), "{info:?}");
    assert_eq!(info.public_key, key.spki);

    let summary = audit::verify_store(dir.path(), Some(&info.public_key)).expect("verifies");
    assert!(summary.signatures_checked);
    assert_eq!(summary.checkpoints, 4, "every 10 records and at close");
    assert_eq!(summary.records, 39);
    assert_eq!(summary.unsigned_tail, 0);

    let good = lines(dir.path());
    assert_eq!(check(&good, Some(&key.spki)).expect("ok").records, 39);
    let checkpoint_lines: Vec<usize> = good
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"kind\":\"checkpoint\""))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(checkpoint_lines.len(), 4);

    // A checkpoint carrying another checkpoint's signature.
    let sig_of = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        v["event"]["signature"].as_str().expect("sig").to_string()
    };
    let mut forged = good.clone();
    let (a, b) = (checkpoint_lines[0], checkpoint_lines[1]);
    forged[a] = forged[a].replace(&sig_of(&good[a]), &sig_of(&good[b]));
    assert!(matches!(
        check(&forged, Some(&key.spki)),
        Err(ChainError::Checkpoint { seq, .. }) if seq == a as u64 + 1
    ));

    // Someone rewrites the whole log and signs it with a key of their own: the chain is
    // consistent, only the device's key shows it is not ours.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .expect("key");
    let theirs = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .expect("key");
    let mut head = GENESIS;
    let mut rewritten = Vec::new();
    for seq in 1..=5u64 {
        let (bytes, next) = record::seal(seq, "2026-01-01T00:00:00Z".into(), &head, refused(seq));
        rewritten.push(String::from_utf8(bytes).expect("utf8"));
        head = next;
    }
    let head_hex = hex::encode(head);
    let sig = theirs
        .sign(&rng, &record::checkpoint_message(5, &head_hex))
        .expect("sign");
    let (bytes, _) = record::seal(
        6,
        "2026-01-01T00:00:00Z".into(),
        &head,
        AuditEvent::Checkpoint {
            head_seq: 5,
            head: head_hex,
            key_id: key.id.to_string(),
            signature: base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        },
    );
    rewritten.push(String::from_utf8(bytes).expect("utf8"));
    assert!(
        check(&rewritten, None).is_ok(),
        "without the key it looks fine"
    );
    assert!(matches!(
        check(&rewritten, Some(&key.spki)),
        Err(ChainError::Checkpoint { seq: 6, .. })
    ));

    // A cut-off tail no longer ends with a checkpoint.
    let cut = &good[..good.len() - 3];
    assert!(check(cut, Some(&key.spki)).expect("chain ok").unsigned_tail > 0);

    // Edits in the segment files themselves are found.
    support::edit_audit_record(dir.path(), 7, |l| l.replace("SAN mismatch", "all fine"));
    let found = audit::verify_store(dir.path(), Some(&key.spki));
    assert!(
        matches!(
            found,
            Err(AuditError::Chain(ChainError::Link { seq: 8, .. }))
        ),
        "{found:?}"
    );
    // Record 7 lies before the last checkpoint start-up verified, which it does not read
    // again: the log opens, and its full verification finds the edit.
    let log = AuditLog::open_signed(dir.path(), &store, options(10)).expect("opens");
    assert!(matches!(
        log.verify(),
        Err(AuditError::Chain(ChainError::Link { seq: 8, .. }))
    ));
}

#[test]
fn a_log_opened_with_another_token_is_refused() {
    let (first, second) = (TestToken::new(), TestToken::new());
    let dir = tempfile::tempdir().expect("dir");
    {
        let log = AuditLog::open_signed(dir.path(), &first.keystore(1), options(10)).expect("open");
        log.append_blocking(refused(1)).expect("append");
    }
    match AuditLog::open_signed(dir.path(), &second.keystore(1), options(10)) {
        Err(AuditError::Key(reason)) => assert!(reason.contains("not usable"), "{reason}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("opened with a token that does not hold its key"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_is_folded_and_every_refusal_counted() {
    let app = Appliance::start("[audit]\nrefusal_burst = 5\nrefusals_per_minute = 6\n").await;
    let token = app.token_for("default", "web");
    let mut grpc = app.client(None, false).await;
    const FLOOD: u64 = 400;
    for _ in 0..FLOOD {
        // A valid token for default/web asking for another identity.
        let csr =
            client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/default/sa/db")
                .expect("csr");
        let r = client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
            .await;
        assert!(r.is_err());
    }
    let data_dir = app.config.data_dir.clone();
    let Appliance { server, .. } = app;
    server.shutdown().await;
    let records = lines(&data_dir);
    let mut own = 0u64;
    let mut folded = 0u64;
    for line in &records {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        if v["event"]["kind"] == "refused" {
            assert_eq!(
                v["event"]["caller"], "spiffe://cluster.local/ns/default/sa/web",
                "{line}"
            );
            folded += v["event"]["folded"].as_u64().unwrap_or(0);
            if v["event"]["code"] != "folded" {
                own += 1;
            }
        }
    }
    assert!(own <= 10, "{own} refusal records for one caller");
    assert_eq!(own + folded, FLOOD, "every refusal is accounted for once");
}

/// Runs the real binary: the dev appliance under load, killed with SIGKILL, then the audit
/// commands on what it left.
#[test]
fn after_sigkill_under_load_every_received_certificate_is_in_a_verifying_log() {
    let dir = tempfile::tempdir().expect("dir");
    let dev_dir = dir.path().join("dev");
    let dev = dev_dir.to_str().expect("utf8").to_string();
    let config = dev_dir.join("hsm-ca.toml");
    let bin = env!("CARGO_BIN_EXE_hsm-ca");
    let start = || {
        let mut child = std::process::Command::new(bin)
            .current_dir(dir.path())
            .args(["dev", "--dir", &dev, "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dev appliance");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("line");
            if let Some(rest) =
                line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ")
            {
                addr = rest.split_whitespace().next().map(str::to_string);
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        (child, addr.expect("the appliance said where it serves"))
    };
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("hsm-ca");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let (mut child, addr) = start();
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let roots = hsm_ca::authority::read_certificates(&dev_dir.join("root-cert.pem")).expect("root");
    let cfg = hsm_ca::config::Config::load(&config).expect("config");
    let issuer = cfg.clusters[0].issuer.clone();
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev_dir.join("jwks.json")).expect("jwks"))
            .expect("json");
    let kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_string();
    let signer_key = std::fs::read_to_string(dev_dir.join("token-signer-key.pem")).expect("key");

    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (roots, received) = (roots.clone(), received.clone());
            let sa = format!("w{i}");
            let token = hsm_ca::dev::token::mint(
                &signer_key,
                &kid,
                &hsm_ca::dev::token::TokenClaims {
                    issuer: &issuer,
                    audiences: &["istio-ca".to_string()],
                    namespace: "default",
                    service_account: &sa,
                    expires_in: 600,
                    not_before_in: 0,
                },
            )
            .expect("token");
            runtime.spawn(async move {
                let tls = hsm_ca::tls::client_config(&roots, None, false).expect("tls");
                let Ok(mut grpc) = client::connect(addr, "localhost", tls).await else {
                    return;
                };
                let id = format!("spiffe://cluster.local/ns/default/sa/{sa}");
                loop {
                    let csr = client::workload_csr(WorkloadKey::P256, &id).expect("csr");
                    match client::create_certificate(
                        &mut grpc,
                        &csr.csr_pem,
                        600,
                        Some(&token),
                        None,
                        None,
                    )
                    .await
                    {
                        Ok(r) => {
                            let der = hsm_ca::ca::certificates_from_pem(r.cert_chain[0].as_bytes())
                                .expect("pem")
                                .remove(0);
                            let cert = hsm_ca::ca::inspect::parse_certificate(&der).expect("leaf");
                            let serial = hsm_ca::ca::inspect::serial_hex(cert.raw_serial());
                            received.lock().expect("lock").push(serial);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received.lock().expect("lock").len() < 300 {
        assert!(std::time::Instant::now() < deadline, "issuance too slow");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    runtime.block_on(async {
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(30), c).await;
        }
    });
    let received = received.lock().expect("lock").clone();
    assert!(received.len() >= 300);

    // The chain verifies; its tail is not signed yet (the process had no chance to).
    let (ok, out) = cli(&["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(out.contains("does not end with a checkpoint"), "{out}");
    let (ok, out) = cli(&["audit", "verify", "--allow-unsigned-tail"]);
    assert!(ok, "{out}");
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("Head (keep it to detect a cut later): "))
        .expect("head")
        .to_string();
    let export_dir = dir.path().join("export");
    let (ok, out) = cli(&[
        "audit",
        "export",
        "--out",
        export_dir.to_str().expect("utf8"),
    ]);
    assert!(ok, "{out}");
    let exported = std::fs::read_to_string(export_dir.join("audit.jsonl")).expect("export");
    for serial in &received {
        assert!(
            exported.contains(&format!("\"serial\":\"{serial}\"")),
            "serial {serial} was received but is not in the log"
        );
    }

    // The appliance starts again on the same log and signs the tail when it stops cleanly.
    let (mut child, _) = start();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let (ok, out) = cli(&["audit", "verify", "--expect-head", &head]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Records after the last checkpoint: 0."),
        "{out}"
    );

    // Offline: the export with its public key verifies; a cut-off copy does not.
    let key = export_dir.join("audit-public-key.pem");
    let file = export_dir.join("audit.jsonl");
    let (ok, out) = cli(&[
        "audit",
        "verify",
        "--file",
        file.to_str().expect("utf8"),
        "--public-key",
        key.to_str().expect("utf8"),
        "--allow-unsigned-tail",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("signatures verified"), "{out}");
    let text = std::fs::read_to_string(&file).expect("read");
    let all: Vec<&str> = text.lines().collect();
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, all[..all.len() / 2].join("\n")).expect("write");
    let (ok, out) = cli(&[
        "audit",
        "verify",
        "--file",
        short.to_str().expect("utf8"),
        "--public-key",
        key.to_str().expect("utf8"),
        "--allow-unsigned-tail",
        "--expect-head",
        &head,
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("cut off"), "{out}");
}
