//! The officers' proposals in the conformance suite (run on every backend by `state.rs`):
//! filing, approving once per officer, claiming for execution exactly once even when many
//! callers race, expiry, recording the outcome, and surviving a reopen.

use std::collections::BTreeSet;
use std::sync::Arc;

use hsm_ca::state::{Claim, ProposalRecord, ProposalStatus, ProposalStep};
use serde_json::json;
use time::macros::datetime;
use time::OffsetDateTime;

use super::Backend;

const T0: OffsetDateTime = datetime!(2030-01-01 00:00 UTC);

fn proposal(id: &str) -> ProposalRecord {
    ProposalRecord {
        version: 0,
        id: id.into(),
        operation: json!({"operation": "revoke", "serial": "0a"}),
        operation_version: 1,
        proposer: "alice".into(),
        approvals: BTreeSet::from(["alice".to_string()]),
        threshold: 2,
        created_at: "2030-01-01T00:00:00Z".into(),
        expires_at: "2030-01-01T00:10:00Z".into(),
        status: ProposalStatus::Pending,
        claimed_by: None,
        claimed_at: None,
        finished_at: None,
        result: None,
        error: None,
    }
}

fn at(minutes: i64) -> OffsetDateTime {
    T0 + time::Duration::minutes(minutes)
}

fn claim(runner: &str, now: OffsetDateTime) -> Claim<'_> {
    Claim {
        runner,
        now,
        threshold: 2,
        officers: None,
    }
}

fn done(step: ProposalStep) -> ProposalRecord {
    match step {
        ProposalStep::Done(r) => *r,
        other => panic!("expected done, got {other:?}"),
    }
}

pub(super) async fn proposals_are_filed_approved_once_per_officer_and_claimed<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    assert!(state.file_proposal(proposal("p1")).await.expect("file"));
    assert!(!state.file_proposal(proposal("p1")).await.expect("again"));
    let not_ready = state.claim_proposal("p1", &claim("alice", at(1))).await;
    assert!(matches!(not_ready, Ok(ProposalStep::NotReady(_))));
    let approved = done(state.approve_proposal("p1", "bob", at(1)).await.expect("b"));
    assert_eq!(approved.approvals.len(), 2);
    assert_eq!(approved.status, ProposalStatus::Pending);
    // The same officer twice counts once.
    match state.approve_proposal("p1", "bob", at(1)).await.expect("b") {
        ProposalStep::AlreadyApproved(r) => assert_eq!(r.approvals.len(), 2),
        other => panic!("{other:?}"),
    }
    // Only current officers count when the caller says who they are.
    let officers = BTreeSet::from(["bob".to_string()]);
    let strict = Claim {
        officers: Some(&officers),
        ..claim("bob", at(2))
    };
    let refused = state.claim_proposal("p1", &strict).await.expect("claim");
    assert!(matches!(refused, ProposalStep::NotReady(_)));
    let running = done(
        state
            .claim_proposal("p1", &claim("bob", at(2)))
            .await
            .expect("c"),
    );
    assert_eq!(running.status, ProposalStatus::Executing);
    assert_eq!(running.claimed_by.as_deref(), Some("bob"));
    let again = state.claim_proposal("p1", &claim("carol", at(2))).await;
    assert!(matches!(again, Ok(ProposalStep::NotPending(_))));
    let late = state.approve_proposal("p1", "carol", at(2)).await;
    assert!(matches!(late, Ok(ProposalStep::NotPending(_))));
    // Executing proposals are open: an officer sees one whose runner died.
    let open = state.proposals(false).await.expect("open");
    assert_eq!(
        open.iter().map(|p| p.status).collect::<Vec<_>>(),
        [ProposalStatus::Executing]
    );
    let result = Ok(json!({"revoked": "0a"}));
    let finished = done(
        state
            .finish_proposal("p1", &result, at(3))
            .await
            .expect("f"),
    );
    assert_eq!(finished.status, ProposalStatus::Executed);
    assert_eq!(finished.result, Some(json!({"revoked": "0a"})));
    let twice = state.finish_proposal("p1", &Err("no".into()), at(3)).await;
    assert!(matches!(twice, Ok(ProposalStep::NotPending(_))));
    assert!(state.proposals(false).await.expect("open").is_empty());
    assert_eq!(state.proposals(true).await.expect("all"), vec![finished]);
    // Failures are recorded with their reason; unknown ids are not found.
    state.file_proposal(proposal("p2")).await.expect("file");
    state
        .approve_proposal("p2", "bob", at(1))
        .await
        .expect("approve");
    done(
        state
            .claim_proposal("p2", &claim("bob", at(1)))
            .await
            .expect("claim"),
    );
    let failed = done(
        state
            .finish_proposal("p2", &Err("root in use".into()), at(1))
            .await
            .expect("finish"),
    );
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (ProposalStatus::Failed, Some("root in use"))
    );
    let missing = state.approve_proposal("nope", "bob", at(1)).await;
    assert!(matches!(missing, Ok(ProposalStep::NotFound)));
    assert_eq!(state.proposal("nope").await.expect("get"), None);
}

pub(super) async fn an_expired_proposal_cannot_be_approved_or_claimed<B: Backend>() {
    let b = B::new().await;
    let state = b.open().await;
    state.file_proposal(proposal("p")).await.expect("file");
    state
        .approve_proposal("p", "bob", at(9))
        .await
        .expect("approve");
    let step = state.claim_proposal("p", &claim("bob", at(10))).await;
    assert!(matches!(step, Ok(ProposalStep::Expired(_))), "{step:?}");
    let stored = state.proposal("p").await.expect("get").expect("kept");
    assert_eq!(stored.status, ProposalStatus::Expired);
    let step = state.claim_proposal("p", &claim("bob", at(11))).await;
    assert!(matches!(step, Ok(ProposalStep::NotPending(_))));
    state.file_proposal(proposal("q")).await.expect("file");
    let step = state.approve_proposal("q", "bob", at(10)).await;
    assert!(matches!(step, Ok(ProposalStep::Expired(_))));
    assert!(state.proposals(false).await.expect("open").is_empty());
    assert_eq!(state.proposals(true).await.expect("all").len(), 2);
}

pub(super) async fn of_eight_racing_claims_exactly_one_wins<B: Backend>() {
    let b = B::new().await;
    let state = Arc::new(b.open().await);
    state.file_proposal(proposal("p")).await.expect("file");
    // Eight officers approve and claim at once, as eight approvals on several nodes would.
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let state = state.clone();
            tokio::spawn(async move {
                let officer = format!("officer-{n}");
                state
                    .approve_proposal("p", &officer, at(1))
                    .await
                    .expect("approve");
                state
                    .claim_proposal("p", &claim(&officer, at(1)))
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            ProposalStep::Done(r) => winners.push(r.claimed_by.expect("runner")),
            ProposalStep::NotPending(r) => assert_eq!(r.status, ProposalStatus::Executing),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = state.proposal("p").await.expect("get").expect("kept");
    assert_eq!(stored.status, ProposalStatus::Executing);
    assert_eq!(stored.claimed_by.as_ref(), winners.first());
}

pub(super) async fn proposals_survive_a_reopen<B: Backend>() {
    let b = B::new().await;
    {
        let state = b.open().await;
        state.file_proposal(proposal("a")).await.expect("file");
        state.file_proposal(proposal("b")).await.expect("file");
        state
            .approve_proposal("b", "bob", at(1))
            .await
            .expect("approve");
        done(
            state
                .claim_proposal("b", &claim("bob", at(1)))
                .await
                .expect("claim"),
        );
    }
    let state = b.open().await;
    let open = state.proposals(false).await.expect("open");
    let statuses: Vec<_> = open.iter().map(|p| (p.id.as_str(), p.status)).collect();
    assert_eq!(
        statuses,
        [
            ("a", ProposalStatus::Pending),
            ("b", ProposalStatus::Executing)
        ],
        "a claimed proposal stays executing: it is never run twice"
    );
    let step = state.claim_proposal("b", &claim("carol", at(2))).await;
    assert!(matches!(step, Ok(ProposalStep::NotPending(_))));
    state
        .approve_proposal("a", "bob", at(2))
        .await
        .expect("approve");
    done(
        state
            .claim_proposal("a", &claim("bob", at(2)))
            .await
            .expect("claim"),
    );
    done(
        state
            .finish_proposal("a", &Ok(json!({})), at(2))
            .await
            .expect("finish"),
    );
    drop(state);
    let state = b.open().await;
    let a = state.proposal("a").await.expect("get").expect("kept");
    assert_eq!(a.status, ProposalStatus::Executed);
    assert_eq!(a.approvals.len(), 2);
}
