//! Untrusted input: a root CRL posted to the admin API (`POST /v1/crls`, signed offline by a
//! root ceremony) before it changes any state: PEM, DER, the checks that it is a complete CRL
//! (no critical extension, not a delta CRL, no removeFromCRL entry), which bundle root signed
//! it, its number and entries, and whether it lists the active intermediate.
//!
//! Two forms of input:
//! - text (first byte not 0): the PEM as posted, through `root_crl::crl_der` and
//!   `RootCrl::parse` against a bundle of one root;
//! - `0x00` then a DER `TBSCertList`: the target signs it with the bundle root's key (Ed25519,
//!   so that signing costs microseconds) and posts it as PEM, so that mutations get past the
//!   signature check, which a fuzzer cannot forge, to the number, entries and reasons.
#![no_main]

use std::sync::OnceLock;

use hsm_ca::control::root_crl::{crl_der, RootCrl};
use hsm_ca::state::RootRecord;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, SigningKey,
};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::TbsCertList;

struct Bundle {
    key: KeyPair,
    roots: Vec<RootRecord>,
    /// The active intermediate, issued by the root (serial 10:01).
    active: Vec<u8>,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hsm-ca fuzz");
    dn.push(DnType::CommonName, cn);
    dn
}

fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name("hsm-ca fuzz root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).expect("root certificate");
        let issuer = Issuer::from_params(&params, &key);
        let mut inter = CertificateParams::default();
        inter.distinguished_name = name("hsm-ca fuzz intermediate");
        inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter.serial_number = Some(SerialNumber::from_slice(&[0x10, 0x01]));
        let active = inter
            .signed_by(&key, &issuer)
            .expect("intermediate certificate")
            .der()
            .to_vec();
        let roots = vec![RootRecord {
            version: 1,
            fingerprint: hsm_ca::ca::fingerprint_id(root.der()),
            certificate_pem: root.pem(),
            subject: "CN=hsm-ca fuzz root".into(),
            not_after: "2100-01-01T00:00:00Z".into(),
            added_at: "2025-01-01T00:00:00Z".into(),
        }];
        Bundle { key, roots, active }
    })
}

/// DER tag-length-value.
fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

/// `tbs` signed by the root, as the PEM a ceremony writes.
fn signed_pem(bundle: &Bundle, tbs: &[u8]) -> Option<String> {
    let signature = bundle.key.sign(tbs).ok()?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    let mut body = tbs.to_vec();
    body.extend_from_slice(&[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]); // id-Ed25519
    body.extend_from_slice(&tlv(0x03, &bits));
    let der = tlv(0x30, &body);
    Some(format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64(&der)
    ))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn import(bundle: &Bundle, pem: &str) {
    let Ok(der) = crl_der(pem) else {
        return;
    };
    if let Ok(crl) = RootCrl::parse(&der, &bundle.roots) {
        let _ = crl.lists(&bundle.active);
        let _ = crl.entries.iter().map(|e| e.reason).count();
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let bundle = bundle();
    match data.split_first() {
        Some((0, tbs)) => {
            // Only what parses as a TBSCertList is worth a signature.
            if let Ok((rest, _)) = TbsCertList::from_der(tbs) {
                let tbs = &tbs[..tbs.len() - rest.len()];
                if let Some(pem) = signed_pem(bundle, tbs) {
                    import(bundle, &pem);
                }
            }
        }
        Some(_) => {
            if let Ok(text) = std::str::from_utf8(data) {
                import(bundle, text);
            }
        }
        None => {}
    }
});
