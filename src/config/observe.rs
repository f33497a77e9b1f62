//! The `[metrics]` section: the optional plaintext listener that serves only `/metrics`, for
//! Prometheus to scrape without a client certificate (the admin API's `/metrics` needs one).
//! The `[log]` section: the log filter and line format, below the command line's `--log-level`
//! / `--log-format` and their environment variables (read before the rest of the config, by
//! [`peek_log`]).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Ctx};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// `address:port`; absent (the default): no plaintext listener.
    #[serde(default)]
    pub(super) listen: Option<String>,
}

/// Where `/metrics` is served in plaintext, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

pub(super) fn metrics(ctx: &Ctx, raw: RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let listen = raw
        .listen
        .map(|l| {
            l.parse()
                .map_err(|_| ctx.invalid("metrics.listen", format!("{l:?} is not an address:port")))
        })
        .transpose()?;
    Ok(MetricsConfig { listen })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) level: Option<String>,
    #[serde(default)]
    pub(super) format: Option<String>,
}

/// The form of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Text,
    Json,
}

/// `[log]`: what the config asks for when neither a flag nor the environment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// A level or filter, as `--log-level` takes.
    pub level: Option<String>,
    pub format: Option<LogOutput>,
}

fn check_log(raw: RawLog) -> Result<LogConfig, (&'static str, String)> {
    if let Some(level) = &raw.level {
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map_err(|e| ("log.level", format!("{level:?}: {e}")))?;
    }
    let format = match raw.format.as_deref() {
        None => None,
        Some("text") => Some(LogOutput::Text),
        Some("json") => Some(LogOutput::Json),
        Some(other) => {
            return Err(("log.format", format!("{other:?} is not text or json")));
        }
    };
    Ok(LogConfig {
        level: raw.level,
        format,
    })
}

pub(super) fn log(ctx: &Ctx, raw: RawLog) -> Result<LogConfig, ConfigError> {
    check_log(raw).map_err(|(key, problem)| ctx.invalid(key, problem))
}

/// The `[log]` section of the config at `path`, read before logging starts and before the
/// command loads the config: `None` when the file or the section is missing or does not
/// validate (the command reports that when it loads the config).
pub fn peek_log(path: &Path) -> Option<LogConfig> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let raw: RawLog = table.get("log")?.clone().try_into().ok()?;
    check_log(raw).ok()
}

/// The dotted key (`workload.max_ttl_secs`) of a `key = value` line holding byte `offset` of
/// `text`, for parse errors (a wrong type) that toml reports by position only.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    });
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_names_its_key() {
        let text = "trust_domain = \"x\"\n[workload]\nmax_ttl_secs = \"long\"\n";
        let at = text.find("\"long").expect("value");
        assert_eq!(key_at(text, at).as_deref(), Some("workload.max_ttl_secs"));
        assert_eq!(key_at(text, 3).as_deref(), Some("trust_domain"));
        assert_eq!(key_at(text, text.find("[work").expect("header")), None);
    }

    #[test]
    fn the_log_section_is_read_before_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hsm-ca.toml");
        std::fs::write(
            &path,
            "[log]\nlevel = \"hsm_ca=debug,warn\"\nformat = \"json\"\n[unknown]\n",
        )
        .expect("write");
        assert_eq!(
            peek_log(&path),
            Some(LogConfig {
                level: Some("hsm_ca=debug,warn".into()),
                format: Some(LogOutput::Json),
            })
        );
        std::fs::write(&path, "[log]\nformat = \"xml\"\n").expect("write");
        assert_eq!(peek_log(&path), None);
        assert_eq!(peek_log(&dir.path().join("missing.toml")), None);
    }
}
