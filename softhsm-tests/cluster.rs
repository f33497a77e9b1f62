//! Two appliances on one PostgreSQL database (Debian's, started by the test), each with its own
//! audit chain on its own disk: a revocation made on one is enforced by the other within 2 s,
//! every node's chain reaches the database complete and verifies there, a leaf issued on one node is revoked through the other, and a node with
//! `[audit] require_shipped` answers only once its record is in the database — and withholds
//! the certificate, recording that, while the database cannot be reached. The node registry
//! shows both; one of them leads, and when it stops, the other takes over.

mod support;

use std::time::{Duration, Instant};

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::server::RunningServer;
use hsm_ca::state::{CaState, PgState};
use serde_json::json;
use support::appliance::{operator_admin, operator_config, Appliance};
use support::http::AdminClient;
use support::postgres::{pg, PgCluster, ROLE};

/// A workload certificate from the node `server`; its serial (hex), or the refusal's code.
async fn issue(app: &Appliance, server: &RunningServer) -> Result<String, tonic::Code> {
    let chain = support::appliance::issue_chain(app, server).await?;
    let der = hsm_ca::ca::certificates_from_pem(chain[0].as_bytes()).expect("pem");
    Ok(hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&der[0])
            .expect("leaf")
            .raw_serial(),
    ))
}

async fn database(cluster: &PgCluster) -> CaState {
    support::postgres::connect(&cluster.settings()).await
}

/// A self-signed CA certificate made outside the appliances (rcgen), named `cn`.
fn self_signed_root(cn: impl Into<String>) -> rcgen::Certificate {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn.into());
    params.self_signed(&key).expect("root")
}

/// Waits until `node`'s shipped head is `seq` or later.
async fn shipped_up_to(pg: &PgState, node: &str, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let head = pg
            .audit_shipped_head(node)
            .await
            .expect("head")
            .map_or(0, |(s, _)| s);
        if head >= seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} shipped up to {head}, not {seq}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The number of records in a running node's chain.
fn records(server: &RunningServer) -> u64 {
    server
        .control
        .audit()
        .expect("audit")
        .stats()
        .records
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_chain_reaches_the_database_and_any_node_revokes_any_leaf() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&operator_config(), &settings).await;
    let two = one.second_node(&settings).await;
    let db = database(&cluster).await;
    let first_node = one.config.node_id.clone();

    let on_one = issue(&one, &one.server).await.expect("issued on one");
    let on_two = issue(&one, &two.server).await.expect("issued on two");
    shipped_up_to(pg(&db), &first_node, records(&one.server)).await;
    shipped_up_to(pg(&db), "second", records(&two.server)).await;

    // Each leaf revoked through the node that did not issue it: the issuance is found in the
    // records the other node shipped.
    for (serial, through) in [(&on_one, &two.server), (&on_two, &one.server)] {
        let reply = operator_admin(through, &one.roots)
            .post(
                "/v1/revocations",
                json!({"serial": serial, "reason": "key-compromise"}),
            )
            .await;
        assert_eq!(reply.status, 200, "{serial}: {}", reply.text());
    }
    // A serial nobody issued is still refused.
    let reply = operator_admin(&two.server, &one.roots)
        .post("/v1/revocations", json!({"serial": "0badc0ffee"}))
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text());

    // Both chains are in the database, whole, and verify with their nodes' keys.
    shipped_up_to(pg(&db), &first_node, records(&one.server)).await;
    shipped_up_to(pg(&db), "second", records(&two.server)).await;
    let chains = hsm_ca::cluster::shipped_chains(pg(&db))
        .await
        .expect("chains");
    let nodes: Vec<&str> = chains.iter().map(|c| c.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for chain in &chains {
        let summary = hsm_ca::cluster::verify_shipped(chain).expect("verifies");
        let (local, serial) = if chain.node == "second" {
            (records(&two.server), &on_two)
        } else {
            (records(&one.server), &on_one)
        };
        assert!(summary.records >= local, "{}: {summary:?}", chain.node);
        assert!(summary.signatures_checked, "{}", chain.node);
        assert!(chain.lines.contains(&format!("\"serial\":\"{serial}\"")));
    }
    // `hsm-ca audit shipped` says the same from a config on the database.
    let config = one.path("on-database.toml");
    let base = std::fs::read_to_string(&one.config.path).expect("config");
    std::fs::write(
        &config,
        format!(
            "{base}\n[store]\nbackend = \"postgres\"\n\n[store.postgres]\nurl = \"{}\"\n\
             password_file = \"{}\"\n",
            cluster.url(),
            cluster.password_file().display()
        ),
    )
    .expect("config");
    let shipped = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hsm-ca"))
            .arg("--config")
            .arg(&config)
            .args(["audit", "shipped", "--out"])
            .arg(dir)
            .output()
            .expect("hsm-ca audit shipped")
    };
    let out_dir = one.path("shipped");
    std::fs::create_dir_all(&out_dir).expect("dir");
    let out = shipped(&out_dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("records verify").count(), 2, "{text}");
    assert!(
        out_dir.join("second.jsonl").exists() && out_dir.join("second-public-key.pem").exists()
    );

    // Tampering with a shipped record shows.
    let changed = cluster.psql(
        "UPDATE audit_records \
         SET stored = convert_to(replace(convert_from(stored, 'UTF8'), '/sa/web', '/sa/wab'), 'UTF8') \
         WHERE node_id = 'second' AND issued_serial IS NOT NULL",
    );
    assert!(changed.contains("UPDATE 1"), "{changed}");
    let chains = hsm_ca::cluster::shipped_chains(pg(&db))
        .await
        .expect("chains");
    let second = chains.iter().find(|c| c.node == "second").expect("second");
    assert!(hsm_ca::cluster::verify_shipped(second).is_err());
    let out_dir = one.path("shipped-again");
    std::fs::create_dir_all(&out_dir).expect("dir");
    let out = shipped(&out_dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("second: DOES NOT VERIFY"), "{text}");

    // The registry shows both nodes live, serving the root, issuing from the same intermediate.
    let deadline = Instant::now() + Duration::from_secs(10);
    let root_fp = hsm_ca::ca::fingerprint_id(&one.roots[0]);
    let nodes = loop {
        let nodes = operator_admin(&two.server, &one.roots)
            .get("/v1/nodes")
            .await
            .json();
        let list = nodes["nodes"].as_array().cloned().unwrap_or_default();
        let reported = |n: &serde_json::Value| {
            n["live"] == true && n["audit_shipped"].as_u64().is_some_and(|s| s > 0)
        };
        if list.len() == 2 && list.iter().all(reported) {
            break list;
        }
        assert!(Instant::now() < deadline, "{nodes}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for node in &nodes {
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{node}");
        assert!(node["roots"].to_string().contains(&root_fp), "{node}");
        assert_eq!(node["active_intermediate"], nodes[0]["active_intermediate"]);
    }

    // One of the two leads; when it stops, the other takes over within a renewal.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(l) = pg(&db).leader().await.expect("leader").filter(|l| l.live) {
            break l;
        }
        assert!(Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (stays, stays_id) = if first.node == "second" {
        two.server.shutdown().await;
        (one.server, first_node.clone())
    } else {
        one.server.shutdown().await;
        (two.server, "second".to_string())
    };
    let deadline = Instant::now() + hsm_ca::cluster::LEADER_RENEW * 2;
    loop {
        let now = pg(&db).leader().await.expect("leader").expect("someone");
        if now.live && now.node == stays_id {
            assert!(now.epoch > first.epoch);
            break;
        }
        assert!(Instant::now() < deadline, "{now:?} still leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stopped node is in the registry, not live.
    let nodes = pg(&db).nodes().await.expect("nodes");
    let gone = nodes
        .iter()
        .find(|n| n.node_id != stays_id)
        .expect("the stopped node");
    assert!(gone.stopped && !gone.live, "{gone:?}");
    stays.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_shipped_answers_after_the_database_commit_and_withholds_without_it() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&operator_config(), &settings).await;
    let strict = one
        .second_node_with(&settings, |c| {
            c.audit_shipping.require_shipped = true;
            c.audit_shipping.timeout = Duration::from_secs(2);
        })
        .await;
    let db = database(&cluster).await;

    // The answer comes after the record is in the database: no waiting needed to find it.
    for _ in 0..3 {
        let serial = issue(&one, &strict.server).await.expect("issued");
        let head = strict
            .server
            .control
            .audit()
            .expect("audit")
            .stats()
            .records
            .load(std::sync::atomic::Ordering::Relaxed);
        let (shipped, _) = pg(&db)
            .audit_shipped_head("second")
            .await
            .expect("head")
            .expect("shipped");
        assert!(shipped + 1 >= head, "shipped {shipped} of {head}");
        let chains = hsm_ca::cluster::shipped_chains(pg(&db))
            .await
            .expect("chains");
        let second = chains.iter().find(|c| c.node == "second").expect("second");
        assert!(second.lines.contains(&format!("\"serial\":\"{serial}\"")));
    }

    // The database refuses connections: the strict node withholds certificates with
    // UNAVAILABLE; the other keeps issuing from its own disk.
    cluster.psql_in(
        "postgres",
        &[
            &format!("ALTER DATABASE {ROLE} ALLOW_CONNECTIONS false"),
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{ROLE}'"
            ),
        ],
    );
    let refused = issue(&one, &strict.server).await.expect_err("withheld");
    assert_eq!(refused, tonic::Code::Unavailable);
    issue(&one, &one.server)
        .await
        .expect("the other node issues");

    // Back: the strict node issues again, and every record reaches the database, among them
    // the withheld certificate's `not_issued`.
    cluster.psql_in(
        "postgres",
        &[&format!("ALTER DATABASE {ROLE} ALLOW_CONNECTIONS true")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while issue(&one, &strict.server).await.is_err() {
        assert!(Instant::now() < deadline, "the strict node issues again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = database(&cluster).await;
    shipped_up_to(pg(&db), "second", records(&strict.server)).await;
    let chains = hsm_ca::cluster::shipped_chains(pg(&db))
        .await
        .expect("chains");
    let second = chains.iter().find(|c| c.node == "second").expect("second");
    hsm_ca::cluster::verify_shipped(second).expect("verifies");
    assert!(second.lines.contains("\"kind\":\"not_issued\""));
    assert!(second.lines.contains("did not reach the shared database"));

    strict.server.shutdown().await;
    one.server.shutdown().await;
}

/// Renews over mTLS on `server` with the certificate `chain` and its `key` alone (no token).
async fn renew(
    app: &Appliance,
    server: &RunningServer,
    chain: &[Vec<u8>],
    key: &[u8],
) -> Result<(), tonic::Code> {
    let tls = hsm_ca::tls::client_config(&app.roots, Some((chain, key)), false).expect("tls");
    let mut grpc = client::connect(server.local_addr, "localhost", tls)
        .await
        .expect("connect");
    let csr = client::workload_csr(
        WorkloadKey::P256,
        "spiffe://cluster.local/ns/default/sa/web",
    )
    .expect("csr");
    match client::create_certificate(&mut grpc, &csr.csr_pem, 600, None, None, None).await {
        Ok(_) => Ok(()),
        Err(client::ClientError::Refused { code, .. }) => Err(code),
        Err(other) => panic!("not a refusal: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_on_one_node_is_enforced_by_the_other_within_two_seconds() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&operator_config(), &settings).await;
    let two = one.second_node(&settings).await;

    // A workload certificate from node one renews on node two over mTLS.
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let csr = client::workload_csr(WorkloadKey::P256, id).expect("csr");
    let tls = hsm_ca::tls::client_config(&one.roots, None, false).expect("tls");
    let mut grpc = client::connect(one.server.local_addr, "localhost", tls)
        .await
        .expect("connect");
    let token = one.token_for("default", "web");
    let pems = client::create_certificate(&mut grpc, &csr.csr_pem, 600, Some(&token), None, None)
        .await
        .expect("issued")
        .cert_chain;
    let chain: Vec<Vec<u8>> = pems[..2]
        .iter()
        .flat_map(|p| hsm_ca::ca::certificates_from_pem(p.as_bytes()).expect("pem"))
        .collect();
    let key = csr.key_pkcs8.to_vec();
    assert_eq!(renew(&one, &two.server, &chain, &key).await, Ok(()));

    // Revoked through node one: node two refuses it within 2 s.
    let serial = hsm_ca::ca::inspect::serial_hex(
        hsm_ca::ca::inspect::parse_certificate(&chain[0])
            .expect("leaf")
            .raw_serial(),
    );
    let revoked_at = Instant::now();
    let reply = operator_admin(&one.server, &one.roots)
        .post("/v1/revocations", json!({"serial": serial}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    loop {
        match renew(&one, &two.server, &chain, &key).await {
            Err(tonic::Code::Unauthenticated) => break,
            other => assert!(
                revoked_at.elapsed() < Duration::from_secs(2),
                "node two still answers {other:?} after 2 s"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    two.server.shutdown().await;
    one.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_written_into_the_database_directly_is_ignored_and_reported() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&operator_config(), &settings).await;
    let two = one.second_node(&settings).await;

    // Someone with database access adds their own root, and moves the change sequence.
    let evil = self_signed_root("not our root");
    let fp = hsm_ca::ca::fingerprint_id(evil.der());
    let record = json!({
        "version": hsm_ca::state::RECORD_VERSION,
        "fingerprint": fp,
        "certificate_pem": evil.pem(),
        "subject": "CN=not our root",
        "not_after": "2036-01-01T00:00:00Z",
        "added_at": "2026-01-01T00:00:00Z",
    });
    cluster.psql(&format!(
        "INSERT INTO roots (fingerprint, added_at, record) VALUES ('{fp}', \
         '2026-01-01T00:00:00Z', '{record}'::jsonb)"
    ));
    cluster.psql("UPDATE bundle SET sequence = sequence + 1");
    // …and a copy of a real root's row with a made-up signature.
    cluster.psql(&format!(
        "INSERT INTO roots (fingerprint, added_at, record, signature) \
         SELECT 'f' || fingerprint, added_at, jsonb_set(record, '{{fingerprint}}', \
         to_jsonb('f' || fingerprint)), signature FROM roots WHERE fingerprint <> '{fp}'"
    ));

    // Give both nodes time to see the change; neither serves either row, and both say so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours = hsm_ca::ca::fingerprint_id(&one.roots[0]);
    for server in [&one.server, &two.server] {
        let admin = operator_admin(server, &one.roots);
        let bundle = hsm_ca::ca::certificates_from_pem(&admin.get("/bundle.pem").await.body)
            .expect("bundle");
        let served: Vec<String> = bundle
            .iter()
            .map(|d| hsm_ca::ca::fingerprint_id(d))
            .collect();
        assert_eq!(
            served,
            std::slice::from_ref(&ours),
            "only the root a member signed"
        );
        let state = admin.get("/v1/state").await.text();
        assert!(!state.contains(&fp), "{state}");
        let metrics = admin.get("/metrics").await.text();
        let rejected = metrics
            .lines()
            .find(|l| l.starts_with("hsmca_state_rows_rejected_total "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(rejected >= 2.0, "{metrics}");
        let audit = admin.get("/v1/audit?from=1&limit=1000").await.text();
        assert!(
            audit.contains("state_row_rejected") && audit.contains(&fp),
            "{audit}"
        );
    }
    two.server.shutdown().await;
    one.server.shutdown().await;
}

/// Figures for the README and the operators, not a check: propagation delay of a root added on
/// one node until the other serves it, over 100 changes, and how long the leader lease takes
/// to move after a clean stop. Run with
/// `cargo test --release --test cluster -- --ignored --nocapture figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run by hand"]
#[allow(clippy::print_stdout, reason = "prints figures")]
async fn figures_propagation_and_leader_handover() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&operator_config(), &settings).await;
    let two = one.second_node(&settings).await;
    let (on_one, on_two) = (
        operator_admin(&one.server, &one.roots),
        operator_admin(&two.server, &one.roots),
    );
    let mut delays = Vec::new();
    for n in 0..100 {
        let root = self_signed_root(format!("figure root {n}"));
        let fp = hsm_ca::ca::fingerprint_id(root.der());
        let added = on_one
            .post("/v1/roots", json!({"certificate_pem": root.pem()}))
            .await;
        assert_eq!(added.status, 200, "{}", added.text());
        let start = Instant::now();
        loop {
            let bundle = on_two.get("/bundle.pem").await.body;
            let served = hsm_ca::ca::certificates_from_pem(&bundle).expect("bundle");
            if served.iter().any(|d| hsm_ca::ca::fingerprint_id(d) == fp) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "root {n} not served"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        delays.push(start.elapsed());
    }
    delays.sort();
    println!(
        "propagation over {} root additions: p50 {:?}, p90 {:?}, max {:?}",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() * 9 / 10],
        delays[delays.len() - 1]
    );

    let db = database(&cluster).await;
    let leader = loop {
        if let Some(l) = pg(&db).leader().await.expect("leader").filter(|l| l.live) {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped_at = Instant::now();
    let stays = if leader.node == "second" {
        two.server.shutdown().await;
        one.server
    } else {
        one.server.shutdown().await;
        two.server
    };
    loop {
        let now = pg(&db).leader().await.expect("leader").expect("someone");
        if now.live && now.node != leader.node {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "leader handover after a clean stop: {:?} (renewal every {:?}, lease {:?})",
        stopped_at.elapsed(),
        hsm_ca::cluster::LEADER_RENEW,
        hsm_ca::cluster::LEADER_LEASE
    );
    stays.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_written_into_the_database_directly_approves_nothing() {
    use support::appliance::{officers_config, OFFICER_A as A, OFFICER_B as B, OFFICER_C as C};
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    let one = Appliance::start_on_postgres(&officers_config(), &settings).await;
    let two = one.second_node(&settings).await;
    let officer = |server: &RunningServer, id: &str| {
        let (chain, key) = support::appliance::client_identity(&server.view, id);
        AdminClient::new(
            server.admin_addr.expect("admin listens"),
            &one.roots,
            Some((&chain, &key)),
        )
    };

    // Officer A proposes a root on node one; someone with database access adds B's approval.
    let root = self_signed_root("proposed root");
    let filed = officer(&one.server, A)
        .post("/v1/roots", json!({"certificate_pem": root.pem()}))
        .await;
    assert_eq!(filed.status, 202, "{}", filed.text());
    let pid = filed.json()["pending_approval"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let listed = officer(&two.server, A).get("/v1/proposals").await.json();
    assert_eq!(listed["proposals"][0]["id"], json!(pid), "{listed}");
    let forged = cluster.psql(&format!(
        "UPDATE proposals SET record = jsonb_set(record, '{{approvals}}', \
         (record->'approvals') || '[\"{B}\"]'::jsonb) WHERE id = '{pid}'"
    ));
    assert!(forged.contains("UPDATE 1"), "{forged}");

    // The row no longer carries a member's signature, and the proposals no longer match
    // their seal: no node shows the forged approval (a node that read the table keeps the
    // copy it verified), C's approval is refused, and the root is not added.
    let listed = officer(&two.server, A).get("/v1/proposals").await;
    if listed.status == 200 {
        let listed = listed.json();
        assert_eq!(listed["proposals"][0]["approvals"], json!([A]), "{listed}");
    } else {
        assert_eq!(listed.status, 503, "{}", listed.text());
    }
    let approved = officer(&two.server, C)
        .post(&format!("/v1/proposals/{pid}/approve"), json!({}))
        .await;
    assert_eq!(approved.status, 503, "{}", approved.text());
    assert!(
        approved.text().contains("state_untrusted"),
        "{}",
        approved.text()
    );
    let fp = hsm_ca::ca::fingerprint_id(root.der());
    for server in [&one.server, &two.server] {
        let state = officer(server, A).get("/v1/state").await.text();
        assert!(!state.contains(&fp), "{state}");
    }
    two.server.shutdown().await;
    one.server.shutdown().await;
}
