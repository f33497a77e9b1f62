//! The node registry in PostgreSQL (schema version 8): every node that shares the database
//! reports, with each heartbeat, its version, the intermediate it issues from and the roots it
//! serves; the heartbeat time is the database's, so nodes' clocks do not matter. A node that
//! stops cleanly says so; one that stops reporting is not live after [`NODE_LIVE_SECS`].
//! Root activation waits until every live node serves the new root.
//!
//! With row trust each node signs its report and whether it stopped (schema version 12); a
//! row no member signed is shown as not `believed` and holds the activation gate (a forged
//! report cannot make the gate open early). The heartbeat time is the database's and not
//! signed: a database writer can make a node look silent, which only affects availability.

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;

use super::{db, PgState};
use crate::state::StateError;

/// A node whose last heartbeat is older than this many seconds is not live.
pub const NODE_LIVE_SECS: f64 = 15.0;

/// What a node reports of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub version: String,
    /// Key id of the intermediate it issues from.
    pub active_intermediate: String,
    /// Fingerprints (hex SHA-256) of the roots in the bundle it serves.
    pub roots: Vec<String>,
    /// Whether it ships its audit records, and up to which sequence number.
    pub audit_shipped: Option<u64>,
    /// Its row-signing public key (PEM): what the other appliances list in `member_keys`.
    #[serde(default)]
    pub row_key_pem: Option<String>,
}

/// A node as the registry shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    /// RFC 3339, the database's clock.
    pub heartbeat_at: String,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_secs: f64,
    pub live: bool,
    pub stopped: bool,
    /// A member signed this report and stop flag (always, without row trust).
    pub believed: bool,
    #[serde(flatten)]
    pub report: NodeReport,
}

/// The table, as signed rows name it.
const TABLE: &str = "nodes";

impl PgState {
    /// Records `node`'s heartbeat and report.
    pub async fn heartbeat(&self, node: &str, report: &NodeReport) -> Result<(), StateError> {
        // A node's registry signature covers whether it stopped, and its report.
        let signature = self.row_signature(TABLE, node, &(false, report))?;
        self.client()
            .await?
            .execute(
                "INSERT INTO nodes (node_id, heartbeat_at, stopped, record, signature)
                 VALUES ($1, now(), false, $2, $3)
                 ON CONFLICT (node_id) DO UPDATE
                     SET heartbeat_at = now(), stopped = false, record = EXCLUDED.record,
                         signature = EXCLUDED.signature",
                &[&node, &Json(report), &signature],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Marks `node` as stopped cleanly (no longer live, kept in the registry), with its last
    /// report.
    pub async fn node_stopped(&self, node: &str, report: &NodeReport) -> Result<(), StateError> {
        let signature = self.row_signature(TABLE, node, &(true, report))?;
        self.client()
            .await?
            .execute(
                "UPDATE nodes SET stopped = true, record = $2, signature = $3 WHERE node_id = $1",
                &[&node, &Json(report), &signature],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Every node that ever reported, by node id.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, StateError> {
        self.client()
            .await?
            .query(
                "SELECT node_id, to_char(heartbeat_at AT TIME ZONE 'UTC',
                            'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        extract(epoch FROM now() - heartbeat_at)::float8, stopped, record,
                        signature
                 FROM nodes ORDER BY node_id",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|row| {
                let Json(report): Json<NodeReport> =
                    row.try_get(4).map_err(|e| StateError::Corrupt {
                        key: "nodes".into(),
                        reason: e.to_string(),
                    })?;
                let node_id: String = row.get(0);
                let age: f64 = row.get(2);
                let stopped: bool = row.get(3);
                let signature: Option<Vec<u8>> = row.get(5);
                let believed = match self.row_trust() {
                    Some(trust) => trust.believe(
                        TABLE,
                        &node_id,
                        &serde_json::to_vec(&(stopped, &report)).map_err(db)?,
                        signature.as_deref(),
                    ),
                    None => true,
                };
                Ok(NodeStatus {
                    node_id,
                    heartbeat_at: row.get(1),
                    heartbeat_age_secs: age,
                    live: !stopped && age < NODE_LIVE_SECS,
                    stopped,
                    believed,
                    report,
                })
            })
            .collect()
    }
}
