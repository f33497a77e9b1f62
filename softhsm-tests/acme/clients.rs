//! lego and certbot (Debian's packages) against the ACME front door, with the command lines
//! the README shows: EAB, http-01 on a chosen port, tls-alpn-01, dns-01 through the mock DNS
//! server (a wildcard with lego's `exec` provider, certbot's manual hook), renewal and
//! revocation. Each issued chain is verified with openssl; each revocation is in the CRL.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

use crate::support::acme::{free_port, serial_of, AcmeFixture};

fn run(mut cmd: Command) -> Output {
    let out = tokio::task::block_in_place(|| cmd.output()).expect("client runs");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `lego` with the CA, EAB and data folder set; `args` picks the challenge and the action.
fn lego(f: &AcmeFixture, data: &Path, kid: &str, hmac: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("lego");
    cmd.env("LEGO_CA_CERTIFICATES", &f.bundle)
        .args(["--accept-tos", "--server", &f.directory()])
        .arg("--path")
        .arg(data)
        .args([
            "--email",
            "ops@mesh.test",
            "--eab",
            "--kid",
            kid,
            "--hmac",
            hmac,
        ])
        .args(args);
    run(cmd)
}

/// A shell script at `path` (made executable).
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\nset -e\n{body}\n")).expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_gets_renews_and_revokes_over_http01_with_eab() {
    let http01 = free_port();
    let f = AcmeFixture::start(Some(http01)).await;
    let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let data = f.app.path("lego");
    let port = format!("127.0.0.1:{http01}");
    let http = ["--domains", "web.mesh.test", "--http", "--http.port", &port];
    lego(&f, &data, &kid, &hmac, &[&http[..], &["run"]].concat());
    let crt = data.join("certificates/web.mesh.test.crt");
    f.verify_chain(&crt);
    let first = serial_of(&crt);

    // The certificate lives a day: within lego's 30-day window, so it renews.
    lego(
        &f,
        &data,
        &kid,
        &hmac,
        &[&http[..], &["renew", "--days", "30", "--no-random-sleep"]].concat(),
    );
    f.verify_chain(&crt);
    let renewed = serial_of(&crt);
    assert_ne!(first, renewed, "renewal issued a new certificate");

    lego(
        &f,
        &data,
        &kid,
        &hmac,
        &[&http[..], &["revoke", "--keep", "--reason", "4"]].concat(),
    );
    assert!(f.crl_serials().await.contains(&renewed));
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_proves_control_with_tls_alpn01() {
    let f = AcmeFixture::start(None).await;
    let (kid, hmac) = f.eab(json!({"dns_names": ["gw.mesh.test"]})).await;
    let data = f.app.path("lego");
    let port = format!("127.0.0.1:{}", f.tls_alpn01);
    lego(
        &f,
        &data,
        &kid,
        &hmac,
        &[
            "--domains",
            "gw.mesh.test",
            "--tls",
            "--tls.port",
            &port,
            "run",
        ],
    );
    f.verify_chain(&data.join("certificates/gw.mesh.test.crt"));
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lego_gets_a_wildcard_over_dns01() {
    let f = AcmeFixture::start(None).await;
    let (kid, hmac) = f
        .eab(json!({"dns_suffixes": ["apps.mesh.test"], "wildcards": true}))
        .await;
    let data = f.app.path("lego");
    let hook = f.app.path("lego-dns.sh");
    let api = format!("http://127.0.0.1:{}", f.dns.management);
    script(
        &hook,
        &format!(
            r#"case "$1" in
present) curl -sf -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" {api}/set-txt ;;
cleanup) curl -sf -d "{{\"host\":\"$2\"}}" {api}/clear-txt ;;
esac"#
        ),
    );
    let resolver = format!("127.0.0.1:{}", f.dns.dns);
    let mut cmd = Command::new("lego");
    cmd.env("LEGO_CA_CERTIFICATES", &f.bundle)
        .env("EXEC_PATH", &hook)
        .env("EXEC_POLLING_INTERVAL", "1")
        .env("EXEC_PROPAGATION_TIMEOUT", "30")
        .args(["--accept-tos", "--server", &f.directory()])
        .arg("--path")
        .arg(&data)
        .args([
            "--email",
            "ops@mesh.test",
            "--eab",
            "--kid",
            &kid,
            "--hmac",
            &hmac,
        ])
        .args(["--domains", "*.apps.mesh.test", "--dns", "exec"])
        .args(["--dns.resolvers", &resolver, "--dns.disable-cp", "run"]);
    run(cmd);
    let crt = data.join("certificates/_.apps.mesh.test.crt");
    f.verify_chain(&crt);
    let text = std::fs::read_to_string(&crt).expect("crt");
    let der = hsm_ca::ca::certificates_from_pem(text.as_bytes()).expect("pem");
    let leaf = hsm_ca::ca::inspect::parse_certificate(&der[0]).expect("leaf");
    let san = format!("{:?}", leaf.subject_alternative_name().expect("san"));
    assert!(san.contains("*.apps.mesh.test"), "{san}");
    f.app.server.shutdown().await;
}

/// `certbot` with its folders under `dir` and the CA trusted through REQUESTS_CA_BUNDLE.
fn certbot(f: &AcmeFixture, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("certbot");
    cmd.env("REQUESTS_CA_BUNDLE", &f.bundle)
        .args(args)
        .args(["--non-interactive", "--server", &f.directory()])
        .arg("--config-dir")
        .arg(dir.join("config"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--logs-dir")
        .arg(dir.join("logs"));
    run(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_gets_over_standalone_http01_with_eab_and_revokes() {
    let http01 = free_port();
    let f = AcmeFixture::start(Some(http01)).await;
    // A base64url key may begin with "-", which certbot's option parser would take for an
    // option if it came as a separate argument: this run uses such a key.
    let mut tries = 0;
    let (kid, hmac) = loop {
        let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
        if hmac.starts_with('-') {
            break (kid, hmac);
        }
        tries += 1;
        assert!(tries < 2000, "no EAB key beginning with - in {tries} keys");
    };
    let dir = f.app.path("certbot");
    let port = http01.to_string();
    certbot(
        &f,
        &dir,
        &[
            "certonly",
            "--standalone",
            "--agree-tos",
            "-m",
            "ops@mesh.test",
            &format!("--eab-kid={kid}"),
            &format!("--eab-hmac-key={hmac}"),
            "--http-01-port",
            &port,
            "--http-01-address",
            "127.0.0.1",
            "-d",
            "host.mesh.test",
        ],
    );
    let live = dir.join("config/live/host.mesh.test");
    f.verify_chain(&live.join("fullchain.pem"));
    let serial = serial_of(&live.join("cert.pem"));
    let cert = live.join("cert.pem");
    certbot(
        &f,
        &dir,
        &[
            "revoke",
            "--cert-path",
            cert.to_str().expect("path"),
            "--reason",
            "superseded",
            "--no-delete-after-revoke",
        ],
    );
    assert!(f.crl_serials().await.contains(&serial));
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certbot_gets_over_manual_dns01_with_an_auth_hook() {
    let f = AcmeFixture::start(None).await;
    let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let dir = f.app.path("certbot");
    let hook = f.app.path("certbot-dns.sh");
    script(
        &hook,
        &format!(
            r#"curl -sf -d "{{\"host\":\"_acme-challenge.$CERTBOT_DOMAIN.\",\"value\":\"$CERTBOT_VALIDATION\"}}" http://127.0.0.1:{}/set-txt"#,
            f.dns.management
        ),
    );
    certbot(
        &f,
        &dir,
        &[
            "certonly",
            "--manual",
            "--preferred-challenges",
            "dns",
            "--manual-auth-hook",
            hook.to_str().expect("path"),
            "--agree-tos",
            "-m",
            "ops@mesh.test",
            &format!("--eab-kid={kid}"),
            &format!("--eab-hmac-key={hmac}"),
            "-d",
            "db.mesh.test",
        ],
    );
    f.verify_chain(&dir.join("config/live/db.mesh.test/fullchain.pem"));
    f.app.server.shutdown().await;
}
