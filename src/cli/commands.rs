//! The operator commands on the online appliance's certificates: inspect, intermediate new,
//! install and list, and the trust bundle. They print; they never serve.

use std::path::Path;

use time::OffsetDateTime;

use super::output::{print_json, OutputArgs};
use super::CliError;
use crate::authority::{self, read_certificates, write_file};
use crate::ca::{self, inspect};
use crate::config::Config;
use crate::keystore::{self, KeyStore};
use crate::state::CaState;

fn open(config_path: &Path) -> Result<(Config, KeyStore), CliError> {
    let config = Config::load(config_path)?;
    let store = keystore::open(&config.keystore)?;
    Ok((config, store))
}

/// Runs `work` on the CA state the config names (sled, or the PostgreSQL database), on a
/// runtime of its own.
pub(super) fn with_state<T>(
    config: &Config,
    work: impl AsyncFnOnce(&CaState) -> Result<T, CliError>,
) -> Result<T, CliError> {
    state_then(config, None, work)
}

/// [`with_state`] for a change: on a shared database the node's device signs what it writes
/// (rows and seals), as the running appliance does.
pub(super) fn with_signing_state<T>(
    config: &Config,
    store: &KeyStore,
    work: impl AsyncFnOnce(&CaState) -> Result<T, CliError>,
) -> Result<T, CliError> {
    state_then(config, Some(store), work)
}

fn state_then<T>(
    config: &Config,
    signer: Option<&KeyStore>,
    work: impl AsyncFnOnce(&CaState) -> Result<T, CliError>,
) -> Result<T, CliError> {
    // Multi-threaded: signing in the device blocks a worker of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::Message(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let state = CaState::connect(
            &config.store_backend,
            &config.data_dir,
            config.store_cache_bytes,
        )
        .await?;
        if let Some(store) = signer {
            let unaudited = std::sync::Arc::new(std::sync::OnceLock::new());
            crate::cluster::trust_rows(&state, store, config, &[], unaudited)
                .await
                .map_err(CliError::Message)?;
        }
        work(&state).await
    })
}

fn summaries(certs: &[Vec<u8>]) -> Result<Vec<inspect::Summary>, CliError> {
    Ok(certs
        .iter()
        .map(|der| inspect::summary(der))
        .collect::<Result<_, _>>()?)
}

pub fn inspect(file: &Path, output: OutputArgs) -> Result<(), CliError> {
    let certs = read_certificates(file)?;
    if output.json() {
        return print_json(&summaries(&certs)?);
    }
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
async fn load_roots(config: &Config, state: &CaState) -> Result<Vec<Vec<u8>>, CliError> {
    let recorded = state.roots().await?;
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
    let record = with_signing_state(&config, &store, async |state| {
        let roots = load_roots(&config, state).await?;
        let checked =
            authority::check_intermediate(&store, &roots, &cert_der, OffsetDateTime::now_utc())?;
        Ok(state.install(checked).await?)
    })?;
    say!(
        "Installed intermediate {} (key {}) as {:?}, valid until {}",
        record.subject,
        record.key_id,
        record.status,
        record.not_after
    );
    Ok(())
}

pub fn intermediate_list(config_path: &Path, output: OutputArgs) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let records = with_state(&config, async |state| Ok(state.intermediates().await?))?;
    if output.json() {
        return print_json(&records);
    }
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

/// The trust bundle as the running appliance published it (its bundle file), or else the
/// configured root certificates. Never empty.
pub(super) fn published_roots(config: &Config) -> Result<Vec<Vec<u8>>, CliError> {
    let published = crate::trust::bundle_file(config);
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
    Ok(roots)
}

/// Prints the trust bundle. The running appliance keeps `data_dir/trust-bundle.pem` current, so
/// this works while it serves; before its first start the config's root files are the bundle.
pub fn bundle(
    config_path: &Path,
    format: super::BundleFormat,
    namespace: &str,
    output: OutputArgs,
) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let roots = published_roots(&config)?;
    if output.json() {
        let roots = summaries(&roots)?
            .into_iter()
            .zip(&roots)
            .map(|(summary, der)| serde_json::json!({"certificate": summary, "pem": ca::certificate_pem(der)}))
            .collect::<Vec<_>>();
        return print_json(&roots);
    }
    let text = match format {
        super::BundleFormat::Pem => crate::trust::bundle::pem(&roots),
        super::BundleFormat::Configmap => crate::trust::bundle::configmap(&roots, namespace),
        super::BundleFormat::Spiffe => {
            // The sequence number lives in the CA state; offline it is not known.
            let value = crate::trust::bundle::spiffe(
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
