//! Both listeners under hostile connection patterns, over real TLS on 127.0.0.1 with the CA in
//! SoftHSM: idle TLS connections beyond the cap are closed and issuance goes on, idle
//! connections are closed after the idle timeout, oversized requests get a gRPC status
//! (`RESOURCE_EXHAUSTED`) from a real tonic client, and issuances whose caller went away after
//! the record was made are counted in `hsmca_issuances_total`.

mod support;

use std::time::Duration;

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::issuance::pb::IstioCertificateRequest;
use support::appliance::Appliance;
use support::http::{closed_by_server, idle_tls, AdminClient};

const AUDITOR: &str = "spiffe://cluster.local/ns/hsm-ca/sa/auditor";

fn server_section(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndns_names = [\"localhost\"]\n\
         ip_addresses = [\"127.0.0.1\"]\n{extra}\n"
    )
}

fn admin_section(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ndevelopment_shared_ca = true\n{extra}\n\
         [[admin.users]]\nidentity = \"{AUDITOR}\"\nroles = [\"auditor\"]\n"
    )
}

/// A CSR for `spiffe://cluster.local/ns/ns/sa/sa` and a request carrying it.
fn request(ttl: i64) -> IstioCertificateRequest {
    let csr =
        client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/ns/sa/sa").expect("csr");
    IstioCertificateRequest {
        csr: csr.csr_pem,
        validity_duration: ttl,
        metadata: None,
    }
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    req
}

/// Opens `n` idle TLS connections; returns those the server kept open after a moment, and how
/// many it closed.
async fn idle_flood(
    addr: std::net::SocketAddr,
    roots: &[Vec<u8>],
    n: usize,
) -> (
    Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    usize,
) {
    let mut open = Vec::new();
    for _ in 0..n {
        if let Ok(conn) = idle_tls(addr, roots).await {
            open.push(conn);
        }
    }
    let mut kept = Vec::new();
    let mut closed = n - open.len();
    for mut conn in open {
        if closed_by_server(&mut conn, Duration::from_millis(300)).await {
            closed += 1;
        } else {
            kept.push(conn);
        }
    }
    (kept, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_closed_and_issuance_goes_on() {
    let extra = format!(
        "{}{}",
        server_section("max_connections = 8"),
        admin_section("max_connections = 4")
    );
    let app = Appliance::start(&extra).await;
    let token = app.token_for("ns", "sa");
    let mut grpc = app.client(None, false).await;
    grpc.create_certificate(with_token(request(600), &token))
        .await
        .expect("issuance before the flood");

    // The issuance listener: one place is the client's, 7 are left for the flood of 20.
    let (kept, closed) = idle_flood(app.server.local_addr, &app.roots, 20).await;
    assert_eq!(
        (kept.len(), closed),
        (7, 13),
        "idle connections kept / closed on the issuance listener"
    );
    // The connection made before the flood keeps working.
    grpc.create_certificate(with_token(request(600), &token))
        .await
        .expect("issuance during the flood");

    // The admin listener: 4 places.
    let admin_addr = app.server.admin_addr.expect("admin");
    let (admin_kept, admin_closed) = idle_flood(admin_addr, &app.roots, 10).await;
    assert_eq!((admin_kept.len(), admin_closed), (4, 6));

    // Once the idle connections go, new ones are served again on both listeners.
    drop(kept);
    drop(admin_kept);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fresh = app.client(None, false).await;
    fresh
        .create_certificate(with_token(request(600), &token))
        .await
        .expect("issuance on a new connection");
    let public = AdminClient::new(admin_addr, &app.roots, None);
    assert_eq!(public.get("/healthz").await.status, 200);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let extra = format!(
        "{}{}",
        server_section("idle_timeout_secs = 1"),
        admin_section("idle_timeout_secs = 1")
    );
    let app = Appliance::start(&extra).await;
    let admin_addr = app.server.admin_addr.expect("admin");
    let mut conns = Vec::new();
    for addr in [app.server.local_addr, admin_addr] {
        for _ in 0..5 {
            conns.push(idle_tls(addr, &app.roots).await.expect("connect"));
        }
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        assert!(
            closed_by_server(conn, Duration::from_secs(10)).await,
            "idle connection {i} still open"
        );
    }
    // A client that asks again after idling gets its answer on a new connection.
    let token = app.token_for("ns", "sa");
    let mut grpc = app.client(None, false).await;
    grpc.create_certificate(with_token(request(600), &token))
        .await
        .expect("issuance");
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_resource_exhausted() {
    let app = Appliance::start("").await;
    let token = app.token_for("ns", "sa");
    let mut grpc = app.client(None, false).await;

    // A message over the 64 KiB limit.
    let mut big = request(600);
    big.csr.push_str(&"A".repeat(70 * 1024));
    let err = grpc
        .create_certificate(with_token(big, &token))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("65536"), "{}", err.message());

    // Headers over the limit: a 100 KB token.
    let huge_token = "x".repeat(100 * 1024);
    let err = grpc
        .create_certificate(with_token(request(600), &huge_token))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");

    // The connection still serves a normal request.
    grpc.create_certificate(with_token(request(600), &token))
        .await
        .expect("issuance after the refusals");
    app.server.shutdown().await;
}

/// A client that does not hold back headers the server advertises it would not take (curl with
/// nghttp2, like grpc-go) gets a gRPC status for oversized headers, not HTTP 431. (40 KiB:
/// nghttp2 itself sends no header block over 64 KiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_a_grpc_status_from_any_client() {
    let app = Appliance::start("").await;
    let port = app.server.local_addr.port();
    let root = app.path("root.pem");
    let cert = pem::Pem::new("CERTIFICATE", app.roots[0].clone());
    std::fs::write(&root, pem::encode(&cert)).expect("root");
    let headers = app.path("headers.txt");
    std::fs::write(
        &headers,
        format!(
            "authorization: Bearer {}\ncontent-type: application/grpc\nte: trailers\n",
            "x".repeat(40 * 1024)
        ),
    )
    .expect("headers");
    // A request message of 1 KB (the headers alone are over the limit): answering before the
    // client has sent it all reset the stream, which curl reports as a framing error in most runs.
    let body = app.path("body.bin");
    let mut message = vec![0u8];
    message.extend_from_slice(&995u32.to_be_bytes());
    message.resize(1000, 0);
    std::fs::write(&body, message).expect("body");
    for round in 0..5 {
        let (root, headers, body) = (root.clone(), headers.clone(), body.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--http2", "-o", "/dev/null", "-D", "-", "--cacert"])
                .arg(&root)
                .arg("--resolve")
                .arg(format!("localhost:{port}:127.0.0.1"))
                .arg("-H")
                .arg(format!("@{}", headers.display()))
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(format!(
                    "https://localhost:{port}/istio.v1.auth.IstioCertificateService/CreateCertificate"
                ))
                .output()
                .expect("curl runs")
        })
        .await
        .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(text.starts_with("http/2 200"), "round {round}: {text}{err}");
        assert!(text.contains("grpc-status: 8"), "round {round}: {text}");
    }
    app.server.shutdown().await;
}

/// `hsmca_issuances_total` by result, from `/metrics`.
async fn issuance_counts(admin: &AdminClient) -> std::collections::BTreeMap<String, u64> {
    let text = admin.get("/metrics").await.text();
    text.lines()
        .filter_map(|l| l.strip_prefix("hsmca_issuances_total{result=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(label, n)| (label.to_string(), n.trim().parse().expect("count")))
        .collect()
}

fn issued_records(app: &Appliance) -> usize {
    let audit = app.server.control.audit().expect("audit");
    let records = tokio::task::block_in_place(|| audit.page(1, 1_000_000)).expect("page");
    records
        .iter()
        .filter(|r| serde_json::to_value(r).expect("json")["event"]["kind"] == "issued")
        .count()
}

fn auditor(app: &Appliance) -> AdminClient {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let snap = app.server.view.load();
    let cert = tokio::task::block_in_place(|| {
        snap.ca.issue_leaf(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
            AUDITOR,
            Duration::from_secs(3600),
            Duration::from_secs(60),
            time::OffsetDateTime::now_utc(),
        )
    })
    .expect("admin cert");
    let chain = vec![cert.der, snap.ca.cert_der().to_vec()];
    let key_der = key.serialize_der();
    AdminClient::new(
        app.server.admin_addr.expect("admin"),
        &app.roots,
        Some((&chain, &key_der)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuances_whose_caller_went_away_are_counted() {
    use rand::Rng;
    let app = Appliance::start(&admin_section("")).await;
    let admin = auditor(&app);
    let token = app.token_for("ns", "sa");
    let grpc = app.client(None, false).await;

    // How long an issuance takes here.
    let mut took = Vec::new();
    for _ in 0..10 {
        let t = std::time::Instant::now();
        grpc.clone()
            .create_certificate(with_token(request(600), &token))
            .await
            .expect("issuance");
        took.push(t.elapsed());
    }
    took.sort();
    let typical = took[took.len() / 2];

    // Callers that give up at a random moment of their request, until some issuances were
    // recorded whose answer nobody received.
    let mut received = 10usize;
    for _ in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..20 {
            let mut c = grpc.clone();
            let req = with_token(request(600), &token);
            let wait = typical.mul_f64(rand::thread_rng().gen_range(0.0..2.0));
            batch.push(tokio::spawn(async move {
                tokio::time::timeout(wait, c.create_certificate(req))
                    .await
                    .is_ok_and(|r| r.is_ok())
            }));
        }
        for b in batch {
            received += usize::from(b.await.expect("task"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if issued_records(&app) > received {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let issued = issued_records(&app);
    assert!(issued > received, "no issuance outlived its caller");
    let counts = issuance_counts(&admin).await;
    let ok = counts.get("ok").copied().unwrap_or(0);
    let reset = counts.get("reset").copied().unwrap_or(0);
    assert_eq!(
        usize::try_from(ok + reset).expect("count"),
        issued,
        "issued records vs hsmca_issuances_total: {counts:?}"
    );
    app.server.shutdown().await;
}
