//! Officer proposals in PostgreSQL (table `proposals`, schema version 2). Every step (approve,
//! claim, finish) is one transaction that locks the row (`SELECT .. FOR UPDATE`), applies the
//! shared check of [`crate::state::proposals`] and writes the row back, status column and
//! record together: so of concurrent claims on any number of nodes exactly one moves a
//! proposal from pending to executing, and the others see it executing.
//!
//! With row trust (a shared database), every write signs the row and every read keeps only
//! rows a member signed: an approval added to a row by other means than an appliance makes the
//! proposal unreadable (not found), never approved. The table is sealed too
//! ([`super::seals`]): an older copy of a row put back (an executed proposal made pending
//! again) does not match the seal, and the table is refused rather than run twice.
//!
//! It must never change a proposal row outside such a transaction, nor interpret the
//! operation.

use time::OffsetDateTime;
use tokio_postgres::types::Json;

use super::{db, decode, decode_all, put, seals, PgState};
use crate::state::proposals::{approved, claimed, filing, finished, Step};
use crate::state::{Claim, ProposalRecord, ProposalStatus, ProposalStep, StateError};

/// The table, as signed rows name it.
const TABLE: &str = "proposals";

impl PgState {
    /// Files a new proposal (pending); false, changing nothing, when its id is taken.
    pub async fn file_proposal(&self, record: ProposalRecord) -> Result<bool, StateError> {
        let record = filing(record);
        let signature = self.row_signature(TABLE, &record.id, &record)?;
        self.insert_sealed(
            &seals::PROPOSALS,
            &record.id,
            &record,
            "INSERT INTO proposals (id, status, created_at, record, signature)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING
             RETURNING id, record::text, signature",
            &[
                &record.id,
                &record.status.as_str(),
                &record.created_at,
                &Json(&record),
                &signature,
            ],
        )
        .await
    }

    /// One proposal by id, whatever its status.
    pub async fn proposal(&self, id: &str) -> Result<Option<ProposalRecord>, StateError> {
        let rows = self.sealed_rows(&seals::PROPOSALS).await?;
        rows.get(id).map(|row| decode(id, row)).transpose()
    }

    /// The proposals, oldest first: all, or the open ones (pending or executing).
    pub async fn proposals(&self, all: bool) -> Result<Vec<ProposalRecord>, StateError> {
        let mut out: Vec<ProposalRecord> =
            decode_all(&*self.sealed_rows(&seals::PROPOSALS).await?)?;
        out.retain(|r| {
            all || matches!(
                r.status,
                ProposalStatus::Pending | ProposalStatus::Executing
            )
        });
        out.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        Ok(out)
    }

    /// `officer` approves proposal `id` (once per officer; only while pending and unexpired).
    pub async fn approve_proposal(
        &self,
        id: &str,
        officer: &str,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        self.step(id, |r| approved(r, officer, now)).await
    }

    /// Moves proposal `id` from pending to executing when it has enough approvals and has not
    /// expired; of concurrent callers on every node, exactly one gets [`ProposalStep::Done`].
    pub async fn claim_proposal(
        &self,
        id: &str,
        claim: &Claim<'_>,
    ) -> Result<ProposalStep, StateError> {
        self.step(id, |r| claimed(r, claim)).await
    }

    /// Records the outcome of an executing proposal: executed with its result, or failed.
    pub async fn finish_proposal(
        &self,
        id: &str,
        outcome: &Result<serde_json::Value, String>,
        now: OffsetDateTime,
    ) -> Result<ProposalStep, StateError> {
        self.step(id, |r| finished(r, outcome, now)).await
    }

    /// Applies `f` to the row, locked for the transaction, and writes the result back.
    async fn step(
        &self,
        id: &str,
        f: impl FnOnce(ProposalRecord) -> Step,
    ) -> Result<ProposalStep, StateError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut open = self.open_seal(&tx, &seals::PROPOSALS).await?;
        let current = match &open {
            // The verified row; a row no member signed is not there.
            Some(open) => open.rows().get(id).map(|row| decode(id, row)).transpose()?,
            None => tx
                .query_opt(
                    "SELECT record FROM proposals WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(db)?
                .as_ref()
                .map(super::record)
                .transpose()?,
        };
        let Some(current) = current else {
            return Ok(ProposalStep::NotFound);
        };
        let (changed, answer) = match f(current) {
            Ok(changed) => changed,
            Err(refused) => return Ok(refused),
        };
        let signature = self.row_signature(TABLE, id, &changed)?;
        let row = tx
            .query_opt(
                "UPDATE proposals SET status = $2, record = $3, signature = $4 WHERE id = $1
                 RETURNING id, record::text, signature",
                &[&id, &changed.status.as_str(), &Json(&changed), &signature],
            )
            .await
            .map_err(db)?;
        put(&mut open, row.as_ref(), id, &changed)?;
        let written = self.seal(&tx, open).await?;
        self.commit(tx, written).await?;
        Ok(answer)
    }
}
