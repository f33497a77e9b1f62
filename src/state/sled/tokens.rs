//! Vault front-door tokens in sled: one tree, each record under its token hash. Every
//! change is flushed before it returns.

use super::{storage, SledState};
use crate::state::records::{decode, encode};
use crate::state::tokens::TokenRecord;
use crate::state::StateError;

impl SledState {
    /// Stores (or replaces) the token record under its hash.
    pub fn put_token(&self, record: &TokenRecord) -> Result<(), StateError> {
        self.tokens
            .insert(record.token_sha256.as_bytes(), encode(record)?)
            .map_err(storage)?;
        self.flush()
    }

    /// The record of the token whose hash is `sha256`, expired or not.
    pub fn token(&self, sha256: &str) -> Result<Option<TokenRecord>, StateError> {
        self.tokens
            .get(sha256.as_bytes())
            .map_err(storage)?
            .map(|v| decode(sha256.as_bytes(), &v))
            .transpose()
    }

    /// Forgets a token; false when it was not there.
    pub fn delete_token(&self, sha256: &str) -> Result<bool, StateError> {
        let removed = self.tokens.remove(sha256.as_bytes()).map_err(storage)?;
        self.flush()?;
        Ok(removed.is_some())
    }

    /// Forgets every token that expired before `now` (unix seconds); returns how many.
    pub fn prune_tokens(&self, now: i64) -> Result<u64, StateError> {
        let mut pruned = 0;
        for item in self.tokens.iter() {
            let (k, v) = item.map_err(storage)?;
            let record: TokenRecord = decode(&k, &v)?;
            if record.expires_at <= now {
                self.tokens.remove(&k).map_err(storage)?;
                pruned += 1;
            }
        }
        self.flush()?;
        Ok(pruned)
    }
}
