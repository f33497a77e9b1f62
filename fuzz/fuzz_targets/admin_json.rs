//! Untrusted input: the JSON body of an admin API call, as an officer's or operator's client
//! (or anyone who reaches the listener) sends it: every request type the handlers deserialize
//! (`SignBody`, `CertBody`, `CrossBody`, `CrlBody`, `RevokeRequest`, and `Operation` as
//! proposals store it), then the parsers the handlers hand their fields to before the control
//! plane acts: CSR PEM, certificate PEM, CRL PEM, intermediate key ids.
#![no_main]

use hsm_ca::admin::{CertBody, CrlBody, CrossBody, SignBody};
use hsm_ca::control::{root_crl, Operation, RevokeRequest};
use hsm_ca::keystore::KeyId;

fn key_id(s: &str) {
    let _ = s.parse::<KeyId>();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<SignBody>(data) {
        let _ = hsm_ca::ca::parse_csr(b.csr_pem.as_bytes());
        let _ = b.root;
    }
    if let Ok(b) = serde_json::from_slice::<CertBody>(data) {
        if let Ok(certs) = hsm_ca::ca::certificates_from_pem(b.certificate_pem.as_bytes()) {
            for der in &certs {
                let _ = hsm_ca::ca::inspect::parse_certificate(der);
            }
        }
    }
    // `by` names a bundle root by fingerprint: it is only compared with stored ones.
    let _ = serde_json::from_slice::<CrossBody>(data).map(|b| b.by);
    if let Ok(b) = serde_json::from_slice::<CrlBody>(data) {
        let _ = root_crl::crl_der(&b.crl_pem);
    }
    if let Ok(req) = serde_json::from_slice::<RevokeRequest>(data) {
        for id in [&req.issuer, &req.intermediate].into_iter().flatten() {
            key_id(id);
        }
    }
    if let Ok(op) = serde_json::from_slice::<Operation>(data) {
        let _ = op.name();
        let _ = serde_json::to_vec(&op);
    }
});
