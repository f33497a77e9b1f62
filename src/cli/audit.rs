//! `hsm-ca audit verify` and `hsm-ca audit export`.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::audit::{self, AuditError, ChainSummary};
use crate::config::Config;
use crate::keystore;

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute the hash chain and check every checkpoint signature.
    Verify {
        /// Verify an exported JSON Lines file instead of the appliance's log (offline).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key (PEM) for --file; without it only the chain is checked.
        #[arg(long, conflicts_with = "root_cert")]
        public_key: Option<PathBuf>,
        /// Root certificate(s) (PEM) whose keys sign the checkpoints of a ceremony host's log
        /// or transcript.
        #[arg(long)]
        root_cert: Option<PathBuf>,
        /// A head printed by an earlier verification (`SEQ:HASH`): the log must still hold it,
        /// which a cut-off log does not.
        #[arg(long)]
        expect_head: Option<String>,
        /// Accept records after the last checkpoint (after a crash, before the next start).
        #[arg(long)]
        allow_unsigned_tail: bool,
    },
    /// Write the log as JSON Lines plus the audit public key, verifiable offline.
    Export {
        /// Folder to write audit.jsonl and audit-public-key.pem into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify every node's chain as shipped to the shared database (`[store] backend =
    /// "postgres"`), each against the key its node registered; exit 3 if one does not verify.
    /// With --out, also write each as <node>.jsonl and <node>-public-key.pem.
    Shipped {
        /// Folder to write each node's records and key into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

impl From<AuditError> for CliError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Chain(_) => CliError::Verification(e.to_string()),
            _ => CliError::Message(e.to_string()),
        }
    }
}

pub fn run(config_path: &Path, command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Verify {
            file,
            public_key,
            root_cert,
            expect_head,
            allow_unsigned_tail,
        } => {
            let expect = expect_head.as_deref().map(parse_head).transpose()?;
            let roots = root_cert
                .as_deref()
                .map(crate::ceremony::transcript::root_keys)
                .transpose()?;
            let root_refs: Vec<&[u8]> = roots.iter().flatten().map(Vec::as_slice).collect();
            let root_note = |n: usize| format!("the key of {n} root certificate(s)");
            let (summary, lines, key_note) = match file {
                Some(file) if roots.is_some() => {
                    let summary = audit::verify_file_with_keys(&file, &root_refs)?;
                    let lines = std::fs::read(&file)
                        .map_err(|e| CliError::Message(format!("{}: {e}", file.display())))?;
                    (summary, lines, root_note(root_refs.len()))
                }
                None if roots.is_some() => {
                    let config = Config::load(config_path)?;
                    let (summary, lines) = verify_host_log(&config, &root_refs)?;
                    (summary, lines, root_note(root_refs.len()))
                }
                Some(file) => {
                    let key = public_key
                        .as_deref()
                        .map(audit::read_public_key)
                        .transpose()?;
                    let summary = audit::verify_file(&file, key.as_deref())?;
                    let lines = std::fs::read(&file)
                        .map_err(|e| CliError::Message(format!("{}: {e}", file.display())))?;
                    let note = match &key {
                        Some(k) => format!("audit key {}", key_fingerprint(k)),
                        None => "no public key given: signatures NOT checked".into(),
                    };
                    (summary, lines, note)
                }
                None => {
                    let config = Config::load(config_path)?;
                    let path = appliance_log(&config.data_dir);
                    if !path.exists() && host_log(&config).exists() {
                        // A ceremony host: its own log is the one there is.
                        let (summary, lines) = verify_host_log(&config, &[])?;
                        let note = "no --root-cert given: signatures NOT checked".to_string();
                        report(&summary, &note);
                        return finish(&summary, &lines, expect, allow_unsigned_tail);
                    }
                    if !path.exists() {
                        return Err(CliError::Message(format!(
                            "no audit log at {} (and no ceremony host log under it): nothing \
                             was recorded here; to verify an export, give --file",
                            path.display()
                        )));
                    }
                    say!("Log: the appliance's audit log at {}.", path.display());
                    let recorded = audit::recorded_key(&config.data_dir)?;
                    // The device, not the disk, says what the audit key is.
                    let device_key = match &recorded {
                        Some(k) => {
                            let store = keystore::open(&config.keystore)?;
                            let info = store.key_info_blocking(&k.id)?;
                            Some(info.public_key)
                        }
                        None => None,
                    };
                    let summary = audit::verify_store(&config.data_dir, device_key.as_deref())?;
                    let mut lines = Vec::new();
                    audit::export(&config.data_dir, &mut lines)?;
                    let note = match &device_key {
                        Some(k) => {
                            format!("audit key {} (read from the device)", key_fingerprint(k))
                        }
                        None => "no audit key recorded: the log has no checkpoints".into(),
                    };
                    (summary, lines, note)
                }
            };
            report(&summary, &key_note);
            finish(&summary, &lines, expect, allow_unsigned_tail)
        }
        AuditCommand::Shipped { out } => shipped(config_path, out.as_deref()),
        AuditCommand::Export { out } => {
            let config = Config::load(config_path)?;
            let key = audit::recorded_key(&config.data_dir)?;
            let jsonl = out.join("audit.jsonl");
            let mut buf = Vec::new();
            let n = audit::export(&config.data_dir, &mut buf)?;
            crate::authority::write_file(&jsonl, &buf, false)?;
            say!("Wrote {n} records to {}", jsonl.display());
            if let Some(key) = key {
                let pem_path = out.join("audit-public-key.pem");
                crate::authority::write_file(&pem_path, key.public_pem().as_bytes(), false)?;
                say!(
                    "Wrote the audit public key to {} (SHA-256 {})",
                    pem_path.display(),
                    key_fingerprint(&key.spki)
                );
            }
            say!(
                "Verify offline: hsm-ca audit verify --file {} --public-key {}",
                jsonl.display(),
                out.join("audit-public-key.pem").display()
            );
            Ok(())
        }
    }
}

/// `hsm-ca audit shipped`: every node's chain in the shared database.
fn shipped(config_path: &Path, out: Option<&Path>) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    if !matches!(
        config.store_backend,
        crate::state::StoreBackend::Postgres(_)
    ) {
        return Err(CliError::Message(
            "audit records are shipped only to a shared database ([store] backend = \"postgres\")"
                .into(),
        ));
    }
    let chains = super::commands::with_state(&config, async |state| {
        let crate::state::CaState::Postgres(pg) = state else {
            return Ok(Vec::new());
        };
        Ok(crate::cluster::shipped_chains(pg).await?)
    })?;
    if chains.is_empty() {
        return Err(CliError::Message(
            "no node has shipped audit records to this database".into(),
        ));
    }
    let mut failed = Vec::new();
    for chain in &chains {
        let key = chain
            .public_key_pem
            .as_deref()
            .and_then(|p| pem::parse(p).ok())
            .map(|p| key_fingerprint(p.contents()))
            .unwrap_or_else(|| "none: checkpoints not checked".into());
        match crate::cluster::verify_shipped(chain) {
            Ok(summary) => say!(
                "{}: {} records verify, {} checkpoints, {} after the last; audit key {key}",
                chain.node,
                summary.records,
                summary.checkpoints,
                summary.unsigned_tail
            ),
            Err(e) => {
                say!("{}: DOES NOT VERIFY: {e}", chain.node);
                failed.push(chain.node.clone());
            }
        }
        if let Some(dir) = out {
            let jsonl = dir.join(format!("{}.jsonl", chain.node));
            crate::authority::write_file(&jsonl, chain.lines.as_bytes(), false)?;
            if let Some(pem_text) = &chain.public_key_pem {
                let path = dir.join(format!("{}-public-key.pem", chain.node));
                crate::authority::write_file(&path, pem_text.as_bytes(), false)?;
            }
        }
    }
    say!("Compare each audit key with the one its node shows (GET /v1/audit/public-key).");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Verification(format!(
            "the shipped chain of {} does not verify",
            failed.join(", ")
        )))
    }
}

/// Where the appliance keeps its log under `data_dir`.
fn appliance_log(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// Where a ceremony host keeps its log.
fn host_log(config: &Config) -> PathBuf {
    crate::ceremony::host_dir(config).join("audit")
}

/// Verifies the ceremony host's own log, checkpoints against `roots` (none: not checked).
fn verify_host_log(config: &Config, roots: &[&[u8]]) -> Result<(ChainSummary, Vec<u8>), CliError> {
    let dir = crate::ceremony::host_dir(config);
    say!(
        "Log: the ceremony host's log at {}.",
        host_log(config).display()
    );
    let mut lines = Vec::new();
    audit::HostLog::open(&dir)?.export(&mut lines)?;
    let summary = audit::record::verify_chain_with_keys(
        lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()),
        roots,
    )
    .map_err(AuditError::from)?;
    Ok((summary, lines))
}

/// The checks after the summary: the head an auditor kept, and the tail after the last
/// checkpoint.
fn finish(
    summary: &ChainSummary,
    lines: &[u8],
    expect: Option<(u64, String)>,
    allow_unsigned_tail: bool,
) -> Result<(), CliError> {
    if let Some((seq, hash)) = expect {
        check_head(lines, seq, &hash)?;
        say!("Head {seq}:{hash} is in the log.");
    }
    if summary.unsigned_tail > 0 && !allow_unsigned_tail {
        return Err(CliError::Verification(format!(
            "the log does not end with a checkpoint ({} record(s) after it): it was cut \
             short, or the appliance did not stop cleanly (its next start and stop sign \
             them; --allow-unsigned-tail accepts them)",
            summary.unsigned_tail
        )));
    }
    Ok(())
}

fn key_fingerprint(spki: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, spki).as_ref())
}

fn report(summary: &ChainSummary, key_note: &str) {
    say!("The audit chain verifies: {} records.", summary.records);
    say!(
        "Checkpoints: {} ({}).",
        summary.checkpoints,
        if summary.signatures_checked {
            format!("signatures verified with {key_note}")
        } else {
            key_note.to_string()
        }
    );
    if let Some((seq, time)) = &summary.last_checkpoint {
        say!("Last checkpoint: record {seq} at {time}.");
    }
    say!(
        "Records after the last checkpoint: {}.",
        summary.unsigned_tail
    );
    say!(
        "Head (keep it to detect a cut later): {}:{}",
        summary.records,
        hex::encode(summary.head)
    );
}

fn parse_head(s: &str) -> Result<(u64, String), CliError> {
    let bad = || CliError::Message(format!("--expect-head {s:?}: expected SEQ:HASH"));
    let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse::<u64>().map_err(|_| bad())?;
    if seq == 0 || hash.len() != 64 || hex::decode(hash).is_err() {
        return Err(bad());
    }
    Ok((seq, hash.to_lowercase()))
}

fn check_head(lines: &[u8], seq: u64, hash: &str) -> Result<(), CliError> {
    let line = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .nth(usize::try_from(seq - 1).unwrap_or(usize::MAX))
        .ok_or_else(|| {
            CliError::Verification(format!(
                "the log ends before record {seq}: records were cut off"
            ))
        })?;
    if hex::encode(audit::record::link_hash(line)) != hash {
        return Err(CliError::Verification(format!(
            "record {seq} is not the one seen before: the log was rewritten"
        )));
    }
    Ok(())
}
