//! The nodes' audit records in PostgreSQL (schema version 6). Each node ships its own chain
//! under its node id: the exact bytes its disk holds, keyed by (node, sequence number), so a
//! shipment repeated after a crash or a lost answer changes nothing, and a record that differs
//! from the one already shipped under the same number (a node that lost its disk and started a
//! new chain under the same id) is refused, never overwritten. `audit_nodes` keeps the public key
//! each node's checkpoints verify with; a node id claimed with another key is refused.
//!
//! It must never rewrite or delete a shipped record: the database copy is what survives a
//! node's lost disk.

use super::{db, unsigned, PgState};
use crate::state::StateError;

/// One record to ship.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShippedRecord {
    pub seq: u64,
    /// The bytes as stored on the node (what the next record's `prev` hashes).
    pub stored: Vec<u8>,
    /// For an `issued` record: the CA key id and the serial, for [`PgState::audit_issued`].
    pub issued: Option<(String, String)>,
}

fn signed(seq: u64) -> Result<i64, StateError> {
    i64::try_from(seq).map_err(|_| StateError::Database(format!("sequence {seq} out of range")))
}

impl PgState {
    /// Registers `node` with its audit public key (PEM; `None` for a log without a key). The
    /// first registration holds: the same node id with another key is refused.
    pub async fn register_audit_node(
        &self,
        node: &str,
        public_key_pem: Option<&str>,
    ) -> Result<(), StateError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO audit_nodes (node_id, public_key_pem) VALUES ($1, $2)
                 ON CONFLICT (node_id) DO NOTHING",
                &[&node, &public_key_pem],
            )
            .await
            .map_err(db)?;
        let row = client
            .query_one(
                "SELECT public_key_pem FROM audit_nodes WHERE node_id = $1",
                &[&node],
            )
            .await
            .map_err(db)?;
        let known: Option<String> = row.get(0);
        if known.as_deref() == public_key_pem {
            Ok(())
        } else {
            Err(StateError::Conflict(format!(
                "node id {node} is registered with another audit key: give this appliance its \
                 own node_id"
            )))
        }
    }

    /// The highest sequence number shipped for `node`, with that record's bytes.
    pub async fn audit_shipped_head(
        &self,
        node: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT seq, stored FROM audit_records WHERE node_id = $1
                 ORDER BY seq DESC LIMIT 1",
                &[&node],
            )
            .await
            .map_err(db)?;
        row.map(|r| Ok((unsigned(r.get(0), "audit sequence")?, r.get(1))))
            .transpose()
    }

    /// Ships `records` of `node` in one transaction. A record already there with the same
    /// bytes is kept as it is; one with other bytes is refused ([`StateError::Conflict`]) and
    /// nothing of this shipment is written.
    pub async fn ship_audit(
        &self,
        node: &str,
        records: &[ShippedRecord],
    ) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let seqs = records
            .iter()
            .map(|r| signed(r.seq))
            .collect::<Result<Vec<i64>, _>>()?;
        let stored: Vec<&[u8]> = records.iter().map(|r| r.stored.as_slice()).collect();
        let keys: Vec<Option<&str>> = records
            .iter()
            .map(|r| r.issued.as_ref().map(|(k, _)| k.as_str()))
            .collect();
        let serials: Vec<Option<&str>> = records
            .iter()
            .map(|r| r.issued.as_ref().map(|(_, s)| s.as_str()))
            .collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute(
            "INSERT INTO audit_records (node_id, seq, stored, issued_ca_key, issued_serial)
             SELECT $1, * FROM unnest($2::bigint[], $3::bytea[], $4::text[], $5::text[])
             ON CONFLICT (node_id, seq) DO NOTHING",
            &[&node, &seqs, &stored, &keys, &serials],
        )
        .await
        .map_err(db)?;
        let differing: i64 = tx
            .query_one(
                "SELECT count(*) FROM audit_records a
                 JOIN unnest($2::bigint[], $3::bytea[]) AS s(seq, stored) ON a.seq = s.seq
                 WHERE a.node_id = $1 AND a.stored <> s.stored",
                &[&node, &seqs, &stored],
            )
            .await
            .map_err(db)?
            .get(0);
        if differing > 0 {
            return Err(StateError::Conflict(format!(
                "{differing} of node {node}'s audit records differ from those shipped before under \
                 the same sequence numbers (a new chain under an old node id?)"
            )));
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// Whether any node's shipped `issued` records hold `serial` issued by the CA key `ca_key`.
    pub async fn audit_issued(&self, ca_key: &str, serial: &str) -> Result<bool, StateError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT 1 FROM audit_records WHERE issued_ca_key = $1 AND issued_serial = $2
                 LIMIT 1",
                &[&ca_key, &serial],
            )
            .await
            .map_err(db)?
            .is_some())
    }

    /// Every node that shipped, with its audit public key (PEM), by node id.
    pub async fn audit_nodes(&self) -> Result<Vec<(String, Option<String>)>, StateError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT node_id, public_key_pem FROM audit_nodes ORDER BY node_id",
                &[],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Up to `limit` of `node`'s shipped records from sequence number `from` on, as stored.
    pub async fn audit_records(
        &self,
        node: &str,
        from: u64,
        limit: i64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        self.client()
            .await?
            .query(
                "SELECT seq, stored FROM audit_records WHERE node_id = $1 AND seq >= $2
                 ORDER BY seq LIMIT $3",
                &[&node, &signed(from)?, &limit],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok((unsigned(r.get(0), "audit sequence")?, r.get(1))))
            .collect()
    }
}
