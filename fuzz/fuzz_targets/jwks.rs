//! Untrusted input: a cluster's JWKS document (`[[clusters]] jwks_file`), as fetched from a
//! Kubernetes API server's `/openid/v1/jwks` and copied to the appliance.
//!
//! The document goes through `ClusterVerifier::new` (JSON, key types, curves, algorithms,
//! RSA moduli and exponents, EC points), and a verifier that accepts it then checks the seed
//! tokens (an RS256 and an ES256 token without a key id, so every key of the right algorithm
//! is tried): odd keys must fail as errors, never as panics.
#![no_main]

use hsm_ca::auth::ClusterVerifier;

/// Tokens without a `kid`, signed by the keys of the seed JWKS documents.
const TOKENS: [&str; 2] = [
    include_str!("../fixtures/jwks-token-rs256.txt"),
    include_str!("../fixtures/jwks-token-es256.txt"),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let audiences = ["istio-ca".to_string()];
    let Ok(verifier) = ClusterVerifier::new(
        "Kubernetes",
        "https://kubernetes.default.svc.cluster.local",
        &audiences,
        text,
    ) else {
        return;
    };
    for token in TOKENS {
        let _ = verifier.verify_with_expiry(token.trim(), "cluster.local");
    }
});
