//! The Vault front door's tokens in the conformance suite (run on every backend by
//! `state.rs`): stored by hash only, found from another handle (another node), renewed in
//! place, revoked, and pruned once expired.

use hsm_ca::state::TokenRecord;

use super::Backend;

fn token(hash: &str, expires_at: i64) -> TokenRecord {
    TokenRecord {
        version: 1,
        token_sha256: hash.into(),
        accessor: format!("acc-{hash}"),
        login: "approle/ci".into(),
        caller: "approle:ci".into(),
        policies: vec!["mesh-gateways".into()],
        issued_at: 1_000,
        expires_at,
        max_expires_at: 5_000,
    }
}

pub(super) async fn tokens_are_found_by_hash_from_another_handle_renewed_and_revoked<B: Backend>() {
    let b = B::new().await;
    let first = b.open().await;
    first.put_token(&token("aa", 2_000)).await.expect("put");
    first.put_token(&token("bb", 2_000)).await.expect("put");
    drop(first);
    // Another node (here: the store opened again) accepts the token.
    let other = b.open().await;
    let found = other.token("aa").await.expect("read").expect("stored");
    assert_eq!(found, token("aa", 2_000));
    assert_eq!(other.token("cc").await.expect("read"), None);
    let mut renewed = found;
    renewed.expires_at = 3_000;
    other.put_token(&renewed).await.expect("renew");
    assert_eq!(
        other
            .token("aa")
            .await
            .expect("read")
            .expect("stored")
            .expires_at,
        3_000
    );
    assert!(other.delete_token("aa").await.expect("revoke"));
    assert!(!other.delete_token("aa").await.expect("revoke again"));
    assert_eq!(other.token("aa").await.expect("read"), None);
    assert!(other.token("bb").await.expect("read").is_some());
}

pub(super) async fn expired_tokens_are_pruned_live_ones_kept<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    for (hash, exp) in [("t1", 100), ("t2", 200), ("t3", 300)] {
        state.put_token(&token(hash, exp)).await.expect("put");
    }
    assert_eq!(state.prune_tokens(200).await.expect("prune"), 2);
    assert_eq!(state.token("t1").await.expect("read"), None);
    assert_eq!(state.token("t2").await.expect("read"), None);
    assert!(state.token("t3").await.expect("read").is_some());
    assert_eq!(state.prune_tokens(200).await.expect("prune"), 0);
}
