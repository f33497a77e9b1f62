//! The `[admin_client]` section: how `hsm-ca admin` reaches an appliance's admin API (its URL,
//! the CA its certificate chains to, and the admin's client certificate and key). The appliance
//! itself never reads it. A workstation's file may hold only this section
//! ([`load_admin_client`]); flags override each key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminClient {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

/// Where `hsm-ca admin` connects and with which credentials; each may be left to a flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminClientConfig {
    /// `https://host:port` of the admin API.
    pub url: Option<String>,
    /// Trust anchors (PEM) for the admin API's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// The admin's client certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// The admin's private key (PKCS#8 PEM).
    pub key_file: Option<PathBuf>,
}

pub(super) fn admin_client(
    ctx: &Ctx,
    raw: Option<RawAdminClient>,
) -> Result<AdminClientConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    if let Some(url) = &raw.url {
        crate::https::split_url(url).map_err(|e| ctx.invalid("admin_client.url", e.to_string()))?;
    }
    if raw.cert_file.is_some() != raw.key_file.is_some() {
        return Err(ctx.invalid(
            "admin_client.key_file",
            "cert_file and key_file go together",
        ));
    }
    Ok(AdminClientConfig {
        url: raw.url,
        ca_file: raw.ca_file.map(|p| ctx.resolve(p)),
        cert_file: raw.cert_file.map(|p| ctx.resolve(p)),
        key_file: raw.key_file.map(|p| ctx.resolve(p)),
    })
}

/// Reads only `[admin_client]` of the file at `path` (and, when it gives no `url`, the
/// appliance's `admin.listen`), without validating the rest: an admin's workstation keeps a
/// file with just this section. A file that does not exist gives an empty section.
pub fn load_admin_client(path: &Path) -> Result<AdminClientConfig, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AdminClientConfig::default())
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parse = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse(e.message().into()))?;
    let raw: Option<RawAdminClient> = table
        .remove("admin_client")
        .map(|v| v.try_into())
        .transpose()
        .map_err(|e: toml::de::Error| parse(format!("admin_client: {}", e.message())))?;
    let ctx = Ctx::for_file(path);
    let mut client = admin_client(&ctx, raw)?;
    if client.url.is_none() {
        let listen = table
            .get("admin")
            .and_then(|a| a.get("listen"))
            .and_then(|l| l.as_str())
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok());
        client.url = listen.map(|mut addr| {
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("https://{addr}")
        });
    }
    Ok(client)
}
