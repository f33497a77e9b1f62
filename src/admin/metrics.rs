//! `/metrics` in the Prometheus text format: CA certificate expiry, issuance results and
//! latency, device calls, the audit chain and the bundle sequence. Read-only: it must never
//! change state or fail a scrape over one unreadable value.

use std::fmt::Write;

use crate::ca::inspect::parse_certificate;
use crate::ca::{certificates_from_pem, fingerprint_id};
use crate::control::Control;
use crate::metrics::IssuanceMetrics;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

pub async fn render(ctl: &Control, issuance: &IssuanceMetrics) -> String {
    let mut out = String::new();
    let now = ctl.clock().now();
    let _ = writeln!(
        out,
        "# HELP hsmca_ca_certificate_expiry_seconds Seconds until a CA certificate expires.\n\
         # TYPE hsmca_ca_certificate_expiry_seconds gauge"
    );
    let snapshot = ctl.trust().view().load();
    for root in &snapshot.roots {
        if let Ok(cert) = parse_certificate(root) {
            let left = (cert.validity().not_after.to_datetime() - now).whole_seconds();
            let _ = writeln!(
                out,
                "hsmca_ca_certificate_expiry_seconds{{kind=\"root\",fingerprint=\"{}\",subject=\"{}\"}} {left}",
                fingerprint_id(root),
                label(&cert.subject().to_string())
            );
        }
    }
    if let Ok(records) = ctl.state().intermediates().await {
        for rec in records {
            let Some(der) = certificates_from_pem(rec.certificate_pem.as_bytes())
                .ok()
                .and_then(|v| v.into_iter().next())
            else {
                continue;
            };
            if let Ok(cert) = parse_certificate(&der) {
                let left = (cert.validity().not_after.to_datetime() - now).whole_seconds();
                let _ = writeln!(
                    out,
                    "hsmca_ca_certificate_expiry_seconds{{kind=\"intermediate\",key_id=\"{}\",status=\"{}\",subject=\"{}\"}} {left}",
                    rec.key_id,
                    format!("{:?}", rec.status).to_lowercase(),
                    label(&rec.subject)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP hsmca_keystore_queue_depth Device calls waiting for a worker.\n\
         # TYPE hsmca_keystore_queue_depth gauge\n\
         hsmca_keystore_queue_depth {}",
        ctl.store().queue_len()
    );
    issuance.results.render(
        &mut out,
        "hsmca_issuances_total",
        "result",
        "Certificate requests by result (ok or the gRPC code of the refusal).",
    );
    issuance.latency.render(
        &mut out,
        "hsmca_issuance_seconds",
        "Time from request to answer, including the durable audit record.",
    );
    if let Some(audit) = ctl.audit() {
        use std::sync::atomic::Ordering;
        let stats = audit.stats();
        let last = stats.last_checkpoint_unix.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP hsmca_audit_records Records in the audit chain.\n\
             # TYPE hsmca_audit_records gauge\n\
             hsmca_audit_records {}",
            stats.records.load(Ordering::Relaxed)
        );
        if last > 0 {
            let _ = writeln!(
                out,
                "# HELP hsmca_audit_last_checkpoint_age_seconds Seconds since the last signed checkpoint.\n\
                 # TYPE hsmca_audit_last_checkpoint_age_seconds gauge\n\
                 hsmca_audit_last_checkpoint_age_seconds {}",
                (now.unix_timestamp() - last).max(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hsmca_audit_refusals_folded_total Refusals counted instead of recorded one by one.\n\
             # TYPE hsmca_audit_refusals_folded_total counter\n\
             hsmca_audit_refusals_folded_total {}",
            stats.refusals_folded.load(Ordering::Relaxed)
        );
    }
    ctl.store().device_latency().render(
        &mut out,
        "hsmca_device_call_seconds",
        "Time a device (HSM/TPM) call takes on its worker.",
    );
    let _ = writeln!(
        out,
        "# HELP hsmca_trust_bundle_sequence Changes of the trust bundle so far.\n\
         # TYPE hsmca_trust_bundle_sequence counter\n\
         hsmca_trust_bundle_sequence {}",
        ctl.state().bundle_sequence().await.unwrap_or(0)
    );
    out
}
