//! The ACME front door's objects ([`crate::acme`]) as every backend stores them: accounts,
//! the account-key index, orders, authorizations, issued certificates, External Account
//! Binding keys and nonces, each a JSON record under (kind, id), some with an expiry (unix
//! seconds) after which they are pruned. What a record means is the front door's business;
//! here they are stored, found, replaced only if unchanged (so two nodes cannot both move an
//! order or a challenge on), and taken exactly once (a nonce).
//!
//! It must never interpret a record, and never log one (an EAB key's record holds its MAC key).

/// What an ACME object is; each kind is its own key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcmeKind {
    Nonce,
    Account,
    /// Account id by the account key's JWK thumbprint.
    AccountKey,
    Order,
    Authorization,
    Certificate,
    /// External Account Binding keys by key id.
    Eab,
}

impl AcmeKind {
    /// The stored name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            AcmeKind::Nonce => "nonce",
            AcmeKind::Account => "account",
            AcmeKind::AccountKey => "account_key",
            AcmeKind::Order => "order",
            AcmeKind::Authorization => "authz",
            AcmeKind::Certificate => "cert",
            AcmeKind::Eab => "eab",
        }
    }
}

/// One object as stored: its record and when it may be pruned.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AcmeObject {
    /// Unix seconds; pruned at or after this moment. `None`: kept.
    pub expires_at: Option<i64>,
    pub record: serde_json::Value,
}
