//! Istio's plug-in CA layout (`cacerts` secret in `istio-system`): `ca-cert.pem` (istiod's
//! intermediate), `cert-chain.pem` (that intermediate, then the root that signed it),
//! `root-cert.pem` (every root of the trust bundle, so workloads trust both during a root
//! rotation). istiod's key (`ca-key.pem`) stays where istiod's administrator made it: this
//! module never sees it.

use time::OffsetDateTime;

use crate::ca::inspect::{check_issued_by, parse_certificate};
use crate::ca::{certificate_pem, CaError};

/// The three public files of Istio's `cacerts` secret, as PEM text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioCaCerts {
    pub ca_cert: String,
    pub cert_chain: String,
    pub root_cert: String,
}

/// Checks that `intermediate` (DER) is an unexpired CA certificate issued by one of `roots`
/// (the trust bundle, DER) and lays out the files istiod reads.
pub fn istio_cacerts(
    intermediate: &[u8],
    roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<IstioCaCerts, CaError> {
    let cert = parse_certificate(intermediate)?;
    if !cert.is_ca() {
        return Err(CaError::Chain(format!(
            "{} is not a CA certificate; istiod needs an intermediate CA",
            cert.subject()
        )));
    }
    if cert.validity().not_after.to_datetime() <= now {
        return Err(CaError::Chain(format!("{} has expired", cert.subject())));
    }
    let root = roots
        .iter()
        .find(|r| check_issued_by(intermediate, r).is_ok())
        .ok_or_else(|| {
            CaError::Chain(format!(
                "{} was not signed by a root of the trust bundle",
                cert.subject()
            ))
        })?;
    let ca_cert = certificate_pem(intermediate);
    Ok(IstioCaCerts {
        cert_chain: format!("{ca_cert}{}", certificate_pem(root)),
        ca_cert,
        root_cert: super::bundle::pem(roots),
    })
}
