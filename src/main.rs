//! The `hsm-ca` binary.

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HSM_CA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = hsm_ca::cli::Cli::parse();
    if let Err(e) = hsm_ca::cli::run(cli) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {e}");
        std::process::exit(1);
    }
}
