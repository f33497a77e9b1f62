//! istiod with a plug-in CA certificate from hsm-ca (Istio's `cacerts` secret): istiod's
//! administrator's CSR signed by the online root through the admin API, or by the offline root
//! at a ceremony; `hsm-ca cacerts` lays out the files and prints the kubectl line; a workload
//! certificate that istiod's key signs then verifies against `root-cert.pem` with
//! `cert-chain.pem` in `openssl verify -x509_strict`. The procedure is
//! `ops/runbooks/istiod-plugin-ca.md`.

mod support;

use std::path::Path;

use serde_json::json;
use support::appliance::Appliance;
use support::http::AdminClient;
use support::vault::{client_certificate, leaf_signed_by, openssl_ok};

const OPERATOR: &str = "spiffe://cluster.local/ns/hsm-ca/sa/operator";

/// istiod's administrator makes the key and CSR; the key never leaves their machine.
fn istiod_csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Istio");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "istiod intermediate");
    let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
    (csr, key)
}

/// Runs `hsm-ca cacerts` for istiod's intermediate `cert_file` into `<dir>/cacerts`, checks the
/// files and the kubectl line, and has istiod's key sign a workload certificate that openssl
/// verifies against `root-cert.pem` with `cert-chain.pem`.
fn istiod_issues_under_cacerts(
    dir: &Path,
    config: &Path,
    cert_file: &Path,
    istiod_key: &rcgen::KeyPair,
) {
    let out_dir = dir.join("cacerts");
    let run = support::run_in(
        dir,
        config,
        &[
            "cacerts",
            "--cert",
            cert_file.to_str().expect("path"),
            "--out-dir",
            out_dir.to_str().expect("path"),
            "--key",
            "/secure/istiod/ca-key.pem",
        ],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("kubectl create secret generic cacerts -n istio-system")
            && run
                .stdout
                .contains("--from-file=ca-key.pem=/secure/istiod/ca-key.pem"),
        "{}",
        run.stdout
    );
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).expect(name);
    let (ca_cert, cert_chain, root_cert) = (
        read("ca-cert.pem"),
        read("cert-chain.pem"),
        read("root-cert.pem"),
    );
    assert!(cert_chain.starts_with(&ca_cert) && cert_chain.ends_with(&root_cert));
    let leaf = leaf_signed_by(
        &ca_cert,
        istiod_key,
        "spiffe://cluster.local/ns/default/sa/web",
    );
    let (ok, out) = openssl_ok(dir, &root_cert, &[&cert_chain], &leaf);
    assert!(ok, "{out}");
}

#[test]
fn istiod_plugin_cacerts_from_an_offline_ceremony_verify_a_leaf_istiod_issues() {
    let env = support::CliEnv::new("");
    let out = env.ceremony(&["init-root", "--out-dir", "media", "--yes"]);
    assert!(out.ok, "{out:?}");
    let (csr_pem, istiod_key) = istiod_csr();
    std::fs::write(env.path("istiod.csr"), csr_pem).expect("csr");
    let out = env.ceremony(&[
        "sign-intermediate",
        "--csr",
        "istiod.csr",
        "--out-dir",
        "istiod",
        "--yes",
    ]);
    assert!(out.ok, "{out:?}");
    istiod_issues_under_cacerts(
        env.dir.path(),
        &env.path("hsm-ca.toml"),
        &env.path("istiod/intermediate-cert.pem"),
        &istiod_key,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn istiod_plugin_cacerts_from_the_online_root_verify_a_leaf_istiod_issues() {
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ndevelopment_shared_ca = true\n\
         [[admin.users]]\nidentity = \"{OPERATOR}\"\nroles = [\"operator\"]\n"
    );
    let app = Appliance::start(&extra).await;
    let (chain, key) = client_certificate(&app, OPERATOR);
    let admin = AdminClient::new(
        app.server.admin_addr.expect("admin"),
        &app.roots,
        Some((&chain, &key)),
    );
    let (csr_pem, istiod_key) = istiod_csr();
    let signed = admin
        .post("/v1/intermediates/sign", json!({ "csr_pem": csr_pem }))
        .await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    let cert_file = app.path("istiod-ca.pem");
    std::fs::write(
        &cert_file,
        signed.json()["certificate_pem"].as_str().expect("pem"),
    )
    .expect("write");
    istiod_issues_under_cacerts(
        app.dir.path(),
        &app.path("hsm-ca.toml"),
        &cert_file,
        &istiod_key,
    );

    // A certificate that is not a CA, or not from the bundle, is refused.
    let leaf = leaf_signed_by(
        &std::fs::read_to_string(app.path("cacerts/ca-cert.pem")).expect("ca-cert.pem"),
        &istiod_key,
        "spiffe://cluster.local/ns/default/sa/web",
    );
    std::fs::write(&cert_file, &leaf).expect("write");
    let run = support::run_in(
        app.dir.path(),
        &app.path("hsm-ca.toml"),
        &[
            "cacerts",
            "--cert",
            cert_file.to_str().expect("path"),
            "--out-dir",
            "x",
        ],
    );
    assert!(
        !run.ok && run.stderr.contains("not a CA certificate"),
        "{}",
        run.stderr
    );
    app.server.shutdown().await;
}
