//! The ACME front door over real TLS on 127.0.0.1 with the CA keys in SoftHSM: protocol
//! refusals with a raw JWS client (each answer a problem document with a fresh nonce), and
//! the real clients from Debian — lego and certbot — getting, renewing and revoking
//! certificates with External Account Binding through http-01, tls-alpn-01 and dns-01,
//! every chain checked with `openssl verify -x509_strict` and every revocation in the CRL.

#[path = "acme/clients.rs"]
mod clients;
#[path = "acme/raw.rs"]
mod raw;
mod support;

use std::time::Duration;

use raw::{b64, AccountKey, Client};
use serde_json::{json, Value};
use support::acme::AcmeFixture;

fn client(f: &AcmeFixture) -> Client {
    Client::new(f.app.server.acme_addr.expect("acme listens"), &f.app.roots)
}

/// Polls an authorization until it leaves `pending`; its final object.
async fn settled(c: &Client, key: &AccountKey, kid: &str, authz: &str) -> Value {
    for _ in 0..100 {
        let a = c.post(key, Some(kid), authz, None).await;
        assert_eq!(a.status, 200);
        let v = a.json();
        if v["status"] != "pending" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the authorization stayed pending");
}

/// A CSR (DER, base64url) for `names` with a fresh P-256 key.
fn csr(names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    b64(params.serialize_request(&key).expect("csr").der())
}

fn challenge<'a>(authz: &'a Value, kind: &str) -> &'a Value {
    authz["challenges"]
        .as_array()
        .expect("challenges")
        .iter()
        .find(|c| c["type"] == kind)
        .expect("challenge offered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_are_problem_documents_with_a_fresh_nonce() {
    let f = AcmeFixture::start(None).await;
    let c = client(&f);
    let (kid, hmac) = f
        .eab(json!({"dns_suffixes": ["mesh.test"], "wildcards": false}))
        .await;

    let dir = c.call("GET", "/acme/directory", None).await;
    assert_eq!(dir.status, 200);
    assert_eq!(dir.json()["meta"]["externalAccountRequired"], true);
    assert_eq!(dir.json()["newAccount"], c.url("/acme/new-account"));

    let key = AccountKey::generate();
    // No binding: refused, with a nonce to retry with.
    let a = c
        .post(
            &key,
            None,
            "/acme/new-account",
            Some(&json!({"termsOfServiceAgreed": true})),
        )
        .await;
    assert_eq!(
        (a.status, a.problem().as_str()),
        (401, "externalAccountRequired")
    );
    assert_eq!(
        a.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    assert!(!a.nonce().is_empty());
    // A binding MACed with another key.
    let wrong = raw::eab(
        &kid,
        &b64(&[7u8; 32]),
        &key.jwk(),
        &c.url("/acme/new-account"),
    );
    let a = c
        .post(
            &key,
            None,
            "/acme/new-account",
            Some(&json!({"externalAccountBinding": wrong})),
        )
        .await;
    assert_eq!(a.problem(), "unauthorized", "{}", a.json());
    let account = c.register(&key, &kid, &hmac).await;
    // The same key again finds the same account.
    let again = c
        .post(
            &key,
            None,
            "/acme/new-account",
            Some(&json!({"onlyReturnExisting": true})),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("location").as_deref(), Some(account.as_str()));

    // A nonce works once; the refusal carries a new one that works.
    let nonce = c.nonce().await;
    let header = json!({"alg": "ES256", "nonce": nonce, "url": account, "kid": account});
    let first = c
        .call("POST", &c.path_of(&account), Some(&key.sign(&header, None)))
        .await;
    assert_eq!(first.status, 200);
    let replay = c
        .call("POST", &c.path_of(&account), Some(&key.sign(&header, None)))
        .await;
    assert_eq!(
        (replay.status, replay.problem().as_str()),
        (400, "badNonce")
    );
    let header = json!({"alg": "ES256", "nonce": replay.nonce(), "url": account, "kid": account});
    let retried = c
        .call("POST", &c.path_of(&account), Some(&key.sign(&header, None)))
        .await;
    assert_eq!(retried.status, 200);
    let header =
        json!({"alg": "ES256", "nonce": "bm90LWEtbm9uY2U", "url": account, "kid": account});
    let bogus = c
        .call("POST", &c.path_of(&account), Some(&key.sign(&header, None)))
        .await;
    assert_eq!(bogus.problem(), "badNonce");

    // The url header must be the URL posted to.
    let header = json!({"alg": "ES256", "nonce": c.nonce().await, "url": c.url("/acme/new-order"), "kid": account});
    let a = c
        .call("POST", &c.path_of(&account), Some(&key.sign(&header, None)))
        .await;
    assert_eq!(a.problem(), "unauthorized");
    // An account that does not exist.
    let a = c
        .post(
            &key,
            Some(&c.url("/acme/acct/0000")),
            "/acme/new-order",
            Some(&json!({})),
        )
        .await;
    assert_eq!(a.problem(), "accountDoesNotExist");
    // A signature by another key.
    let header = json!({"alg": "ES256", "nonce": c.nonce().await, "url": account, "kid": account});
    let a = c
        .call(
            "POST",
            &c.path_of(&account),
            Some(&AccountKey::generate().sign(&header, None)),
        )
        .await;
    assert_eq!((a.status, a.problem().as_str()), (400, "malformed"));

    // Names outside the key's policy.
    for name in ["web.other.test", "*.mesh.test"] {
        let a = c
            .post(
                &key,
                Some(&account),
                "/acme/new-order",
                Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
            )
            .await;
        assert_eq!(a.problem(), "rejectedIdentifier", "{name}: {}", a.json());
    }
    // Finalizing before the authorizations are valid.
    let order = c
        .post(&key, Some(&account), "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "web.mesh.test"}], "notBefore": ""})))
        .await;
    assert_eq!(order.status, 201, "{}", order.json());
    let finalize = c.path_of(order.json()["finalize"].as_str().expect("finalize"));
    let a = c
        .post(
            &key,
            Some(&account),
            &finalize,
            Some(&json!({"csr": csr(&["web.mesh.test"])})),
        )
        .await;
    assert_eq!((a.status, a.problem().as_str()), (403, "orderNotReady"));
    assert!(!a.nonce().is_empty());

    // A key revoked through the admin API: its account orders nothing more.
    let reply = f
        .admin()
        .call("DELETE", &format!("/v1/acme/eab/{kid}"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let a = c
        .post(
            &key,
            Some(&account),
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "web.mesh.test"}]})),
        )
        .await;
    assert_eq!(a.problem(), "unauthorized");
    // The MAC key never shows in the list.
    let list = f.admin().get("/v1/acme/eab").await;
    assert!(!list.text().contains(&hmac), "{}", list.text());
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_validation_makes_the_challenge_and_the_order_invalid() {
    let f = AcmeFixture::start(None).await;
    let c = client(&f);
    let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let key = AccountKey::generate();
    let account = c.register(&key, &kid, &hmac).await;
    let order = c
        .post(
            &key,
            Some(&account),
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "gone.mesh.test"}]})),
        )
        .await
        .json();
    let authz = c.path_of(order["authorizations"][0].as_str().expect("authz"));
    let a = c.post(&key, Some(&account), &authz, None).await.json();
    // Nobody put the token on the responder: it answers something else.
    let url = c.path_of(challenge(&a, "http-01")["url"].as_str().expect("url"));
    let started = c.post(&key, Some(&account), &url, Some(&json!({}))).await;
    assert_eq!(started.status, 200);
    assert!(started
        .header("link")
        .unwrap_or_default()
        .contains("rel=\"up\""));
    let done = settled(&c, &key, &account, &authz).await;
    assert_eq!(done["status"], "invalid");
    let failed = challenge(&done, "http-01");
    assert_eq!(failed["status"], "invalid");
    assert_eq!(
        failed["error"]["type"],
        "urn:ietf:params:acme:error:incorrectResponse"
    );
    let order_path = c.path_of(
        order["finalize"]
            .as_str()
            .expect("f")
            .trim_end_matches("/finalize"),
    );
    let o = c.post(&key, Some(&account), &order_path, None).await.json();
    assert_eq!(o["status"], "invalid");
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_order_refuses_a_mismatched_csr_then_issues_and_revokes() {
    let f = AcmeFixture::start(None).await;
    let c = client(&f);
    let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let key = AccountKey::generate();
    let account = c.register(&key, &kid, &hmac).await;
    let order = c
        .post(
            &key,
            Some(&account),
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": "api.mesh.test"}]})),
        )
        .await;
    let order_url = order.header("location").expect("order location");
    let order = order.json();
    let authz = c.path_of(order["authorizations"][0].as_str().expect("authz"));
    let a = c.post(&key, Some(&account), &authz, None).await.json();
    let http01 = challenge(&a, "http-01");
    let token = http01["token"].as_str().expect("token");
    f.dns
        .add_http01(token, &format!("{token}.{}", key.thumbprint()));
    let url = c.path_of(http01["url"].as_str().expect("url"));
    c.post(&key, Some(&account), &url, Some(&json!({}))).await;
    assert_eq!(settled(&c, &key, &account, &authz).await["status"], "valid");
    let o = c
        .post(&key, Some(&account), &c.path_of(&order_url), None)
        .await
        .json();
    assert_eq!(o["status"], "ready");

    let finalize = c.path_of(order["finalize"].as_str().expect("finalize"));
    for names in [
        &["other.mesh.test"][..],
        &["api.mesh.test", "extra.mesh.test"][..],
    ] {
        let a = c
            .post(
                &key,
                Some(&account),
                &finalize,
                Some(&json!({"csr": csr(names)})),
            )
            .await;
        assert_eq!(a.problem(), "badCSR", "{names:?}: {}", a.json());
    }
    let done = c
        .post(
            &key,
            Some(&account),
            &finalize,
            Some(&json!({"csr": csr(&["api.mesh.test"])})),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.json());
    assert_eq!(done.json()["status"], "valid");
    let cert_url = c.path_of(done.json()["certificate"].as_str().expect("certificate"));
    let cert = c.post(&key, Some(&account), &cert_url, None).await;
    assert_eq!(
        cert.header("content-type").as_deref(),
        Some("application/pem-certificate-chain")
    );
    let chain = f.app.path("raw-chain.pem");
    std::fs::write(&chain, &cert.body).expect("chain");
    f.verify_chain(&chain);
    let leaf = hsm_ca::ca::certificates_from_pem(&cert.body)
        .expect("pem")
        .remove(0);
    let parsed = hsm_ca::ca::inspect::parse_certificate(&leaf).expect("leaf");
    let eku = parsed
        .extended_key_usage()
        .expect("eku")
        .expect("eku")
        .value;
    assert!(eku.server_auth && !eku.client_auth);

    // Renewal information (RFC 9773): the directory names it; the window lies ahead, inside
    // the certificate's life; an unknown certID is not found.
    let dir = c.call("GET", "/acme/directory", None).await.json();
    assert_eq!(dir["renewalInfo"], c.url("/acme/renewal-info"));
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("authority key identifier");
    let cert_id = format!("{}.{}", b64(&aki), b64(parsed.raw_serial()));
    let info_path = format!("/acme/renewal-info/{cert_id}");
    let window = |a: &raw::Answer| {
        let w = &a.json()["suggestedWindow"];
        let at =
            |k: &str| hsm_ca::clock::parse_rfc3339(w[k].as_str().expect("time")).expect("RFC 3339");
        (at("start"), at("end"))
    };
    let info = c.call("GET", &info_path, None).await;
    assert_eq!(info.status, 200, "{}", info.json());
    assert!(info.header("retry-after").is_some());
    let (start, end) = window(&info);
    let now = time::OffsetDateTime::now_utc();
    assert!(now < start && start < end, "{}", info.json());
    assert!(end < parsed.validity().not_after.to_datetime());
    let other = format!("{}.{}", b64(&[1, 2, 3]), b64(parsed.raw_serial()));
    let a = c
        .call("GET", &format!("/acme/renewal-info/{other}"), None)
        .await;
    assert_eq!(a.status, 404, "{}", a.json());
    let a = c
        .call("GET", "/acme/renewal-info/not-a-cert-id", None)
        .await;
    assert_eq!(a.problem(), "malformed");
    // A new order may say which certificate it replaces, and only one of its own account.
    let ids = json!([{"type": "dns", "value": "api.mesh.test"}]);
    let a = c
        .post(
            &key,
            Some(&account),
            "/acme/new-order",
            Some(&json!({"identifiers": ids, "replaces": cert_id})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json());
    let stranger = AccountKey::generate();
    let (kid2, hmac2) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let stranger_account = c.register(&stranger, &kid2, &hmac2).await;
    let a = c
        .post(
            &stranger,
            Some(&stranger_account),
            "/acme/new-order",
            Some(&json!({"identifiers": ids, "replaces": cert_id})),
        )
        .await;
    assert_eq!(a.problem(), "unauthorized", "{}", a.json());

    // Revoked by the account; the CRL lists it; a second revocation is refused.
    let body = json!({"certificate": b64(&leaf), "reason": 4});
    let a = c
        .post(&key, Some(&account), "/acme/revoke-cert", Some(&body))
        .await;
    assert_eq!(a.status, 200, "{}", a.json());
    let serial = hsm_ca::ca::inspect::serial_hex(parsed.raw_serial());
    assert!(f.crl_serials().await.contains(&serial));
    // A revoked certificate's window lies in the past: renew now.
    let (_, end) = window(&c.call("GET", &info_path, None).await);
    assert!(end < time::OffsetDateTime::now_utc());
    let a = c
        .post(&key, Some(&account), "/acme/revoke-cert", Some(&body))
        .await;
    assert_eq!(a.problem(), "alreadyRevoked");
    // The account deactivates itself and can do nothing more.
    let a = c
        .post(
            &key,
            Some(&account),
            &c.path_of(&account),
            Some(&json!({"status": "deactivated"})),
        )
        .await;
    assert_eq!(a.json()["status"], "deactivated");
    let a = c
        .post(&key, Some(&account), &c.path_of(&account), None)
        .await;
    assert_eq!(a.problem(), "unauthorized");
    f.app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_two_roots_are_served_a_cross_signed_alternate_chain_is_offered() {
    let f = AcmeFixture::start(None).await;
    let admin = f.admin();
    let c = client(&f);
    let (kid, hmac) = f.eab(json!({"dns_suffixes": ["mesh.test"]})).await;
    let key = AccountKey::generate();
    let account = c.register(&key, &kid, &hmac).await;
    // One certificate under the only root: nothing else to offer.
    let first = issue_for(&f, &c, &key, &account, "one.mesh.test").await;
    assert!(first.header("link").unwrap_or_default().contains("index"));
    assert!(!first
        .headers
        .get_all("link")
        .iter()
        .any(|l| l.to_str().unwrap_or_default().contains("alternate")));

    // Root rotation: a second root (its key in the device), cross-signed by the first, and an
    // intermediate under it made active.
    let root1 = hsm_ca::ca::fingerprint_id(&f.app.roots[0]);
    let mut cfg2 = f.app.config.clone();
    cfg2.root.common_name = "hsm-ca test root 2".into();
    let (_, root2) = tokio::task::block_in_place(|| {
        hsm_ca::authority::create_root(&f.app.store, &cfg2, time::OffsetDateTime::now_utc())
    })
    .expect("second root");
    let root2_fp = hsm_ca::ca::fingerprint_id(&root2.der);
    let added = admin
        .post("/v1/roots", json!({"certificate_pem": root2.pem}))
        .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let cross = admin
        .post(
            &format!("/v1/roots/{root2_fp}/cross-sign"),
            json!({"by": root1}),
        )
        .await;
    assert_eq!(cross.status, 200, "{}", cross.text());
    let csr = admin.post("/v1/intermediates", json!({})).await.json();
    let signed = admin
        .post(
            "/v1/intermediates/sign",
            json!({"csr_pem": csr["csr_pem"], "root": root2_fp}),
        )
        .await
        .json();
    let installed = admin
        .post(
            "/v1/intermediates/install",
            json!({"certificate_pem": signed["certificate_pem"]}),
        )
        .await;
    assert_eq!(installed.status, 200, "{}", installed.text());
    let key_id = csr["key_id"].as_str().expect("key id");
    let activated = admin
        .post(&format!("/v1/intermediates/{key_id}/activate"), json!({}))
        .await;
    assert_eq!(activated.status, 200, "{}", activated.text());

    // A certificate under the new root (the listener's own certificate now comes from it
    // too): its chain verifies against the new root; the alternate, ending in the
    // cross-certificate, against the old root alone.
    let c = Client::new(
        f.app.server.acme_addr.expect("acme listens"),
        &[f.app.roots[0].clone(), root2.der.clone()],
    );
    let second = issue_for(&f, &c, &key, &account, "two.mesh.test").await;
    let link = second
        .headers
        .get_all("link")
        .iter()
        .filter_map(|l| l.to_str().ok())
        .find(|l| l.contains("rel=\"alternate\""))
        .expect("an alternate chain is linked")
        .to_string();
    let alt_url = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("url")
        .to_string();
    let stored = hsm_ca::ca::certificates_from_pem(&second.body).expect("pem");
    assert_eq!(stored.len(), 2, "leaf, intermediate");
    let (new_root, leaf, untrusted) = (
        f.app.path("new-root.pem"),
        f.app.path("alt-leaf.pem"),
        f.app.path("alt-untrusted.pem"),
    );
    std::fs::write(&new_root, &root2.pem).expect("root");
    std::fs::write(&leaf, hsm_ca::ca::certificate_pem(&stored[0])).expect("leaf");
    std::fs::write(&untrusted, hsm_ca::ca::certificate_pem(&stored[1])).expect("untrusted");
    let (ok, out) = support::openssl_verify(&new_root, Some(&untrusted), &leaf);
    assert!(ok, "{out}");
    let alternate = c
        .post(&key, Some(&account), &c.path_of(&alt_url), None)
        .await;
    assert_eq!(
        alternate.status,
        200,
        "{}",
        String::from_utf8_lossy(&alternate.body)
    );
    let certs = hsm_ca::ca::certificates_from_pem(&alternate.body).expect("pem");
    assert_eq!(certs.len(), 3, "leaf, intermediate, cross-certificate");
    assert_eq!(certs[..2], stored[..], "the same leaf and intermediate");
    let old_root = f.app.path("old-root.pem");
    std::fs::write(&old_root, hsm_ca::ca::certificate_pem(&f.app.roots[0])).expect("root");
    std::fs::write(
        &untrusted,
        format!(
            "{}{}",
            hsm_ca::ca::certificate_pem(&certs[1]),
            hsm_ca::ca::certificate_pem(&certs[2])
        ),
    )
    .expect("untrusted");
    let (ok, out) = support::openssl_verify(&old_root, Some(&untrusted), &leaf);
    assert!(ok, "{out}");
    // The stored chain alone does not reach the old root.
    std::fs::write(&untrusted, hsm_ca::ca::certificate_pem(&certs[1])).expect("untrusted");
    let (ok, _) = support::openssl_verify(&old_root, Some(&untrusted), &leaf);
    assert!(!ok);
    let missing = format!("{}/9", c.path_of(&alt_url).rsplit_once('/').expect("n").0);
    let none = c.post(&key, Some(&account), &missing, None).await;
    assert_eq!(none.status, 404);
    f.app.server.shutdown().await;
}

/// Orders `name`, proves it over http-01 through the mock server, finalizes and downloads:
/// the download answer.
async fn issue_for(
    f: &AcmeFixture,
    c: &Client,
    key: &AccountKey,
    account: &str,
    name: &str,
) -> raw::Answer {
    let order = c
        .post(
            key,
            Some(account),
            "/acme/new-order",
            Some(&json!({"identifiers": [{"type": "dns", "value": name}]})),
        )
        .await
        .json();
    let authz = c.path_of(order["authorizations"][0].as_str().expect("authz"));
    let a = c.post(key, Some(account), &authz, None).await.json();
    let http01 = challenge(&a, "http-01");
    let token = http01["token"].as_str().expect("token");
    f.dns
        .add_http01(token, &format!("{token}.{}", key.thumbprint()));
    let url = c.path_of(http01["url"].as_str().expect("url"));
    c.post(key, Some(account), &url, Some(&json!({}))).await;
    assert_eq!(settled(c, key, account, &authz).await["status"], "valid");
    let finalize = c.path_of(order["finalize"].as_str().expect("finalize"));
    let done = c
        .post(
            key,
            Some(account),
            &finalize,
            Some(&json!({"csr": csr(&[name])})),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.json());
    let cert_url = c.path_of(done.json()["certificate"].as_str().expect("certificate"));
    c.post(key, Some(account), &cert_url, None).await
}
