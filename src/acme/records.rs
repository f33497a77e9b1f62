//! What the ACME front door keeps in the CA state ([`crate::state::acme`]): accounts and the
//! index from account-key thumbprint to account, orders, authorizations with their
//! challenges, issued certificates, External Account Binding keys with their policy, and
//! nonces. Versioned JSON records; typed here, stored as JSON there.
//!
//! An EAB key's MAC key is the one secret among them: held in [`MacKey`] (zeroized on drop,
//! `Debug` redacted) and never logged, audited or put in an error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::AcmeError;
use crate::state::{AcmeKind, AcmeObject, CaState};

/// The version of every record written here.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub version: u32,
    pub id: String,
    /// `valid`, `deactivated` or `revoked`.
    pub status: String,
    /// The account key's public JWK.
    pub jwk: Value,
    pub thumbprint: String,
    #[serde(default)]
    pub contact: Vec<String>,
    /// The EAB key the account was bound with.
    #[serde(default)]
    pub eab_kid: Option<String>,
    pub created_at: i64,
}

/// The account-key index: which account a key thumbprint belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountKeyIndex {
    pub account: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub version: u32,
    pub id: String,
    pub account: String,
    /// `pending` until finalized, then `processing`, `valid` or `invalid` (`ready` is never
    /// stored: it is read from the authorizations).
    pub status: String,
    /// Unix seconds.
    pub expires: i64,
    pub identifiers: Vec<Identifier>,
    /// Authorization ids, one per identifier.
    pub authorizations: Vec<String>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub error: Option<Value>,
    /// The certificate's id once issued.
    #[serde(default)]
    pub certificate: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// `http-01`, `dns-01` or `tls-alpn-01`.
    #[serde(rename = "type")]
    pub kind: String,
    pub token: String,
    /// `pending`, `processing`, `valid` or `invalid`.
    pub status: String,
    #[serde(default)]
    pub validated: Option<String>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Authorization {
    pub version: u32,
    pub id: String,
    pub account: String,
    /// The name to prove control of (for a wildcard order: without `*.`).
    pub identifier: Identifier,
    pub wildcard: bool,
    /// `pending` or `deactivated`; `valid`, `invalid` and `expired` are read from the
    /// challenges and the clock.
    pub status: String,
    /// Unix seconds.
    pub expires: i64,
    pub challenges: Vec<Challenge>,
}

impl Authorization {
    /// The status a client sees at `now`.
    pub fn current_status(&self, now: i64) -> &'static str {
        if self.status == "deactivated" {
            "deactivated"
        } else if self.challenges.iter().any(|c| c.status == "valid") {
            "valid"
        } else if self.challenges.iter().any(|c| c.status == "invalid") {
            "invalid"
        } else if now >= self.expires {
            "expired"
        } else {
            "pending"
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub version: u32,
    /// Serial number, lowercase hex (as audited).
    pub serial: String,
    pub account: String,
    pub order: String,
    /// Leaf first, then the issuing intermediate.
    pub chain_pem: String,
    /// Key id of the intermediate that signed it.
    pub issuer_key: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// An EAB MAC key: zeroized on drop, never printed.
#[derive(Clone, PartialEq)]
pub struct MacKey(Zeroizing<String>);

impl MacKey {
    /// A key from its base64url text.
    pub fn new(text: String) -> Self {
        MacKey(Zeroizing::new(text))
    }

    /// The base64url text (shown once, when made).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key bytes for HMAC.
    pub fn bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        super::jws::unb64(&self.0, "mac key")
            .ok()
            .map(Zeroizing::new)
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

impl Serialize for MacKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MacKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(MacKey::new(String::deserialize(d)?))
    }
}

/// What the accounts bound with an EAB key may have certified.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EabPolicy {
    /// DNS names under these suffixes (`example.com` allows `a.example.com` and itself).
    #[serde(default)]
    pub dns_suffixes: Vec<String>,
    /// These DNS names exactly.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Wildcard names (`*.a.example.com`) under an allowed suffix.
    #[serde(default)]
    pub wildcards: bool,
    /// IP address identifiers.
    #[serde(default)]
    pub ip: bool,
    /// Longest validity, seconds (`[acme] max_validity_secs` when unset).
    #[serde(default)]
    pub max_validity_secs: Option<u64>,
    /// Certificates carry clientAuth besides serverAuth.
    #[serde(default)]
    pub client_auth: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EabKey {
    pub version: u32,
    pub kid: String,
    pub mac_key: MacKey,
    pub created_at: i64,
    #[serde(default)]
    pub revoked: bool,
    pub policy: EabPolicy,
}

/// Typed access to the ACME objects of the CA state.
pub struct Records<'a>(pub &'a CaState);

fn corrupt(kind: AcmeKind, id: &str, e: serde_json::Error) -> AcmeError {
    AcmeError::Internal(format!("stored {} {id} is unreadable: {e}", kind.name()))
}

impl Records<'_> {
    /// A record and the stored JSON it was read from (for [`Records::update`]).
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: AcmeKind,
        id: &str,
    ) -> Result<Option<(T, Value)>, AcmeError> {
        let Some(obj) = self.0.acme_get(kind, id).await? else {
            return Ok(None);
        };
        let typed = serde_json::from_value(obj.record.clone()).map_err(|e| corrupt(kind, id, e))?;
        Ok(Some((typed, obj.record)))
    }

    fn object<T: Serialize>(record: &T, expires_at: Option<i64>) -> Result<AcmeObject, AcmeError> {
        Ok(AcmeObject {
            expires_at,
            record: serde_json::to_value(record).map_err(|e| AcmeError::Internal(e.to_string()))?,
        })
    }

    pub async fn put<T: Serialize>(
        &self,
        kind: AcmeKind,
        id: &str,
        record: &T,
        expires_at: Option<i64>,
    ) -> Result<(), AcmeError> {
        Ok(self
            .0
            .acme_put(kind, id, &Self::object(record, expires_at)?)
            .await?)
    }

    /// Stores a new record; false when the id is taken.
    pub async fn insert<T: Serialize>(
        &self,
        kind: AcmeKind,
        id: &str,
        record: &T,
        expires_at: Option<i64>,
    ) -> Result<bool, AcmeError> {
        Ok(self
            .0
            .acme_insert(kind, id, &Self::object(record, expires_at)?)
            .await?)
    }

    /// Replaces the record read as `old` with `new`; false when someone changed it meanwhile.
    pub async fn update<T: Serialize>(
        &self,
        kind: AcmeKind,
        id: &str,
        old: &Value,
        new: &T,
        expires_at: Option<i64>,
    ) -> Result<bool, AcmeError> {
        Ok(self
            .0
            .acme_update(kind, id, old, &Self::object(new, expires_at)?)
            .await?)
    }

    /// Every record of a kind.
    pub async fn list<T: DeserializeOwned>(&self, kind: AcmeKind) -> Result<Vec<T>, AcmeError> {
        self.0
            .acme_list(kind)
            .await?
            .into_iter()
            .map(|(id, obj)| serde_json::from_value(obj.record).map_err(|e| corrupt(kind, &id, e)))
            .collect()
    }
}

/// How long objects of a finished order are kept after it expires, for downloads and
/// revocation by the account.
pub const KEEP_AFTER_EXPIRY: i64 = 30 * 86400;
