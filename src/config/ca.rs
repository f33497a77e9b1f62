//! The `[root]`, `[intermediate]`, `[workload]` and `[rotation]` sections: what the CA signs
//! and for how long.

use std::time::Duration;

use super::raw::{RawIntermediate, RawRoot, RawRotation, RawWorkload};
use super::{ConfigError, Ctx, IntermediateConfig, RootConfig, RotationConfig, WorkloadConfig};

const DAY: u64 = 24 * 3600;

fn check_days(days: u32, max: u32) -> Result<(), String> {
    if days == 0 || days > max {
        return Err(format!("{days} is outside 1..={max}"));
    }
    Ok(())
}

pub(super) fn root_and_intermediate(
    ctx: &Ctx,
    root: RawRoot,
    inter: RawIntermediate,
) -> Result<(RootConfig, IntermediateConfig), ConfigError> {
    if root.certificates.is_empty() {
        return Err(ctx.invalid(
            "root.certificates",
            "list at least one root certificate file",
        ));
    }
    check_days(root.validity_days, 36500).map_err(|p| ctx.invalid("root.validity_days", p))?;
    check_days(inter.validity_days, 3650)
        .map_err(|p| ctx.invalid("intermediate.validity_days", p))?;
    if root.common_name.trim().is_empty() {
        return Err(ctx.invalid("root.common_name", "must not be empty"));
    }
    if inter.common_name.trim().is_empty() {
        return Err(ctx.invalid("intermediate.common_name", "must not be empty"));
    }
    Ok((
        RootConfig {
            certificates: root
                .certificates
                .into_iter()
                .map(|p| ctx.resolve(p))
                .collect(),
            common_name: root.common_name,
            organization: root.organization,
            key_algorithm: root.key_algorithm,
            validity: Duration::from_secs(u64::from(root.validity_days) * DAY),
        },
        IntermediateConfig {
            common_name: inter.common_name,
            organization: inter.organization,
            key_algorithm: inter.key_algorithm,
            validity: Duration::from_secs(u64::from(inter.validity_days) * DAY),
            name_constraint: inter.name_constraint,
        },
    ))
}

pub(super) fn workload(ctx: &Ctx, wl: RawWorkload) -> Result<WorkloadConfig, ConfigError> {
    if wl.max_ttl_secs < 60 {
        return Err(ctx.invalid("workload.max_ttl_secs", "must be at least 60"));
    }
    if wl.default_ttl_secs == 0 || wl.default_ttl_secs > wl.max_ttl_secs {
        return Err(ctx.invalid(
            "workload.default_ttl_secs",
            format!("must be between 1 and max_ttl_secs ({})", wl.max_ttl_secs),
        ));
    }
    if wl.clock_skew_secs > 3600 {
        return Err(ctx.invalid("workload.clock_skew_secs", "must be at most 3600"));
    }
    Ok(WorkloadConfig {
        clock_skew: Duration::from_secs(wl.clock_skew_secs),
        default_ttl: Duration::from_secs(wl.default_ttl_secs),
        max_ttl: Duration::from_secs(wl.max_ttl_secs),
    })
}

pub(super) fn rotation(ctx: &Ctx, rot: RawRotation) -> Result<RotationConfig, ConfigError> {
    if !(rot.prepare_at > 0.0 && rot.prepare_at < 1.0) {
        return Err(ctx.invalid("rotation.prepare_at", "must be above 0 and below 1"));
    }
    if !(rot.activate_at > rot.prepare_at && rot.activate_at < 1.0) {
        return Err(ctx.invalid(
            "rotation.activate_at",
            format!(
                "must be above rotation.prepare_at ({}) and below 1",
                rot.prepare_at
            ),
        ));
    }
    if rot.check_interval_secs == 0 {
        return Err(ctx.invalid("rotation.check_interval_secs", "must be at least 1"));
    }
    Ok(RotationConfig {
        auto: rot.auto,
        prepare_at: rot.prepare_at,
        activate_at: rot.activate_at,
        check_interval: Duration::from_secs(rot.check_interval_secs),
    })
}
