//! Who is calling: the caller's SPIFFE identity from a verified client certificate or a
//! Kubernetes service-account token, and what that caller may ask for (its own identity; any
//! identity in allowed namespaces for a registration authority; an impersonated workload for a
//! trusted node agent such as ztunnel).
//!
//! Authentication order follows istiod: a client certificate first, then a token.

pub mod jwks;
pub mod jwt;
pub mod revoked;
pub mod spiffe;

use x509_parser::extensions::GeneralName;

use crate::ca::inspect::parse_certificate;
pub use jwks::{ClusterKeys, JwksEndpoint, JwksSource};
pub use jwt::ClusterVerifier;
pub use spiffe::SpiffeId;

/// How the caller proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    ClientCertificate,
    Token { cluster: String },
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::ClientCertificate => f.write_str("client certificate"),
            AuthMethod::Token { cluster } => {
                write!(f, "service-account token of cluster {cluster}")
            }
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: SpiffeId,
    pub method: AuthMethod,
}

/// Why a caller is not authenticated. Never carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: present a client certificate or a service-account token")]
    NoCredentials,
    #[error("invalid service-account token: {0}")]
    InvalidToken(String),
    #[error("no cluster {0:?} is configured")]
    UnknownCluster(String),
    #[error("client certificate: {0}")]
    ClientCertificate(String),
}

/// A registration authority: may request identities in some namespaces of the trust domain.
#[derive(Clone, Debug)]
pub struct RegistrationAuthority {
    pub identity: SpiffeId,
    /// Namespaces it may request identities in; `*` means any.
    pub namespaces: Vec<String>,
}

impl RegistrationAuthority {
    pub fn may_request(&self, id: &SpiffeId) -> bool {
        match id.namespace_and_account() {
            Some((ns, _)) => self.namespaces.iter().any(|n| n == "*" || n == ns),
            None => false,
        }
    }
}

/// Authentication and the caller-related parts of authorisation.
#[derive(Debug)]
pub struct Authenticator {
    pub trust_domain: String,
    /// Each cluster's current token keys ([`jwks`]).
    pub clusters: Vec<std::sync::Arc<ClusterKeys>>,
    pub registration_authorities: Vec<RegistrationAuthority>,
    /// `(namespace, service account)` pairs allowed to impersonate workloads (node agents).
    pub trusted_node_accounts: Vec<(String, String)>,
    /// Recently verified tokens.
    pub verified_tokens: jwt::VerifiedTokens,
    /// Revoked certificates and CAs: their client certificates no longer authenticate.
    pub revocations: std::sync::Arc<revoked::Revocations>,
}

/// The default `clusterid` when a caller sends none (what istio-agent assumes).
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

impl Authenticator {
    /// Authenticates from a verified peer certificate chain (leaf first) or a bearer token.
    pub fn authenticate(
        &self,
        peer_leaf: Option<&[u8]>,
        bearer: Option<&str>,
        cluster_id: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let mut cert_problem = None;
        if let Some(leaf) = peer_leaf {
            match self.identity_from_certificate(leaf) {
                Ok(id) => {
                    return Ok(Caller {
                        id,
                        method: AuthMethod::ClientCertificate,
                    })
                }
                Err(e) => cert_problem = Some(e),
            }
        }
        if let Some(token) = bearer {
            let cluster = cluster_id.unwrap_or(DEFAULT_CLUSTER);
            let verifier = self
                .clusters
                .iter()
                .find(|c| c.id == cluster)
                .ok_or_else(|| AuthError::UnknownCluster(cluster.to_string()))?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let id = match self.verified_tokens.get(cluster, token, now) {
                Some(id) => id,
                None => {
                    let (id, exp) = verifier.verify_with_expiry(token, &self.trust_domain)?;
                    self.verified_tokens
                        .put(cluster, token, id.clone(), exp, now);
                    id
                }
            };
            return Ok(Caller {
                id,
                method: AuthMethod::Token {
                    cluster: cluster.to_string(),
                },
            });
        }
        Err(cert_problem.unwrap_or(AuthError::NoCredentials))
    }

    /// The one SPIFFE ID of a client certificate that already chained to the trust bundle.
    fn identity_from_certificate(&self, leaf: &[u8]) -> Result<SpiffeId, AuthError> {
        let cert =
            parse_certificate(leaf).map_err(|e| AuthError::ClientCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .ok_or_else(|| AuthError::ClientCertificate("no subject alternative name".into()))?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return Err(AuthError::ClientCertificate(format!(
                "expected exactly one URI SAN, found {}",
                uris.len()
            )));
        };
        let id = SpiffeId::parse(uri).map_err(|e| AuthError::ClientCertificate(e.to_string()))?;
        if id.trust_domain() != self.trust_domain || !id.has_path() {
            return Err(AuthError::ClientCertificate(format!(
                "{id} is not a workload of trust domain {}",
                self.trust_domain
            )));
        }
        self.revocations
            .check(&cert)
            .map_err(AuthError::ClientCertificate)?;
        Ok(id)
    }

    /// The registration authority entry for `caller`, if it is one.
    pub fn registration_authority(&self, caller: &Caller) -> Option<&RegistrationAuthority> {
        self.registration_authorities
            .iter()
            .find(|ra| ra.identity == caller.id)
    }

    /// True when `caller` is a node agent trusted to impersonate workloads.
    pub fn may_impersonate(&self, caller: &Caller) -> bool {
        caller.id.trust_domain() == self.trust_domain
            && caller.id.namespace_and_account().is_some_and(|(ns, sa)| {
                self.trusted_node_accounts
                    .iter()
                    .any(|(tns, tsa)| tns == ns && tsa == sa)
            })
    }
}
