//! The `[keystore]` section: which device holds the keys, how to log in, how many sessions.
//! Builds the keystore's own [`KeystoreConfig`]; opening the device is the keystore's job.

use std::time::Duration;

use super::raw::RawKeystore;
use super::{ConfigError, Ctx};
use crate::keystore::pkcs11::{Pkcs11Settings, TokenSelector};
use crate::keystore::{check_tcti, BackendSettings, KeystoreConfig, PoolOptions, TpmSettings};
use crate::secret::SecretSource;

pub(super) fn keystore(ctx: &Ctx, ks: RawKeystore) -> Result<KeystoreConfig, ConfigError> {
    let (backend, default_sessions) = match ks.backend.as_str() {
        "pkcs11" => (BackendSettings::Pkcs11(pkcs11(ctx, &ks)?), 2),
        "tpm" => (BackendSettings::Tpm(tpm(ctx, &ks)?), 1),
        other => {
            return Err(ctx.invalid(
                "keystore.backend",
                format!("unknown backend {other:?} (expected \"pkcs11\" or \"tpm\")"),
            ))
        }
    };
    let signing_sessions = ks.signing_sessions.unwrap_or(default_sessions);
    if !(1..=64).contains(&signing_sessions) {
        return Err(ctx.invalid(
            "keystore.signing_sessions",
            format!("{signing_sessions} is outside 1..=64"),
        ));
    }
    if ks.queue_depth == 0 {
        return Err(ctx.invalid("keystore.queue_depth", "must be at least 1"));
    }
    if ks.call_timeout_ms == 0 {
        return Err(ctx.invalid("keystore.call_timeout_ms", "must be at least 1"));
    }
    Ok(KeystoreConfig {
        backend,
        module_env: ks.module_env,
        pool: PoolOptions {
            workers: signing_sessions,
            queue_depth: ks.queue_depth,
            call_timeout: Duration::from_millis(ks.call_timeout_ms),
        },
    })
}

fn pkcs11(ctx: &Ctx, ks: &RawKeystore) -> Result<Pkcs11Settings, ConfigError> {
    if ks.tcti.is_some() {
        return Err(ctx.invalid("keystore.tcti", "only for backend = \"tpm\""));
    }
    let module = ks
        .module
        .clone()
        .ok_or_else(|| ctx.invalid("keystore.module", "is required"))?;
    let token = match (&ks.token_label, &ks.token_serial) {
        (Some(l), None) if !l.is_empty() => TokenSelector::Label(l.clone()),
        (None, Some(s)) if !s.is_empty() => TokenSelector::Serial(s.clone()),
        (Some(_), Some(_)) => {
            return Err(ctx.invalid(
                "keystore.token_label",
                "give token_label or token_serial, not both",
            ))
        }
        _ => {
            return Err(ctx.invalid(
                "keystore.token_label",
                "a token_label (or token_serial) is required",
            ))
        }
    };
    let source = ctx.secret(
        ks.pin_file.clone(),
        ks.pin_env.clone(),
        "keystore.pin_file",
        "pin",
    )?;
    let pin = match source {
        Some(_) if ks.pin_shares => {
            return Err(ctx.invalid(
                "keystore.pin_shares",
                "the PIN comes from officers' shares or from pin_file/pin_env, not both",
            ))
        }
        Some(source) => source,
        None if ks.pin_shares => SecretSource::Shares,
        None => {
            return Err(ctx.invalid(
                "keystore.pin_file",
                "the PIN must come from pin_file, pin_env or pin_shares = true",
            ))
        }
    };
    Ok(Pkcs11Settings {
        module,
        token,
        pin,
        verify_signatures: ks.verify_signatures,
    })
}

fn tpm(ctx: &Ctx, ks: &RawKeystore) -> Result<TpmSettings, ConfigError> {
    if !crate::keystore::TPM_SUPPORT {
        return Err(ctx.invalid("keystore.backend", crate::keystore::NO_TPM));
    }
    if ks.module.is_some() || ks.token_label.is_some() || ks.token_serial.is_some() {
        return Err(ctx.invalid(
            "keystore.module",
            "module, token_label and token_serial are for backend = \"pkcs11\"",
        ));
    }
    if ks.pin_file.is_some() || ks.pin_env.is_some() || ks.pin_shares {
        return Err(ctx.invalid(
            "keystore.pin_file",
            "a TPM has no PIN; use key_auth_file or key_auth_env",
        ));
    }
    let tcti = ks
        .tcti
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ctx.invalid("keystore.tcti", "is required for a TPM"))?;
    check_tcti(&tcti).map_err(|p| ctx.invalid("keystore.tcti", p))?;
    Ok(TpmSettings {
        tcti,
        owner_auth: ctx.secret(
            ks.owner_auth_file.clone(),
            ks.owner_auth_env.clone(),
            "keystore.owner_auth_file",
            "owner_auth",
        )?,
        key_auth: ctx.secret(
            ks.key_auth_file.clone(),
            ks.key_auth_env.clone(),
            "keystore.key_auth_file",
            "key_auth",
        )?,
        verify_signatures: ks.verify_signatures,
    })
}
