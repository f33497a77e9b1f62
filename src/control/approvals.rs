//! Officer approvals, on top of the rest of the control plane: a sensitive operation
//! (`admin.approvals.sensitive`, and a forced root removal always) is checked and filed as a
//! proposal, and runs, with its checks repeated, when enough distinct officers approved it
//! before it expired. Proposals live in memory. This is the only part that calls across the
//! others (roots, rotation, revocation); none of them may call back up into it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    key_id, lock, record_der, Activation, Caller, Control, ControlError, RevocationDone,
    RevokeRequest, RootAdded, RootRemoved,
};
use crate::audit::AuditEvent;
use crate::clock::rfc3339;
use crate::config::Role;
use crate::keystore::KeyId;

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

/// An operation waiting for approvals.
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
    #[serde(skip)]
    expires: OffsetDateTime,
}

impl Proposal {
    fn new(
        id: String,
        operation: Operation,
        proposer: &Caller,
        threshold: u32,
        now: OffsetDateTime,
        ttl: std::time::Duration,
    ) -> Self {
        let expires = now + ttl;
        let mut approvals = BTreeSet::new();
        if proposer.has(Role::Officer) {
            approvals.insert(proposer.identity.clone());
        }
        Proposal {
            id,
            operation,
            proposer: proposer.identity.clone(),
            approvals,
            threshold,
            created_at: rfc3339(now),
            expires_at: rfc3339(expires),
            expires,
        }
    }
}

/// The outcome of asking for an operation.
#[derive(Debug)]
pub enum Outcome {
    /// It ran; here is its result.
    Done(OperationResult),
    /// It waits for approvals.
    Pending(Box<Proposal>),
}

/// What one approval did to its proposal.
#[derive(Debug)]
enum Approval {
    /// The threshold is reached: the proposal is closed and its operation runs.
    Ready(Proposal),
    /// More approvals are needed.
    Pending(Proposal),
}

/// The open proposals, by id.
#[derive(Default)]
pub(super) struct Proposals(BTreeMap<String, Proposal>);

impl Proposals {
    fn file(&mut self, proposal: Proposal) {
        self.0.insert(proposal.id.clone(), proposal);
    }

    /// The proposals still open at `now`; expired ones are dropped.
    fn open(&mut self, now: OffsetDateTime) -> Vec<Proposal> {
        self.0.retain(|_, p| p.expires > now);
        self.0.values().cloned().collect()
    }

    /// `identity` approves proposal `id` at `now`.
    fn approve(
        &mut self,
        id: &str,
        identity: &str,
        now: OffsetDateTime,
    ) -> Result<(Approval, u32), ControlError> {
        let Some(p) = self.0.get_mut(id) else {
            return Err(ControlError::UnknownProposal(id.to_string()));
        };
        if p.expires <= now {
            self.0.remove(id);
            return Err(ControlError::ProposalExpired(id.to_string()));
        }
        if !p.approvals.insert(identity.to_string()) {
            return Err(ControlError::AlreadyApproved {
                identity: identity.to_string(),
                proposal: id.to_string(),
            });
        }
        let n = u32::try_from(p.approvals.len()).unwrap_or(u32::MAX);
        if n < p.threshold {
            return Ok((Approval::Pending(p.clone()), n));
        }
        match self.0.remove(id) {
            Some(p) => Ok((Approval::Ready(p), n)),
            None => Err(ControlError::UnknownProposal(id.to_string())),
        }
    }
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
        let proposal = Proposal::new(
            id.clone(),
            op.clone(),
            caller,
            threshold,
            self.clock.now(),
            self.config.admin.proposal_ttl,
        );
        self.record(AuditEvent::Proposed {
            actor: caller.identity.clone(),
            proposal: id,
            operation: op.name().into(),
            threshold,
        })
        .await?;
        lock(&self.proposals).file(proposal.clone());
        Ok(Outcome::Pending(Box::new(proposal)))
    }

    /// Open proposals (expired ones are dropped).
    pub fn proposals(&self) -> Vec<Proposal> {
        lock(&self.proposals).open(self.clock.now())
    }

    /// An officer approves; the operation runs when the threshold is reached.
    pub async fn approve(&self, caller: &Caller, id: &str) -> Result<Outcome, ControlError> {
        let now = self.clock.now();
        let (approval, approvals) = lock(&self.proposals).approve(id, &caller.identity, now)?;
        self.record(AuditEvent::Approved {
            actor: caller.identity.clone(),
            proposal: id.to_string(),
            approvals,
            threshold: self.config.admin.approval_threshold,
        })
        .await?;
        match approval {
            Approval::Ready(p) => self.execute(caller, &p.operation).await.map(Outcome::Done),
            Approval::Pending(p) => Ok(Outcome::Pending(Box::new(p))),
        }
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
    use crate::clock::ManualClock;
    use time::macros::datetime;

    fn officer(name: &str) -> Caller {
        Caller {
            identity: name.into(),
            roles: vec![Role::Officer],
        }
    }

    fn filed(clock: &ManualClock, book: &mut Proposals, threshold: u32) -> String {
        let op = Operation::RootRemove {
            fingerprint: "ab".into(),
            force: true,
        };
        let ttl = std::time::Duration::from_secs(600);
        let p = Proposal::new(
            "p1".into(),
            op,
            &officer("alice"),
            threshold,
            clock.now(),
            ttl,
        );
        book.file(p);
        "p1".into()
    }

    #[test]
    fn a_proposal_expires_after_its_ttl_without_sleeping() {
        let clock = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let mut book = Proposals::default();
        let id = filed(&clock, &mut book, 2);
        clock.advance(time::Duration::seconds(599));
        assert_eq!(book.open(clock.now()).len(), 1);
        clock.advance(time::Duration::seconds(1));
        assert!(matches!(
            book.approve(&id, "bob", clock.now()),
            Err(ControlError::ProposalExpired(_))
        ));
        assert!(book.open(clock.now()).is_empty());
        assert!(matches!(
            book.approve(&id, "bob", clock.now()),
            Err(ControlError::UnknownProposal(_))
        ));
    }

    #[test]
    fn expired_proposals_leave_the_open_list() {
        let clock = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let mut book = Proposals::default();
        filed(&clock, &mut book, 2);
        clock.advance(time::Duration::minutes(10));
        assert!(book.open(clock.now()).is_empty());
    }

    #[test]
    fn the_threshold_counts_distinct_officers_and_the_proposer() {
        let clock = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let mut book = Proposals::default();
        let id = filed(&clock, &mut book, 3);
        assert!(matches!(
            book.approve(&id, "alice", clock.now()),
            Err(ControlError::AlreadyApproved { .. })
        ));
        let (pending, n) = book.approve(&id, "bob", clock.now()).expect("bob");
        assert!(matches!(pending, Approval::Pending(_)));
        assert_eq!(n, 2);
        let (ready, n) = book.approve(&id, "carol", clock.now()).expect("carol");
        assert!(matches!(ready, Approval::Ready(ref p) if p.approvals.len() == 3));
        assert_eq!(n, 3);
        assert!(book.open(clock.now()).is_empty(), "a proposal runs once");
    }
}
