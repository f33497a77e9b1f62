//! The Istio certificate service over real TLS and gRPC on 127.0.0.1, with CA keys in SoftHSM:
//! both CSR styles Istio clients send, the chain's shape, every refusal and its code, token
//! checks, renewal by client certificate, registration authorities, impersonation, TTL clamping,
//! ALPN and TLS versions, and the serving certificate renewing itself.

mod support;

use std::time::Duration;

use hsm_ca::ca::{self, certificates_from_pem};
use hsm_ca::client::{self, WorkloadKey};
use support::appliance::{Appliance, EAST_ISSUER, TOKEN_ISSUER};
use support::openssl_verify;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn ask(
    app: &Appliance,
    csr_pem: &str,
    token: Option<&str>,
    ttl: i64,
) -> Result<Vec<String>, (Code, String)> {
    let mut c = app.client(None, false).await;
    client::create_certificate(&mut c, csr_pem, ttl, token, None, None)
        .await
        .map(|r| r.cert_chain)
        .map_err(refusal)
}

fn refusal(e: client::ClientError) -> (Code, String) {
    match e {
        client::ClientError::Refused { code, message } => (code, message),
        other => panic!("not a refusal: {other}"),
    }
}

fn leaf_of(chain: &[String]) -> Vec<u8> {
    certificates_from_pem(chain[0].as_bytes()).expect("leaf")[0].clone()
}

/// Checks chain shape and verifies it with openssl against the bundle it came with.
fn check_chain(app: &Appliance, chain: &[String], identity: &str) {
    assert_eq!(chain.len(), 3, "leaf, intermediate, bundle");
    for element in &chain[..2] {
        assert_eq!(
            element.matches("BEGIN CERTIFICATE").count(),
            1,
            "one certificate per element"
        );
    }
    let bundle = certificates_from_pem(chain[2].as_bytes()).expect("bundle");
    assert_eq!(bundle, app.roots, "the last element is the trust bundle");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("leaf.pem"), &chain[0]).expect("write");
    std::fs::write(dir.path().join("inter.pem"), &chain[1]).expect("write");
    std::fs::write(dir.path().join("bundle.pem"), &chain[2]).expect("write");
    let (ok, out) = openssl_verify(
        &dir.path().join("bundle.pem"),
        Some(&dir.path().join("inter.pem")),
        &dir.path().join("leaf.pem"),
    );
    assert!(ok, "{out}");
    let leaf = leaf_of(chain);
    let (_, cert) = X509Certificate::from_der(&leaf).expect("leaf");
    let san = cert.subject_alternative_name().expect("ok").expect("san");
    assert!(san.critical);
    assert_eq!(
        format!("{:?}", san.value.general_names),
        format!("[URI({identity:?})]")
    );
    assert_eq!(cert.subject().iter_attributes().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_and_istio_agent_csrs_get_verified_spiffe_chains() {
    let app = Appliance::start("").await;
    let token = app.token_for("default", "web");
    for key in [WorkloadKey::P256, WorkloadKey::Rsa2048, WorkloadKey::P384] {
        let csr = client::workload_csr(key, WEB).expect("csr");
        let chain = ask(&app, &csr.csr_pem, Some(&token), 0)
            .await
            .expect("issued");
        check_chain(&app, &chain, WEB);
        let parsed = ca::parse_csr(csr.csr_pem.as_bytes()).expect("csr");
        let leaf_der = leaf_of(&chain);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
        assert_eq!(
            leaf.public_key().raw,
            parsed.spki.as_slice(),
            "{key:?}: the leaf carries the CSR's key"
        );
        if key == WorkloadKey::Rsa2048 {
            assert!(
                parsed.subject_is_blank && parsed.subject.contains("O="),
                "istio-agent's empty O: {}",
                parsed.subject
            );
        }
    }
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_problems_are_unauthenticated_and_do_not_echo_the_token() {
    let app = Appliance::start("").await;
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let impostor = hsm_ca::dev::token::new_signer("k1").expect("signer");
    let cases = [
        (None, "no credentials"),
        (
            Some(app.mint(
                &app.signer,
                TOKEN_ISSUER,
                "istio-ca",
                "default",
                "web",
                -600,
                -1200,
            )),
            "expired",
        ),
        (
            Some(app.mint(
                &app.signer,
                TOKEN_ISSUER,
                "not-istio",
                "default",
                "web",
                600,
                0,
            )),
            "audience",
        ),
        (
            Some(app.mint(
                &app.signer,
                "https://evil.test",
                "istio-ca",
                "default",
                "web",
                600,
                0,
            )),
            "issuer",
        ),
        (
            Some(app.mint(
                &impostor,
                TOKEN_ISSUER,
                "istio-ca",
                "default",
                "web",
                600,
                0,
            )),
            "signature",
        ),
        (
            Some(app.mint(
                &app.east_signer,
                TOKEN_ISSUER,
                "istio-ca",
                "default",
                "web",
                600,
                0,
            )),
            "no key",
        ),
        (
            Some(app.mint(
                &app.signer,
                TOKEN_ISSUER,
                "istio-ca",
                "default",
                "web",
                1200,
                600,
            )),
            "not valid yet",
        ),
        (Some("garbage".to_string()), "not a JWT"),
    ];
    for (token, want) in cases {
        let (code, message) = ask(&app, &csr.csr_pem, token.as_deref(), 0)
            .await
            .expect_err("refused");
        assert_eq!(code, Code::Unauthenticated, "{want}: {message}");
        assert!(message.contains(want), "{want}: {message}");
        if let Some(t) = &token {
            assert!(!message.contains(t.as_str()), "the token was echoed");
        }
    }
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusterid_header_selects_the_cluster() {
    let app = Appliance::start("").await;
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let east = app.mint(
        &app.east_signer,
        EAST_ISSUER,
        "other",
        "default",
        "web",
        600,
        0,
    );
    let mut c = app.client(None, false).await;
    let chain =
        client::create_certificate(&mut c, &csr.csr_pem, 0, Some(&east), Some("east"), None)
            .await
            .expect("east");
    check_chain(&app, &chain.cert_chain, WEB);
    // The same token without the header is checked against the default cluster and fails.
    let (code, _) = refusal(
        client::create_certificate(&mut c, &csr.csr_pem, 0, Some(&east), None, None)
            .await
            .expect_err("default"),
    );
    assert_eq!(code, Code::Unauthenticated);
    let (code, message) = refusal(
        client::create_certificate(&mut c, &csr.csr_pem, 0, Some(&east), Some("west"), None)
            .await
            .expect_err("unknown"),
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("west"), "{message}");
    app.server.shutdown().await;
}

fn openssl_csr(key: &str, subj: &str, ext: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("csr.pem");
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["req", "-new", "-nodes", "-keyout"])
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&out);
    cmd.args(["-newkey", key, "-subj", subj]);
    for e in ext.split(';').filter(|e| !e.is_empty()) {
        cmd.args(["-addext", e]);
    }
    let status = cmd.output().expect("openssl");
    assert!(status.status.success(), "{status:?}");
    std::fs::read_to_string(out).expect("csr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_policy_refusals_have_the_right_codes() {
    let app = Appliance::start("").await;
    let token = app.token_for("default", "web");
    let uri = format!("subjectAltName=critical,URI:{WEB}");
    let cases: Vec<(String, Code, &str)> = vec![
        (
            client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/default/sa/db")
                .expect("csr")
                .csr_pem,
            Code::PermissionDenied,
            "must be exactly",
        ),
        (
            openssl_csr(
                "rsa:2048",
                "/O=",
                &format!("subjectAltName=critical,URI:{WEB},DNS:web.default.svc"),
            ),
            Code::PermissionDenied,
            "DNS",
        ),
        (
            openssl_csr("rsa:2048", "/CN=web", &uri),
            Code::PermissionDenied,
            "common name",
        ),
        (
            openssl_csr("rsa:1024", "/O=", &uri),
            Code::PermissionDenied,
            "RSA-1024",
        ),
        (
            openssl_csr("ed25519", "/O=", &uri),
            Code::PermissionDenied,
            "not accepted",
        ),
        (
            openssl_csr(
                "rsa:2048",
                "/O=",
                &format!("{uri};basicConstraints=critical,CA:TRUE"),
            ),
            Code::PermissionDenied,
            "extensions",
        ),
        (
            openssl_csr(
                "rsa:2048",
                "/O=",
                &format!(
                    "subjectAltName=critical,URI:{WEB},URI:spiffe://cluster.local/ns/default/sa/db"
                ),
            ),
            Code::PermissionDenied,
            "must be exactly",
        ),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n".into(),
            Code::InvalidArgument,
            "malformed CSR",
        ),
        ("hello".into(), Code::InvalidArgument, "malformed CSR"),
        ("A".repeat(40 * 1024), Code::InvalidArgument, "larger than"),
    ];
    for (csr, code, want) in cases {
        let (got, message) = ask(&app, &csr, Some(&token), 0).await.expect_err("refused");
        assert_eq!(got, code, "{want}: {message}");
        assert!(message.contains(want), "{want}: {message}");
    }
    // A CSR whose signature does not verify: the requester does not hold the key.
    let good = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let mut der = pem::parse(&good.csr_pem).expect("pem").into_contents();
    let at = der.windows(4).position(|w| w == b"/web").expect("uri");
    // Change a byte of the signed request body ("/web" becomes "/wxb"): the URI no longer
    // matches either, but the signature check comes first.
    der[at + 2] = b'x';
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let (code, message) = ask(&app, &tampered, Some(&token), 0)
        .await
        .expect_err("tampered");
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("signature"), "{message}");
    // A message over the size limit: larger than the server's maximum (gRPC's status table).
    let (code, _) = ask(&app, &"B".repeat(100 * 1024), Some(&token), 0)
        .await
        .expect_err("too big");
    assert_eq!(code, Code::ResourceExhausted);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_defaulted_and_clamped() {
    let app = Appliance::start(
        "[workload]\ndefault_ttl_secs = 3600\nmax_ttl_secs = 7200\nclock_skew_secs = 120\n",
    )
    .await;
    let token = app.token_for("default", "web");
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    for (requested, expected) in [(0i64, 3600i64), (-1, 3600), (600, 600), (86400 * 30, 7200)] {
        let chain = ask(&app, &csr.csr_pem, Some(&token), requested)
            .await
            .expect("issued");
        let leaf_der = leaf_of(&chain);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf");
        let v = leaf.validity();
        let life = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(life, expected + 120, "requested {requested}");
    }
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_the_previous_certificate_over_mtls() {
    let app = Appliance::start("").await;
    let first = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let chain = ask(
        &app,
        &first.csr_pem,
        Some(&app.token_for("default", "web")),
        0,
    )
    .await
    .expect("first");
    let identity_chain: Vec<Vec<u8>> = chain[..2]
        .iter()
        .flat_map(|p| certificates_from_pem(p.as_bytes()).expect("pem"))
        .collect();
    let mut c = app
        .client(Some((&identity_chain, &first.key_pkcs8)), false)
        .await;
    let next = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let renewed = client::create_certificate(&mut c, &next.csr_pem, 0, None, None, None)
        .await
        .expect("renewed");
    check_chain(&app, &renewed.cert_chain, WEB);
    // The certificate proves only its own identity.
    let other = client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/default/sa/db")
        .expect("csr");
    let (code, _) = refusal(
        client::create_certificate(&mut c, &other.csr_pem, 0, None, None, None)
            .await
            .expect_err("other"),
    );
    assert_eq!(code, Code::PermissionDenied);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_not_a_credential() {
    let app = Appliance::start("").await;
    let other = Appliance::start("").await;
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let chain = ask(
        &other,
        &csr.csr_pem,
        Some(&other.token_for("default", "web")),
        0,
    )
    .await
    .expect("other CA");
    let identity_chain: Vec<Vec<u8>> = chain[..2]
        .iter()
        .flat_map(|p| certificates_from_pem(p.as_bytes()).expect("pem"))
        .collect();
    let tls =
        hsm_ca::tls::client_config(&app.roots, Some((&identity_chain, &csr.key_pkcs8)), false)
            .expect("tls");
    let result = async {
        let mut c = client::connect(app.server.local_addr, "localhost", tls).await?;
        client::create_certificate(&mut c, &csr.csr_pem, 0, None, None, None).await
    }
    .await;
    assert!(result.is_err(), "a foreign client certificate was accepted");
    app.server.shutdown().await;
    other.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_authority_requests_within_its_namespaces() {
    let app = Appliance::start(
        "[[authorization.registration_authorities]]\nidentity = \"spiffe://cluster.local/ns/istio-system/sa/istiod\"\nnamespaces = [\"apps\"]\n",
    )
    .await;
    let ra_token = app.token_for("istio-system", "istiod");
    let inside = "spiffe://cluster.local/ns/apps/sa/payments";
    let csr = client::workload_csr(WorkloadKey::P256, inside).expect("csr");
    let chain = ask(&app, &csr.csr_pem, Some(&ra_token), 0)
        .await
        .expect("RA issue");
    check_chain(&app, &chain, inside);
    let outside = client::workload_csr(
        WorkloadKey::P256,
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    )
    .expect("csr");
    let (code, message) = ask(&app, &outside.csr_pem, Some(&ra_token), 0)
        .await
        .expect_err("outside");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    let foreign = client::workload_csr(
        WorkloadKey::P256,
        "spiffe://other.domain/ns/apps/sa/payments",
    )
    .expect("csr");
    let (code, _) = ask(&app, &foreign.csr_pem, Some(&ra_token), 0)
        .await
        .expect_err("foreign td");
    assert_eq!(code, Code::PermissionDenied);
    // A workload that is not an RA cannot do the same.
    let (code, _) = ask(&app, &csr.csr_pem, Some(&app.token_for("apps", "web")), 0)
        .await
        .expect_err("not RA");
    assert_eq!(code, Code::PermissionDenied);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_node_agents_may_impersonate() {
    let app =
        Appliance::start("[authorization]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n")
            .await;
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let mut c = app.client(None, true).await;
    let ztunnel = app.token_for("istio-system", "ztunnel");
    let chain =
        client::create_certificate(&mut c, &csr.csr_pem, 0, Some(&ztunnel), None, Some(WEB))
            .await
            .expect("impersonated");
    check_chain(&app, &chain.cert_chain, WEB);
    let impostor = app.token_for("default", "db");
    let (code, message) = refusal(
        client::create_certificate(&mut c, &csr.csr_pem, 0, Some(&impostor), None, Some(WEB))
            .await
            .expect_err("impostor"),
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        message.contains("request impersonation authentication failure"),
        "{message}"
    );
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_h2_speaks_1_2_and_1_3_and_can_require_client_certificates() {
    let app = Appliance::start("").await;
    for tls13_only in [false, true] {
        let mut tls = hsm_ca::tls::client_config(&app.roots, None, tls13_only).expect("tls");
        if !tls13_only {
            tls = rustls::ClientConfig::builder_with_provider(hsm_ca::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("versions")
                .with_root_certificates({
                    let mut r = rustls::RootCertStore::empty();
                    r.add(app.roots[0].clone().into()).expect("root");
                    r
                })
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec()];
        }
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(app.server.local_addr)
            .await
            .expect("tcp");
        let stream = connector
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("handshake");
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let want = if tls13_only {
            rustls::ProtocolVersion::TLSv1_3
        } else {
            rustls::ProtocolVersion::TLSv1_2
        };
        assert_eq!(conn.protocol_version(), Some(want));
        // The served chain is our serving certificate and intermediate, for the configured name.
        let peer = conn.peer_certificates().expect("peer certs");
        assert_eq!(peer.len(), 2);
    }
    app.server.shutdown().await;

    let strict =
        Appliance::start("[server]\nlisten = \"127.0.0.1:0\"\nclient_auth = \"required\"\n").await;
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let tls = hsm_ca::tls::client_config(&strict.roots, None, false).expect("tls");
    let outcome = async {
        let mut c = client::connect(strict.server.local_addr, "localhost", tls).await?;
        client::create_certificate(
            &mut c,
            &csr.csr_pem,
            0,
            Some(&strict.token_for("default", "web")),
            None,
            None,
        )
        .await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a client without a certificate was served"
    );
    strict.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_certificate_renews_itself_without_a_restart() {
    let app =
        Appliance::start("[server]\nlisten = \"127.0.0.1:0\"\nserving_cert_ttl_secs = 4\n").await;
    let first = app.server.serving.leaf();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while app.server.serving.leaf() == first && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = app.server.serving.leaf();
    assert_ne!(first, second, "the serving certificate was not renewed");
    // New handshakes see the new certificate, and requests keep working.
    let tls = hsm_ca::tls::client_config(&app.roots, None, false).expect("tls");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(app.server.local_addr)
        .await
        .expect("tcp");
    let stream = connector
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("handshake");
    let served = stream.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    assert_ne!(served, first);
    drop(stream);
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    ask(
        &app,
        &csr.csr_pem,
        Some(&app.token_for("default", "web")),
        0,
    )
    .await
    .expect("issued after renewal");
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_keystore_answers_resource_exhausted() {
    let pool = hsm_ca::keystore::PoolOptions {
        workers: 1,
        queue_depth: 1,
        call_timeout: Duration::from_secs(60),
    };
    let app = Appliance::start_with(
        "[root]\nkey_algorithm = \"rsa-4096\"\n[intermediate]\nkey_algorithm = \"rsa-4096\"\n",
        Some(pool),
    )
    .await;
    let token = app.token_for("default", "web");
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let mut c = app.client(None, false).await;
        let (csr, token) = (csr.csr_pem.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            client::create_certificate(&mut c, &csr, 0, Some(&token), None, None).await
        }));
    }
    let mut exhausted = 0;
    let mut issued = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => issued += 1,
            Err(client::ClientError::Refused {
                code: Code::ResourceExhausted,
                ..
            }) => exhausted += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(
        exhausted > 0,
        "no request was refused as overloaded ({issued} issued)"
    );
    assert!(issued > 0, "nothing was issued");
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_issuer_signs_new_requests_and_old_chains_stay_valid() {
    let app = Appliance::start("").await;
    let token = app.token_for("default", "web");
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    let before = ask(&app, &csr.csr_pem, Some(&token), 0)
        .await
        .expect("before");
    let next = tokio::task::block_in_place(|| {
        let now = time::OffsetDateTime::now_utc();
        let root_ca =
            hsm_ca::authority::issuing_ca_for(&app.store, &app.roots[0]).expect("root ca");
        let (_, next_csr) =
            hsm_ca::authority::new_intermediate_csr(&app.store, &app.config, now).expect("csr");
        let next_csr = ca::parse_csr(next_csr.as_bytes()).expect("csr");
        let inter = hsm_ca::authority::sign_intermediate(&root_ca, &next_csr, &app.config, now)
            .expect("sign");
        hsm_ca::authority::issuing_ca_for(&app.store, &inter.der).expect("next intermediate")
    });
    let next_der = next.cert_der().to_vec();
    app.server
        .view
        .replace(hsm_ca::issuance::IssuerSnapshot::new(
            next,
            app.roots.clone(),
        ));
    let after = ask(&app, &csr.csr_pem, Some(&token), 0)
        .await
        .expect("after");
    assert_ne!(
        before[1], after[1],
        "the response names the new intermediate"
    );
    assert_eq!(
        certificates_from_pem(after[1].as_bytes()).expect("pem")[0],
        next_der
    );
    check_chain(&app, &after, WEB);
    check_chain(&app, &before, WEB);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_issued_certificate_is_in_the_verified_audit_log() {
    let app = Appliance::start("").await;
    let token = app.token_for("default", "web");
    let mut serials = Vec::new();
    for _ in 0..5 {
        let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
        let chain = ask(&app, &csr.csr_pem, Some(&token), 0)
            .await
            .expect("issued");
        let leaf = leaf_of(&chain);
        let (_, cert) = X509Certificate::from_der(&leaf).expect("leaf");
        serials.push(ca::inspect::serial_hex(cert.raw_serial()));
    }
    let data_dir = app.config.data_dir.clone();
    let Appliance { server, .. } = app;
    server.shutdown().await;
    let export = tempfile::NamedTempFile::new().expect("file");
    let mut out = std::fs::File::create(export.path()).expect("create");
    let count = hsm_ca::audit::export(&data_dir, &mut out).expect("export");
    assert_eq!(
        count, 8,
        "started, five issuances, stopped, closing checkpoint"
    );
    let key = hsm_ca::audit::recorded_key(&data_dir)
        .expect("read")
        .expect("an audit key");
    let summary = hsm_ca::audit::verify_file(export.path(), Some(&key.spki)).expect("verifies");
    assert_eq!(summary.records, 8);
    assert!(summary.signatures_checked);
    assert_eq!(summary.checkpoints, 1);
    assert_eq!(
        summary.unsigned_tail, 0,
        "a clean stop ends with a checkpoint"
    );
    let text = std::fs::read_to_string(export.path()).expect("read");
    for serial in &serials {
        assert!(
            text.contains(&format!("\"serial\":\"{serial}\"")),
            "serial {serial} not audited"
        );
    }
    assert!(text.contains("\"caller\":\"spiffe://cluster.local/ns/default/sa/web\""));
    assert!(!text.contains(&token), "a token reached the audit log");
}

/// Records are written while the device signs. A signature that fails after its record was
/// made leaves an `issued` record followed by `not_issued` for the same serial, never a
/// certificate; while the device keeps failing, requests sign first and add no `issued` record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_that_fails_after_its_record_is_recorded_as_not_issued() {
    let app = Appliance::start("").await;
    let token = app.token_for("default", "web");
    let csr = client::workload_csr(WorkloadKey::P256, WEB).expect("csr");
    ask(&app, &csr.csr_pem, Some(&token), 0)
        .await
        .expect("issued while the key is there");
    let destroyed = tokio::task::block_in_place(|| {
        support::destroy_keys_from_outside(&app.token, "hsm-ca intermediate")
    });
    assert_eq!(destroyed, 1, "the intermediate's key");
    for attempt in 0..3 {
        let e = ask(&app, &csr.csr_pem, Some(&token), 0)
            .await
            .expect_err("no key, no certificate");
        assert!(
            matches!(e.0, Code::Unavailable | Code::Internal),
            "attempt {attempt}: {e:?}"
        );
    }
    let data_dir = app.config.data_dir.clone();
    let Appliance { server, .. } = app;
    server.shutdown().await;
    let mut out = Vec::new();
    hsm_ca::audit::export(&data_dir, &mut out).expect("export");
    let records: Vec<serde_json::Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["event"]["kind"] == kind)
            .collect()
    };
    let issued = of_kind("issued");
    let not_issued = of_kind("not_issued");
    assert_eq!(
        issued.len(),
        2,
        "the certificate that left and the one whose signature failed: {records:#?}"
    );
    assert_eq!(not_issued.len(), 1, "{records:#?}");
    assert_eq!(
        not_issued[0]["event"]["serial"], issued[1]["event"]["serial"],
        "not_issued names the failed issuance"
    );
    assert!(
        not_issued[0]["seq"].as_u64() > issued[1]["seq"].as_u64(),
        "not_issued follows its issued record"
    );
}
