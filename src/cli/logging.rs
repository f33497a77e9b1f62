//! Where the appliance's log lines go and what they look like: stderr, filtered by
//! `--log-level` (or `HSM_CA_LOG`, else `RUST_LOG`, else `warn`), as text (colours only on a
//! terminal, never in a journal or a file) or as one JSON object per line. Events never carry a
//! secret or a token; that is up to the modules that log, not to this one.

use std::io::IsTerminal;

use super::CliError;

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
/// `warn`.
fn filter_spec(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "warn".into())
}

/// Installs the process's log subscriber. A filter that does not parse is a usage error.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), CliError> {
    let spec = filter_spec(level);
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
    fn the_flag_wins_and_warn_is_the_default() {
        assert_eq!(filter_spec(Some("debug")), "debug");
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(filter_spec(None), "warn");
        }
    }
}
