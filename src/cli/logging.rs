//! Where the appliance's log lines go and what they look like: stderr, filtered by
//! `--log-level` (or `HSM_CA_LOG`, else `RUST_LOG`, else the config's `[log] level`, else
//! `warn`), as text (colours only on a terminal, never in a journal or a file) or as one JSON
//! object per line (`--log-format`, `HSM_CA_LOG_FORMAT`, else `[log] format`, else text). Events never carry a
//! secret or a token; that is up to the modules that log, not to this one.

use std::io::IsTerminal;

use super::CliError;
use crate::config::{LogConfig, LogOutput};

/// The form of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `message` and the event's
    /// fields), for journald, Loki or Elasticsearch.
    Json,
}

/// The filter in effect: the flag or `HSM_CA_LOG` (clap reads both), else `RUST_LOG`, else
/// the config's, else `warn`.
fn filter_spec(flag: Option<&str>, file: &LogConfig) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .or_else(|| file.level.clone())
        .unwrap_or_else(|| "warn".into())
}

/// The format in effect: the flag or `HSM_CA_LOG_FORMAT`, else the config's, else text.
fn format_of(flag: Option<LogFormat>, file: &LogConfig) -> LogFormat {
    flag.unwrap_or(match file.format {
        Some(LogOutput::Json) => LogFormat::Json,
        Some(LogOutput::Text) | None => LogFormat::Text,
    })
}

/// Installs the process's log subscriber; `file` is the config's `[log]` section (see
/// [`crate::config::peek_log`]). A filter that does not parse is a usage error.
pub fn init(
    level: Option<&str>,
    format: Option<LogFormat>,
    file: &LogConfig,
) -> Result<(), CliError> {
    let spec = filter_spec(level, file);
    let format = format_of(format, file);
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&spec)
        .map_err(|e| CliError::Message(format!("log level {spec:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_config_and_warn_is_the_default() {
        let none = LogConfig::default();
        let file = LogConfig {
            level: Some("info".into()),
            format: Some(LogOutput::Json),
        };
        assert_eq!(filter_spec(Some("debug"), &file), "debug");
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(filter_spec(None, &none), "warn");
            assert_eq!(filter_spec(None, &file), "info");
        }
        assert_eq!(format_of(None, &none), LogFormat::Text);
        assert_eq!(format_of(None, &file), LogFormat::Json);
        assert_eq!(format_of(Some(LogFormat::Text), &file), LogFormat::Text);
    }
}
