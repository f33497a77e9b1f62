//! Kubernetes service-account tokens, verified locally against each cluster's JWKS.
//!
//! Checks: signature (RS256, RS384, ES256, ES384), issuer, audience, expiry and not-before (with
//! a small leeway for clock skew). The identity is `spiffe://<trust domain>/ns/<ns>/sa/<sa>`
//! from `sub` = `system:serviceaccount:<ns>:<sa>`, or from the `kubernetes.io` claims.
//! Errors describe what was wrong with the token, never the token itself.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::spiffe::SpiffeId;
use super::AuthError;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Tokens that verified recently, so that a workload re-sending the same token (istio-agent
/// re-reads the same file on every call) costs a hash, not a signature check. Keyed by the
/// SHA-256 of cluster id and token; an entry lives until the token's `exp` or for
/// [`CACHE_SECS`], whichever is sooner. Only successes are cached.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (SpiffeId, i64)>>,
}

/// Longest time a verified token is trusted without checking its signature again.
pub const CACHE_SECS: i64 = 300;
/// Most tokens remembered; past this, expired entries are dropped, then all.
pub const CACHE_ENTRIES: usize = 50_000;

impl VerifiedTokens {
    fn key(cluster: &str, token: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(cluster.as_bytes());
        ctx.update(&[0]);
        ctx.update(token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The identity a still-valid cached token proved.
    pub fn get(&self, cluster: &str, token: &str, now: i64) -> Option<SpiffeId> {
        let entries = self.entries.lock().ok()?;
        match entries.get(&Self::key(cluster, token)) {
            Some((id, until)) if now < *until => Some(id.clone()),
            _ => None,
        }
    }

    /// Remembers a verified token until `until` (unix seconds).
    pub fn put(&self, cluster: &str, token: &str, id: SpiffeId, until: i64, now: i64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(Self::key(cluster, token), (id, until.min(now + CACHE_SECS)));
    }
}

/// One cluster's token verifier.
pub struct ClusterVerifier {
    pub id: String,
    issuer: String,
    audiences: Vec<String>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for ClusterVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterVerifier")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The claims of a token whose signature verified, as far as they name a workload.
#[derive(Deserialize)]
pub struct Claims {
    exp: i64,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<NamedRef>,
}

#[derive(Deserialize)]
struct NamedRef {
    name: Option<String>,
}

impl ClusterVerifier {
    /// Builds a verifier from a JWKS document.
    pub fn new(id: &str, issuer: &str, audiences: &[String], jwks: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("JWKS is not valid: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key: {e}"))?;
            let alg = match jwk.common.key_algorithm {
                Some(a) => a
                    .to_string()
                    .parse::<Algorithm>()
                    .map_err(|_| format!("JWKS key algorithm {a:?} is not supported"))?,
                None => match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                        jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                        _ => Algorithm::ES256,
                    },
                    _ => return Err("JWKS has a key type other than RSA or EC".into()),
                },
            };
            if !ALGORITHMS.contains(&alg) {
                return Err(format!("JWKS key algorithm {alg:?} is not supported"));
            }
            keys.push((jwk.common.key_id.clone(), alg, key));
        }
        if keys.is_empty() {
            return Err("JWKS has no keys".into());
        }
        Ok(ClusterVerifier {
            id: id.to_string(),
            issuer: issuer.to_string(),
            audiences: audiences.to_vec(),
            keys,
        })
    }

    /// Reads the JWKS from a file.
    pub fn from_file(
        id: &str,
        issuer: &str,
        audiences: &[String],
        path: &Path,
    ) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ClusterVerifier::new(id, issuer, audiences, &text)
    }

    /// Keys in the set.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether a key of the set carries key id `kid`.
    pub fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|(k, _, _)| k.as_deref() == Some(kid))
    }

    /// Verifies `token` and returns the workload identity it proves in `trust_domain`.
    pub fn verify(&self, token: &str, trust_domain: &str) -> Result<SpiffeId, AuthError> {
        self.verify_with_expiry(token, trust_domain)
            .map(|(id, _)| id)
    }

    /// Like [`ClusterVerifier::verify`], also returning the token's `exp` (unix seconds).
    pub fn verify_with_expiry(
        &self,
        token: &str,
        trust_domain: &str,
    ) -> Result<(SpiffeId, i64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::InvalidToken("not a JWT".into()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);

        let candidates = self.keys.iter().filter(|(kid, alg, _)| {
            *alg == header.alg
                && match (&header.kid, kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = AuthError::InvalidToken(format!(
            "no key of cluster {} matches the token's key id and algorithm",
            self.id
        ));
        for (_, _, key) in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    return identity(&data.claims, trust_domain).map(|id| (id, data.claims.exp))
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let reason = match e.kind() {
                        ErrorKind::InvalidSignature => "signature does not verify".to_string(),
                        ErrorKind::ExpiredSignature => "token has expired".to_string(),
                        ErrorKind::ImmatureSignature => "token is not valid yet".to_string(),
                        ErrorKind::InvalidIssuer => format!("issuer is not {}", self.issuer),
                        ErrorKind::InvalidAudience => {
                            format!("audience is not one of {:?}", self.audiences)
                        }
                        ErrorKind::MissingRequiredClaim(c) => format!("claim {c} is missing"),
                        _ => "token is malformed".to_string(),
                    };
                    let final_kind = !matches!(e.kind(), ErrorKind::InvalidSignature);
                    last = AuthError::InvalidToken(reason);
                    if final_kind {
                        // The signature matched this key; the claims are what is wrong.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// The workload identity in `trust_domain` that verified `claims` name.
pub fn identity(claims: &Claims, trust_domain: &str) -> Result<SpiffeId, AuthError> {
    let from_sub = claims.sub.as_deref().and_then(|sub| {
        let rest = sub.strip_prefix("system:serviceaccount:")?;
        let (ns, sa) = rest.split_once(':')?;
        Some((ns.to_string(), sa.to_string()))
    });
    let from_k8s = claims.kubernetes.as_ref().and_then(|k| {
        Some((
            k.namespace.clone()?,
            k.serviceaccount.as_ref()?.name.clone()?,
        ))
    });
    let (ns, sa) = from_sub.or(from_k8s).ok_or_else(|| {
        AuthError::InvalidToken("token does not name a Kubernetes service account".into())
    })?;
    SpiffeId::workload(trust_domain, &ns, &sa)
        .map_err(|e| AuthError::InvalidToken(format!("service account: {e}")))
}
