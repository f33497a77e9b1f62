//! One ceremony from start to end, the same steps for every command: read the config, refuse
//! to run with a network up, check that no output exists yet, rebuild the PIN from shares
//! (before anything is recorded), record the start, log in, record the work, write the outputs
//! and their SHA-256, sign the chain head with the root key, and write the transcript. A
//! failure after the start is recorded (`ceremony_failed`) and signed when a root key is known.
//! Never prompts or prints: the room is told through [`Officers`].

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::error::CeremonyError;
use super::host::{host_dir, host_name, interfaces_up};
use super::officers::{Officers, Step};
use super::roots::root_record;
use super::shares::{combine_shares, pkcs11_settings, token_label, ShareSource};
use super::transcript::render;
use crate::audit::{AuditEvent, HostLog};
use crate::authority::{self, write_file, write_secret_file};
use crate::ca::inspect::parse_certificate;
use crate::ca::{fingerprint, fingerprint_id, IssuedCert, IssuingCa};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::keystore::{self, KeyId, KeyInfo, KeyStore, SignatureScheme};
use crate::keystore::{BackendSettings, KeystoreConfig};
use crate::quorum::Share;
use crate::secret::{Secret, SecretSource};
use crate::state::SledState;

/// Who attends and where the outputs go.
#[derive(Clone, Debug)]
pub struct Attendance {
    /// Officers and witnesses, recorded in the transcript.
    pub attending: Vec<String>,
    /// Folder for the outputs (removable media). Existing files are never replaced.
    pub out_dir: PathBuf,
    /// Run although a network interface is up (recorded in the transcript).
    pub allow_network: bool,
}

/// A ceremony that ended well.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Every output (share files included): file name and SHA-256 (hex).
    pub outputs: Vec<(String, String)>,
    /// The record up to which the log is signed, and the root key that signed it.
    pub signed: Option<(u64, KeyId)>,
    /// `transcript.jsonl` in the output folder, and how many records it holds.
    pub transcript: PathBuf,
    pub records: u64,
}

/// The quorum this host split last (id and time), from its log.
fn current_quorum(log: &HostLog) -> Result<Option<(String, String)>, CeremonyError> {
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
pub(super) type QuorumPin = (Secret, Vec<Share>);

/// The PIN rebuilt from `shares` (none given: the config must supply the PIN), refusing shares
/// of another token or of a quorum this host has since replaced; nothing reaches the token.
fn quorum_pin(
    config: &Config,
    log: &HostLog,
    shares: &[ShareSource],
    officers: &dyn Officers,
) -> Result<Option<QuorumPin>, CeremonyError> {
    let held_as_shares = matches!(
        &config.keystore.backend,
        BackendSettings::Pkcs11(s) if s.pin == SecretSource::Shares
    );
    if shares.is_empty() {
        if held_as_shares {
            return Err(CeremonyError::SharesRequired);
        }
        return Ok(None);
    }
    let label = token_label(pkcs11_settings(config)?);
    let (pin, opened) = combine_shares(shares, &label, officers)?;
    if let Some((current, when)) = current_quorum(log)? {
        if opened[0].quorum_id() != current {
            return Err(CeremonyError::ReplacedQuorum {
                shares: opened[0].quorum_id(),
                current,
                replaced_at: when,
            });
        }
    }
    Ok(Some((pin, opened)))
}

/// The keystore settings of `config` with the PIN rebuilt from officers' shares, for commands
/// that only read the token (`keys list` on a ceremony host). Same checks as a ceremony's
/// login; nothing is recorded. Without shares the config's own PIN source is kept.
pub fn keystore_with_shares(
    config: &Config,
    shares: &[ShareSource],
    officers: &dyn Officers,
) -> Result<KeystoreConfig, CeremonyError> {
    let log = HostLog::open(&host_dir(config))?;
    let mut keystore = config.keystore.clone();
    if let (Some((pin, _)), BackendSettings::Pkcs11(s)) = (
        quorum_pin(config, &log, shares, officers)?,
        &mut keystore.backend,
    ) {
        s.pin = SecretSource::Given(pin);
    }
    Ok(keystore)
}

pub(super) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// What happens before anything is recorded: config, air-gap check, outputs, PIN.
pub(super) struct Prep<'o> {
    command: &'static str,
    pub(super) config: Config,
    /// Opened once and kept: sled releases a database lock only some time after the handle
    /// is dropped, so opening it again at once in the same process can fail.
    log: HostLog,
    pub(super) state: SledState,
    attend: Attendance,
    network: Vec<String>,
    pub(super) pin: Option<QuorumPin>,
    pub(super) officers: &'o dyn Officers,
}

impl<'o> Prep<'o> {
    pub(super) fn new(
        config_path: &Path,
        command: &'static str,
        attend: Attendance,
        outputs: &[impl AsRef<str>],
        officers: &'o dyn Officers,
    ) -> Result<Self, CeremonyError> {
        let config = Config::load(config_path)?;
        let network = interfaces_up();
        if !network.is_empty() && !attend.allow_network {
            return Err(CeremonyError::NetworkUp(network));
        }
        for name in outputs {
            let path = attend.out_dir.join(name.as_ref());
            if path.exists() {
                return Err(CeremonyError::OutputExists(path));
            }
        }
        let log = HostLog::open(&host_dir(&config))?;
        let state = SledState::open(&host_dir(&config))?;
        Ok(Prep {
            command,
            config,
            log,
            state,
            attend,
            network,
            pin: None,
            officers,
        })
    }

    /// Rebuilds the PIN from shares, or checks that the config supplies one.
    pub(super) fn shares(mut self, shares: &[ShareSource]) -> Result<Self, CeremonyError> {
        self.pin = quorum_pin(&self.config, &self.log, shares, self.officers)?;
        Ok(self)
    }

    /// Records the start of the ceremony (who attends, on which host); no login yet.
    pub(super) fn begin(self) -> Result<(Session<'o>, Option<QuorumPin>), CeremonyError> {
        let Prep {
            command,
            config,
            mut log,
            state,
            attend,
            network,
            pin,
            officers: room,
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
        let session = Session {
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
            officers: room,
        };
        Ok((session, pin))
    }

    /// Records the start and logs in (with the rebuilt PIN when shares were given).
    pub(super) fn start(self) -> Result<Session<'o>, CeremonyError> {
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
pub(super) struct Session<'o> {
    command: &'static str,
    pub(super) config: Config,
    keystore_config: KeystoreConfig,
    pub(super) out_dir: PathBuf,
    pub(super) actor: String,
    pub(super) log: HostLog,
    pub(super) state: SledState,
    pub(super) store: Option<KeyStore>,
    /// The root key that signs the chain head at the end.
    signer: Option<(KeyId, SignatureScheme)>,
    /// File name, contents, secret (mode 0600).
    outputs: Vec<(String, Vec<u8>, bool)>,
    /// Outputs written already (share files): name and SHA-256.
    pub(super) written: Vec<(String, String)>,
    pub(super) officers: &'o dyn Officers,
}

impl Session<'_> {
    /// Opens the token, with `pin` (rebuilt from shares) in place of the config's PIN source.
    pub(super) fn login(&mut self, pin: Option<&Secret>) -> Result<(), CeremonyError> {
        self.store = None;
        if let (Some(pin), BackendSettings::Pkcs11(s)) = (pin, &mut self.keystore_config.backend) {
            s.pin = SecretSource::Given(pin.clone());
        }
        self.store = Some(keystore::open(&self.keystore_config)?);
        Ok(())
    }

    pub(super) fn store(&self) -> Result<&KeyStore, CeremonyError> {
        self.store.as_ref().ok_or(CeremonyError::TokenNotOpen)
    }

    /// Makes `ca`'s key the one that signs the chain head at the end.
    pub(super) fn sign_with(&mut self, ca: &IssuingCa) {
        self.signer = Some((ca.key().id().clone(), ca.key().algorithm().default_scheme()));
    }

    /// An output to write to the media when the work is done.
    pub(super) fn output(&mut self, name: &str, contents: impl Into<Vec<u8>>) {
        self.outputs
            .push((name.to_string(), contents.into(), false));
    }

    pub(super) fn record_issued(
        &mut self,
        method: &str,
        cert: &IssuedCert,
        signer: &KeyId,
    ) -> Result<(), CeremonyError> {
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
    pub(super) fn new_root(
        &mut self,
        method: &str,
        now: OffsetDateTime,
    ) -> Result<(KeyInfo, IssuedCert), CeremonyError> {
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
    fn fail(mut self, error: CeremonyError) -> CeremonyError {
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
    fn finish(mut self) -> Result<Finished, CeremonyError> {
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
            self.officers.report(&Step::Wrote(&path));
        }
        self.log.append(AuditEvent::CeremonyEnded {
            command: self.command.into(),
            outputs: recorded.clone(),
        })?;
        let signed = match (&self.store, &self.signer) {
            (Some(store), Some((key, scheme))) => {
                let record = self.log.checkpoint(store, key, *scheme)?;
                self.officers.report(&Step::LogSigned { record, key });
                Some((record, key.clone()))
            }
            _ => {
                self.officers.report(&Step::LogUnsigned);
                None
            }
        };
        let mut jsonl = Vec::new();
        let records = self.log.export(&mut jsonl)?;
        let all = self.log.records_from(1)?;
        let transcript = self.out_dir.join("transcript.jsonl");
        write_file(&transcript, &jsonl, false)?;
        write_file(
            &self.out_dir.join("transcript.txt"),
            render(&all).as_bytes(),
            false,
        )?;
        self.officers.report(&Step::TranscriptWritten {
            records,
            path: &transcript,
        });
        Ok(Finished {
            outputs: recorded,
            signed,
            transcript,
            records,
        })
    }

    /// Runs `work`; a failure is recorded before it is returned.
    pub(super) fn run(
        mut self,
        work: impl FnOnce(&mut Self) -> Result<(), CeremonyError>,
    ) -> Result<Finished, CeremonyError> {
        match work(&mut self) {
            Ok(()) => self.finish(),
            Err(e) => Err(self.fail(e)),
        }
    }
}
