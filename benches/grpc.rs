//! The running appliance under load, beside the raw HSM sign rate and a software CA, in one run.
//!
//! `ops/bench.sh` (installs golang-cfssl and nghttp2-client) or `cargo bench --bench grpc`.
//! Settings: `BENCH_SECS` (per round, default 10) and `BENCH_ROUNDS` (default 2): cfssl's two
//! loads and the appliance's four run in turn, round after round, and each figure sums its
//! rounds. `ops/bench.sh --profile` builds with the
//! `profile` feature and writes where each appliance spent its CPU (`BENCH_PROFILE`, and the
//! audit-off one beside it with `-audit-off` in the name).
//!
//! 1. Sets up two `hsm-ca dev` appliances (release build) on fresh SoftHSM tokens: one as
//!    shipped, one with the audit log off (to show what durability costs). Measures the
//!    start to serving on the existing folder and the idle resident memory.
//! 2. Raw sign rate: ECDSA P-256 signatures through the keystore, 2 sessions, on that token.
//! 3. Load from h2load (C, so the generator costs little of the 2 cores): gRPC over TLS with a
//!    ztunnel-style P-256 CSR and a service-account token, at 8 connections × 1 stream (as 8
//!    istio-agents) and 8 × 8 (64 in flight, saturation). Issued/s counts only answers the
//!    appliance's metrics count as issued; p50/p99 from h2load's per-request log; CPU per
//!    request from the appliance's /proc accounting.
//! 4. cfssl: `cfssl serve` over TLS with a software P-256 CA key, its HTTP sign API, the same
//!    CSR, at 8 and 32 connections; its best rate is the one compared.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "a benchmark prints approximate figures"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::config::Config;
use hsm_ca::keystore::SignatureScheme;
use prost::Message;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dev appliance serving in its own process.
struct Appliance {
    child: Kill,
    dir: PathBuf,
    grpc: SocketAddr,
    admin: SocketAddr,
    /// From spawning `hsm-ca dev` on the set-up folder to its banner.
    start: Duration,
}

impl Appliance {
    /// Sets up a dev folder (`audit` off when false) and serves it.
    fn start(dir: &Path, audit: bool, profile: Option<&Path>) -> Appliance {
        let setup = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
            .args(["dev", "--setup-only", "--dir"])
            .arg(dir)
            .output()
            .expect("hsm-ca dev --setup-only");
        assert!(setup.status.success(), "{setup:?}");
        if !audit {
            let path = dir.join("hsm-ca.toml");
            let mut text = std::fs::read_to_string(&path).expect("config");
            text.push_str("\n[audit]\nenabled = false\n");
            std::fs::write(&path, text).expect("config");
        }
        let began = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_hsm-ca"));
        command
            .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(file) = profile {
            command.env("HSM_CA_PROFILE", file);
        }
        let mut child = command.spawn().expect("hsm-ca dev");
        let stdout = child.stdout.take().expect("stdout");
        let guard = Kill(child);
        let mut lines = BufReader::new(stdout).lines();
        let mut grpc = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) =
                line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ")
            {
                grpc = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("Admin API on https://") {
                let admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                let start = began.elapsed();
                // Keep reading so the appliance never writes into a closed pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Appliance {
                    child: guard,
                    dir: dir.to_path_buf(),
                    grpc: grpc.expect("gRPC address"),
                    admin: admin.expect("admin address"),
                    start,
                };
            }
        }
        panic!("hsm-ca dev did not start");
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The counters a round compares: certificates issued (`hsmca_issuances_total` with
    /// `result="ok"`), audit records and audit disk syncs, from one read of the admin API's
    /// /metrics.
    fn counters(&self) -> Counters {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.dir.join("root-cert.pem"))
            .arg("--cert")
            .arg(self.dir.join("admin-cert.pem"))
            .arg("--key")
            .arg(self.dir.join("admin-key.pem"))
            .arg(format!("https://localhost:{}/metrics", self.admin.port()))
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", self.admin.port()),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        // The first sample whose line starts with `name` and contains `label`.
        let sample = |name: &str, label: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(label))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        Counters {
            issued: sample("hsmca_issuances_total", "result=\"ok\""),
            records: sample("hsmca_audit_records ", ""),
            syncs: sample("hsmca_audit_syncs_total", ""),
        }
    }

    /// Stops with SIGTERM (so a profile is written), then waits.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the appliance's /metrics counted so far.
struct Counters {
    issued: u64,
    records: u64,
    syncs: u64,
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // getconf CLK_TCK is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// User + system CPU seconds of each kind of thread of a process (by name, numbers dropped).
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head
            .split_once('(')
            .map_or("", |(_, n)| n)
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *by_name.entry(name.to_string()).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    by_name
}

/// Resident memory of a process in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One measured load.
struct Load {
    name: String,
    /// Successful answers per second.
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server CPU per successful answer.
    cpu_us: f64,
    failed: u64,
    /// Server CPU per successful answer by kind of thread.
    threads: Vec<(String, f64)>,
    /// Audit records per disk sync (0: no audit log).
    per_sync: f64,
}

/// What one h2load run saw.
struct Run {
    /// Answers h2load counted as successful.
    succeeded: u64,
    /// Each request's time, in microseconds.
    micros: Vec<u64>,
    elapsed: f64,
}

/// The `p` quantile of sorted microseconds, in milliseconds.
fn quantile_ms(sorted: &[u64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(0.0, |&u| u as f64 / 1e3)
}

/// Runs h2load for `secs` against `url` and reads its per-request log.
fn h2load(
    url: &str,
    connections: usize,
    streams: usize,
    secs: f64,
    extra: &[&str],
    work: &Path,
) -> Run {
    let log = work.join(format!("h2load-{connections}x{streams}.log"));
    let _ = std::fs::remove_file(&log);
    let began = Instant::now();
    let out = Command::new("h2load")
        .args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-D", &format!("{}", secs.ceil() as u64)])
        .arg(format!("--log-file={}", log.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let elapsed = began.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| w.starts_with("succeeded"))?;
            words.get(at - 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let micros = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    Run {
        succeeded,
        micros,
        elapsed,
    }
}

/// One load on the appliance, summed over its rounds.
#[derive(Default)]
struct Tally {
    issued: u64,
    answered: u64,
    micros: Vec<u64>,
    elapsed: f64,
    cpu: f64,
    threads: std::collections::BTreeMap<String, f64>,
    records: u64,
    syncs: u64,
}

impl Tally {
    /// One round of h2load against the appliance; issued counts as the appliance counts them.
    fn round(
        &mut self,
        app: &Appliance,
        (connections, streams): (usize, usize),
        secs: f64,
        (body, token): (&Path, &str),
        work: &Path,
    ) {
        let url = format!(
            "https://127.0.0.1:{}/istio.v1.auth.IstioCertificateService/CreateCertificate",
            app.grpc.port()
        );
        let (before, cpu_before) = (app.counters(), cpu_seconds(app.pid()));
        let threads_before = thread_cpu(app.pid());
        let auth = format!("authorization: Bearer {token}");
        let extra = [
            "-d",
            body.to_str().expect("path"),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            &auth,
        ];
        let mut run = h2load(&url, connections, streams, secs, &extra, work);
        self.cpu += cpu_seconds(app.pid()) - cpu_before;
        for (name, spent) in thread_cpu(app.pid()) {
            *self.threads.entry(name.clone()).or_insert(0.0) +=
                spent - threads_before.get(&name).copied().unwrap_or(0.0);
        }
        let after = app.counters();
        self.issued += after.issued - before.issued;
        self.records += after.records - before.records;
        self.syncs += after.syncs - before.syncs;
        self.answered += run.succeeded;
        self.elapsed += run.elapsed;
        self.micros.append(&mut run.micros);
    }

    /// One round of h2load against cfssl's sign API (every success is a certificate).
    fn round_cfssl(
        &mut self,
        pid: u32,
        url: &str,
        connections: usize,
        secs: f64,
        json: &Path,
        work: &Path,
    ) {
        let cpu = cpu_seconds(pid);
        let extra = [
            "--h1",
            "-d",
            json.to_str().expect("path"),
            "-H",
            "content-type: application/json",
        ];
        let mut run = h2load(url, connections, 1, secs, &extra, work);
        self.cpu += cpu_seconds(pid) - cpu;
        self.issued += run.succeeded;
        self.answered += run.succeeded;
        self.elapsed += run.elapsed;
        self.micros.append(&mut run.micros);
    }

    fn load(mut self, name: &str) -> Load {
        self.micros.sort_unstable();
        let issued = self.issued;
        let per_request = |seconds: f64| seconds * 1e6 / issued.max(1) as f64;
        Load {
            name: name.into(),
            rate: issued as f64 / self.elapsed.max(1e-9),
            p50_ms: quantile_ms(&self.micros, 0.50),
            p99_ms: quantile_ms(&self.micros, 0.99),
            cpu_us: per_request(self.cpu),
            failed: self.answered.saturating_sub(issued),
            threads: self
                .threads
                .iter()
                .map(|(name, s)| (name.clone(), per_request(*s)))
                .filter(|(_, us)| *us >= 1.0)
                .collect(),
            per_sync: self.records as f64 / self.syncs.max(1) as f64,
        }
    }
}

fn start_cfssl(dir: &Path) -> Option<(Kill, u16)> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if Command::new("cfssl").arg("version").output().is_err() {
        eprintln!("cfssl is not installed (apt-get install golang-cfssl); skipping the comparison");
        return None;
    }
    assert!(run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca-key.pem"
    ]));
    assert!(run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca-key.pem",
        "-subj",
        "/CN=cfssl bench CA",
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.pem"
    ]));
    assert!(run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "tls-key.pem",
        "-subj",
        "/CN=localhost",
        "-out",
        "tls.csr"
    ]));
    std::fs::write(dir.join("tls.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n").expect("ext");
    assert!(run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "tls.ext",
        "-out",
        "tls.pem"
    ]));
    std::fs::write(
        dir.join("config.json"),
        r#"{"signing":{"default":{"usages":["digital signature","key encipherment","server auth","client auth"],"expiry":"24h"}}}"#,
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new("cfssl")
        .current_dir(dir)
        .args([
            "serve",
            "-address=127.0.0.1",
            &format!("-port={port}"),
            "-ca=ca.pem",
            "-ca-key=ca-key.pem",
            "-config=config.json",
            "-tls-cert=tls.pem",
            "-tls-key=tls-key.pem",
            "-loglevel=5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cfssl serve");
    let guard = Kill(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((guard, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cfssl serve did not start");
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    let profile = std::env::var_os("BENCH_PROFILE").map(PathBuf::from);
    let profile_off = profile.as_ref().map(|p| {
        let stem = p
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        p.with_file_name(format!("{stem}-audit-off.txt"))
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let on = Appliance::start(&work.join("audit-on"), true, profile.as_deref());
    let off = Appliance::start(&work.join("audit-off"), false, profile_off.as_deref());
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_mb(on.pid());
    let config = Config::load(&on.dir.join("hsm-ca.toml")).expect("dev config");

    // Raw HSM sign rate on the same token, two sessions, before the load.
    let raw = {
        let mut ks = config.keystore.clone();
        ks.pool.workers = 2;
        let store = hsm_ca::keystore::open(&ks).expect("keystore");
        // Sign with the appliance's own intermediate key: creating objects from a second process
        // while the appliance runs is not something SoftHSM's file store handles well.
        let key = store
            .list_blocking()
            .expect("keys")
            .into_iter()
            .find(|k| k.label.starts_with("hsm-ca intermediate"))
            .expect("intermediate key");
        let stop = Instant::now() + Duration::from_secs_f64(secs);
        let count = std::sync::atomic::AtomicU64::new(0);
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (store, key, count) = (&store, &key, &count);
                s.spawn(move || {
                    let mut i = t << 40;
                    while Instant::now() < stop {
                        store
                            .sign_blocking(&key.id, SignatureScheme::EcdsaSha256, &i.to_be_bytes())
                            .expect("sign");
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        i += 1;
                    }
                });
            }
        });
        count.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    };

    // One IstioCertificateRequest as a gRPC message: a fresh ztunnel-style CSR, one hour.
    let identity = "spiffe://cluster.local/ns/bench/sa/load";
    let csr = client::workload_csr(WorkloadKey::P256, identity).expect("csr");
    let message = hsm_ca::issuance::pb::IstioCertificateRequest {
        csr: csr.csr_pem.clone(),
        validity_duration: 3600,
        metadata: None,
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let body = work.join("request.bin");
    std::fs::write(&body, framed).expect("body");
    let token = |app: &Appliance| {
        let signer_key =
            std::fs::read_to_string(app.dir.join("token-signer-key.pem")).expect("signer");
        let config = Config::load(&app.dir.join("hsm-ca.toml")).expect("config");
        let cluster = &config.clusters[0];
        hsm_ca::dev::token::mint(
            &signer_key,
            hsm_ca::cli::DEV_TOKEN_KID,
            &hsm_ca::dev::token::TokenClaims {
                issuer: &cluster.issuer,
                audiences: &cluster.audiences,
                namespace: "bench",
                service_account: "load",
                expires_in: 3600,
                not_before_in: 0,
            },
        )
        .expect("token")
    };
    let (token_on, token_off) = (token(&on), token(&off));

    let cfssl_dir = work.join("cfssl");
    std::fs::create_dir_all(&cfssl_dir).expect("dir");
    let cfssl = start_cfssl(&cfssl_dir);
    let cfssl_json = cfssl_dir.join("request.json");
    std::fs::write(
        &cfssl_json,
        serde_json::to_vec(&serde_json::json!({ "certificate_request": csr.csr_pem }))
            .expect("json"),
    )
    .expect("body");
    let cfssl_shapes: &[usize] = if cfssl.is_some() { &[8, 32] } else { &[] };
    let sets = [
        ("hsm-ca 8 conns x 1, audit on", &on, &token_on, (8, 1)),
        ("hsm-ca 8 conns x 1, audit off", &off, &token_off, (8, 1)),
        (
            "hsm-ca 8 conns x 8 (64 in flight), audit on",
            &on,
            &token_on,
            (8, 8),
        ),
        (
            "hsm-ca 8 conns x 8 (64 in flight), audit off",
            &off,
            &token_off,
            (8, 8),
        ),
    ];
    // Rounds in turn, so that a change in the machine's speed meanwhile touches every load alike.
    let mut cfssl_tallies: Vec<Tally> = cfssl_shapes.iter().map(|_| Tally::default()).collect();
    let mut tallies: Vec<Tally> = sets.iter().map(|_| Tally::default()).collect();
    for _ in 0..rounds {
        if let Some((guard, port)) = &cfssl {
            let url = format!("https://127.0.0.1:{port}/api/v1/cfssl/sign");
            for (connections, tally) in cfssl_shapes.iter().zip(cfssl_tallies.iter_mut()) {
                tally.round_cfssl(guard.0.id(), &url, *connections, secs, &cfssl_json, work);
            }
        }
        for ((_, app, token, shape), tally) in sets.iter().zip(tallies.iter_mut()) {
            tally.round(app, *shape, secs, (&body, token), work);
        }
    }
    drop(cfssl);
    let mut loads: Vec<Load> = cfssl_shapes
        .iter()
        .zip(cfssl_tallies)
        .map(|(connections, tally)| {
            tally.load(&format!("cfssl sign API, {connections} connections"))
        })
        .collect();
    let cfssl_best = loads.iter().map(|l| l.rate).fold(0.0, f64::max);
    for ((name, ..), tally) in sets.iter().zip(tallies) {
        loads.push(tally.load(name));
    }
    let loaded_rss = rss_mb(on.pid());
    let start = on.start;
    on.stop();
    off.stop();

    println!(
        "hsm-ca gRPC bench: SoftHSM, ECDSA P-256 CA, ztunnel-style P-256 CSR, h2load over TLS, {rounds} x {secs}s per figure, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<48} {:>9} {:>8} {:>8} {:>9} {:>7}",
        "", "per s", "p50 ms", "p99 ms", "CPU us", "failed"
    );
    println!("{:<48} {:>9.0}", "raw HSM sign rate (2 sessions)", raw);
    for l in &loads {
        println!(
            "{:<48} {:>9.0} {:>8.2} {:>8.2} {:>9.0} {:>7}",
            l.name, l.rate, l.p50_ms, l.p99_ms, l.cpu_us, l.failed
        );
    }
    println!();
    println!("where the appliance's CPU went, us per request by thread (and audit records per disk sync):");
    for l in loads.iter().filter(|l| !l.threads.is_empty()) {
        let threads: Vec<String> = l
            .threads
            .iter()
            .map(|(name, us)| format!("{name} {us:.0}"))
            .collect();
        let per_sync = if l.per_sync > 0.0 {
            format!("; {:.1} records/sync", l.per_sync)
        } else {
            String::new()
        };
        println!("  {}: {}{per_sync}", l.name, threads.join(", "));
    }
    let find = |name: &str| loads.iter().find(|l| l.name == name);
    let rate = |name: &str| find(name).map_or(0.0, |l| l.rate);
    let saturated = rate("hsm-ca 8 conns x 8 (64 in flight), audit on");
    let single_on = rate("hsm-ca 8 conns x 1, audit on");
    let single_off = rate("hsm-ca 8 conns x 1, audit off");
    let p99 = find("hsm-ca 8 conns x 1, audit on").map_or(0.0, |l| l.p99_ms);
    let check = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!();
    let row = |what: &str, value: String, target: &str, ok: bool| {
        println!("{what:<48} {value:>9}   {target:<14} {}", check(ok));
    };
    if cfssl_best > 0.0 {
        let r = saturated / cfssl_best;
        row(
            "saturation, audit on / cfssl's best",
            format!("{r:.2}"),
            ">= 1.2 (1.5)",
            r >= 1.2,
        );
    }
    let r = saturated / raw;
    row(
        "saturation, audit on / raw sign rate",
        format!("{r:.2}"),
        ">= 0.3",
        r >= 0.3,
    );
    let r = single_on / single_off;
    row(
        "8 x 1: audit on / audit off",
        format!("{r:.2}"),
        ">= 0.9",
        r >= 0.9,
    );
    row(
        "8 x 1, audit on: p99 (ms)",
        format!("{p99:.2}"),
        "<= 3",
        p99 <= 3.0,
    );
    row(
        "idle resident memory (MB)",
        format!("{idle_rss:.0}"),
        "<= 50",
        idle_rss <= 50.0,
    );
    row(
        "resident memory after the load (MB)",
        format!("{loaded_rss:.0}"),
        "",
        true,
    );
    let s = start.as_secs_f64();
    row(
        "start to serving on an existing folder (s)",
        format!("{s:.2}"),
        "<= 1",
        s <= 1.0,
    );
    for (file, which) in [(profile, "audit-on"), (profile_off, "audit-off")] {
        let Some(file) = file else { continue };
        // The appliance writes it when it stops.
        for _ in 0..50 {
            if file.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("\nCPU profile of the {which} appliance: {}", file.display());
    }
}
