//! The one TOML file that configures hsm-ca, read and validated once at start.
//!
//! Unknown keys are refused (a typo must not silently fall back to a default), and every
//! validation error names the key and the problem. Secrets are never inline: the config names a
//! file or environment variable. Relative paths are resolved against the config file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;

use raw::RawConfig;

use crate::keystore::pkcs11::{Pkcs11Settings, TokenSelector};
use crate::keystore::tpm::TpmSettings;
use crate::keystore::{KeyAlgorithm, PoolOptions};
use crate::secret::SecretSource;

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
    /// Record every issuance durably before answering (default). Off only for measurements.
    pub audit_enabled: bool,
    pub audit: crate::audit::AuditOptions,
    pub admin: AdminConfig,
    pub rotation: RotationConfig,
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
}

/// The issuance service's listener and serving certificate.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub client_auth: crate::tls::ClientAuth,
    pub serving_cert_ttl: Duration,
}

/// A Kubernetes cluster whose service-account tokens are accepted.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub id: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_file: PathBuf,
}

/// Who may ask for identities other than their own.
#[derive(Debug, Clone, Default)]
pub struct AuthorizationConfig {
    /// `(namespace, service account)` of node agents allowed to impersonate (ztunnel).
    pub trusted_node_accounts: Vec<(String, String)>,
    pub registration_authorities: Vec<crate::auth::RegistrationAuthority>,
}

/// Which device holds the keys (`keystore.backend`).
#[derive(Debug, Clone)]
pub enum BackendSettings {
    Pkcs11(Pkcs11Settings),
    Tpm(TpmSettings),
}

#[derive(Debug, Clone)]
pub struct KeystoreConfig {
    pub backend: BackendSettings,
    /// Environment variables the PKCS#11 module reads (e.g. `SOFTHSM2_CONF`), set before loading.
    pub module_env: BTreeMap<String, String>,
    pub pool: PoolOptions,
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

const DAY: u64 = 24 * 3600;

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            problem,
        };
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        validate_trust_domain(&raw.trust_domain).map_err(|p| invalid("trust_domain", p))?;

        let ks = raw.keystore;
        let secret = |file: Option<PathBuf>,
                      env: Option<String>,
                      key: &'static str,
                      what: &str|
         -> Result<Option<SecretSource>, ConfigError> {
            match (file, env) {
                (Some(f), None) => Ok(Some(SecretSource::File(f).resolved(&base))),
                (None, Some(e)) if !e.is_empty() => Ok(Some(SecretSource::Env(e))),
                (Some(_), Some(_)) => Err(invalid(
                    key,
                    format!("give {what}_file or {what}_env, not both"),
                )),
                (None, Some(_)) => Err(invalid(key, format!("{what}_env is empty"))),
                (None, None) => Ok(None),
            }
        };
        let (backend, default_sessions) = match ks.backend.as_str() {
            "pkcs11" => {
                if ks.tcti.is_some() {
                    return Err(invalid(
                        "keystore.tcti",
                        "only for backend = \"tpm\"".into(),
                    ));
                }
                let module = ks
                    .module
                    .ok_or_else(|| invalid("keystore.module", "is required".into()))?;
                let token = match (ks.token_label, ks.token_serial) {
                    (Some(l), None) if !l.is_empty() => TokenSelector::Label(l),
                    (None, Some(s)) if !s.is_empty() => TokenSelector::Serial(s),
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "keystore.token_label",
                            "give token_label or token_serial, not both".into(),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            "keystore.token_label",
                            "a token_label (or token_serial) is required".into(),
                        ))
                    }
                };
                let pin = match secret(ks.pin_file, ks.pin_env, "keystore.pin_file", "pin")? {
                    Some(_) if ks.pin_shares => return Err(invalid(
                        "keystore.pin_shares",
                        "the PIN comes from officers' shares or from pin_file/pin_env, not both"
                            .into(),
                    )),
                    Some(source) => source,
                    None if ks.pin_shares => SecretSource::Shares,
                    None => {
                        return Err(invalid(
                            "keystore.pin_file",
                            "the PIN must come from pin_file, pin_env or pin_shares = true".into(),
                        ))
                    }
                };
                let settings = Pkcs11Settings {
                    module,
                    token,
                    pin,
                    verify_signatures: ks.verify_signatures,
                };
                (BackendSettings::Pkcs11(settings), 2)
            }
            "tpm" => {
                if ks.module.is_some() || ks.token_label.is_some() || ks.token_serial.is_some() {
                    return Err(invalid(
                        "keystore.module",
                        "module, token_label and token_serial are for backend = \"pkcs11\"".into(),
                    ));
                }
                if ks.pin_file.is_some() || ks.pin_env.is_some() || ks.pin_shares {
                    return Err(invalid(
                        "keystore.pin_file",
                        "a TPM has no PIN; use key_auth_file or key_auth_env".into(),
                    ));
                }
                let tcti = ks
                    .tcti
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| invalid("keystore.tcti", "is required for a TPM".into()))?;
                if <tss_esapi::tcti_ldr::TctiNameConf as std::str::FromStr>::from_str(&tcti)
                    .is_err()
                {
                    return Err(invalid(
                        "keystore.tcti",
                        format!("{tcti:?} is not device:PATH, tabrmd or swtpm:host=H,port=P"),
                    ));
                }
                let settings = TpmSettings {
                    tcti,
                    owner_auth: secret(
                        ks.owner_auth_file,
                        ks.owner_auth_env,
                        "keystore.owner_auth_file",
                        "owner_auth",
                    )?,
                    key_auth: secret(
                        ks.key_auth_file,
                        ks.key_auth_env,
                        "keystore.key_auth_file",
                        "key_auth",
                    )?,
                    verify_signatures: ks.verify_signatures,
                };
                (BackendSettings::Tpm(settings), 1)
            }
            other => {
                return Err(invalid(
                    "keystore.backend",
                    format!("unknown backend {other:?} (expected \"pkcs11\" or \"tpm\")"),
                ))
            }
        };
        let signing_sessions = ks.signing_sessions.unwrap_or(default_sessions);
        if !(1..=64).contains(&signing_sessions) {
            return Err(invalid(
                "keystore.signing_sessions",
                format!("{signing_sessions} is outside 1..=64"),
            ));
        }
        if ks.queue_depth == 0 {
            return Err(invalid("keystore.queue_depth", "must be at least 1".into()));
        }
        if ks.call_timeout_ms == 0 {
            return Err(invalid(
                "keystore.call_timeout_ms",
                "must be at least 1".into(),
            ));
        }

        let root = raw.root;
        if root.certificates.is_empty() {
            return Err(invalid(
                "root.certificates",
                "list at least one root certificate file".into(),
            ));
        }
        check_days("root.validity_days", root.validity_days, 36500)
            .map_err(|p| invalid("root.validity_days", p))?;
        let inter = raw.intermediate;
        check_days("intermediate.validity_days", inter.validity_days, 3650)
            .map_err(|p| invalid("intermediate.validity_days", p))?;
        if root.common_name.trim().is_empty() {
            return Err(invalid("root.common_name", "must not be empty".into()));
        }
        if inter.common_name.trim().is_empty() {
            return Err(invalid(
                "intermediate.common_name",
                "must not be empty".into(),
            ));
        }

        let wl = raw.workload;
        if wl.max_ttl_secs < 60 {
            return Err(invalid(
                "workload.max_ttl_secs",
                "must be at least 60".into(),
            ));
        }
        if wl.default_ttl_secs == 0 || wl.default_ttl_secs > wl.max_ttl_secs {
            return Err(invalid(
                "workload.default_ttl_secs",
                format!("must be between 1 and max_ttl_secs ({})", wl.max_ttl_secs),
            ));
        }
        if wl.clock_skew_secs > 3600 {
            return Err(invalid(
                "workload.clock_skew_secs",
                "must be at most 3600".into(),
            ));
        }

        let srv = raw.server;
        let listen = srv.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address:port", srv.listen),
            )
        })?;
        if srv.dns_names.is_empty() && srv.ip_addresses.is_empty() {
            return Err(invalid(
                "server.dns_names",
                "the serving certificate needs at least one DNS name or IP address".into(),
            ));
        }
        for name in &srv.dns_names {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'))
            {
                return Err(invalid(
                    "server.dns_names",
                    format!("{name:?} is not a DNS name"),
                ));
            }
        }
        let ip_addresses = srv
            .ip_addresses
            .iter()
            .map(|ip| {
                ip.parse().map_err(|_| {
                    invalid(
                        "server.ip_addresses",
                        format!("{ip:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if srv.serving_cert_ttl_secs < 2 {
            return Err(invalid(
                "server.serving_cert_ttl_secs",
                "must be at least 2".into(),
            ));
        }
        let mut clusters = Vec::new();
        for c in raw.clusters {
            if c.issuer.is_empty() {
                return Err(invalid(
                    "clusters.issuer",
                    format!("cluster {:?} needs an issuer", c.id),
                ));
            }
            if c.audiences.is_empty() {
                return Err(invalid(
                    "clusters.audiences",
                    format!("cluster {:?} needs an audience", c.id),
                ));
            }
            if clusters.iter().any(|k: &ClusterConfig| k.id == c.id) {
                return Err(invalid(
                    "clusters.id",
                    format!("cluster {:?} is listed twice", c.id),
                ));
            }
            clusters.push(ClusterConfig {
                id: c.id,
                issuer: c.issuer,
                audiences: c.audiences,
                jwks_file: resolve(c.jwks_file),
            });
        }
        let mut authorization = AuthorizationConfig::default();
        for account in raw.authorization.trusted_node_accounts {
            let (ns, sa) = account
                .split_once('/')
                .filter(|(n, s)| !n.is_empty() && !s.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "authorization.trusted_node_accounts",
                        format!("{account:?} is not <namespace>/<service account>"),
                    )
                })?;
            authorization
                .trusted_node_accounts
                .push((ns.to_string(), sa.to_string()));
        }
        for ra in raw.authorization.registration_authorities {
            let identity = crate::auth::SpiffeId::parse(&ra.identity).map_err(|e| {
                invalid(
                    "authorization.registration_authorities.identity",
                    e.to_string(),
                )
            })?;
            if ra.namespaces.is_empty() {
                return Err(invalid(
                    "authorization.registration_authorities.namespaces",
                    format!("{identity} needs at least one namespace (or \"*\")"),
                ));
            }
            authorization
                .registration_authorities
                .push(crate::auth::RegistrationAuthority {
                    identity,
                    namespaces: ra.namespaces,
                });
        }

        let adm = raw.admin;
        let admin_listen = adm.listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("{:?} is not an address:port", adm.listen),
            )
        })?;
        let mut users = BTreeMap::new();
        for user in adm.users {
            if user.identity.trim().is_empty() {
                return Err(invalid("admin.users.identity", "must not be empty".into()));
            }
            if user.roles.is_empty() {
                return Err(invalid(
                    "admin.users.roles",
                    format!("{} needs at least one role", user.identity),
                ));
            }
            let roles = user
                .roles
                .iter()
                .map(|r| r.parse::<Role>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("admin.users.roles", e))?;
            if users.insert(user.identity.clone(), roles).is_some() {
                return Err(invalid(
                    "admin.users.identity",
                    format!("{} is listed twice", user.identity),
                ));
            }
        }
        if !(0.0..1.0).contains(&adm.expiry_warning_fraction) {
            return Err(invalid(
                "admin.expiry_warning_fraction",
                "must be at least 0 and below 1".into(),
            ));
        }
        if adm.approvals.threshold == 0 {
            return Err(invalid(
                "admin.approvals.threshold",
                "must be at least 1".into(),
            ));
        }
        let officers = users
            .values()
            .filter(|roles| roles.contains(&Role::Officer))
            .count();
        if officers > 0 && (adm.approvals.threshold as usize) > officers {
            return Err(invalid(
                "admin.approvals.threshold",
                format!(
                    "{} approvals needed but only {officers} user(s) have the officer role",
                    adm.approvals.threshold
                ),
            ));
        }
        for op in &adm.approvals.sensitive {
            if !SENSITIVE_OPERATIONS.contains(&op.as_str()) {
                return Err(invalid(
                    "admin.approvals.sensitive",
                    format!(
                        "unknown operation {op:?} (expected any of {})",
                        SENSITIVE_OPERATIONS.join(", ")
                    ),
                ));
            }
        }
        if adm.approvals.expires_secs == 0 {
            return Err(invalid(
                "admin.approvals.expires_secs",
                "must be at least 1".into(),
            ));
        }
        let admin = AdminConfig {
            enabled: adm.enabled,
            listen: admin_listen,
            users,
            client_ca_files: adm.client_ca_files.into_iter().map(&resolve).collect(),
            propagation_window: Duration::from_secs(adm.propagation_window_secs),
            bundle_refresh_hint: Duration::from_secs(adm.bundle_refresh_hint_secs.max(1)),
            expiry_warning_fraction: adm.expiry_warning_fraction,
            approval_threshold: adm.approvals.threshold,
            proposal_ttl: Duration::from_secs(adm.approvals.expires_secs),
            sensitive: adm.approvals.sensitive,
        };

        let rot = raw.rotation;
        if !(rot.prepare_at > 0.0 && rot.prepare_at < 1.0) {
            return Err(invalid(
                "rotation.prepare_at",
                "must be above 0 and below 1".into(),
            ));
        }
        if !(rot.activate_at > rot.prepare_at && rot.activate_at < 1.0) {
            return Err(invalid(
                "rotation.activate_at",
                format!(
                    "must be above rotation.prepare_at ({}) and below 1",
                    rot.prepare_at
                ),
            ));
        }
        if rot.check_interval_secs == 0 {
            return Err(invalid(
                "rotation.check_interval_secs",
                "must be at least 1".into(),
            ));
        }
        let rotation = RotationConfig {
            auto: rot.auto,
            prepare_at: rot.prepare_at,
            activate_at: rot.activate_at,
            check_interval: Duration::from_secs(rot.check_interval_secs),
        };

        let aud = &raw.audit;
        if aud.checkpoint_every == 0 {
            return Err(invalid(
                "audit.checkpoint_every",
                "must be at least 1".into(),
            ));
        }
        if aud.checkpoint_interval_secs == 0 {
            return Err(invalid(
                "audit.checkpoint_interval_secs",
                "must be at least 1".into(),
            ));
        }
        if aud.refusal_burst == 0 || aud.refusals_per_minute == 0 {
            return Err(invalid(
                "audit.refusal_burst",
                "refusal_burst and refusals_per_minute must be at least 1".into(),
            ));
        }
        let audit = crate::audit::AuditOptions {
            checkpoints: crate::audit::CheckpointPolicy {
                every: aud.checkpoint_every,
                interval: Duration::from_secs(aud.checkpoint_interval_secs),
            },
            refusals: crate::audit::RefusalLimits {
                burst: aud.refusal_burst,
                per_minute: aud.refusals_per_minute,
                ..Default::default()
            },
        };

        Ok(Config {
            audit,
            rotation,
            admin,
            audit_enabled: raw.audit.enabled,
            server: ServerConfig {
                listen,
                dns_names: srv.dns_names,
                ip_addresses,
                client_auth: srv.client_auth,
                serving_cert_ttl: Duration::from_secs(srv.serving_cert_ttl_secs),
            },
            clusters,
            authorization,
            path: path.to_path_buf(),
            trust_domain: raw.trust_domain,
            data_dir: resolve(raw.data_dir),
            keystore: KeystoreConfig {
                backend,
                module_env: ks.module_env,
                pool: PoolOptions {
                    workers: signing_sessions,
                    queue_depth: ks.queue_depth,
                    call_timeout: Duration::from_millis(ks.call_timeout_ms),
                },
            },
            root: RootConfig {
                certificates: root.certificates.into_iter().map(resolve).collect(),
                common_name: root.common_name,
                organization: root.organization,
                key_algorithm: root.key_algorithm,
                validity: Duration::from_secs(u64::from(root.validity_days) * DAY),
            },
            intermediate: IntermediateConfig {
                common_name: inter.common_name,
                organization: inter.organization,
                key_algorithm: inter.key_algorithm,
                validity: Duration::from_secs(u64::from(inter.validity_days) * DAY),
                name_constraint: inter.name_constraint,
            },
            workload: WorkloadConfig {
                clock_skew: Duration::from_secs(wl.clock_skew_secs),
                default_ttl: Duration::from_secs(wl.default_ttl_secs),
                max_ttl: Duration::from_secs(wl.max_ttl_secs),
            },
        })
    }
}

fn check_days(_key: &str, days: u32, max: u32) -> Result<(), String> {
    if days == 0 || days > max {
        return Err(format!("{days} is outside 1..={max}"));
    }
    Ok(())
}

/// SPIFFE trust domain rules: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
pub fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("must not be empty".into());
    }
    if td.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{td:?} has {c:?}; a SPIFFE trust domain has only a-z, 0-9, '.', '-', '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
