//! ACME objects in PostgreSQL (table `acme_objects`, schema version 4): one row per (kind,
//! id), the expiry in a column so expired objects are pruned in one statement. Replacing only
//! if unchanged is one conditional `UPDATE`; taking an object is `DELETE .. RETURNING`, so of
//! any number of nodes exactly one takes a nonce.

use tokio_postgres::types::Json;

use super::{db, PgState};
use crate::state::acme::{AcmeKind, AcmeObject};
use crate::state::StateError;

fn object(row: &tokio_postgres::Row) -> Result<AcmeObject, StateError> {
    let corrupt = |e: tokio_postgres::Error| StateError::Corrupt {
        key: "acme_objects".into(),
        reason: e.to_string(),
    };
    let Json(record): Json<serde_json::Value> = row.try_get("record").map_err(corrupt)?;
    let expires_at: Option<i64> = row.try_get("expires_at").map_err(corrupt)?;
    Ok(AcmeObject { expires_at, record })
}

impl PgState {
    /// Stores a new object; false (changing nothing) when (kind, id) is taken.
    pub async fn acme_insert(
        &self,
        kind: AcmeKind,
        id: &str,
        obj: &AcmeObject,
    ) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO acme_objects (kind, id, expires_at, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, id) DO NOTHING",
                &[&kind.name(), &id, &obj.expires_at, &Json(&obj.record)],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Stores (or replaces) an object.
    pub async fn acme_put(
        &self,
        kind: AcmeKind,
        id: &str,
        obj: &AcmeObject,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO acme_objects (kind, id, expires_at, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, id)
                 DO UPDATE SET expires_at = EXCLUDED.expires_at, record = EXCLUDED.record",
                &[&kind.name(), &id, &obj.expires_at, &Json(&obj.record)],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// One object.
    pub async fn acme_get(
        &self,
        kind: AcmeKind,
        id: &str,
    ) -> Result<Option<AcmeObject>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT expires_at, record FROM acme_objects WHERE kind = $1 AND id = $2",
                &[&kind.name(), &id],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(object).transpose()
    }

    /// Replaces the object with `new` only if its record is still `old`; false otherwise.
    pub async fn acme_update(
        &self,
        kind: AcmeKind,
        id: &str,
        old: &serde_json::Value,
        new: &AcmeObject,
    ) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE acme_objects SET expires_at = $4, record = $5
                 WHERE kind = $1 AND id = $2 AND record = $3",
                &[
                    &kind.name(),
                    &id,
                    &Json(old),
                    &new.expires_at,
                    &Json(&new.record),
                ],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Removes the object and returns it; of any number of callers exactly one gets it.
    pub async fn acme_take(
        &self,
        kind: AcmeKind,
        id: &str,
    ) -> Result<Option<AcmeObject>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM acme_objects WHERE kind = $1 AND id = $2
                 RETURNING expires_at, record",
                &[&kind.name(), &id],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(object).transpose()
    }

    /// Every object of a kind, by id.
    pub async fn acme_list(&self, kind: AcmeKind) -> Result<Vec<(String, AcmeObject)>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, expires_at, record FROM acme_objects WHERE kind = $1 ORDER BY id",
                &[&kind.name()],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id").map_err(db)?;
                Ok((id, object(r)?))
            })
            .collect()
    }

    /// Forgets every object that expired at or before `now` (unix seconds); returns how many.
    pub async fn acme_prune(&self, now: i64) -> Result<u64, StateError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM acme_objects WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&now],
            )
            .await
            .map_err(db)
    }
}
