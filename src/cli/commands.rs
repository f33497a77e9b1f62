//! The officer and operator commands.

use std::path::Path;

use time::OffsetDateTime;

use super::CliError;
use crate::audit::{AuditEvent, AuditLog};
use crate::authority::{self, read_certificates, write_file};
use crate::ca::{self, inspect};
use crate::config::{BackendSettings, Config};
use crate::keystore::{self, KeyInfo, KeyStore};
use crate::secret::SecretSource;
use crate::state::CaState;

fn open(config_path: &Path) -> Result<(Config, KeyStore), CliError> {
    let config = Config::load(config_path)?;
    let store = keystore::open(&config.keystore)?;
    Ok((config, store))
}

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

pub fn keys_list(config_path: &Path) -> Result<(), CliError> {
    let (_, store) = open(config_path)?;
    let keys = store.list_blocking()?;
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
            crate::store::open_waiting(&path, std::time::Duration::from_secs(1)).map_err(|e| {
                CliError::Message(format!(
                    "cannot open the audit log {}: {}; stop the appliance first, nothing was changed",
                    path.display(),
                    crate::store::explain(&e)
                ))
            })?;
        }
    }
    keystore::apply_module_env(&config.keystore);
    crate::keystore::pkcs11::pin::change_user_pin(settings, &old, &new_pin)?;
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

pub fn inspect(file: &Path) -> Result<(), CliError> {
    let certs = read_certificates(file)?;
    let now = OffsetDateTime::now_utc();
    for (i, der) in certs.iter().enumerate() {
        if certs.len() > 1 {
            say!("Certificate {} of {}", i + 1, certs.len());
        }
        say_raw!("{}", inspect::describe(der, now)?);
        if i + 1 < certs.len() {
            say!();
        }
    }
    Ok(())
}

/// The production appliance: the config's keystore, state and audit log, served until stopped.
pub fn serve(config_path: &Path, listen: Option<std::net::SocketAddr>) -> Result<(), CliError> {
    let mut config = Config::load(config_path)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let store = keystore::open(&config.keystore)?;
    let state = CaState::open(&config.data_dir)?;
    if state.active()?.is_none() {
        return Err(CliError::Message(
            "no intermediate is installed: `hsm-ca intermediate new`, have it signed in a \
             ceremony, then `hsm-ca intermediate install`"
                .into(),
        ));
    }
    super::dev::run_appliance(config, store, state, |server| {
        format!(
            "Serving istio.v1.auth.IstioCertificateService on {}\nAdmin API on {}\n",
            server.local_addr,
            server
                .admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(disabled)".into())
        )
    })
}

pub fn intermediate_new(config_path: &Path, out: &Path) -> Result<(), CliError> {
    let (config, store) = open(config_path)?;
    if out.exists() {
        return Err(CliError::Message(format!(
            "{} already exists; refusing to overwrite it",
            out.display()
        )));
    }
    let (info, csr_pem) =
        authority::new_intermediate_csr(&store, &config, OffsetDateTime::now_utc())?;
    write_file(out, csr_pem.as_bytes(), false)?;
    say!(
        "Intermediate key {} ({}) created in {}",
        info.id,
        info.label,
        store.describe()
    );
    say!("CSR written to {}", out.display());
    say!("Public key SHA-256: {}", ca::fingerprint(&info.public_key));
    Ok(())
}

/// The trust bundle: the CA state's once the appliance has started (the admin API changes it),
/// else the config's root files.
fn load_roots(config: &Config, state: &CaState) -> Result<Vec<Vec<u8>>, CliError> {
    let recorded = state.roots()?;
    if !recorded.is_empty() {
        let mut roots = Vec::new();
        for r in recorded {
            roots.extend(ca::certificates_from_pem(r.certificate_pem.as_bytes())?);
        }
        return Ok(roots);
    }
    let mut roots = Vec::new();
    for path in &config.root.certificates {
        roots.extend(read_certificates(path)?);
    }
    Ok(roots)
}

pub fn intermediate_install(config_path: &Path, cert_path: &Path) -> Result<(), CliError> {
    let (config, store) = open(config_path)?;
    let cert_der = read_certificates(cert_path)?
        .into_iter()
        .next()
        .ok_or_else(|| CliError::Message(format!("{}: no certificate", cert_path.display())))?;
    let state = CaState::open(&config.data_dir)?;
    let roots = load_roots(&config, &state)?;
    let record = authority::install_intermediate(
        &store,
        &state,
        &roots,
        &cert_der,
        OffsetDateTime::now_utc(),
    )?;
    say!(
        "Installed intermediate {} (key {}) as {:?}, valid until {}",
        record.subject,
        record.key_id,
        record.status,
        record.not_after
    );
    Ok(())
}

pub fn intermediate_list(config_path: &Path) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let state = CaState::open(&config.data_dir)?;
    let records = state.intermediates()?;
    if records.is_empty() {
        say!("(no intermediates installed)");
    }
    for r in records {
        say!(
            "{:<9} {}  key {}  until {}",
            format!("{:?}", r.status).to_lowercase(),
            r.subject,
            r.key_id,
            r.not_after
        );
    }
    Ok(())
}

/// Prints the trust bundle. The running appliance keeps `data_dir/trust-bundle.pem` current, so
/// this works while it serves; before its first start the config's root files are the bundle.
pub fn bundle(
    config_path: &Path,
    format: super::BundleFormat,
    namespace: &str,
) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let published = crate::admin::control::bundle_file(&config);
    let roots = if published.exists() {
        read_certificates(&published)?
    } else {
        let mut roots = Vec::new();
        for path in &config.root.certificates {
            roots.extend(read_certificates(path)?);
        }
        roots
    };
    if roots.is_empty() {
        return Err(CliError::Message("the trust bundle is empty".into()));
    }
    let text = match format {
        super::BundleFormat::Pem => crate::admin::bundle::pem(&roots),
        super::BundleFormat::Configmap => crate::admin::bundle::configmap(&roots, namespace),
        super::BundleFormat::Spiffe => {
            // The sequence number lives in the CA state; offline it is not known.
            let value = crate::admin::bundle::spiffe(
                &roots,
                0,
                config.admin.bundle_refresh_hint.as_secs(),
            )?;
            serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
        }
    };
    say_raw!("{text}");
    Ok(())
}
