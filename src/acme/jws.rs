//! JSON Web Signatures as ACME uses them (RFC 8555 §6.2, RFC 7515 flattened JSON): the
//! protected header (`alg`, `nonce`, `url`, and `jwk` or `kid`), account keys as JWKs (RSA ≥
//! 2048 bits with RS256, P-256 with ES256, P-384 with ES384, Ed25519 with EdDSA), their RFC
//! 7638 thumbprints, and External Account Binding MACs (HS256). Verification is `ring`'s.
//!
//! It must never accept `alg: none`, a MAC where a signature is due, or a key whose type does
//! not match its `alg`; and never put a MAC key into an error.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::AcmeError;

/// A JWS in flattened JSON serialization, as posted.
#[derive(Debug, Deserialize)]
pub struct Flattened {
    pub protected: String,
    #[serde(default)]
    pub payload: String,
    pub signature: String,
}

/// The protected header's fields ACME reads.
#[derive(Debug, Clone)]
pub struct Protected {
    pub alg: String,
    pub nonce: Option<String>,
    pub url: Option<String>,
    pub jwk: Option<Value>,
    pub kid: Option<String>,
}

/// A JWS whose header is parsed; not yet verified.
#[derive(Debug)]
pub struct Parsed {
    pub header: Protected,
    /// The payload bytes (empty for POST-as-GET).
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

/// Base64url without padding (padding tolerated on input).
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn unb64(text: &str, what: &str) -> Result<Vec<u8>, AcmeError> {
    let trimmed = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| AcmeError::Malformed(format!("{what} is not base64url")))
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, AcmeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AcmeError::Malformed(format!(
            "the JWS header's {key} must be a string"
        ))),
    }
}

/// Parses a flattened JWS from a request body.
pub fn parse(body: &[u8]) -> Result<Parsed, AcmeError> {
    let jws: Flattened = serde_json::from_slice(body)
        .map_err(|e| AcmeError::Malformed(format!("the body is not a flattened JWS: {e}")))?;
    parse_flattened(&jws)
}

/// Parses an already-decoded flattened JWS (the outer request or an inner one).
pub fn parse_flattened(jws: &Flattened) -> Result<Parsed, AcmeError> {
    let header_bytes = unb64(&jws.protected, "protected")?;
    let header: Value = serde_json::from_slice(&header_bytes)
        .map_err(|_| AcmeError::Malformed("the protected header is not JSON".into()))?;
    let Value::Object(map) = header else {
        return Err(AcmeError::Malformed(
            "the protected header is not an object".into(),
        ));
    };
    let alg = string(&map, "alg")?
        .ok_or_else(|| AcmeError::Malformed("the JWS header has no alg".into()))?;
    let header = Protected {
        alg,
        nonce: string(&map, "nonce")?,
        url: string(&map, "url")?,
        jwk: map.get("jwk").filter(|v| !v.is_null()).cloned(),
        kid: string(&map, "kid")?,
    };
    let mut signing_input = jws.protected.as_bytes().to_vec();
    signing_input.push(b'.');
    signing_input.extend_from_slice(jws.payload.as_bytes());
    Ok(Parsed {
        header,
        payload: unb64(&jws.payload, "payload")?,
        signing_input,
        signature: unb64(&jws.signature, "signature")?,
    })
}

/// An account public key, checked and ready to verify.
#[derive(Debug, Clone)]
pub struct AccountKey {
    /// The JWK with only its public members (what is stored).
    pub jwk: Value,
    pub thumbprint: String,
    kind: KeyKind,
}

#[derive(Debug, Clone)]
enum KeyKind {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

fn member<'a>(jwk: &'a Map<String, Value>, key: &str) -> Result<&'a str, AcmeError> {
    jwk.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| AcmeError::BadPublicKey(format!("the JWK has no {key}")))
}

fn coordinate(jwk: &Map<String, Value>, key: &str, len: usize) -> Result<Vec<u8>, AcmeError> {
    let v = unb64(member(jwk, key)?, key)?;
    if v.len() != len {
        return Err(AcmeError::BadPublicKey(format!(
            "the JWK's {key} is {} bytes, not {len}",
            v.len()
        )));
    }
    Ok(v)
}

impl AccountKey {
    /// Reads a JWK: RSA (at least 2048 bits), EC P-256 or P-384, or OKP Ed25519.
    pub fn from_jwk(jwk: &Value) -> Result<Self, AcmeError> {
        let Value::Object(map) = jwk else {
            return Err(AcmeError::BadPublicKey("the JWK is not an object".into()));
        };
        let kty = member(map, "kty")?;
        let (public, kind) = match kty {
            "RSA" => {
                let (n_text, e_text) = (member(map, "n")?, member(map, "e")?);
                let n = unb64(n_text, "n")?;
                let e = unb64(e_text, "e")?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(AcmeError::BadPublicKey(format!(
                        "RSA keys need at least 2048 bits; this one has about {bits}"
                    )));
                }
                (
                    json!({"e": e_text, "kty": "RSA", "n": n_text}),
                    KeyKind::Rsa { n, e },
                )
            }
            "EC" => {
                let crv = member(map, "crv")?;
                let len = match crv {
                    "P-256" => 32,
                    "P-384" => 48,
                    other => {
                        return Err(AcmeError::BadPublicKey(format!(
                            "unsupported curve {other} (P-256, P-384)"
                        )))
                    }
                };
                let (x, y) = (coordinate(map, "x", len)?, coordinate(map, "y", len)?);
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let public = json!({"crv": crv, "kty": "EC", "x": member(map, "x")?, "y": member(map, "y")?});
                let kind = if len == 32 {
                    KeyKind::P256(point)
                } else {
                    KeyKind::P384(point)
                };
                (public, kind)
            }
            "OKP" => {
                let crv = member(map, "crv")?;
                if crv != "Ed25519" {
                    return Err(AcmeError::BadPublicKey(format!(
                        "unsupported OKP curve {crv} (Ed25519)"
                    )));
                }
                let x = coordinate(map, "x", 32)?;
                (
                    json!({"crv": crv, "kty": "OKP", "x": member(map, "x")?}),
                    KeyKind::Ed25519(x),
                )
            }
            other => {
                return Err(AcmeError::BadPublicKey(format!(
                    "unsupported key type {other} (RSA, EC, OKP)"
                )))
            }
        };
        // RFC 7638: the required members in lexicographic order, no whitespace; serde_json's
        // map keeps keys sorted, which is that order.
        let canonical =
            serde_json::to_vec(&public).map_err(|e| AcmeError::Internal(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &canonical);
        Ok(AccountKey {
            jwk: public,
            thumbprint: b64(digest.as_ref()),
            kind,
        })
    }

    /// The JWS `alg` this key signs with.
    fn alg(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa { .. } => "RS256",
            KeyKind::P256(_) => "ES256",
            KeyKind::P384(_) => "ES384",
            KeyKind::Ed25519(_) => "EdDSA",
        }
    }

    /// Verifies `jws` was signed by this key with the algorithm that belongs to it.
    pub fn verify(&self, jws: &Parsed) -> Result<(), AcmeError> {
        let alg = jws.header.alg.as_str();
        if !matches!(alg, "RS256" | "ES256" | "ES384" | "EdDSA") {
            return Err(AcmeError::BadSignatureAlgorithm(alg.to_string()));
        }
        if alg != self.alg() {
            return Err(AcmeError::Malformed(format!(
                "alg {alg} does not match the account key (expected {})",
                self.alg()
            )));
        }
        let (msg, sig) = (jws.signing_input.as_slice(), jws.signature.as_slice());
        let ok = match &self.kind {
            KeyKind::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            KeyKind::P256(p) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyKind::P384(p) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            KeyKind::Ed25519(p) => signature::UnparsedPublicKey::new(&signature::ED25519, p)
                .verify(msg, sig)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(AcmeError::Malformed(
                "the JWS signature does not verify".into(),
            ))
        }
    }

    /// The key authorization of a challenge token (RFC 8555 §8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint)
    }
}

/// Verifies an External Account Binding (RFC 8555 §7.3.4): an HS256 JWS over the account
/// key, whose `kid` is returned once the MAC (with `mac_key`, looked up by that kid) checks.
pub fn verify_eab(
    eab: &Parsed,
    account_jwk: &Value,
    url: &str,
    mac_key: impl FnOnce(&str) -> Option<zeroize::Zeroizing<Vec<u8>>>,
) -> Result<String, AcmeError> {
    let unauthorized = |m: &str| AcmeError::Unauthorized(format!("external account binding: {m}"));
    if eab.header.alg != "HS256" {
        return Err(AcmeError::BadSignatureAlgorithm(format!(
            "external account binding alg {} (HS256 only)",
            eab.header.alg
        )));
    }
    if eab.header.nonce.is_some() {
        return Err(AcmeError::Malformed(
            "the external account binding must not carry a nonce".into(),
        ));
    }
    if eab.header.url.as_deref() != Some(url) {
        return Err(AcmeError::Malformed(
            "the external account binding's url is not the newAccount URL".into(),
        ));
    }
    let kid =
        eab.header.kid.clone().ok_or_else(|| {
            AcmeError::Malformed("the external account binding has no kid".into())
        })?;
    let inner: Value = serde_json::from_slice(&eab.payload).map_err(|_| {
        AcmeError::Malformed("the external account binding payload is not a JWK".into())
    })?;
    let inner = AccountKey::from_jwk(&inner)?;
    let outer = AccountKey::from_jwk(account_jwk)?;
    if inner.thumbprint != outer.thumbprint {
        return Err(unauthorized("it binds another key than the account's"));
    }
    let key = mac_key(&kid).ok_or_else(|| unauthorized("unknown or revoked key id"))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    ring::hmac::verify(&key, &eab.signing_input, &eab.signature)
        .map_err(|_| unauthorized("the MAC does not verify"))?;
    Ok(kid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = AccountKey::from_jwk(&jwk).expect("key");
        assert_eq!(
            key.thumbprint,
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn small_rsa_and_unknown_curves_are_bad_public_keys() {
        let small = json!({"kty": "RSA", "n": b64(&[0xc3; 128]), "e": "AQAB"});
        assert!(matches!(
            AccountKey::from_jwk(&small),
            Err(AcmeError::BadPublicKey(_))
        ));
        let curve = json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"});
        assert!(matches!(
            AccountKey::from_jwk(&curve),
            Err(AcmeError::BadPublicKey(_))
        ));
    }
}
