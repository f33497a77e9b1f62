//! An ACME server (RFC 8555) on its own TLS listener (`[acme]`, off by default), in front of
//! the same issuing core and audit log as the Istio service: for cert-manager's ACME issuer,
//! certbot, lego and the other clients that gateways, webhooks and hosts already run.
//!
//! Resources live under `/acme/`: `directory`, `new-nonce`, `new-account`, `acct/<id>`
//! ([`account`]), `new-order`, `order/<id>`, `order/<id>/finalize`, `authz/<id>`,
//! `chall/<authz>/<n>`, `cert/<id>`, `revoke-cert` ([`order`]). Every request but the
//! directory and new-nonce is a JWS ([`jws`]) whose nonce is taken from the CA state — so a
//! nonce is good on any node of a cluster, and only once. Accounts are bound to an External
//! Account Binding key ([`eab`]) unless `eab_required = false`, and each key's policy limits
//! what its accounts may order. Challenges are checked from the appliance ([`validate`]).
//! Errors take one way out ([`error::AcmeError`]); every answer carries a fresh
//! `Replay-Nonce`, and every refusal is recorded through the audit log's refusal limiter.
//!
//! It must never issue a name that was not validated for the account, never issue an
//! identity configured as an admin identity, and never log or echo an EAB MAC key.

pub mod account;
mod dns;
pub mod eab;
pub mod error;
mod issue;
mod jws;
mod order;
pub mod records;
mod renewal;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::RngCore;
use serde_json::{json, Value};

use crate::config::acme::AcmeSettings;
use crate::config::Config;
use crate::control::Control;
use crate::state::{AcmeKind, AcmeObject};
use crate::trust::TrustPlane;
use error::AcmeError;
use records::{Account, AccountKeyIndex, Records};

/// Largest request body accepted (a JWS around a CSR).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a nonce stays usable.
const NONCE_LIFETIME_SECS: i64 = 3600;

/// What the ACME handlers share: the control plane (CA state, issuer view, audit, config)
/// and the validator of challenges.
#[derive(Clone)]
pub struct AcmeServer {
    control: Arc<Control>,
    validator: Arc<validate::Validator>,
}

impl AcmeServer {
    pub fn new(control: Arc<Control>) -> Self {
        let validator = Arc::new(validate::Validator::new(&control.config().acme.validation));
        AcmeServer { control, validator }
    }

    fn settings(&self) -> &AcmeSettings {
        &self.control.config().acme
    }

    fn records(&self) -> Records<'_> {
        Records(self.control.state())
    }

    /// Unix seconds now, from the control plane's clock.
    fn now(&self) -> i64 {
        self.control.clock().now().unix_timestamp()
    }

    /// A fresh nonce, stored so that any node accepts it once.
    async fn nonce(&self) -> Result<String, AcmeError> {
        let mut b = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut b);
        let nonce = jws::b64(&b);
        let expires = self.now() + NONCE_LIFETIME_SECS;
        let obj = AcmeObject {
            expires_at: Some(expires),
            record: json!({ "expires_at": expires }),
        };
        self.control
            .state()
            .acme_insert(AcmeKind::Nonce, &nonce, &obj)
            .await?;
        Ok(nonce)
    }

    /// Uses up a nonce: true only for a stored, unexpired one, and only the first time.
    async fn take_nonce(&self, nonce: &str) -> Result<bool, AcmeError> {
        let taken = self
            .control
            .state()
            .acme_take(AcmeKind::Nonce, nonce)
            .await?;
        Ok(taken.is_some_and(|o| o.expires_at.is_some_and(|e| e > self.now())))
    }
}

/// One request, as far as the handlers need it.
pub(crate) struct Call {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    /// `https://host[:port]` the client reached us at.
    base: String,
    /// The request's full URL (what a JWS `url` must say).
    url: String,
    /// Who the caller turned out to be, for the refusal record.
    who: Option<String>,
}

impl Call {
    fn link(&self, path: &str) -> String {
        format!("{}/acme/{path}", self.base)
    }

    fn post(&self) -> Result<(), AcmeError> {
        if self.method == Method::POST {
            Ok(())
        } else {
            Err(AcmeError::MethodNotAllowed)
        }
    }
}

/// A verified JWS request from an existing account (`kid`).
pub(crate) struct Signed {
    pub account: Account,
    /// The raw stored account (for replacing it only if unchanged).
    pub account_raw: Value,
    /// The payload; `None` for POST-as-GET (empty payload).
    pub payload: Option<Value>,
}

/// A verified JWS request signed with the key in its `jwk` header.
pub(crate) struct SignedByKey {
    pub key: jws::AccountKey,
    pub payload: Option<Value>,
    pub parsed: jws::Parsed,
}

/// How the signer of a request is named.
#[derive(PartialEq)]
enum Signer {
    Kid,
    Jwk,
    Either,
}

/// Checks everything common to JWS requests: media type, the nonce (used up), the `url`,
/// and the signature by the key that `signer` says names the caller.
async fn verify(
    acme: &AcmeServer,
    call: &mut Call,
    signer: Signer,
) -> Result<(jws::Parsed, jws::AccountKey, Option<(Account, Value)>), AcmeError> {
    call.post()?;
    let is_jose = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/jose+json"));
    if !is_jose {
        return Err(AcmeError::UnsupportedMediaType);
    }
    let parsed = jws::parse(&call.body)?;
    let nonce = parsed.header.nonce.as_deref().ok_or(AcmeError::BadNonce)?;
    if !acme.take_nonce(nonce).await? {
        return Err(AcmeError::BadNonce);
    }
    if parsed.header.url.as_deref() != Some(call.url.as_str()) {
        return Err(AcmeError::Unauthorized(format!(
            "the JWS url header must be the request URL {}",
            call.url
        )));
    }
    match (&parsed.header.jwk, &parsed.header.kid, &signer) {
        (Some(_), Some(_), _) => Err(AcmeError::Malformed(
            "the JWS header has both jwk and kid".into(),
        )),
        (Some(jwk), None, Signer::Jwk | Signer::Either) => {
            let key = jws::AccountKey::from_jwk(jwk)?;
            key.verify(&parsed)?;
            Ok((parsed, key, None))
        }
        (None, Some(kid), Signer::Kid | Signer::Either) => {
            let id = kid
                .strip_prefix(&call.link("acct/"))
                .ok_or(AcmeError::AccountDoesNotExist)?;
            let (account, raw) = acme
                .records()
                .get::<Account>(AcmeKind::Account, id)
                .await?
                .ok_or(AcmeError::AccountDoesNotExist)?;
            call.who = Some(format!("acme:{}", account.id));
            let key = jws::AccountKey::from_jwk(&account.jwk)?;
            key.verify(&parsed)?;
            if account.status != "valid" {
                return Err(AcmeError::Unauthorized(format!(
                    "the account is {}",
                    account.status
                )));
            }
            Ok((parsed, key, Some((account, raw))))
        }
        (_, _, Signer::Jwk) => Err(AcmeError::Malformed(
            "this request must be signed with the key in a jwk header".into(),
        )),
        _ => Err(AcmeError::Malformed(
            "this request must name its account with a kid header".into(),
        )),
    }
}

fn payload_of(parsed: &jws::Parsed) -> Result<Option<Value>, AcmeError> {
    if parsed.payload.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&parsed.payload)
        .map(Some)
        .map_err(|_| AcmeError::Malformed("the JWS payload is not JSON".into()))
}

/// A request from an existing, valid account.
pub(crate) async fn signed(acme: &AcmeServer, call: &mut Call) -> Result<Signed, AcmeError> {
    let (parsed, _, account) = verify(acme, call, Signer::Kid).await?;
    let (account, account_raw) = account.ok_or(AcmeError::AccountDoesNotExist)?;
    Ok(Signed {
        account,
        account_raw,
        payload: payload_of(&parsed)?,
    })
}

/// A request signed by the key in its `jwk` header (new-account, revocation by key).
async fn signed_by_key(acme: &AcmeServer, call: &mut Call) -> Result<SignedByKey, AcmeError> {
    let (parsed, key, _) = verify(acme, call, Signer::Jwk).await?;
    Ok(SignedByKey {
        key,
        payload: payload_of(&parsed)?,
        parsed,
    })
}

/// A request signed either way: `Ok(Err(..))` names the key, `Ok(Ok(..))` the account.
async fn signed_either(
    acme: &AcmeServer,
    call: &mut Call,
) -> Result<(Option<Value>, Result<Signed, jws::AccountKey>), AcmeError> {
    let (parsed, key, account) = verify(acme, call, Signer::Either).await?;
    let payload = payload_of(&parsed)?;
    Ok(match account {
        Some((account, account_raw)) => (
            payload.clone(),
            Ok(Signed {
                account,
                account_raw,
                payload,
            }),
        ),
        None => (payload, Err(key)),
    })
}

/// A JSON answer.
fn answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Adds a `Location` header.
fn located(mut response: Response, location: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// Adds a `Link` header.
fn linked(mut response: Response, target: &str, rel: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("<{target}>;rel=\"{rel}\"")) {
        response.headers_mut().append(header::LINK, v);
    }
    response
}

fn directory(acme: &AcmeServer, call: &Call) -> Response {
    let mut meta = json!({ "externalAccountRequired": acme.settings().eab_required });
    if let Some(url) = &acme.settings().external_url {
        meta["website"] = json!(url);
    }
    answer(
        StatusCode::OK,
        &json!({
            "newNonce": call.link("new-nonce"),
            "newAccount": call.link("new-account"),
            "newOrder": call.link("new-order"),
            "revokeCert": call.link("revoke-cert"),
            "keyChange": call.link("key-change"),
            "renewalInfo": call.link("renewal-info"),
            "meta": meta,
        }),
    )
}

/// Routes one request by its path segments.
async fn route(acme: &AcmeServer, call: &mut Call, path: &str) -> Result<Response, AcmeError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(("acme", rest)) = segments.split_first().map(|(a, b)| (*a, b)) else {
        return Err(AcmeError::NotFound("no such resource".into()));
    };
    match rest {
        ["directory"] => match call.method {
            Method::GET | Method::HEAD => Ok(directory(acme, call)),
            _ => Err(AcmeError::MethodNotAllowed),
        },
        ["new-nonce"] => match call.method {
            Method::HEAD => Ok(StatusCode::OK.into_response()),
            Method::GET => Ok(StatusCode::NO_CONTENT.into_response()),
            _ => Err(AcmeError::MethodNotAllowed),
        },
        ["new-account"] => account::new_account(acme, call).await,
        ["acct", id] => account::update(acme, call, id).await,
        ["acct", id, "orders"] => account::orders(acme, call, id).await,
        ["key-change"] => account::key_change(acme, call).await,
        ["new-order"] => order::new_order(acme, call).await,
        ["order", id] => order::get_order(acme, call, id).await,
        ["order", id, "finalize"] => order::finalize(acme, call, id).await,
        ["authz", id] => order::authorization(acme, call, id).await,
        ["chall", authz, n] => order::challenge(acme, call, authz, n).await,
        ["cert", id] => order::certificate(acme, call, id, None).await,
        ["cert", id, n] => order::certificate(acme, call, id, Some(n)).await,
        ["revoke-cert"] => order::revoke(acme, call).await,
        ["renewal-info", id] => match call.method {
            Method::GET | Method::HEAD => renewal::renewal_info(acme, id).await,
            _ => Err(AcmeError::MethodNotAllowed),
        },
        _ => Err(AcmeError::NotFound("no such resource".into())),
    }
}

/// `https://` and the host the request reached, or the configured external URL.
fn base_of(settings: &AcmeSettings, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(url) = &settings.external_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}")
}

/// The one handler: routes, answers, and records refusals; every answer gets a fresh nonce.
async fn handle(State(acme): State<AcmeServer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let base = base_of(acme.settings(), &parts.headers, &parts.uri);
    let path = parts.uri.path().to_string();
    let mut call = Call {
        method: parts.method.clone(),
        url: format!("{base}{path}"),
        base,
        headers: parts.headers,
        body: Bytes::new(),
        who: None,
    };
    let result = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => {
            call.body = b;
            route(&acme, &mut call, &path).await
        }
        Err(_) => Err(AcmeError::Malformed(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        ))),
    };
    let mut response = match result {
        Ok(answer) => answer,
        Err(e) => {
            let (status, kind, detail) = e.problem();
            tracing::info!(%status, path = %path, reason = %e, "acme request refused");
            if let Some(audit) = acme.control.audit() {
                audit.refused(
                    call.who.as_deref(),
                    kind,
                    &format!("acme {} {path}: {detail}", call.method),
                );
            }
            (
                status,
                [(header::CONTENT_TYPE, "application/problem+json")],
                e.document().to_string(),
            )
                .into_response()
        }
    };
    let headers = response.headers_mut();
    match acme.nonce().await {
        Ok(nonce) => {
            if let Ok(v) = HeaderValue::from_str(&nonce) {
                headers.insert("replay-nonce", v);
            }
        }
        Err(e) => tracing::warn!(error = %e, "no nonce could be stored for the answer"),
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let index = format!("<{}/acme/directory>;rel=\"index\"", call.base);
    if let Ok(v) = HeaderValue::from_str(&index) {
        headers.append(header::LINK, v);
    }
    response
}

/// The ACME router: one fallback handler that routes by path segments.
pub fn router(acme: AcmeServer) -> Router {
    Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(acme)
}

/// The ACME listener's TLS config: the configured certificate files, or the appliance's
/// serving certificate (renewed in place). Built before anything is served so that
/// unreadable files stop the appliance at start.
pub fn tls(
    trust: &TrustPlane,
    config: &Config,
) -> Result<Arc<ArcSwap<rustls::ServerConfig>>, crate::tls::TlsError> {
    let server = match &config.acme.tls_files {
        Some((cert, key)) => crate::tls::acme_server_config_from_files(cert, key)?,
        None => crate::tls::acme_server_config(trust.serving().clone())?,
    };
    Ok(Arc::new(ArcSwap::from_pointee(server)))
}

/// Serves ACME on `listener` (TLS connections accepted with the config from [`tls`]) until
/// `shutdown` resolves. Expired nonces, orders and authorizations are pruned from the CA
/// state every five minutes.
pub async fn serve<L>(
    acme: AcmeServer,
    listener: L,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let control = acme.control.clone();
    let prune = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(300)).await;
            let now = control.clock().now().unix_timestamp();
            if let Err(e) = control.state().acme_prune(now).await {
                tracing::warn!(error = %e, "expired ACME objects not pruned");
            }
        }
    });
    let app = router(acme).into_make_service();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    prune.abort();
    served
}

/// The account index entry for a key thumbprint.
async fn account_by_thumbprint(
    acme: &AcmeServer,
    thumbprint: &str,
) -> Result<Option<(Account, Value)>, AcmeError> {
    let Some((index, _)) = acme
        .records()
        .get::<AccountKeyIndex>(AcmeKind::AccountKey, thumbprint)
        .await?
    else {
        return Ok(None);
    };
    acme.records()
        .get::<Account>(AcmeKind::Account, &index.account)
        .await
}
