//! Fixtures of the ACME front-door tests: an appliance with `[acme]` on (the configuration
//! the README's client sections use), Debian's `pebble-challtestsrv` as the mock DNS server
//! (every name resolves to 127.0.0.1; TXT records set over its management API) and http-01
//! responder, EAB keys made through the admin API, the CA bundle file clients trust, and
//! `openssl verify` of issued chains.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::appliance::Appliance;
use super::http::AdminClient;

/// The admin identity that makes EAB keys in the tests.
pub const OPERATOR: &str = "spiffe://cluster.local/ns/hsm-ca/sa/acme-operator";

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A free UDP port on 127.0.0.1.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `pebble-challtestsrv`: mock DNS on `dns`, http-01 answers on `http01`, management API on
/// `management`. Stopped by its PID when dropped.
pub struct ChallTestSrv {
    child: Child,
    pub dns: u16,
    pub http01: u16,
    pub management: u16,
}

impl ChallTestSrv {
    pub fn start() -> Self {
        let (dns, http01, management) = (free_udp_port(), free_port(), free_port());
        let child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", &format!("127.0.0.1:{http01}")])
            .args(["-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .args(["-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (ops/install-deps.sh installs Debian's pebble)");
        let srv = ChallTestSrv {
            child,
            dns,
            http01,
            management,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", management)).is_ok() {
                return srv;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pebble-challtestsrv did not start");
    }

    /// POSTs `body` to the management API path.
    pub fn manage(&self, path: &str, body: &Value) {
        let out = Command::new("curl")
            .args(["-sf", "-X", "POST", "-d", &body.to_string()])
            .arg(format!("http://127.0.0.1:{}{path}", self.management))
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "challtestsrv {path} failed");
    }

    /// Serves `content` at `/.well-known/acme-challenge/<token>` on its http-01 port.
    pub fn add_http01(&self, token: &str, content: &str) {
        self.manage("/add-http01", &json!({"token": token, "content": content}));
    }

    pub fn set_txt(&self, host: &str, value: &str) {
        self.manage("/set-txt", &json!({"host": host, "value": value}));
    }
}

impl Drop for ChallTestSrv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[acme]` section the tests (and the README) use: EAB required, validation against
/// the given ports and resolver.
pub fn acme_config(http01: u16, tls_alpn01: u16, resolver: u16) -> String {
    format!(
        r#"[acme]
enabled = true
listen = "127.0.0.1:0"
eab_required = true
default_validity_secs = 86400
max_validity_secs = 604800

[acme.validation]
http01_port = {http01}
tls_alpn01_port = {tls_alpn01}
resolver = "127.0.0.1:{resolver}"
timeout_secs = 5
max_concurrent = 4

[admin]
listen = "127.0.0.1:0"
development_shared_ca = true
propagation_window_secs = 0

[[admin.users]]
identity = "{OPERATOR}"
roles = ["operator", "officer"]

[admin.approvals]
threshold = 1
"#
    )
}

/// An appliance with ACME on, its mock DNS, and the CA bundle file clients trust.
pub struct AcmeFixture {
    pub app: Appliance,
    pub dns: ChallTestSrv,
    pub http01: u16,
    pub tls_alpn01: u16,
    pub bundle: PathBuf,
}

impl AcmeFixture {
    /// Validation of http-01 goes to `http01` (none: challtestsrv's own responder).
    pub async fn start(http01: Option<u16>) -> Self {
        let dns = ChallTestSrv::start();
        let http01 = http01.unwrap_or(dns.http01);
        let tls_alpn01 = free_port();
        let app = Appliance::start(&acme_config(http01, tls_alpn01, dns.dns)).await;
        let bundle = app.path("ca-bundle.pem");
        let pem: String = app
            .roots
            .iter()
            .map(|r| hsm_ca::ca::certificate_pem(r))
            .collect();
        std::fs::write(&bundle, pem).expect("bundle");
        AcmeFixture {
            app,
            dns,
            http01,
            tls_alpn01,
            bundle,
        }
    }

    pub fn directory(&self) -> String {
        format!(
            "https://127.0.0.1:{}/acme/directory",
            self.app.server.acme_addr.expect("acme listens").port()
        )
    }

    pub fn admin(&self) -> AdminClient {
        let (chain, key) = super::appliance::client_identity(&self.app.server.view, OPERATOR);
        AdminClient::new(
            self.app.server.admin_addr.expect("admin"),
            &self.app.roots,
            Some((&chain, &key)),
        )
    }

    /// An EAB key with `policy` made through the admin API: (kid, hmac key).
    pub async fn eab(&self, policy: Value) -> (String, String) {
        let reply = self.admin().post("/v1/acme/eab", policy).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        let v = reply.json();
        (
            v["kid"].as_str().expect("kid").to_string(),
            v["hmac_key"].as_str().expect("key").to_string(),
        )
    }

    /// `openssl verify -x509_strict` of a chain file (leaf, then intermediates) against the
    /// bundle; also checks there are at least two certificates.
    pub fn verify_chain(&self, chain: &Path) {
        let text = std::fs::read_to_string(chain).expect("chain");
        let certs = hsm_ca::ca::certificates_from_pem(text.as_bytes()).expect("pem");
        assert!(
            certs.len() >= 2,
            "the chain has the leaf and the intermediate"
        );
        let dir = chain.parent().expect("dir");
        let leaf = dir.join("verify-leaf.pem");
        let rest = dir.join("verify-untrusted.pem");
        std::fs::write(&leaf, hsm_ca::ca::certificate_pem(&certs[0])).expect("leaf");
        let untrusted: String = certs[1..]
            .iter()
            .map(|c| hsm_ca::ca::certificate_pem(c))
            .collect();
        std::fs::write(&rest, untrusted).expect("untrusted");
        let (ok, out) = super::openssl_verify(&self.bundle, Some(&rest), &leaf);
        assert!(ok, "openssl verify: {out}");
    }

    /// The serials (lowercase hex) in the active intermediate's CRL, as served.
    pub async fn crl_serials(&self) -> Vec<String> {
        let issuer = self.app.server.view.load();
        let fp = hsm_ca::ca::fingerprint_id(issuer.ca.cert_der());
        let reply = AdminClient::new(
            self.app.server.admin_addr.expect("admin"),
            &self.app.roots,
            None,
        )
        .get(&format!("/crl/{fp}.crl"))
        .await;
        assert_eq!(reply.status, 200);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("crl.der");
        std::fs::write(&path, &reply.body).expect("crl");
        let out = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&path)
            .output()
            .expect("openssl crl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
            .map(|s| s.trim().to_lowercase())
            .collect()
    }
}

/// The serial (lowercase hex, as the CRL prints it) of the first certificate in a PEM file.
pub fn serial_of(pem_file: &Path) -> String {
    let text = std::fs::read_to_string(pem_file).expect("cert");
    let der = hsm_ca::ca::certificates_from_pem(text.as_bytes()).expect("pem");
    let cert = hsm_ca::ca::inspect::parse_certificate(&der[0]).expect("cert");
    hsm_ca::ca::inspect::serial_hex(cert.raw_serial())
}
