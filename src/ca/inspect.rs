//! Human-readable descriptions of certificates (`hsm-ca inspect`) and the checks that a
//! certificate was issued by another.

use std::fmt::Write;

use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{fingerprint, CaError};

/// Parses one DER certificate, refusing trailing bytes.
pub fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCertificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// Checks that `child` names `issuer` as its issuer and carries a valid signature by its key.
pub fn check_issued_by(child_der: &[u8], issuer_der: &[u8]) -> Result<(), CaError> {
    let child = parse_certificate(child_der)?;
    let issuer = parse_certificate(issuer_der)?;
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CaError::Chain(format!(
            "issued by {}, not by {}",
            child.issuer(),
            issuer.subject()
        )));
    }
    child
        .verify_signature(Some(issuer.public_key()))
        .map_err(|_| {
            CaError::Chain(format!(
                "signature does not verify with {}",
                issuer.subject()
            ))
        })
}

/// "in 364d 23h" / "expired 2h ago".
pub fn time_left(until: OffsetDateTime, now: OffsetDateTime) -> String {
    let d = until - now;
    let (past, secs) = if d.is_negative() {
        (true, -d.whole_seconds())
    } else {
        (false, d.whole_seconds())
    };
    let span = if secs >= 86400 {
        format!("{}d {}h", secs / 86400, (secs % 86400) / 3600)
    } else if secs >= 3600 {
        format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}m {}s", secs / 60, secs % 60)
    };
    if past {
        format!("expired {span} ago")
    } else {
        format!("{span} left")
    }
}

/// A multi-line description of one certificate.
pub fn describe(der: &[u8], now: OffsetDateTime) -> Result<String, CaError> {
    let cert = parse_certificate(der)?;
    let mut out = String::new();
    let subject = cert.subject().to_string();
    let _ = writeln!(
        out,
        "Subject:      {}",
        if subject.is_empty() {
            "(empty)"
        } else {
            &subject
        }
    );
    let _ = writeln!(out, "Issuer:       {}", cert.issuer());
    let _ = writeln!(out, "Serial:       {}", serial_hex(cert.raw_serial()));
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    let _ = writeln!(out, "Not before:   {}", fmt_time(nb));
    let _ = writeln!(
        out,
        "Not after:    {} ({})",
        fmt_time(na),
        time_left(na, now)
    );
    let _ = writeln!(out, "Public key:   {}", key_description(&cert));
    let _ = writeln!(out, "Signature:    {}", signature_name(&cert));
    for ext in cert.extensions() {
        let critical = if ext.critical { " (critical)" } else { "" };
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                let names: Vec<String> = san.general_names.iter().map(general_name).collect();
                let _ = writeln!(out, "SANs:         {}{critical}", names.join(", "));
                for n in &san.general_names {
                    if let GeneralName::URI(u) = n {
                        if u.starts_with("spiffe://") {
                            let _ = writeln!(out, "SPIFFE ID:    {u}");
                        }
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                let _ = writeln!(out, "Key usage:    {ku}{critical}");
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let mut names = Vec::new();
                if eku.server_auth {
                    names.push("serverAuth".to_string());
                }
                if eku.client_auth {
                    names.push("clientAuth".to_string());
                }
                names.extend(eku.other.iter().map(|o| o.to_id_string()));
                let _ = writeln!(out, "Ext key use:  {}{critical}", names.join(", "));
            }
            ParsedExtension::BasicConstraints(bc) => {
                let path = bc
                    .path_len_constraint
                    .map(|p| format!(", pathlen {p}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "Basic constr: CA:{}{path}{critical}", bc.ca);
            }
            ParsedExtension::NameConstraints(nc) => {
                let permitted: Vec<String> = nc
                    .permitted_subtrees
                    .iter()
                    .flatten()
                    .map(|s| general_name(&s.base))
                    .collect();
                let _ = writeln!(
                    out,
                    "Name constr:  permitted {}{critical}",
                    permitted.join(", ")
                );
            }
            ParsedExtension::SubjectKeyIdentifier(ki) => {
                let _ = writeln!(out, "Subject KID:  {}", hex::encode(ki.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                if let Some(ki) = &aki.key_identifier {
                    let _ = writeln!(
                        out,
                        "Authority KID:{}",
                        format_args!(" {}", hex::encode(ki.0))
                    );
                }
            }
            _ => {}
        }
    }
    let _ = writeln!(out, "SHA-256:      {}", fingerprint(der));
    Ok(out)
}

/// One certificate's fields for `--output json` (a stable form for scripts).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    pub public_key: String,
    pub signature: &'static str,
    pub ca: bool,
    pub path_len: Option<u32>,
    pub sans: Vec<String>,
    pub spiffe_id: Option<String>,
    /// Hex SHA-256 of the DER.
    pub sha256: String,
}

/// The fields of one certificate, as `--output json` prints them.
pub fn summary(der: &[u8]) -> Result<Summary, CaError> {
    let cert = parse_certificate(der)?;
    let (mut ca, mut path_len, mut sans) = (false, None, Vec::new());
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                ca = bc.ca;
                path_len = bc.path_len_constraint;
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                sans = san.general_names.iter().map(general_name).collect();
            }
            _ => {}
        }
    }
    let spiffe_id = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                san.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
                    _ => None,
                })
            }
            _ => None,
        });
    Ok(Summary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        not_before: fmt_time(cert.validity().not_before.to_datetime()),
        not_after: fmt_time(cert.validity().not_after.to_datetime()),
        public_key: key_description(&cert),
        signature: signature_name(&cert),
        ca,
        path_len,
        sans,
        spiffe_id,
        sha256: super::fingerprint_id(der),
    })
}

/// A serial number as lowercase hex without the sign byte DER may add (as issued and audited).
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[first..])
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn general_name(n: &GeneralName<'_>) -> String {
    match n {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => format!("IP:{}", hex::encode(ip)),
        other => format!("{other:?}"),
    }
}

fn key_description(cert: &X509Certificate<'_>) -> String {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(_)) => {
            let curve = cert
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".into(),
                Some("1.3.132.0.34") => "ECDSA P-384".into(),
                Some(o) => format!("EC {o}"),
                None => "EC".into(),
            }
        }
        _ => cert.public_key().algorithm.algorithm.to_id_string(),
    }
}

fn signature_name(cert: &X509Certificate<'_>) -> &'static str {
    match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_naturally() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            time_left(now + time::Duration::hours(50), now),
            "2d 2h left"
        );
        assert_eq!(
            time_left(now - time::Duration::minutes(90), now),
            "expired 1h 30m ago"
        );
    }
}
