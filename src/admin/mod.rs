//! The admin API: JSON over HTTPS on its own listener (default 127.0.0.1:9443), a thin HTTP
//! skin over the [control plane](crate::control).
//!
//! Every route except the public ones (`/bundle.pem`, `/bundle.spiffe`, `/ca-crl.pem`,
//! `/crl/{fingerprint}.crl`, `/healthz`, `/readyz`) needs a client certificate that chains to
//! the trust bundle and whose identity (a URI SAN such as a SPIFFE ID, or `CN=name`) is mapped
//! to roles in `[[admin.users]]`; handlers ask for it with the [`access::Authorized`]
//! extractor. Refused calls are audited through the refusal limiter. POST bodies are JSON
//! with `Content-Type: application/json` ([`body::JsonBody`]). Errors, 404, 405, 413 and 415
//! included, are JSON with a stable code (see [`error::ApiError`]). `/readyz` is in [`ready`]. Handlers parse, call the control plane and answer: they must never
//! change state or decide a rule themselves.

mod access;
mod body;
pub mod error;
mod listener;
mod metrics;
mod ready;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::control::{Control, ControlError, Operation, Outcome, RevokeRequest};
use crate::metrics::IssuanceMetrics;
use access::{AnyRole, Authorized, Officer, Operator, RoutePath};
use body::{Empty, JsonBody};
pub use error::ApiError;
pub use listener::{identities, Peer, TlsListener};
pub use metrics::serve_plain as serve_metrics;
pub use ready::check as readiness;

/// What the admin handlers share: the control plane and the issuance counters they report.
#[derive(Clone)]
pub struct Api {
    control: Arc<Control>,
    issuance: Arc<IssuanceMetrics>,
    /// Read for the clusters' key metrics.
    auth: Arc<Authenticator>,
}

impl Api {
    pub fn new(
        control: Arc<Control>,
        issuance: Arc<IssuanceMetrics>,
        auth: Arc<Authenticator>,
    ) -> Self {
        Api {
            control,
            issuance,
            auth,
        }
    }
}

type Ctl = State<Api>;
type Answer = Result<Response, ApiError>;

fn outcome(o: Outcome) -> Response {
    match o {
        Outcome::Done(v) => (StatusCode::OK, Json(v)).into_response(),
        Outcome::Pending(p) => {
            (StatusCode::ACCEPTED, Json(json!({"pending_approval": p}))).into_response()
        }
        Outcome::RunElsewhere(p) => {
            (StatusCode::ACCEPTED, Json(json!({"proposal": p}))).into_response()
        }
    }
}

fn json<T: Serialize>(r: Result<T, ControlError>) -> Answer {
    Ok(Json(r?).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn bundle_pem(State(api): Ctl) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        crate::trust::bundle::pem(&api.control.trust().roots()),
    )
        .into_response()
}

async fn bundle_spiffe(State(api): Ctl) -> Answer {
    let ctl = &api.control;
    let seq = ctl.state().bundle_sequence().await?;
    let refresh = ctl.config().admin.bundle_refresh_hint.as_secs();
    Ok(Json(crate::trust::bundle::spiffe(
        &ctl.trust().roots(),
        seq,
        refresh,
    )?)
    .into_response())
}

async fn crl(State(api): Ctl, Path(file): Path<String>) -> Answer {
    let Some(fp) = file.strip_suffix(".crl") else {
        return Err(ApiError::not_found(
            "CRLs are served as /crl/<fingerprint>.crl",
        ));
    };
    let der = api.control.crl(fp).await?;
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response())
}

async fn crl_pem(State(api): Ctl) -> Answer {
    let text = api.control.crl_bundle_pem().await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response())
}

async fn metrics_route(State(api): Ctl, _: Authorized<AnyRole>) -> Response {
    metrics::answer(&api.control, &api.issuance, &api.auth).await
}

async fn get_state(State(api): Ctl, _: Authorized<AnyRole>) -> Answer {
    json(api.control.describe().await)
}

async fn new_intermediate(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    _: JsonBody<Empty>,
) -> Answer {
    json(api.control.new_intermediate(&caller).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    pub csr_pem: String,
    #[serde(default)]
    pub root: Option<String>,
}

async fn sign_intermediate(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    JsonBody(b): JsonBody<SignBody>,
) -> Answer {
    json(
        api.control
            .sign_intermediate(&caller, &b.csr_pem, b.root.as_deref())
            .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertBody {
    pub certificate_pem: String,
}

async fn install(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    JsonBody(b): JsonBody<CertBody>,
) -> Answer {
    json(api.control.install(&caller, &b.certificate_pem).await)
}

async fn activate(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    Path(id): Path<String>,
    _: JsonBody<Empty>,
) -> Answer {
    Ok(outcome(api.control.request_activation(&caller, &id).await?))
}

async fn retire(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    Path(id): Path<String>,
    _: JsonBody<Empty>,
) -> Answer {
    json(api.control.retire(&caller, &id).await)
}

async fn add_root(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    JsonBody(b): JsonBody<CertBody>,
) -> Answer {
    let op = Operation::RootAdd {
        certificate_pem: b.certificate_pem,
    };
    Ok(outcome(api.control.gate(&caller, op).await?))
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_root(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    Path(fp): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Answer {
    let op = Operation::RootRemove {
        fingerprint: fp,
        force: q.force,
    };
    Ok(outcome(api.control.gate(&caller, op).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossBody {
    pub by: String,
}

async fn cross_sign(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    Path(fp): Path<String>,
    JsonBody(b): JsonBody<CrossBody>,
) -> Answer {
    json(api.control.cross_sign(&caller, &fp, &b.by).await)
}

async fn revoke(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    JsonBody(req): JsonBody<RevokeRequest>,
) -> Answer {
    Ok(outcome(
        api.control.gate(&caller, Operation::Revoke(req)).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlBody {
    pub crl_pem: String,
}

async fn import_crl(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    JsonBody(b): JsonBody<CrlBody>,
) -> Answer {
    json(api.control.import_crl(&caller, &b.crl_pem).await)
}

/// `GET /v1/proposals[?all=true]`: the open proposals, or all of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalsQuery {
    #[serde(default)]
    all: bool,
}

async fn proposals(
    State(api): Ctl,
    _: Authorized<AnyRole>,
    Query(q): Query<ProposalsQuery>,
) -> Answer {
    Ok(Json(json!({"proposals": api.control.proposals(q.all).await?})).into_response())
}

/// An approval's body: `{}`, or `{"operation": "<name>"}` to approve only if the proposal is
/// that operation (`root_add`, `root_remove`, `revoke`, `activate_new_root`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    #[serde(default)]
    operation: Option<String>,
}

async fn approve(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Officer>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ApproveBody>,
) -> Answer {
    if let Some(expected) = &b.operation {
        let proposed = api.control.proposal(&id).await?;
        if let Some(p) = proposed.filter(|p| p.operation.name() != expected) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "operation_mismatch",
                format!("proposal {id} is {}, not {expected}", p.operation.name()),
            ));
        }
    }
    Ok(outcome(api.control.approve(&caller, &id).await?))
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// Largest page of audit records one call returns.
pub const MAX_AUDIT_PAGE: usize = 1000;

fn audit_of(ctl: &Control) -> Result<&crate::audit::AuditLog, ApiError> {
    ctl.audit().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "audit_disabled",
            "the audit log is turned off (audit.enabled = false)",
        )
    })
}

async fn audit_page(State(api): Ctl, _: Authorized<AnyRole>, Query(q): Query<PageQuery>) -> Answer {
    let audit = audit_of(&api.control)?;
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    let records = tokio::task::block_in_place(|| audit.page(from, limit))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()))?;
    let next = records.last().map(|r| r.seq + 1);
    Ok(Json(json!({"records": records, "next": next})).into_response())
}

async fn audit_verify(State(api): Ctl, _: Authorized<AnyRole>) -> Answer {
    let audit = audit_of(&api.control)?;
    Ok(match tokio::task::block_in_place(|| audit.verify()) {
        Ok(s) => Json(json!({
            "verified": true,
            "records": s.records,
            "checkpoints": s.checkpoints,
            "signatures_checked": s.signatures_checked,
            "last_checkpoint": s.last_checkpoint.map(|(seq, time)| json!({"seq": seq, "time": time})),
            "unsigned_tail": s.unsigned_tail,
            "head": format!("{}:{}", s.records, hex::encode(s.head)),
        }))
        .into_response(),
        Err(e) => (
            StatusCode::OK,
            Json(json!({"verified": false, "problem": e.to_string()})),
        )
            .into_response(),
    })
}

async fn audit_key(State(api): Ctl, _: Authorized<AnyRole>) -> Answer {
    match audit_of(&api.control)?.key() {
        Some(key) => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            key.public_pem(),
        )
            .into_response()),
        None => Err(ApiError::not_found("the audit log has no key")),
    }
}

/// `POST /v1/acme/eab`: a new External Account Binding key with its policy. The MAC key is in
/// this answer only.
async fn eab_create(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    JsonBody(policy): JsonBody<crate::acme::records::EabPolicy>,
) -> Answer {
    let now = api.control.clock().now().unix_timestamp();
    let shown = serde_json::to_string(&policy).unwrap_or_default();
    let created = crate::acme::eab::create(api.control.state(), policy, now).await?;
    api.control
        .record(crate::audit::AuditEvent::EabKeyCreated {
            actor: caller.identity.clone(),
            kid: created.kid.clone(),
            policy: shown,
        })
        .await?;
    tracing::info!(kid = %created.kid, by = %caller.identity, "acme eab key created");
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /v1/nodes`: the appliances sharing the database, as the node registry shows them
/// (empty on sled: one appliance, no registry).
async fn nodes(State(api): Ctl, _: Authorized<AnyRole>) -> Answer {
    let nodes = match api.control.state() {
        crate::state::CaState::Postgres(pg) => pg.nodes().await?,
        crate::state::CaState::Sled(_) => Vec::new(),
    };
    Ok(Json(json!({ "nodes": nodes })).into_response())
}

async fn eab_list(State(api): Ctl, _: Authorized<AnyRole>) -> Answer {
    Ok(Json(crate::acme::eab::list(api.control.state()).await?).into_response())
}

async fn eab_revoke(
    State(api): Ctl,
    Authorized(caller, _): Authorized<Operator>,
    Path(kid): Path<String>,
) -> Answer {
    if crate::acme::eab::revoke(api.control.state(), &kid).await? {
        api.control
            .record(crate::audit::AuditEvent::EabKeyRevoked {
                actor: caller.identity.clone(),
                kid: kid.clone(),
            })
            .await?;
        tracing::info!(kid = %kid, by = %caller.identity, "acme eab key revoked");
        Ok(Json(json!({"kid": kid, "revoked": true})).into_response())
    } else {
        Err(ApiError::not_found(format!("no EAB key {kid}")))
    }
}

async fn not_found() -> Response {
    ApiError::not_found("no such route").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
    .into_response()
}

/// Adds the route `path`; its handlers see the path template ([`RoutePath`]) that refusals
/// are audited under.
fn at(router: Router<Api>, path: &'static str, handlers: MethodRouter<Api>) -> Router<Api> {
    router.route(path, handlers.layer(Extension(RoutePath(path))))
}

/// The admin API's routes.
pub fn router(api: Api) -> Router {
    let routes: [(&'static str, MethodRouter<Api>); 26] = [
        ("/healthz", get(healthz)),
        ("/readyz", get(ready::readyz)),
        ("/bundle.pem", get(bundle_pem)),
        ("/bundle.spiffe", get(bundle_spiffe)),
        ("/ca-crl.pem", get(crl_pem)),
        ("/crl/{file}", get(crl)),
        ("/metrics", get(metrics_route)),
        ("/v1/state", get(get_state)),
        ("/v1/intermediates", post(new_intermediate)),
        ("/v1/intermediates/sign", post(sign_intermediate)),
        ("/v1/intermediates/install", post(install)),
        ("/v1/intermediates/{key_id}/activate", post(activate)),
        ("/v1/intermediates/{key_id}/retire", post(retire)),
        ("/v1/roots", post(add_root)),
        ("/v1/roots/{fingerprint}", delete(remove_root)),
        ("/v1/roots/{fingerprint}/cross-sign", post(cross_sign)),
        ("/v1/revocations", post(revoke)),
        ("/v1/crls", post(import_crl)),
        ("/v1/audit", get(audit_page)),
        ("/v1/audit/verify", get(audit_verify)),
        ("/v1/audit/public-key", get(audit_key)),
        ("/v1/proposals", get(proposals)),
        ("/v1/proposals/{id}/approve", post(approve)),
        ("/v1/acme/eab", get(eab_list).post(eab_create)),
        ("/v1/acme/eab/{kid}", delete(eab_revoke)),
        ("/v1/nodes", get(nodes)),
    ];
    routes
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            at(router, path, handlers)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api)
}

/// Serves the admin API on `listener` until `shutdown` resolves, within the admin
/// connection limits and the process's descriptor `budget`.
pub async fn serve(
    api: Api,
    listener: TcpListener,
    budget: crate::tls::DescriptorBudget,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = api.control.config().admin.connections;
    let tls = TlsListener::new(listener, api.control.trust().admin_tls(), limits, budget)?;
    let app = router(api).into_make_service_with_connect_info::<Peer>();
    axum::serve(tls, app).with_graceful_shutdown(shutdown).await
}
