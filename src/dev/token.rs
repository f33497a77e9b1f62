//! Service-account-style tokens signed by a software key: the development appliance's stand-in
//! for a Kubernetes token issuer, and a fixture for tests. Never used to verify anything in
//! production (the appliance only ever verifies tokens against configured JWKS files), and
//! never imported by a production module.

use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

/// Why a signing key could not be made or a token not signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{0}")]
    Key(String),
    #[error("unexpected P-256 public key encoding")]
    KeyEncoding,
    #[error("{0}")]
    Encoding(String),
}

/// A P-256 token-signing key and its public JWKS.
pub struct TokenSigner {
    pub key_pkcs8_pem: Zeroizing<String>,
    pub kid: String,
    pub jwks: String,
}

/// Makes a new ES256 signing key with key id `kid`.
pub fn new_signer(kid: &str) -> Result<TokenSigner, TokenError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let point = key.public_key_raw();
    if point.len() != 65 || point[0] != 4 {
        return Err(TokenError::KeyEncoding);
    }
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]
    });
    Ok(TokenSigner {
        key_pkcs8_pem: Zeroizing::new(key.serialize_pem()),
        kid: kid.to_string(),
        jwks: serde_json::to_string_pretty(&jwks)
            .map_err(|e| TokenError::Encoding(e.to_string()))?,
    })
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a [String],
    sub: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// What goes into a token.
pub struct TokenClaims<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub namespace: &'a str,
    pub service_account: &'a str,
    /// Seconds from now; negative for an expired token.
    pub expires_in: i64,
    /// Seconds from now before which the token is not valid.
    pub not_before_in: i64,
}

/// Signs a Kubernetes-style service-account token with the signer's PKCS#8 PEM key.
pub fn mint(
    key_pkcs8_pem: &str,
    kid: &str,
    claims: &TokenClaims<'_>,
) -> Result<String, TokenError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = Claims {
        iss: claims.issuer,
        aud: claims.audiences,
        sub: format!(
            "system:serviceaccount:{}:{}",
            claims.namespace, claims.service_account
        ),
        iat: now,
        nbf: now + claims.not_before_in,
        exp: now + claims.expires_in,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pkcs8_pem.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    jsonwebtoken::encode(&header, &body, &key).map_err(|e| TokenError::Encoding(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthError, ClusterVerifier};

    fn verifier(signer: &TokenSigner) -> ClusterVerifier {
        ClusterVerifier::new(
            "Kubernetes",
            "https://issuer",
            &["istio-ca".to_string()],
            &signer.jwks,
        )
        .expect("verifier")
    }

    fn token(signer: &TokenSigner, aud: &str, exp: i64, nbf: i64) -> String {
        mint(
            &signer.key_pkcs8_pem,
            &signer.kid,
            &TokenClaims {
                issuer: "https://issuer",
                audiences: &[aud.to_string()],
                namespace: "default",
                service_account: "web",
                expires_in: exp,
                not_before_in: nbf,
            },
        )
        .expect("mint")
    }

    #[test]
    fn a_good_token_proves_the_service_account() {
        let s = new_signer("k1").expect("signer");
        let id = verifier(&s)
            .verify(&token(&s, "istio-ca", 600, 0), "cluster.local")
            .expect("valid");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn expired_early_wrong_audience_and_foreign_tokens_are_refused() {
        let s = new_signer("k1").expect("signer");
        let v = verifier(&s);
        let check = |t: String, want: &str| {
            let err = v.verify(&t, "cluster.local").expect_err("refused");
            assert!(
                matches!(&err, AuthError::InvalidToken(m) if m.contains(want)),
                "{err}"
            );
            assert!(
                !err.to_string().contains(&t[..20]),
                "the token leaked into the error"
            );
        };
        check(token(&s, "istio-ca", -600, -1200), "expired");
        check(token(&s, "istio-ca", 1200, 600), "not valid yet");
        check(token(&s, "other", 600, 0), "audience");
        let other = new_signer("k1").expect("other signer");
        check(token(&other, "istio-ca", 600, 0), "signature");
        check("not.a.jwt".to_string() + &"x".repeat(20), "not a JWT");
    }
}
