//! The `hsm-ca` binary.

use clap::Parser;

fn main() {
    use std::io::Write as _;
    let cli = hsm_ca::cli::Cli::parse();
    let file = hsm_ca::config::peek_log(&cli.config).unwrap_or_default();
    if let Err(e) = hsm_ca::cli::logging::init(cli.log_level.as_deref(), cli.log_format, &file) {
        let _ = writeln!(std::io::stderr(), "error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = hsm_ca::cli::run(cli) {
        let _ = writeln!(std::io::stderr(), "error: {e}");
        std::process::exit(e.exit_code());
    }
}
