//! Certificates: the profiles hsm-ca issues (root, intermediate, workload leaf), the parsing
//! and checking of CSRs and certificates, and the human-readable description of certificates.
//!
//! Certificates are built with rcgen and signed through [`crate::keystore::DeviceSigningKey`];
//! they are parsed and checked with x509-parser. Nothing here holds a private key.

pub mod csr;
pub mod inspect;
pub mod issuer;
pub mod named;
pub mod profile;
pub mod revocation;

pub use csr::{parse_csr, CsrKey, ParsedCsr};
pub use issuer::{IssuedCert, IssuingCa, PreparedCert};
pub use revocation::{RevocationReason, Revoked};

use crate::keystore::KeystoreError;

/// Why a certificate could not be made or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("CSR signature invalid: the requester does not hold the private key")]
    CsrSignatureInvalid,
    #[error("{0}")]
    Policy(String),
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    #[error("{0}")]
    Chain(String),
    #[error("the issuing CA certificate expired at {0}")]
    IssuerExpired(String),
    #[error("certificate could not be built: {0}")]
    Build(String),
}

/// Converts an rcgen failure, recovering the keystore cause of a failed remote signature.
pub(crate) fn from_rcgen(e: rcgen::Error) -> CaError {
    match e {
        rcgen::Error::RemoteKeyError => match crate::keystore::signer::take_last_error() {
            Some(k) => CaError::Keystore(k),
            None => CaError::Build("the device did not sign".into()),
        },
        other => CaError::Build(other.to_string()),
    }
}

/// SHA-256 of `der`, as uppercase hex with colons (how `openssl x509 -fingerprint` shows it).
pub fn fingerprint(der: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(3 * d.as_ref().len());
    for (i, b) in d.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of `der` as plain lowercase hex: how roots are named in URLs and records.
pub fn fingerprint_id(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Every certificate in a PEM bundle, as DER. Other PEM blocks are refused.
pub fn certificates_from_pem(pem_text: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks =
        pem::parse_many(pem_text).map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    if blocks.is_empty() {
        return Err(CaError::MalformedCertificate(
            "no PEM certificate found".into(),
        ));
    }
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(b.into_contents())
            } else {
                Err(CaError::MalformedCertificate(format!(
                    "unexpected PEM block {:?}",
                    b.tag()
                )))
            }
        })
        .collect()
}

/// PEM text of one DER certificate.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests;
