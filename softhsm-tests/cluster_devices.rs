//! Two appliances on one PostgreSQL database (Debian's, started by the test), each on a SoftHSM
//! token of its own with an intermediate of its own (`own_intermediate`) under the one root:
//! each issues with its own key, every chain verifies to the root in openssl, the shared state
//! and the node registry show whose intermediate is whose, and no node can make another node's
//! intermediate its own. Each believes the other's rows because its key is in `member_keys`;
//! a registry row changed in the database is shown as not believed.

mod support;

use hsm_ca::server::RunningServer;
use serde_json::json;
use support::appliance::{operator_admin, operator_config, Appliance};
use support::postgres::PgCluster;
use support::TestToken;

/// A workload certificate chain (leaf, intermediate, bundle; PEM) from the node `server`.
async fn issue(app: &Appliance, server: &RunningServer) -> Vec<String> {
    support::appliance::issue_chain(app, server)
        .await
        .expect("issued")
}

fn row_key(store: &hsm_ca::keystore::KeyStore) -> Vec<u8> {
    tokio::task::block_in_place(|| hsm_ca::cluster::row_key(store))
        .expect("row key")
        .public_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_issues_with_an_intermediate_of_its_own_device_under_the_one_root() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .expect("join");
    let settings = cluster.settings();
    // Node two's device and row key exist first, so node one can be told to believe it.
    let token_two = TestToken::new();
    let key_two = row_key(&token_two.keystore(1));
    let one = Appliance::start_on_postgres_with(&operator_config(), &settings, |c| {
        c.node_id = "one".into();
        c.own_intermediate = true;
        c.member_keys = vec![key_two];
    })
    .await;
    let key_one = row_key(&one.store);
    let two = one
        .node_on_own_device(&settings, token_two, "two", vec![key_one])
        .await;

    // Each node signs with the intermediate in its own device; both chains end at the root.
    let chain_one = issue(&one, &one.server).await;
    let chain_two = issue(&one, &two.server).await;
    assert_ne!(chain_one[1], chain_two[1], "two intermediates");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.pem");
    std::fs::copy(one.path("root-cert.pem"), &root).expect("root");
    for (name, chain) in [("one", &chain_one), ("two", &chain_two)] {
        let leaf = dir.path().join(format!("{name}-leaf.pem"));
        let inter = dir.path().join(format!("{name}-inter.pem"));
        std::fs::write(&leaf, &chain[0]).expect("leaf");
        std::fs::write(&inter, &chain[1]).expect("intermediate");
        let (ok, out) = support::openssl_verify(&root, Some(&inter), &leaf);
        assert!(ok, "node {name}'s chain: {out}");
    }
    // Node two's key is in its device alone.
    let two_key_id = two.server.view.load().ca.key().id().to_string();
    let one_key_id = one.server.view.load().ca.key().id().to_string();
    assert_ne!(two_key_id, one_key_id);
    let in_one = tokio::task::block_in_place(|| one.store.list_blocking()).expect("list");
    assert!(in_one.iter().all(|k| k.id.to_string() != two_key_id));

    // The shared state lists both, each with its node; the registry shows what each issues
    // with; each believes the other's rows (the state reads on either node).
    let admin_one = operator_admin(&one.server, &one.roots);
    let admin_two = operator_admin(&two.server, &one.roots);
    for admin in [&admin_one, &admin_two] {
        let state = admin.get("/v1/state").await;
        assert_eq!(state.status, 200, "{}", state.text());
        let text = state.text();
        assert!(
            text.contains(&one_key_id) && text.contains(&two_key_id),
            "{text}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let nodes = admin_one.get("/v1/nodes").await.json();
        let active = |id: &str| {
            nodes["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["node_id"] == json!(id))
                .map(|n| n["active_intermediate"].clone())
        };
        if active("one") == Some(json!(one_key_id)) && active("two") == Some(json!(two_key_id)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{nodes}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Node one cannot make node two's intermediate its own: the key is not in its device
    // (and the state refuses another node's intermediate too: `state::pg`).
    let refused = admin_one
        .post(
            &format!("/v1/intermediates/{two_key_id}/activate"),
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(
        refused.text().contains("key_not_in_device"),
        "{}",
        refused.text()
    );
    assert_eq!(issue(&one, &two.server).await[1], chain_two[1]);

    // Node two stops cleanly and says so, signed. Someone with database access makes it look
    // live and serving another root: node one shows that report as not believed.
    two.server.shutdown().await;
    let two_row = |nodes: &serde_json::Value| {
        nodes["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node_id"] == json!("two"))
            .cloned()
            .expect("node two")
    };
    let stopped = two_row(&admin_one.get("/v1/nodes").await.json());
    assert_eq!(
        (&stopped["stopped"], &stopped["believed"]),
        (&json!(true), &json!(true)),
        "{stopped}"
    );
    let forged = cluster.psql(
        "UPDATE nodes SET stopped = false, heartbeat_at = now(), \
         record = jsonb_set(record, '{roots}', '[\"ff\"]') WHERE node_id = 'two'",
    );
    assert!(forged.contains("UPDATE 1"), "{forged}");
    let shown = two_row(&admin_one.get("/v1/nodes").await.json());
    assert_eq!(
        (&shown["live"], &shown["believed"]),
        (&json!(true), &json!(false)),
        "{shown}"
    );
    one.server.shutdown().await;
}
