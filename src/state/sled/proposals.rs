//! Officer proposals in sled: one tree, the record's JSON under its id. Every step (approve,
//! claim, finish) reads the record, applies the shared check of [`crate::state::proposals`]
//! and writes it back with a compare-and-swap against the bytes it read, retrying when another
//! caller changed it in between: so of any number of concurrent claims exactly one moves a
//! proposal from pending to executing. Every change is flushed before it returns.
//!
//! It must never write a proposal without that compare-and-swap, nor interpret the operation.

use time::OffsetDateTime;

use super::{storage, SledState};
use crate::state::proposals::{approved, claimed, filing, finished, Step};
use crate::state::records::{decode, encode};
use crate::state::{Claim, ProposalRecord, ProposalStatus, ProposalStep, StateError};

impl SledState {
    /// Files a new proposal (pending); false, changing nothing, when its id is taken.
    pub fn file_proposal(&self, record: ProposalRecord) -> Result<bool, StateError> {
        let record = filing(record);
        self.insert_new(&self.proposals, record.id.as_bytes(), &record)
    }

    /// One proposal by id, whatever its status.
    pub fn proposal(&self, id: &str) -> Result<Option<ProposalRecord>, StateError> {
        self.proposals
            .get(id.as_bytes())
            .map_err(storage)?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    /// The proposals, oldest first: all of them, or only the open ones (pending or executing).
    pub fn proposals(&self, all: bool) -> Result<Vec<ProposalRecord>, StateError> {
        let mut list = Vec::new();
        for item in self.proposals.iter() {
            let (k, v) = item.map_err(storage)?;
            let record: ProposalRecord = decode(&k, &v)?;
            let open = matches!(
                record.status,
                ProposalStatus::Pending | ProposalStatus::Executing
            );
            if all || open {
                list.push(record);
            }
        }
        list.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(list)
    }

    /// `officer` approves proposal `id` (once per officer; only while pending and unexpired).
    pub fn approve_proposal(
        &self,
        id: &str,
        officer: &str,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        self.step(id, |r| approved(r, officer, now))
    }

    /// Moves proposal `id` from pending to executing when it has enough approvals and has not
    /// expired; of concurrent callers, exactly one gets [`ProposalStep::Done`].
    pub fn claim_proposal(&self, id: &str, claim: &Claim<'_>) -> Result<ProposalStep, StateError> {
        self.step(id, |r| claimed(r, claim))
    }

    /// Records the outcome of an executing proposal: executed with its result, or failed.
    pub fn finish_proposal(
        &self,
        id: &str,
        outcome: &Result<serde_json::Value, String>,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        self.step(id, |r| finished(r, outcome, now))
    }

    /// Applies `f` to the stored record with a compare-and-swap, retrying on a lost race.
    fn step(
        &self,
        id: &str,
        f: impl Fn(ProposalRecord) -> Step,
    ) -> Result<ProposalStep, StateError> {
        loop {
            let Some(old) = self.proposals.get(id.as_bytes()).map_err(storage)? else {
                return Ok(ProposalStep::NotFound);
            };
            let (record, answer) = match f(decode(id.as_bytes(), &old)?) {
                Ok(changed) => changed,
                Err(refused) => return Ok(refused),
            };
            let swapped = self
                .proposals
                .compare_and_swap(id.as_bytes(), Some(old), Some(encode(&record)?))
                .map_err(storage)?;
            if swapped.is_ok() {
                self.flush()?;
                return Ok(answer);
            }
        }
    }
}
