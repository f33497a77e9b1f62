//! Issuing an order's certificate: the CSR checks (RSA ≥ 2048, P-256 or P-384 keys only; the
//! SANs exactly the order's identifiers; a common name, if any, one of them), the server
//! profile (serverAuth; clientAuth when the account's policy allows), the validity capped by
//! `[acme]` and the policy, and the signature in the device while the issuance record is
//! written — the same path and audit as the Istio service's. Also what revocation needs to
//! know about a certificate (serial, key thumbprint).
//!
//! It must never sign a name the order does not hold, and never let a certificate out whose
//! issuance record is not durable.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use super::error::AcmeError;
use super::jws::{b64, AccountKey};
use super::records::{Account, Certificate, EabPolicy, Identifier, Order, VERSION};
use super::AcmeServer;
use crate::audit::AuditEvent;
use crate::ca::csr::CsrKey;
use crate::ca::named::Names;
use crate::ca::{parse_csr, profile, ParsedCsr};
use crate::clock::rfc3339;

/// A CSR that matches its order.
pub struct CheckedCsr {
    pub csr: ParsedCsr,
    pub common_name: Option<String>,
}

/// The CSR's common name and IP SANs (what [`ParsedCsr`] only counts).
fn cn_and_ips(der: &[u8]) -> (Option<String>, Vec<IpAddr>) {
    let Ok((_, csr)) = X509CertificationRequest::from_der(der) else {
        return (None, Vec::new());
    };
    let cn = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_string);
    let mut ips = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::IPAddress(b) = name {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(v6));
                    }
                }
            }
        }
    }
    (cn, ips)
}

/// Checks the CSR (DER) against the order's identifiers.
pub fn check_csr(der: &[u8], identifiers: &[Identifier]) -> Result<CheckedCsr, AcmeError> {
    let csr = parse_csr(der).map_err(|e| AcmeError::BadCsr(e.to_string()))?;
    match csr.key {
        CsrKey::Rsa { bits } if bits >= 2048 => {}
        CsrKey::EcP256 | CsrKey::EcP384 => {}
        ref other => {
            return Err(AcmeError::BadCsr(format!(
                "the CSR's key is {other}; RSA of at least 2048 bits, P-256 or P-384 only"
            )))
        }
    }
    if !csr.uri_sans.is_empty() || !csr.email_sans.is_empty() {
        return Err(AcmeError::BadCsr(
            "the CSR asks for URI or email SANs; only the order's identifiers are issued".into(),
        ));
    }
    let (common_name, ips) = cn_and_ips(&csr.der);
    let wanted: BTreeSet<String> = identifiers.iter().map(|i| i.value.clone()).collect();
    let mut asked: BTreeSet<String> = csr
        .dns_sans
        .iter()
        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    asked.extend(ips.iter().map(IpAddr::to_string));
    let common_name = common_name.map(|c| c.to_ascii_lowercase());
    if let Some(cn) = &common_name {
        if !wanted.contains(cn) {
            return Err(AcmeError::BadCsr(format!(
                "the CSR's common name {cn} is not one of the order's identifiers"
            )));
        }
        if asked.is_empty() {
            asked.insert(cn.clone());
        }
    }
    if asked != wanted {
        return Err(AcmeError::BadCsr(format!(
            "the CSR names {} but the order is for {}",
            asked.into_iter().collect::<Vec<_>>().join(", "),
            wanted.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(CheckedCsr { csr, common_name })
}

/// How long the certificate may live: the order's `notAfter` or `[acme]
/// default_validity_secs`, never past `max_validity_secs` or the policy's cap.
fn validity(acme: &AcmeServer, order: &Order, policy: &EabPolicy, now: i64) -> Duration {
    let settings = acme.settings();
    let cap = policy
        .max_validity_secs
        .map(Duration::from_secs)
        .unwrap_or(settings.max_validity)
        .min(settings.max_validity);
    let asked = order
        .not_after
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| Duration::from_secs(u64::try_from(t.unix_timestamp() - now).unwrap_or(0)))
        .filter(|d| !d.is_zero())
        .unwrap_or(settings.default_validity);
    asked.min(cap)
}

/// Issues the order's certificate for `checked`, recording it in the audit log.
pub async fn issue(
    acme: &AcmeServer,
    account: &Account,
    order: &Order,
    policy: &EabPolicy,
    checked: &CheckedCsr,
) -> Result<Certificate, AcmeError> {
    let issuer = acme.control.trust().view().load();
    let now = acme.control.clock().now();
    let mut names = Names {
        common_name: checked.common_name.clone(),
        ..Names::default()
    };
    for id in &order.identifiers {
        match id.kind.as_str() {
            "ip" => names.ips.push(
                id.value
                    .parse()
                    .map_err(|_| AcmeError::Internal(format!("stored IP {}", id.value)))?,
            ),
            _ => names.dns.push(id.value.clone()),
        }
    }
    let ttl = validity(acme, order, policy, now.unix_timestamp());
    let skew = acme.control.config().workload.clock_skew;
    let (not_before, not_after) = profile::leaf_validity(now, ttl, skew, issuer.ca.not_after());
    let params = crate::ca::named::leaf(&names, true, policy.client_auth, not_before, not_after)?;
    let prepared = issuer.ca.prepare(params, &checked.csr.spki, now)?;
    let serial = prepared.serial().to_string();
    let ca_key = issuer.ca.key().id().to_string();
    let leaf = match acme.control.audit() {
        None => prepared.sign(&issuer.ca).await?,
        Some(audit) => {
            let record = AuditEvent::Issued {
                serial: serial.clone(),
                identity: order
                    .identifiers
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                caller: format!("acme:{}", account.id),
                method: format!(
                    "acme:order/{} ({})",
                    order.id,
                    account.eab_kid.as_deref().unwrap_or("no external account")
                ),
                ca_key: ca_key.clone(),
                not_before: rfc3339(prepared.not_before()),
                not_after: rfc3339(prepared.not_after()),
                csr_key_sha256: checked.csr.public_key_fingerprint(),
                certificate_sha256: None,
            };
            // The certificate leaves only once its record is durable; the record is written
            // while the device signs, and a signature that then fails is recorded as not
            // issued.
            audit
                .record_while_signing(record, &serial, &ca_key, prepared.sign(&issuer.ca))
                .await
                .map_err(|e| match e {
                    crate::audit::NotIssued::Sign(e) => AcmeError::from(e),
                    crate::audit::NotIssued::Audit(e) => AcmeError::from(e),
                })?
        }
    };
    tracing::info!(serial = %serial, account = %account.id, order = %order.id, "acme certificate issued");
    let mut chain_pem = leaf.pem.clone();
    for pem in &issuer.intermediates_pem {
        chain_pem.push_str(pem);
    }
    Ok(Certificate {
        version: VERSION,
        serial,
        account: account.id.clone(),
        order: order.id.clone(),
        chain_pem,
        issuer_key: ca_key,
        not_before: leaf.not_before.unix_timestamp(),
        not_after: leaf.not_after.unix_timestamp(),
    })
}

fn parse(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, AcmeError> {
    crate::ca::inspect::parse_certificate(der)
        .map_err(|_| AcmeError::Malformed("the certificate is not DER X.509".into()))
}

/// A certificate's serial as audited (lowercase hex, no leading zeros).
pub fn serial_of(der: &[u8]) -> Result<String, AcmeError> {
    Ok(crate::ca::inspect::serial_hex(parse(der)?.raw_serial()))
}

/// Whether `der` is the leaf of the stored chain.
pub fn same_certificate(chain_pem: &str, der: &[u8]) -> bool {
    crate::ca::certificates_from_pem(chain_pem.as_bytes())
        .ok()
        .and_then(|c| c.into_iter().next())
        .is_some_and(|leaf| leaf == der)
}

/// The RFC 7638 thumbprint of the certificate's public key as a JWK.
pub fn key_thumbprint(der: &[u8]) -> Result<String, AcmeError> {
    let cert = parse(der)?;
    let spki = cert.public_key();
    let unsupported =
        || AcmeError::BadPublicKey("the certificate's key type is not supported".into());
    let jwk = match spki.parsed().map_err(|_| unsupported())? {
        PublicKey::RSA(rsa) => json!({
            "kty": "RSA",
            "n": b64(rsa.modulus.strip_prefix(&[0]).unwrap_or(rsa.modulus)),
            "e": b64(rsa.exponent.strip_prefix(&[0]).unwrap_or(rsa.exponent)),
        }),
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return Err(unsupported()),
            };
            json!({
                "kty": "EC",
                "crv": crv,
                "x": b64(&data[1..1 + len]),
                "y": b64(&data[1 + len..]),
            })
        }
        _ => return Err(unsupported()),
    };
    Ok(AccountKey::from_jwk(&jwk)?.thumbprint)
}
