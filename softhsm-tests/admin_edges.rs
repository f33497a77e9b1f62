//! The admin API's edges and the admin identity, over real mTLS on 127.0.0.1 with the CA in
//! SoftHSM: `/readyz` follows the device, a flood of unauthenticated calls costs a burst of
//! audit records, POSTs take only JSON, 405 and 413 are JSON errors, approvals carry a JSON
//! body, no front door issues an admin identity, and `serve` refuses admin identities a
//! workload certificate could carry.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use hsm_ca::client::{self, WorkloadKey};
use serde_json::json;
use support::appliance::Appliance;
use support::http::AdminClient;
use tonic::Code;

const ADMIN: &str = "spiffe://cluster.local/ns/hsm-ca/sa/admin";
const OFFICER_B: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-b";

fn admin_config(extra: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
{extra}

[[admin.users]]
identity = "{ADMIN}"
roles = ["auditor", "operator", "officer"]

[[admin.users]]
identity = "{OFFICER_B}"
roles = ["officer"]

[admin.approvals]
threshold = 2
"#
    )
}

const SHARED: &str = "development_shared_ca = true";

/// A client certificate for `id` from the active intermediate, as an admin client.
fn admin(app: &Appliance, id: &str) -> AdminClient {
    let (chain, key) = support::appliance::client_identity(&app.server.view, id);
    AdminClient::new(
        app.server.admin_addr.expect("admin"),
        &app.roots,
        Some((&chain, &key)),
    )
}

fn anonymous(app: &Appliance) -> AdminClient {
    AdminClient::new(app.server.admin_addr.expect("admin"), &app.roots, None)
}

async fn ask(
    app: &Appliance,
    id: &str,
    token: &str,
    impersonate: Option<&str>,
) -> Result<Vec<String>, (Code, String)> {
    let csr = client::workload_csr(WorkloadKey::P256, id).expect("csr");
    let mut c = app.client(None, false).await;
    client::create_certificate(&mut c, &csr.csr_pem, 600, Some(token), None, impersonate)
        .await
        .map(|r| r.cert_chain)
        .map_err(|e| match e {
            client::ClientError::Refused { code, message } => (code, message),
            other => panic!("not a refusal: {other}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_while_the_device_is_unusable_and_recovers_by_itself() {
    let app = Appliance::start("").await;
    let public = anonymous(&app);
    let ready = public.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["ready"].clone()),
        (200, json!(true))
    );

    // The token's PIN changes under the appliance: its next login fails.
    let pin = app.token.pin.expose().to_string();
    support::change_pin_from_outside(&app.token.label, &pin, "changed-1234");
    let token = app.token_for("ns", "sa");
    let (code, _) = ask(&app, "spiffe://cluster.local/ns/ns/sa/sa", &token, None)
        .await
        .expect_err("no issuance without the device");
    assert_ne!(code, Code::Ok);
    let ready = public.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("device: ")),
        "{body}"
    );
    assert!(!body.to_string().contains("changed-1234"), "{body}");

    // The PIN is put back: ready again without any issuance traffic.
    support::change_pin_from_outside(&app.token.label, "changed-1234", &pin);
    let ready = public.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    ask(&app, "spiffe://cluster.local/ns/ns/sa/sa", &token, None)
        .await
        .expect("issuance after recovery");
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_admin_calls_costs_a_burst_of_records() {
    let app = Appliance::start(&admin_config(SHARED)).await;
    let audit = app.server.control.audit().expect("audit");
    let public = anonymous(&app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = audit.stats().records.load(Ordering::Relaxed);
    let flood = 300u64;
    for _ in 0..flood {
        let r = public.get("/v1/state").await;
        assert_eq!(r.code(), "unauthenticated");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let added = audit.stats().records.load(Ordering::Relaxed) - before;
    let folded = audit.stats().refusals_folded.load(Ordering::Relaxed);
    // Burst 10 (the default), plus checkpoints and what the refill allows meanwhile.
    assert!(added <= 10 + 5, "{added} records for {flood} refusals");
    let records = tokio::task::block_in_place(|| audit.page(before + 1, 1000)).expect("page");
    let refused = records
        .iter()
        .map(|r| serde_json::to_value(r).expect("json"))
        .filter(|r| r["event"]["kind"] == "refused")
        .inspect(|r| {
            assert_eq!(r["event"]["code"], "unauthenticated");
            assert!(r["event"]["reason"]
                .as_str()
                .is_some_and(|t| t.starts_with("admin GET /v1/state: ")));
        })
        .count();
    assert_eq!(u64::try_from(refused).expect("count") + folded, flood);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_posts_take_only_json_and_errors_keep_the_json_shape() {
    let app = Appliance::start(&admin_config(SHARED)).await;
    let (a, b) = (admin(&app, ADMIN), admin(&app, OFFICER_B));
    let intermediates = || async { a.get("/v1/state").await.json()["intermediates"].clone() };
    let before = intermediates().await;

    // A cross-site form or a text body never reaches the handler.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let r = a.raw("POST", "/v1/intermediates", ct, b"{}".to_vec()).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (415, "unsupported_media_type"),
            "{ct:?}"
        );
    }
    assert_eq!(
        intermediates().await,
        before,
        "a non-JSON POST changed the state"
    );
    let r = a
        .raw(
            "POST",
            "/v1/intermediates",
            Some("application/json; charset=utf-8"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // 405 and 413 in the documented shape.
    let r = a.get("/v1/intermediates").await;
    assert_eq!((r.status, r.code().as_str()), (405, "method_not_allowed"));
    let big = format!("{{\"crl_pem\": \"{}\"}}", "A".repeat(3 * 1024 * 1024));
    let r = a
        .raw(
            "POST",
            "/v1/crls",
            Some("application/json"),
            big.into_bytes(),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));

    // An approval needs a JSON body; one naming the wrong operation is refused.
    let token = app.token_for("ns", "sa");
    let chain = ask(&app, "spiffe://cluster.local/ns/ns/sa/sa", &token, None)
        .await
        .expect("issue");
    let leaf = hsm_ca::ca::certificates_from_pem(chain[0].as_bytes()).expect("pem")[0].clone();
    let serial = hex::encode(
        hsm_ca::ca::inspect::parse_certificate(&leaf)
            .expect("cert")
            .raw_serial(),
    );
    let proposed = a.post("/v1/revocations", json!({"serial": serial})).await;
    assert_eq!(proposed.status, 202, "{}", proposed.text());
    let pid = proposed.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/v1/proposals/{pid}/approve");
    let r = b
        .raw("POST", &path, Some("application/json"), Vec::new())
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));
    let r = b
        .raw("POST", &path, Some("text/plain"), b"{}".to_vec())
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = b.post(&path, json!({"operation": "root_add"})).await;
    assert_eq!((r.status, r.code().as_str()), (409, "operation_mismatch"));
    let r = b.post(&path, json!({"operation": "revoke"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_front_door_issues_an_admin_identity() {
    let extra = format!(
        "{}\n[authorization]\ntrusted_node_accounts = [\"istio-system/ztunnel\"]\n\
         [[authorization.registration_authorities]]\n\
         identity = \"spiffe://cluster.local/ns/istio-system/sa/istiod\"\nnamespaces = [\"*\"]\n",
        admin_config(SHARED)
    );
    let app = Appliance::start(&extra).await;
    let audit = app.server.control.audit().expect("audit");
    // Asked directly with the admin's own service-account token.
    let (code, message) = ask(&app, ADMIN, &app.token_for("hsm-ca", "admin"), None)
        .await
        .expect_err("direct");
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(message.contains("admin identity"), "{message}");
    // By a registration authority.
    let (code, _) = ask(&app, ADMIN, &app.token_for("istio-system", "istiod"), None)
        .await
        .expect_err("RA");
    assert_eq!(code, Code::PermissionDenied);
    // By a node agent impersonating it.
    let (code, _) = ask(
        &app,
        ADMIN,
        &app.token_for("istio-system", "ztunnel"),
        Some(ADMIN),
    )
    .await
    .expect_err("impersonation");
    assert_eq!(code, Code::PermissionDenied);
    // Other workloads are still served, and the refusals are audited.
    ask(
        &app,
        "spiffe://cluster.local/ns/ns/sa/sa",
        &app.token_for("ns", "sa"),
        None,
    )
    .await
    .expect("workload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records = tokio::task::block_in_place(|| audit.page(1, 1000)).expect("page");
    let denied = records
        .iter()
        .map(|r| serde_json::to_value(r).expect("json"))
        .filter(|r| {
            r["event"]["kind"] == "refused"
                && r["event"]["code"] == "PermissionDenied"
                && r["event"]["reason"]
                    .as_str()
                    .is_some_and(|t| t.contains("admin identity"))
        })
        .count();
    assert_eq!(denied, 3);
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_admin_identities_a_workload_certificate_could_carry() {
    let refused = Appliance::try_start(&admin_config("")).await;
    let Err(e) = refused else {
        panic!("started with an admin identity in the workload trust domain and no admin CA");
    };
    assert!(e.to_string().contains(ADMIN), "{e}");
    assert!(e.to_string().contains("development_shared_ca"), "{e}");

    // A separate admin CA: starts.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let ca_file = dir.path().join("admin-ca.pem");
    std::fs::write(&ca_file, ca.self_signed(&key).expect("ca").pem()).expect("write");
    let separate = format!("client_ca_files = [\"{}\"]", ca_file.display());
    let app = Appliance::try_start(&admin_config(&separate))
        .await
        .expect("starts with an admin CA");
    app.server.shutdown().await;

    // The development setting: starts.
    let app = Appliance::try_start(&admin_config(SHARED))
        .await
        .expect("starts with development_shared_ca");
    app.server.shutdown().await;
}
