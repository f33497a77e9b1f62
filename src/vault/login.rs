//! Logins: `cert` (the TLS client certificate, matched to a certificate role), `kubernetes`
//! (`{role, jwt}`, the JWT verified against the role's cluster JWKS, the service account bound
//! by the role) and `approle` (`{role_id, secret_id}`, the secret id read from its file or
//! environment variable and compared in constant time). Each success mints a token with the
//! role's policies and is audited (`token_issued`, naming the token by its accessor).
//!
//! It must never put a JWT or a secret id into an answer, a log line or a record.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};

use super::error::VaultError;
use super::{text, tokens, Call, VaultApi};
use crate::audit::AuditEvent;
use crate::secret::{constant_time_eq, Secret};

/// Who logged in, through which role, with which policies.
struct LoggedIn {
    login: String,
    caller: String,
    policies: Vec<String>,
}

impl LoggedIn {
    fn new(mount: &str, role: &str, caller: String, policies: &[String]) -> Self {
        LoggedIn {
            login: format!("{mount}/{role}"),
            caller,
            policies: policies.to_vec(),
        }
    }
}

/// `PUT|POST /v1/auth/<mount>/login`.
pub(super) async fn login(
    api: &VaultApi,
    call: &mut Call,
    mount: &str,
) -> Result<Response, VaultError> {
    let s = api.settings();
    let kind = if mount == s.cert_mount {
        "cert"
    } else if mount == s.kubernetes_mount {
        "kubernetes"
    } else if mount == s.approle_mount {
        "approle"
    } else {
        return Err(VaultError::denied());
    };
    call.write()?;
    let params = call.params()?;
    let who = match kind {
        "cert" => cert(api, call, &params)?,
        "kubernetes" => kubernetes(api, call, &params)?,
        _ => approle(api, call, &params)?,
    };
    let now = api.now();
    let (token, record) = tokens::mint(
        api.control.state(),
        s,
        who.login,
        who.caller,
        who.policies,
        now,
    )
    .await?;
    if let Some(audit) = api.control.audit() {
        audit
            .append(AuditEvent::TokenIssued {
                login: record.login.clone(),
                caller: record.caller.clone(),
                accessor: record.accessor.clone(),
                policies: record.policies.clone(),
                expires_at: crate::clock::rfc3339(
                    time::OffsetDateTime::from_unix_timestamp(record.expires_at)
                        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                ),
            })
            .await?;
    }
    tracing::debug!(login = %record.login, caller = %record.caller, accessor = %record.accessor, "vault login");
    Ok(Json(tokens::auth_answer(&token, &record, now)).into_response())
}

/// A secret parameter (a JWT, a secret id), held as a [`Secret`] from here on.
fn secret_param(params: &Map<String, Value>, key: &str) -> Result<Secret, VaultError> {
    text(params, key)?
        .map(|v| Secret::new(v.to_string()))
        .ok_or_else(|| VaultError::BadRequest(format!("missing {key}")))
}

/// `cert`: the client certificate the TLS handshake verified, not revoked, presenting an
/// identity of the named role (or of any role when no name is given).
fn cert(
    api: &VaultApi,
    call: &mut Call,
    params: &Map<String, Value>,
) -> Result<LoggedIn, VaultError> {
    let invalid =
        || VaultError::BadRequest("invalid certificate or no client certificate supplied".into());
    let peer = call
        .peer
        .as_ref()
        .filter(|p| !p.identities.is_empty())
        .ok_or_else(invalid)?;
    call.who = peer.identities.first().cloned();
    if let Some(der) = peer.leaf.as_deref() {
        let cert = crate::ca::inspect::parse_certificate(der).map_err(|_| invalid())?;
        if let Err(reason) = api.control.trust().revocations().check(&cert) {
            tracing::info!(%reason, "vault cert login: revoked client certificate");
            return Err(invalid());
        }
    }
    let name = text(params, "name")?;
    let role = api
        .settings()
        .cert_roles
        .iter()
        .filter(|r| name.is_none_or(|n| n == r.name))
        .find_map(|r| {
            peer.identities
                .iter()
                .find(|id| r.identities.contains(id))
                .map(|id| (r, id))
        });
    let (role, identity) = role.ok_or_else(invalid)?;
    Ok(LoggedIn::new(
        &api.settings().cert_mount,
        &role.name,
        identity.clone(),
        &role.policies,
    ))
}

/// `kubernetes`: a service-account token of the role's cluster, for a bound account.
fn kubernetes(
    api: &VaultApi,
    call: &mut Call,
    params: &Map<String, Value>,
) -> Result<LoggedIn, VaultError> {
    let name =
        text(params, "role")?.ok_or_else(|| VaultError::BadRequest("missing role".into()))?;
    let jwt = secret_param(params, "jwt")?;
    let role = api
        .settings()
        .kubernetes_roles
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| VaultError::BadRequest(format!("invalid role name {name:?}")))?;
    let verifier = api
        .auth
        .clusters
        .iter()
        .find(|c| c.id == role.cluster)
        .ok_or_else(VaultError::denied)?;
    let id = verifier
        .verify(jwt.expose(), &api.auth.trust_domain)
        .map_err(|e| {
            tracing::info!(role = %role.name, reason = %e, "vault kubernetes login refused");
            VaultError::denied()
        })?;
    call.who = Some(id.to_string());
    let bound = id
        .namespace_and_account()
        .is_some_and(|(ns, sa)| role.binds(ns, sa));
    if !bound {
        return Err(VaultError::PermissionDenied(
            "service account name not authorized".into(),
        ));
    }
    Ok(LoggedIn::new(
        &api.settings().kubernetes_mount,
        &role.name,
        id.to_string(),
        &role.policies,
    ))
}

/// `approle`: a configured role id and its secret id.
fn approle(
    api: &VaultApi,
    call: &mut Call,
    params: &Map<String, Value>,
) -> Result<LoggedIn, VaultError> {
    let role_id =
        text(params, "role_id")?.ok_or_else(|| VaultError::BadRequest("missing role_id".into()))?;
    let given = secret_param(params, "secret_id")?;
    let invalid = || VaultError::BadRequest("invalid role or secret ID".into());
    let role = api
        .settings()
        .approles
        .iter()
        .find(|r| constant_time_eq(r.role_id.as_bytes(), role_id.as_bytes()))
        .ok_or_else(invalid)?;
    call.who = Some(format!("approle:{}", role.name));
    let expected = role
        .secret_id
        .load()
        .map_err(|e| VaultError::Internal(format!("approle {}: secret id: {e}", role.name)))?;
    if expected != given {
        return Err(invalid());
    }
    Ok(LoggedIn::new(
        &api.settings().approle_mount,
        &role.name,
        format!("approle:{}", role.name),
        &role.policies,
    ))
}
