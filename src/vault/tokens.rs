//! Access tokens: minted at login (random, `hvs.` + 43 base64url characters), held by the
//! caller only, stored only as their SHA-256 through the CA state (so any appliance on a shared
//! store accepts them), short-lived, renewable up to a maximum lifetime, bound to the login
//! role's policies. The token value lives in a [`Secret`] (zeroized, redacted in `Debug`).
//!
//! It must never store, log or audit a token: the accessor (a separate random id) names it.

use axum::http::HeaderMap;
use base64::Engine;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::error::VaultError;
use crate::config::vault_api::VaultSettings;
use crate::secret::Secret;
use crate::state::{CaState, TokenRecord};

/// The token's lookup key: lowercase hex SHA-256.
pub fn token_hash(token: &Secret) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes()).as_ref())
}

fn random(bytes: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// The token a request presents: `X-Vault-Token`, or `Authorization: Bearer`.
pub fn presented(headers: &HeaderMap) -> Option<Secret> {
    let from = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = from("x-vault-token").map(str::trim).or_else(|| {
        let (scheme, t) = from("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
    })?;
    (!token.is_empty()).then(|| Secret::new(token.to_string()))
}

/// Mints a token for `caller` logged in through `login` with `policies`; stores its record.
pub async fn mint(
    state: &CaState,
    settings: &VaultSettings,
    login: String,
    caller: String,
    policies: Vec<String>,
    now: i64,
) -> Result<(Secret, TokenRecord), VaultError> {
    let token = Secret::new(format!(
        "hvs.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(32))
    ));
    let record = TokenRecord {
        version: crate::state::RECORD_VERSION,
        token_sha256: token_hash(&token),
        accessor: hex::encode(random(12)),
        login,
        caller,
        policies,
        issued_at: now,
        expires_at: now.saturating_add(secs(settings.token_ttl)),
        max_expires_at: now.saturating_add(secs(settings.token_max_ttl)),
    };
    state.put_token(&record).await?;
    Ok((token, record))
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The live record of the token `headers` present; 403 for none, an unknown one, or an
/// expired one.
pub async fn authenticate(
    state: &CaState,
    headers: &HeaderMap,
    now: i64,
) -> Result<(Secret, TokenRecord), VaultError> {
    let token = presented(headers).ok_or_else(VaultError::denied)?;
    match state.token(&token_hash(&token)).await? {
        Some(record) if record.expires_at > now => Ok((token, record)),
        _ => Err(VaultError::denied()),
    }
}

/// Extends a token by `increment` (or the configured TTL), never past its maximum lifetime.
pub async fn renew(
    state: &CaState,
    settings: &VaultSettings,
    mut record: TokenRecord,
    increment: Option<std::time::Duration>,
    now: i64,
) -> Result<TokenRecord, VaultError> {
    let ttl = increment
        .filter(|d| !d.is_zero())
        .unwrap_or(settings.token_ttl)
        .min(settings.token_ttl);
    record.expires_at = now
        .saturating_add(secs(ttl))
        .min(record.max_expires_at)
        .max(record.expires_at);
    state.put_token(&record).await?;
    Ok(record)
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(crate::clock::rfc3339)
        .unwrap_or_default()
}

/// The `auth` block of a login or renewal answer (the token travels to its holder only here).
pub fn auth_answer(token: &Secret, record: &TokenRecord, now: i64) -> Value {
    json!({
        "request_id": hex::encode(random(8)),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": token.expose(),
            "accessor": record.accessor,
            "policies": record.policies,
            "token_policies": record.policies,
            "metadata": {"login": record.login, "caller": record.caller},
            "lease_duration": (record.expires_at - now).max(0),
            "renewable": record.expires_at < record.max_expires_at,
            "entity_id": "",
            "token_type": "service",
            "orphan": true,
        },
    })
}

/// `lookup-self`: what the token is (its own value included, as Vault does: the caller sent it).
pub fn lookup_answer(token: &Secret, record: &TokenRecord, now: i64) -> Value {
    json!({
        "request_id": hex::encode(random(8)),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "data": {
            "id": token.expose(),
            "accessor": record.accessor,
            "policies": record.policies,
            "display_name": record.login.replace('/', "-"),
            "meta": {"login": record.login, "caller": record.caller},
            "path": format!("auth/{}/login", record.login.split('/').next().unwrap_or("")),
            "creation_time": record.issued_at,
            "creation_ttl": record.expires_at - record.issued_at,
            "issue_time": rfc3339(record.issued_at),
            "expire_time": rfc3339(record.expires_at),
            "explicit_max_ttl": record.max_expires_at - record.issued_at,
            "ttl": (record.expires_at - now).max(0),
            "renewable": record.expires_at < record.max_expires_at,
            "num_uses": 0,
            "orphan": true,
            "type": "service",
            "entity_id": "",
        },
    })
}
