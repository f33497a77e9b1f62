//! The sled backend's own unit tests (the conformance suite in `softhsm-tests/state.rs` runs
//! the shared ones against every backend): records survive a reopen, transitions, CRLs.

use super::*;
use crate::state::{
    ImportedCrl, IntermediateRecord, IntermediateStatus, RevocationRecord, RootRecord, Transition,
    RECORD_VERSION,
};

fn record(id: u8) -> IntermediateRecord {
    IntermediateRecord {
        version: 0,
        key_id: KeyId(vec![id]),
        certificate_pem: "pem".into(),
        status: IntermediateStatus::Prepared,
        installed_at: "now".into(),
        not_after: "later".into(),
        subject: "CN=x".into(),
        activated_at: None,
        retired_at: None,
        node: String::new(),
    }
}

#[test]
fn first_install_is_active_second_is_prepared_and_both_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let state = SledState::open(dir.path()).expect("open");
        assert_eq!(
            state.install(record(1)).expect("install").status,
            IntermediateStatus::Active
        );
        assert_eq!(
            state.install(record(2)).expect("install").status,
            IntermediateStatus::Prepared
        );
    }
    let state = SledState::open(dir.path()).expect("reopen");
    let all = state.intermediates().expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(
        state.active().expect("active").map(|r| r.key_id),
        Some(KeyId(vec![1]))
    );
    assert!(all.iter().all(|r| r.version == RECORD_VERSION));
}

#[test]
fn an_imported_crl_is_replaced_only_by_a_higher_number_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crl = |number: u64| ImportedCrl {
        version: 0,
        issuer: "ab".into(),
        number,
        crl_pem: format!("crl {number}"),
        this_update: "t".into(),
        next_update: None,
        imported_at: "t".into(),
    };
    {
        let state = SledState::open(dir.path()).expect("open");
        assert_eq!(state.imported_crl("ab").expect("get"), None);
        assert_eq!(state.store_imported_crl(crl(2)).expect("store"), Ok(()));
        let kept = state.store_imported_crl(crl(2)).expect("store");
        assert_eq!(kept.map_err(|c| c.number), Err(2));
        let kept = state.store_imported_crl(crl(1)).expect("store");
        assert_eq!(kept.map_err(|c| c.crl_pem), Err("crl 2".to_string()));
        assert_eq!(state.store_imported_crl(crl(3)).expect("store"), Ok(()));
        assert_eq!(state.imported_crl("other").expect("get"), None);
    }
    let state = SledState::open(dir.path()).expect("reopen");
    let stored = state.imported_crl("ab").expect("get").expect("kept");
    assert_eq!((stored.number, stored.version), (3, RECORD_VERSION));
}

#[test]
fn activation_retires_the_previous_one_atomically_and_refuses_bad_transitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = SledState::open(dir.path()).expect("open");
    state.install(record(1)).expect("install");
    state.install(record(2)).expect("install");
    state.install(record(3)).expect("install");
    let Transition::Done(next, prev) = state.activate(&KeyId(vec![2]), "t1").expect("activate")
    else {
        panic!("not activated")
    };
    assert_eq!(next.activated_at.as_deref(), Some("t1"));
    let prev = prev.expect("previous");
    assert_eq!(prev.key_id, KeyId(vec![1]));
    assert_eq!(prev.retired_at.as_deref(), Some("t1"));
    let stored = state
        .intermediate(&KeyId(vec![1]))
        .expect("get")
        .expect("one");
    assert_eq!(stored.status, IntermediateStatus::Retired);
    assert_eq!(
        state.active().expect("active").map(|r| r.key_id),
        Some(KeyId(vec![2]))
    );
    assert!(matches!(
        state.activate(&KeyId(vec![1]), "t2"),
        Ok(Transition::Refused(_))
    ));
    assert!(matches!(
        state.activate(&KeyId(vec![2]), "t2"),
        Ok(Transition::Refused(_))
    ));
    assert!(matches!(
        state.retire(&KeyId(vec![2]), "t2"),
        Ok(Transition::Refused(_))
    ));
    assert!(matches!(
        state.activate(&KeyId(vec![9]), "t2"),
        Ok(Transition::NotFound)
    ));
    assert!(matches!(
        state.retire(&KeyId(vec![3]), "t2"),
        Ok(Transition::Done(..))
    ));
}

#[test]
fn roots_revocations_and_counters_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = |fp: &str, at: &str| RootRecord {
        version: 0,
        fingerprint: fp.into(),
        certificate_pem: "pem".into(),
        subject: "CN=r".into(),
        not_after: "later".into(),
        added_at: at.into(),
    };
    {
        let state = SledState::open(dir.path()).expect("open");
        assert_eq!(state.bundle_sequence().expect("seq"), 0);
        assert!(state.add_root(root("bb", "t2")).expect("add"));
        assert!(state.add_root(root("aa", "t1")).expect("add"));
        assert!(!state.add_root(root("aa", "t3")).expect("add again"));
        assert_eq!(state.bundle_sequence().expect("seq"), 2);
        assert!(state.remove_root("bb").expect("remove"));
        assert!(!state.remove_root("bb").expect("remove again"));
        let rev = RevocationRecord {
            version: 0,
            issuer: "ca7".into(),
            serial: "01".into(),
            reason: "keyCompromise".into(),
            revoked_at: "t".into(),
        };
        assert!(state.revoke(rev.clone()).expect("revoke"));
        assert!(!state.revoke(rev).expect("revoke again"));
        assert_eq!(state.next_crl_number("ca7").expect("n"), 1);
        assert_eq!(state.next_crl_number("ca7").expect("n"), 2);
    }
    let state = SledState::open(dir.path()).expect("reopen");
    let roots = state.roots().expect("roots");
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].fingerprint, "aa");
    assert_eq!(state.bundle_sequence().expect("seq"), 3);
    assert_eq!(state.revocations("ca7").expect("revs").len(), 1);
    assert!(state.revocations("ca8").expect("revs").is_empty());
    assert_eq!(state.next_crl_number("ca7").expect("n"), 3);
}
