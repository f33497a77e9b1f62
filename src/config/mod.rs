//! The one TOML file that configures hsm-ca, read and validated once at start.
//!
//! Unknown keys are refused (a typo must not silently fall back to a default), and every
//! validation error names the key and the problem. Secrets are never inline: the config names a
//! file or environment variable. Relative paths are resolved against the config file's folder.
//!
//! `config` sits above the domain modules: it reads the file ([`raw`]), validates it section by
//! section (`keystore`, `ca`, `server`, `admin`) and assembles the domain modules' own settings
//! types. No domain module imports `config`'s validation; they receive the values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;

use raw::RawConfig;

use crate::keystore::KeyAlgorithm;
use crate::secret::SecretSource;

pub mod acme;
mod admin;
mod admin_client;
mod ca;
mod keystore;
mod observe;
mod server;
mod store;
mod vault;
pub mod vault_api;

pub use admin_client::{load_admin_client, AdminClientConfig};
pub use observe::{peek_log, LogConfig, LogOutput, MetricsConfig};

use crate::keystore::KeystoreConfig;

/// A configuration error: which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this config was read from.
    pub path: PathBuf,
    pub trust_domain: String,
    pub data_dir: PathBuf,
    pub keystore: KeystoreConfig,
    pub root: RootConfig,
    pub intermediate: IntermediateConfig,
    pub workload: WorkloadConfig,
    pub server: ServerConfig,
    pub clusters: Vec<ClusterConfig>,
    pub authorization: AuthorizationConfig,
    /// `[metrics]`: the optional plaintext `/metrics` listener.
    pub metrics: MetricsConfig,
    /// `[log]`: the log filter and format when no flag or variable gives them.
    pub log: LogConfig,
    /// This appliance's name among those sharing a database (`node_id`; default: the host
    /// name): its audit records are shipped under it.
    pub node_id: String,
    /// `member_keys`: the other appliances' row-signing public keys (DER SubjectPublicKeyInfo),
    /// read from their PEM files; rows they sign on the shared database are believed.
    pub member_keys: Vec<Vec<u8>>,
    /// `own_intermediate` (shared database only): the intermediates this appliance installs
    /// are its own (their keys are in its device alone), it issues with its own active one and
    /// rotates it itself; otherwise the nodes share theirs (one network HSM).
    pub own_intermediate: bool,
    /// Record every issuance durably before answering (default). Off only for measurements.
    pub audit_enabled: bool,
    /// `[audit] require_shipped`: answer only once the record is also committed in the
    /// shared database (postgres backend), waiting at most `ship_timeout`.
    pub audit_shipping: AuditShipping,
    pub audit: crate::audit::AuditOptions,
    /// Bound of the CA state store's page cache, in bytes (`[store] cache_mb`, sled).
    pub store_cache_bytes: u64,
    /// Where the CA state is kept (`[store] backend`).
    pub store_backend: crate::state::StoreBackend,
    pub admin: AdminConfig,
    pub rotation: RotationConfig,
    /// The Vault-compatible front door (`[vault_api]`).
    pub vault_api: vault_api::VaultSettings,
    /// `[admin_client]`: how `hsm-ca admin` reaches an admin API (never read by `serve`).
    pub admin_client: AdminClientConfig,
    /// The ACME front door (`[acme]`).
    pub acme: acme::AcmeSettings,
}

/// Whether records must reach the shared database before an answer, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditShipping {
    pub require_shipped: bool,
    pub timeout: Duration,
}

/// Automatic intermediate rotation (needs the root key in the online device).
#[derive(Debug, Clone)]
pub struct RotationConfig {
    pub auto: bool,
    /// Fraction of the active intermediate's life after which its successor is prepared.
    pub prepare_at: f64,
    /// Fraction after which the successor is activated.
    pub activate_at: f64,
    pub check_interval: Duration,
}

/// A role on the admin API. Each route needs one; read-only routes accept any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads state, audit records, metrics.
    Auditor,
    /// Runs the intermediate lifecycle.
    Operator,
    /// Changes roots, revokes, approves sensitive operations.
    Officer,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auditor" => Ok(Role::Auditor),
            "operator" => Ok(Role::Operator),
            "officer" => Ok(Role::Officer),
            other => Err(format!(
                "unknown role {other:?} (expected auditor, operator or officer)"
            )),
        }
    }
}

/// Operations that can be made to need officer approvals.
pub const SENSITIVE_OPERATIONS: [&str; 4] =
    ["root_add", "root_remove", "revoke", "activate_new_root"];

/// The admin API.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// Client identity (a URI SAN such as a SPIFFE ID, or `CN=name`) → roles.
    pub users: BTreeMap<String, Vec<Role>>,
    /// CAs that issue admin client certificates. Empty: the trust bundle (then anyone who can
    /// obtain a workload certificate for a listed identity is that admin).
    pub client_ca_files: Vec<PathBuf>,
    /// How long a new root must have been in the served bundle before an intermediate under
    /// it may be activated.
    pub propagation_window: Duration,
    /// `spiffe_refresh_hint` of the SPIFFE bundle.
    pub bundle_refresh_hint: Duration,
    /// `/readyz` and the metrics warn when less than this fraction of the active
    /// intermediate's life is left.
    pub expiry_warning_fraction: f64,
    /// Distinct officer approvals a sensitive operation needs.
    pub approval_threshold: u32,
    pub proposal_ttl: Duration,
    pub sensitive: Vec<String>,
    /// Development only: admin identities may lie in the workload trust domain without a
    /// separate admin CA (`client_ca_files`); `serve` refuses that combination otherwise.
    pub development_shared_ca: bool,
    /// Connection caps and timeouts of the admin listener.
    pub connections: crate::tls::ConnectionLimits,
}

/// The issuance service's listener and serving certificate.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub client_auth: crate::tls::ClientAuth,
    pub serving_cert_ttl: Duration,
    /// Connection caps and timeouts of the issuance listener.
    pub connections: crate::tls::ConnectionLimits,
}

/// A Kubernetes cluster whose service-account tokens are accepted.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub id: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Where its token-signing keys come from (`jwks_file`, `jwks_url` or `discovery`).
    pub keys: crate::auth::JwksSource,
    /// How often the keys are re-read or fetched again.
    pub refresh: Duration,
}

/// Who may ask for identities other than their own.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationConfig {
    /// `(namespace, service account)` of node agents allowed to impersonate (ztunnel).
    pub trusted_node_accounts: Vec<(String, String)>,
    pub registration_authorities: Vec<crate::auth::RegistrationAuthority>,
}

#[derive(Debug, Clone)]
pub struct RootConfig {
    /// The trust bundle: every root certificate currently trusted. The first one signs.
    pub certificates: Vec<PathBuf>,
    pub common_name: String,
    pub organization: Option<String>,
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
}

#[derive(Debug, Clone)]
pub struct IntermediateConfig {
    pub common_name: String,
    pub organization: Option<String>,
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
    /// Add a critical URI name constraint limiting leaves to the trust domain.
    pub name_constraint: bool,
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clock_skew: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// What every section's validation needs: the file's path (named in errors) and its folder
/// (relative paths are resolved against it).
struct Ctx<'a> {
    path: &'a Path,
    base: PathBuf,
}

impl<'a> Ctx<'a> {
    /// The context of the config file at `path`.
    fn for_file(path: &'a Path) -> Self {
        Ctx {
            path,
            base: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        }
    }

    fn invalid(&self, key: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key,
            problem: problem.into(),
        }
    }

    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() {
            self.base.join(p)
        } else {
            p
        }
    }

    /// A secret named by `<what>_file` or `<what>_env` (never both, never an empty name).
    fn secret(
        &self,
        file: Option<PathBuf>,
        env: Option<String>,
        key: &'static str,
        what: &str,
    ) -> Result<Option<SecretSource>, ConfigError> {
        match (file, env) {
            (Some(f), None) => Ok(Some(SecretSource::File(f).resolved(&self.base))),
            (None, Some(e)) if !e.is_empty() => Ok(Some(SecretSource::Env(e))),
            (Some(_), Some(_)) => {
                Err(self.invalid(key, format!("give {what}_file or {what}_env, not both")))
            }
            (None, Some(_)) => Err(self.invalid(key, format!("{what}_env is empty"))),
            (None, None) => Ok(None),
        }
    }
}

/// A listener's `max_connections`, `handshake_timeout_secs` and `idle_timeout_secs` (section
/// `server` or `admin`): each at least 1.
fn connection_limits(
    ctx: &Ctx,
    section: &str,
    max_connections: usize,
    handshake_secs: u64,
    idle_secs: u64,
) -> Result<crate::tls::ConnectionLimits, ConfigError> {
    let admin = section == "admin";
    if max_connections == 0 {
        let key = if admin {
            "admin.max_connections"
        } else {
            "server.max_connections"
        };
        return Err(ctx.invalid(key, "must be at least 1"));
    }
    if handshake_secs == 0 {
        let key = if admin {
            "admin.handshake_timeout_secs"
        } else {
            "server.handshake_timeout_secs"
        };
        return Err(ctx.invalid(key, "must be at least 1"));
    }
    if idle_secs == 0 {
        let key = if admin {
            "admin.idle_timeout_secs"
        } else {
            "server.idle_timeout_secs"
        };
        return Err(ctx.invalid(key, "must be at least 1"));
    }
    Ok(crate::tls::ConnectionLimits {
        max_connections,
        handshake_timeout: Duration::from_secs(handshake_secs),
        idle_timeout: Duration::from_secs(idle_secs),
    })
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`, section by section in file order.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e
                .span()
                .and_then(|s| observe::key_at(text, s.start))
                .map(|key| format!("{key}: "))
                .unwrap_or_default()
                + e.message()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let ctx = Ctx::for_file(path);
        crate::auth::spiffe::validate_trust_domain(&raw.trust_domain)
            .map_err(|p| ctx.invalid("trust_domain", p))?;
        let keystore = keystore::keystore(&ctx, raw.keystore)?;
        let (root, intermediate) = ca::root_and_intermediate(&ctx, raw.root, raw.intermediate)?;
        let workload = ca::workload(&ctx, raw.workload)?;
        let server = server::server(&ctx, raw.server)?;
        let clusters = server::clusters(&ctx, raw.clusters)?;
        let authorization = server::authorization(&ctx, raw.authorization)?;
        let metrics = observe::metrics(&ctx, raw.metrics)?;
        let log = observe::log(&ctx, raw.log)?;
        let admin = admin::admin(&ctx, raw.admin)?;
        let rotation = ca::rotation(&ctx, raw.rotation)?;
        let audit = admin::audit(&ctx, &raw.audit)?;
        if !(1..=admin::MAX_CACHE_MB).contains(&raw.store.cache_mb) {
            return Err(ctx.invalid(
                "store.cache_mb",
                format!("must be between 1 and {} (MiB)", admin::MAX_CACHE_MB),
            ));
        }
        let store_backend = store::backend(&ctx, &raw.store)?;
        let node_id = store::node_id(&ctx, raw.node_id)?;
        let member_keys = store::member_keys(&ctx, raw.member_keys)?;
        if raw.own_intermediate && !matches!(store_backend, crate::state::StoreBackend::Postgres(_))
        {
            return Err(ctx.invalid(
                "own_intermediate",
                "only appliances sharing a PostgreSQL database ([store] backend = \"postgres\") \
                 have intermediates of their own",
            ));
        }
        let audit_shipping = store::audit_shipping(&ctx, &raw.audit, &store_backend)?;
        let vault_api = vault::vault_api(&ctx, raw.vault_api, &clusters, &raw.trust_domain)?;
        vault::check_admin_reach(&ctx, &vault_api, &admin)?;
        let admin_client = admin_client::admin_client(&ctx, raw.admin_client)?;
        let acme = acme::acme(&ctx, raw.acme)?;
        Ok(Config {
            path: path.to_path_buf(),
            data_dir: ctx.resolve(raw.data_dir),
            trust_domain: raw.trust_domain,
            keystore,
            root,
            intermediate,
            workload,
            server,
            clusters,
            authorization,
            metrics,
            log,
            node_id,
            member_keys,
            own_intermediate: raw.own_intermediate,
            audit_enabled: raw.audit.enabled,
            audit_shipping,
            audit,
            store_cache_bytes: raw.store.cache_mb << 20,
            store_backend,
            admin,
            rotation,
            vault_api,
            admin_client,
            acme,
        })
    }
}

#[cfg(test)]
mod tests;
