//! Clusters' token keys follow Kubernetes: an HTTPS server started here (127.0.0.1, its own
//! CA, a bearer token required) serves OIDC discovery and a JWKS the way the API server does
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`). The JWKS is rotated at the server
//! and the appliance follows without a restart; with the server gone the last good keys keep
//! working and the failure counter rises. A JWKS file is re-read when it changes.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::dev::token::{self as devtoken, TokenClaims, TokenSigner};
use support::appliance::Appliance;
use tokio::net::TcpListener;
use tonic::Code;

const READER_TOKEN: &str = "reader-token-5f2c9a";

/// What the fake API server serves.
#[derive(Clone)]
struct Published {
    issuer: String,
    jwks: Arc<Mutex<String>>,
    /// Requests that came without the reader token.
    unauthorized: Arc<Mutex<u32>>,
}

fn authorized(p: &Published, headers: &HeaderMap) -> bool {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {READER_TOKEN}"));
    if !ok {
        *p.unauthorized.lock().expect("lock") += 1;
    }
    ok
}

async fn discovery(State(p): State<Published>, headers: HeaderMap) -> impl IntoResponse {
    if !authorized(&p, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(serde_json::json!({
        "issuer": p.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", p.issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
    .into_response()
}

async fn jwks(State(p): State<Published>, headers: HeaderMap) -> impl IntoResponse {
    if !authorized(&p, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = p.jwks.lock().expect("lock").clone();
    ([("content-type", "application/jwk-set+json")], body).into_response()
}

/// TLS connections for axum, with the fake API server's certificate.
struct TlsListener {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(stream) = self.tls.accept(tcp).await {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The fake API server: its CA (PEM), address, published JWKS and the serving task.
struct ApiServer {
    ca_pem: String,
    published: Published,
    task: tokio::task::JoinHandle<()>,
}

async fn api_server() -> ApiServer {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test kubernetes CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let leaf = params.signed_by(&key, &issuer).expect("leaf");

    let mut tls = rustls::ServerConfig::builder_with_provider(hsm_ca::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server tls");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let published = Published {
        issuer: format!("https://127.0.0.1:{}", addr.port()),
        jwks: Arc::new(Mutex::new(String::new())),
        unauthorized: Arc::new(Mutex::new(0)),
    };
    let router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/openid/v1/jwks", get(jwks))
        .with_state(published.clone());
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    ApiServer {
        ca_pem: ca.pem(),
        published,
        task,
    }
}

/// A JWKS holding the public keys of `signers`.
fn jwks_of(signers: &[&TokenSigner]) -> String {
    let keys: Vec<serde_json::Value> = signers
        .iter()
        .flat_map(|s| {
            let set: serde_json::Value = serde_json::from_str(&s.jwks).expect("jwks");
            set["keys"].as_array().expect("keys").clone()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn mint(signer: &TokenSigner, issuer: &str, sa: &str) -> String {
    devtoken::mint(
        &signer.key_pkcs8_pem,
        &signer.kid,
        &TokenClaims {
            issuer,
            audiences: &["istio-ca".to_string()],
            namespace: "default",
            service_account: sa,
            expires_in: 600,
            not_before_in: 0,
        },
    )
    .expect("mint")
}

/// Asks for a certificate for `default/<sa>` with a token of `cluster`.
async fn ask(app: &Appliance, cluster: &str, token: &str, sa: &str) -> Result<(), (Code, String)> {
    let id = format!("spiffe://cluster.local/ns/default/sa/{sa}");
    let csr = client::workload_csr(WorkloadKey::P256, &id).expect("csr");
    let mut c = app.client(None, false).await;
    client::create_certificate(&mut c, &csr.csr_pem, 0, Some(token), Some(cluster), None)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            client::ClientError::Refused { code, message } => (code, message),
            other => panic!("not a refusal: {other}"),
        })
}

/// Asks with a fresh token (a new service account each time, so no cached verification
/// answers) until it is accepted or `within` passes.
async fn accepted_within(
    app: &Appliance,
    cluster: &str,
    signer: &TokenSigner,
    issuer: &str,
    within: Duration,
) -> Result<(), (Code, String)> {
    let until = tokio::time::Instant::now() + within;
    let mut n = 0;
    loop {
        n += 1;
        let sa = format!("{}-{n}-{}", signer.kid, support::random_hex(3));
        let result = ask(app, cluster, &mint(signer, issuer, &sa), &sa).await;
        if result.is_ok() || tokio::time::Instant::now() >= until {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sample's value in the Prometheus text format, by its exact series text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn scrape(app: &Appliance) -> String {
    let addr = app.server.metrics_addr.expect("metrics listener");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_rotation_at_the_api_server_is_followed_without_restart() {
    let server = api_server().await;
    let issuer = server.published.issuer.clone();
    let old = devtoken::new_signer("old-key").expect("signer");
    let new = devtoken::new_signer("new-key").expect("signer");
    *server.published.jwks.lock().expect("lock") = jwks_of(&[&old]);

    let files = tempfile::tempdir().expect("tempdir");
    let ca_file = files.path().join("kube-ca.pem");
    let token_file = files.path().join("reader-token");
    std::fs::write(&ca_file, &server.ca_pem).expect("ca");
    std::fs::write(&token_file, format!("{READER_TOKEN}\n")).expect("token");
    let extra = format!(
        r#"[metrics]
listen = "127.0.0.1:0"
[[clusters]]
id = "discovered"
issuer = "{issuer}"
discovery = true
ca_file = "{ca}"
token_file = "{token}"
refresh_secs = 1
[[clusters]]
id = "on-demand"
issuer = "{issuer}"
jwks_url = "{issuer}/openid/v1/jwks"
ca_file = "{ca}"
token_file = "{token}"
refresh_secs = 3600
"#,
        ca = ca_file.display(),
        token = token_file.display(),
    );
    let app = Appliance::start(&extra).await;

    for cluster in ["discovered", "on-demand"] {
        accepted_within(&app, cluster, &old, &issuer, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{cluster}: the first key set was not loaded: {e:?}"));
    }
    let metrics = scrape(&app).await;
    assert_eq!(
        sample(&metrics, r#"hsmca_cluster_keys{cluster="discovered"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains(READER_TOKEN),
        "the reader token is not in /metrics"
    );

    // Rotation: the new key is published, then the old one leaves.
    *server.published.jwks.lock().expect("lock") = jwks_of(&[&old, &new]);
    // The periodic refresh (1 s) picks up the new key.
    accepted_within(&app, "discovered", &new, &issuer, Duration::from_secs(10))
        .await
        .expect("a token of the new key is accepted after the rotation");
    // With an hour between refreshes, the unknown key id asks for one.
    accepted_within(&app, "on-demand", &new, &issuer, Duration::from_secs(10))
        .await
        .expect("a token with an unknown key id makes the keys refresh");

    *server.published.jwks.lock().expect("lock") = jwks_of(&[&new]);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sa = format!("old-{}", support::random_hex(3));
        match ask(&app, "discovered", &mint(&old, &issuer, &sa), &sa).await {
            Err((code, _)) => {
                assert_eq!(code, Code::Unauthenticated);
                break;
            }
            Ok(()) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(()) => panic!("a token of the removed key is still accepted after 10 s"),
        }
    }
    accepted_within(&app, "discovered", &new, &issuer, Duration::ZERO)
        .await
        .expect("the new key still works");

    // The API server goes away: the last good keys stay, the failures are counted.
    let failures_before = sample(
        &scrape(&app).await,
        r#"hsmca_cluster_keys_refresh_failures_total{cluster="discovered"}"#,
    )
    .expect("failure counter");
    server.task.abort();
    let _ = server.task.await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = scrape(&app).await;
    let failures_after = sample(
        &metrics,
        r#"hsmca_cluster_keys_refresh_failures_total{cluster="discovered"}"#,
    )
    .expect("failure counter");
    assert!(
        failures_after > failures_before,
        "failures {failures_before} -> {failures_after}\n{metrics}"
    );
    let last = sample(
        &metrics,
        r#"hsmca_cluster_keys_last_refresh_timestamp_seconds{cluster="discovered"}"#,
    )
    .expect("last refresh");
    assert!(last > 0.0, "{metrics}");
    accepted_within(&app, "discovered", &new, &issuer, Duration::ZERO)
        .await
        .expect("the last good keys still verify while the server is down");
    assert_eq!(
        *server.published.unauthorized.lock().expect("lock"),
        0,
        "every fetch carried the reader token"
    );
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_jwks_file_is_read_again() {
    let files = tempfile::tempdir().expect("tempdir");
    let jwks_file = files.path().join("rotating-jwks.json");
    let old = devtoken::new_signer("file-old").expect("signer");
    let new = devtoken::new_signer("file-new").expect("signer");
    std::fs::write(&jwks_file, jwks_of(&[&old])).expect("jwks");
    let issuer = "https://file.test/issuer";
    let extra = format!(
        "[[clusters]]\nid = \"file\"\nissuer = \"{issuer}\"\njwks_file = \"{}\"\nrefresh_secs = 1\n",
        jwks_file.display()
    );
    let app = Appliance::start(&extra).await;
    accepted_within(&app, "file", &old, issuer, Duration::ZERO)
        .await
        .expect("old key");
    std::fs::write(&jwks_file, jwks_of(&[&new])).expect("jwks");
    accepted_within(&app, "file", &new, issuer, Duration::from_secs(10))
        .await
        .expect("the new key is accepted after the file changed");
    let sa = format!("old-{}", support::random_hex(3));
    let (code, _) = ask(&app, "file", &mint(&old, issuer, &sa), &sa)
        .await
        .expect_err("the old key left the file");
    assert_eq!(code, Code::Unauthenticated);
    // A broken file keeps the last good keys.
    std::fs::write(&jwks_file, "{ not json").expect("jwks");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    accepted_within(&app, "file", &new, issuer, Duration::ZERO)
        .await
        .expect("a broken file keeps the last good keys");
    app.server.shutdown().await;
}
