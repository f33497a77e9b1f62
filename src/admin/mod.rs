//! The admin API: JSON over HTTPS on its own listener (default 127.0.0.1:9443).
//!
//! Every route except the public ones (`/bundle.pem`, `/bundle.spiffe`, `/ca-crl.pem`,
//! `/crl/{fingerprint}.crl`, `/healthz`, `/readyz`) needs a client certificate that chains to
//! the trust bundle and whose identity (a URI SAN such as a SPIFFE ID, or `CN=name`) is mapped
//! to roles in `[[admin.users]]`. Refused calls are audited. Errors are JSON with a stable code
//! (see [`error::ApiError`]).

pub mod bundle;
pub mod control;
pub mod error;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;

use crate::audit::AuditEvent;
use crate::config::Role;
pub use control::{Caller, Control, Operation, Outcome, RevokeRequest};
pub use error::ApiError;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection: the identities in its client certificate.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// URI SANs first, then `CN=<common name>`; empty without a client certificate.
    pub identities: Vec<String>,
    /// The client certificate (DER), checked against revocations on every request.
    pub leaf: Option<Arc<[u8]>>,
}

/// The identities a client certificate (leaf, DER) presents.
pub fn identities(leaf: &[u8]) -> Vec<String> {
    let Ok(cert) = crate::ca::inspect::parse_certificate(leaf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push(uri.to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            out.push(format!("CN={cn}"));
        }
    }
    out
}

/// Accepted TLS connections, handshaken on their own tasks so a slow client holds up no one.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener`, using the current config of `tls` for each handshake.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ArcSwap<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(128);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor task is gone: never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        Peer {
            addr: *stream.remote_addr(),
            identities: leaf.map(|l| identities(l)).unwrap_or_default(),
            leaf: leaf.map(|l| Arc::from(l.as_ref())),
        }
    }
}

type Ctl = State<Arc<Control>>;
type Who = ConnectInfo<Peer>;

/// Authenticates the peer and checks it holds `role` (`None`: any role). Refusals are audited.
async fn authorize(
    ctl: &Control,
    peer: &Peer,
    role: Option<Role>,
    route: &str,
) -> Result<Caller, ApiError> {
    let refuse = |caller: Option<String>, status, code: &'static str, reason: String| async move {
        let _ = ctl
            .record(AuditEvent::AdminRefused {
                caller,
                route: route.to_string(),
                code: code.to_string(),
                reason: reason.clone(),
            })
            .await;
        Err(ApiError::new(status, code, reason))
    };
    if peer.identities.is_empty() {
        return refuse(
            None,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a client certificate is required".into(),
        )
        .await;
    }
    let revoked = peer.leaf.as_deref().and_then(|der| {
        let cert = crate::ca::inspect::parse_certificate(der).ok()?;
        ctl.revocations.check(&cert).err()
    });
    if let Some(reason) = revoked {
        return refuse(
            peer.identities.first().cloned(),
            StatusCode::UNAUTHORIZED,
            "revoked",
            format!("client certificate: {reason}"),
        )
        .await;
    }
    let known = peer
        .identities
        .iter()
        .find_map(|id| ctl.config.admin.users.get(id).map(|roles| (id, roles)));
    let Some((identity, roles)) = known else {
        return refuse(
            peer.identities.first().cloned(),
            StatusCode::FORBIDDEN,
            "unknown_identity",
            format!("{} is not an admin user", peer.identities.join(", ")),
        )
        .await;
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
            )
            .await;
        }
    }
    Ok(caller)
}

fn outcome(o: Outcome) -> Response {
    match o {
        Outcome::Done(v) => (StatusCode::OK, Json(v)).into_response(),
        Outcome::Pending(p) => {
            (StatusCode::ACCEPTED, Json(json!({"pending_approval": p}))).into_response()
        }
    }
}

fn json_result(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Parses a JSON body, answering bad JSON with a typed error instead of axum's plain text.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ctl): Ctl) -> Response {
    let snapshot = ctl.view.load();
    let now = time::OffsetDateTime::now_utc();
    let (nb, na) = (snapshot.ca.not_before(), snapshot.ca.not_after());
    if na <= now {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "the active intermediate has expired"})),
        )
            .into_response();
    }
    let mut warnings = Vec::new();
    let life = (na - nb).as_seconds_f64().max(1.0);
    let left = (na - now).as_seconds_f64();
    if left / life < ctl.config.admin.expiry_warning_fraction {
        warnings.push(format!(
            "the active intermediate expires at {}; prepare and activate its successor",
            control::rfc3339(na)
        ));
    }
    Json(json!({"ready": true, "warnings": warnings})).into_response()
}

fn roots_der(ctl: &Control) -> Vec<Vec<u8>> {
    ctl.view.load().roots.clone()
}

async fn bundle_pem(State(ctl): Ctl) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        bundle::pem(&roots_der(&ctl)),
    )
        .into_response()
}

async fn bundle_spiffe(State(ctl): Ctl) -> Response {
    let seq = match ctl.state.bundle_sequence() {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match bundle::spiffe(
        &roots_der(&ctl),
        seq,
        ctl.config.admin.bundle_refresh_hint.as_secs(),
    ) {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn crl(State(ctl): Ctl, Path(file): Path<String>) -> Response {
    let Some(fp) = file.strip_suffix(".crl") else {
        return ApiError::not_found("CRLs are served as /crl/<fingerprint>.crl").into_response();
    };
    match ctl.crl(fp) {
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn crl_pem(State(ctl): Ctl) -> Response {
    match ctl.crl_bundle_pem() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/x-pem-file")], text).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics_route(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /metrics").await {
        return e.into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&ctl),
    )
        .into_response()
}

async fn get_state(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /v1/state").await {
        return e.into_response();
    }
    json_result(tokio::task::block_in_place(|| ctl.describe()))
}

async fn new_intermediate(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    let caller = match authorize(&ctl, &peer, Some(Role::Operator), "POST /v1/intermediates").await
    {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    json_result(ctl.new_intermediate(&caller).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    csr_pem: String,
    #[serde(default)]
    root: Option<String>,
}

async fn sign_intermediate(
    State(ctl): Ctl,
    ConnectInfo(peer): Who,
    raw: axum::body::Bytes,
) -> Response {
    let route = "POST /v1/intermediates/sign";
    let caller = match authorize(&ctl, &peer, Some(Role::Operator), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let b: SignBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    json_result(
        ctl.sign_intermediate(&caller, &b.csr_pem, b.root.as_deref())
            .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertBody {
    certificate_pem: String,
}

async fn install(State(ctl): Ctl, ConnectInfo(peer): Who, raw: axum::body::Bytes) -> Response {
    let route = "POST /v1/intermediates/install";
    let caller = match authorize(&ctl, &peer, Some(Role::Operator), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let b: CertBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    json_result(ctl.install(&caller, &b.certificate_pem).await)
}

async fn activate(State(ctl): Ctl, ConnectInfo(peer): Who, Path(id): Path<String>) -> Response {
    let route = "POST /v1/intermediates/{key_id}/activate";
    let caller = match authorize(&ctl, &peer, Some(Role::Operator), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match ctl.request_activation(&caller, &id).await {
        Ok(o) => outcome(o),
        Err(e) => e.into_response(),
    }
}

async fn retire(State(ctl): Ctl, ConnectInfo(peer): Who, Path(id): Path<String>) -> Response {
    let route = "POST /v1/intermediates/{key_id}/retire";
    let caller = match authorize(&ctl, &peer, Some(Role::Operator), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    json_result(ctl.retire(&caller, &id).await)
}

async fn add_root(State(ctl): Ctl, ConnectInfo(peer): Who, raw: axum::body::Bytes) -> Response {
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), "POST /v1/roots").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let b: CertBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let op = Operation::RootAdd {
        certificate_pem: b.certificate_pem,
    };
    match ctl.gate(&caller, op).await {
        Ok(o) => outcome(o),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_root(
    State(ctl): Ctl,
    ConnectInfo(peer): Who,
    Path(fp): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    let route = "DELETE /v1/roots/{fingerprint}";
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let op = Operation::RootRemove {
        fingerprint: fp,
        force: q.force,
    };
    match ctl.gate(&caller, op).await {
        Ok(o) => outcome(o),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrossBody {
    by: String,
}

async fn cross_sign(
    State(ctl): Ctl,
    ConnectInfo(peer): Who,
    Path(fp): Path<String>,
    raw: axum::body::Bytes,
) -> Response {
    let route = "POST /v1/roots/{fingerprint}/cross-sign";
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let b: CrossBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    json_result(ctl.cross_sign(&caller, &fp, &b.by).await)
}

async fn revoke(State(ctl): Ctl, ConnectInfo(peer): Who, raw: axum::body::Bytes) -> Response {
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), "POST /v1/revocations").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let req: RevokeRequest = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match ctl.gate(&caller, Operation::Revoke(req)).await {
        Ok(o) => outcome(o),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrlBody {
    crl_pem: String,
}

async fn import_crl(State(ctl): Ctl, ConnectInfo(peer): Who, raw: axum::body::Bytes) -> Response {
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), "POST /v1/crls").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let b: CrlBody = match body(&raw) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    json_result(ctl.import_crl(&caller, &b.crl_pem).await)
}

async fn proposals(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /v1/proposals").await {
        return e.into_response();
    }
    Json(json!({"proposals": ctl.proposals()})).into_response()
}

async fn approve(State(ctl): Ctl, ConnectInfo(peer): Who, Path(id): Path<String>) -> Response {
    let route = "POST /v1/proposals/{id}/approve";
    let caller = match authorize(&ctl, &peer, Some(Role::Officer), route).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match ctl.approve(&caller, &id).await {
        Ok(o) => outcome(o),
        Err(e) => e.into_response(),
    }
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
    ctl.audit.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "audit_disabled",
            "the audit log is turned off (audit.enabled = false)",
        )
    })
}

async fn audit_page(
    State(ctl): Ctl,
    ConnectInfo(peer): Who,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /v1/audit").await {
        return e.into_response();
    }
    let audit = match audit_of(&ctl) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    match tokio::task::block_in_place(|| audit.page(from, limit)) {
        Ok(records) => {
            let next = records.last().map(|r| r.seq + 1);
            Json(json!({"records": records, "next": next})).into_response()
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
            .into_response(),
    }
}

async fn audit_verify(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /v1/audit/verify").await {
        return e.into_response();
    }
    let audit = match audit_of(&ctl) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    match tokio::task::block_in_place(|| audit.verify()) {
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
    }
}

async fn audit_key(State(ctl): Ctl, ConnectInfo(peer): Who) -> Response {
    if let Err(e) = authorize(&ctl, &peer, None, "GET /v1/audit/public-key").await {
        return e.into_response();
    }
    match audit_of(&ctl).map(|a| a.key().map(|k| k.public_pem())) {
        Ok(Some(pem)) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response(),
        Ok(None) => ApiError::not_found("the audit log has no key").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::not_found("no such route").into_response()
}

/// The admin API's routes.
pub fn router(ctl: Arc<Control>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/bundle.pem", get(bundle_pem))
        .route("/bundle.spiffe", get(bundle_spiffe))
        .route("/ca-crl.pem", get(crl_pem))
        .route("/crl/{file}", get(crl))
        .route("/metrics", get(metrics_route))
        .route("/v1/state", get(get_state))
        .route("/v1/intermediates", post(new_intermediate))
        .route("/v1/intermediates/sign", post(sign_intermediate))
        .route("/v1/intermediates/install", post(install))
        .route("/v1/intermediates/{key_id}/activate", post(activate))
        .route("/v1/intermediates/{key_id}/retire", post(retire))
        .route("/v1/roots", post(add_root))
        .route("/v1/roots/{fingerprint}", delete(remove_root))
        .route("/v1/roots/{fingerprint}/cross-sign", post(cross_sign))
        .route("/v1/revocations", post(revoke))
        .route("/v1/crls", post(import_crl))
        .route("/v1/audit", get(audit_page))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/audit/public-key", get(audit_key))
        .route("/v1/proposals", get(proposals))
        .route("/v1/proposals/{id}/approve", post(approve))
        .fallback(not_found)
        .with_state(ctl)
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    ctl: Arc<Control>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = TlsListener::new(listener, ctl.admin_tls.clone())?;
    let app = router(ctl).into_make_service_with_connect_info::<Peer>();
    axum::serve(tls, app).with_graceful_shutdown(shutdown).await
}
