//! The ACME front door's objects in the conformance suite (run on every backend by
//! `state.rs`): a nonce is taken once however many callers race for it and from whichever
//! handle (node) asks, records are replaced only if unchanged, kinds do not mix, and expired
//! objects are pruned.

use std::sync::Arc;

use hsm_ca::state::{AcmeKind, AcmeObject};
use serde_json::json;

use super::Backend;

fn object(expires_at: Option<i64>, record: serde_json::Value) -> AcmeObject {
    AcmeObject { expires_at, record }
}

pub(super) async fn acme_nonces_are_taken_once_from_any_node<B: Backend>() {
    let b = B::new().await;
    let first = b.open().await;
    let n = object(Some(5_000), json!({"expires_at": 5_000}));
    assert!(first
        .acme_insert(AcmeKind::Nonce, "n1", &n)
        .await
        .expect("insert"));
    assert!(!first
        .acme_insert(AcmeKind::Nonce, "n1", &n)
        .await
        .expect("insert twice"));
    for i in 0..8 {
        first
            .acme_insert(AcmeKind::Nonce, &format!("race{i}"), &n)
            .await
            .expect("insert");
    }
    drop(first);
    // Another node takes the nonce the first one made, once.
    let other = Arc::new(b.open().await);
    assert_eq!(
        other.acme_take(AcmeKind::Nonce, "n1").await.expect("take"),
        Some(n.clone())
    );
    assert_eq!(
        other.acme_take(AcmeKind::Nonce, "n1").await.expect("again"),
        None
    );
    // Eight callers racing for each nonce: exactly one wins each.
    for i in 0..8 {
        let id = format!("race{i}");
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (s, id) = (other.clone(), id.clone());
                tokio::spawn(async move { s.acme_take(AcmeKind::Nonce, &id).await.expect("take") })
            })
            .collect();
        let mut won = 0;
        for r in racers {
            won += usize::from(r.await.expect("join").is_some());
        }
        assert_eq!(won, 1, "{id}");
    }
}

pub(super) async fn acme_records_change_only_if_unchanged_and_expire<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    let v1 = json!({"id": "o1", "status": "pending"});
    let v2 = json!({"id": "o1", "status": "processing"});
    let v3 = json!({"id": "o1", "status": "valid"});
    state
        .acme_put(AcmeKind::Order, "o1", &object(Some(300), v1.clone()))
        .await
        .expect("put");
    // Two finalizers read `pending`; only the first moves it on.
    assert!(state
        .acme_update(AcmeKind::Order, "o1", &v1, &object(Some(300), v2.clone()))
        .await
        .expect("update"));
    assert!(!state
        .acme_update(AcmeKind::Order, "o1", &v1, &object(Some(300), v3.clone()))
        .await
        .expect("stale update"));
    assert!(!state
        .acme_update(AcmeKind::Order, "nope", &v1, &object(None, v3.clone()))
        .await
        .expect("missing"));
    assert_eq!(
        state.acme_get(AcmeKind::Order, "o1").await.expect("get"),
        Some(object(Some(300), v2))
    );
    // Kinds are separate key spaces.
    assert_eq!(
        state
            .acme_get(AcmeKind::Authorization, "o1")
            .await
            .expect("get"),
        None
    );
    state
        .acme_put(AcmeKind::Eab, "k1", &object(None, json!({"kid": "k1"})))
        .await
        .expect("put");
    state
        .acme_put(
            AcmeKind::Order,
            "o2",
            &object(Some(100), json!({"id": "o2"})),
        )
        .await
        .expect("put");
    let orders = state.acme_list(AcmeKind::Order).await.expect("list");
    let ids: Vec<&str> = orders.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["o1", "o2"]);
    // Pruning takes what expired, keeps the rest and what never expires.
    assert_eq!(state.acme_prune(200).await.expect("prune"), 1);
    assert!(state
        .acme_get(AcmeKind::Order, "o2")
        .await
        .expect("get")
        .is_none());
    assert!(state
        .acme_get(AcmeKind::Order, "o1")
        .await
        .expect("get")
        .is_some());
    assert!(state
        .acme_get(AcmeKind::Eab, "k1")
        .await
        .expect("get")
        .is_some());
}
