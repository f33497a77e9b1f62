//! Untrusted input: a service-account token as a workload sends it in the `authorization`
//! metadata of an issuance call, and the claims inside a token whose signature verified.
//!
//! A token goes through `Authenticator::authenticate` exactly as the gRPC service calls it
//! (cluster lookup, the verified-token cache, header, algorithm and key-id checks, signature,
//! issuer, audience, times, claims → SPIFFE ID). A forged signature stops a token before its
//! claims are read, so an input that starts with `{` is also read as a claims document and
//! mapped to an identity (`jwt::Claims`, `jwt::identity`): the part a fuzzer cannot reach
//! through a signature.
//!
//! The cluster's JWKS (`fixtures/jwt-jwks.json`) holds a deliberately small RS256 key so that
//! tokens which reach the signature check (the seeds, and mutations that keep their shape)
//! cost microseconds, not a full-size RSA verification; the seed tokens are signed by it.
#![no_main]

use std::sync::{Arc, OnceLock};

use hsm_ca::auth::jwt::{self, Claims};
use hsm_ca::auth::{
    revoked::Revocations, Authenticator, ClusterKeys, ClusterVerifier, DEFAULT_CLUSTER,
};

const TRUST_DOMAIN: &str = "cluster.local";

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let audiences = vec!["istio-ca".to_string()];
        let cluster = ClusterVerifier::new(
            DEFAULT_CLUSTER,
            "https://kubernetes.default.svc.cluster.local",
            &audiences,
            include_str!("../fixtures/jwt-jwks.json"),
        )
        .expect("the fixture JWKS is valid");
        Authenticator {
            trust_domain: TRUST_DOMAIN.into(),
            clusters: vec![Arc::new(ClusterKeys::fixed(cluster))],
            registration_authorities: Vec::new(),
            trusted_node_accounts: Vec::new(),
            verified_tokens: jwt::VerifiedTokens::default(),
            revocations: Arc::new(Revocations::new(&[], [])),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.starts_with('{') {
        if let Ok(claims) = serde_json::from_str::<Claims>(text) {
            let _ = jwt::identity(&claims, TRUST_DOMAIN);
        }
        return;
    }
    let auth = authenticator();
    if let Ok(caller) = auth.authenticate(None, Some(text), None) {
        let _ = auth.may_impersonate(&caller);
    }
});
