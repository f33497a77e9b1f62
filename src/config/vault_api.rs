//! The Vault front door's settings (`[vault_api]`, validated in `vault`): its listener, token
//! lifetimes, the auth roles that log in and the policies (PKI roles and intermediate grants)
//! their tokens carry. [`crate::vault`] reads them; nothing changes them after start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::SecretSource;
use crate::tls::ConnectionLimits;

/// The `[vault_api]` section, validated.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The PKI mount (`/v1/<pki_mount>/sign/<role>`), e.g. `pki`.
    pub pki_mount: String,
    /// The mounts of the auth methods (`/v1/auth/<mount>/login`).
    pub cert_mount: String,
    pub kubernetes_mount: String,
    pub approle_mount: String,
    /// CAs (besides the trust bundle) whose client certificates the `cert` login accepts.
    pub client_ca_files: Vec<PathBuf>,
    /// Lifetime of a token at login and after each renewal.
    pub token_ttl: Duration,
    /// No renewal moves a token's expiry further than this after its login.
    pub token_max_ttl: Duration,
    pub connections: ConnectionLimits,
    pub cert_roles: Vec<CertRole>,
    pub kubernetes_roles: Vec<KubernetesRole>,
    pub approles: Vec<AppRole>,
    /// `sign/<role>` roles.
    pub roles: Vec<PkiRole>,
    /// Who may have an intermediate signed through `root/sign-intermediate`.
    pub intermediates: Vec<IntermediateGrant>,
}

/// A `cert` login role: client certificates presenting one of `identities` (a URI SAN such
/// as a SPIFFE ID, or `CN=<name>`).
#[derive(Debug, Clone)]
pub struct CertRole {
    pub name: String,
    pub identities: Vec<String>,
    pub policies: Vec<String>,
}

/// A `kubernetes` login role: service-account tokens of `cluster` (verified against its JWKS)
/// whose namespace and service account are bound here (`*` matches any).
#[derive(Debug, Clone)]
pub struct KubernetesRole {
    pub name: String,
    pub cluster: String,
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub policies: Vec<String>,
}

impl KubernetesRole {
    /// Whether the service account `ns`/`sa` is bound to this role.
    pub fn binds(&self, ns: &str, sa: &str) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any(&self.namespaces, ns) && any(&self.service_accounts, sa)
    }
}

/// An `approle` login role: its `role_id` and where its secret id is read from.
#[derive(Debug, Clone)]
pub struct AppRole {
    pub name: String,
    pub role_id: String,
    pub secret_id: SecretSource,
    pub policies: Vec<String>,
}

/// Key types a PKI role accepts in CSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Any,
    Ec,
    Rsa,
}

/// A `sign/<role>` role: the names and lifetimes its certificates may have.
#[derive(Debug, Clone)]
pub struct PkiRole {
    pub name: String,
    /// DNS names or `*`-globs (with `allow_glob_domains`) names must fall under.
    pub allowed_domains: Vec<String>,
    /// Names below an allowed domain (`a.example.com` under `example.com`).
    pub allow_subdomains: bool,
    /// The allowed domain itself.
    pub allow_bare_domains: bool,
    /// `allowed_domains` entries are globs (`*.mesh.example.com`).
    pub allow_glob_domains: bool,
    /// URI SAN globs (`spiffe://cluster.local/ns/*/sa/*`); `*` stops at `/`.
    pub allowed_uri_sans: Vec<String>,
    pub allow_ip_sans: bool,
    pub key_type: KeyType,
    /// Smallest RSA key accepted.
    pub min_rsa_bits: usize,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub server_flag: bool,
    pub client_flag: bool,
}

/// Permission to have an intermediate CA signed by the root in the device, for one SPIFFE
/// trust domain: pathlen 0, URI SAN `spiffe://<trust_domain>`, a name constraint to it.
#[derive(Debug, Clone)]
pub struct IntermediateGrant {
    pub name: String,
    pub trust_domain: String,
    pub default_ttl: Duration,
    /// Longer requests are capped to this.
    pub max_ttl: Duration,
}

impl Default for VaultSettings {
    fn default() -> Self {
        VaultSettings {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8200)),
            pki_mount: "pki".into(),
            cert_mount: "cert".into(),
            kubernetes_mount: "kubernetes".into(),
            approle_mount: "approle".into(),
            client_ca_files: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(86400),
            connections: ConnectionLimits {
                max_connections: 256,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(120),
            },
            cert_roles: Vec::new(),
            kubernetes_roles: Vec::new(),
            approles: Vec::new(),
            roles: Vec::new(),
            intermediates: Vec::new(),
        }
    }
}
