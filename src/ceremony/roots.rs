//! The roots a ceremony host knows: which root signs (`--root`, else the newest root this host
//! made, else the config's), the record a new root leaves in the host's state, and how a root
//! is shown to officers. Never uses a key.

use std::path::Path;

use time::OffsetDateTime;

use super::error::CeremonyError;
use super::officers::{RootPlan, RootSummary};
use crate::authority::read_certificates;
use crate::ca::inspect::parse_certificate;
use crate::ca::{self, fingerprint, fingerprint_id};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::state::{RootRecord, SledState};

/// The root to sign with: `explicit`, else the newest root this host made, else the config's.
pub(super) fn root_der(
    state: &SledState,
    config: &Config,
    explicit: Option<&Path>,
) -> Result<Vec<u8>, CeremonyError> {
    if let Some(path) = explicit {
        return first_cert(path);
    }
    if let Some(der) = newest_root(state)? {
        return Ok(der);
    }
    first_cert(&config.root.certificates[0])
}

/// The root this host made last, if any.
pub(super) fn newest_root(state: &SledState) -> Result<Option<Vec<u8>>, CeremonyError> {
    let roots = state.roots()?;
    match roots.iter().max_by(|a, b| a.added_at.cmp(&b.added_at)) {
        Some(newest) => Ok(Some(
            ca::certificates_from_pem(newest.certificate_pem.as_bytes())?
                .into_iter()
                .next()
                .ok_or(CeremonyError::EmptyRootRecord)?,
        )),
        None => Ok(None),
    }
}

/// The first certificate in a PEM file.
pub(super) fn first_cert(path: &Path) -> Result<Vec<u8>, CeremonyError> {
    read_certificates(path)?
        .into_iter()
        .next()
        .ok_or_else(|| CeremonyError::NoCertificate(path.to_path_buf()))
}

/// The host's record of a root it made.
pub(super) fn root_record(der: &[u8], now: OffsetDateTime) -> Result<RootRecord, CeremonyError> {
    let cert = parse_certificate(der)?;
    Ok(RootRecord {
        version: crate::state::RECORD_VERSION,
        fingerprint: fingerprint_id(der),
        certificate_pem: ca::certificate_pem(der),
        subject: cert.subject().to_string(),
        not_after: rfc3339(cert.validity().not_after.to_datetime()),
        added_at: rfc3339(now),
    })
}

/// A root as officers identify it.
pub(super) fn summary(der: &[u8]) -> Result<RootSummary, CeremonyError> {
    let cert = parse_certificate(der)?;
    Ok(RootSummary {
        subject: cert.subject().to_string(),
        sha256: fingerprint(der),
        not_after: rfc3339(cert.validity().not_after.to_datetime()),
    })
}

/// The root the config describes.
pub(super) fn plan(config: &Config) -> RootPlan<'_> {
    RootPlan {
        common_name: &config.root.common_name,
        organization: config.root.organization.as_deref(),
        key_algorithm: config.root.key_algorithm.to_string(),
        validity_days: config.root.validity.as_secs() / 86400,
    }
}
