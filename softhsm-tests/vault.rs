//! The Vault-compatible front door over real TLS on 127.0.0.1, CA keys in SoftHSM: the exact
//! requests SPIRE's `vault` UpstreamAuthority sends (restated from its source, below) and the
//! answers it parses, paths and methods as Vault takes them, tokens shared by two nodes on one
//! PostgreSQL database, and `sys/health` following the device. Every chain is checked with
//! `openssl verify -x509_strict`. cert-manager's requests are in `vault_cert_manager.rs`; the
//! real Vault client library, hvac, drives the same appliance in `vault_hvac.rs`.
//!
//! What SPIRE sends, read from its source:
//! - SPIRE (pkg/server/plugin/upstreamauthority/vault/vault_client.go): the Go Vault client's
//!   `Logical().Write`, i.e. `PUT`, with `X-Vault-Request: true` and, once logged in,
//!   `X-Vault-Token`. Logins: `auth/<cert mount>/login` `{"name": <role>}` (the client
//!   certificate does the rest), `auth/<approle mount>/login` `{"role_id", "secret_id"}`,
//!   `auth/<k8s mount>/login` `{"role", "jwt"}`. Minting: path `/<pki>/root/sign-intermediate`
//!   (a leading slash, so `/v1//pki/...` on the wire) with `common_name`, `organization` and
//!   `country` from the CSR's subject (comma-joined), `csr` (PEM) and `ttl` (seconds as a
//!   string, or empty). It reads `certificate`, `issuing_ca` and the `ca_chain` array, and
//!   takes the upstream root from the last `ca_chain` element. The token renewer calls
//!   `PUT auth/token/renew-self {"increment": <seconds>}`; token auth calls `GET
//!   auth/token/lookup-self` and reads `id`, `renewable` and `ttl`.

mod support;

use hsm_ca::ca::inspect::parse_certificate;
use serde_json::{json, Value};
use support::appliance::Appliance;
use support::http::AdminClient;
use support::vault::*;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// SPIRE's CA CSR: subject C=US, O=SPIFFE (its default `ca_subject`), URI SAN of the trust
/// domain.
fn spire_csr(td: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CountryName, "US");
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "SPIFFE");
    let uri = format!("spiffe://{td}");
    p.subject_alt_names
        .push(rcgen::SanType::URI(uri.as_str().try_into().expect("uri")));
    let pem = p.serialize_request(&key).expect("csr").pem().expect("pem");
    (pem, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spire_upstream_requests_get_an_intermediate_constrained_to_its_trust_domain() {
    let app = start().await;
    let spire = client(&app, Some(SPIRE_SERVER));
    let root_pem = pem_of(&app.roots[0]);

    // Login by certificate, as the plug-in's cert_auth does.
    let login = go_client(
        &spire,
        "PUT",
        "/v1/auth/cert/login",
        None,
        Some(json!({"name": "spire"})),
    )
    .await;
    let token = token_of(&login);
    assert_eq!(login.json()["auth"]["policies"], json!(["spire-upstream"]));
    assert!(login.json()["auth"]["renewable"]
        .as_bool()
        .expect("renewable"));

    // Token auth's lookup-self and the renewer's renew-self.
    let me = go_client(
        &spire,
        "GET",
        "/v1/auth/token/lookup-self",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["data"]["id"], json!(token));
    assert!(me.json()["data"]["ttl"].as_i64().expect("ttl") > 500);
    let renewed = go_client(
        &spire,
        "PUT",
        "/v1/auth/token/renew-self",
        Some(&token),
        Some(json!({"increment": 600})),
    )
    .await;
    assert_eq!(token_of(&renewed), token);

    // MintX509CA: PUT /v1//pki/root/sign-intermediate with the CSR's subject, ttl in seconds.
    let (csr_pem, spire_key) = spire_csr(SPIRE_TD);
    let body = json!({
        "common_name": "",
        "organization": "SPIFFE",
        "country": "US",
        "csr": csr_pem,
        "ttl": "1000000",
    });
    let signed = go_client(
        &spire,
        "PUT",
        "/v1//pki/root/sign-intermediate",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    let data = &signed.json()["data"];
    let cert_pem = data["certificate"]
        .as_str()
        .expect("certificate")
        .to_string();
    let issuing = data["issuing_ca"].as_str().expect("issuing_ca");
    let chain = data["ca_chain"].as_array().expect("ca_chain array");
    // The upstream root SPIRE takes: the last ca_chain element, our root.
    assert_eq!(
        chain.last().and_then(Value::as_str),
        Some(root_pem.as_str())
    );
    assert_eq!(issuing, root_pem);
    assert!(data["serial_number"]
        .as_str()
        .expect("serial")
        .contains(':'));

    let der = first_der(&cert_pem);
    let cert = parse_certificate(&der).expect("parse");
    let bc = cert
        .basic_constraints()
        .expect("bc")
        .expect("present")
        .value;
    assert!(bc.ca && bc.path_len_constraint == Some(0), "{bc:?}");
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(
        life <= 172_800 + 300,
        "ttl capped at the grant's max: {life}s"
    );
    let mut uri_sans = Vec::new();
    let mut constrained = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        uri_sans.push(u.to_string());
                    }
                }
            }
            ParsedExtension::NameConstraints(nc) => {
                constrained = ext.critical && format!("{nc:?}").contains(SPIRE_TD);
            }
            _ => {}
        }
    }
    assert_eq!(uri_sans, vec![format!("spiffe://{SPIRE_TD}")]);
    assert!(constrained, "critical name constraint to {SPIRE_TD}");
    let dir = app.dir.path();
    let (ok, out) = openssl_ok(dir, &root_pem, &[], &cert_pem);
    assert!(ok, "{out}");

    // SPIRE signs its workloads with the new CA: in-domain verifies, out-of-domain does not.
    let inside = leaf_signed_by(
        &cert_pem,
        &spire_key,
        &format!("spiffe://{SPIRE_TD}/workload"),
    );
    let (ok, out) = openssl_ok(dir, &root_pem, &[&cert_pem], &inside);
    assert!(ok, "an SVID in the trust domain verifies: {out}");
    let outside = leaf_signed_by(
        &cert_pem,
        &spire_key,
        "spiffe://cluster.local/ns/default/sa/web",
    );
    let (ok, out) = openssl_ok(dir, &root_pem, &[&cert_pem], &outside);
    assert!(!ok, "the name constraint refuses another trust domain");
    assert!(
        out.contains("name constraint") || out.contains("permitted"),
        "{out}"
    );

    // A CSR for another trust domain is refused, and so is a token without the grant.
    let (other, _) = spire_csr("other.example.org");
    let refused = go_client(
        &spire,
        "PUT",
        "/v1/pki/root/sign-intermediate",
        Some(&token),
        Some(json!({"csr": other, "ttl": ""})),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        errors(&refused).contains("spiffe://other.example.org"),
        "{}",
        refused.text()
    );
    let (_, cm_token) = kubernetes_login(&app).await;
    let cm = client(&app, None);
    let (csr_pem, _) = spire_csr(SPIRE_TD);
    let denied = go_client(
        &cm,
        "PUT",
        "/v1/pki/root/sign-intermediate",
        Some(&cm_token),
        Some(json!({"csr": csr_pem})),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["errors"], json!(["permission denied"]));

    // Another identity's certificate does not log in as the SPIRE role.
    let stranger = client(&app, Some("spiffe://cluster.local/ns/default/sa/web"));
    let wrong = go_client(
        &stranger,
        "PUT",
        "/v1/auth/cert/login",
        None,
        Some(json!({"name": "spire"})),
    )
    .await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    let anonymous = go_client(&cm, "PUT", "/v1/auth/cert/login", None, Some(json!({}))).await;
    assert_eq!(anonymous.status, 400, "{}", anonymous.text());
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paths_methods_and_reads_follow_vault() {
    let app = start().await;
    let c = client(&app, None);
    let root_pem = pem_of(&app.roots[0]);

    let ca = c.request("GET", "/v1/pki/ca/pem", &[], Vec::new()).await;
    assert_eq!(ca.status, 200);
    assert_eq!(ca.text(), pem_of(app.server.view.load().ca.cert_der()));
    let chain = c
        .request("GET", "/v1//pki/ca_chain/", &[], Vec::new())
        .await;
    assert_eq!(chain.status, 200);
    assert!(chain.text().ends_with(&root_pem), "{}", chain.text());
    let json_chain = c
        .request("GET", "/v1/pki/cert/ca_chain", &[], Vec::new())
        .await;
    assert_eq!(
        json_chain.json()["data"]["ca_chain"].as_str(),
        Some(chain.text().as_str())
    );
    let crl = c.request("GET", "/v1/pki/crl/pem", &[], Vec::new()).await;
    assert_eq!(crl.status, 200, "{}", crl.text());
    assert!(
        crl.text().starts_with("-----BEGIN X509 CRL-----"),
        "{}",
        crl.text()
    );

    let unknown = c.request("GET", "/v1/secret/data/x", &[], Vec::new()).await;
    // Vault's ACL answers a path no policy grants as it answers a missing token.
    assert_eq!(unknown.status, 403);
    assert_eq!(unknown.json()["errors"], json!(["permission denied"]));
    let get_sign = c
        .request("GET", "/v1/pki/sign/mesh-gateways", &[], Vec::new())
        .await;
    assert_eq!(get_sign.status, 403);
    let not_json = c
        .request("POST", "/v1/auth/approle/login", &[], b"role_id=x".to_vec())
        .await;
    assert_eq!(not_json.status, 400);
    // PUT and POST alike, with or without a trailing slash.
    for (method, path) in [
        ("PUT", "/v1/auth/approle/login"),
        ("POST", "/v1/auth//approle/login/"),
    ] {
        let r = c
            .request(
                method,
                path,
                &[("content-type", "application/json")],
                serde_json::to_vec(&json!({"role_id": APPROLE_ID, "secret_id": APPROLE_SECRET}))
                    .expect("json"),
            )
            .await;
        token_of(&r);
    }
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_minted_on_one_node_works_on_another_sharing_postgresql() {
    let cluster = tokio::task::spawn_blocking(support::postgres::PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&vault_config(), &settings).await;
    let two = one.second_node(&settings).await;
    let (_, token) = kubernetes_login(&one).await;
    let on_one = client(&one, None);
    let on_two = AdminClient::new(two.server.vault_addr.expect("vault"), &one.roots, None);
    let (csr_pem, _) = csr(None, &["b.mesh.example.com"], &[], &[], false);
    let body = json!({"csr": csr_pem, "alt_names": "b.mesh.example.com", "ttl": "1h"});
    let signed = go_client(
        &on_two,
        "POST",
        "/v1/pki/sign/mesh-gateways",
        Some(&token),
        Some(body.clone()),
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    // Revoked on the second node: refused on the first.
    let r = go_client(
        &on_two,
        "POST",
        "/v1/auth/token/revoke-self",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let refused = go_client(
        &on_one,
        "POST",
        "/v1/pki/sign/mesh-gateways",
        Some(&token),
        Some(body),
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    two.server.shutdown().await;
    one.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_says_sealed_while_the_device_is_unusable_and_recovers_by_itself() {
    let app = start().await;
    let c = client(&app, None);
    let (_, token) = kubernetes_login(&app).await;
    let (csr_pem, _) = csr(None, &["c.mesh.example.com"], &[], &[], false);
    let body = json!({"csr": csr_pem, "alt_names": "c.mesh.example.com", "ttl": "1h"});
    let sign = || {
        go_client(
            &c,
            "POST",
            "/v1/pki/sign/mesh-gateways",
            Some(&token),
            Some(body.clone()),
        )
    };

    // The token's PIN changes under the appliance: its device cannot sign.
    let pin = app.token.pin.expose().to_string();
    support::change_pin_from_outside(&app.token.label, &pin, "changed-1234");
    let refused = sign().await;
    assert!(matches!(refused.status, 500 | 503), "{}", refused.text());
    assert!(!refused.text().contains("changed-1234") && !refused.text().contains(&app.token.label));
    let health = go_client(&c, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["sealed"], json!(true));

    // The PIN is put back: unsealed and signing again, without a restart.
    support::change_pin_from_outside(&app.token.label, "changed-1234", &pin);
    let health = go_client(&c, "GET", "/v1/sys/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["sealed"], json!(false));
    let signed = sign().await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_client_ca_file_stops_the_start() {
    let config = vault_config().replace(
        "token_ttl_secs = 600\n",
        "token_ttl_secs = 600\nclient_ca_files = [\"spire-ca-missing.pem\"]\n",
    );
    let err = Appliance::try_start(&config)
        .await
        .err()
        .expect("refused to start");
    let text = err.to_string();
    assert!(
        text.starts_with("vault_api:") && text.contains("spire-ca-missing.pem"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_from_a_configured_client_ca_logs_in_by_its_common_name() {
    // The SPIRE servers' own CA, outside the appliance's trust bundle.
    let ca_dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "SPIRE servers' CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let ca_file = ca_dir.path().join("spire-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write");
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "spire-server");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&key, &issuer).expect("leaf");

    let config = vault_config()
        .replace(
            "token_ttl_secs = 600\n",
            &format!(
                "token_ttl_secs = 600\nclient_ca_files = [{:?}]\n",
                ca_file.display().to_string()
            ),
        )
        .replace(
            &format!("identities = [\"{SPIRE_SERVER}\"]"),
            &format!("identities = [\"{SPIRE_SERVER}\", \"CN=spire-server\"]"),
        );
    let app = Appliance::start(&config).await;
    let spire = AdminClient::new(
        app.server.vault_addr.expect("vault"),
        &app.roots,
        Some((&[leaf.der().to_vec()], &key.serialize_der())),
    );
    let login = go_client(
        &spire,
        "PUT",
        "/v1/auth/cert/login",
        None,
        Some(json!({"name": "spire"})),
    )
    .await;
    token_of(&login);
    assert_eq!(login.json()["auth"]["policies"], json!(["spire-upstream"]));
    assert_eq!(
        login.json()["auth"]["metadata"]["caller"],
        json!("CN=spire-server")
    );
    app.server.shutdown().await;
}
