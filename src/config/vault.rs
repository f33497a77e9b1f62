//! The `[vault_api]` section: the Vault-compatible front door ([`crate::vault`]) for SPIRE's
//! `vault` UpstreamAuthority and cert-manager's Vault issuer. Off unless `enabled = true`.
//! Every policy an auth role names must be a configured `[[vault_api.roles]]` or
//! `[[vault_api.intermediates]]` entry, so a typo cannot grant nothing (or something else).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::vault_api::{
    AppRole, CertRole, IntermediateGrant, KeyType, KubernetesRole, PkiRole, VaultSettings,
};
use super::{AdminConfig, ClusterConfig, ConfigError, Ctx};
use crate::tls::ConnectionLimits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVaultApi {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_pki_mount")]
    pki_mount: String,
    #[serde(default = "default_cert_mount")]
    cert_mount: String,
    #[serde(default = "default_kubernetes_mount")]
    kubernetes_mount: String,
    #[serde(default = "default_approle_mount")]
    approle_mount: String,
    #[serde(default)]
    client_ca_files: Vec<PathBuf>,
    #[serde(default = "default_token_ttl")]
    token_ttl_secs: u64,
    #[serde(default = "default_token_max_ttl")]
    token_max_ttl_secs: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    cert_roles: Vec<RawCertRole>,
    #[serde(default)]
    kubernetes_roles: Vec<RawKubernetesRole>,
    #[serde(default)]
    approles: Vec<RawAppRole>,
    #[serde(default)]
    roles: Vec<RawPkiRole>,
    #[serde(default)]
    intermediates: Vec<RawIntermediateGrant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertRole {
    name: String,
    identities: Vec<String>,
    policies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetesRole {
    name: String,
    #[serde(default = "default_cluster")]
    cluster: String,
    bound_service_account_namespaces: Vec<String>,
    bound_service_account_names: Vec<String>,
    policies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppRole {
    name: String,
    role_id: String,
    secret_id_file: Option<PathBuf>,
    secret_id_env: Option<String>,
    policies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkiRole {
    name: String,
    #[serde(default)]
    allowed_domains: Vec<String>,
    #[serde(default)]
    allow_subdomains: bool,
    #[serde(default)]
    allow_bare_domains: bool,
    #[serde(default)]
    allow_glob_domains: bool,
    #[serde(default)]
    allowed_uri_sans: Vec<String>,
    #[serde(default)]
    allow_ip_sans: bool,
    #[serde(default = "default_key_type")]
    key_type: String,
    #[serde(default = "default_min_rsa_bits")]
    min_rsa_bits: usize,
    #[serde(default = "default_role_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_role_max_ttl")]
    max_ttl_secs: u64,
    #[serde(default = "default_true")]
    server_flag: bool,
    #[serde(default = "default_true")]
    client_flag: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntermediateGrant {
    name: String,
    trust_domain: Option<String>,
    #[serde(default = "default_intermediate_ttl")]
    ttl_secs: u64,
    #[serde(default = "default_intermediate_ttl")]
    max_ttl_secs: u64,
}

fn default_listen() -> String {
    "127.0.0.1:8200".into()
}
fn default_pki_mount() -> String {
    "pki".into()
}
fn default_cert_mount() -> String {
    "cert".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_cluster() -> String {
    crate::auth::DEFAULT_CLUSTER.into()
}
fn default_token_ttl() -> u64 {
    3600
}
fn default_token_max_ttl() -> u64 {
    86400
}
fn default_max_connections() -> usize {
    256
}
fn default_key_type() -> String {
    "any".into()
}
fn default_min_rsa_bits() -> usize {
    2048
}
fn default_role_ttl() -> u64 {
    86400
}
fn default_role_max_ttl() -> u64 {
    90 * 86400
}
fn default_intermediate_ttl() -> u64 {
    48 * 3600
}
fn default_true() -> bool {
    true
}

/// A mount or role name: the path segment clients put in URLs.
fn path_segment(ctx: &Ctx, key: &'static str, s: &str) -> Result<(), ConfigError> {
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ctx.invalid(key, format!("{s:?} is not a name (letters, digits, - _ .)")))
    }
}

fn unique<'a>(
    ctx: &Ctx,
    key: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for n in names {
        path_segment(ctx, key, n)?;
        if !seen.insert(n) {
            return Err(ctx.invalid(key, format!("{n:?} is listed twice")));
        }
    }
    Ok(())
}

pub(super) fn vault_api(
    ctx: &Ctx,
    raw: Option<RawVaultApi>,
    clusters: &[ClusterConfig],
    trust_domain: &str,
) -> Result<VaultSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(VaultSettings::default());
    };
    let listen = raw.listen.parse().map_err(|_| {
        ctx.invalid(
            "vault_api.listen",
            format!("{:?} is not an address:port", raw.listen),
        )
    })?;
    for (key, mount) in [
        ("vault_api.pki_mount", &raw.pki_mount),
        ("vault_api.cert_mount", &raw.cert_mount),
        ("vault_api.kubernetes_mount", &raw.kubernetes_mount),
        ("vault_api.approle_mount", &raw.approle_mount),
    ] {
        path_segment(ctx, key, mount)?;
        if mount == "auth" || mount == "sys" || mount == "token" {
            return Err(ctx.invalid(key, format!("{mount:?} is reserved")));
        }
    }
    if raw.token_ttl_secs == 0 || raw.token_max_ttl_secs < raw.token_ttl_secs {
        return Err(ctx.invalid(
            "vault_api.token_ttl_secs",
            "must be at least 1 and at most token_max_ttl_secs",
        ));
    }
    if raw.max_connections == 0 {
        return Err(ctx.invalid("vault_api.max_connections", "must be at least 1"));
    }

    unique(
        ctx,
        "vault_api.roles.name",
        raw.roles.iter().map(|r| r.name.as_str()),
    )?;
    let roles = raw
        .roles
        .into_iter()
        .map(|r| pki_role(ctx, r))
        .collect::<Result<Vec<_>, _>>()?;
    unique(
        ctx,
        "vault_api.intermediates.name",
        raw.intermediates.iter().map(|r| r.name.as_str()),
    )?;
    let intermediates = raw
        .intermediates
        .into_iter()
        .map(|g| {
            let trust_domain = g.trust_domain.unwrap_or_else(|| trust_domain.to_string());
            crate::auth::spiffe::validate_trust_domain(&trust_domain)
                .map_err(|p| ctx.invalid("vault_api.intermediates.trust_domain", p))?;
            if g.ttl_secs == 0 || g.max_ttl_secs < g.ttl_secs {
                return Err(ctx.invalid(
                    "vault_api.intermediates.ttl_secs",
                    format!("{}: must be at least 1 and at most max_ttl_secs", g.name),
                ));
            }
            Ok(IntermediateGrant {
                name: g.name,
                trust_domain,
                default_ttl: Duration::from_secs(g.ttl_secs),
                max_ttl: Duration::from_secs(g.max_ttl_secs),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policies: BTreeSet<&str> = roles
        .iter()
        .map(|r| r.name.as_str())
        .chain(intermediates.iter().map(|g| g.name.as_str()))
        .collect();
    let check_policies = |key: &'static str, role: &str, list: &[String]| {
        if list.is_empty() {
            return Err(ctx.invalid(key, format!("{role} needs at least one policy")));
        }
        match list.iter().find(|p| !policies.contains(p.as_str())) {
            Some(p) => Err(ctx.invalid(
                key,
                format!(
                    "{role}: policy {p:?} is neither a [[vault_api.roles]] nor a \
                     [[vault_api.intermediates]] name"
                ),
            )),
            None => Ok(()),
        }
    };

    unique(
        ctx,
        "vault_api.cert_roles.name",
        raw.cert_roles.iter().map(|r| r.name.as_str()),
    )?;
    let mut cert_roles = Vec::new();
    for r in raw.cert_roles {
        check_policies("vault_api.cert_roles.policies", &r.name, &r.policies)?;
        if r.identities.is_empty() || r.identities.iter().any(|i| i.trim().is_empty()) {
            return Err(ctx.invalid(
                "vault_api.cert_roles.identities",
                format!("{} needs at least one identity, none empty", r.name),
            ));
        }
        cert_roles.push(CertRole {
            name: r.name,
            identities: r.identities,
            policies: r.policies,
        });
    }
    unique(
        ctx,
        "vault_api.kubernetes_roles.name",
        raw.kubernetes_roles.iter().map(|r| r.name.as_str()),
    )?;
    let mut kubernetes_roles = Vec::new();
    for r in raw.kubernetes_roles {
        check_policies("vault_api.kubernetes_roles.policies", &r.name, &r.policies)?;
        if !clusters.iter().any(|c| c.id == r.cluster) {
            return Err(ctx.invalid(
                "vault_api.kubernetes_roles.cluster",
                format!("{}: no [[clusters]] entry has id {:?}", r.name, r.cluster),
            ));
        }
        if r.bound_service_account_namespaces.is_empty() || r.bound_service_account_names.is_empty()
        {
            return Err(ctx.invalid(
                "vault_api.kubernetes_roles.bound_service_account_names",
                format!(
                    "{} needs bound namespaces and names (\"*\" for any)",
                    r.name
                ),
            ));
        }
        kubernetes_roles.push(KubernetesRole {
            name: r.name,
            cluster: r.cluster,
            namespaces: r.bound_service_account_namespaces,
            service_accounts: r.bound_service_account_names,
            policies: r.policies,
        });
    }
    unique(
        ctx,
        "vault_api.approles.name",
        raw.approles.iter().map(|r| r.name.as_str()),
    )?;
    let mut approles: Vec<AppRole> = Vec::new();
    for r in raw.approles {
        check_policies("vault_api.approles.policies", &r.name, &r.policies)?;
        if r.role_id.trim().is_empty() || approles.iter().any(|a| a.role_id == r.role_id) {
            return Err(ctx.invalid(
                "vault_api.approles.role_id",
                format!("{}: role_id must be non-empty and unique", r.name),
            ));
        }
        let secret_id = ctx
            .secret(
                r.secret_id_file,
                r.secret_id_env,
                "vault_api.approles.secret_id_file",
                "secret_id",
            )?
            .ok_or_else(|| {
                ctx.invalid(
                    "vault_api.approles.secret_id_file",
                    format!("{} needs secret_id_file or secret_id_env", r.name),
                )
            })?;
        approles.push(AppRole {
            name: r.name,
            role_id: r.role_id,
            secret_id,
            policies: r.policies,
        });
    }
    let defaults = VaultSettings::default();
    Ok(VaultSettings {
        enabled: raw.enabled,
        listen,
        pki_mount: raw.pki_mount,
        cert_mount: raw.cert_mount,
        kubernetes_mount: raw.kubernetes_mount,
        approle_mount: raw.approle_mount,
        client_ca_files: raw
            .client_ca_files
            .into_iter()
            .map(|p| ctx.resolve(p))
            .collect(),
        token_ttl: Duration::from_secs(raw.token_ttl_secs),
        token_max_ttl: Duration::from_secs(raw.token_max_ttl_secs),
        connections: ConnectionLimits {
            max_connections: raw.max_connections,
            ..defaults.connections
        },
        cert_roles,
        kubernetes_roles,
        approles,
        roles,
        intermediates,
    })
}

fn pki_role(ctx: &Ctx, r: RawPkiRole) -> Result<PkiRole, ConfigError> {
    let key_type = match r.key_type.as_str() {
        "any" => KeyType::Any,
        "ec" => KeyType::Ec,
        "rsa" => KeyType::Rsa,
        other => {
            return Err(ctx.invalid(
                "vault_api.roles.key_type",
                format!("{}: {other:?} is not any, ec or rsa", r.name),
            ))
        }
    };
    if r.ttl_secs == 0 || r.max_ttl_secs < r.ttl_secs {
        return Err(ctx.invalid(
            "vault_api.roles.ttl_secs",
            format!("{}: must be at least 1 and at most max_ttl_secs", r.name),
        ));
    }
    if r.allowed_domains.is_empty() && r.allowed_uri_sans.is_empty() {
        return Err(ctx.invalid(
            "vault_api.roles.allowed_domains",
            format!(
                "{}: give allowed_domains or allowed_uri_sans; a role never signs what is asked",
                r.name
            ),
        ));
    }
    if r.allowed_domains
        .iter()
        .any(|d| d.trim().is_empty() || d == "*")
        || r.allowed_uri_sans
            .iter()
            .any(|u| u.trim().is_empty() || u == "*")
    {
        return Err(ctx.invalid(
            "vault_api.roles.allowed_domains",
            format!("{}: an empty or bare \"*\" pattern allows anything", r.name),
        ));
    }
    if !(crate::ca::csr::MIN_RSA_BITS..=crate::ca::csr::MAX_RSA_BITS).contains(&r.min_rsa_bits) {
        return Err(ctx.invalid(
            "vault_api.roles.min_rsa_bits",
            format!("{}: must be between 2048 and 8192", r.name),
        ));
    }
    if !r.server_flag && !r.client_flag {
        return Err(ctx.invalid(
            "vault_api.roles.server_flag",
            format!("{}: a certificate needs server_flag or client_flag", r.name),
        ));
    }
    Ok(PkiRole {
        name: r.name,
        allowed_domains: r
            .allowed_domains
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        allow_subdomains: r.allow_subdomains,
        allow_bare_domains: r.allow_bare_domains,
        allow_glob_domains: r.allow_glob_domains,
        allowed_uri_sans: r.allowed_uri_sans,
        allow_ip_sans: r.allow_ip_sans,
        key_type,
        min_rsa_bits: r.min_rsa_bits,
        default_ttl: Duration::from_secs(r.ttl_secs),
        max_ttl: Duration::from_secs(r.max_ttl_secs),
        server_flag: r.server_flag,
        client_flag: r.client_flag,
    })
}

/// Refuses an intermediate grant for a trust domain that holds an admin identity while the
/// admin API trusts the bundle for its clients (no `admin.client_ca_files`): the CA signed for
/// that grant could issue the admin identity, and the admin API would accept it.
pub(super) fn check_admin_reach(
    ctx: &Ctx,
    vault: &VaultSettings,
    admin: &AdminConfig,
) -> Result<(), ConfigError> {
    if !vault.enabled || !admin.enabled || !admin.client_ca_files.is_empty() {
        return Ok(());
    }
    for grant in &vault.intermediates {
        let reached = admin.users.keys().find(|id| {
            crate::auth::SpiffeId::parse(id).is_ok_and(|s| s.trust_domain() == grant.trust_domain)
        });
        if let Some(id) = reached {
            return Err(ctx.invalid(
                "vault_api.intermediates.trust_domain",
                format!(
                    "{}: a CA for {} could issue the admin identity {id}, which the admin API \
                     would accept; give the admin API its own CA (admin.client_ca_files) or \
                     grant another trust domain",
                    grant.name, grant.trust_domain
                ),
            ));
        }
    }
    Ok(())
}
