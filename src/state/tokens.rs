//! Access tokens of the Vault-compatible front door ([`crate::vault`]), as every backend
//! stores them: one versioned JSON record per token, keyed by the SHA-256 of the token, so
//! that any appliance on a shared store accepts a token another one minted.
//!
//! It must never hold a token itself: only its hash, its accessor (a separate random
//! identifier that is safe to log) and what the token may do.

use serde::{Deserialize, Serialize};

/// One token minted by a login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub version: u32,
    /// Lowercase hex SHA-256 of the token: the key it is found by.
    pub token_sha256: String,
    /// A random identifier of the token that is not the token (Vault's accessor).
    pub accessor: String,
    /// The auth method and role that minted it (`approle/ci`, `kubernetes/cert-manager`).
    pub login: String,
    /// Who logged in (a SPIFFE ID, a certificate identity, the role id).
    pub caller: String,
    /// The policies (role names) the token may use.
    pub policies: Vec<String>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the token is refused from this moment on.
    pub expires_at: i64,
    /// Unix seconds; renewals never move `expires_at` past this.
    pub max_expires_at: i64,
}
