//! `/readyz`: ready (200, `{"ready": true, "warnings": [...]}`) while the device, the audit
//! writer and the active intermediate can serve; otherwise 503 with every reason
//! (`{"ready": false, "reason": "...", "reasons": [...], "warnings": [...]}`). A device that
//! reported trouble on its last call is probed (the active key's info), so a recovered device
//! is ready again without waiting for traffic. Audit shipping that fails for 10 s or falls
//! 10,000 records behind is a reason with `[audit] require_shipped` (nothing can be answered)
//! and a warning without. It must never change state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Api;
use crate::control::Control;

/// How long audit shipping may fail before `/readyz` says so.
const SHIPPING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How many records audit shipping may be behind before `/readyz` says so.
const SHIPPING_MAX_LAG: u64 = 10_000;

/// Why the appliance cannot serve now (empty: it can), and warnings that do not stop it.
pub async fn check(ctl: &Control) -> (Vec<String>, Vec<String>) {
    let snapshot = ctl.trust().view().load();
    let now = ctl.clock().now();
    let (mut reasons, mut warnings) = (Vec::new(), Vec::new());
    let (nb, na) = (snapshot.ca.not_before(), snapshot.ca.not_after());
    if na <= now {
        reasons.push("the active intermediate has expired".to_string());
    } else {
        let life = (na - nb).as_seconds_f64().max(1.0);
        let left = (na - now).as_seconds_f64();
        if left / life < ctl.config().admin.expiry_warning_fraction {
            warnings.push(format!(
                "the active intermediate expires at {}; prepare and activate its successor",
                crate::clock::rfc3339(na)
            ));
        }
    }
    if let Err(trouble) = ctl.store().health() {
        // The last call failed: ask the device again before saying so.
        let key = snapshot.ca.key().id();
        match ctl.store().key_info(key).await {
            Ok(_) => {}
            Err(crate::keystore::KeystoreError::KeyNotFound(_)) => reasons.push(format!(
                "device: the active intermediate's key {key} is not found (last trouble: {trouble})"
            )),
            Err(e) => reasons.push(format!("device: {e}")),
        }
    }
    if let Some(Err(e)) = ctl.audit().map(|a| a.health()) {
        reasons.push(format!("audit log: {e}"));
    }
    if let Some(audit) = ctl.audit() {
        if let Some(problem) = audit.shipping().and_then(|status| {
            crate::cluster::shipping_problem(
                status,
                audit
                    .stats()
                    .records
                    .load(std::sync::atomic::Ordering::Relaxed),
                SHIPPING_GRACE,
                SHIPPING_MAX_LAG,
            )
        }) {
            // Without require_shipped the node still issues (its disk holds the records).
            if ctl.config().audit_shipping.require_shipped {
                reasons.push(problem);
            } else {
                warnings.push(problem);
            }
        }
    }
    (reasons, warnings)
}

pub(super) async fn readyz(State(api): State<Api>) -> Response {
    let (reasons, warnings) = check(&api.control).await;
    if reasons.is_empty() {
        return Json(json!({"ready": true, "warnings": warnings})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "ready": false,
            "reason": reasons.join("; "),
            "reasons": reasons,
            "warnings": warnings,
        })),
    )
        .into_response()
}
