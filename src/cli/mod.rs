//! The command line: clap arguments, prompting and printing. The work is done elsewhere —
//! [`crate::authority`] for the appliance's certificates, [`crate::ceremony`] for the root
//! ceremony, [`crate::dev`] for the development appliance — and this module only loads the
//! config, calls it and prints what happened. Every failure is one line on stderr and a
//! non-zero exit code.

/// Prints a line to stdout; a closed stdout (a pipe whose reader went away) is not an error,
/// so that printing can never abort a command halfway through.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// [`say!`] without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

mod acme;
mod admin;
mod audit;
mod cacerts;
mod ceremony;
mod commands;
mod config_check;
mod dev;
mod generate;
mod keys;
pub mod logging;
mod officers;
pub mod output;
mod request;
mod serve;

pub use crate::dev::appliance::{DEV_ADMIN_ID, DEV_TOKEN_ISSUER, DEV_TOKEN_KID};

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// hsm-ca: a certificate authority whose keys never leave the HSM.
#[derive(Parser, Debug)]
#[command(name = "hsm-ca", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "HSM_CA_CONFIG",
        default_value = "hsm-ca.toml"
    )]
    pub config: PathBuf,
    /// Which log events are written to stderr: a level (error, warn, info, debug, trace) or a
    /// filter such as `hsm_ca=debug,warn`. Without it: `RUST_LOG`, else the config's
    /// `[log] level`, else warn.
    #[arg(long, global = true, env = "HSM_CA_LOG")]
    pub log_level: Option<String>,
    /// Log line format: text, or one JSON object per line. Without it: the config's
    /// `[log] format`, else text.
    #[arg(long, global = true, env = "HSM_CA_LOG_FORMAT", value_enum)]
    pub log_format: Option<logging::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Root ceremony commands (run on the air-gapped host).
    #[command(subcommand)]
    Ceremony(ceremony::CeremonyCommand),
    /// Intermediate CA lifecycle on the online appliance.
    #[command(subcommand)]
    Intermediate(IntermediateCommand),
    /// Keys in the device.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Describe every certificate in a PEM file.
    Inspect {
        /// PEM file with one or more certificates.
        file: PathBuf,
        #[command(flatten)]
        output: output::OutputArgs,
    },
    /// Run the appliance: the Istio certificate API and the admin API, until SIGTERM or Ctrl-C.
    Serve {
        /// Serve gRPC on this address instead of server.listen (port 0: any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the whole appliance locally on an embedded SoftHSM token.
    Dev(dev::DevArgs),
    /// Request a workload certificate from a running CA, as istio-agent does.
    Request(Box<request::RequestArgs>),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check the configuration file without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write Istio's plug-in CA files (cacerts) for istiod's intermediate and print the
    /// kubectl line that makes the secret.
    Cacerts {
        /// istiod's intermediate certificate (PEM), signed by a root of the trust bundle.
        #[arg(long)]
        cert: PathBuf,
        /// Where to write ca-cert.pem, cert-chain.pem and root-cert.pem.
        #[arg(long)]
        out_dir: PathBuf,
        /// Where istiod's administrator keeps its key (named in the kubectl line, never read).
        #[arg(long, default_value = "ca-key.pem")]
        key: PathBuf,
        /// Namespace of the secret.
        #[arg(long, default_value = "istio-system")]
        namespace: String,
    },
    /// Print the trust bundle (every root clients must trust).
    Bundle {
        /// pem (root-cert.pem), spiffe (SPIFFE bundle JSON) or configmap (Istio's
        /// istio-ca-root-cert ConfigMap for `kubectl apply -f -`).
        #[arg(long, default_value = "pem")]
        format: BundleFormat,
        /// Namespace of the ConfigMap.
        #[arg(long, default_value = "istio-system")]
        namespace: String,
        /// json: each root's fields and PEM (instead of --format).
        #[command(flatten)]
        output: output::OutputArgs,
    },
    /// Talk to a running appliance's admin API (mutual TLS): state, intermediates, roots,
    /// revocations, CRLs, proposals and approvals, audit, metrics.
    Admin(Box<admin::AdminArgs>),
    /// Write the man page or shell completions (what the package installs).
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// The ACME front door: External Account Binding keys.
    #[command(subcommand)]
    Acme(acme::AcmeCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate the config file (every error names its key); exit 1 when it is invalid.
    Check {
        /// Also open the token or TPM and the CA state, and report the keys the appliance
        /// would use.
        #[arg(long)]
        devices: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleFormat {
    Pem,
    Spiffe,
    Configmap,
}

#[derive(Subcommand, Debug)]
pub enum IntermediateCommand {
    /// Generate the next intermediate key in the token and write its CSR.
    New {
        /// Where to write the CSR.
        #[arg(long, default_value = "intermediate.csr")]
        out: PathBuf,
    },
    /// Check a signed intermediate certificate and record it.
    Install {
        /// The signed intermediate certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// List installed intermediates and their state.
    List {
        #[command(flatten)]
        output: output::OutputArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List the keys in the device with the attributes that prove they cannot leave it.
    List {
        /// On a ceremony host whose PIN is held as shares (`keystore.pin_shares`): the
        /// officers' shares that open the token.
        #[command(flatten)]
        shares: ceremony::ShareArgs,
        #[command(flatten)]
        output: output::OutputArgs,
    },
    /// Change the token's user PIN: log in with the PIN the config names and set a new one
    /// (the appliance must be stopped; afterwards put the new PIN where the config reads it).
    ChangePin {
        /// File holding the new PIN (a trailing newline is not part of it).
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "new_pin_env",
            required_unless_present = "new_pin_env"
        )]
        new_pin_file: Option<PathBuf>,
        /// Environment variable holding the new PIN.
        #[arg(long, value_name = "VAR")]
        new_pin_env: Option<String>,
    },
}

/// A command failure: printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    #[error(transparent)]
    Dev(#[from] crate::dev::DevError),
    #[error(transparent)]
    Ceremony(#[from] crate::ceremony::CeremonyError),
    #[error("{0}")]
    Message(String),
    /// Something did not verify (an audit chain, a ceremony transcript): exit code 3.
    #[error("{0}")]
    Verification(String),
}

impl CliError {
    /// The process's exit code: 1 when the operation failed, 3 when something did not verify
    /// (2, a usage error, comes from the argument parser).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Verification(_) => 3,
            CliError::Ceremony(crate::ceremony::CeremonyError::TranscriptInvalid(_)) => 3,
            _ => 1,
        }
    }
}

impl From<crate::keystore::KeystoreError> for CliError {
    fn from(e: crate::keystore::KeystoreError) -> Self {
        CliError::Authority(e.into())
    }
}

impl From<crate::ca::CaError> for CliError {
    fn from(e: crate::ca::CaError) -> Self {
        CliError::Authority(e.into())
    }
}

impl From<crate::state::StateError> for CliError {
    fn from(e: crate::state::StateError) -> Self {
        CliError::Authority(e.into())
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Inspect { file, output } => commands::inspect(&file, output),
        Command::Dev(args) => dev::run(args),
        Command::Serve { listen } => serve::serve(&cli.config, listen),
        Command::Audit(cmd) => audit::run(&cli.config, cmd),
        Command::Bundle {
            format,
            namespace,
            output,
        } => commands::bundle(&cli.config, format, &namespace, output),
        Command::Cacerts {
            cert,
            out_dir,
            key,
            namespace,
        } => cacerts::cacerts(&cli.config, &cert, &out_dir, &key, &namespace),
        Command::Request(args) => request::run(*args),
        Command::Config(ConfigCommand::Check { devices }) => {
            config_check::check(&cli.config, devices)
        }
        Command::Keys(KeysCommand::List { shares, output }) => {
            keys::keys_list(&cli.config, &shares.sources(), output)
        }
        Command::Keys(KeysCommand::ChangePin {
            new_pin_file,
            new_pin_env,
        }) => {
            let new = match (new_pin_file, new_pin_env) {
                (Some(f), _) => crate::secret::SecretSource::File(f),
                (None, Some(v)) => crate::secret::SecretSource::Env(v),
                (None, None) => {
                    return Err(CliError::Message(
                        "give --new-pin-file or --new-pin-env".into(),
                    ))
                }
            };
            keys::keys_change_pin(&cli.config, &new)
        }
        Command::Ceremony(cmd) => ceremony::run(&cli.config, cmd),
        Command::Intermediate(IntermediateCommand::New { out }) => {
            commands::intermediate_new(&cli.config, &out)
        }
        Command::Intermediate(IntermediateCommand::Install { cert }) => {
            commands::intermediate_install(&cli.config, &cert)
        }
        Command::Intermediate(IntermediateCommand::List { output }) => {
            commands::intermediate_list(&cli.config, output)
        }
        Command::Generate(cmd) => generate::run(cmd),
        Command::Admin(args) => admin::run(&cli.config, *args),
        Command::Acme(cmd) => acme::run(&cli.config, cmd),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
