//! cert-manager's Vault issuer (and istio-csr through it) against the Vault-compatible front
//! door over real TLS on 127.0.0.1, CA keys in SoftHSM: the exact requests it sends (restated
//! from its source, below), the answers it parses, the role policy's refusals with Vault's
//! status codes, tokens (revocation, expiry), and what reaches the audit log and the log (no
//! token, JWT or secret id). Every chain is checked with `openssl verify -x509_strict`.
//!
//! What cert-manager sends, read from its source:
//! cert-manager (pkg/internal/vault/vault.go): `GET /v1/sys/health` first; logins by
//! `POST /v1/auth/approle/login` and `POST /v1/auth/kubernetes/login` with string maps;
//! signing by `POST /v1/<issuer path>` (e.g. `pki/sign/<role>`) with a JSON map of strings:
//! `common_name`, `alt_names` and `ip_sans` and `uri_sans` (comma-joined), `ttl` (Go's
//! `Duration.String()`, `2160h0m0s`), `csr`, `exclude_cn_from_sans: "true"`. It parses
//! `certificate`, `issuing_ca` and `ca_chain` and builds one chain ending at the root.

mod support;

use std::sync::{Arc, Mutex, OnceLock};

use hsm_ca::ca::inspect::parse_certificate;
use serde_json::{json, Value};
use support::vault::*;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

/// Every log line of this test process at debug level and above, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// cert-manager's Sign body for `csr` (PEM) as its Vault issuer builds it.
fn cert_manager_body(
    csr_pem: &str,
    cn: &str,
    dns: &[&str],
    ips: &[&str],
    uris: &[&str],
    ttl: &str,
) -> Value {
    json!({
        "common_name": cn,
        "alt_names": dns.join(","),
        "ip_sans": ips.join(","),
        "uri_sans": uris.join(","),
        "ttl": ttl,
        "csr": csr_pem,
        "exclude_cn_from_sans": "true",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cert_manager_requests_sign_within_the_role_and_refusals_have_vaults_codes() {
    let logs = captured_logs();
    let app = start().await;
    let cm = client(&app, None);
    let dir = app.dir.path();

    let health = go_client(&cm, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["sealed"], json!(false));
    assert_eq!(health.json()["initialized"], json!(true));

    let (jwt, token) = kubernetes_login(&app).await;

    // A gateway certificate, as a Certificate with dnsNames and duration 2160h asks.
    let (csr_pem, _) = csr(
        Some("gw.mesh.example.com"),
        &["gw.mesh.example.com", "api.mesh.example.com"],
        &[],
        &[],
        false,
    );
    let body = cert_manager_body(
        &csr_pem,
        "gw.mesh.example.com",
        &["gw.mesh.example.com", "api.mesh.example.com"],
        &[],
        &[],
        "2160h0m0s",
    );
    let signed = go_client(
        &cm,
        "POST",
        "/v1/pki/sign/mesh-gateways",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    let data = &signed.json()["data"];
    let leaf = data["certificate"].as_str().expect("certificate");
    let issuing = data["issuing_ca"].as_str().expect("issuing_ca");
    let chain: Vec<&str> = data["ca_chain"]
        .as_array()
        .expect("ca_chain")
        .iter()
        .map(|v| v.as_str().expect("pem"))
        .collect();
    assert_eq!(chain.first(), Some(&issuing), "issuing CA first");
    assert_eq!(
        chain.last().copied(),
        Some(pem_of(&app.roots[0]).as_str()),
        "root last"
    );
    let (ok, out) = openssl_ok(dir, chain[chain.len() - 1], &[issuing], leaf);
    assert!(ok, "{out}");
    let parsed_der = first_der(leaf);
    let parsed = parse_certificate(&parsed_der).expect("leaf");
    let dns: Vec<String> = parsed
        .subject_alternative_name()
        .expect("san")
        .expect("present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(dns, vec!["gw.mesh.example.com", "api.mesh.example.com"]);
    assert!(
        data["expiration"].as_i64().expect("expiration")
            > OffsetDateTime::now_utc().unix_timestamp()
    );

    // istio-csr through cert-manager: a workload CSR with one SPIFFE URI SAN, no CN.
    let workload = "spiffe://cluster.local/ns/sandbox/sa/httpbin";
    let (csr_pem, _) = csr(None, &[], &[workload], &[], false);
    let body = cert_manager_body(&csr_pem, "", &[], &[], &[workload], "1h0m0s");
    let signed = go_client(
        &cm,
        "POST",
        "/v1/pki/sign/istio-csr",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    let data = &signed.json()["data"];
    let (ok, out) = openssl_ok(
        dir,
        data["ca_chain"][1].as_str().expect("root"),
        &[data["issuing_ca"].as_str().expect("issuing")],
        data["certificate"].as_str().expect("leaf"),
    );
    assert!(ok, "{out}");

    // The role's refusals, each with the status Vault gives.
    let sign = |role: &'static str, body: Value, token: Option<String>| {
        let cm = cm.clone();
        async move {
            go_client(
                &cm,
                "POST",
                &format!("/v1/pki/sign/{role}"),
                token.as_deref(),
                Some(body),
            )
            .await
        }
    };
    let t = Some(token.clone());
    let (wrong_domain, _) = csr(
        Some("www.example.net"),
        &["www.example.net"],
        &[],
        &[],
        false,
    );
    let r = sign(
        "mesh-gateways",
        cert_manager_body(
            &wrong_domain,
            "www.example.net",
            &["www.example.net"],
            &[],
            &[],
            "1h0m0s",
        ),
        t.clone(),
    )
    .await;
    assert_eq!(r.status, 400, "wrong domain: {}", r.text());
    assert!(errors(&r).contains("www.example.net"), "{}", r.text());
    let (ok_csr, _) = csr(None, &["a.mesh.example.com"], &[], &[], false);
    let r = sign(
        "mesh-gateways",
        cert_manager_body(&ok_csr, "", &["a.mesh.example.com"], &[], &[], "2161h0m0s"),
        t.clone(),
    )
    .await;
    assert_eq!(r.status, 400, "ttl over max_ttl: {}", r.text());
    assert!(errors(&r).contains("max_ttl"), "{}", r.text());
    let (ip_csr, _) = csr(None, &["a.mesh.example.com"], &[], &["10.0.0.7"], false);
    let r = sign(
        "mesh-gateways",
        cert_manager_body(
            &ip_csr,
            "",
            &["a.mesh.example.com"],
            &["10.0.0.7"],
            &[],
            "1h0m0s",
        ),
        t.clone(),
    )
    .await;
    assert_eq!(r.status, 400, "IP SAN: {}", r.text());
    assert!(
        errors(&r).contains("IP Subject Alternative Names"),
        "{}",
        r.text()
    );
    let (ca_csr, _) = csr(None, &["a.mesh.example.com"], &[], &[], true);
    let r = sign(
        "mesh-gateways",
        cert_manager_body(&ca_csr, "", &["a.mesh.example.com"], &[], &[], "1h0m0s"),
        t.clone(),
    )
    .await;
    assert_eq!(r.status, 400, "CA through sign/: {}", r.text());
    assert!(errors(&r).contains("CA certificate"), "{}", r.text());
    let r = sign(
        "no-such-role",
        cert_manager_body(&ok_csr, "", &[], &[], &[], "1h0m0s"),
        t.clone(),
    )
    .await;
    assert_eq!(
        r.status,
        403,
        "a token never holds an unknown role's policy: {}",
        r.text()
    );
    let r = sign(
        "mesh-gateways",
        cert_manager_body(&ok_csr, "", &[], &[], &[], "1h0m0s"),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "no token: {}", r.text());

    // approle: the wrong secret is refused; the right one signs, but only its own roles.
    let bad = go_client(
        &cm,
        "POST",
        "/v1/auth/approle/login",
        None,
        Some(json!({"role_id": APPROLE_ID, "secret_id": "guess"})),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["errors"], json!(["invalid role or secret ID"]));
    let ci = token_of(
        &go_client(
            &cm,
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({"role_id": APPROLE_ID, "secret_id": APPROLE_SECRET})),
        )
        .await,
    );
    let (csr_pem, _) = csr(None, &[], &[workload], &[], false);
    let r = sign(
        "istio-csr",
        cert_manager_body(&csr_pem, "", &[], &[], &[workload], "1h0m0s"),
        Some(ci.clone()),
    )
    .await;
    assert_eq!(
        r.status,
        403,
        "approle ci has no istio-csr policy: {}",
        r.text()
    );

    // A revoked token and an expired one no longer work.
    let r = go_client(&cm, "POST", "/v1/auth/token/revoke-self", Some(&ci), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = sign(
        "mesh-gateways",
        cert_manager_body(&ok_csr, "", &["a.mesh.example.com"], &[], &[], "1h0m0s"),
        Some(ci.clone()),
    )
    .await;
    assert_eq!(r.status, 403, "revoked token: {}", r.text());
    let state = app.server.control.state();
    let hash = hsm_ca::vault::tokens::token_hash(&hsm_ca::secret::Secret::new(token.clone()));
    let mut record = state
        .token(&hash)
        .await
        .expect("state")
        .expect("stored by hash");
    record.expires_at = OffsetDateTime::now_utc().unix_timestamp() - 1;
    state.put_token(&record).await.expect("expire");
    let r = sign(
        "mesh-gateways",
        cert_manager_body(&ok_csr, "", &["a.mesh.example.com"], &[], &[], "1h0m0s"),
        t.clone(),
    )
    .await;
    assert_eq!(r.status, 403, "expired token: {}", r.text());

    // Everything is in the audit log; no token, JWT or secret id is.
    let audit = app.server.control.audit().expect("audit on");
    let records = tokio::task::block_in_place(|| audit.page(1, 1000)).expect("audit page");
    let text = serde_json::to_string(&records).expect("json");
    assert!(
        text.contains("vault:pki/sign/mesh-gateways (kubernetes/cert-manager)"),
        "{text}"
    );
    assert!(text.contains("vault:pki/sign/istio-csr"), "{text}");
    assert!(text.contains("token_issued"), "{text}");
    assert!(
        text.contains("not allowed by this role"),
        "refusals recorded: {text}"
    );
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(logged.contains("vault request refused"), "logs captured");
    for secret in [token.as_str(), ci.as_str(), jwt.as_str(), APPROLE_SECRET] {
        assert!(!text.contains(secret), "a secret reached the audit log");
        assert!(!logged.contains(secret), "a secret reached the log");
    }
    app.server.shutdown().await;
}
