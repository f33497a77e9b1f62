//! Who may call an admin route: one extractor, [`Authorized`], authenticates the peer's
//! client certificate (present, not revoked, listed in `[[admin.users]]`) and checks the role
//! the handler asks for by its type ([`AnyRole`], [`Operator`], [`Officer`]). Every refusal is
//! audited through the audit log's refusal limiter (a `refused` record whose reason names the
//! route's method and path template, [`RoutePath`], attached by the router), so a flood of
//! refused calls costs at most a burst of records plus folded counts. It must never run an
//! operation itself.

use std::marker::PhantomData;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;

use super::error::ApiError;
use super::listener::Peer;
use super::Api;
use crate::config::Role;
use crate::control::{Caller, Control};

/// The path template a route was registered under (`/v1/intermediates/{key_id}/activate`),
/// as refusals are audited.
#[derive(Clone, Copy, Debug)]
pub struct RoutePath(pub &'static str);

/// The role a handler requires, named by a type.
pub trait RequiredRole: Send + Sync + 'static {
    /// `None`: any admin user.
    const ROLE: Option<Role>;
}

/// Any listed admin user (read routes).
pub enum AnyRole {}
/// A user with the operator role (the intermediate lifecycle).
pub enum Operator {}
/// A user with the officer role (roots, revocations, approvals).
pub enum Officer {}

impl RequiredRole for AnyRole {
    const ROLE: Option<Role> = None;
}
impl RequiredRole for Operator {
    const ROLE: Option<Role> = Some(Role::Operator);
}
impl RequiredRole for Officer {
    const ROLE: Option<Role> = Some(Role::Officer);
}

/// An authenticated caller holding the role `R`; extracting it refuses (and audits) anyone
/// else.
pub struct Authorized<R: RequiredRole>(pub Caller, pub(super) PhantomData<R>);

impl<R: RequiredRole> FromRequestParts<Api> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let path = match parts.extensions.get::<RoutePath>() {
            Some(RoutePath(path)) => path.to_string(),
            None => parts.uri.path().to_string(),
        };
        let route = format!("{} {path}", parts.method);
        // No connection info (a router driven without the listener): no client certificate.
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer.clone());
        let caller = authorize(&api.control, peer.as_ref(), R::ROLE, &route)?;
        Ok(Authorized(caller, PhantomData))
    }
}

/// Authenticates the peer and checks it holds `role` (`None`: any role). Refusals are audited.
fn authorize(
    ctl: &Control,
    peer: Option<&Peer>,
    role: Option<Role>,
    route: &str,
) -> Result<Caller, ApiError> {
    let refuse = |caller: Option<String>, status, code: &'static str, reason: String| {
        tracing::info!(
            route,
            code,
            caller = caller.as_deref().unwrap_or("-"),
            reason = %reason,
            "admin request refused"
        );
        if let Some(audit) = ctl.audit() {
            audit.refused(caller.as_deref(), code, &format!("admin {route}: {reason}"));
        }
        Err(ApiError::new(status, code, reason))
    };
    let Some(peer) = peer.filter(|p| !p.identities.is_empty()) else {
        return refuse(
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a client certificate is required".into(),
        );
    };
    let revoked = peer.leaf.as_deref().and_then(|der| {
        let cert = crate::ca::inspect::parse_certificate(der).ok()?;
        ctl.trust().revocations().check(&cert).err()
    });
    if let Some(reason) = revoked {
        return refuse(
            peer.identities.first().cloned(),
            StatusCode::UNAUTHORIZED,
            "revoked",
            format!("client certificate: {reason}"),
        );
    }
    let known = peer
        .identities
        .iter()
        .find_map(|id| ctl.config().admin.users.get(id).map(|roles| (id, roles)));
    let Some((identity, roles)) = known else {
        return refuse(
            peer.identities.first().cloned(),
            StatusCode::FORBIDDEN,
            "unknown_identity",
            format!("{} is not an admin user", peer.identities.join(", ")),
        );
    };
    let caller = Caller {
        identity: identity.clone(),
        roles: roles.clone(),
    };
    if let Some(role) = role {
        if !caller.has(role) {
            return refuse(
                Some(caller.identity.clone()),
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{} needs the {role:?} role", route).to_lowercase(),
            );
        }
    }
    Ok(caller)
}
