//! The `[acme]` section: the ACME front door ([`crate::acme`]) for cert-manager, certbot,
//! lego and the other ACME clients. Off unless `enabled = true`. External Account Binding is
//! required unless `eab_required = false`; the validation ports and resolver are settable for
//! isolated networks and test harnesses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Ctx};
use crate::tls::ConnectionLimits;

/// The `[acme]` section, validated.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// The base URL clients reach the listener at (`https://ca.example.com:8443`); without
    /// it, URLs are made from the request's `Host` header.
    pub external_url: Option<String>,
    /// Serve this certificate chain and key instead of the appliance's serving certificate.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Accounts must be bound to an External Account Binding key.
    pub eab_required: bool,
    pub connections: ConnectionLimits,
    pub validation: ValidationSettings,
    /// Validity of a certificate when the order asks none.
    pub default_validity: Duration,
    /// No certificate is valid for longer (an EAB key's policy may cap it further).
    pub max_validity: Duration,
}

/// How challenges are checked from the appliance.
#[derive(Debug, Clone)]
pub struct ValidationSettings {
    /// Port the http-01 request goes to (80 on the Internet).
    pub http01_port: u16,
    /// Port the tls-alpn-01 handshake goes to (443 on the Internet).
    pub tls_alpn01_port: u16,
    /// DNS server (UDP) asked for TXT records and addresses; the system resolver when unset
    /// (dns-01 then needs it set).
    pub resolver: Option<SocketAddr>,
    /// Each validation attempt gives up after this long.
    pub timeout: Duration,
    /// Validations run at once at most; more wait.
    pub max_concurrent: usize,
}

impl Default for AcmeSettings {
    fn default() -> Self {
        AcmeSettings {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            external_url: None,
            tls_files: None,
            eab_required: true,
            connections: ConnectionLimits {
                max_connections: 256,
                handshake_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(120),
            },
            validation: ValidationSettings {
                http01_port: 80,
                tls_alpn01_port: 443,
                resolver: None,
                timeout: Duration::from_secs(10),
                max_concurrent: 16,
            },
            default_validity: Duration::from_secs(90 * 86400),
            max_validity: Duration::from_secs(90 * 86400),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: String,
    external_url: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    eab_required: bool,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_validity")]
    default_validity_secs: u64,
    #[serde(default = "default_validity")]
    max_validity_secs: u64,
    #[serde(default)]
    validation: Option<RawValidation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValidation {
    #[serde(default = "default_http01_port")]
    http01_port: u16,
    #[serde(default = "default_tls_alpn01_port")]
    tls_alpn01_port: u16,
    resolver: Option<String>,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_max_concurrent")]
    max_concurrent: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    256
}
fn default_validity() -> u64 {
    90 * 86400
}
fn default_http01_port() -> u16 {
    80
}
fn default_tls_alpn01_port() -> u16 {
    443
}
fn default_timeout() -> u64 {
    10
}
fn default_max_concurrent() -> usize {
    16
}

pub(super) fn acme(ctx: &Ctx, raw: Option<RawAcme>) -> Result<AcmeSettings, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AcmeSettings::default());
    };
    let defaults = AcmeSettings::default();
    let listen = raw.listen.parse().map_err(|_| {
        ctx.invalid(
            "acme.listen",
            format!("{:?} is not an address:port", raw.listen),
        )
    })?;
    let external_url = match raw.external_url {
        None => None,
        Some(u) => {
            let rest = u.strip_prefix("https://").ok_or_else(|| {
                ctx.invalid(
                    "acme.external_url",
                    format!("{u:?} must start with https://"),
                )
            })?;
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
                return Err(ctx.invalid(
                    "acme.external_url",
                    format!("{u:?} must be https://host[:port] without a path"),
                ));
            }
            Some(format!("https://{host}"))
        }
    };
    let tls_files = match (raw.cert_file, raw.key_file) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((ctx.resolve(c), ctx.resolve(k))),
        _ => {
            return Err(ctx.invalid(
                "acme.cert_file",
                "cert_file and key_file go together (or neither: the serving certificate)",
            ))
        }
    };
    if raw.max_connections == 0 {
        return Err(ctx.invalid("acme.max_connections", "must be at least 1"));
    }
    if raw.default_validity_secs == 0 || raw.default_validity_secs > raw.max_validity_secs {
        return Err(ctx.invalid(
            "acme.default_validity_secs",
            "must be at least 1 and at most max_validity_secs",
        ));
    }
    let validation = match raw.validation {
        None => defaults.validation,
        Some(v) => {
            let resolver = v
                .resolver
                .map(|r| {
                    r.parse().map_err(|_| {
                        ctx.invalid(
                            "acme.validation.resolver",
                            format!("{r:?} is not an address:port"),
                        )
                    })
                })
                .transpose()?;
            if v.http01_port == 0 {
                return Err(ctx.invalid("acme.validation.http01_port", "must not be 0"));
            }
            if v.tls_alpn01_port == 0 {
                return Err(ctx.invalid("acme.validation.tls_alpn01_port", "must not be 0"));
            }
            if !(1..=300).contains(&v.timeout_secs) {
                return Err(
                    ctx.invalid("acme.validation.timeout_secs", "must be between 1 and 300")
                );
            }
            if !(1..=1024).contains(&v.max_concurrent) {
                return Err(ctx.invalid(
                    "acme.validation.max_concurrent",
                    "must be between 1 and 1024",
                ));
            }
            ValidationSettings {
                http01_port: v.http01_port,
                tls_alpn01_port: v.tls_alpn01_port,
                resolver,
                timeout: Duration::from_secs(v.timeout_secs),
                max_concurrent: v.max_concurrent,
            }
        }
    };
    Ok(AcmeSettings {
        enabled: raw.enabled,
        listen,
        external_url,
        tls_files,
        eab_required: raw.eab_required,
        connections: ConnectionLimits {
            max_connections: raw.max_connections,
            ..defaults.connections
        },
        validation,
        default_validity: Duration::from_secs(raw.default_validity_secs),
        max_validity: Duration::from_secs(raw.max_validity_secs),
    })
}
