//! Officer approvals, on top of the rest of the control plane: a sensitive operation
//! (`admin.approvals.sensitive`, and a forced root removal always) is checked and filed as a
//! proposal in the CA state, so it survives a restart and every appliance sharing the state
//! sees it; it runs, with its checks repeated, when enough distinct officers (who still hold
//! the role) approved it before it expired. Exactly one approval runs it: the state's claim
//! moves it from pending to executing once, whichever node asks, and the outcome is recorded.
//! A runner that dies mid-way leaves the proposal `executing`, listed for officers to see; it
//! is never run again. This is the only part that calls across the others (roots, rotation,
//! revocation); none of them may call back up into it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{
    key_id, record_der, Activation, Caller, Control, ControlError, RevocationDone, RevokeRequest,
    RootAdded, RootRemoved,
};
use crate::audit::AuditEvent;
use crate::clock::rfc3339;
use crate::config::Role;
use crate::keystore::KeyId;
use crate::state::{Claim, ProposalRecord, ProposalStatus, ProposalStep, StateError};

/// Version of the operation's JSON form in a stored proposal.
pub const OPERATION_VERSION: u32 = 1;

/// An operation that may need officer approvals before it runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Operation {
    RootAdd { certificate_pem: String },
    RootRemove { fingerprint: String, force: bool },
    Revoke(RevokeRequest),
    ActivateNewRoot { key_id: String },
}

impl Operation {
    /// The config name of the operation (`admin.approvals.sensitive`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::RootAdd { .. } => "root_add",
            Operation::RootRemove { .. } => "root_remove",
            Operation::Revoke(_) => "revoke",
            Operation::ActivateNewRoot { .. } => "activate_new_root",
        }
    }
}

/// What an operation that ran produced.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum OperationResult {
    RootAdded(RootAdded),
    RootRemoved(RootRemoved),
    Revoked(RevocationDone),
    Activated(Activation),
}

/// A proposal as officers see it: the operation, its approvals, where it is in its life and,
/// once run, what it produced.
#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    pub id: String,
    #[serde(flatten)]
    pub operation: Operation,
    pub proposer: String,
    pub approvals: BTreeSet<String>,
    pub threshold: u32,
    pub created_at: String,
    pub expires_at: String,
    pub status: ProposalStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Proposal {
    /// Reads a stored proposal; an operation this build cannot read is a corrupt record.
    fn from_record(r: ProposalRecord) -> Result<Self, ControlError> {
        let corrupt = |reason: String| {
            ControlError::State(StateError::Corrupt {
                key: format!("proposal {}", r.id),
                reason,
            })
        };
        if r.operation_version != OPERATION_VERSION {
            return Err(corrupt(format!(
                "operation version {} (this build reads {OPERATION_VERSION})",
                r.operation_version
            )));
        }
        let operation =
            serde_json::from_value(r.operation.clone()).map_err(|e| corrupt(e.to_string()))?;
        Ok(Proposal {
            id: r.id,
            operation,
            proposer: r.proposer,
            approvals: r.approvals,
            threshold: r.threshold,
            created_at: r.created_at,
            expires_at: r.expires_at,
            status: r.status,
            claimed_by: r.claimed_by,
            claimed_at: r.claimed_at,
            finished_at: r.finished_at,
            result: r.result,
            error: r.error,
        })
    }
}

/// A new, pending proposal of `operation` by `proposer` (whose own call counts as the first
/// approval when they are an officer).
fn new_record(
    id: String,
    operation: &Operation,
    proposer: &Caller,
    threshold: u32,
    now: time::OffsetDateTime,
    ttl: std::time::Duration,
) -> Result<ProposalRecord, ControlError> {
    let mut approvals = BTreeSet::new();
    if proposer.has(Role::Officer) {
        approvals.insert(proposer.identity.clone());
    }
    let operation = serde_json::to_value(operation)
        .map_err(|e| ControlError::State(StateError::Storage(e.to_string())))?;
    Ok(ProposalRecord {
        version: 0,
        id,
        operation,
        operation_version: OPERATION_VERSION,
        proposer: proposer.identity.clone(),
        approvals,
        threshold,
        created_at: rfc3339(now),
        expires_at: rfc3339(now + ttl),
        status: ProposalStatus::Pending,
        claimed_by: None,
        claimed_at: None,
        finished_at: None,
        result: None,
        error: None,
    })
}

/// The outcome of asking for an operation.
#[derive(Debug)]
pub enum Outcome {
    /// It ran; here is its result.
    Done(OperationResult),
    /// It waits for approvals.
    Pending(Box<Proposal>),
    /// It had enough approvals, but another approval (perhaps on another appliance) claimed
    /// it first and runs it, or ran it: the proposal as it stands.
    RunElsewhere(Box<Proposal>),
}

impl Control {
    /// Asks to activate an intermediate; under a new root this may need approvals.
    pub async fn request_activation(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Outcome, ControlError> {
        let id = super::key_id(key_id)?;
        if self.activation_changes_root(&id).await? {
            let op = Operation::ActivateNewRoot {
                key_id: id.to_string(),
            };
            return self.gate(caller, op).await;
        }
        let done = self.activate(caller, &id).await?;
        Ok(Outcome::Done(OperationResult::Activated(done)))
    }

    /// Runs `op` now or files it for approvals, as the config says.
    pub async fn gate(&self, caller: &Caller, op: Operation) -> Result<Outcome, ControlError> {
        let forced = matches!(op, Operation::RootRemove { force: true, .. });
        let sensitive = forced || self.config.admin.sensitive.iter().any(|s| s == op.name());
        let threshold = self.config.admin.approval_threshold;
        if !sensitive || (threshold <= 1 && caller.has(Role::Officer)) {
            return self.execute(caller, &op).await.map(Outcome::Done);
        }
        self.precheck(&op).await?;
        let id = hex::encode(KeyId::random().0);
        let record = new_record(
            id.clone(),
            &op,
            caller,
            threshold,
            self.clock.now(),
            self.config.admin.proposal_ttl,
        )?;
        self.record(AuditEvent::Proposed {
            actor: caller.identity.clone(),
            proposal: id.clone(),
            operation: op.name().into(),
            threshold,
        })
        .await?;
        if !self.state.file_proposal(record.clone()).await? {
            return Err(StateError::Storage(format!("proposal id {id} is taken")).into());
        }
        Ok(Outcome::Pending(Box::new(Proposal::from_record(record)?)))
    }

    /// The open proposals: pending ones that have not expired, and executing ones (a runner
    /// that died leaves its proposal here, for officers to see). With `all`, every proposal
    /// in the state, whatever its status.
    pub async fn proposals(&self, all: bool) -> Result<Vec<Proposal>, ControlError> {
        let now = self.clock.now();
        let mut list = Vec::new();
        for record in self.state.proposals(all).await? {
            let stale = record.status == ProposalStatus::Pending && record.expired_at(now);
            if all || !stale {
                list.push(Proposal::from_record(record)?);
            }
        }
        Ok(list)
    }

    /// Logs a warning for every proposal left `executing` (its runner may have died before
    /// recording the outcome; it is never run again), so an operator sees it at start.
    pub async fn warn_of_stuck_proposals(&self) {
        match self.state.proposals(false).await {
            Ok(open) => {
                for p in open
                    .iter()
                    .filter(|p| p.status == ProposalStatus::Executing)
                {
                    tracing::warn!(
                        proposal = %p.id,
                        claimed_by = p.claimed_by.as_deref().unwrap_or_default(),
                        claimed_at = p.claimed_at.as_deref().unwrap_or_default(),
                        "a proposal was claimed for execution and has no recorded outcome: check \
                         GET /v1/state and the audit log for whether it ran, and propose it \
                         again if it did not"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "the proposals could not be read"),
        }
    }

    /// One proposal, whatever its status.
    pub async fn proposal(&self, id: &str) -> Result<Option<Proposal>, ControlError> {
        self.state
            .proposal(id)
            .await?
            .map(Proposal::from_record)
            .transpose()
    }

    /// The identities that hold the officer role now: only their approvals count.
    fn officers(&self) -> BTreeSet<String> {
        self.config
            .admin
            .users
            .iter()
            .filter(|(_, roles)| roles.contains(&Role::Officer))
            .map(|(identity, _)| identity.clone())
            .collect()
    }

    /// An officer approves; the operation runs when the threshold is reached.
    pub async fn approve(&self, caller: &Caller, id: &str) -> Result<Outcome, ControlError> {
        let now = self.clock.now();
        let step = self
            .state
            .approve_proposal(id, &caller.identity, now)
            .await?;
        let record = match step {
            ProposalStep::Done(record) => *record,
            ProposalStep::Expired(_) => return Err(ControlError::ProposalExpired(id.into())),
            ProposalStep::AlreadyApproved(_) => {
                return Err(ControlError::AlreadyApproved {
                    identity: caller.identity.clone(),
                    proposal: id.to_string(),
                })
            }
            ProposalStep::NotPending(r) if r.status == ProposalStatus::Expired => {
                return Err(ControlError::ProposalExpired(id.into()))
            }
            ProposalStep::NotFound | ProposalStep::NotPending(_) | ProposalStep::NotReady(_) => {
                return Err(ControlError::UnknownProposal(id.into()))
            }
        };
        let threshold = record.threshold.max(self.config.admin.approval_threshold);
        self.record(AuditEvent::Approved {
            actor: caller.identity.clone(),
            proposal: id.to_string(),
            approvals: record.counted(None),
            threshold,
        })
        .await?;
        let officers = self.officers();
        if record.counted(Some(&officers)) < threshold {
            return Ok(Outcome::Pending(Box::new(Proposal::from_record(record)?)));
        }
        self.run(caller, id, threshold, &officers).await
    }

    /// Claims proposal `id` and, if this call won the claim, runs it and records the outcome.
    async fn run(
        &self,
        caller: &Caller,
        id: &str,
        threshold: u32,
        officers: &BTreeSet<String>,
    ) -> Result<Outcome, ControlError> {
        let claim = Claim {
            runner: &caller.identity,
            now: self.clock.now(),
            threshold,
            officers: Some(officers),
        };
        let record = match self.state.claim_proposal(id, &claim).await? {
            ProposalStep::Done(record) => Proposal::from_record(*record)?,
            ProposalStep::Expired(_) => return Err(ControlError::ProposalExpired(id.into())),
            ProposalStep::NotReady(r) => {
                return Ok(Outcome::Pending(Box::new(Proposal::from_record(*r)?)))
            }
            ProposalStep::NotPending(r) | ProposalStep::AlreadyApproved(r) => {
                return Ok(Outcome::RunElsewhere(Box::new(Proposal::from_record(*r)?)))
            }
            ProposalStep::NotFound => return Err(ControlError::UnknownProposal(id.into())),
        };
        let result = self.execute(caller, &record.operation).await;
        let outcome = match &result {
            Ok(done) => serde_json::to_value(done).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let finished = self
            .state
            .finish_proposal(id, &outcome, self.clock.now())
            .await;
        if let Err(e) = finished {
            // The operation ran (or failed) and is audited; only its outcome is not recorded,
            // so the proposal stays `executing`, which is what officers must see.
            tracing::warn!(proposal = id, error = %e, "the outcome of a proposal was not recorded");
        }
        result.map(Outcome::Done)
    }

    async fn execute(
        &self,
        caller: &Caller,
        op: &Operation,
    ) -> Result<OperationResult, ControlError> {
        Ok(match op {
            Operation::RootAdd { certificate_pem } => {
                OperationResult::RootAdded(self.add_root(caller, certificate_pem).await?)
            }
            Operation::RootRemove { fingerprint, force } => {
                OperationResult::RootRemoved(self.remove_root(caller, fingerprint, *force).await?)
            }
            Operation::Revoke(req) => OperationResult::Revoked(self.revoke(caller, req).await?),
            Operation::ActivateNewRoot { key_id: id } => {
                OperationResult::Activated(self.activate(caller, &key_id(id)?).await?)
            }
        })
    }

    /// Checks an operation's input before it is filed for approvals, so officers are never
    /// asked to approve something that cannot run.
    async fn precheck(&self, op: &Operation) -> Result<(), ControlError> {
        match op {
            Operation::RootAdd { certificate_pem } => self.check_addable(certificate_pem).await,
            Operation::RootRemove { fingerprint, force } => {
                self.check_removable(fingerprint, *force).await
            }
            Operation::Revoke(req) => self.check_revocable(req).await,
            Operation::ActivateNewRoot { key_id: id } => {
                let id = key_id(id)?;
                let record = self
                    .state
                    .intermediate(&id)
                    .await?
                    .ok_or_else(|| ControlError::UnknownIntermediate(id.clone()))?;
                self.check_propagated(&id, &record_der(&record)?).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn officer(name: &str) -> Caller {
        Caller {
            identity: name.into(),
            roles: vec![Role::Officer],
        }
    }

    #[test]
    fn every_operation_reads_back_from_its_stored_form() {
        let ops = [
            Operation::RootAdd {
                certificate_pem: "pem".into(),
            },
            Operation::RootRemove {
                fingerprint: "ab".into(),
                force: true,
            },
            Operation::Revoke(RevokeRequest {
                serial: Some("0a".into()),
                issuer: None,
                intermediate: None,
                reason: Some("keyCompromise".into()),
            }),
            Operation::ActivateNewRoot {
                key_id: "01".into(),
            },
        ];
        for op in ops {
            let now = datetime!(2030-01-01 00:00 UTC);
            let ttl = std::time::Duration::from_secs(600);
            let record =
                new_record("p".into(), &op, &officer("alice"), 2, now, ttl).expect("record");
            assert_eq!(record.approvals.len(), 1, "the proposer's call counts");
            assert_eq!(record.expires_at, "2030-01-01T00:10:00Z");
            let read = Proposal::from_record(record).expect("read");
            assert_eq!(read.operation, op);
        }
    }

    #[test]
    fn an_operation_of_another_version_is_not_run() {
        let op = Operation::RootAdd {
            certificate_pem: "pem".into(),
        };
        let now = datetime!(2030-01-01 00:00 UTC);
        let mut record = new_record(
            "p".into(),
            &op,
            &officer("alice"),
            2,
            now,
            std::time::Duration::from_secs(1),
        )
        .expect("record");
        record.operation_version = OPERATION_VERSION + 1;
        assert!(matches!(
            Proposal::from_record(record),
            Err(ControlError::State(StateError::Corrupt { .. }))
        ));
    }
}
