//! Fixtures of the Vault front-door tests: an appliance with `[vault_api]` on (the
//! configuration the README's client sections use), clients of its listener with or without a
//! client certificate, CSRs, and `openssl verify`.

use std::path::Path;

use time::OffsetDateTime;

use super::appliance::Appliance;
use super::http::{AdminClient, Reply};
use serde_json::{json, Value};

pub const SPIRE_SERVER: &str = "spiffe://cluster.local/ns/spire/sa/spire-server";
pub const APPROLE_ID: &str = "5c1f9d0e-ci-role";
pub const APPROLE_SECRET: &str = "s3cr3t-8d1e0a55b7c64f29";
pub const SPIRE_TD: &str = "spire.example.org";

/// The `[vault_api]` section the tests (and the README's examples) use.
pub fn vault_config() -> String {
    format!(
        r#"[vault_api]
enabled = true
listen = "127.0.0.1:0"
token_ttl_secs = 600
token_max_ttl_secs = 1200

[[vault_api.cert_roles]]
name = "spire"
identities = ["{SPIRE_SERVER}"]
policies = ["spire-upstream"]

[[vault_api.kubernetes_roles]]
name = "cert-manager"
bound_service_account_namespaces = ["cert-manager"]
bound_service_account_names = ["cert-manager"]
policies = ["mesh-gateways", "istio-csr"]

[[vault_api.approles]]
name = "ci"
role_id = "{APPROLE_ID}"
secret_id_file = "approle-ci.secret"
policies = ["mesh-gateways"]

[[vault_api.roles]]
name = "mesh-gateways"
allowed_domains = ["mesh.example.com"]
allow_subdomains = true
ttl_secs = 3600
max_ttl_secs = 7776000

[[vault_api.roles]]
name = "istio-csr"
allowed_uri_sans = ["spiffe://cluster.local/ns/*/sa/*"]
key_type = "ec"
ttl_secs = 3600
max_ttl_secs = 86400

[[vault_api.intermediates]]
name = "spire-upstream"
trust_domain = "{SPIRE_TD}"
ttl_secs = 86400
max_ttl_secs = 172800
"#
    )
}

/// An appliance with the Vault API on, and the approle's secret id in its file.
pub async fn start() -> Appliance {
    let app = Appliance::start(&vault_config()).await;
    std::fs::write(app.path("approle-ci.secret"), format!("{APPROLE_SECRET}\n")).expect("secret");
    app
}

/// A client of the Vault listener, with a client certificate for `identity` when given.
pub fn client(app: &Appliance, identity: Option<&str>) -> AdminClient {
    let addr = app.server.vault_addr.expect("vault listens");
    let Some(id) = identity else {
        return AdminClient::new(addr, &app.roots, None);
    };
    let (chain, key) = client_certificate(app, id);
    AdminClient::new(addr, &app.roots, Some((&chain, &key)))
}

/// A client certificate (chain, PKCS#8 key) for `id` from the active intermediate.
pub fn client_certificate(app: &Appliance, id: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    super::appliance::client_identity(&app.server.view, id)
}

/// A CSR (PEM) and its key: `cn` and the SANs given.
pub fn csr(
    cn: Option<&str>,
    dns: &[&str],
    uris: &[&str],
    ips: &[&str],
    ca: bool,
) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    for d in dns {
        p.subject_alt_names
            .push(rcgen::SanType::DnsName((*d).try_into().expect("dns")));
    }
    for u in uris {
        p.subject_alt_names
            .push(rcgen::SanType::URI((*u).try_into().expect("uri")));
    }
    for ip in ips {
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse().expect("ip")));
    }
    if ca {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
    (pem, key)
}

/// `openssl verify -x509_strict` of `leaf` with `untrusted` intermediates against `root`.
pub fn openssl_ok(dir: &Path, root: &str, untrusted: &[&str], leaf: &str) -> (bool, String) {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let root = write("v-root.pem", root);
    let leaf = write("v-leaf.pem", leaf);
    let chain = (!untrusted.is_empty()).then(|| write("v-untrusted.pem", &untrusted.concat()));
    super::openssl_verify(&root, chain.as_deref(), &leaf)
}

/// A workload certificate for `uri` signed by the CA `ca_pem` with its key: what SPIRE or
/// istiod do with the CA certificate they got.
pub fn leaf_signed_by(ca_pem: &str, ca_key: &rcgen::KeyPair, uri: &str) -> String {
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names
        .push(rcgen::SanType::URI(uri.try_into().expect("uri")));
    p.use_authority_key_identifier_extension = true;
    p.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    p.not_after = OffsetDateTime::now_utc() + time::Duration::hours(1);
    p.signed_by(&key, &issuer).expect("leaf").pem()
}

/// What the Go Vault client sends with every request (plus the token once it has one).
pub async fn go_client(
    c: &AdminClient,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut headers = vec![("x-vault-request", "true")];
    if let Some(t) = token {
        headers.push(("x-vault-token", t));
    }
    let bytes = body
        .map(|b| serde_json::to_vec(&b).expect("json"))
        .unwrap_or_default();
    c.request(method, path, &headers, bytes).await
}

/// cert-manager's login: its service-account token through the `kubernetes` mount. Returns
/// the JWT (to look for in the audit log) and the Vault token.
pub async fn kubernetes_login(app: &Appliance) -> (String, String) {
    let jwt = app.token_for("cert-manager", "cert-manager");
    let login = go_client(
        &client(app, None),
        "POST",
        "/v1/auth/kubernetes/login",
        None,
        Some(json!({"role": "cert-manager", "jwt": jwt})),
    )
    .await;
    (jwt, token_of(&login))
}

pub fn token_of(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["auth"]["client_token"]
        .as_str()
        .expect("client_token")
        .to_string()
}

pub fn errors(reply: &Reply) -> String {
    reply.json()["errors"].to_string()
}

pub fn pem_of(der: &[u8]) -> String {
    hsm_ca::ca::certificate_pem(der)
}

pub fn first_der(pem_text: &str) -> Vec<u8> {
    hsm_ca::ca::certificates_from_pem(pem_text.as_bytes())
        .expect("pem")
        .remove(0)
}
