//! The running appliance under load, beside the raw HSM sign rate and a software CA, in one run.
//!
//! `ops/bench.sh` (installs golang-cfssl) or `cargo bench --bench grpc`.
//! Settings: `BENCH_SECS` (per figure, default 5), `BENCH_CONNECTIONS` (default 8).
//!
//! 1. Starts `hsm-ca dev` (release build) on a fresh SoftHSM token in a temporary folder.
//! 2. Raw sign rate: ECDSA P-256 signatures through the keystore, 2 sessions, on that token.
//! 3. hsm-ca: N clients, one reused TLS connection each (as istio-agents do), each sending
//!    ztunnel-style CSRs with a service-account token, one after another; issued/s, p50, p99.
//! 4. cfssl: `cfssl serve` over TLS with a software P-256 CA key, its HTTP sign API, the same
//!    CSR and the same concurrency.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_possible_truncation,
    reason = "a benchmark prints approximate figures"
)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::config::Config;
use hsm_ca::keystore::SignatureScheme;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// Runs `connections` tasks, each calling `call` in a loop for `secs`.
async fn drive<F, Fut>(connections: usize, secs: f64, make: impl Fn() -> F) -> Load
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut call = make();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < stop {
                let t = Instant::now();
                if call().await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("task");
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Load {
        rate: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        errors,
    }
}

fn start_dev(dir: &std::path::Path) -> (Kill, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    // BENCH_VERIFY=0 turns the keystore's signature self-check off and BENCH_AUDIT=0 the audit
    // log, to measure what each costs.
    let no_verify = std::env::var("BENCH_VERIFY").as_deref() == Ok("0");
    let no_audit = std::env::var("BENCH_AUDIT").as_deref() == Ok("0");
    if no_verify || no_audit {
        let setup = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
            .args(["dev", "--setup-only", "--dir"])
            .arg(dir)
            .output()
            .expect("hsm-ca dev --setup-only");
        assert!(setup.status.success());
        let path = dir.join("hsm-ca.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let mut text = text;
        if no_verify {
            text = text.replace(
                "signing_sessions = 2",
                "signing_sessions = 2\nverify_signatures = false",
            );
        }
        if no_audit {
            text.push_str("\n[audit]\nenabled = false\n");
        }
        std::fs::write(&path, text).expect("config");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hsm-ca dev");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(rest) = line.strip_prefix("Serving istio.v1.auth.IstioCertificateService on ") {
            let addr = rest
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("addr");
            // Keep reading so the appliance never writes into a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (guard, addr);
        }
    }
    panic!("hsm-ca dev did not start");
}

fn start_cfssl(dir: &std::path::Path) -> Option<(Kill, u16, Vec<u8>)> {
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
            let tls_root = pem::parse(std::fs::read(dir.join("ca.pem")).expect("ca"))
                .expect("pem")
                .into_contents();
            return Some((guard, port, tls_root));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cfssl serve did not start");
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev_dir = tmp.path().join("dev");
    let (_appliance, addr) = start_dev(&dev_dir);
    let config = Config::load(&dev_dir.join("hsm-ca.toml")).expect("dev config");

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

    let identity = "spiffe://cluster.local/ns/bench/sa/load";
    let csr = client::workload_csr(WorkloadKey::P256, identity).expect("csr");
    let signer_key = std::fs::read_to_string(dev_dir.join("token-signer-key.pem")).expect("signer");
    let cluster = &config.clusters[0];
    let token = hsm_ca::dev::token::mint(
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
    .expect("token");
    let roots = hsm_ca::authority::read_certificates(&dev_dir.join("root-cert.pem")).expect("root");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hsm = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let tls = hsm_ca::tls::client_config(&roots, None, false).expect("tls");
            clients.push(
                client::connect(addr, "localhost", tls)
                    .await
                    .expect("connect"),
            );
        }
        let (csr_pem, token) = (Arc::new(csr.csr_pem.clone()), Arc::new(token));
        // Warm up every connection once.
        for c in clients.iter_mut() {
            client::create_certificate(c, &csr_pem, 0, Some(&token), None, None)
                .await
                .expect("warm-up");
        }
        let clients = Arc::new(std::sync::Mutex::new(clients));
        drive(connections, secs, || {
            let c = clients.lock().expect("clients").pop().expect("client");
            let (csr_pem, token) = (csr_pem.clone(), token.clone());
            move || {
                let mut c = c.clone();
                let (csr_pem, token) = (csr_pem.clone(), token.clone());
                async move {
                    client::create_certificate(&mut c, &csr_pem, 0, Some(&token), None, None)
                        .await
                        .is_ok()
                }
            }
        })
        .await
    });

    let cfssl_dir = tmp.path().join("cfssl");
    std::fs::create_dir_all(&cfssl_dir).expect("dir");
    let cfssl = start_cfssl(&cfssl_dir).map(|(guard, port, tls_root)| {
        let load = runtime.block_on(cfssl_load(
            port,
            tls_root,
            csr.csr_pem.clone(),
            connections,
            secs,
        ));
        drop(guard);
        load
    });

    println!("hsm-ca gRPC bench: SoftHSM, ECDSA P-256 CA, ztunnel-style P-256 CSR, {connections} connections, {secs}s per figure, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let verify = std::env::var("BENCH_VERIFY").as_deref() != Ok("0");
    println!(
        "audit log: {}",
        if std::env::var("BENCH_AUDIT").as_deref() == Ok("0") {
            "off in the appliance"
        } else {
            "on (default)"
        }
    );
    println!(
        "keystore signature self-check: {}",
        if verify {
            "on (default)"
        } else {
            "off in the appliance"
        }
    );
    println!("raw HSM sign rate (2 sessions)      {raw:>9.0} /s");
    println!(
        "hsm-ca issued over gRPC+TLS         {:>9.0} /s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
        hsm.rate,
        hsm.p50.as_secs_f64() * 1e3,
        hsm.p99.as_secs_f64() * 1e3,
        hsm.errors
    );
    if let Some(c) = &cfssl {
        println!("cfssl signed over HTTPS (software)  {:>9.0} /s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
            c.rate, c.p50.as_secs_f64() * 1e3, c.p99.as_secs_f64() * 1e3, c.errors);
    }
    println!(
        "ratio hsm-ca / raw sign rate        {:>9.2}   (target >= 0.35)",
        hsm.rate / raw
    );
    if let Some(c) = &cfssl {
        println!(
            "ratio hsm-ca / cfssl                {:>9.2}   (target >= 1.5)",
            hsm.rate / c.rate
        );
    }
}

async fn cfssl_load(
    port: u16,
    tls_root: Vec<u8>,
    csr_pem: String,
    connections: usize,
    secs: f64,
) -> Load {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    let tls = Arc::new(
        hsm_ca::tls::client_config(&[tls_root], None, false)
            .map(|mut c| {
                c.alpn_protocols.clear();
                c
            })
            .expect("tls"),
    );
    let body = Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "certificate_request": csr_pem })).expect("json"),
    );
    // One HTTP/1.1 keep-alive connection per client, reused for every request.
    let mut senders = Vec::new();
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp");
        tcp.set_nodelay(true).expect("nodelay");
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("tls");
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("http1");
        tokio::spawn(conn);
        senders.push(Arc::new(tokio::sync::Mutex::new(sender)));
    }
    let senders = std::sync::Mutex::new(senders);
    drive(connections, secs, || {
        let sender = senders.lock().expect("senders").pop().expect("sender");
        let body = body.clone();
        move || {
            let (sender, body) = (sender.clone(), body.clone());
            async move {
                let req = http::Request::post("/api/v1/cfssl/sign")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                let mut s = sender.lock().await;
                match s.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let bytes = resp
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        ok && bytes.windows(14).any(|w| w == b"\"success\":true")
                    }
                    Err(_) => false,
                }
            }
        }
    })
    .await
}
