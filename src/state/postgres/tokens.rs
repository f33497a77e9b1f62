//! Vault front-door tokens in PostgreSQL (table `vault_tokens`, schema version 3): one row
//! per token hash, its expiry in a column so expired tokens are pruned in one statement.

use tokio_postgres::types::Json;

use super::{db, record, PgState};
use crate::state::tokens::TokenRecord;
use crate::state::StateError;

impl PgState {
    /// Stores (or replaces) the token record under its hash.
    pub async fn put_token(&self, record: &TokenRecord) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO vault_tokens (token_sha256, expires_at, record) VALUES ($1, $2, $3)
                 ON CONFLICT (token_sha256)
                 DO UPDATE SET expires_at = EXCLUDED.expires_at, record = EXCLUDED.record",
                &[&record.token_sha256, &record.expires_at, &Json(record)],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The record of the token whose hash is `sha256`, expired or not.
    pub async fn token(&self, sha256: &str) -> Result<Option<TokenRecord>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT record FROM vault_tokens WHERE token_sha256 = $1",
                &[&sha256],
            )
            .await
            .map_err(db)?;
        row.as_ref().map(record).transpose()
    }

    /// Forgets a token; false when it was not there.
    pub async fn delete_token(&self, sha256: &str) -> Result<bool, StateError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM vault_tokens WHERE token_sha256 = $1",
                &[&sha256],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Forgets every token that expired before `now` (unix seconds); returns how many.
    pub async fn prune_tokens(&self, now: i64) -> Result<u64, StateError> {
        self.client()
            .await?
            .execute("DELETE FROM vault_tokens WHERE expires_at <= $1", &[&now])
            .await
            .map_err(db)
    }
}
