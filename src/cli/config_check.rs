//! `hsm-ca config check [--devices]`: validates a config file without starting anything. Every
//! key is checked as `serve` would (an error names the key); files the config points at that
//! cannot be read yet (a JWKS, a root certificate written by a later ceremony) are warnings.
//! With `--devices` it opens the token or TPM and the CA state and reports the keys the
//! appliance would use; a missing key of the active intermediate is an error.

use std::path::Path;

use super::commands::with_state;
use super::CliError;
use crate::auth::{ClusterKeys, JwksSource};
use crate::authority::{self, read_certificates, AuthorityError};
use crate::ca::inspect::parse_certificate;
use crate::config::Config;
use crate::keystore::{self, BackendSettings, KeyStore};
use crate::state::IntermediateStatus;

pub fn check(config_path: &Path, devices: bool) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    crate::server::check_admin_identities(&config).map_err(|e| {
        CliError::Message(format!(
            "config {}: admin.users: {e}",
            config_path.display()
        ))
    })?;
    say!("config {}: valid", config_path.display());
    say!("  trust domain       {}", config.trust_domain);
    say!("  keystore           {}", keystore_line(&config));
    say!("  issuance listener  {}", config.server.listen);
    let admin = if config.admin.enabled {
        config.admin.listen.to_string()
    } else {
        "disabled".into()
    };
    say!("  admin API          {admin}");
    let metrics = config
        .metrics
        .listen
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    say!("  plaintext metrics  {metrics}");
    say!("  data directory     {}", config.data_dir.display());
    let mut warnings = Vec::new();
    for c in &config.clusters {
        let key = match &c.keys {
            JwksSource::File(_) => "jwks_file",
            JwksSource::Https { .. } => "ca_file",
        };
        if let Err(reason) =
            ClusterKeys::new(&c.id, &c.issuer, &c.audiences, c.keys.clone(), c.refresh)
        {
            warnings.push(format!("clusters ({}): {key}: {reason}", c.id));
        }
    }
    for path in &config.root.certificates {
        if !path.exists() {
            warnings.push(format!(
                "root.certificates: {} does not exist yet (the root ceremony writes it)",
                path.display()
            ));
        }
    }
    for w in &warnings {
        say!("  warning: {w}");
    }
    if devices {
        report_devices(&config)?;
    }
    Ok(())
}

fn keystore_line(config: &Config) -> String {
    match &config.keystore.backend {
        BackendSettings::Pkcs11(p) => {
            format!("PKCS#11 {} (token {})", p.module.display(), p.token)
        }
        BackendSettings::Tpm(t) => format!("TPM 2.0 {}", t.tcti),
    }
}

/// Opens the device and the CA state; prints the keys and which CA certificate uses each.
fn report_devices(config: &Config) -> Result<(), CliError> {
    let store = keystore::open(&config.keystore)?;
    say!("device {}", store.describe());
    let keys = store.list_blocking()?;
    say_raw!("{}", super::keys::format_keys(&keys));
    for path in config.root.certificates.iter().filter(|p| p.exists()) {
        for der in read_certificates(path)? {
            say!("  root {}: {}", subject(&der), key_of(&store, &der)?);
        }
    }
    let records = match with_state(config, async |state| Ok(state.intermediates().await?)) {
        Ok(records) => records,
        Err(e) => {
            say!("  CA state not readable ({e}); is the appliance running on this host?");
            return Ok(());
        }
    };
    if records.is_empty() {
        say!("  no intermediate installed");
    }
    for rec in &records {
        let present = keys.iter().any(|k| k.id == rec.key_id);
        say!(
            "  intermediate {} ({}), key {}: {}",
            rec.subject,
            rec.status.as_str(),
            rec.key_id,
            if present {
                "in this device"
            } else {
                "NOT in this device"
            }
        );
        if rec.status == IntermediateStatus::Active && !present {
            return Err(CliError::Message(format!(
                "the active intermediate's key {} is not in {}",
                rec.key_id,
                store.describe()
            )));
        }
    }
    Ok(())
}

fn subject(der: &[u8]) -> String {
    parse_certificate(der)
        .map(|c| c.subject().to_string())
        .unwrap_or_else(|_| "(unreadable certificate)".into())
}

fn key_of(store: &KeyStore, der: &[u8]) -> Result<&'static str, CliError> {
    match authority::issuing_ca_for(store, der) {
        Ok(_) => Ok("key in this device"),
        Err(AuthorityError::NoMatchingKey(_)) => Ok("key not in this device (kept offline)"),
        Err(e) => Err(e.into()),
    }
}
