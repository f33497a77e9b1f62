//! The leader lease in PostgreSQL (schema version 7): one row naming the node that runs the
//! leader-only jobs and until when (the database's clock, so nodes' clocks do not matter).
//! Taking the lease over from another node, or after it lapsed, raises the epoch; renewing it
//! in time keeps it. A fenced write ([`crate::state::fenced`]) locks the row for share and
//! commits only while it still names the writer and epoch, so a new holder's take-over waits
//! for a write in flight, and a paused old leader's later write is refused.

use std::time::Duration;

use super::{db, unsigned, PgState};
use crate::state::{current_fence, StateError};

/// Who holds the lease, as the database says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    pub epoch: u64,
    /// Whether the lease has not lapsed.
    pub live: bool,
}

/// Inside an intermediate transition: refused unless the running job's fence (if it has one)
/// still holds.
pub(super) async fn check_fence(tx: &tokio_postgres::Transaction<'_>) -> Result<(), StateError> {
    let Some(fence) = current_fence() else {
        return Ok(());
    };
    let epoch = i64::try_from(fence.epoch).unwrap_or(i64::MAX);
    let holds = tx
        .query_opt(
            "SELECT 1 FROM leader WHERE node_id = $1 AND epoch = $2 AND expires_at > now()
             FOR SHARE",
            &[&fence.node, &epoch],
        )
        .await
        .map_err(db)?
        .is_some();
    if holds {
        Ok(())
    } else {
        Err(StateError::Fenced {
            node: fence.node,
            epoch: fence.epoch,
        })
    }
}

impl PgState {
    /// Whether the running job's fence (if it has one) still holds: checked before work a
    /// fenced write cannot undo (a key made in the device, a certificate signed).
    pub async fn check_fence(&self) -> Result<(), StateError> {
        if current_fence().is_none() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        check_fence(&tx).await?;
        tx.commit().await.map_err(db)
    }

    /// Takes or renews the lease for `node` for `lease`; its epoch when this node holds it
    /// now, `None` when another node holds a live lease.
    pub async fn acquire_leadership(
        &self,
        node: &str,
        lease: Duration,
    ) -> Result<Option<u64>, StateError> {
        let secs = lease.as_secs_f64();
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE leader SET
                     epoch = CASE WHEN node_id = $1 AND expires_at > now() THEN epoch
                                  ELSE epoch + 1 END,
                     node_id = $1,
                     expires_at = now() + make_interval(secs => $2)
                 WHERE node_id IS NULL OR node_id = $1 OR expires_at <= now()
                 RETURNING epoch",
                &[&node, &secs],
            )
            .await
            .map_err(db)?;
        row.map(|r| unsigned(r.get(0), "leader epoch")).transpose()
    }

    /// Gives the lease up (a clean stop), so another node takes over at once.
    pub async fn release_leadership(&self, node: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "UPDATE leader SET expires_at = now() WHERE node_id = $1",
                &[&node],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The current holder (`None` before any node took the lease).
    pub async fn leader(&self) -> Result<Option<Leader>, StateError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT node_id, epoch, coalesce(expires_at > now(), false) FROM leader",
                &[],
            )
            .await
            .map_err(db)?;
        let node: Option<String> = row.get(0);
        node.map(|node| {
            Ok(Leader {
                node,
                epoch: unsigned(row.get(1), "leader epoch")?,
                live: row.get(2),
            })
        })
        .transpose()
    }
}
