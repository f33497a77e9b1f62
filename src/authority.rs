//! CA state changes: create a root, prepare an intermediate key and its CSR, sign an
//! intermediate with a root, install a signed intermediate, and load the issuing CA; also
//! reading certificate files and writing files atomically. The command line, the root
//! ceremony and the control plane ([`crate::control`], driven by the admin API) call these.
//! They print nothing, ask no one for approval and read no clock: the caller passes `now`.

use std::path::Path;

use time::OffsetDateTime;

use crate::ca::inspect::{check_issued_by, parse_certificate};
use crate::ca::profile::{self, IntermediateProfile, Subject};
use crate::ca::{certificates_from_pem, CaError, IssuedCert, IssuingCa, ParsedCsr};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::keystore::{DeviceSigningKey, KeyInfo, KeyRequest, KeyStore, KeystoreError};
use crate::state::{IntermediateRecord, IntermediateStatus, SledState, StateError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate {0} does not match any key in the token")]
    NoMatchingKey(String),
    #[error("{0}")]
    Refused(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads every certificate in a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, AuthorityError> {
    let text = std::fs::read(path).map_err(io_err(path))?;
    certificates_from_pem(&text)
        .map_err(|e| match e {
            CaError::MalformedCertificate(m) => {
                CaError::MalformedCertificate(format!("{}: {m}", path.display()))
            }
            other => other,
        })
        .map_err(AuthorityError::from)
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename).
/// Refuses to replace an existing file unless `overwrite`.
pub fn write_file(path: &Path, contents: &[u8], overwrite: bool) -> Result<(), AuthorityError> {
    write_file_with_mode(path, contents, overwrite, 0o644)
}

/// [`write_file`] for secrets (PINs, software keys): readable by the owner only, from the
/// moment the file exists.
pub fn write_secret_file(
    path: &Path,
    contents: &[u8],
    overwrite: bool,
) -> Result<(), AuthorityError> {
    write_file_with_mode(path, contents, overwrite, 0o600)
}

fn write_file_with_mode(
    path: &Path,
    contents: &[u8],
    overwrite: bool,
    mode: u32,
) -> Result<(), AuthorityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !overwrite && path.exists() {
        return Err(AuthorityError::Refused(format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let tmp = path.with_extension("tmp-hsm-ca");
    // A leftover from an interrupted write could carry other permissions: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn label(kind: &str, now: OffsetDateTime) -> String {
    format!(
        "hsm-ca {kind} {:04}-{:02}-{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Generates a root key in the device and self-signs the root certificate.
pub fn create_root(
    store: &KeyStore,
    config: &Config,
    now: OffsetDateTime,
) -> Result<(KeyInfo, IssuedCert), AuthorityError> {
    let info = store.generate_blocking(KeyRequest {
        algorithm: config.root.key_algorithm,
        label: label("root", now),
    })?;
    let key = DeviceSigningKey::new(store.clone(), &info)?;
    let subject = Subject {
        common_name: config.root.common_name.clone(),
        organization: config.root.organization.clone(),
    };
    let params = profile::root(
        &subject,
        config.root.validity,
        now,
        config.workload.clock_skew,
    );
    let cert = IssuingCa::self_signed(&key, &params)?;
    // The device signed it: check the signature before anyone trusts it.
    check_issued_by(&cert.der, &cert.der)?;
    Ok((info, cert))
}

/// Generates the next intermediate key in the device and a CSR signed by it.
pub fn new_intermediate_csr(
    store: &KeyStore,
    config: &Config,
    now: OffsetDateTime,
) -> Result<(KeyInfo, String), AuthorityError> {
    let info = store.generate_blocking(KeyRequest {
        algorithm: config.intermediate.key_algorithm,
        label: label("intermediate", now),
    })?;
    let key = DeviceSigningKey::new(store.clone(), &info)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = Subject {
        common_name: config.intermediate.common_name.clone(),
        organization: config.intermediate.organization.clone(),
    }
    .to_dn();
    let csr = params
        .serialize_request(&key)
        .map_err(crate::ca::from_rcgen)?;
    let pem = csr.pem().map_err(|e| CaError::Build(e.to_string()))?;
    Ok((info, pem))
}

/// Finds the device key that belongs to the CA certificate `cert_der`.
pub fn issuing_ca_for(store: &KeyStore, cert_der: &[u8]) -> Result<IssuingCa, AuthorityError> {
    let cert = parse_certificate(cert_der)?;
    let info = store
        .find_by_public_key(cert.public_key().raw)?
        .ok_or_else(|| AuthorityError::NoMatchingKey(cert.subject().to_string()))?;
    let key = DeviceSigningKey::new(store.clone(), &info)?;
    Ok(IssuingCa::new(key, cert_der.to_vec())?)
}

/// The root signs an intermediate CSR (whose proof of possession already verified).
pub fn sign_intermediate(
    root: &IssuingCa,
    csr: &ParsedCsr,
    config: &Config,
    now: OffsetDateTime,
) -> Result<IssuedCert, AuthorityError> {
    if csr.subject_is_blank {
        return Err(AuthorityError::Refused(
            "the CSR has an empty subject; an intermediate needs a name".into(),
        ));
    }
    let subject = rcgen::CertificateSigningRequestParams::from_der(&csr.der.as_slice().into())
        .map_err(|e| CaError::MalformedCsr(e.to_string()))?
        .params
        .distinguished_name;
    let profile = IntermediateProfile {
        trust_domain: config.trust_domain.clone(),
        validity: config.intermediate.validity,
        name_constraint: config.intermediate.name_constraint,
        clock_skew: config.workload.clock_skew,
    };
    let params = profile::intermediate(subject, &profile, now, root.not_after())?;
    let cert = root.sign(&params, &csr.spki, now)?;
    check_issued_by(&cert.der, root.cert_der())?;
    Ok(cert)
}

/// Checks a signed intermediate (a CA certificate, a key in the token, chains to one of the
/// configured roots, not expired) and records it in a sled state. Returns the record.
pub fn install_intermediate(
    store: &KeyStore,
    state: &SledState,
    roots: &[Vec<u8>],
    cert_der: &[u8],
    now: OffsetDateTime,
) -> Result<IntermediateRecord, AuthorityError> {
    let record = check_intermediate(store, roots, cert_der, now)?;
    Ok(state.install(record)?)
}

/// Checks a signed intermediate (a CA certificate, a key in the token, chains to one of the
/// configured roots, not expired) and returns the record to install (its status is decided
/// when it is installed).
pub fn check_intermediate(
    store: &KeyStore,
    roots: &[Vec<u8>],
    cert_der: &[u8],
    now: OffsetDateTime,
) -> Result<IntermediateRecord, AuthorityError> {
    let cert = parse_certificate(cert_der)?;
    if !cert.is_ca() {
        return Err(CaError::Chain(format!("{} is not a CA certificate", cert.subject())).into());
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= now {
        return Err(CaError::Chain(format!("{} has expired", cert.subject())).into());
    }
    let chained = roots.iter().any(|root| {
        check_issued_by(cert_der, root).is_ok()
            && parse_certificate(root)
                .map(|r| r.validity().not_after.to_datetime() > now)
                .unwrap_or(false)
    });
    if !chained {
        return Err(CaError::Chain(format!(
            "{} does not chain to the configured root certificate(s)",
            cert.subject()
        ))
        .into());
    }
    let info = store
        .find_by_public_key(cert.public_key().raw)?
        .ok_or_else(|| AuthorityError::NoMatchingKey(cert.subject().to_string()))?;
    // Refuse to record a pair that cannot sign (e.g. a key without the algorithm we need).
    let key = DeviceSigningKey::new(store.clone(), &info)?;
    IssuingCa::new(key, cert_der.to_vec())?;
    let record = IntermediateRecord {
        version: crate::state::RECORD_VERSION,
        key_id: info.id,
        certificate_pem: crate::ca::certificate_pem(cert_der),
        status: IntermediateStatus::Prepared,
        installed_at: rfc3339(now),
        not_after: rfc3339(not_after),
        subject: cert.subject().to_string(),
        activated_at: None,
        retired_at: None,
        node: String::new(),
    };
    Ok(record)
}

/// The active intermediate of a sled state as an issuing CA.
pub fn active_issuer(store: &KeyStore, state: &SledState) -> Result<IssuingCa, AuthorityError> {
    issuer_of(store, state.active()?.as_ref())
}

/// The intermediate `active` (the active one, if any) as an issuing CA.
pub fn issuer_of(
    store: &KeyStore,
    active: Option<&IntermediateRecord>,
) -> Result<IssuingCa, AuthorityError> {
    let record =
        active.ok_or_else(|| AuthorityError::Refused("no intermediate is installed yet".into()))?;
    let der = certificates_from_pem(record.certificate_pem.as_bytes())?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::MalformedCertificate("empty record".into()))?;
    issuing_ca_for(store, &der)
}
