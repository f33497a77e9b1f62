//! `hsm-ca ceremony`: the arguments of the root ceremony and the printing of its transcript.
//! The ceremony itself is [`crate::ceremony`]; the officers at the terminal are
//! [`super::officers::Terminal`].

use std::path::{Path, PathBuf};

use super::officers::Terminal;
use super::CliError;
use crate::ceremony::{
    self, transcript, Attendance, Revocation, RevocationReason, ShareSource, SplitPlan,
    DEFAULT_CRL_DAYS,
};
use crate::secret::SecretSource;

#[derive(clap::Args, Debug, Clone)]
pub struct Attend {
    /// Someone attending (officer or witness), recorded in the transcript; repeat for each.
    #[arg(long = "officer", value_name = "NAME")]
    pub attending: Vec<String>,
    /// Folder for the outputs (removable media). Existing files are never replaced.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Go ahead without asking (scripted ceremonies).
    #[arg(long)]
    pub yes: bool,
    /// Run although a network interface is up (e.g. a network HSM on a link of its own).
    /// The interfaces that were up are recorded in the transcript.
    #[arg(long)]
    pub allow_network: bool,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ShareArgs {
    /// An officer's PIN share file ("-": the officer types it in); once per officer present.
    #[arg(long = "share", value_name = "FILE")]
    pub shares: Vec<PathBuf>,
}

/// How the PIN is split.
#[derive(clap::Args, Debug, Clone)]
pub struct SplitArgs {
    /// Number of officers (shares).
    #[arg(long)]
    pub officers: u8,
    /// Shares needed to log in.
    #[arg(long)]
    pub threshold: u8,
    /// The officers' names, one per share, in order (default officer-1 … officer-N).
    #[arg(long = "holder", value_name = "NAME")]
    pub holders: Vec<String>,
    /// Encrypt each share to a passphrase its officer types (on a non-terminal: one line per
    /// officer on stdin).
    #[arg(long)]
    pub encrypt: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CeremonyCommand {
    /// Give the token a random user PIN and split it among officers (M of N).
    InitQuorum {
        #[command(flatten)]
        split: SplitArgs,
        /// File holding the token's security-officer PIN.
        #[arg(long, value_name = "FILE")]
        so_pin_file: Option<PathBuf>,
        /// Environment variable holding the security-officer PIN.
        #[arg(long, value_name = "VAR")]
        so_pin_env: Option<String>,
        #[command(flatten)]
        attend: Attend,
    },
    /// Replace the PIN and its shares (officer change, lost share, routine rotation).
    Reshare {
        #[command(flatten)]
        split: SplitArgs,
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Generate the root key in the token and write the self-signed root certificate.
    InitRoot {
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Sign an intermediate CSR with the root key.
    SignIntermediate {
        /// The intermediate's CSR (PEM or DER).
        #[arg(long)]
        csr: PathBuf,
        /// The root whose key signs (default: the host's newest root).
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Revoke an intermediate signed by the root and write the new root CRL.
    RevokeIntermediate {
        /// The intermediate certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Why: key-compromise, ca-compromise, affiliation-changed, superseded,
        /// cessation-of-operation, … (RFC 5280 reasons); written into the CRL entry.
        #[arg(long, default_value = "unspecified")]
        reason: RevocationReason,
        #[arg(long)]
        root: Option<PathBuf>,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
        valid_days: u32,
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Sign the root CRL again (before the last one lapses).
    Crl {
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(long, default_value_t = DEFAULT_CRL_DAYS)]
        valid_days: u32,
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Create a new root key and certificate, cross-signed by the current root.
    RotateRoot {
        /// The current root (default: the host's newest root).
        #[arg(long)]
        root: Option<PathBuf>,
        #[command(flatten)]
        shares: ShareArgs,
        #[command(flatten)]
        attend: Attend,
    },
    /// Print the ceremony transcript in readable form.
    Transcript {
        /// An exported transcript (default: the host's own log).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Verify every checkpoint against these root certificate(s) (PEM) first.
        #[arg(long)]
        root_cert: Option<PathBuf>,
    },
}

impl Attend {
    /// Who attends and where the outputs go, and the officers at this terminal.
    fn split(self) -> (Attendance, Terminal) {
        (
            Attendance {
                attending: self.attending,
                out_dir: self.out_dir,
                allow_network: self.allow_network,
            },
            Terminal { yes: self.yes },
        )
    }
}

impl ShareArgs {
    /// Each `--share`: a file, or typed in ("-").
    pub(super) fn sources(&self) -> Vec<ShareSource> {
        self.shares
            .iter()
            .map(|p| {
                if p.as_os_str() == "-" {
                    ShareSource::Typed
                } else {
                    ShareSource::File(p.clone())
                }
            })
            .collect()
    }
}

impl From<SplitArgs> for SplitPlan {
    fn from(s: SplitArgs) -> Self {
        SplitPlan {
            officers: s.officers,
            threshold: s.threshold,
            holders: s.holders,
            encrypt: s.encrypt,
        }
    }
}

pub fn run(config_path: &Path, command: CeremonyCommand) -> Result<(), CliError> {
    match command {
        CeremonyCommand::InitQuorum {
            split,
            so_pin_file,
            so_pin_env,
            attend,
        } => {
            let so = match (so_pin_file, so_pin_env) {
                (Some(f), None) => SecretSource::File(f),
                (None, Some(e)) => SecretSource::Env(e),
                _ => {
                    return Err(CliError::Message(
                        "give the security officer's PIN with --so-pin-file or --so-pin-env".into(),
                    ))
                }
            };
            let (attend, room) = attend.split();
            ceremony::init_quorum(config_path, &split.into(), &so, attend, &room)?;
        }
        CeremonyCommand::Reshare {
            split,
            shares,
            attend,
        } => {
            let (attend, room) = attend.split();
            ceremony::reshare(config_path, &split.into(), &shares.sources(), attend, &room)?;
        }
        CeremonyCommand::InitRoot { shares, attend } => {
            let (attend, room) = attend.split();
            ceremony::init_root(config_path, &shares.sources(), attend, &room)?;
        }
        CeremonyCommand::SignIntermediate {
            csr,
            root,
            shares,
            attend,
        } => {
            let (attend, room) = attend.split();
            ceremony::sign_intermediate(
                config_path,
                &csr,
                root.as_deref(),
                &shares.sources(),
                attend,
                &room,
            )?;
        }
        CeremonyCommand::RevokeIntermediate {
            cert,
            reason,
            root,
            valid_days,
            shares,
            attend,
        } => {
            let (attend, room) = attend.split();
            let revocation = Revocation {
                cert: &cert,
                reason,
                root: root.as_deref(),
                valid_days,
            };
            ceremony::revoke_intermediate(
                config_path,
                revocation,
                &shares.sources(),
                attend,
                &room,
            )?;
        }
        CeremonyCommand::Crl {
            root,
            valid_days,
            shares,
            attend,
        } => {
            let (attend, room) = attend.split();
            ceremony::crl(
                config_path,
                root.as_deref(),
                valid_days,
                &shares.sources(),
                attend,
                &room,
            )?;
        }
        CeremonyCommand::RotateRoot {
            root,
            shares,
            attend,
        } => {
            let (attend, room) = attend.split();
            ceremony::rotate_root(
                config_path,
                root.as_deref(),
                &shares.sources(),
                attend,
                &room,
            )?;
        }
        CeremonyCommand::Transcript { file, root_cert } => {
            print_transcript(config_path, file.as_deref(), root_cert.as_deref())?
        }
    }
    Ok(())
}

/// Verifies a transcript (the host's log, or an exported file) and prints it.
fn print_transcript(
    config_path: &Path,
    file: Option<&Path>,
    root_cert: Option<&Path>,
) -> Result<(), CliError> {
    let stored = match file {
        Some(path) => transcript::read_file(path)?,
        None => transcript::read_host(config_path)?,
    };
    let verified = transcript::verify(&stored, root_cert)?;
    let summary = &verified.summary;
    say_raw!("{}", transcript::render(&verified.records));
    say!();
    if summary.signatures_checked {
        say!(
            "Verified: {} records; {} checkpoint(s) signed by the given root(s); {} record(s) after the last.",
            summary.records, summary.checkpoints, summary.unsigned_tail
        );
    } else {
        say!(
            "Chain intact ({} records); signatures not checked (give --root-cert).",
            summary.records
        );
    }
    Ok(())
}
