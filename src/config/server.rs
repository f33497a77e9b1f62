//! The `[server]`, `[[clusters]]` and `[authorization]` sections: the issuance listener and its
//! serving certificate, whose tokens are accepted, and who may ask for other identities.

use std::time::Duration;

use super::raw::{RawAuthorization, RawCluster, RawServer};
use super::{AuthorizationConfig, ClusterConfig, ConfigError, Ctx, ServerConfig};
use crate::auth::{RegistrationAuthority, SpiffeId};

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
        clusters.push(ClusterConfig {
            id: c.id,
            issuer: c.issuer,
            audiences: c.audiences,
            jwks_file: ctx.resolve(c.jwks_file),
        });
    }
    Ok(clusters)
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
