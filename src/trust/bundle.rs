//! The trust bundle in the forms clients consume: PEM (Istio's `root-cert.pem`), a SPIFFE
//! bundle (JWKS with one `x5c` per root), and the `istio-ca-root-cert` ConfigMap.
//!
//! Pure formatting of the roots it is given: it must never read the state or decide which
//! roots are trusted.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use x509_parser::public_key::PublicKey;

use crate::ca::inspect::parse_certificate;
use crate::ca::{certificate_pem, CaError};

/// All roots as one PEM text, in bundle order.
pub fn pem(roots: &[Vec<u8>]) -> String {
    roots.iter().map(|r| certificate_pem(r)).collect()
}

/// One root as a JWK with `use: x509-svid` and its certificate in `x5c`.
fn jwk(root: &[u8]) -> Result<Value, CaError> {
    let cert = parse_certificate(root)?;
    let spki = cert.public_key();
    let parsed = spki
        .parsed()
        .map_err(|e| CaError::MalformedCertificate(e.to_string()))?;
    let mut key = match parsed {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, size) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                n => {
                    return Err(CaError::Policy(format!(
                        "an EC point of {n} bytes is not P-256 or P-384"
                    )))
                }
            };
            json!({
                "kty": "EC",
                "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&data[1..1 + size]),
                "y": URL_SAFE_NO_PAD.encode(&data[1 + size..]),
            })
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                URL_SAFE_NO_PAD.encode(&b[first..])
            };
            json!({"kty": "RSA", "n": strip(rsa.modulus), "e": strip(rsa.exponent)})
        }
        _ => {
            return Err(CaError::Policy(
                "only EC and RSA roots can be published in a SPIFFE bundle".into(),
            ))
        }
    };
    key["use"] = json!("x509-svid");
    key["x5c"] = json!([STANDARD.encode(root)]);
    Ok(key)
}

/// The SPIFFE bundle (JWKS) for the roots.
pub fn spiffe(roots: &[Vec<u8>], sequence: u64, refresh_hint_secs: u64) -> Result<Value, CaError> {
    let keys = roots
        .iter()
        .map(|r| jwk(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_secs,
    }))
}

/// The `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) as YAML for `kubectl apply -f -`.
pub fn configmap(roots: &[Vec<u8>], namespace: &str) -> String {
    let mut out =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio-ca-root-cert\n");
    out.push_str(&format!("  namespace: {namespace}\n"));
    out.push_str("  labels:\n    istio.io/config: \"true\"\ndata:\n  root-cert.pem: |\n");
    for line in pem(roots).lines() {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}
