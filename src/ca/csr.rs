//! Parsing and checking certificate signing requests: the place where untrusted bytes become a
//! domain type. A [`ParsedCsr`] has a verified proof of possession; everything else (which
//! names, which key types are acceptable) is policy, decided by the caller.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use super::CaError;

/// Smallest RSA key accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA key accepted (bigger keys only cost the CA CPU time).
pub const MAX_RSA_BITS: usize = 8192;

/// Largest CSR accepted, in bytes of DER (an RSA-4096 CSR with a few names is ~1.7 KB).
pub const MAX_CSR_DER: usize = 16 * 1024;

/// The public key a CSR carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsrKey {
    Rsa { bits: usize },
    EcP256,
    EcP384,
    Other(String),
}

impl std::fmt::Display for CsrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CsrKey::Rsa { bits } => write!(f, "RSA-{bits}"),
            CsrKey::EcP256 => f.write_str("ECDSA P-256"),
            CsrKey::EcP384 => f.write_str("ECDSA P-384"),
            CsrKey::Other(s) => f.write_str(s),
        }
    }
}

/// A CSR whose signature verified, with what it asks for.
#[derive(Clone, Debug)]
pub struct ParsedCsr {
    pub der: Vec<u8>,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub key: CsrKey,
    /// The subject as text (RFC 4514 style), empty for an empty subject.
    pub subject: String,
    /// True when the subject has a common name.
    pub has_common_name: bool,
    /// True when every subject attribute has an empty value (istio-agent sends one empty `O`).
    pub subject_is_blank: bool,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: usize,
    pub email_sans: Vec<String>,
    /// Requested extensions other than SAN, key usage and extended key usage (dotted OIDs).
    pub other_extensions: Vec<String>,
}

impl ParsedCsr {
    /// SHA-256 fingerprint of the public key, for officers to compare before signing.
    pub fn public_key_fingerprint(&self) -> String {
        super::fingerprint(&self.spki)
    }
}

/// Parses a CSR given as PEM or DER and verifies its self-signature.
pub fn parse_csr(input: &[u8]) -> Result<ParsedCsr, CaError> {
    let der = to_der(input)?;
    if der.len() > MAX_CSR_DER {
        return Err(CaError::MalformedCsr(format!(
            "{} bytes is larger than the {MAX_CSR_DER}-byte limit",
            der.len()
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| CaError::MalformedCsr(format!("not a PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCsr(
            "trailing bytes after the request".into(),
        ));
    }
    let info = &csr.certification_request_info;
    let key = match info.subject_pki.parsed() {
        Ok(PublicKey::RSA(rsa)) => CsrKey::Rsa {
            bits: rsa.key_size(),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = info
                .subject_pki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(o) if o == x509_parser::oid_registry::OID_EC_P256 => CsrKey::EcP256,
                Some(o) if o == x509_parser::oid_registry::OID_NIST_EC_P384 => CsrKey::EcP384,
                Some(other) => CsrKey::Other(format!("EC curve {}", other.to_id_string())),
                None => CsrKey::Other("EC key without a named curve".into()),
            }
        }
        Ok(PublicKey::Unknown(_)) | Ok(_) => {
            let oid = info.subject_pki.algorithm.algorithm.to_id_string();
            CsrKey::Other(match oid.as_str() {
                "1.3.101.112" => "Ed25519".to_string(),
                "1.3.101.113" => "Ed448".to_string(),
                _ => format!("algorithm {oid}"),
            })
        }
        Err(e) => return Err(CaError::MalformedCsr(format!("public key: {e}"))),
    };
    // Keys outside the accepted set are refused before the signature check, so the caller learns
    // the real reason (ring cannot verify, say, RSA-1024).
    match &key {
        CsrKey::Rsa { bits } if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(bits) => {
            return Err(CaError::Policy(format!(
                "RSA-{bits} keys are not accepted ({MIN_RSA_BITS} to {MAX_RSA_BITS} bits)"
            )))
        }
        CsrKey::Other(k) => {
            return Err(CaError::Policy(format!(
                "{k} keys are not accepted (RSA, ECDSA P-256, ECDSA P-384)"
            )))
        }
        _ => {}
    }
    csr.verify_signature()
        .map_err(|_| CaError::CsrSignatureInvalid)?;

    let subject = info.subject.to_string();
    let has_common_name = info.subject.iter_common_name().next().is_some();
    let subject_is_blank = info
        .subject
        .iter_attributes()
        .all(|a| a.as_str().map(str::is_empty).unwrap_or(false));

    let mut parsed = ParsedCsr {
        spki: info.subject_pki.raw.to_vec(),
        key,
        subject,
        has_common_name,
        subject_is_blank,
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        ip_sans: 0,
        email_sans: Vec::new(),
        other_extensions: Vec::new(),
        der: Vec::new(),
    };
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => parsed.uri_sans.push(u.to_string()),
                            GeneralName::DNSName(d) => parsed.dns_sans.push(d.to_string()),
                            GeneralName::IPAddress(_) => parsed.ip_sans += 1,
                            GeneralName::RFC822Name(e) => parsed.email_sans.push(e.to_string()),
                            other => parsed
                                .other_extensions
                                .push(format!("subjectAltName {other:?}")),
                        }
                    }
                }
                ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {}
                ParsedExtension::UnsupportedExtension { oid } => {
                    parsed.other_extensions.push(oid.to_id_string())
                }
                other => parsed.other_extensions.push(extension_name(other)),
            }
        }
    }
    parsed.der = der;
    Ok(parsed)
}

fn extension_name(ext: &ParsedExtension<'_>) -> String {
    let debug = format!("{ext:?}");
    debug
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("extension")
        .to_string()
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CaError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let block = pem::parse(trimmed).map_err(|e| CaError::MalformedCsr(format!("PEM: {e}")))?;
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::MalformedCsr(format!(
                "expected a CERTIFICATE REQUEST PEM block, got {:?}",
                block.tag()
            )));
        }
        Ok(block.into_contents())
    } else if trimmed.first() == Some(&0x30) {
        Ok(input.to_vec())
    } else {
        Err(CaError::MalformedCsr("neither PEM nor DER".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_with(
        alg: &'static rcgen::SignatureAlgorithm,
        sans: Vec<rcgen::SanType>,
        cn: Option<&str>,
    ) -> String {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5"))
    }

    #[test]
    fn p256_csr_with_uri_san_parses() {
        let pem = csr_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec![uri("spiffe://td/ns/a/sa/b")],
            None,
        );
        let csr = parse_csr(pem.as_bytes()).expect("parse");
        assert_eq!(csr.key, CsrKey::EcP256);
        assert_eq!(csr.uri_sans, vec!["spiffe://td/ns/a/sa/b".to_string()]);
        assert!(csr.subject_is_blank);
        assert!(!csr.has_common_name);
        assert!(csr.other_extensions.is_empty());
    }

    #[test]
    fn p384_and_names_are_reported() {
        let pem = csr_with(
            &rcgen::PKCS_ECDSA_P384_SHA384,
            vec![rcgen::SanType::DnsName(
                "a.example".try_into().expect("ia5"),
            )],
            Some("cn"),
        );
        let csr = parse_csr(pem.as_bytes()).expect("parse");
        assert_eq!(csr.key, CsrKey::EcP384);
        assert_eq!(csr.dns_sans, vec!["a.example".to_string()]);
        assert!(csr.has_common_name);
        assert!(!csr.subject_is_blank);
    }

    #[test]
    fn tampered_csr_fails_proof_of_possession() {
        let pem = csr_with(
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec![uri("spiffe://td/ns/a/sa/b")],
            None,
        );
        let mut der = pem::parse(pem).expect("pem").into_contents();
        // Flip a byte inside the URI: the structure stays valid, the signature does not.
        let at = der
            .windows(3)
            .position(|w| w == b"/sa")
            .expect("uri inside");
        der[at + 1] = b'x';
        assert!(matches!(parse_csr(&der), Err(CaError::CsrSignatureInvalid)));
    }

    #[test]
    fn garbage_and_wrong_pem_are_malformed() {
        assert!(matches!(parse_csr(b"hello"), Err(CaError::MalformedCsr(_))));
        assert!(matches!(
            parse_csr(&[0x30, 0x03, 1, 2, 3]),
            Err(CaError::MalformedCsr(_))
        ));
        let cert_pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = parse_csr(cert_pem.as_bytes()).expect_err("cert");
        assert!(err.to_string().contains("CERTIFICATE REQUEST"), "{err}");
    }

    /// A curve other than P-256 and P-384 is named in the refusal (secp256k1, from openssl).
    #[test]
    fn another_curve_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("dir");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ])
            .args(["-nodes", "-subj", "/CN=k1", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        match parse_csr(&out.stdout) {
            Err(CaError::Policy(reason)) => assert!(
                reason.starts_with("EC curve 1.3.132.0.10 keys are not accepted"),
                "{reason}"
            ),
            other => panic!("secp256k1 accepted or refused for another reason: {other:?}"),
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let mut big = vec![0x30, 0x84, 0, 1, 0, 0];
        big.resize(MAX_CSR_DER + 10, 0);
        let err = parse_csr(&big).expect_err("big");
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
