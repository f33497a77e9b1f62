//! Officer proposals as the CA state keeps them: the record (the operation as versioned JSON,
//! who proposed it, who approved it, when it expires, where it is in its life and, once run,
//! its result or error) and the checked steps every backend applies to it — approve, claim for
//! execution, finish, expire — so sled and PostgreSQL refuse with the same words. A backend
//! only has to make each step atomic (sled: compare-and-swap; PostgreSQL: a row lock).
//!
//! It must never run an operation or know what one means (that is the control plane's), and
//! never let a proposal leave `executing` except by its runner's recorded outcome: a runner that
//! died leaves it `executing`, for an officer to see, rather than risk running it twice.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{parse_rfc3339, rfc3339};

/// Where a proposal is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProposalStatus {
    /// Waiting for approvals.
    Pending,
    /// Claimed by one runner, which is running the operation now (or died doing so).
    Executing,
    /// Ran; `result` holds what it produced.
    Executed,
    /// Ran and failed (its checks, repeated at run time, refused it); `error` says why.
    Failed,
    /// Not approved in time.
    Expired,
}

impl ProposalStatus {
    /// The name stored next to the record (the same as in its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalStatus::Pending => "pending",
            ProposalStatus::Executing => "executing",
            ProposalStatus::Executed => "executed",
            ProposalStatus::Failed => "failed",
            ProposalStatus::Expired => "expired",
        }
    }
}

/// A sensitive operation filed for officer approvals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRecord {
    pub version: u32,
    pub id: String,
    /// The operation, as the control plane wrote it (`{"operation": "<name>", ...}`).
    pub operation: serde_json::Value,
    /// The version of the operation's JSON form.
    pub operation_version: u32,
    pub proposer: String,
    /// Identities of the officers who approved it, each once.
    pub approvals: BTreeSet<String>,
    /// Approvals it needs (at least; the control plane may ask for more at run time).
    pub threshold: u32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; from this moment on it cannot be approved or claimed.
    pub expires_at: String,
    pub status: ProposalStatus,
    /// Who claimed it for execution, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
    /// When it was executed, failed or found expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProposalRecord {
    /// Whether it can no longer be approved or claimed at `now`. An unreadable expiry counts
    /// as expired.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        parse_rfc3339(&self.expires_at).is_none_or(|expires| expires <= now)
    }

    /// How many approvals count: those of `officers` when given (the identities that hold the
    /// officer role now), else all.
    pub fn counted(&self, officers: Option<&BTreeSet<String>>) -> u32 {
        let n = match officers {
            Some(officers) => self.approvals.intersection(officers).count(),
            None => self.approvals.len(),
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// What asking to approve, claim or finish a proposal came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalStep {
    /// Done: the record as stored now.
    Done(Box<ProposalRecord>),
    NotFound,
    /// It expired before this step (and is recorded as expired now).
    Expired(Box<ProposalRecord>),
    /// This officer had approved it already; nothing changed.
    AlreadyApproved(Box<ProposalRecord>),
    /// It is not in the state this step needs (pending, or executing to finish): as stored.
    NotPending(Box<ProposalRecord>),
    /// Not enough approvals to claim it: as stored.
    NotReady(Box<ProposalRecord>),
}

/// A claim for execution: who runs it, at what time, and what counts as enough approvals.
#[derive(Clone, Debug)]
pub struct Claim<'a> {
    pub runner: &'a str,
    pub now: OffsetDateTime,
    /// The approvals needed, besides the record's own threshold (the greater one holds).
    pub threshold: u32,
    /// When given, only approvals by these identities count.
    pub officers: Option<&'a BTreeSet<String>>,
}

/// Records a pending proposal past its expiry as expired; true when it did.
fn expire(record: &mut ProposalRecord, now: OffsetDateTime) -> bool {
    if record.status == ProposalStatus::Pending && record.expired_at(now) {
        record.status = ProposalStatus::Expired;
        record.finished_at = Some(rfc3339(now));
        return true;
    }
    false
}

/// The outcome of a step: `Ok(record to store, answer)` or `Err(answer)` with nothing stored.
pub(super) type Step = Result<(ProposalRecord, ProposalStep), ProposalStep>;

fn store(record: ProposalRecord, answer: fn(Box<ProposalRecord>) -> ProposalStep) -> Step {
    Ok((record.clone(), answer(Box::new(record))))
}

/// `officer` approves `record` at `now`.
pub(super) fn approved(mut record: ProposalRecord, officer: &str, now: OffsetDateTime) -> Step {
    if expire(&mut record, now) {
        return store(record, ProposalStep::Expired);
    }
    if record.status != ProposalStatus::Pending {
        return Err(ProposalStep::NotPending(Box::new(record)));
    }
    if !record.approvals.insert(officer.to_string()) {
        return Err(ProposalStep::AlreadyApproved(Box::new(record)));
    }
    store(record, ProposalStep::Done)
}

/// `record` claimed for execution: pending → executing, when approved enough and not expired.
pub(super) fn claimed(mut record: ProposalRecord, claim: &Claim<'_>) -> Step {
    if expire(&mut record, claim.now) {
        return store(record, ProposalStep::Expired);
    }
    if record.status != ProposalStatus::Pending {
        return Err(ProposalStep::NotPending(Box::new(record)));
    }
    if record.counted(claim.officers) < record.threshold.max(claim.threshold) {
        return Err(ProposalStep::NotReady(Box::new(record)));
    }
    record.status = ProposalStatus::Executing;
    record.claimed_by = Some(claim.runner.to_string());
    record.claimed_at = Some(rfc3339(claim.now));
    store(record, ProposalStep::Done)
}

/// The outcome of running an executing proposal: executed with its result, or failed.
pub(super) fn finished(
    mut record: ProposalRecord,
    outcome: &Result<serde_json::Value, String>,
    now: OffsetDateTime,
) -> Step {
    if record.status != ProposalStatus::Executing {
        return Err(ProposalStep::NotPending(Box::new(record)));
    }
    match outcome {
        Ok(result) => {
            record.status = ProposalStatus::Executed;
            record.result = Some(result.clone());
        }
        Err(error) => {
            record.status = ProposalStatus::Failed;
            record.error = Some(error.clone());
        }
    }
    record.finished_at = Some(rfc3339(now));
    store(record, ProposalStep::Done)
}

/// A new proposal, as filed: pending, with the record version of this build.
pub(super) fn filing(mut record: ProposalRecord) -> ProposalRecord {
    record.version = super::RECORD_VERSION;
    record.status = ProposalStatus::Pending;
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn pending() -> ProposalRecord {
        ProposalRecord {
            version: 1,
            id: "p".into(),
            operation: serde_json::json!({"operation": "revoke"}),
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

    #[test]
    fn only_current_officers_count_towards_a_claim() {
        let now = datetime!(2030-01-01 00:01 UTC);
        let (record, _) = approved(pending(), "bob", now).expect("bob");
        let officers = BTreeSet::from(["bob".to_string()]);
        let claim = Claim {
            runner: "bob",
            now,
            threshold: 2,
            officers: Some(&officers),
        };
        assert!(matches!(
            claimed(record.clone(), &claim),
            Err(ProposalStep::NotReady(_))
        ));
        let claim = Claim {
            officers: None,
            ..claim
        };
        let (running, _) = claimed(record, &claim).expect("claimed");
        assert_eq!(running.status, ProposalStatus::Executing);
        assert!(matches!(
            claimed(running, &claim),
            Err(ProposalStep::NotPending(_))
        ));
    }

    #[test]
    fn an_unreadable_expiry_counts_as_expired() {
        let mut record = pending();
        record.expires_at = "soon".into();
        let step = approved(record, "bob", datetime!(2030-01-01 00:01 UTC));
        assert!(
            matches!(step, Ok((r, ProposalStep::Expired(_))) if r.status == ProposalStatus::Expired)
        );
    }
}
