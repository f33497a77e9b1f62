//! The config file as written: serde types with their defaults. Validation and the
//! resolved [`super::Config`] live in the parent module.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::keystore::KeyAlgorithm;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) trust_domain: String,
    #[serde(default = "default_data_dir")]
    pub(super) data_dir: PathBuf,
    /// This appliance's name among those sharing a database (default: the host name).
    #[serde(default)]
    pub(super) node_id: Option<String>,
    /// Public keys (PEM files) of the other appliances sharing the database.
    #[serde(default)]
    pub(super) member_keys: Vec<PathBuf>,
    /// On a shared database: this appliance issues with an intermediate of its own.
    #[serde(default)]
    pub(super) own_intermediate: bool,
    pub(super) keystore: RawKeystore,
    #[serde(default)]
    pub(super) root: RawRoot,
    #[serde(default)]
    pub(super) intermediate: RawIntermediate,
    #[serde(default)]
    pub(super) workload: RawWorkload,
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) clusters: Vec<RawCluster>,
    #[serde(default)]
    pub(super) authorization: RawAuthorization,
    #[serde(default)]
    pub(super) metrics: super::observe::RawMetrics,
    #[serde(default)]
    pub(super) log: super::observe::RawLog,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) rotation: RawRotation,
    /// The Vault-compatible front door (off unless present and enabled).
    #[serde(default)]
    pub(super) vault_api: Option<super::vault::RawVaultApi>,
    /// How `hsm-ca admin` reaches an admin API.
    #[serde(default)]
    pub(super) admin_client: Option<super::admin_client::RawAdminClient>,
    #[serde(default)]
    pub(super) acme: Option<super::acme::RawAcme>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRotation {
    #[serde(default)]
    pub(super) auto: bool,
    #[serde(default = "default_prepare_at")]
    pub(super) prepare_at: f64,
    #[serde(default = "default_activate_at")]
    pub(super) activate_at: f64,
    #[serde(default = "default_rotation_interval")]
    pub(super) check_interval_secs: u64,
}

impl Default for RawRotation {
    fn default() -> Self {
        RawRotation {
            auto: false,
            prepare_at: default_prepare_at(),
            activate_at: default_activate_at(),
            check_interval_secs: default_rotation_interval(),
        }
    }
}

fn default_prepare_at() -> f64 {
    0.5
}
fn default_activate_at() -> f64 {
    0.67
}
fn default_rotation_interval() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_admin_listen")]
    pub(super) listen: String,
    #[serde(default)]
    pub(super) users: Vec<RawAdminUser>,
    #[serde(default)]
    pub(super) client_ca_files: Vec<PathBuf>,
    #[serde(default = "default_propagation")]
    pub(super) propagation_window_secs: u64,
    #[serde(default = "default_refresh_hint")]
    pub(super) bundle_refresh_hint_secs: u64,
    #[serde(default = "default_expiry_warning")]
    pub(super) expiry_warning_fraction: f64,
    #[serde(default)]
    pub(super) approvals: RawApprovals,
    #[serde(default)]
    pub(super) development_shared_ca: bool,
    #[serde(default = "default_admin_max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "default_handshake_timeout")]
    pub(super) handshake_timeout_secs: u64,
    #[serde(default = "default_idle_timeout")]
    pub(super) idle_timeout_secs: u64,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            enabled: true,
            listen: default_admin_listen(),
            users: Vec::new(),
            client_ca_files: Vec::new(),
            propagation_window_secs: default_propagation(),
            bundle_refresh_hint_secs: default_refresh_hint(),
            expiry_warning_fraction: default_expiry_warning(),
            approvals: RawApprovals::default(),
            development_shared_ca: false,
            max_connections: default_admin_max_connections(),
            handshake_timeout_secs: default_handshake_timeout(),
            idle_timeout_secs: default_idle_timeout(),
        }
    }
}

fn default_admin_max_connections() -> usize {
    64
}
fn default_grpc_max_connections() -> usize {
    1024
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    60
}

fn default_admin_listen() -> String {
    "127.0.0.1:9443".into()
}
fn default_propagation() -> u64 {
    3600
}
fn default_refresh_hint() -> u64 {
    300
}
fn default_expiry_warning() -> f64 {
    0.2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminUser {
    pub(super) identity: String,
    pub(super) roles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    #[serde(default = "default_threshold")]
    pub(super) threshold: u32,
    #[serde(default = "default_proposal_ttl")]
    pub(super) expires_secs: u64,
    #[serde(default = "default_sensitive")]
    pub(super) sensitive: Vec<String>,
}

impl Default for RawApprovals {
    fn default() -> Self {
        RawApprovals {
            threshold: default_threshold(),
            expires_secs: default_proposal_ttl(),
            sensitive: default_sensitive(),
        }
    }
}

fn default_threshold() -> u32 {
    2
}
fn default_proposal_ttl() -> u64 {
    3600
}
fn default_sensitive() -> Vec<String> {
    ["root_add", "root_remove", "revoke", "activate_new_root"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_checkpoint_every")]
    pub(super) checkpoint_every: u64,
    #[serde(default = "default_checkpoint_interval")]
    pub(super) checkpoint_interval_secs: u64,
    #[serde(default = "default_refusal_burst")]
    pub(super) refusal_burst: u32,
    #[serde(default = "default_refusals_per_minute")]
    pub(super) refusals_per_minute: u32,
    #[serde(default = "default_audit_cache_mb")]
    pub(super) cache_mb: u64,
    #[serde(default)]
    pub(super) require_shipped: bool,
    #[serde(default = "default_ship_timeout")]
    pub(super) ship_timeout_secs: u64,
}

/// `[store]`: where the CA state is kept (sled, or PostgreSQL in `[store.postgres]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default = "default_store_backend")]
    pub(super) backend: String,
    #[serde(default = "default_store_cache_mb")]
    pub(super) cache_mb: u64,
    #[serde(default)]
    pub(super) postgres: Option<RawPostgres>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: default_store_backend(),
            cache_mb: default_store_cache_mb(),
            postgres: None,
        }
    }
}

/// `[store.postgres]`: the database of `backend = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPostgres {
    pub(super) url: String,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) pool_size: Option<usize>,
}

fn default_store_backend() -> String {
    "sled".into()
}

fn default_audit_cache_mb() -> u64 {
    crate::audit::DEFAULT_AUDIT_CACHE_BYTES >> 20
}
fn default_store_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES >> 20
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval_secs: default_checkpoint_interval(),
            refusal_burst: default_refusal_burst(),
            refusals_per_minute: default_refusals_per_minute(),
            cache_mb: default_audit_cache_mb(),
            require_shipped: false,
            ship_timeout_secs: default_ship_timeout(),
        }
    }
}

fn default_ship_timeout() -> u64 {
    5
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> u64 {
    60
}
fn default_refusal_burst() -> u32 {
    10
}
fn default_refusals_per_minute() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    pub(super) listen: String,
    #[serde(default = "default_dns_names")]
    pub(super) dns_names: Vec<String>,
    #[serde(default)]
    pub(super) ip_addresses: Vec<String>,
    #[serde(default)]
    pub(super) client_auth: crate::tls::ClientAuth,
    #[serde(default = "default_serving_ttl")]
    pub(super) serving_cert_ttl_secs: u64,
    #[serde(default = "default_grpc_max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "default_handshake_timeout")]
    pub(super) handshake_timeout_secs: u64,
    #[serde(default = "default_idle_timeout")]
    pub(super) idle_timeout_secs: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            dns_names: default_dns_names(),
            ip_addresses: Vec::new(),
            client_auth: crate::tls::ClientAuth::Optional,
            serving_cert_ttl_secs: default_serving_ttl(),
            max_connections: default_grpc_max_connections(),
            handshake_timeout_secs: default_handshake_timeout(),
            idle_timeout_secs: default_idle_timeout(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:15012".into()
}
fn default_dns_names() -> Vec<String> {
    vec!["localhost".into()]
}
fn default_serving_ttl() -> u64 {
    86400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(default = "default_cluster_id")]
    pub(super) id: String,
    pub(super) issuer: String,
    #[serde(default = "default_audiences")]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) jwks_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) jwks_url: Option<String>,
    #[serde(default)]
    pub(super) discovery: bool,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) refresh_secs: Option<u64>,
}

fn default_cluster_id() -> String {
    crate::auth::DEFAULT_CLUSTER.into()
}
fn default_audiences() -> Vec<String> {
    vec!["istio-ca".into()]
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    #[serde(default)]
    pub(super) trusted_node_accounts: Vec<String>,
    #[serde(default)]
    pub(super) registration_authorities: Vec<RawRegistrationAuthority>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistrationAuthority {
    pub(super) identity: String,
    pub(super) namespaces: Vec<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeystore {
    #[serde(default = "default_backend")]
    pub(super) backend: String,
    pub(super) module: Option<PathBuf>,
    pub(super) token_label: Option<String>,
    pub(super) token_serial: Option<String>,
    pub(super) pin_file: Option<PathBuf>,
    pub(super) pin_env: Option<String>,
    /// The PIN is held as officers' shares (`hsm-ca ceremony init-quorum`).
    #[serde(default)]
    pub(super) pin_shares: bool,
    #[serde(default)]
    pub(super) module_env: BTreeMap<String, String>,
    /// TPM backend: the TCTI and the optional owner and key auth values.
    pub(super) tcti: Option<String>,
    pub(super) owner_auth_file: Option<PathBuf>,
    pub(super) owner_auth_env: Option<String>,
    pub(super) key_auth_file: Option<PathBuf>,
    pub(super) key_auth_env: Option<String>,
    /// Default 2 for PKCS#11, 1 for a TPM (swtpm serves one connection at a time).
    pub(super) signing_sessions: Option<usize>,
    #[serde(default = "default_queue_depth")]
    pub(super) queue_depth: usize,
    #[serde(default = "default_call_timeout_ms")]
    pub(super) call_timeout_ms: u64,
    #[serde(default = "default_true")]
    pub(super) verify_signatures: bool,
}

fn default_true() -> bool {
    true
}

fn default_backend() -> String {
    "pkcs11".into()
}
fn default_queue_depth() -> usize {
    1024
}
fn default_call_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoot {
    #[serde(default = "default_root_certs")]
    pub(super) certificates: Vec<PathBuf>,
    #[serde(default = "default_root_cn")]
    pub(super) common_name: String,
    pub(super) organization: Option<String>,
    #[serde(default = "default_algorithm")]
    pub(super) key_algorithm: KeyAlgorithm,
    #[serde(default = "default_root_days")]
    pub(super) validity_days: u32,
}

impl Default for RawRoot {
    fn default() -> Self {
        RawRoot {
            certificates: default_root_certs(),
            common_name: default_root_cn(),
            organization: None,
            key_algorithm: default_algorithm(),
            validity_days: default_root_days(),
        }
    }
}

fn default_root_certs() -> Vec<PathBuf> {
    vec![PathBuf::from("root-cert.pem")]
}
fn default_root_cn() -> String {
    "hsm-ca root".into()
}
fn default_algorithm() -> KeyAlgorithm {
    KeyAlgorithm::EcdsaP256
}
fn default_root_days() -> u32 {
    3650
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntermediate {
    #[serde(default = "default_intermediate_cn")]
    pub(super) common_name: String,
    pub(super) organization: Option<String>,
    #[serde(default = "default_algorithm")]
    pub(super) key_algorithm: KeyAlgorithm,
    #[serde(default = "default_intermediate_days")]
    pub(super) validity_days: u32,
    #[serde(default)]
    pub(super) name_constraint: bool,
}

impl Default for RawIntermediate {
    fn default() -> Self {
        RawIntermediate {
            common_name: default_intermediate_cn(),
            organization: None,
            key_algorithm: default_algorithm(),
            validity_days: default_intermediate_days(),
            name_constraint: false,
        }
    }
}

fn default_intermediate_cn() -> String {
    "hsm-ca intermediate".into()
}
fn default_intermediate_days() -> u32 {
    365
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    #[serde(default = "default_skew")]
    pub(super) clock_skew_secs: u64,
    #[serde(default = "default_ttl")]
    pub(super) default_ttl_secs: u64,
    #[serde(default = "default_max_ttl")]
    pub(super) max_ttl_secs: u64,
}

impl Default for RawWorkload {
    fn default() -> Self {
        RawWorkload {
            clock_skew_secs: default_skew(),
            default_ttl_secs: default_ttl(),
            max_ttl_secs: default_max_ttl(),
        }
    }
}

fn default_skew() -> u64 {
    120
}
fn default_ttl() -> u64 {
    24 * 3600
}
fn default_max_ttl() -> u64 {
    7 * 24 * 3600
}
