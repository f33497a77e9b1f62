//! `--output text|json` for the commands that print data (`keys list`, `intermediate list`,
//! `inspect`, `bundle`): JSON is one pretty-printed document on stdout, with field names that
//! stay stable for scripts.

use serde::Serialize;

use super::CliError;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct OutputArgs {
    /// text (default) or json.
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

impl OutputArgs {
    pub fn json(self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Prints `value` as pretty JSON and a newline.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Message(format!("cannot write JSON: {e}")))?;
    say!("{text}");
    Ok(())
}
