//! A root CRL signed offline (a ceremony's `root-crl.pem`), read and checked against the trust
//! bundle: which root signed it, its number and what it revokes. Parsing only: it must never
//! change the state.

use time::OffsetDateTime;

use super::{first_cert, serial_of, ControlError};
use crate::ca::inspect::{check_issued_by, parse_certificate, serial_hex};
use crate::ca::RevocationReason;
use crate::state::RootRecord;

/// The one CRL in `text` (PEM `X509 CRL`), as DER.
pub fn crl_der(text: &str) -> Result<Vec<u8>, ControlError> {
    let blocks =
        pem::parse_many(text.as_bytes()).map_err(|e| ControlError::CrlNotPem(e.to_string()))?;
    let mut crls: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "X509 CRL")
        .map(pem::Pem::into_contents)
        .collect();
    match crls.len() {
        1 => Ok(crls.remove(0)),
        0 => Err(ControlError::NoCrl),
        n => Err(ControlError::ManyCrls(n)),
    }
}

/// One revoked certificate of an imported CRL.
pub struct CrlEntry {
    pub serial: String,
    pub reason: &'static str,
    pub revoked_at: OffsetDateTime,
}

/// A CRL checked against the trust bundle: which root signed it and what it revokes.
pub struct RootCrl {
    pub root: RootRecord,
    root_der: Vec<u8>,
    pub number: u64,
    pub this_update: OffsetDateTime,
    pub next_update: Option<OffsetDateTime>,
    pub entries: Vec<CrlEntry>,
}

impl RootCrl {
    pub fn parse(der: &[u8], roots: &[RootRecord]) -> Result<Self, ControlError> {
        let invalid = ControlError::InvalidCrl;
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| invalid(format!("not a CRL: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes after the CRL", rest.len())));
        }
        if let Some(ext) = crl.extensions().iter().find(|e| e.critical) {
            // A delta CRL, or one whose issuing distribution point limits its scope: neither
            // is the complete list a root ceremony signs.
            return Err(invalid(format!(
                "the CRL carries a critical extension {}; send the root's complete CRL",
                ext.oid
            )));
        }
        if crl
            .extensions()
            .iter()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_DELTA_CRL_INDICATOR)
        {
            return Err(invalid("a delta CRL; send the root's complete CRL".into()));
        }
        let (root, root_der) = roots
            .iter()
            .find_map(|r| {
                let root_der = first_cert(&r.certificate_pem).ok()?;
                let cert = parse_certificate(&root_der).ok()?;
                let signed = cert.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(cert.public_key()).is_ok();
                signed.then(|| (r.clone(), root_der.clone()))
            })
            .ok_or_else(|| ControlError::CrlNotFromBundle(crl.issuer().to_string()))?;
        let number = crl
            .crl_number()
            .map(|n| n.to_bytes_be())
            .filter(|b| b.len() <= 8)
            .map(|b| b.iter().fold(0u64, |n, byte| (n << 8) | u64::from(*byte)))
            .ok_or_else(|| invalid("the CRL has no CRL number (or one beyond 64 bits)".into()))?;
        if crl
            .iter_revoked_certificates()
            .any(|e| e.reason_code().is_some_and(|(_, code)| code.0 == 8))
        {
            return Err(invalid(
                "an entry says removeFromCRL, which only delta CRLs use; send the root's \
                 complete CRL"
                    .into(),
            ));
        }
        let entries = crl
            .iter_revoked_certificates()
            .map(|entry| CrlEntry {
                serial: serial_hex(entry.raw_serial()),
                reason: entry
                    .reason_code()
                    .map_or(RevocationReason::Unspecified, |(_, code)| {
                        RevocationReason::from_code(code.0)
                    })
                    .name(),
                revoked_at: entry.revocation_date.to_datetime(),
            })
            .collect();
        Ok(RootCrl {
            root,
            root_der,
            number,
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            entries,
        })
    }

    /// Whether this CRL revokes the CA certificate `der` (issued by its root).
    pub fn lists(&self, der: &[u8]) -> Result<bool, ControlError> {
        let serial = serial_of(der)?;
        Ok(self.entries.iter().any(|e| e.serial == serial)
            && check_issued_by(der, &self.root_der).is_ok())
    }
}
