//! The `[server]`, `[[clusters]]` and `[authorization]` sections: the issuance listener and its
//! serving certificate, whose tokens are accepted, and who may ask for other identities.

use std::time::Duration;

use super::raw::{RawAuthorization, RawCluster, RawServer};
use super::{AuthorizationConfig, ClusterConfig, ConfigError, Ctx, ServerConfig};
use crate::auth::{JwksEndpoint, JwksSource, RegistrationAuthority, SpiffeId};
use crate::secret::SecretSource;

pub(super) fn server(ctx: &Ctx, srv: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen = srv.listen.parse().map_err(|_| {
        ctx.invalid(
            "server.listen",
            format!("{:?} is not an address:port", srv.listen),
        )
    })?;
    if srv.dns_names.is_empty() && srv.ip_addresses.is_empty() {
        return Err(ctx.invalid(
            "server.dns_names",
            "the serving certificate needs at least one DNS name or IP address",
        ));
    }
    for name in &srv.dns_names {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*'))
        {
            return Err(ctx.invalid("server.dns_names", format!("{name:?} is not a DNS name")));
        }
    }
    let ip_addresses = srv
        .ip_addresses
        .iter()
        .map(|ip| {
            ip.parse().map_err(|_| {
                ctx.invalid(
                    "server.ip_addresses",
                    format!("{ip:?} is not an IP address"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if srv.serving_cert_ttl_secs < 2 {
        return Err(ctx.invalid("server.serving_cert_ttl_secs", "must be at least 2"));
    }
    let connections = super::connection_limits(
        ctx,
        "server",
        srv.max_connections,
        srv.handshake_timeout_secs,
        srv.idle_timeout_secs,
    )?;
    Ok(ServerConfig {
        connections,
        listen,
        dns_names: srv.dns_names,
        ip_addresses,
        client_auth: srv.client_auth,
        serving_cert_ttl: Duration::from_secs(srv.serving_cert_ttl_secs),
    })
}

pub(super) fn clusters(ctx: &Ctx, raw: Vec<RawCluster>) -> Result<Vec<ClusterConfig>, ConfigError> {
    let mut clusters: Vec<ClusterConfig> = Vec::new();
    for c in raw {
        if c.issuer.is_empty() {
            return Err(ctx.invalid(
                "clusters.issuer",
                format!("cluster {:?} needs an issuer", c.id),
            ));
        }
        if c.audiences.is_empty() {
            return Err(ctx.invalid(
                "clusters.audiences",
                format!("cluster {:?} needs an audience", c.id),
            ));
        }
        if clusters.iter().any(|k| k.id == c.id) {
            return Err(ctx.invalid("clusters.id", format!("cluster {:?} is listed twice", c.id)));
        }
        let keys = key_source(ctx, &c)?;
        let refresh_secs = c.refresh_secs.unwrap_or(DEFAULT_REFRESH_SECS);
        if refresh_secs == 0 {
            return Err(ctx.invalid(
                "clusters.refresh_secs",
                format!("cluster {:?}: must be at least 1", c.id),
            ));
        }
        clusters.push(ClusterConfig {
            id: c.id,
            issuer: c.issuer,
            audiences: c.audiences,
            keys,
            refresh: Duration::from_secs(refresh_secs),
        });
    }
    Ok(clusters)
}

/// How often a cluster's keys are re-read or fetched when `refresh_secs` is not given.
pub const DEFAULT_REFRESH_SECS: u64 = 60;

/// Exactly one of `jwks_file`, `jwks_url` and `discovery = true`; `ca_file` (and optionally
/// `token_file`) only with the HTTPS ones, where `ca_file` is required.
fn key_source(ctx: &Ctx, c: &RawCluster) -> Result<JwksSource, ConfigError> {
    let given = [c.jwks_file.is_some(), c.jwks_url.is_some(), c.discovery];
    let key = match (&c.jwks_file, &c.jwks_url, c.discovery) {
        (Some(_), _, _) => "clusters.jwks_file",
        (None, Some(_), _) => "clusters.jwks_url",
        _ => "clusters.discovery",
    };
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            return Err(ctx.invalid(
                "clusters.jwks_file",
                format!(
                    "cluster {:?} needs its token keys: jwks_file, jwks_url or discovery = true",
                    c.id
                ),
            ))
        }
        _ => {
            return Err(ctx.invalid(
                key,
                format!(
                    "cluster {:?}: give only one of jwks_file, jwks_url and discovery = true",
                    c.id
                ),
            ))
        }
    }
    if let Some(file) = &c.jwks_file {
        for (name, set) in [
            ("clusters.ca_file", c.ca_file.is_some()),
            ("clusters.token_file", c.token_file.is_some()),
        ] {
            if set {
                return Err(ctx.invalid(
                    name,
                    format!(
                        "cluster {:?}: only with jwks_url or discovery, not jwks_file",
                        c.id
                    ),
                ));
            }
        }
        return Ok(JwksSource::File(ctx.resolve(file.clone())));
    }
    let endpoint = match &c.jwks_url {
        Some(url) => {
            crate::https::split_url(url).map_err(|e| {
                ctx.invalid("clusters.jwks_url", format!("cluster {:?}: {e}", c.id))
            })?;
            JwksEndpoint::Url(url.clone())
        }
        None => {
            crate::https::split_url(&c.issuer).map_err(|_| {
                ctx.invalid(
                    "clusters.discovery",
                    format!(
                        "cluster {:?}: discovery needs an https:// issuer, not {:?}",
                        c.id, c.issuer
                    ),
                )
            })?;
            JwksEndpoint::Discovery
        }
    };
    let ca_file = c.ca_file.clone().ok_or_else(|| {
        ctx.invalid(
            "clusters.ca_file",
            format!(
                "cluster {:?}: jwks_url and discovery need ca_file (the CA of the server's \
                 certificate, such as the cluster's ca.crt)",
                c.id
            ),
        )
    })?;
    Ok(JwksSource::Https {
        endpoint,
        ca_file: ctx.resolve(ca_file),
        token: c
            .token_file
            .clone()
            .map(|t| SecretSource::File(ctx.resolve(t))),
    })
}

pub(super) fn authorization(
    ctx: &Ctx,
    raw: RawAuthorization,
) -> Result<AuthorizationConfig, ConfigError> {
    let mut authorization = AuthorizationConfig::default();
    for account in raw.trusted_node_accounts {
        let (ns, sa) = account
            .split_once('/')
            .filter(|(n, s)| !n.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                ctx.invalid(
                    "authorization.trusted_node_accounts",
                    format!("{account:?} is not <namespace>/<service account>"),
                )
            })?;
        authorization
            .trusted_node_accounts
            .push((ns.to_string(), sa.to_string()));
    }
    for ra in raw.registration_authorities {
        let identity = SpiffeId::parse(&ra.identity).map_err(|e| {
            ctx.invalid(
                "authorization.registration_authorities.identity",
                e.to_string(),
            )
        })?;
        if ra.namespaces.is_empty() {
            return Err(ctx.invalid(
                "authorization.registration_authorities.namespaces",
                format!("{identity} needs at least one namespace (or \"*\")"),
            ));
        }
        authorization
            .registration_authorities
            .push(RegistrationAuthority {
                identity,
                namespaces: ra.namespaces,
            });
    }
    Ok(authorization)
}
