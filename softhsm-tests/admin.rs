//! The admin API over real mTLS on 127.0.0.1 with CA keys in SoftHSM: who may do what,
//! the intermediate lifecycle, root rotation with officer approvals while workloads keep
//! asking for certificates, revocation with CRLs that openssl honours, and the public routes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hsm_ca::ca::{certificates_from_pem, fingerprint_id, inspect::check_issued_by};
use hsm_ca::client::{self, WorkloadKey};
use serde_json::json;
use support::appliance::Appliance;
use support::http::AdminClient;
use time::OffsetDateTime;

const OFFICER_A: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-a";
const OFFICER_B: &str = "spiffe://cluster.local/ns/hsm-ca/sa/officer-b";
const AUDITOR: &str = "spiffe://cluster.local/ns/hsm-ca/sa/auditor";
const STRANGER: &str = "spiffe://cluster.local/ns/default/sa/web";

fn admin_config(propagation_secs: u64, proposal_secs: u64) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"
propagation_window_secs = {propagation_secs}
development_shared_ca = true

[[admin.users]]
identity = "{OFFICER_A}"
roles = ["auditor", "operator", "officer"]

[[admin.users]]
identity = "{OFFICER_B}"
roles = ["officer"]

[[admin.users]]
identity = "{AUDITOR}"
roles = ["auditor"]

[admin.approvals]
threshold = 2
expires_secs = {proposal_secs}
"#
    )
}

/// A client certificate for `id` from the active intermediate, as an admin client.
fn admin(app: &Appliance, id: &str) -> AdminClient {
    admin_trusting(app, id, &app.roots)
}

fn admin_trusting(app: &Appliance, id: &str, roots: &[Vec<u8>]) -> AdminClient {
    let (chain, key) = support::appliance::client_identity(&app.server.view, id);
    AdminClient::new(
        app.server.admin_addr.expect("admin listens"),
        roots,
        Some((&chain, &key)),
    )
}

fn anonymous(app: &Appliance) -> AdminClient {
    AdminClient::new(app.server.admin_addr.expect("admin"), &app.roots, None)
}

fn der(pem_text: &str) -> Vec<Vec<u8>> {
    certificates_from_pem(pem_text.as_bytes()).expect("pem")
}

/// Workloads asking for certificates in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    chains: Arc<Mutex<Vec<Vec<String>>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(app: &Appliance, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let chains = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let mut grpc = app.client(None, false).await;
            let token = app.token_for("default", &format!("w{i}"));
            let id = format!("spiffe://cluster.local/ns/default/sa/w{i}");
            let (stop, chains, failures) = (stop.clone(), chains.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let csr = client::workload_csr(WorkloadKey::P256, &id).expect("csr");
                    match client::create_certificate(
                        &mut grpc,
                        &csr.csr_pem,
                        3600,
                        Some(&token),
                        None,
                        None,
                    )
                    .await
                    {
                        Ok(r) => chains.lock().expect("lock").push(r.cert_chain),
                        Err(e) => failures.lock().expect("lock").push(e.to_string()),
                    }
                }
            }));
        }
        Load {
            stop,
            chains,
            failures,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.chains.lock().expect("lock").len()
    }

    /// Waits until `n` more certificates were issued; returns the newest chain.
    async fn more(&self, n: usize) -> Vec<String> {
        let start = self.count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.count() < start + n {
            assert!(std::time::Instant::now() < deadline, "issuance stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.chains
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("chain")
    }

    async fn finish(self) -> (Vec<Vec<String>>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a client request hung")
                .expect("client task");
        }
        let chains = std::mem::take(&mut *self.chains.lock().expect("lock"));
        let failures = std::mem::take(&mut *self.failures.lock().expect("lock"));
        (chains, failures)
    }
}

/// Leaf → intermediate → one of `roots`, by signature.
fn chain_verifies(chain: &[String], roots: &[Vec<u8>]) -> bool {
    let leaf = &der(&chain[0])[0];
    let inter = &der(&chain[1])[0];
    check_issued_by(leaf, inter).is_ok() && roots.iter().any(|r| check_issued_by(inter, r).is_ok())
}

fn active_key(state: &serde_json::Value) -> String {
    state["intermediates"]
        .as_array()
        .expect("intermediates")
        .iter()
        .find(|i| i["status"] == "active")
        .expect("an active intermediate")["key_id"]
        .as_str()
        .expect("key id")
        .to_string()
}

/// Proposes with officer `a` and approves with officer `b`: the approval's reply (200).
async fn propose_and_approve(
    a: &AdminClient,
    b: &AdminClient,
    path: &str,
    body: serde_json::Value,
) -> support::http::Reply {
    let proposed = a.post(path, body).await;
    assert_eq!(proposed.status, 202, "{}", proposed.text());
    let pid = proposed.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let done = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    done
}

/// Prepares an intermediate through the API: key in the device, CSR, signed by `root`
/// (when given) with the online root key, installed. Returns (key id, certificate PEM).
async fn prepare(a: &AdminClient, root: Option<&str>) -> (String, String) {
    let csr = a.post("/v1/intermediates", json!({})).await;
    assert_eq!(csr.status, 200, "{}", csr.text());
    let csr = csr.json();
    let mut body = json!({"csr_pem": csr["csr_pem"]});
    if let Some(root) = root {
        body["root"] = json!(root);
    }
    let signed = a.post("/v1/intermediates/sign", body).await;
    assert_eq!(signed.status, 200, "{}", signed.text());
    let pem = signed.json()["certificate_pem"]
        .as_str()
        .expect("pem")
        .to_string();
    let installed = a
        .post("/v1/intermediates/install", json!({"certificate_pem": pem}))
        .await;
    assert_eq!(installed.status, 200, "{}", installed.text());
    assert_eq!(installed.json()["status"], "prepared");
    (csr["key_id"].as_str().expect("key id").to_string(), pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intermediate_and_root_rotation_under_continuous_issuance_drop_no_request() {
    // Long enough that the early activation below is refused even on a slow, busy machine.
    const WINDOW: u64 = 8;
    let app = Appliance::start(&admin_config(WINDOW, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));
    let public = anonymous(&app);
    let root1 = fingerprint_id(&app.roots[0]);
    let first_key = active_key(&a.get("/v1/state").await.json());
    let load = Load::start(&app, 4).await;
    load.more(20).await;

    // 1. Intermediate rotation under the same root: no approval needed.
    let (key2, pem2) = prepare(&a, None).await;
    let act = a
        .post(&format!("/v1/intermediates/{key2}/activate"), json!({}))
        .await;
    assert_eq!(act.status, 200, "{}", act.text());
    let state = a.get("/v1/state").await.json();
    assert_eq!(active_key(&state), key2);
    let first = state["intermediates"]
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["key_id"] == first_key.as_str())
        .expect("first")
        .clone();
    assert_eq!(first["status"], "retired");
    assert!(first["retired_at"].is_string());
    // A request that starts after activation is signed by the new intermediate.
    load.more(10).await;
    let newest = load.more(10).await;
    assert_eq!(der(&newest[1]), der(&pem2));

    // 2. Root rotation: add the new root (two officers), wait for the bundle to propagate,
    //    activate an intermediate under it (two officers), keep the old root until its leaves
    //    have expired.
    let seq_before = public.get("/bundle.spiffe").await.json()["spiffe_sequence"]
        .as_u64()
        .expect("sequence");
    let mut cfg2 = app.config.clone();
    cfg2.root.common_name = "hsm-ca test root 2".into();
    let (_, root2) = tokio::task::block_in_place(|| {
        hsm_ca::authority::create_root(&app.store, &cfg2, OffsetDateTime::now_utc())
    })
    .expect("second root");
    let root2_fp = fingerprint_id(&root2.der);
    let proposed = a
        .post("/v1/roots", json!({"certificate_pem": root2.pem}))
        .await;
    assert_eq!(proposed.status, 202, "{}", proposed.text());
    let pid = proposed.json()["pending_approval"]["id"]
        .as_str()
        .expect("proposal id")
        .to_string();
    assert_eq!(
        public
            .get("/bundle.pem")
            .await
            .text()
            .matches("BEGIN CERTIFICATE")
            .count(),
        1,
        "a proposal changes nothing"
    );
    let twice = a
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(
        (twice.status, twice.code().as_str()),
        (409, "already_approved")
    );
    let approved = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let root_added = std::time::Instant::now();
    let spiffe = public.get("/bundle.spiffe").await.json();
    assert_eq!(spiffe["keys"].as_array().expect("keys").len(), 2);
    assert!(spiffe["spiffe_sequence"].as_u64().expect("seq") > seq_before);
    assert!(spiffe["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .all(|k| k["use"] == "x509-svid" && k["x5c"].as_array().map(Vec::len) == Some(1)));
    // Workloads now receive both roots.
    load.more(5).await;
    let with_both = load.more(5).await;
    assert_eq!(der(with_both.last().expect("bundle")).len(), 2);

    let (key3, pem3) = prepare(&a, Some(&root2_fp)).await;
    let early = a
        .post(&format!("/v1/intermediates/{key3}/activate"), json!({}))
        .await;
    assert_eq!(
        (early.status, early.code().as_str()),
        (409, "propagation_window"),
        "{}",
        early.text()
    );
    let wait = Duration::from_secs(WINDOW + 1).saturating_sub(root_added.elapsed());
    tokio::time::sleep(wait).await;
    propose_and_approve(
        &a,
        &b,
        &format!("/v1/intermediates/{key3}/activate"),
        json!({}),
    )
    .await;
    load.more(10).await;
    let newest = load.more(10).await;
    assert_eq!(der(&newest[1]), der(&pem3));
    assert!(chain_verifies(&newest, std::slice::from_ref(&root2.der)));

    // The serving certificate now comes from the new root too: admin clients and workloads
    // connecting from now on trust the bundle they were given (both roots).
    let bundle_now = der(with_both.last().expect("bundle"));
    let a = admin_trusting(&app, OFFICER_A, &bundle_now);
    let b = admin_trusting(&app, OFFICER_B, &bundle_now);
    let public = AdminClient::new(app.server.admin_addr.expect("admin"), &bundle_now, None);

    // The old root still anchors live leaves: removing it now is refused.
    let early_removal = a.call("DELETE", &format!("/v1/roots/{root1}"), None).await;
    assert_eq!(
        (early_removal.status, early_removal.code().as_str()),
        (409, "root_in_use"),
        "{}",
        early_removal.text()
    );

    let (chains, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let final_bundle = der(&public.get("/bundle.pem").await.text());
    assert_eq!(final_bundle.len(), 2);
    let mut by_intermediate = std::collections::BTreeMap::<Vec<u8>, usize>::new();
    for chain in &chains {
        let own_bundle = der(chain.last().expect("bundle"));
        assert!(
            chain_verifies(chain, &own_bundle),
            "chain vs its own bundle"
        );
        assert!(
            chain_verifies(chain, &final_bundle),
            "chain vs the final bundle"
        );
        *by_intermediate
            .entry(der(&chain[1])[0].clone())
            .or_default() += 1;
    }
    assert_eq!(by_intermediate.len(), 3, "three intermediates issued");
    eprintln!(
        "rotation: {} requests, {} failed, per intermediate {:?}",
        chains.len(),
        failures.len(),
        by_intermediate.values().collect::<Vec<_>>()
    );
    // openssl agrees for one chain per intermediate.
    let bundle_file = app.path("final-bundle.pem");
    std::fs::write(&bundle_file, public.get("/bundle.pem").await.body).expect("bundle");
    for inter in by_intermediate.keys() {
        let chain = chains
            .iter()
            .find(|c| &der(&c[1])[0] == inter)
            .expect("a chain");
        let (leaf, untrusted) = (app.path("leaf.pem"), app.path("inter.pem"));
        std::fs::write(&leaf, &chain[0]).expect("leaf");
        std::fs::write(&untrusted, &chain[1]).expect("inter");
        let (ok, out) = support::openssl_verify(&bundle_file, Some(&untrusted), &leaf);
        assert!(ok, "{out}");
    }

    // After the longest workload TTL the old root could go; forcing it earlier needs approvals.
    let forced = a
        .call("DELETE", &format!("/v1/roots/{root1}?force=true"), None)
        .await;
    assert_eq!(forced.status, 202, "{}", forced.text());
    let pid = forced.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let removed = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let bundle = der(&public.get("/bundle.pem").await.text());
    assert_eq!(bundle, vec![root2.der.clone()]);
    let tls = hsm_ca::tls::client_config(&bundle, None, false).expect("tls");
    let mut after = client::connect(app.server.local_addr, "localhost", tls)
        .await
        .expect("connect");
    let csr = client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/default/sa/w9")
        .expect("csr");
    let token = app.token_for("default", "w9");
    let chain = client::create_certificate(&mut after, &csr.csr_pem, 600, Some(&token), None, None)
        .await
        .expect("issued")
        .cert_chain;
    assert_eq!(der(chain.last().expect("bundle")), vec![root2.der.clone()]);
    assert!(chain_verifies(&chain, &[root2.der]));
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_mapped_client_certificates_with_the_right_role_get_in() {
    let app = Appliance::start(&admin_config(0, 600)).await;
    let public = anonymous(&app);
    let (auditor, stranger) = (admin(&app, AUDITOR), admin(&app, STRANGER));

    // Public routes need no certificate.
    assert_eq!(public.get("/healthz").await.status, 200);
    let ready = public.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(der(&public.get("/bundle.pem").await.text()), app.roots);

    let no_cert = public.get("/v1/state").await;
    assert_eq!(
        (no_cert.status, no_cert.code().as_str()),
        (401, "unauthenticated")
    );
    let unknown = stranger.get("/v1/state").await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (403, "unknown_identity")
    );
    let wrong_role = auditor.post("/v1/intermediates", json!({})).await;
    assert_eq!(
        (wrong_role.status, wrong_role.code().as_str()),
        (403, "forbidden")
    );
    let wrong_role = auditor
        .post("/v1/roots", json!({"certificate_pem": ""}))
        .await;
    assert_eq!(wrong_role.status, 403);
    let wrong_role = auditor
        .post("/v1/intermediates/abcd/activate", json!({}))
        .await;
    assert_eq!(
        (wrong_role.status, wrong_role.code().as_str()),
        (403, "forbidden")
    );

    let state = auditor.get("/v1/state").await;
    assert_eq!(state.status, 200, "{}", state.text());
    let state = state.json();
    assert_eq!(
        state["roots"][0]["fingerprint"],
        fingerprint_id(&app.roots[0])
    );
    assert_eq!(state["roots"][0]["key_online"], true);
    assert_eq!(state["intermediates"][0]["status"], "active");

    // Refused admin calls are in the audit log, which verifies. Refusals are recorded
    // without waiting for the disk: give the writer a moment.
    let mut records = Vec::new();
    for _ in 0..50 {
        let page = auditor.get("/v1/audit?from=1&limit=1000").await;
        assert_eq!(page.status, 200, "{}", page.text());
        records = page.json()["records"].as_array().expect("records").clone();
        let refused = records
            .iter()
            .filter(|r| r["event"]["kind"] == "refused")
            .count();
        if refused >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin_refusals = || {
        records.iter().filter(|r| {
            r["event"]["kind"] == "refused"
                && r["event"]["reason"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("admin "))
        })
    };
    let refused: Vec<_> = admin_refusals()
        .map(|r| r["event"]["code"].as_str().unwrap_or_default().to_string())
        .collect();
    for code in ["unauthenticated", "unknown_identity", "forbidden"] {
        assert!(
            refused.iter().any(|c| c == code),
            "{code} not audited: {refused:?}"
        );
    }
    // Refusals name the route by its template, not the path the caller sent.
    let routes: Vec<_> = admin_refusals()
        .map(|r| {
            r["event"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for route in [
        "GET /v1/state",
        "POST /v1/intermediates",
        "POST /v1/intermediates/{key_id}/activate",
    ] {
        assert!(
            routes
                .iter()
                .any(|r| r.starts_with(&format!("admin {route}: "))),
            "{route} not audited: {routes:?}"
        );
    }
    let verified = auditor.get("/v1/audit/verify").await.json();
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(verified["signatures_checked"], true, "{verified}");
    let key = auditor.get("/v1/audit/public-key").await;
    assert!(
        key.text().starts_with("-----BEGIN PUBLIC KEY-----"),
        "{}",
        key.text()
    );

    let metrics = auditor.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("hsmca_ca_certificate_not_after_timestamp_seconds{kind=\"root\""),
        "{text}"
    );
    assert!(text.contains("kind=\"intermediate\""), "{text}");
    assert!(text.contains("hsmca_keystore_queue_depth"), "{text}");
    assert!(text.contains("hsmca_audit_records "), "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    // Records reach the disk in groups: at least one sync, never more syncs than records.
    let (records, syncs) = (
        value("hsmca_audit_records"),
        value("hsmca_audit_syncs_total"),
    );
    assert!(
        syncs >= 1.0 && syncs <= records,
        "{syncs} syncs for {records} records"
    );
    // Starting the appliance signed its serving certificate and the admin certificates.
    let device_calls: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("hsmca_device_call_seconds_count "))
        .and_then(|v| v.parse().ok())
        .expect("device call count");
    assert!(device_calls > 0, "{text}");

    // Typed errors for bad input; nothing changes.
    let a = admin(&app, OFFICER_A);
    let bad = a.call("POST", "/v1/intermediates/install", None).await;
    assert_eq!((bad.status, bad.code().as_str()), (400, "bad_request"));
    let garbage = a
        .post("/v1/intermediates/install", json!({"certificate_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}))
        .await;
    assert_eq!(garbage.status, 400, "{}", garbage.text());
    let missing = a.post("/v1/intermediates/00ff/activate", json!({})).await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
    let nowhere = a.get("/v1/nothing").await;
    assert_eq!(
        (nowhere.status, nowhere.code().as_str()),
        (404, "not_found")
    );
    let not_root = a
        .post("/v1/roots", json!({"certificate_pem": hsm_ca::ca::certificate_pem(app.server.view.load().ca.cert_der())}))
        .await;
    // An intermediate is not a self-signed root: refused before any officer is asked.
    assert_eq!(
        (not_root.status, not_root.code().as_str()),
        (400, "chain_invalid"),
        "{}",
        not_root.text()
    );
    let bad_serial = a
        .post("/v1/revocations", json!({"serial": "not hex"}))
        .await;
    assert_eq!(
        (bad_serial.status, bad_serial.code().as_str()),
        (400, "bad_request")
    );
    assert!(auditor.get("/v1/proposals").await.json()["proposals"]
        .as_array()
        .expect("list")
        .is_empty());
    let state_after = auditor.get("/v1/state").await.json();
    assert_eq!(state_after["roots"].as_array().map(Vec::len), Some(1));
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_expire() {
    let app = Appliance::start(&admin_config(0, 1)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));
    let issued = web_certificate(&app).await;
    let proposed = a
        .post(
            "/v1/revocations",
            json!({"serial": issued.serial, "reason": "superseded"}),
        )
        .await;
    assert_eq!(proposed.status, 202, "{}", proposed.text());
    let pid = proposed.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(
        (late.status, late.code().as_str()),
        (410, "proposal_expired")
    );
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_leaf_is_in_the_signed_crl_and_openssl_refuses_it() {
    let app = Appliance::start(&admin_config(0, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));
    let public = anonymous(&app);
    let mut grpc = app.client(None, false).await;
    let csr = client::workload_csr(
        WorkloadKey::P256,
        "spiffe://cluster.local/ns/default/sa/web",
    )
    .expect("csr");
    let token = app.token_for("default", "web");
    let chain = client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
        .await
        .expect("issued")
        .cert_chain;
    let leaf = der(&chain[0]).remove(0);
    let serial = hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&leaf)
            .expect("leaf")
            .raw_serial(),
    );
    let inter_fp = fingerprint_id(&der(&chain[1])[0]);

    // A reason that is not an RFC 5280 one is refused before anything is proposed.
    let unknown = a
        .post(
            "/v1/revocations",
            json!({"serial": serial, "reason": "stolen"}),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (400, "bad_request"),
        "{}",
        unknown.text()
    );
    let done = propose_and_approve(
        &a,
        &b,
        "/v1/revocations",
        json!({"serial": serial, "reason": "key-compromise"}),
    )
    .await;
    assert_eq!(done.json()["crl"], format!("/crl/{inter_fp}.crl"));

    let crl = public.get(&format!("/crl/{inter_fp}.crl")).await;
    assert_eq!(crl.status, 200, "{}", crl.text());
    let crl_file = app.path("inter.crl");
    std::fs::write(&crl_file, &crl.body).expect("crl");
    let (root_file, inter_file, leaf_file) = (
        app.path("root.pem"),
        app.path("inter.pem"),
        app.path("leaf.pem"),
    );
    std::fs::write(&root_file, hsm_ca::trust::bundle::pem(&app.roots)).expect("root");
    std::fs::write(&inter_file, &chain[1]).expect("inter");
    std::fs::write(&leaf_file, &chain[0]).expect("leaf");
    // The CRL is signed by the intermediate (in the device) and lists the serial.
    let shown = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-in"])
        .arg(&crl_file)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&shown.stdout).to_uppercase();
    assert!(text.contains(&serial.to_uppercase()), "{text}");
    // The entry carries the reason given.
    assert!(text.contains("X509V3 CRL REASON CODE"), "{text}");
    assert!(text.contains("KEY COMPROMISE"), "{text}");
    let pem_crl = app.path("inter-crl.pem");
    let converted = std::process::Command::new("openssl")
        .args(["crl", "-inform", "DER", "-in"])
        .arg(&crl_file)
        .arg("-out")
        .arg(&pem_crl)
        .status()
        .expect("openssl");
    assert!(converted.success());
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-crl_check", "-CAfile"])
        .arg(&root_file)
        .arg("-untrusted")
        .arg(&inter_file)
        .arg("-CRLfile")
        .arg(&pem_crl)
        .arg(&leaf_file)
        .output()
        .expect("openssl");
    let out = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success(), "{out}");
    assert!(out.contains("revoked"), "{out}");
    // Istio's ca-crl.pem holds the CRLs of every CA whose key is here (root and intermediate).
    let all = public.get("/ca-crl.pem").await.text();
    assert_eq!(all.matches("BEGIN X509 CRL").count(), 2, "{all}");
    // Revoking twice is refused with a stable code; the active intermediate cannot be revoked.
    let again = a.post("/v1/revocations", json!({"serial": serial})).await;
    assert_eq!(again.status, 202);
    let pid = again.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let dup = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!((dup.status, dup.code().as_str()), (409, "exists"));
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_never_issued_cannot_be_revoked_and_an_issued_one_can() {
    let app = Appliance::start(&admin_config(0, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));
    let issued = web_certificate(&app).await;
    // A serial this appliance never issued: refused at once, before any approval.
    let never = "7f3e5a9c0d11b2c4e6f8a0b1c2d3e4f5a6b7c8d9";
    assert_ne!(never, issued.serial);
    for body in [
        json!({"serial": never, "reason": "keyCompromise"}),
        json!({"serial": never.to_uppercase()}),
    ] {
        let refused = a.post("/v1/revocations", body).await;
        assert_eq!(
            (refused.status, refused.code().as_str()),
            (404, "not_found"),
            "{}",
            refused.text()
        );
        assert!(
            refused.text().contains("never issued"),
            "{}",
            refused.text()
        );
    }
    // The serial it did issue (also named with colons and upper case) is revocable.
    let spaced: String = issued
        .serial
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect::<Vec<_>>()
        .join(":");
    let done = propose_and_approve(
        &a,
        &b,
        "/v1/revocations",
        json!({"serial": spaced, "reason": "keyCompromise"}),
    )
    .await;
    assert_eq!(
        done.json()["serial"],
        json!(issued.serial),
        "{}",
        done.text()
    );
    app.server.shutdown().await;
}

/// A workload identity as a VM agent keeps it for renewal: chain (leaf, intermediate), key,
/// and the leaf's serial.
struct Renewable {
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    serial: String,
}

/// A certificate for default/web, obtained with a service-account token.
async fn web_certificate(app: &Appliance) -> Renewable {
    let csr = client::workload_csr(WorkloadKey::P256, STRANGER).expect("csr");
    let mut grpc = app.client(None, false).await;
    let token = app.token_for("default", "web");
    let chain = client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
        .await
        .expect("issued")
        .cert_chain;
    let chain: Vec<Vec<u8>> = chain[..2].iter().flat_map(|p| der(p)).collect();
    let serial = hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&chain[0])
            .expect("leaf")
            .raw_serial(),
    );
    Renewable {
        chain,
        key: csr.key_pkcs8.to_vec(),
        serial,
    }
}

/// Renews with the certificate alone (mTLS, no token); the refusal's code and message.
async fn renew(app: &Appliance, with: &Renewable) -> Result<(), (tonic::Code, String)> {
    let mut grpc = app.client(Some((&with.chain, &with.key)), false).await;
    let csr = client::workload_csr(WorkloadKey::P256, STRANGER).expect("csr");
    match client::create_certificate(&mut grpc, &csr.csr_pem, 600, None, None, None).await {
        Ok(_) => Ok(()),
        Err(client::ClientError::Refused { code, message }) => Err((code, message)),
        Err(other) => panic!("not a refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_and_leaves_of_revoked_intermediates_no_longer_authenticate() {
    let app = Appliance::start(&admin_config(0, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));

    // A leaf revoked by serial: its renewal is refused, a sibling's is not, and the workload's
    // token still works (it is the certificate that is no longer trusted, not the workload).
    let (stolen, sibling) = (web_certificate(&app).await, web_certificate(&app).await);
    assert_eq!(renew(&app, &stolen).await, Ok(()));
    propose_and_approve(&a, &b, "/v1/revocations", json!({"serial": stolen.serial})).await;
    let (code, message) = renew(&app, &stolen).await.expect_err("revoked leaf");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(
        message.contains(&format!("serial {} was revoked", stolen.serial)),
        "{message}"
    );
    assert_eq!(renew(&app, &sibling).await, Ok(()));
    let _ = web_certificate(&app).await;

    // An intermediate revoked after rotation: every leaf under it is refused, including the
    // officers' own admin certificates; leaves of its successor are not.
    let old = web_certificate(&app).await;
    let (next, _) = prepare(&a, None).await;
    let act = a
        .post(&format!("/v1/intermediates/{next}/activate"), json!({}))
        .await;
    assert_eq!(act.status, 200, "{}", act.text());
    let state = a.get("/v1/state").await.json();
    let retired = state["intermediates"]
        .as_array()
        .expect("intermediates")
        .iter()
        .find(|i| i["status"] == "retired")
        .expect("the first intermediate, retired")["key_id"]
        .as_str()
        .expect("key id")
        .to_string();
    assert_eq!(renew(&app, &old).await, Ok(()));
    propose_and_approve(&a, &b, "/v1/revocations", json!({"intermediate": retired})).await;
    let (code, message) = renew(&app, &old).await.expect_err("leaf of a revoked CA");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("issuing CA"), "{message}");
    assert!(message.contains("was revoked"), "{message}");
    let refused = a.get("/v1/state").await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (401, "revoked"),
        "{}",
        refused.text()
    );
    let current = web_certificate(&app).await;
    assert_eq!(renew(&app, &current).await, Ok(()));
    let a2 = admin(&app, OFFICER_A);
    assert_eq!(a2.get("/v1/state").await.status, 200);

    // The revocations are in the CA state: after a restart they still hold.
    let app = app.restart().await;
    let (code, _) = renew(&app, &stolen).await.expect_err("still revoked");
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert!(renew(&app, &old).await.is_err());
    assert_eq!(renew(&app, &current).await, Ok(()));
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_signed_new_root_lets_old_root_clients_verify_new_leaves() {
    let app = Appliance::start(&admin_config(0, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));
    let root1 = fingerprint_id(&app.roots[0]);
    let mut cfg2 = app.config.clone();
    cfg2.root.common_name = "hsm-ca test root 2".into();
    let (_, root2) = tokio::task::block_in_place(|| {
        hsm_ca::authority::create_root(&app.store, &cfg2, OffsetDateTime::now_utc())
    })
    .expect("second root");
    let root2_fp = fingerprint_id(&root2.der);
    let pid = a
        .post("/v1/roots", json!({"certificate_pem": root2.pem}))
        .await
        .json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let added = b
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(added.status, 200, "{}", added.text());

    let cross = a
        .post(
            &format!("/v1/roots/{root2_fp}/cross-sign"),
            json!({"by": root1}),
        )
        .await;
    assert_eq!(cross.status, 200, "{}", cross.text());
    let cross_pem = cross.json()["certificate_pem"]
        .as_str()
        .expect("pem")
        .to_string();
    let self_cross = a
        .post(
            &format!("/v1/roots/{root1}/cross-sign"),
            json!({"by": root1}),
        )
        .await;
    assert_eq!(self_cross.status, 400);

    // An intermediate under the new root, and a leaf from it.
    let (_, inter_pem) = prepare(&a, Some(&root2_fp)).await;
    let inter_der = der(&inter_pem).remove(0);
    let inter_ca = hsm_ca::authority::issuing_ca_for(&app.store, &inter_der).expect("ca");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let leaf = tokio::task::block_in_place(|| {
        inter_ca.issue_leaf(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
            "spiffe://cluster.local/ns/default/sa/web",
            Duration::from_secs(600),
            Duration::from_secs(60),
            OffsetDateTime::now_utc(),
        )
    })
    .expect("leaf");
    let (old_root, untrusted, leaf_file) = (
        app.path("old-root.pem"),
        app.path("untrusted.pem"),
        app.path("leaf.pem"),
    );
    std::fs::write(&old_root, hsm_ca::trust::bundle::pem(&app.roots)).expect("root");
    std::fs::write(&leaf_file, &leaf.pem).expect("leaf");
    // Without the cross certificate a client trusting only the old root cannot verify it…
    std::fs::write(&untrusted, &inter_pem).expect("untrusted");
    let (ok, out) = support::openssl_verify(&old_root, Some(&untrusted), &leaf_file);
    assert!(!ok, "{out}");
    // …with it, it can.
    std::fs::write(&untrusted, format!("{inter_pem}{cross_pem}")).expect("untrusted");
    let (ok, out) = support::openssl_verify(&old_root, Some(&untrusted), &leaf_file);
    assert!(ok, "{out}");

    // The bundle command prints what the appliance serves, as Istio's ConfigMap.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
        .args(["--config"])
        .arg(&app.config.path)
        .args(["bundle", "--format", "configmap"])
        .output()
        .expect("hsm-ca bundle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name: istio-ca-root-cert"), "{text}");
    assert!(text.contains("  root-cert.pem: |"), "{text}");
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2, "{text}");
    app.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn automatic_rotation_prepares_and_activates_successors_without_failed_requests() {
    // A one-day intermediate: 0.002 % of its life is 1.7 s, 0.004 % is 3.5 s.
    let extra = format!(
        "{}\n[workload]\nclock_skew_secs = 0\n[intermediate]\nvalidity_days = 1\n\
         [rotation]\nauto = true\nprepare_at = 0.00002\nactivate_at = 0.00004\ncheck_interval_secs = 1\n",
        admin_config(0, 600)
    );
    let app = Appliance::start(&extra).await;
    let auditor = admin(&app, AUDITOR);
    let first = active_key(&auditor.get("/v1/state").await.json());
    let load = Load::start(&app, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut state;
    loop {
        state = auditor.get("/v1/state").await.json();
        if active_key(&state) != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic rotation: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let newest = load.more(10).await;
    let (chains, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let retired = state["intermediates"]
        .as_array()
        .expect("list")
        .iter()
        .find(|i| i["key_id"] == first.as_str())
        .expect("first")
        .clone();
    assert_eq!(retired["status"], "retired");
    // Requests that started after the switch were signed by a successor.
    assert_ne!(
        fingerprint_id(&der(&newest[1])[0]),
        retired["fingerprint"].as_str().expect("fingerprint")
    );
    assert!(chains.iter().all(|c| chain_verifies(c, &app.roots)));
    app.server.shutdown().await;
}

/// With `admin.client_ca_files`, only certificates from that CA open the admin API: a workload
/// certificate for a listed identity (which any cluster able to mint tokens could obtain) does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_admin_ca_keeps_workload_certificates_out() {
    // The admin PKI of this test: a software CA in the test only.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("admin-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("ca file");
    let extra = admin_config(0, 600).replace(
        "[admin]\n",
        &format!("[admin]\nclient_ca_files = [\"{}\"]\n", ca_file.display()),
    );
    let app = Appliance::start(&extra).await;

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(AUDITOR).expect("uri"),
    )];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let from_admin_ca = AdminClient::new(
        app.server.admin_addr.expect("admin"),
        &app.roots,
        Some((&[cert.der().to_vec()], &key.serialize_der())),
    );
    let ok = from_admin_ca.get("/v1/state").await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // The same identity from the workload CA is refused during the handshake.
    let from_workload_ca = admin(&app, AUDITOR);
    let refused = tokio::spawn(async move { from_workload_ca.get("/v1/state").await }).await;
    assert!(
        refused.is_err(),
        "a workload certificate opened the admin API"
    );
    app.server.shutdown().await;
}

/// POSTs, and approves with officer `b` when the call waits for approval.
async fn post_approved(
    a: &AdminClient,
    b: &AdminClient,
    path: &str,
    body: serde_json::Value,
) -> support::http::Reply {
    let first = a.post(path, body).await;
    if first.status != 202 {
        return first;
    }
    let pid = first.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    b.post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await
}

/// Activates intermediate `key`, with officer `b`'s approval when it changes the root.
async fn activate(a: &AdminClient, b: &AdminClient, key: &str) {
    let done = post_approved(
        a,
        b,
        &format!("/v1/intermediates/{key}/activate"),
        json!({}),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text());
}

/// A root CRL as a ceremony signs it: `root` signs, listing `serials` (hex).
fn root_crl(root: &hsm_ca::ca::IssuingCa, serials: &[&str], number: u64) -> (Vec<u8>, String) {
    let now = OffsetDateTime::now_utc();
    let entries: Vec<_> = serials
        .iter()
        .map(|s| hsm_ca::ca::Revoked {
            serial: hex::decode(s).expect("hex serial"),
            at: now,
            reason: hsm_ca::ca::RevocationReason::KeyCompromise,
        })
        .collect();
    let der = tokio::task::block_in_place(|| {
        root.sign_crl(&entries, number, now, now + time::Duration::days(30))
    })
    .expect("crl");
    let pem = pem::encode(&pem::Pem::new("X509 CRL", der.clone()));
    (der, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_root_crl_signed_offline_revokes_what_it_lists_once_imported_and_is_served() {
    let mut app = Appliance::start(&admin_config(0, 600)).await;
    let (a, b) = (admin(&app, OFFICER_A), admin(&app, OFFICER_B));

    // An offline root: its key is in another token (the ceremony's), not in the appliance's.
    let ceremony = support::TestToken::new();
    let ceremony_store = ceremony.keystore(1);
    let mut cfg = app.config.clone();
    cfg.root.common_name = "hsm-ca offline root".into();
    let now = OffsetDateTime::now_utc();
    let (_, offline) =
        tokio::task::block_in_place(|| hsm_ca::authority::create_root(&ceremony_store, &cfg, now))
            .expect("offline root");
    let offline_fp = fingerprint_id(&offline.der);
    propose_and_approve(&a, &b, "/v1/roots", json!({"certificate_pem": offline.pem})).await;
    app.roots.push(offline.der.clone());
    // Clients that trust both roots: the appliance's own certificates will come from either.
    let (a, b, public) = (
        admin(&app, OFFICER_A),
        admin(&app, OFFICER_B),
        anonymous(&app),
    );
    let offline_ca =
        hsm_ca::authority::issuing_ca_for(&ceremony_store, &offline.der).expect("offline CA");

    // An intermediate signed offline, installed and activated; a workload certificate from it.
    let csr = a.post("/v1/intermediates", json!({})).await.json();
    let parsed = hsm_ca::ca::parse_csr(csr["csr_pem"].as_str().expect("csr").as_bytes())
        .expect("csr parses");
    let inter = tokio::task::block_in_place(|| {
        hsm_ca::authority::sign_intermediate(&offline_ca, &parsed, &app.config, now)
    })
    .expect("signed offline");
    let inter_serial = hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&inter.der)
            .expect("intermediate")
            .raw_serial(),
    );
    let installed = a
        .post(
            "/v1/intermediates/install",
            json!({"certificate_pem": inter.pem}),
        )
        .await;
    assert_eq!(installed.status, 200, "{}", installed.text());
    let key = csr["key_id"].as_str().expect("key id");
    activate(&a, &b, key).await;
    let workload = web_certificate(&app).await;
    assert!(check_issued_by(&workload.chain[1], &offline.der).is_ok());
    assert_eq!(renew(&app, &workload).await, Ok(()));
    let before = public.get(&format!("/crl/{offline_fp}.crl")).await;
    assert_eq!(
        (before.status, before.code().as_str()),
        (404, "key_not_in_device")
    );

    // A CRL revoking the intermediate in use is refused, and nothing of it is kept.
    let (_, revokes_active) = root_crl(&offline_ca, &[&inter_serial], 1);
    let refused = a.post("/v1/crls", json!({"crl_pem": revokes_active})).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (409, "refused"),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("activate a successor"));
    assert_eq!(renew(&app, &workload).await, Ok(()));
    assert_eq!(
        public.get(&format!("/crl/{offline_fp}.crl")).await.status,
        404
    );

    // After rotating away, the same revocation takes effect on import: the old intermediate's
    // workload certificates no longer renew, and the CRL is served as signed.
    let (next, _) = prepare(&a, None).await;
    activate(&a, &b, &next).await;
    let (crl_der, crl_pem) = root_crl(&offline_ca, &[&inter_serial], 2);
    let auditor = admin(&app, AUDITOR);
    let forbidden = auditor.post("/v1/crls", json!({"crl_pem": crl_pem})).await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.text());
    let imported = a.post("/v1/crls", json!({"crl_pem": crl_pem})).await;
    assert_eq!(imported.status, 200, "{}", imported.text());
    let reply = imported.json();
    assert_eq!(reply["issuer"], offline_fp);
    assert_eq!(reply["crl_number"], 2);
    assert_eq!(reply["newly_revoked"], json!([inter_serial]));
    let (code, message) = renew(&app, &workload).await.expect_err("revoked CA");
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    assert!(message.contains("issuing CA"), "{message}");
    let served = public.get(&format!("/crl/{offline_fp}.crl")).await;
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.body, crl_der);
    let bundle = public.get("/ca-crl.pem").await.text();
    assert!(bundle.contains(crl_pem.trim()), "{bundle}");

    // Replays and older CRLs, CRLs not signed by a bundle root, and non-CRLs are refused.
    let again = a.post("/v1/crls", json!({"crl_pem": crl_pem})).await;
    assert_eq!((again.status, again.code().as_str()), (409, "stale_crl"));
    let older = a.post("/v1/crls", json!({"crl_pem": revokes_active})).await;
    assert_eq!((older.status, older.code().as_str()), (409, "stale_crl"));
    let stranger_store = support::TestToken::new().keystore(1);
    let (_, stranger) =
        tokio::task::block_in_place(|| hsm_ca::authority::create_root(&stranger_store, &cfg, now))
            .expect("stranger root");
    let stranger_ca =
        hsm_ca::authority::issuing_ca_for(&stranger_store, &stranger.der).expect("stranger CA");
    let (_, forged) = root_crl(&stranger_ca, &[&workload.serial], 9);
    let forged = a.post("/v1/crls", json!({"crl_pem": forged})).await;
    assert_eq!(
        (forged.status, forged.code().as_str()),
        (400, "chain_invalid"),
        "{}",
        forged.text()
    );
    let junk = a
        .post("/v1/crls", json!({"crl_pem": offline.pem.clone()}))
        .await;
    assert_eq!(junk.status, 400, "{}", junk.text());

    // The import is in the audit log, and it all holds after a restart.
    let page = auditor.get("/v1/audit?from=1&limit=1000").await.json();
    let imports: Vec<_> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["event"]["kind"] == "crl_imported")
        .collect();
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(imports[0]["event"]["newly_revoked"], json!([inter_serial]));
    let app = app.restart().await;
    assert!(renew(&app, &workload).await.is_err());
    let served = anonymous(&app).get(&format!("/crl/{offline_fp}.crl")).await;
    assert_eq!(served.body, crl_der);
    app.server.shutdown().await;
}
