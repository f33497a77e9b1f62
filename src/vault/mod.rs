//! A front door that speaks the part of HashiCorp Vault's HTTP API that SPIRE's `vault`
//! UpstreamAuthority and cert-manager's Vault issuer (so istio-csr too) call, on its own TLS
//! listener (`[vault_api]`, off by default), in front of the same issuing core and audit log
//! as the Istio service.
//!
//! Paths (`<pki>` and the auth mounts are configurable; PUT and POST alike; doubled or
//! trailing slashes are ignored): `GET /v1/sys/health`; `/v1/auth/<cert|kubernetes|approle>/login`
//! ([`login`]); `GET /v1/auth/token/lookup-self`, `/v1/auth/token/renew-self`,
//! `/v1/auth/token/revoke-self` ([`tokens`]); `/v1/<pki>/sign/<role>`,
//! `/v1/<pki>/root/sign-intermediate`, `GET /v1/<pki>/ca/pem`, `/ca_chain`, `/cert/ca_chain`,
//! `/crl/pem` ([`pki`]). Policy is ours: a token carries the policies of its login role, each
//! the name of a PKI role or an intermediate grant (`[vault_api]`, [`crate::config::vault_api`]); nothing signs what is
//! merely asked. Every answer that issues is audited like the Istio service's, and every
//! refusal is recorded through the audit log's refusal limiter. Errors take one way out,
//! [`error::VaultError`].
//!
//! It must never log, record or echo a token, a secret id or a JWT, and never issue an
//! identity configured as an admin identity.

pub mod error;
mod login;
mod pki;
pub mod policy;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::admin::{Peer, TlsListener};
use crate::auth::Authenticator;
use crate::config::vault_api::VaultSettings;
use crate::config::Config;
use crate::control::Control;
use crate::trust::TrustPlane;
use error::VaultError;

/// Largest request body accepted (a CSR and a few parameters).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the Vault handlers share: the control plane (CA state, issuer view, audit, config)
/// and the token verifiers of the configured clusters.
#[derive(Clone)]
pub struct VaultApi {
    control: Arc<Control>,
    auth: Arc<Authenticator>,
}

impl VaultApi {
    pub fn new(control: Arc<Control>, auth: Arc<Authenticator>) -> Self {
        VaultApi { control, auth }
    }

    fn settings(&self) -> &VaultSettings {
        &self.control.config().vault_api
    }

    /// Unix seconds now, from the control plane's clock.
    fn now(&self) -> i64 {
        self.control.clock().now().unix_timestamp()
    }
}

/// One request, as far as the handlers need it.
struct Call {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    peer: Option<Peer>,
    /// Who the caller turned out to be, for the refusal record.
    who: Option<String>,
}

impl Call {
    /// The JSON object in the body (an empty body is no parameters).
    fn params(&self) -> Result<Map<String, Value>, VaultError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(VaultError::BadRequest(
                "failed to parse JSON input: the body must be a JSON object".into(),
            )),
        }
    }

    /// Refuses anything but a write (PUT or POST).
    fn write(&self) -> Result<(), VaultError> {
        match self.method {
            Method::PUT | Method::POST => Ok(()),
            _ => Err(VaultError::MethodNotAllowed),
        }
    }

    /// On a path that needs a token: anything but a write is refused as Vault's ACL refuses an
    /// operation no policy grants (403), whoever asks.
    fn write_only(&self) -> Result<(), VaultError> {
        self.write().map_err(|_| VaultError::denied())
    }

    /// Refuses anything but a read (GET or HEAD).
    fn read(&self) -> Result<(), VaultError> {
        match self.method {
            Method::GET | Method::HEAD => Ok(()),
            _ => Err(VaultError::MethodNotAllowed),
        }
    }
}

/// A string parameter; `None` when absent or empty.
fn text<'a>(params: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, VaultError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(VaultError::BadRequest(format!("{key} must be a string"))),
    }
}

/// A JSON answer with Vault's envelope around `data`.
fn data_answer(data: Value) -> Response {
    Json(json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    }))
    .into_response()
}

/// `GET /v1/sys/health`: 200 while the device, the audit log and an unexpired active
/// intermediate can serve ("unsealed"), 503 with `sealed: true` otherwise.
async fn health(api: &VaultApi, call: &Call) -> Result<Response, VaultError> {
    call.read()?;
    let (reasons, _) = crate::admin::readiness(&api.control).await;
    let sealed = !reasons.is_empty();
    if sealed {
        tracing::info!(reasons = %reasons.join("; "), "vault health: not serving");
    }
    let status = if sealed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": api.now(),
        "version": concat!("hsm-ca-", env!("CARGO_PKG_VERSION")),
        "cluster_name": "hsm-ca",
    });
    Ok((status, Json(body)).into_response())
}

/// Routes one request by its path segments (empty segments dropped: `//` and a trailing `/`
/// mean nothing).
async fn route(api: &VaultApi, call: &mut Call, path: &str) -> Result<Response, VaultError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let s = api.settings();
    match segments.as_slice() {
        ["v1", "sys", "health"] => health(api, call).await,
        ["v1", "auth", "token", op] => tokens_route(api, call, op).await,
        ["v1", "auth", mount, "login"] => login::login(api, call, mount).await,
        ["v1", mount, rest @ ..] if *mount == s.pki_mount => pki::route(api, call, rest).await,
        _ => Err(VaultError::denied()),
    }
}

/// `auth/token/{lookup-self,renew-self,revoke-self}`.
async fn tokens_route(api: &VaultApi, call: &mut Call, op: &str) -> Result<Response, VaultError> {
    let state = api.control.state();
    let now = api.now();
    match op {
        "lookup-self" => {
            if call.method != Method::GET && call.method != Method::POST {
                return Err(VaultError::MethodNotAllowed);
            }
            let (token, record) = tokens::authenticate(state, &call.headers, now).await?;
            call.who = Some(record.caller.clone());
            Ok(Json(tokens::lookup_answer(&token, &record, now)).into_response())
        }
        "renew-self" => {
            call.write()?;
            let params = call.params()?;
            let (token, record) = tokens::authenticate(state, &call.headers, now).await?;
            call.who = Some(record.caller.clone());
            let increment =
                policy::parse_ttl(params.get("increment")).map_err(VaultError::BadRequest)?;
            let record = tokens::renew(state, api.settings(), record, increment, now).await?;
            Ok(Json(tokens::auth_answer(&token, &record, now)).into_response())
        }
        "revoke-self" => {
            call.write()?;
            let (_, record) = tokens::authenticate(state, &call.headers, now).await?;
            call.who = Some(record.caller.clone());
            state.delete_token(&record.token_sha256).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(VaultError::denied()),
    }
}

/// The one handler: routes, answers, and records refusals.
async fn handle(State(api): State<VaultApi>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return VaultError::BadRequest(format!(
                "the request body is larger than {MAX_BODY_BYTES} bytes"
            ))
            .into_response()
        }
    };
    let peer = parts
        .extensions
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(p)| p.clone());
    let mut call = Call {
        method: parts.method.clone(),
        headers: parts.headers,
        body,
        peer,
        who: None,
    };
    let path = parts.uri.path().to_string();
    match route(&api, &mut call, &path).await {
        Ok(answer) => answer,
        Err(e) => {
            let (status, message) = e.status_and_message();
            tracing::info!(%status, path = %path, reason = %e, "vault request refused");
            if let Some(audit) = api.control.audit() {
                audit.refused(
                    call.who.as_deref(),
                    e.code(),
                    &format!("vault {} {path}: {message}", call.method),
                );
            }
            e.into_response()
        }
    }
}

/// The Vault API's router: one fallback handler that routes by path segments.
pub fn router(api: VaultApi) -> Router {
    Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// The client certificates the `cert` login accepts: the trust bundle and
/// `vault_api.client_ca_files`.
fn client_roots(trust: &TrustPlane, config: &Config) -> std::io::Result<Vec<Vec<u8>>> {
    let mut roots = trust.roots();
    for file in &config.vault_api.client_ca_files {
        let certs = crate::authority::read_certificates(file)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        roots.extend(certs);
    }
    Ok(roots)
}

fn tls_config(trust: &TrustPlane, config: &Config) -> std::io::Result<rustls::ServerConfig> {
    crate::tls::admin_server_config(&client_roots(trust, config)?, trust.serving().clone())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The Vault listener's TLS config, built before anything is served so that unreadable
/// `client_ca_files` stop the appliance at start.
pub fn tls(
    trust: &TrustPlane,
    config: &Config,
) -> std::io::Result<Arc<ArcSwap<rustls::ServerConfig>>> {
    Ok(Arc::new(ArcSwap::from_pointee(tls_config(trust, config)?)))
}

/// Serves the Vault API on `listener` with `tls` (from [`tls`]) until `shutdown` resolves,
/// with the appliance's serving certificate; client certificates are checked against the
/// current bundle (the TLS config follows bundle changes within seconds) and the configured
/// client CAs. Expired tokens are pruned from the CA state every five minutes.
pub async fn serve(
    api: VaultApi,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    listener: TcpListener,
    budget: crate::tls::DescriptorBudget,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let control = api.control.clone();
    let follow = {
        let (tls, control) = (tls.clone(), control.clone());
        tokio::spawn(async move {
            let mut last = control.trust().roots();
            for round in 1u64.. {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if round % 60 == 0 {
                    let now = control.clock().now().unix_timestamp();
                    if let Err(e) = control.state().prune_tokens(now).await {
                        tracing::warn!(error = %e, "expired vault tokens not pruned");
                    }
                }
                let now = control.trust().roots();
                if now != last {
                    match tls_config(control.trust(), control.config()) {
                        Ok(next) => {
                            tls.store(Arc::new(next));
                            last = now;
                        }
                        Err(e) => tracing::warn!(error = %e, "vault TLS config not rebuilt"),
                    }
                }
            }
        })
    };
    let limits = control.config().vault_api.connections;
    let listener = TlsListener::named("vault", listener, tls, limits, budget)?;
    let app = router(api).into_make_service_with_connect_info::<Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    follow.abort();
    served
}
