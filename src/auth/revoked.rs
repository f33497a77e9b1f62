//! Revocation of client certificates: a certificate the CA has revoked, or one issued under an
//! intermediate it has revoked, no longer proves who the caller is, even though it still chains
//! to the trust bundle during the TLS handshake.
//!
//! The index is built from the CA state (every bundle root, every installed intermediate, every
//! revocation) and swapped whole when that state changes, so a request reads it without locks.
//! The issuer of a certificate is found by its authority key identifier, or by its issuer name
//! when it carries none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::ca::fingerprint_id;
use crate::ca::inspect::{parse_certificate, serial_hex};
use crate::state::RevocationRecord;

/// How many CA levels above a client certificate are checked.
const MAX_DEPTH: usize = 8;

/// The revocations client certificates are checked against; empty until first loaded.
#[derive(Default)]
pub struct Revocations {
    index: ArcSwap<Index>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = self.index.load();
        f.debug_struct("Revocations")
            .field("cas", &index.cas.len())
            .field("revoked", &index.revoked.len())
            .finish()
    }
}

/// One CA certificate the appliance knows.
#[derive(Clone)]
struct Ca {
    fingerprint: String,
    subject: String,
    /// Where to find this certificate's own issuer.
    issuer: IssuerRef,
    serial: String,
}

/// How a certificate names its issuer.
#[derive(Clone, PartialEq, Eq, Hash)]
enum IssuerRef {
    KeyId(Vec<u8>),
    Name(Vec<u8>),
}

#[derive(Default)]
struct Index {
    cas: Vec<Ca>,
    /// Positions in `cas`, by each key identifier and by the raw subject name.
    by_ref: HashMap<IssuerRef, Vec<usize>>,
    /// (issuer certificate fingerprint, serial hex) of every revoked certificate.
    revoked: HashSet<(String, String)>,
}

/// The key identifier a CA certificate is known by: its subject key identifier, or, without
/// one, the SHA-1 of its public key (RFC 5280, 4.2.1.2, method 1) that issuers then use.
fn key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(ki) = ext.parsed_extension() {
            return ki.0.to_vec();
        }
    }
    let spk = &cert.public_key().subject_public_key.data;
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, spk)
        .as_ref()
        .to_vec()
}

fn issuer_ref(cert: &X509Certificate<'_>) -> IssuerRef {
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityKeyIdentifier(aki) = ext.parsed_extension() {
            if let Some(ki) = &aki.key_identifier {
                return IssuerRef::KeyId(ki.0.to_vec());
            }
        }
    }
    IssuerRef::Name(cert.issuer().as_raw().to_vec())
}

impl Index {
    fn build<'a>(
        ca_certificates: &[Vec<u8>],
        revocations: impl IntoIterator<Item = &'a RevocationRecord>,
    ) -> Index {
        let mut index = Index::default();
        for der in ca_certificates {
            // Certificates come from the CA state, which checked them when they entered it.
            let Ok(cert) = parse_certificate(der) else {
                continue;
            };
            let fingerprint = fingerprint_id(der);
            if index.cas.iter().any(|c| c.fingerprint == fingerprint) {
                continue;
            }
            let at = index.cas.len();
            index.cas.push(Ca {
                fingerprint,
                subject: cert.subject().to_string(),
                issuer: issuer_ref(&cert),
                serial: serial_hex(cert.raw_serial()),
            });
            for r in [
                IssuerRef::KeyId(key_id(&cert)),
                IssuerRef::Name(cert.subject().as_raw().to_vec()),
            ] {
                index.by_ref.entry(r).or_default().push(at);
            }
        }
        index.revoked = revocations
            .into_iter()
            .map(|r| (r.issuer.clone(), r.serial.clone()))
            .collect();
        index
    }

    fn issuers(&self, r: &IssuerRef) -> impl Iterator<Item = &Ca> {
        self.by_ref
            .get(r)
            .into_iter()
            .flatten()
            .map(|&i| &self.cas[i])
    }

    /// Why `cert` may not be used, if it or a CA above it is revoked.
    fn check(&self, cert: &X509Certificate<'_>) -> Result<(), String> {
        if self.revoked.is_empty() {
            return Ok(());
        }
        let serial = serial_hex(cert.raw_serial());
        let issued_by = issuer_ref(cert);
        for ca in self.issuers(&issued_by) {
            if self
                .revoked
                .contains(&(ca.fingerprint.clone(), serial.clone()))
            {
                return Err(format!("serial {serial} was revoked by {}", ca.subject));
            }
        }
        // Walk up: every CA that may have issued it, and theirs, each checked once.
        let mut seen = HashSet::new();
        let mut level: Vec<&Ca> = self.issuers(&issued_by).collect();
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for ca in level {
                if !seen.insert(ca.fingerprint.as_str()) {
                    continue;
                }
                for parent in self.issuers(&ca.issuer) {
                    if parent.fingerprint != ca.fingerprint
                        && self
                            .revoked
                            .contains(&(parent.fingerprint.clone(), ca.serial.clone()))
                    {
                        return Err(format!(
                            "its issuing CA {} (serial {}) was revoked",
                            ca.subject, ca.serial
                        ));
                    }
                    next.push(parent);
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Ok(())
    }
}

impl Revocations {
    /// An index of `ca_certificates` (bundle roots and installed intermediates, DER) and the
    /// revocations recorded against them.
    pub fn new<'a>(
        ca_certificates: &[Vec<u8>],
        revocations: impl IntoIterator<Item = &'a RevocationRecord>,
    ) -> Self {
        Revocations {
            index: ArcSwap::from_pointee(Index::build(ca_certificates, revocations)),
        }
    }

    /// Replaces the index; requests that start afterwards see the new one.
    pub fn replace<'a>(
        &self,
        ca_certificates: &[Vec<u8>],
        revocations: impl IntoIterator<Item = &'a RevocationRecord>,
    ) {
        self.index
            .store(Arc::new(Index::build(ca_certificates, revocations)));
    }

    /// Refuses a client certificate (already verified to chain to the bundle) that was
    /// revoked, or whose issuing CA was.
    pub fn check(&self, cert: &X509Certificate<'_>) -> Result<(), String> {
        self.index.load().check(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
    };

    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
        der: Vec<u8>,
    }

    fn ca_params(name: &str, serial: u8) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.serial_number = Some(SerialNumber::from_slice(&[serial]));
        p.use_authority_key_identifier_extension = true;
        p
    }

    fn root(name: &str) -> Ca {
        let issuer =
            CertifiedIssuer::self_signed(ca_params(name, 1), KeyPair::generate().expect("key"))
                .expect("root");
        let der = issuer.der().to_vec();
        Ca { issuer, der }
    }

    fn intermediate(name: &str, serial: u8, parent: &Ca) -> Ca {
        let issuer = CertifiedIssuer::signed_by(
            ca_params(name, serial),
            KeyPair::generate().expect("key"),
            &parent.issuer,
        )
        .expect("intermediate");
        let der = issuer.der().to_vec();
        Ca { issuer, der }
    }

    fn leaf(serial: u8, parent: &Ca, with_aki: bool) -> Vec<u8> {
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&[serial]));
        p.use_authority_key_identifier_extension = with_aki;
        p.signed_by(&KeyPair::generate().expect("key"), &parent.issuer)
            .expect("leaf")
            .der()
            .to_vec()
    }

    fn revoked(issuer: &Ca, serial: u8) -> RevocationRecord {
        RevocationRecord {
            version: 1,
            issuer: fingerprint_id(&issuer.der),
            serial: serial_hex(&[serial]),
            reason: "keyCompromise".into(),
            revoked_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn check(r: &Revocations, der: &[u8]) -> Result<(), String> {
        r.check(&parse_certificate(der).expect("parse"))
    }

    #[test]
    fn revoked_leaves_and_leaves_of_revoked_intermediates_are_refused() {
        let root = root("root");
        let (a, b) = (intermediate("A", 10, &root), intermediate("B", 11, &root));
        let cas = [root.der.clone(), a.der.clone(), b.der.clone()];
        let (a5, a6, b5) = (leaf(5, &a, true), leaf(6, &a, false), leaf(5, &b, true));

        let none = Revocations::new(&cas, []);
        for l in [&a5, &a6, &b5] {
            assert_eq!(check(&none, l), Ok(()));
        }

        // Serial 5 of A: the same serial under B stays good.
        let r = Revocations::new(&cas, [&revoked(&a, 5)]);
        let e = check(&r, &a5).expect_err("revoked");
        assert!(e.contains("serial 05 was revoked by CN=A"), "{e}");
        assert_eq!(check(&r, &b5), Ok(()));
        assert_eq!(check(&r, &a6), Ok(()));

        // Intermediate A revoked by the root: all its leaves, found by key id or by name.
        r.replace(&cas, [&revoked(&root, 10)]);
        for l in [&a5, &a6] {
            let e = check(&r, l).expect_err("issuer revoked");
            assert!(e.contains("issuing CA CN=A (serial 0a) was revoked"), "{e}");
        }
        assert_eq!(check(&r, &b5), Ok(()));
    }

    #[test]
    fn certificates_of_unknown_cas_and_a_revoked_serial_elsewhere_pass() {
        let (root, other) = (root("root"), root("other"));
        let a = intermediate("A", 10, &root);
        let stranger = leaf(5, &other, true);
        let r = Revocations::new(
            &[root.der.clone(), a.der.clone()],
            [&revoked(&a, 5), &revoked(&root, 1)],
        );
        assert_eq!(check(&r, &stranger), Ok(()));
        // A root "revoking" its own serial does not loop or refuse its intermediates' leaves.
        assert_eq!(check(&r, &leaf(6, &a, true)), Ok(()));
    }
}
