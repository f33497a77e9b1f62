//! Untrusted input: a certificate file given to `hsm-ca inspect` (PEM bundle or one DER
//! certificate), and the same bytes as the client certificate a workload presents: every
//! certificate goes through `inspect::describe` (names, validity, key, signature algorithm,
//! extensions), and through `Authenticator::authenticate` as a peer leaf (SAN URIs, SPIFFE
//! ID, trust domain, the revocation index).
#![no_main]

use std::sync::{Arc, OnceLock};

use hsm_ca::auth::{jwt::VerifiedTokens, revoked::Revocations, Authenticator};
use hsm_ca::ca::inspect;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| Authenticator {
        trust_domain: "cluster.local".into(),
        clusters: Vec::new(),
        registration_authorities: Vec::new(),
        trusted_node_accounts: Vec::new(),
        verified_tokens: VerifiedTokens::default(),
        revocations: Arc::new(Revocations::new(&[], [])),
    })
}

fn look_at(der: &[u8], now: time::OffsetDateTime) {
    let _ = inspect::describe(der, now);
    let _ = authenticator().authenticate(Some(der), None, None);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // A fixed "now", so that runs are reproducible.
    let now = time::OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("a valid time");
    match hsm_ca::ca::certificates_from_pem(data) {
        Ok(certs) => {
            for der in &certs {
                look_at(der, now);
            }
        }
        Err(_) => look_at(data, now),
    }
});
