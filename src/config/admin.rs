//! The `[admin]` and `[audit]` sections: the admin API's listener, users and approvals, and
//! the audit log's checkpoints, refusal limits and page cache.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawAdmin, RawAudit};
use super::{AdminConfig, ConfigError, Ctx, Role, SENSITIVE_OPERATIONS};
use crate::audit::{AuditOptions, CheckpointPolicy, RefusalLimits};

pub(super) fn admin(ctx: &Ctx, adm: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let listen = adm.listen.parse().map_err(|_| {
        ctx.invalid(
            "admin.listen",
            format!("{:?} is not an address:port", adm.listen),
        )
    })?;
    let mut users = BTreeMap::new();
    for user in adm.users {
        if user.identity.trim().is_empty() {
            return Err(ctx.invalid("admin.users.identity", "must not be empty"));
        }
        if user.roles.is_empty() {
            return Err(ctx.invalid(
                "admin.users.roles",
                format!("{} needs at least one role", user.identity),
            ));
        }
        let roles = user
            .roles
            .iter()
            .map(|r| r.parse::<Role>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ctx.invalid("admin.users.roles", e))?;
        if users.insert(user.identity.clone(), roles).is_some() {
            return Err(ctx.invalid(
                "admin.users.identity",
                format!("{} is listed twice", user.identity),
            ));
        }
    }
    if !(0.0..1.0).contains(&adm.expiry_warning_fraction) {
        return Err(ctx.invalid(
            "admin.expiry_warning_fraction",
            "must be at least 0 and below 1",
        ));
    }
    let approvals = adm.approvals;
    if approvals.threshold == 0 {
        return Err(ctx.invalid("admin.approvals.threshold", "must be at least 1"));
    }
    let officers = users
        .values()
        .filter(|roles| roles.contains(&Role::Officer))
        .count();
    if officers > 0 && (approvals.threshold as usize) > officers {
        return Err(ctx.invalid(
            "admin.approvals.threshold",
            format!(
                "{} approvals needed but only {officers} user(s) have the officer role",
                approvals.threshold
            ),
        ));
    }
    for op in &approvals.sensitive {
        if !SENSITIVE_OPERATIONS.contains(&op.as_str()) {
            return Err(ctx.invalid(
                "admin.approvals.sensitive",
                format!(
                    "unknown operation {op:?} (expected any of {})",
                    SENSITIVE_OPERATIONS.join(", ")
                ),
            ));
        }
    }
    if approvals.expires_secs == 0 {
        return Err(ctx.invalid("admin.approvals.expires_secs", "must be at least 1"));
    }
    let connections = super::connection_limits(
        ctx,
        "admin",
        adm.max_connections,
        adm.handshake_timeout_secs,
        adm.idle_timeout_secs,
    )?;
    Ok(AdminConfig {
        development_shared_ca: adm.development_shared_ca,
        connections,
        enabled: adm.enabled,
        listen,
        users,
        client_ca_files: adm
            .client_ca_files
            .into_iter()
            .map(|p| ctx.resolve(p))
            .collect(),
        propagation_window: Duration::from_secs(adm.propagation_window_secs),
        bundle_refresh_hint: Duration::from_secs(adm.bundle_refresh_hint_secs.max(1)),
        expiry_warning_fraction: adm.expiry_warning_fraction,
        approval_threshold: approvals.threshold,
        proposal_ttl: Duration::from_secs(approvals.expires_secs),
        sensitive: approvals.sensitive,
    })
}

/// The largest page cache a store may be given (`audit.cache_mb`, `store.cache_mb`), in MiB.
pub(super) const MAX_CACHE_MB: u64 = 4096;

pub(super) fn audit(ctx: &Ctx, aud: &RawAudit) -> Result<AuditOptions, ConfigError> {
    if aud.checkpoint_every == 0 {
        return Err(ctx.invalid("audit.checkpoint_every", "must be at least 1"));
    }
    if aud.checkpoint_interval_secs == 0 {
        return Err(ctx.invalid("audit.checkpoint_interval_secs", "must be at least 1"));
    }
    if aud.refusal_burst == 0 || aud.refusals_per_minute == 0 {
        return Err(ctx.invalid(
            "audit.refusal_burst",
            "refusal_burst and refusals_per_minute must be at least 1",
        ));
    }
    if !(1..=MAX_CACHE_MB).contains(&aud.cache_mb) {
        return Err(ctx.invalid(
            "audit.cache_mb",
            format!("must be between 1 and {MAX_CACHE_MB} (MiB)"),
        ));
    }
    Ok(AuditOptions {
        cache_bytes: aud.cache_mb << 20,
        checkpoints: CheckpointPolicy {
            every: aud.checkpoint_every,
            interval: Duration::from_secs(aud.checkpoint_interval_secs),
        },
        refusals: RefusalLimits {
            burst: aud.refusal_burst,
            per_minute: aud.refusals_per_minute,
            ..Default::default()
        },
    })
}
