//! `hsm-ca keys`: the keys in the device with the attributes an auditor checks, and the
//! token's user PIN change. Never touches a key.

use std::path::Path;

use super::officers::Terminal;
use super::CliError;
use crate::audit::{AuditEvent, AuditLog};
use crate::ceremony::{self, ShareSource};
use crate::config::Config;
use crate::keystore::BackendSettings;
use crate::keystore::{self, KeyInfo};
use crate::secret::SecretSource;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// One row per key, with the attributes an auditor checks.
pub fn format_keys(keys: &[KeyInfo]) -> String {
    let mut out = format!(
        "{:<32}  {:<34}  {:<10}  {:<9}  {:<11}  {:<16}  {:<17}  {:<5}\n",
        "ID",
        "LABEL",
        "ALGORITHM",
        "SENSITIVE",
        "EXTRACTABLE",
        "ALWAYS_SENSITIVE",
        "NEVER_EXTRACTABLE",
        "LOCAL"
    );
    for k in keys {
        out.push_str(&format!(
            "{:<32}  {:<34}  {:<10}  {:<9}  {:<11}  {:<16}  {:<17}  {:<5}\n",
            k.id.to_string(),
            k.label,
            k.algorithm.map(|a| a.name()).unwrap_or("unknown"),
            yes_no(k.sensitive),
            yes_no(k.extractable),
            yes_no(k.always_sensitive),
            yes_no(k.never_extractable),
            yes_no(k.local),
        ));
    }
    out
}

/// The keys as `--output json` prints them.
fn keys_json(keys: &[KeyInfo]) -> serde_json::Value {
    keys.iter()
        .map(|k| {
            serde_json::json!({
                "id": k.id.to_string(),
                "label": k.label,
                "algorithm": k.algorithm.map(|a| a.name()),
                "sensitive": k.sensitive,
                "extractable": k.extractable,
                "always_sensitive": k.always_sensitive,
                "never_extractable": k.never_extractable,
                "local": k.local,
                "device_bound": k.is_device_bound(),
                "public_key_sha256": crate::ca::fingerprint_id(&k.public_key),
            })
        })
        .collect()
}

pub fn keys_list(
    config_path: &Path,
    shares: &[ShareSource],
    output: super::output::OutputArgs,
) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let settings = if shares.is_empty() {
        config.keystore.clone()
    } else {
        ceremony::keystore_with_shares(&config, shares, &Terminal { yes: true })?
    };
    let store = keystore::open(&settings)?;
    let keys = store.list_blocking()?;
    if output.json() {
        return super::output::print_json(&keys_json(&keys));
    }
    say_raw!("{}", format_keys(&keys));
    if keys.is_empty() {
        say!("(no keys in {})", store.describe());
    }
    Ok(())
}

/// Who runs this command on this host, for the audit record.
fn local_actor() -> String {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m).to_string())
        .unwrap_or_else(|_| "?".into());
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("local:{user} (uid {uid})"),
        _ => format!("local:uid {uid}"),
    }
}

/// Changes the token's user PIN from the one the config names to `new`, and records it in
/// the appliance's audit log (signed with the new login).
pub fn keys_change_pin(config_path: &Path, new: &SecretSource) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let BackendSettings::Pkcs11(settings) = &config.keystore.backend else {
        return Err(CliError::Message(
            "keys change-pin is for PKCS#11 tokens; this config uses a TPM".into(),
        ));
    };
    if settings.pin == SecretSource::Shares {
        return Err(CliError::Message(
            "the token's PIN is held as officers' shares (keystore.pin_shares): change it with \
             `hsm-ca ceremony reshare`"
                .into(),
        ));
    }
    let describe = |e: crate::secret::SecretError| CliError::Message(e.to_string());
    let old = settings.pin.load().map_err(describe)?;
    let new_pin = new.load().map_err(describe)?;
    let len = new_pin.expose().chars().count();
    if !(MIN_PIN..=MAX_PIN).contains(&len) {
        return Err(CliError::Message(format!(
            "the new PIN from {} has {len} characters; use {MIN_PIN} to {MAX_PIN}",
            new.describe()
        )));
    }
    if crate::secret::constant_time_eq(old.expose().as_bytes(), new_pin.expose().as_bytes()) {
        return Err(CliError::Message(
            "the new PIN is the current one; nothing was changed".into(),
        ));
    }
    // A running appliance holds its audit log (and the token logged in): stop it first, so
    // the change is recorded and the appliance never re-logs in with a PIN that is gone.
    if config.audit_enabled {
        let path = config.data_dir.join("audit");
        if path.exists() {
            crate::audit::recorded_key(&config.data_dir).map_err(|e| {
                CliError::Message(format!(
                    "cannot open the audit log {}: {e}; stop the appliance first, nothing was changed",
                    path.display(),
                ))
            })?;
        }
    }
    keystore::apply_module_env(&config.keystore);
    keystore::pkcs11::pin::change_user_pin(settings, &old, &new_pin)?;
    say!(
        "The user PIN of token {:?} was changed. Put the new PIN where the config reads it ({}) \
         before the appliance starts again.",
        settings.token.to_string(),
        settings.pin.describe()
    );
    if config.audit_enabled {
        let mut with_new = config.keystore.clone();
        if let BackendSettings::Pkcs11(s) = &mut with_new.backend {
            s.pin = SecretSource::Given(new_pin.clone());
        }
        let recorded = keystore::open(&with_new)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                let log = AuditLog::open_signed(&config.data_dir, &store, config.audit)
                    .map_err(|e| e.to_string())?;
                log.append_blocking(AuditEvent::PinChanged {
                    token: settings.token.to_string(),
                    actor: local_actor(),
                })
                .map_err(|e| e.to_string())
            });
        if let Err(e) = recorded {
            return Err(CliError::Message(format!(
                "the PIN was changed, but recording it in the audit log failed: {e}"
            )));
        }
    }
    Ok(())
}

/// PIN lengths `keys change-pin` accepts (the token may be stricter).
const MIN_PIN: usize = 8;
const MAX_PIN: usize = 255;
