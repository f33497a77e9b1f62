//! ACME Renewal Information (RFC 9773): `GET /acme/renewal-info/<certID>` tells a client when
//! to renew a certificate it got here. The certID is the base64url of the issuer's key
//! identifier (the certificate's Authority Key Identifier), a dot, and the base64url of the
//! serial number's DER content octets. The window is the last third of the lifetime but its
//! final sixth (so a client renews well before expiry, spread over a band rather than at one
//! moment); for a revoked certificate it lies in the past, which tells the client to renew now.
//!
//! Unauthenticated, as the RFC has it: it reveals only the window of a certificate whose
//! serial and issuer the caller already holds. It must never answer for a certificate that was
//! not issued here through ACME.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use super::error::AcmeError;
use super::records::Certificate;
use super::AcmeServer;
use crate::state::AcmeKind;

/// How long a client should wait before asking again (seconds), sent as `Retry-After`.
pub const RETRY_AFTER_SECS: i64 = 6 * 3600;

/// The suggested renewal window `(start, end)` in unix seconds for a certificate valid from
/// `not_before` to `not_after`; in the past when it is revoked.
pub fn window(not_before: i64, not_after: i64, revoked: bool, now: i64) -> (i64, i64) {
    if revoked {
        return (now - 86_400, now - 1);
    }
    let life = (not_after - not_before).max(6);
    (not_after - life / 3, not_after - life / 6)
}

/// Splits a certID into the key identifier and the serial's content octets.
fn parse_cert_id(id: &str) -> Result<(Vec<u8>, Vec<u8>), AcmeError> {
    let bad = || AcmeError::Malformed(format!("{id:.80} is not a certID (keyIdentifier.serial)"));
    let (aki, serial) = id.split_once('.').ok_or_else(bad)?;
    let aki = URL_SAFE_NO_PAD.decode(aki).map_err(|_| bad())?;
    let serial = URL_SAFE_NO_PAD.decode(serial).map_err(|_| bad())?;
    if aki.is_empty() || serial.is_empty() {
        return Err(bad());
    }
    Ok((aki, serial))
}

/// The Authority Key Identifier's key identifier of a DER certificate.
fn authority_key_id(der: &[u8]) -> Option<Vec<u8>> {
    let cert = crate::ca::inspect::parse_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .map(crate::clock::rfc3339)
        .unwrap_or_default()
}

/// The certificate issued here that a certID names, checked against its Authority Key
/// Identifier (for `renewal-info` and a new order's `replaces`).
pub(super) async fn certificate(acme: &AcmeServer, id: &str) -> Result<Certificate, AcmeError> {
    Ok(issued(acme, id).await?.0)
}

/// The certificate a certID names and its stored chain (DER, leaf first).
async fn issued(acme: &AcmeServer, id: &str) -> Result<(Certificate, Vec<Vec<u8>>), AcmeError> {
    let (aki, serial) = parse_cert_id(id)?;
    let serial = crate::ca::inspect::serial_hex(&serial);
    let unknown = || AcmeError::NotFound("no certificate with this certID was issued here".into());
    let (cert, _) = acme
        .records()
        .get::<Certificate>(AcmeKind::Certificate, &serial)
        .await?
        .ok_or_else(unknown)?;
    let chain = crate::ca::certificates_from_pem(cert.chain_pem.as_bytes())
        .map_err(|e| AcmeError::Internal(format!("stored chain of {serial}: {e}")))?;
    let leaf = chain.first().ok_or_else(unknown)?;
    if authority_key_id(leaf).as_deref() != Some(aki.as_slice()) {
        return Err(unknown());
    }
    Ok((cert, chain))
}

/// `GET /acme/renewal-info/<certID>`.
pub(super) async fn renewal_info(acme: &AcmeServer, id: &str) -> Result<Response, AcmeError> {
    let (cert, chain) = issued(acme, id).await?;
    let serial = &cert.serial;
    let revoked = match chain.get(1) {
        Some(issuer) => acme
            .control
            .state()
            .revocations(&crate::ca::fingerprint_id(issuer))
            .await?
            .iter()
            .any(|r| &r.serial == serial),
        None => false,
    };
    let (start, end) = window(cert.not_before, cert.not_after, revoked, acme.now());
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}).to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_in_the_last_third_and_in_the_past_when_revoked() {
        let (start, end) = window(0, 90 * 86_400, false, 10);
        assert_eq!(start, 60 * 86_400);
        assert_eq!(end, 75 * 86_400);
        let (start, end) = window(0, 90 * 86_400, true, 1_000_000);
        assert!(start < end && end < 1_000_000);
    }

    #[test]
    fn cert_ids_need_both_parts_in_base64url() {
        assert_eq!(
            parse_cert_id("aGVsbG8.AQI").expect("valid"),
            (b"hello".to_vec(), vec![1, 2])
        );
        for bad in ["", "aGVsbG8", ".AQI", "aGVsbG8.", "a+b.AQI", "aGVsbG8.AQI="] {
            assert!(parse_cert_id(bad).is_err(), "{bad}");
        }
    }
}
