//! hvac, HashiCorp's Vault client library (Python, from PyPI, in a virtual environment made by
//! `ops/hvac-venv.sh`), against a dev appliance's Vault front door over real TLS: logins by
//! cert, kubernetes and approle, token lookup, renewal and revocation, an intermediate for
//! SPIRE and leaves through `sign/<role>`, the CA and CRL reads, and refusals that hvac turns
//! into the exceptions of Vault's status codes (`vault_hvac.py`). Every certificate hvac
//! received is then chain-verified with `openssl verify -x509_strict`.

mod support;

use std::process::Command;

use serde_json::Value;
use support::vault::*;

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hvac_logs_in_three_ways_signs_and_reads_through_the_vault_front_door() {
    let app = start().await;
    let dir = app.dir.path().to_path_buf();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let root_pem = hsm_ca::ca::certificate_pem(&app.roots[0]);
    let (chain, key) = client_certificate(&app, SPIRE_SERVER);
    let client_cert = write(
        "spire-client.pem",
        &chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>(),
    );
    let client_key = write("spire-client.key", &pem("PRIVATE KEY", &key));
    let (spire_csr, _) = csr(None, &[], &[&format!("spiffe://{SPIRE_TD}")], &[], false);
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
    let python = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ops/hvac-venv.sh"))
        .output()
        .expect("ops/hvac-venv.sh runs");
    assert!(
        python.status.success(),
        "hvac's virtual environment: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8(python.stdout).expect("path");
    let out_path = dir.join("hvac-out.json");
    let vault = app.server.vault_addr.expect("vault listens");
    let mut run = Command::new(python.trim());
    run.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/softhsm-tests/vault_hvac.py"
    ))
    .env("VAULT_ADDR", format!("https://localhost:{}", vault.port()))
    .env("VAULT_CACERT", write("vault-ca.pem", &root_pem))
    .env("CLIENT_CERT", &client_cert)
    .env("CLIENT_KEY", &client_key)
    .env(
        "K8S_JWT",
        write("jwt", &app.token_for("cert-manager", "cert-manager")),
    )
    .env("APPROLE_ID", APPROLE_ID)
    .env("APPROLE_SECRET_FILE", app.path("approle-ci.secret"))
    .env("SPIRE_CSR", write("spire.csr", &spire_csr))
    .env("GW_CSR", write("gw.csr", &gw_csr))
    .env("BAD_CSR", write("bad.csr", &bad_csr))
    .env("OUT", &out_path);
    let run = tokio::task::spawn_blocking(move || run.output())
        .await
        .expect("join")
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "hvac script failed:\n{stderr}");
    assert!(
        !stderr.contains(APPROLE_SECRET),
        "the secret id was printed"
    );
    let out: Value =
        serde_json::from_slice(&std::fs::read(&out_path).expect("output")).expect("json");

    // The intermediate SPIRE would get: chains to the root that is the last ca_chain element.
    let inter = &out["intermediate"];
    assert_eq!(
        inter["ca_chain"].as_array().and_then(|c| c.last()),
        Some(&Value::from(root_pem.clone()))
    );
    let (ok, text) = openssl_ok(
        &dir,
        &root_pem,
        &[],
        inter["certificate"].as_str().expect("cert"),
    );
    assert!(ok, "{text}");
    for leaf in [&out["leaf"], &out["approle_leaf"]] {
        let chain = leaf["ca_chain"].as_array().expect("ca_chain");
        let (ok, text) = openssl_ok(
            &dir,
            chain.last().and_then(Value::as_str).expect("root"),
            &[leaf["issuing_ca"].as_str().expect("issuing_ca")],
            leaf["certificate"].as_str().expect("certificate"),
        );
        assert!(ok, "{text}");
    }
    assert!(out["wrong_domain"]
        .as_str()
        .expect("msg")
        .contains("www.example.net"));
    assert!(out["no_grant"]
        .as_str()
        .expect("msg")
        .contains("permission denied"));
    assert!(out["bad_secret"]
        .as_str()
        .expect("msg")
        .contains("invalid role or secret ID"));
    assert_eq!(
        out["ca"].as_str(),
        Some(hsm_ca::ca::certificate_pem(app.server.view.load().ca.cert_der()).as_str())
    );
    assert!(out["ca_chain"]
        .as_str()
        .expect("chain")
        .ends_with(&root_pem));
    assert!(out["crl"]
        .as_str()
        .expect("crl")
        .starts_with("-----BEGIN X509 CRL-----"));
    app.server.shutdown().await;
}
