//! The root ceremony, run on an offline host in front of officers and witnesses.
//!
//! Every command that uses the token follows the same steps, so that a transcript always reads
//! the same way and nothing is half done:
//! 1. read the config, refuse to run with a network interface up (unless `--allow-network`),
//!    and check that no output file exists yet;
//! 2. rebuild the PIN from the officers' shares when the token's PIN is held as shares — too
//!    few, mixed or altered shares stop here, before the token is opened or anything recorded;
//! 3. show what is about to happen and ask for confirmation (`--yes` for scripts);
//! 4. record the start (who attended, which shares) in the host's own audit chain, log in, do
//!    the work, write the outputs to `--out-dir`, record their SHA-256, sign the chain head
//!    with the root key, and write the whole chain (`transcript.jsonl`) and a readable
//!    rendering (`transcript.txt`) next to the outputs.
//!
//! A failure after step 4 began is recorded (`ceremony_failed`) and signed when a root key is
//! at hand. Nothing here opens a network socket.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::CliError;
use crate::admin::control::rfc3339;
use crate::audit::{self, AuditEvent, AuditRecord, HostLog};
use crate::authority::{self, read_certificates, write_file, write_secret_file};
use crate::ca::inspect::{self, check_issued_by, parse_certificate, serial_hex};
use crate::ca::{self, fingerprint, fingerprint_id, IssuedCert, IssuingCa};
use crate::config::{BackendSettings, Config};
use crate::keystore::pkcs11::{pin as token_pin, Pkcs11Settings, TokenSelector};
use crate::keystore::{self, KeyId, KeyStore, SignatureScheme};
use crate::quorum::{self, SealedShare, Share};
use crate::secret::{Secret, SecretSource};
use crate::state::{CaState, RevocationRecord, RootRecord};

/// How long a root CRL signed in a ceremony is valid by default.
const DEFAULT_CRL_DAYS: u32 = 30;

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

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl Reason {
    fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::CaCompromise => "ca-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
        }
    }
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
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: Reason,
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
                    return Err(msg(
                        "give the security officer's PIN with --so-pin-file or --so-pin-env",
                    ))
                }
            };
            init_quorum(config_path, split, so, attend)
        }
        CeremonyCommand::Reshare {
            split,
            shares,
            attend,
        } => reshare(config_path, split, shares, attend),
        CeremonyCommand::InitRoot { shares, attend } => init_root(config_path, shares, attend),
        CeremonyCommand::SignIntermediate {
            csr,
            root,
            shares,
            attend,
        } => sign_intermediate(config_path, &csr, root, shares, attend),
        CeremonyCommand::RevokeIntermediate {
            cert,
            reason,
            root,
            valid_days,
            shares,
            attend,
        } => revoke_intermediate(config_path, &cert, reason, root, valid_days, shares, attend),
        CeremonyCommand::Crl {
            root,
            valid_days,
            shares,
            attend,
        } => crl(config_path, root, valid_days, shares, attend),
        CeremonyCommand::RotateRoot {
            root,
            shares,
            attend,
        } => rotate_root(config_path, root, shares, attend),
        CeremonyCommand::Transcript { file, root_cert } => transcript(config_path, file, root_cert),
    }
}

fn msg(text: impl Into<String>) -> CliError {
    CliError::Message(text.into())
}

// ---------------------------------------------------------------------------------------------
// Talking to the officers

fn stdin_line(prompt: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    let n = stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| msg(format!("cannot read the terminal: {e}")))?;
    if n == 0 {
        return Err(msg(format!("no answer on stdin to: {}", prompt.trim())));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// A passphrase: without echo on a terminal, else one line of stdin.
fn passphrase(prompt: &str) -> Result<Secret, CliError> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| msg(format!("cannot read the passphrase: {e}")))?
    } else {
        stdin_line(prompt)?
    };
    Ok(Secret::new(value))
}

fn confirm(yes: bool, question: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(msg(
            "refusing to go ahead without confirmation: run on a terminal or pass --yes",
        ));
    }
    let answer = stdin_line(&format!("{question} [y/N] "))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(msg("stopped: not confirmed; nothing was done"))
    }
}

/// Reads one share: a file, or typed in ("-") until its END line or an empty line.
fn read_share(path: &Path) -> Result<SealedShare, CliError> {
    let (source, text) = if path.as_os_str() == "-" {
        eprintln!("Type your share (the lines between BEGIN and END), then an empty line:");
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| msg(format!("cannot read the share: {e}")))?;
            if n == 0 || line.trim().is_empty() || line.contains("END HSM-CA PIN SHARE") {
                break;
            }
            if !line.contains("BEGIN HSM-CA PIN SHARE") {
                text.push_str(&line);
            }
        }
        ("typed-in share".to_string(), text)
    } else {
        let text =
            std::fs::read_to_string(path).map_err(|e| msg(format!("{}: {e}", path.display())))?;
        (path.display().to_string(), text)
    };
    SealedShare::parse(&source, &text).map_err(|e| msg(e.to_string()))
}

/// Opens the shares (asking each officer for a passphrase where needed) and rebuilds the PIN.
fn combine_shares(paths: &[PathBuf], token: &str) -> Result<(Secret, Vec<Share>), CliError> {
    let mut opened = Vec::new();
    for path in paths {
        let sealed = read_share(path)?;
        let pass = if sealed.is_encrypted() {
            Some(passphrase(&format!(
                "Passphrase of {} for share {}: ",
                sealed.holder, sealed.index
            ))?)
        } else {
            None
        };
        let share = sealed
            .open(pass.as_ref().map(|p| p.expose()))
            .map_err(|e| msg(e.to_string()))?;
        opened.push(share);
    }
    quorum::check_token(&opened, token).map_err(|e| msg(e.to_string()))?;
    let pin = quorum::combine(&opened).map_err(|e| msg(e.to_string()))?;
    Ok((pin, opened))
}

// ---------------------------------------------------------------------------------------------
// The host

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Interfaces other than loopback that this process could reach a network through: those
/// with an IPv4 or IPv6 route in the process's network namespace (`/proc/self/net`, which,
/// unlike `/sys/class/net`, follows the namespace).
fn interfaces_up() -> Vec<String> {
    let mut up = Vec::new();
    let mut add = |name: &str| {
        if name != "lo" && !name.is_empty() && !up.iter().any(|n: &String| n == name) {
            up.push(name.to_string());
        }
    };
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/route") {
        for line in text.lines().skip(1) {
            add(line.split_whitespace().next().unwrap_or(""));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/net/ipv6_route") {
        for line in text.lines() {
            add(line.split_whitespace().last().unwrap_or(""));
        }
    }
    up.sort();
    up
}

fn pkcs11_settings(config: &Config) -> Result<&Pkcs11Settings, CliError> {
    match &config.keystore.backend {
        BackendSettings::Pkcs11(s) => Ok(s),
        BackendSettings::Tpm(_) => Err(msg(
            "officer PIN shares are for PKCS#11 tokens; this config uses a TPM",
        )),
    }
}

fn token_label(settings: &Pkcs11Settings) -> String {
    match &settings.token {
        TokenSelector::Label(l) => l.clone(),
        TokenSelector::Serial(s) => format!("serial {s}"),
    }
}

/// Where the ceremony host keeps its log and the roots and revocations it made: apart from an
/// appliance's state and audit log, should both ever share a `data_dir`.
pub fn host_dir(config: &Config) -> PathBuf {
    config.data_dir.join("ceremony")
}

/// The quorum this host split last (id and time), from its log.
fn current_quorum(log: &HostLog) -> Result<Option<(String, String)>, CliError> {
    Ok(log
        .records_from(1)?
        .into_iter()
        .rev()
        .find_map(|r| match r.event {
            AuditEvent::QuorumCreated { quorum, .. } => Some((quorum, r.time)),
            _ => None,
        }))
}

/// A PIN rebuilt from shares, and the shares it came from.
type QuorumPin = (Secret, Vec<Share>);

/// What happens before anything is recorded: config, air-gap check, outputs, PIN.
struct Prep {
    command: &'static str,
    config: Config,
    /// Opened once and kept: sled releases a database lock only some time after the handle
    /// is dropped, so opening it again at once in the same process can fail.
    log: HostLog,
    state: CaState,
    attend: Attend,
    network: Vec<String>,
    pin: Option<QuorumPin>,
}

impl Prep {
    fn new(
        config_path: &Path,
        command: &'static str,
        attend: Attend,
        outputs: &[impl AsRef<str>],
    ) -> Result<Self, CliError> {
        let config = Config::load(config_path)?;
        let network = interfaces_up();
        if !network.is_empty() && !attend.allow_network {
            return Err(msg(format!(
                "network interface(s) up: {}. A ceremony runs offline: take them down (or \
                 pass --allow-network for a network HSM on a link of its own)",
                network.join(", ")
            )));
        }
        for name in outputs {
            let path = attend.out_dir.join(name.as_ref());
            if path.exists() {
                return Err(msg(format!(
                    "{} already exists; a ceremony never replaces an earlier output (choose \
                     another --out-dir)",
                    path.display()
                )));
            }
        }
        let log = HostLog::open(&host_dir(&config))?;
        let state = CaState::open(&host_dir(&config))?;
        Ok(Prep {
            command,
            config,
            log,
            state,
            attend,
            network,
            pin: None,
        })
    }

    /// Rebuilds the PIN from shares, or checks that the config supplies one.
    fn shares(mut self, shares: &ShareArgs) -> Result<Self, CliError> {
        let held_as_shares = matches!(
            &self.config.keystore.backend,
            BackendSettings::Pkcs11(s) if s.pin == SecretSource::Shares
        );
        if shares.shares.is_empty() {
            if held_as_shares {
                return Err(msg(
                    "the token's PIN is held by officers (keystore.pin_shares): give their \
                     shares with --share FILE (once per officer)",
                ));
            }
            return Ok(self);
        }
        let label = token_label(pkcs11_settings(&self.config)?);
        let (pin, opened) = combine_shares(&shares.shares, &label)?;
        if let Some((current, when)) = current_quorum(&self.log)? {
            if opened[0].quorum_id() != current {
                return Err(msg(format!(
                    "these shares belong to quorum {}, which this host replaced by quorum \
                     {current} at {when}. Nothing was presented to the token",
                    opened[0].quorum_id()
                )));
            }
        }
        self.pin = Some((pin, opened));
        Ok(self)
    }

    /// Records the start of the ceremony (who attends, on which host); no login yet.
    fn begin(self) -> Result<(Ceremony, Option<QuorumPin>), CliError> {
        let Prep {
            command,
            config,
            mut log,
            state,
            attend,
            network,
            pin,
        } = self;
        let mut officers = attend.attending.clone();
        for s in pin.iter().flat_map(|(_, shares)| shares) {
            if !officers.contains(&s.holder) {
                officers.push(s.holder.clone());
            }
        }
        let actor = if officers.is_empty() {
            "ceremony".to_string()
        } else {
            format!("ceremony ({})", officers.join(", "))
        };
        let mut host = host_name();
        if !network.is_empty() {
            host.push_str(&format!(" (network up: {})", network.join(", ")));
        }
        log.append(AuditEvent::CeremonyStarted {
            command: command.into(),
            officers,
            host,
            version: env!("CARGO_PKG_VERSION").into(),
        })?;
        let ceremony = Ceremony {
            command,
            keystore_config: config.keystore.clone(),
            config,
            out_dir: attend.out_dir,
            actor,
            log,
            state,
            store: None,
            signer: None,
            outputs: Vec::new(),
            written: Vec::new(),
        };
        Ok((ceremony, pin))
    }

    /// Records the start and logs in (with the rebuilt PIN when shares were given).
    fn start(self) -> Result<Ceremony, CliError> {
        let (mut c, pin) = self.begin()?;
        let opened = (|| {
            c.login(pin.as_ref().map(|(secret, _)| secret))?;
            if let Some((_, shares)) = &pin {
                c.log.append(AuditEvent::QuorumLogin {
                    quorum: shares[0].quorum_id(),
                    shares: shares.iter().map(|s| s.index as u32).collect(),
                    holders: shares.iter().map(|s| s.holder.clone()).collect(),
                })?;
            }
            Ok(())
        })();
        match opened {
            Ok(()) => Ok(c),
            Err(e) => Err(c.fail(e)),
        }
    }
}

/// A ceremony under way: its log, its login and the outputs it will write.
struct Ceremony {
    command: &'static str,
    config: Config,
    keystore_config: crate::config::KeystoreConfig,
    out_dir: PathBuf,
    actor: String,
    log: HostLog,
    state: CaState,
    store: Option<KeyStore>,
    /// The root key that signs the chain head at the end.
    signer: Option<(KeyId, SignatureScheme)>,
    /// File name, contents, secret (mode 0600).
    outputs: Vec<(String, Vec<u8>, bool)>,
    /// Outputs written already (share files): name and SHA-256.
    written: Vec<(String, String)>,
}

impl Ceremony {
    /// Opens the token, with `pin` (rebuilt from shares) in place of the config's PIN source.
    fn login(&mut self, pin: Option<&Secret>) -> Result<(), CliError> {
        self.store = None;
        if let (Some(pin), BackendSettings::Pkcs11(s)) = (pin, &mut self.keystore_config.backend) {
            s.pin = SecretSource::Given(pin.clone());
        }
        self.store = Some(keystore::open(&self.keystore_config)?);
        Ok(())
    }

    fn store(&self) -> Result<&KeyStore, CliError> {
        self.store
            .as_ref()
            .ok_or_else(|| msg("the token is not open"))
    }

    fn sign_with(&mut self, ca: &IssuingCa) {
        self.signer = Some((ca.key().id().clone(), ca.key().algorithm().default_scheme()));
    }

    fn output(&mut self, name: &str, contents: impl Into<Vec<u8>>) {
        self.outputs
            .push((name.to_string(), contents.into(), false));
    }

    fn record_issued(
        &mut self,
        method: &str,
        cert: &IssuedCert,
        signer: &KeyId,
    ) -> Result<(), CliError> {
        let parsed = parse_certificate(&cert.der)?;
        self.log.append(AuditEvent::Issued {
            serial: cert.serial.clone(),
            identity: parsed.subject().to_string(),
            caller: self.actor.clone(),
            method: format!("ceremony:{method}"),
            ca_key: signer.to_string(),
            not_before: rfc3339(cert.not_before),
            not_after: rfc3339(cert.not_after),
            csr_key_sha256: fingerprint(parsed.public_key().raw),
            certificate_sha256: Some(fingerprint_id(&cert.der)),
        })?;
        Ok(())
    }

    /// Generates a root key, self-signs the root, records both and the root on this host, and
    /// makes the new root the one that signs the chain head.
    fn new_root(
        &mut self,
        method: &str,
        now: OffsetDateTime,
    ) -> Result<(crate::keystore::KeyInfo, IssuedCert), CliError> {
        let store = self.store()?.clone();
        let (info, cert) = authority::create_root(&store, &self.config, now)?;
        self.log.append(AuditEvent::KeyGenerated {
            actor: self.actor.clone(),
            key_id: info.id.to_string(),
            algorithm: self.config.root.key_algorithm.to_string(),
            label: info.label.clone(),
        })?;
        let root = authority::issuing_ca_for(&store, &cert.der)?;
        self.sign_with(&root);
        self.record_issued(method, &cert, &info.id)?;
        self.state.add_root(root_record(&cert.der, now)?)?;
        Ok((info, cert))
    }

    /// Records a failure (signed when a root key is known) and hands the error back.
    fn fail(mut self, error: CliError) -> CliError {
        let _ = self.log.append(AuditEvent::CeremonyFailed {
            command: self.command.into(),
            error: error.to_string(),
        });
        if let (Some(store), Some((key, scheme))) = (&self.store, &self.signer) {
            let _ = self.log.checkpoint(store, key, *scheme);
        }
        error
    }

    /// Writes the outputs, records them, signs the chain head, writes the transcript.
    fn finish(mut self) -> Result<(), CliError> {
        let mut recorded = std::mem::take(&mut self.written);
        for (name, contents, secret) in &self.outputs {
            let path = self.out_dir.join(name);
            let written = if *secret {
                write_secret_file(&path, contents, false)
            } else {
                write_file(&path, contents, false)
            };
            if let Err(e) = written {
                return Err(self.fail(e.into()));
            }
            recorded.push((name.clone(), hex::encode(sha256(contents))));
            say!("Wrote {}", path.display());
        }
        self.log.append(AuditEvent::CeremonyEnded {
            command: self.command.into(),
            outputs: recorded,
        })?;
        match (&self.store, &self.signer) {
            (Some(store), Some((key, scheme))) => {
                let seq = self.log.checkpoint(store, key, *scheme)?;
                say!("The ceremony log (record {seq}) is signed by root key {key}.");
            }
            _ => say!("No root key yet: the next ceremony's root signature covers these records."),
        }
        let mut jsonl = Vec::new();
        let n = self.log.export(&mut jsonl)?;
        let records = self.log.records_from(1)?;
        write_file(&self.out_dir.join("transcript.jsonl"), &jsonl, false)?;
        write_file(
            &self.out_dir.join("transcript.txt"),
            render(&records).as_bytes(),
            false,
        )?;
        say!(
            "Transcript ({n} records) written to {} and transcript.txt",
            self.out_dir.join("transcript.jsonl").display()
        );
        Ok(())
    }

    /// Runs `work`; a failure is recorded before it is returned.
    fn run(
        mut self,
        work: impl FnOnce(&mut Ceremony) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        match work(&mut self) {
            Ok(()) => self.finish(),
            Err(e) => Err(self.fail(e)),
        }
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Roots on the host

/// The root to sign with: `--root`, else the newest root this host made, else the config's.
fn root_der(prep: &Prep, explicit: Option<PathBuf>) -> Result<Vec<u8>, CliError> {
    if let Some(path) = explicit {
        return first_cert(&path);
    }
    if let Some(der) = newest_root(&prep.state)? {
        return Ok(der);
    }
    first_cert(&prep.config.root.certificates[0])
}

/// The root this host made last, if any.
fn newest_root(state: &CaState) -> Result<Option<Vec<u8>>, CliError> {
    let roots = state.roots()?;
    match roots.iter().max_by(|a, b| a.added_at.cmp(&b.added_at)) {
        Some(newest) => Ok(Some(
            ca::certificates_from_pem(newest.certificate_pem.as_bytes())?
                .into_iter()
                .next()
                .ok_or_else(|| msg("the host's root record is empty"))?,
        )),
        None => Ok(None),
    }
}

fn first_cert(path: &Path) -> Result<Vec<u8>, CliError> {
    read_certificates(path)?
        .into_iter()
        .next()
        .ok_or_else(|| msg(format!("{}: no certificate", path.display())))
}

fn root_record(der: &[u8], now: OffsetDateTime) -> Result<RootRecord, CliError> {
    let cert = parse_certificate(der)?;
    Ok(RootRecord {
        version: crate::state::RECORD_VERSION,
        fingerprint: fingerprint_id(der),
        certificate_pem: ca::certificate_pem(der),
        subject: cert.subject().to_string(),
        not_after: rfc3339(cert.validity().not_after.to_datetime()),
        added_at: rfc3339(now),
    })
}

fn describe_root(der: &[u8]) -> Result<String, CliError> {
    let cert = parse_certificate(der)?;
    Ok(format!(
        "{} (SHA-256 {}, until {})",
        cert.subject(),
        fingerprint(der),
        rfc3339(cert.validity().not_after.to_datetime())
    ))
}

fn print_root_plan(config: &Config) {
    say!(
        "Root subject:    CN={}{}",
        config.root.common_name,
        config
            .root
            .organization
            .as_deref()
            .map(|o| format!(", O={o}"))
            .unwrap_or_default()
    );
    say!("Key algorithm:   {}", config.root.key_algorithm);
    say!(
        "Validity:        {} days",
        config.root.validity.as_secs() / 86400
    );
}

// ---------------------------------------------------------------------------------------------
// Commands

impl SplitArgs {
    fn holders(&self) -> Result<Vec<String>, CliError> {
        if self.holders.is_empty() {
            return Ok((1..=self.officers)
                .map(|i| format!("officer-{i}"))
                .collect());
        }
        if self.holders.len() != self.officers as usize {
            return Err(msg(quorum::QuorumError::HolderCount {
                holders: self.holders.len(),
                officers: self.officers,
            }
            .to_string()));
        }
        Ok(self.holders.clone())
    }

    fn file_names(holders: &[String]) -> Vec<String> {
        holders
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let slug: String = h
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_lowercase()
                        } else {
                            '-'
                        }
                    })
                    .collect();
                format!("share-{}-{}.txt", i + 1, slug.trim_matches('-'))
            })
            .collect()
    }

    /// Checks the plan, shows it, asks, and collects passphrases: all before the token.
    fn prepare(&self, token: &str) -> Result<(Vec<String>, Vec<Option<Secret>>), CliError> {
        let holders = self.holders()?;
        // Validate threshold and names before anyone types a passphrase.
        quorum::split(self.threshold, &holders, token).map_err(|e| msg(e.to_string()))?;
        say!("Token:           {token}");
        say!(
            "Quorum:          any {} of {} officers: {}",
            self.threshold,
            self.officers,
            holders.join(", ")
        );
        say!(
            "Shares:          {}",
            if self.encrypt {
                "encrypted to each officer's passphrase"
            } else {
                "plain text (keep each in a sealed envelope)"
            }
        );
        let mut passes = Vec::new();
        for h in &holders {
            if !self.encrypt {
                passes.push(None);
                continue;
            }
            let p = passphrase(&format!("{h}, choose a passphrase for your share: "))?;
            if p.expose().chars().count() < quorum::MIN_PASSPHRASE_CHARS {
                return Err(msg(quorum::QuorumError::WeakPassphrase.to_string()));
            }
            if std::io::stdin().is_terminal() {
                let again = passphrase(&format!("{h}, type it again: "))?;
                if again != p {
                    return Err(msg(format!(
                        "{h}: the passphrases differ; nothing was done"
                    )));
                }
            }
            passes.push(Some(p));
        }
        Ok((holders, passes))
    }
}

/// Splits a new PIN, writes the share files, then `set_pin` puts the PIN on the token; if that
/// fails the share files are removed again, so no share exists for a PIN the token lacks.
fn make_shares(
    c: &mut Ceremony,
    plan: &SplitArgs,
    holders: &[String],
    passes: &[Option<Secret>],
    replaces: Option<String>,
    set_pin: impl FnOnce(&Secret) -> Result<(), keystore::KeystoreError>,
) -> Result<Secret, CliError> {
    let settings = pkcs11_settings(&c.config)?.clone();
    let token = token_label(&settings);
    let split = quorum::split(plan.threshold, holders, &token).map_err(|e| msg(e.to_string()))?;
    let created = rfc3339(OffsetDateTime::now_utc());
    let names = SplitArgs::file_names(holders);
    let mut written = Vec::new();
    let mut hashes = Vec::new();
    for ((share, name), pass) in split.shares.iter().zip(&names).zip(passes) {
        let text = share
            .to_text(
                pass.as_ref().map(|p| p.expose()),
                quorum::PASSPHRASE_ITERATIONS,
                &created,
            )
            .map_err(|e| msg(e.to_string()))?;
        let path = c.out_dir.join(name);
        if let Err(e) = write_secret_file(&path, text.as_bytes(), false) {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
        hashes.push((name.clone(), hex::encode(sha256(text.as_bytes()))));
        written.push(path);
    }
    if let Err(e) = set_pin(&split.pin) {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(msg(format!(
            "the token's PIN was not changed ({e}); the new share files were removed"
        )));
    }
    for p in &written {
        say!("Wrote {}", p.display());
    }
    c.log.append(AuditEvent::QuorumCreated {
        quorum: split.shares[0].quorum_id(),
        threshold: plan.threshold as u32,
        holders: holders.to_vec(),
        token,
        encrypted: plan.encrypt,
        replaces,
    })?;
    // The share files are on the media already: their hashes go with the other outputs.
    c.written.extend(hashes);
    Ok(split.pin)
}

/// After the PIN changed: log in with the new one (proving it works) and pick the host's
/// newest root, when its key is in this token, to sign the chain head.
fn relogin(c: &mut Ceremony, pin: Secret) -> Result<(), CliError> {
    c.login(Some(&pin))?;
    if let Some(der) = newest_root(&c.state)? {
        if let Ok(root) = authority::issuing_ca_for(c.store()?, &der) {
            c.sign_with(&root);
        }
    }
    Ok(())
}

fn init_quorum(
    config_path: &Path,
    plan: SplitArgs,
    so: SecretSource,
    attend: Attend,
) -> Result<(), CliError> {
    let names = SplitArgs::file_names(&plan.holders()?);
    let prep = Prep::new(config_path, "init-quorum", attend, &names)?;
    let settings = pkcs11_settings(&prep.config)?.clone();
    let (holders, passes) = plan.prepare(&token_label(&settings))?;
    let so_pin = so.load().map_err(|e| msg(e.to_string()))?;
    confirm(
        prep.attend.yes,
        "Set a new random user PIN on this token and split it?",
    )?;
    keystore::apply_module_env(&prep.config.keystore);
    // No login: the security officer replaces whatever user PIN the token had.
    let (c, _) = prep.begin()?;
    c.run(|c| {
        let pin = make_shares(c, &plan, &holders, &passes, None, |new| {
            token_pin::init_user_pin(&settings, &so_pin, new)
        })?;
        relogin(c, pin)
    })
}

fn reshare(
    config_path: &Path,
    plan: SplitArgs,
    shares: ShareArgs,
    attend: Attend,
) -> Result<(), CliError> {
    if shares.shares.is_empty() {
        return Err(msg(
            "give the current shares with --share FILE (as many as the quorum needs)",
        ));
    }
    let names = SplitArgs::file_names(&plan.holders()?);
    let prep = Prep::new(config_path, "reshare", attend, &names)?.shares(&shares)?;
    let settings = pkcs11_settings(&prep.config)?.clone();
    let (holders, passes) = plan.prepare(&token_label(&settings))?;
    let (old_pin, old_quorum) = match &prep.pin {
        Some((pin, shares)) => (pin.clone(), shares[0].quorum_id()),
        None => return Err(msg("the current shares did not give a PIN")),
    };
    confirm(
        prep.attend.yes,
        "Replace the token's PIN and every officer's share?",
    )?;
    let c = prep.start()?;
    c.run(|c| {
        // Close the login before the PIN changes under it.
        c.store = None;
        let pin = make_shares(c, &plan, &holders, &passes, Some(old_quorum), |new| {
            token_pin::change_user_pin(&settings, &old_pin, new)
        })?;
        relogin(c, pin)
    })
}

fn init_root(config_path: &Path, shares: ShareArgs, attend: Attend) -> Result<(), CliError> {
    let prep = Prep::new(config_path, "init-root", attend, &["root-cert.pem"])?;
    {
        if !prep.state.roots()?.is_empty() {
            return Err(msg(
                "this host has made a root already; use `ceremony rotate-root` for another",
            ));
        }
    }
    let host_copy = prep.config.root.certificates[0].clone();
    if host_copy.exists() {
        return Err(msg(format!(
            "{} already exists; refusing to create a second root over it",
            host_copy.display()
        )));
    }
    let prep = prep.shares(&shares)?;
    print_root_plan(&prep.config);
    confirm(
        prep.attend.yes,
        "Generate the root key in the token and sign the root?",
    )?;
    let c = prep.start()?;
    c.run(|c| {
        let now = OffsetDateTime::now_utc();
        let store = c.store()?.clone();
        let (info, cert) = c.new_root("init-root", now)?;
        write_file(&host_copy, cert.pem.as_bytes(), false)?;
        say!(
            "Root key {} ({}) created in {}",
            info.id,
            info.label,
            store.describe()
        );
        say_raw!("{}", inspect::describe(&cert.der, now)?);
        c.output("root-cert.pem", cert.pem.clone());
        Ok(())
    })
}

fn sign_intermediate(
    config_path: &Path,
    csr_path: &Path,
    root: Option<PathBuf>,
    shares: ShareArgs,
    attend: Attend,
) -> Result<(), CliError> {
    let prep = Prep::new(
        config_path,
        "sign-intermediate",
        attend,
        &["intermediate-cert.pem"],
    )?;
    let csr_bytes =
        std::fs::read(csr_path).map_err(|e| msg(format!("{}: {e}", csr_path.display())))?;
    let csr = ca::parse_csr(&csr_bytes)?;
    let root_der = root_der(&prep, root)?;
    say!("CSR subject:            {}", csr.subject);
    say!("CSR public key:         {}", csr.key);
    say!("CSR public key SHA-256: {}", csr.public_key_fingerprint());
    say!("Signing root:           {}", describe_root(&root_der)?);
    say!(
        "Intermediate for trust domain {} valid {} days (capped at the root's expiry)",
        prep.config.trust_domain,
        prep.config.intermediate.validity.as_secs() / 86400
    );
    let prep = prep.shares(&shares)?;
    confirm(prep.attend.yes, "Sign this intermediate?")?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        let now = OffsetDateTime::now_utc();
        let cert = authority::sign_intermediate(&root, &csr, &c.config, now)?;
        c.record_issued("sign-intermediate", &cert, root.key().id())?;
        say_raw!("{}", inspect::describe(&cert.der, now)?);
        c.output("intermediate-cert.pem", cert.pem.clone());
        Ok(())
    })
}

/// Signs the root's CRL with every revocation this host recorded under it.
fn sign_root_crl(c: &mut Ceremony, root: &IssuingCa, valid_days: u32) -> Result<(), CliError> {
    if valid_days == 0 || valid_days > 366 {
        return Err(msg("--valid-days must be 1 to 366"));
    }
    let now = OffsetDateTime::now_utc();
    let issuer = fingerprint_id(root.cert_der());
    let revoked = c.state.revocations(&issuer)?;
    let entries: Vec<(Vec<u8>, OffsetDateTime)> = revoked
        .iter()
        .map(|r| {
            let at = OffsetDateTime::parse(
                &r.revoked_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(now);
            (hex::decode(&r.serial).unwrap_or_default(), at)
        })
        .collect();
    let number = c.state.next_crl_number(&issuer)?;
    let next_update = now + time::Duration::days(valid_days as i64);
    let der = root.sign_crl(&entries, number, now, next_update)?;
    c.log.append(AuditEvent::CrlSigned {
        actor: c.actor.clone(),
        issuer: issuer.clone(),
        number,
        revoked: entries.len() as u64,
        next_update: rfc3339(next_update),
    })?;
    say!(
        "Root CRL number {number}: {} revoked certificate(s), next update {}",
        entries.len(),
        rfc3339(next_update)
    );
    c.output("root-crl.pem", pem::encode(&pem::Pem::new("X509 CRL", der)));
    Ok(())
}

fn revoke_intermediate(
    config_path: &Path,
    cert_path: &Path,
    reason: Reason,
    root: Option<PathBuf>,
    valid_days: u32,
    shares: ShareArgs,
    attend: Attend,
) -> Result<(), CliError> {
    let prep = Prep::new(
        config_path,
        "revoke-intermediate",
        attend,
        &["root-crl.pem"],
    )?;
    let cert_der = first_cert(cert_path)?;
    let root_der = root_der(&prep, root)?;
    check_issued_by(&cert_der, &root_der).map_err(|_| {
        msg(format!(
            "{} was not signed by root {}",
            cert_path.display(),
            describe_root(&root_der).unwrap_or_default()
        ))
    })?;
    let parsed = parse_certificate(&cert_der)?;
    let serial = serial_hex(parsed.raw_serial());
    say!("Revoke:          {}", parsed.subject());
    say!("Serial:          {serial}");
    say!("Certificate:     SHA-256 {}", fingerprint(&cert_der));
    say!("Reason:          {}", reason.name());
    say!("Issued by root:  {}", describe_root(&root_der)?);
    let prep = prep.shares(&shares)?;
    confirm(prep.attend.yes, "Revoke this intermediate?")?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        let issuer = fingerprint_id(&root_der);
        let fresh = c.state.revoke(RevocationRecord {
            version: crate::state::RECORD_VERSION,
            issuer: issuer.clone(),
            serial: serial.clone(),
            reason: reason.name().into(),
            revoked_at: rfc3339(OffsetDateTime::now_utc()),
        })?;
        if fresh {
            c.log.append(AuditEvent::Revoked {
                actor: c.actor.clone(),
                issuer_key: issuer,
                serial: serial.clone(),
                reason: reason.name().into(),
            })?;
        } else {
            say!("Serial {serial} was revoked already; signing the CRL again.");
        }
        sign_root_crl(c, &root, valid_days)
    })
}

fn crl(
    config_path: &Path,
    root: Option<PathBuf>,
    valid_days: u32,
    shares: ShareArgs,
    attend: Attend,
) -> Result<(), CliError> {
    let prep = Prep::new(config_path, "crl", attend, &["root-crl.pem"])?;
    let root_der = root_der(&prep, root)?;
    say!("Sign the CRL of root {}", describe_root(&root_der)?);
    say!("Valid for {valid_days} days");
    let prep = prep.shares(&shares)?;
    confirm(prep.attend.yes, "Sign the root CRL?")?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        sign_root_crl(c, &root, valid_days)
    })
}

fn rotate_root(
    config_path: &Path,
    root: Option<PathBuf>,
    shares: ShareArgs,
    attend: Attend,
) -> Result<(), CliError> {
    let prep = Prep::new(
        config_path,
        "rotate-root",
        attend,
        &["root-cert.pem", "cross-signed-root.pem", "trust-bundle.pem"],
    )?;
    let old_der = root_der(&prep, root)?;
    say!("Current root:    {}", describe_root(&old_der)?);
    say!("New root:");
    print_root_plan(&prep.config);
    say!("The current root cross-signs the new root (same subject and key).");
    let prep = prep.shares(&shares)?;
    confirm(
        prep.attend.yes,
        "Generate the new root key and cross-sign it?",
    )?;
    let c = prep.start()?;
    c.run(|c| {
        let store = c.store()?.clone();
        let old = authority::issuing_ca_for(&store, &old_der)?;
        let now = OffsetDateTime::now_utc();
        let (info, new_cert) = c.new_root("rotate-root", now)?;
        let cross = old.cross_sign(&new_cert.der, now)?;
        check_issued_by(&cross.der, &old_der)?;
        c.record_issued("cross-sign", &cross, old.key().id())?;
        say!(
            "New root key {} ({}) created in {}",
            info.id,
            info.label,
            store.describe()
        );
        say_raw!("{}", inspect::describe(&new_cert.der, now)?);
        c.output("root-cert.pem", new_cert.pem.clone());
        c.output("cross-signed-root.pem", cross.pem.clone());
        let mut bundle = ca::certificate_pem(&old_der);
        bundle.push_str(&new_cert.pem);
        c.output("trust-bundle.pem", bundle);
        Ok(())
    })
}

fn transcript(
    config_path: &Path,
    file: Option<PathBuf>,
    root_cert: Option<PathBuf>,
) -> Result<(), CliError> {
    let lines: Vec<Vec<u8>> = match &file {
        Some(path) => std::fs::read(path)
            .map_err(|e| msg(format!("{}: {e}", path.display())))?
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
        None => {
            let config = Config::load(config_path)?;
            let log = HostLog::open(&host_dir(&config))?;
            let mut out = Vec::new();
            log.export(&mut out)?;
            out.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        }
    };
    let keys = match &root_cert {
        Some(path) => root_keys(path)?,
        None => Vec::new(),
    };
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let summary = audit::record::verify_chain_with_keys(lines.iter().map(Vec::as_slice), &key_refs)
        .map_err(|e| msg(format!("the transcript does not verify: {e}")))?;
    let records: Vec<AuditRecord> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    say_raw!("{}", render(&records));
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

/// The public keys of every certificate in a PEM file.
pub fn root_keys(path: &Path) -> Result<Vec<Vec<u8>>, CliError> {
    let certs = read_certificates(path)?;
    if certs.is_empty() {
        return Err(msg(format!("{}: no certificate", path.display())));
    }
    certs
        .iter()
        .map(|der| Ok(parse_certificate(der)?.public_key().raw.to_vec()))
        .collect()
}

/// The transcript as people read it.
pub fn render(records: &[AuditRecord]) -> String {
    let mut out = String::from("hsm-ca ceremony transcript\n==========================\n");
    // Whole seconds read better on paper; the JSON keeps the full times.
    let records: Vec<AuditRecord> = records
        .iter()
        .cloned()
        .map(|mut r| {
            if r.time.len() > 20 && r.time.as_bytes()[19] == b'.' {
                r.time = format!("{}Z", &r.time[..19]);
            }
            r
        })
        .collect();
    for r in &records {
        let line = match &r.event {
            AuditEvent::CeremonyStarted {
                command,
                officers,
                host,
                version,
            } => format!(
                "{time}  ceremony `{command}` started on {host} (hsm-ca {version})\n{pad}attending: {who}",
                time = r.time,
                pad = " ".repeat(r.time.len() + 9),
                who = if officers.is_empty() {
                    "(no names given)".to_string()
                } else {
                    officers.join(", ")
                }
            ),
            AuditEvent::QuorumCreated {
                quorum,
                threshold,
                holders,
                token,
                encrypted,
                replaces,
            } => format!(
                "{}  PIN of token {token:?} split: quorum {quorum}, any {threshold} of {}: {}{}{}",
                r.time,
                holders.len(),
                holders.join(", "),
                if *encrypted { " (shares encrypted)" } else { "" },
                replaces
                    .as_ref()
                    .map(|q| format!("; replaces quorum {q}"))
                    .unwrap_or_default()
            ),
            AuditEvent::QuorumLogin {
                quorum,
                shares,
                holders,
            } => format!(
                "{}  logged in with {} share(s) of quorum {quorum}: {}",
                r.time,
                shares.len(),
                shares
                    .iter()
                    .zip(holders)
                    .map(|(i, h)| format!("#{i} {h}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            AuditEvent::KeyGenerated {
                key_id,
                algorithm,
                label,
                ..
            } => format!(
                "{}  key generated in the token: {algorithm}, id {key_id}, label {label:?}",
                r.time
            ),
            AuditEvent::Issued {
                serial,
                identity,
                method,
                not_after,
                csr_key_sha256,
                certificate_sha256,
                ..
            } => format!(
                "{}  signed ({}): {identity}\n{pad}serial {serial}, until {not_after}\n{pad}certificate SHA-256 {}\n{pad}public key SHA-256 {csr_key_sha256}",
                r.time,
                method.trim_start_matches("ceremony:"),
                certificate_sha256.as_deref().unwrap_or("-"),
                pad = " ".repeat(r.time.len() + 9),
            ),
            AuditEvent::Revoked { serial, reason, issuer_key, .. } => format!(
                "{}  revoked serial {serial} ({reason}) under root {issuer_key}",
                r.time
            ),
            AuditEvent::CrlSigned {
                number,
                revoked,
                next_update,
                ..
            } => format!(
                "{}  root CRL number {number} signed: {revoked} revoked, next update {next_update}",
                r.time
            ),
            AuditEvent::CeremonyEnded { command, outputs } => {
                let mut s = format!("{}  outputs of `{command}`:", r.time);
                for (name, hash) in outputs {
                    s.push_str(&format!(
                        "\n{}{name}  SHA-256 {hash}",
                        " ".repeat(r.time.len() + 11)
                    ));
                }
                s
            }
            AuditEvent::CeremonyFailed { command, error } => {
                format!("{}  `{command}` FAILED: {error}", r.time)
            }
            AuditEvent::Checkpoint { head_seq, key_id, .. } => format!(
                "{}  records 1-{head_seq} signed by root key {key_id}",
                r.time
            ),
            other => format!("{}  {}", r.time, serde_json::to_string(other).unwrap_or_default()),
        };
        if let AuditEvent::CeremonyStarted { command, .. } = &r.event {
            out.push_str(&format!("\n## {command}\n"));
        }
        out.push_str(&format!("[{:>4}] {line}\n", r.seq));
    }
    out
}
