//! The trust plane: what the appliance publishes about whom it trusts. It seeds and reads the
//! trust bundle, loads the revocations client certificates are checked against, chooses the
//! admin client roots, writes `<data_dir>/trust-bundle.pem`, and (re)builds the issuance and
//! admin TLS configs; [`TrustPlane`] holds the handles the running server reads from (issuer
//! view, serving certificate, the two TLS configs, the revocation index, the renewal signal).
//! Start-up and every control-plane change publish through here, so there is one way to make
//! a state visible.
//!
//! It must never decide a state change (that is the control plane's), know the admin API or
//! HTTP, or talk to clients itself.

pub mod bundle;
pub mod cacerts;

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use time::OffsetDateTime;

use crate::auth::revoked::Revocations;
use crate::authority::{self, AuthorityError};
use crate::ca::inspect::parse_certificate;
use crate::ca::{certificate_pem, certificates_from_pem, fingerprint_id, CaError};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::issuance::{IssuerSnapshot, IssuerView};
use crate::keystore::KeyStore;
use crate::state::{CaState, RootRecord, Snapshot, StateError};
use crate::tls::{self, ServingCert, TlsError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Reading the state, a certificate file or the device, or writing the bundle file.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    /// A TLS config could not be built from the bundle.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl From<CaError> for TrustError {
    fn from(e: CaError) -> Self {
        TrustError::Authority(e.into())
    }
}

impl From<StateError> for TrustError {
    fn from(e: StateError) -> Self {
        TrustError::Authority(e.into())
    }
}

type TlsConfig = Arc<ArcSwap<rustls::ServerConfig>>;

/// The handles the running server serves from, republished on every change.
#[derive(Debug)]
pub struct TrustPlane {
    config: Arc<Config>,
    view: Arc<IssuerView>,
    serving: Arc<ServingCert>,
    grpc_tls: TlsConfig,
    admin_tls: TlsConfig,
    /// Wakes the serving-certificate renewal (after the issuer changed).
    renew: Arc<tokio::sync::Notify>,
    /// What client certificates are checked against; reloaded with every change.
    revocations: Arc<Revocations>,
}

impl TrustPlane {
    /// The first publication: loads the revocations against `roots` (the bundle, DER) and
    /// the installed intermediates of `state` into `revocations`, and builds both TLS configs.
    pub fn new(
        config: Arc<Config>,
        state: &Snapshot,
        roots: &[Vec<u8>],
        view: Arc<IssuerView>,
        serving: Arc<ServingCert>,
        revocations: Arc<Revocations>,
    ) -> Result<Self, TrustError> {
        load_revocations(&revocations, state, roots)?;
        let (grpc, admin) = tls_configs(&config, roots, &serving)?;
        Ok(TrustPlane {
            config,
            view,
            serving,
            grpc_tls: Arc::new(ArcSwap::from_pointee(grpc)),
            admin_tls: Arc::new(ArcSwap::from_pointee(admin)),
            renew: Arc::new(tokio::sync::Notify::new()),
            revocations,
        })
    }

    /// The issuer the issuance service signs with, and the bundle it hands out.
    pub fn view(&self) -> &Arc<IssuerView> {
        &self.view
    }

    pub fn serving(&self) -> &Arc<ServingCert> {
        &self.serving
    }

    /// The issuance listener's TLS config (client certificates against the bundle).
    pub fn grpc_tls(&self) -> TlsConfig {
        self.grpc_tls.clone()
    }

    /// The admin listener's TLS config (client certificates against the admin client roots).
    pub fn admin_tls(&self) -> TlsConfig {
        self.admin_tls.clone()
    }

    /// Notified when the issuer changed and the serving certificate should be renewed now.
    pub fn renewal(&self) -> Arc<tokio::sync::Notify> {
        self.renew.clone()
    }

    /// The revocations client certificates are checked against.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The published bundle (DER, oldest root first).
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.view.load().roots.clone()
    }

    /// Makes `state` visible: revocations, issuer view, both TLS configs, the bundle file;
    /// wakes the serving-certificate renewal when the issuer changed. Blocks on the device.
    pub fn publish(&self, store: &KeyStore, state: &Snapshot) -> Result<(), TrustError> {
        let roots = root_certificates(&state.roots)?;
        load_revocations(&self.revocations, state, &roots)?;
        let issuer = authority::issuer_of(store, state.active())?;
        let issuer_changed = self.view.load().ca.key().id() != issuer.key().id();
        self.view
            .replace(IssuerSnapshot::new(issuer, roots.clone()));
        let (grpc, admin) = tls_configs(&self.config, &roots, &self.serving)?;
        self.grpc_tls.store(Arc::new(grpc));
        self.admin_tls.store(Arc::new(admin));
        write_bundle_file(&self.config, &roots)?;
        if issuer_changed {
            self.renew.notify_one();
        }
        Ok(())
    }

    /// Reloads the revocations alone (the bundle and issuer did not change).
    pub fn reload_revocations(&self, state: &Snapshot) -> Result<(), TrustError> {
        load_revocations(&self.revocations, state, &root_certificates(&state.roots)?)
    }
}

/// The issuance and admin TLS configs for `roots`.
fn tls_configs(
    config: &Config,
    roots: &[Vec<u8>],
    serving: &Arc<ServingCert>,
) -> Result<(rustls::ServerConfig, rustls::ServerConfig), TrustError> {
    let grpc = tls::server_config(roots, config.server.client_auth, serving.clone())?;
    let admin = tls::admin_server_config(&admin_client_roots(config, roots)?, serving.clone())?;
    Ok((grpc, admin))
}

/// The bundle file (data_dir/trust-bundle.pem) the `bundle` command reads while the
/// appliance runs.
pub fn bundle_file(config: &Config) -> PathBuf {
    config.data_dir.join("trust-bundle.pem")
}

/// Writes the bundle file.
pub fn write_bundle_file(config: &Config, roots: &[Vec<u8>]) -> Result<(), TrustError> {
    authority::write_file(&bundle_file(config), bundle::pem(roots).as_bytes(), true)?;
    Ok(())
}

/// The certificates of bundle root records (DER, in their order).
pub fn root_certificates(records: &[RootRecord]) -> Result<Vec<Vec<u8>>, TrustError> {
    records
        .iter()
        .map(|r| {
            certificates_from_pem(r.certificate_pem.as_bytes())?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    TrustError::from(CaError::MalformedCertificate(format!(
                        "root record {} holds no certificate",
                        r.fingerprint
                    )))
                })
        })
        .collect()
}

/// The CAs admin client certificates must chain to: `admin.client_ca_files`, or else the
/// trust bundle.
pub fn admin_client_roots(config: &Config, bundle: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, TrustError> {
    if config.admin.client_ca_files.is_empty() {
        return Ok(bundle.to_vec());
    }
    let mut cas = Vec::new();
    for path in &config.admin.client_ca_files {
        cas.extend(authority::read_certificates(path)?);
    }
    Ok(cas)
}

/// Loads into `index` every bundle root (`roots`) and installed intermediate, and every
/// revocation recorded against them, for checking client certificates.
pub fn load_revocations(
    index: &Revocations,
    state: &Snapshot,
    roots: &[Vec<u8>],
) -> Result<(), TrustError> {
    let mut cas = roots.to_vec();
    for rec in &state.intermediates {
        cas.extend(
            certificates_from_pem(rec.certificate_pem.as_bytes())?
                .into_iter()
                .next(),
        );
    }
    index.replace(&cas, &state.revocations);
    Ok(())
}

/// Fingerprints of the roots this appliance trusts from its own files: the configured root
/// certificates and the bundle it last wrote. Unreadable files count as empty.
pub fn local_root_fingerprints(config: &Config) -> Vec<String> {
    config
        .root
        .certificates
        .iter()
        .cloned()
        .chain(std::iter::once(bundle_file(config)))
        .filter_map(|path| authority::read_certificates(&path).ok())
        .flatten()
        .map(|der| fingerprint_id(&der))
        .collect()
}

/// Seeds the bundle from the config's root files the first time (recording them as added at
/// `now`), then writes the bundle file. Returns the bundle (DER, oldest first).
pub async fn load_roots(
    config: &Config,
    state: &CaState,
    now: OffsetDateTime,
) -> Result<Vec<Vec<u8>>, TrustError> {
    if state.roots().await?.is_empty() {
        let now = rfc3339(now);
        for path in &config.root.certificates {
            for der in authority::read_certificates(path)? {
                let cert = parse_certificate(&der)?;
                state
                    .add_root(RootRecord {
                        version: crate::state::RECORD_VERSION,
                        fingerprint: fingerprint_id(&der),
                        certificate_pem: certificate_pem(&der),
                        subject: cert.subject().to_string(),
                        not_after: rfc3339(cert.validity().not_after.to_datetime()),
                        added_at: now.clone(),
                    })
                    .await?;
            }
        }
    }
    let roots = root_certificates(&state.roots().await?)?;
    write_bundle_file(config, &roots)?;
    Ok(roots)
}
