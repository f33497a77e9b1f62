//! `/metrics` in the Prometheus text format (encoded by `prometheus-client`, see
//! [`crate::metrics`]): CA certificate expiry, when the active intermediate is due for
//! rotation, issuance results and latency, device calls and errors, the audit chain and its
//! writer, the bundle sequence, the clusters' token keys, the build and the process. Read-only: it must never change
//! state or fail a scrape over one unreadable value.
//!
//! Served on the admin API (any role) and, when `[metrics] listen` is set, on a plaintext
//! listener that serves nothing else ([`serve_plain`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::ca::inspect::parse_certificate;
use crate::ca::{certificates_from_pem, fingerprint_id};
use crate::control::Control;
use crate::metrics::{process, IssuanceMetrics, Labels, Scrape, CONTENT_TYPE};
use crate::state::IntermediateStatus;

const NOT_AFTER: &str = "hsmca_ca_certificate_not_after_timestamp_seconds";

pub async fn render(ctl: &Control, issuance: &IssuanceMetrics, auth: &Authenticator) -> String {
    let mut s = Scrape::default();
    s.build_info();
    let mut not_after: Vec<(Labels, f64)> = Vec::new();
    let snapshot = ctl.trust().view().load();
    for root in &snapshot.roots {
        if let Ok(cert) = parse_certificate(root) {
            not_after.push((
                vec![
                    ("kind", "root".into()),
                    ("fingerprint", fingerprint_id(root)),
                    ("subject", cert.subject().to_string()),
                ],
                cert.validity().not_after.timestamp() as f64,
            ));
        }
    }
    let mut rotation_due = Vec::new();
    if let Ok(records) = ctl.state().intermediates().await {
        for rec in records {
            let Some(der) = certificates_from_pem(rec.certificate_pem.as_bytes())
                .ok()
                .and_then(|v| v.into_iter().next())
            else {
                continue;
            };
            let Ok(cert) = parse_certificate(&der) else {
                continue;
            };
            let (nb, na) = (
                cert.validity().not_before.timestamp() as f64,
                cert.validity().not_after.timestamp() as f64,
            );
            let fingerprint = fingerprint_id(&der);
            if rec.status == IntermediateStatus::Active {
                rotation_due.push((
                    vec![
                        ("key_id", rec.key_id.to_string()),
                        ("fingerprint", fingerprint.clone()),
                    ],
                    nb + ctl.config().rotation.activate_at * (na - nb),
                ));
            }
            not_after.push((
                vec![
                    ("kind", "intermediate".into()),
                    ("fingerprint", fingerprint),
                    ("subject", rec.subject.clone()),
                    ("key_id", rec.key_id.to_string()),
                    ("status", rec.status.as_str().into()),
                ],
                na,
            ));
        }
    }
    s.gauges(
        NOT_AFTER,
        "When a CA certificate (root or intermediate) expires (its NotAfter, Unix time).",
        not_after,
    );
    s.gauges(
        "hsmca_intermediate_rotation_due_timestamp_seconds",
        "When the active intermediate should have been replaced (rotation.activate_at of its \
         life, Unix time).",
        rotation_due,
    );

    let store = ctl.store();
    s.gauge(
        "hsmca_keystore_queue_depth",
        "Device calls waiting for a worker.",
        store.queue_len() as f64,
    );
    s.histogram(
        "hsmca_device_call_seconds",
        "Time a device (HSM/TPM) call takes on its worker.",
        store.device_latency(),
    );
    s.counter(
        "hsmca_device_errors",
        "Device (HSM/TPM) calls that ended in device trouble.",
        store.device_errors(),
    );
    s.gauge(
        "hsmca_device_up",
        "1 when the last device call succeeded, 0 when it ended in device trouble.",
        if store.health().is_ok() { 1.0 } else { 0.0 },
    );

    s.labeled_counter(
        "hsmca_issuances",
        "Certificate requests by result (ok or the gRPC code of the refusal).",
        &issuance.results,
    );
    s.histogram(
        "hsmca_issuance_seconds",
        "Time from request to answer, including the durable audit record.",
        &issuance.latency,
    );

    if let Some(audit) = ctl.audit() {
        let stats = audit.stats();
        s.gauge(
            "hsmca_audit_records",
            "Records in the audit chain.",
            stats.records.load(Ordering::Relaxed) as f64,
        );
        s.counter(
            "hsmca_audit_syncs",
            "Groups of audit records made durable with one write and one disk sync.",
            stats.syncs.load(Ordering::Relaxed),
        );
        let last = stats.last_checkpoint_unix.load(Ordering::Relaxed);
        if last > 0 {
            s.gauge(
                "hsmca_audit_last_checkpoint_timestamp_seconds",
                "When the last signed checkpoint was written (Unix time).",
                last as f64,
            );
        }
        s.counter(
            "hsmca_audit_refusals_folded",
            "Refusals counted instead of recorded one by one.",
            stats.refusals_folded.load(Ordering::Relaxed),
        );
        if let Some(shipping) = audit.shipping() {
            let records = stats.records.load(Ordering::Relaxed);
            s.gauge(
                "hsmca_audit_shipping_lag_records",
                "Audit records durable on this node but not yet committed in the shared database.",
                records.saturating_sub(shipping.shipped.load(Ordering::Relaxed)) as f64,
            );
            s.counter(
                "hsmca_audit_shipping_failures",
                "Shipments of audit records to the shared database that failed (retried).",
                shipping.failures.load(Ordering::Relaxed),
            );
        }
        s.gauge(
            "hsmca_audit_writer_up",
            "1 while the audit writer runs and its last commit succeeded; 0 when it stopped or \
             cannot write (issuance is refused then).",
            if audit.writer_running() && audit.health().is_ok() {
                1.0
            } else {
                0.0
            },
        );
    }
    if let crate::state::CaState::Postgres(pg) = ctl.state() {
        if let Some(rows) = pg.row_trust() {
            s.counter(
                "hsmca_state_rows_rejected",
                "Reads of shared-database rows that no member signed (ignored; each read counts).",
                rows.rejected(),
            );
        }
    }
    s.gauge(
        "hsmca_trust_bundle_sequence",
        "Sequence number of the trust bundle (changes so far).",
        ctl.state().bundle_sequence().await.unwrap_or(0) as f64,
    );
    clusters(&mut s, auth);
    process::collect(&mut s);
    s.encode()
}

/// Each cluster's token keys: how many, when last loaded, how many refreshes failed.
fn clusters(s: &mut Scrape, auth: &Authenticator) {
    let label = |id: &str| vec![("cluster", id.to_string())];
    s.gauges(
        "hsmca_cluster_keys",
        "Token-signing keys in a cluster's current JWKS (0 before the first load).",
        auth.clusters
            .iter()
            .map(|c| (label(&c.id), c.key_count() as f64))
            .collect(),
    );
    s.gauges(
        "hsmca_cluster_keys_last_refresh_timestamp_seconds",
        "When a cluster's JWKS was last loaded or confirmed unchanged (Unix time; 0 never).",
        auth.clusters
            .iter()
            .map(|c| (label(&c.id), c.last_success_unix() as f64))
            .collect(),
    );
    s.counters(
        "hsmca_cluster_keys_refresh_failures",
        "Refreshes of a cluster's JWKS that failed (the last good set stays in use).",
        auth.clusters
            .iter()
            .map(|c| (label(&c.id), c.failures()))
            .collect(),
    );
}

/// A `/metrics` answer.
pub async fn answer(ctl: &Control, issuance: &IssuanceMetrics, auth: &Authenticator) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(ctl, issuance, auth).await,
    )
        .into_response()
}

type Shared = (Arc<Control>, Arc<IssuanceMetrics>, Arc<Authenticator>);

async fn plain_metrics(State((ctl, issuance, auth)): State<Shared>) -> Response {
    answer(&ctl, &issuance, &auth).await
}

/// Serves `GET /metrics`, and nothing else, in plaintext on `listener` (`[metrics] listen`)
/// until `stop` completes. Any other path is 404.
pub async fn serve_plain(
    listener: TcpListener,
    control: Arc<Control>,
    issuance: Arc<IssuanceMetrics>,
    auth: Arc<Authenticator>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(plain_metrics))
        .with_state((control, issuance, auth));
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
