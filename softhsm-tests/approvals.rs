//! Officer approvals kept in the CA state, over the real admin API (mTLS on 127.0.0.1, CA keys
//! in SoftHSM): a proposal filed before a restart is still there after it, and when two
//! officers approve it at once the operation runs exactly once — also when they approve on two
//! appliances sharing one PostgreSQL database (Debian's, started by the test), after which
//! both serve the added root within 2 s.

mod support;

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::server::RunningServer;
use serde_json::json;
use support::appliance::{officers_config as config, Appliance, OFFICER_A, OFFICER_B, OFFICER_C};
use support::http::AdminClient;
use support::postgres::PgCluster;

/// An admin client for `id`, with a client certificate from the active intermediate.
fn admin(app: &Appliance, id: &str) -> AdminClient {
    admin_on(&app.server, &app.roots, id)
}

/// An admin client for `id` of the appliance `server`.
fn admin_on(server: &RunningServer, roots: &[Vec<u8>], id: &str) -> AdminClient {
    let (chain, key) = support::appliance::client_identity(&server.view, id);
    AdminClient::new(
        server.admin_addr.expect("admin listens"),
        roots,
        Some((&chain, &key)),
    )
}

/// The serial (hex) of a workload certificate just issued.
async fn issued_serial(app: &Appliance) -> String {
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let csr = client::workload_csr(WorkloadKey::P256, id).expect("csr");
    let mut grpc = app.client(None, false).await;
    let token = app.token_for("default", "web");
    let chain = client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
        .await
        .expect("issued")
        .cert_chain;
    let der = hsm_ca::ca::certificates_from_pem(chain[0].as_bytes()).expect("pem");
    hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&der[0])
            .expect("leaf")
            .raw_serial(),
    )
}

/// The id of the proposal a `202` reply filed.
fn filed(reply: &support::http::Reply) -> String {
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Two approvals of `pid` at once: exactly one runs it (200: its result, returned), the other
/// finds it claimed (202 with the proposal) or closed (404).
async fn race(first: &AdminClient, second: &AdminClient, pid: &str) -> serde_json::Value {
    let path = format!("/v1/proposals/{pid}/approve");
    let (r1, r2) = tokio::join!(first.post(&path, json!({})), second.post(&path, json!({})));
    let oks = [r1.status, r2.status].iter().filter(|s| **s == 200).count();
    assert_eq!(oks, 1, "{} / {}", r1.text(), r2.text());
    let (ran, other) = if r1.status == 200 {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };
    assert!(
        (other.status == 404 && other.code() == "not_found")
            || (other.status == 202 && other.json()["proposal"]["id"] == json!(pid)),
        "the other approval: {} {}",
        other.status,
        other.text()
    );
    ran.json()
}

/// The audit records of `kind`.
async fn audited(auditor: &AdminClient, kind: &str) -> Vec<serde_json::Value> {
    let page = auditor.get("/v1/audit?from=1&limit=1000").await;
    assert_eq!(page.status, 200, "{}", page.text());
    page.json()["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["event"]["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proposal_survives_a_restart_and_racing_approvals_run_it_once() {
    let app = Appliance::start(&config()).await;
    let serial = issued_serial(&app).await;
    let pid = filed(
        &admin(&app, OFFICER_A)
            .post("/v1/revocations", json!({"serial": serial}))
            .await,
    );

    let app = app.restart().await;
    let (a, b, c) = (
        admin(&app, OFFICER_A),
        admin(&app, OFFICER_B),
        admin(&app, OFFICER_C),
    );
    let open = a.get("/v1/proposals").await.json();
    let listed = open["proposals"].as_array().expect("list");
    assert_eq!(listed.len(), 1, "{open}");
    assert_eq!(
        (&listed[0]["id"], &listed[0]["status"]),
        (&json!(pid), &json!("pending"))
    );
    assert_eq!(listed[0]["approvals"], json!([OFFICER_A]));

    // Two officers approve at once: the threshold is reached by both, the operation runs once.
    let ran = race(&b, &c, &pid).await;
    assert_eq!(ran["serial"], json!(serial), "{ran}");
    let path = format!("/v1/proposals/{pid}/approve");

    // Once run it is no longer open; with ?all=true it shows what it produced.
    assert!(a.get("/v1/proposals").await.json()["proposals"]
        .as_array()
        .expect("list")
        .is_empty());
    let all = a.get("/v1/proposals?all=true").await.json();
    let record = &all["proposals"][0];
    assert_eq!(record["status"], "executed", "{all}");
    assert_eq!(record["result"]["serial"], json!(serial), "{all}");
    let again = b.post(&path, json!({})).await;
    assert_eq!((again.status, again.code().as_str()), (404, "not_found"));

    // The audit log holds the proposal, the approvals and exactly one revocation.
    let revoked: Vec<_> = audited(&a, "revoked")
        .await
        .into_iter()
        .filter(|r| r["event"]["serial"] == json!(serial))
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(audited(&a, "proposed").await.len(), 1);
    assert!(!audited(&a, "approved").await.is_empty());
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proposal_filed_on_one_appliance_runs_once_when_approved_on_two() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&config(), &settings).await;
    let two = one.second_node(&settings).await;
    // A root: adding it changes only the shared state, so either appliance can run it (a
    // revocation's check looks for the issuance in the audit log of the appliance running it).
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "offline root 2");
    let root = params.self_signed(&key).expect("root");
    let fingerprint = hsm_ca::ca::fingerprint_id(root.der());
    let a1 = admin(&one, OFFICER_A);
    let pid = filed(
        &a1.post("/v1/roots", json!({"certificate_pem": root.pem()}))
            .await,
    );

    // The other appliance sees it, and officers approve it on both at once.
    let a2 = admin_on(&two.server, &one.roots, OFFICER_A);
    let open = a2.get("/v1/proposals").await.json();
    assert_eq!(open["proposals"][0]["id"], json!(pid), "{open}");
    let b1 = admin(&one, OFFICER_B);
    let c2 = admin_on(&two.server, &one.roots, OFFICER_C);
    let ran = race(&b1, &c2, &pid).await;
    assert_eq!(ran["root"]["fingerprint"], json!(fingerprint), "{ran}");
    assert_eq!(ran["bundle_sequence"], json!(2), "added once: {ran}");
    for node in [&a1, &a2] {
        let all = node.get("/v1/proposals?all=true").await.json();
        assert_eq!(all["proposals"][0]["status"], "executed", "{all}");
    }
    // Both nodes serve the new root within 2 s: the one that ran the proposal at once, the
    // other when it sees the shared change sequence move.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let mut served = 0;
        for node in [&a1, &a2] {
            let bundle = node.get("/bundle.pem").await.body;
            let certs = hsm_ca::ca::certificates_from_pem(&bundle).expect("bundle");
            served += usize::from(
                certs
                    .iter()
                    .any(|c| hsm_ca::ca::fingerprint_id(c) == fingerprint),
            );
        }
        if served == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new root is served by {served} of 2 nodes after 2 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One root added, in the two appliances' audit logs together.
    let mut added = audited(&a1, "root_added").await;
    added.extend(audited(&a2, "root_added").await);
    assert_eq!(added.len(), 1, "{added:?}");
    two.server.shutdown().await;
    one.server.shutdown().await;
}
