//! Raw HSM sign rate vs in-process leaf issuance rate, side by side in one run.
//!
//! `cargo bench --bench issuance` (seconds per measurement: `BENCH_SECS`, default 3).
//! Everything runs against a fresh SoftHSM token in a temporary folder. Issuance is the whole
//! in-process path: parse the CSR PEM and verify its signature, build the leaf, sign it in the
//! HSM (through the keystore queue), encode PEM. Ratios are what to compare across machines.
//! Then the keystore's P-256 signature check alone: ring vs the check with the key's tables.
//! Last, the audit writer alone: 1, 8 and 64 concurrent callers appending issuance records,
//! each answered once its record is durable, checkpoints signed on the same token.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_possible_truncation,
    reason = "a benchmark prints approximate figures"
)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_ca::authority;
use hsm_ca::ca::{self, IssuingCa};
use hsm_ca::config::Config;
use hsm_ca::keystore::pkcs11::{provision, Pkcs11Device, Pkcs11Settings, TokenSelector};
use hsm_ca::keystore::{KeyAlgorithm, KeyRequest, KeyStore, PoolOptions, SignatureScheme};
use hsm_ca::secret::{Secret, SecretSource};
use time::OffsetDateTime;

fn module() -> std::path::PathBuf {
    provision::softhsm_module().expect("SoftHSM is not installed: run ops/install-deps.sh")
}

/// Runs `op` on `threads` threads for `secs`; returns operations per second.
fn rate(threads: usize, secs: f64, op: impl Fn(u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, op) = (&stop, &count, &op);
            s.spawn(move || {
                let mut i = t as u64 * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    op(i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, provision::softhsm_config(&tokens)).expect("conf");
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let pin = Secret::new("bench-pin-1234".into());
    std::fs::write(dir.path().join("pin"), pin.expose()).expect("pin");
    provision::create_token(
        &module(),
        "bench",
        &Secret::new("bench-so-1234".into()),
        &pin,
    )
    .expect("token");

    let open = |workers: usize, verify: bool| -> KeyStore {
        let settings = Pkcs11Settings {
            module: module(),
            token: TokenSelector::Label("bench".into()),
            pin: SecretSource::File(dir.path().join("pin")),
            verify_signatures: verify,
        };
        let device = Pkcs11Device::open(settings).expect("open");
        KeyStore::start(
            Arc::new(device),
            PoolOptions {
                workers,
                queue_depth: 4096,
                call_timeout: Duration::from_secs(10),
            },
        )
        .expect("keystore")
    };

    let cfg = Config::parse(
        Path::new("/tmp/bench.toml"),
        "trust_domain = \"cluster.local\"\n[keystore]\nmodule = \"x\"\ntoken_label = \"bench\"\npin_env = \"X\"\n",
    )
    .expect("config");
    let now = OffsetDateTime::now_utc();
    let setup = open(1, true);
    let (_, root) = authority::create_root(&setup, &cfg, now).expect("root");
    let root_ca = authority::issuing_ca_for(&setup, &root.der).expect("root ca");
    let (_, csr_pem) = authority::new_intermediate_csr(&setup, &cfg, now).expect("csr");
    let inter = authority::sign_intermediate(
        &root_ca,
        &ca::parse_csr(csr_pem.as_bytes()).expect("csr"),
        &cfg,
        now,
    )
    .expect("intermediate");
    let raw_key = setup
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: "bench raw".into(),
        })
        .expect("key");
    drop((root_ca, setup));

    // ztunnel-style CSRs (P-256, empty subject, one URI SAN), made once.
    let csrs: Vec<String> = (0..64)
        .map(|i| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            let id = format!("spiffe://cluster.local/ns/bench/sa/w{i}");
            p.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into().expect("uri"))];
            p.serialize_request(&key).expect("csr").pem().expect("pem")
        })
        .collect();

    println!(
        "hsm-ca issuance bench: SoftHSM, ECDSA P-256 CA key, {secs}s per figure, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<8} {:<7} {:>14} {:>16} {:>8}",
        "workers", "verify", "raw sign/s", "issuance/s", "ratio"
    );
    let mut lines = Vec::new();
    for verify in [true, false] {
        for workers in [1usize, 2] {
            let store = open(workers, verify);
            let callers = workers * 2;
            let sign = rate(callers, secs, |i| {
                store
                    .sign_blocking(&raw_key.id, SignatureScheme::EcdsaSha256, &i.to_be_bytes())
                    .expect("sign");
            });
            let issuing = authority::issuing_ca_for(&store, &inter.der).expect("issuing");
            let issue = rate(callers, secs, |i| {
                issue_one(&issuing, &csrs[(i % 64) as usize])
            });
            println!(
                "{:<8} {:<7} {:>14.0} {:>16.0} {:>8.2}",
                workers,
                if verify { "on" } else { "off" },
                sign,
                issue,
                issue / sign
            );
            lines.push((workers, verify, sign, issue));
        }
    }
    if let (Some(on), Some(off)) = (
        lines.iter().find(|l| l.0 == 2 && l.1),
        lines.iter().find(|l| l.0 == 2 && !l.1),
    ) {
        println!(
            "signature self-check cost at 2 workers: issuance with it / without it = {:.2}",
            on.3 / off.3
        );
    }
    signature_check(secs);
    audit_writer(dir.path(), &open(2, true), secs);
}

/// The keystore's check of a P-256 signature before it leaves: ring's verification vs the
/// check with the key's tables, one thread each, in turn.
fn signature_check(secs: f64) {
    use hsm_ca::keystore::check::KeyCheck;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let signed: Vec<(Vec<u8>, Vec<u8>)> = (0..256u32)
        .map(|i| {
            let message = format!("tbs certificate {i}").into_bytes();
            let signature = key.sign(&rng, &message).expect("sign").as_ref().to_vec();
            (message, signature)
        })
        .collect();
    let public: Arc<[u8]> = Arc::from(key.public_key().as_ref());
    let check = KeyCheck::for_key(public.clone());
    let built = Instant::now();
    assert!(check.build_tables_now(), "tables");
    let built = built.elapsed();
    let scheme = SignatureScheme::EcdsaSha256;
    let with_ring = rate(1, secs, |i| {
        let (m, s) = &signed[(i % 256) as usize];
        assert!(hsm_ca::keystore::signature_verifies(scheme, &public, m, s));
    });
    let with_tables = rate(1, secs, |i| {
        let (m, s) = &signed[(i % 256) as usize];
        assert!(check.verifies(scheme, m, s));
    });
    println!(
        "\nsignature check, P-256, 1 thread: ring {:.1} us, with the key's tables {:.1} us \
         (ratio {:.2}; tables built in {} ms)",
        1e6 / with_ring,
        1e6 / with_tables,
        with_ring / with_tables,
        built.as_millis()
    );
}

/// The audit log's writer alone: `callers` tasks each appending issuance records one after
/// another (as concurrent requests do), for 1, 8 and 64 callers. Prints records/s and the
/// latency of one durable append.
fn audit_writer(dir: &Path, store: &KeyStore, secs: f64) {
    use hsm_ca::audit::{AuditEvent, AuditLog, AuditOptions};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "\naudit writer alone (durable appends, signed checkpoints every 1000 records)\n{:<8} {:>12} {:>10} {:>10}",
        "callers", "records/s", "p50 ms", "p99 ms"
    );
    for callers in [1usize, 8, 64] {
        let log_dir = dir.join(format!("audit-{callers}"));
        let log = Arc::new(
            AuditLog::open_signed(&log_dir, store, AuditOptions::default()).expect("audit log"),
        );
        let start = Instant::now();
        let stop = start + Duration::from_secs_f64(secs);
        let mut latencies: Vec<Duration> = runtime.block_on(async {
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = 0u64;
                        while Instant::now() < stop {
                            let t = Instant::now();
                            log.append(AuditEvent::Issued {
                                serial: format!("{c:04x}{i:016x}"),
                                identity: "spiffe://cluster.local/ns/bench/sa/load".into(),
                                caller: "spiffe://cluster.local/ns/bench/sa/load".into(),
                                method: "jwt".into(),
                                ca_key: "bench".into(),
                                not_before: "2026-01-01T00:00:00Z".into(),
                                not_after: "2026-01-02T00:00:00Z".into(),
                                csr_key_sha256: "00".repeat(32),
                                certificate_sha256: None,
                            })
                            .await
                            .expect("append");
                            lat.push(t.elapsed());
                            i += 1;
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("task"));
            }
            all
        });
        let elapsed = start.elapsed().as_secs_f64();
        latencies.sort();
        let at = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "{:<8} {:>12.0} {:>10.3} {:>10.3}",
            callers,
            latencies.len() as f64 / elapsed,
            at(0.50),
            at(0.99)
        );
    }
}

fn issue_one(issuing: &IssuingCa, csr_pem: &str) {
    let csr = ca::parse_csr(csr_pem.as_bytes()).expect("parse");
    let id = csr.uri_sans[0].clone();
    let leaf = issuing
        .issue_leaf(
            &csr.spki,
            &id,
            Duration::from_secs(86400),
            Duration::from_secs(120),
            OffsetDateTime::now_utc(),
        )
        .expect("issue");
    std::hint::black_box(leaf.pem);
}
