//! The ceremony transcript: the host's hash-chained log (or an exported `transcript.jsonl`)
//! checked record by record and, given root certificates, checkpoint by checkpoint; and its
//! rendering as people read it on paper (`transcript.txt`). Never changes a log.

use std::path::Path;

use super::error::CeremonyError;
use super::host::host_dir;
use crate::audit::{self, AuditEvent, AuditRecord, ChainSummary, HostLog};
use crate::authority::read_certificates;
use crate::ca::inspect::parse_certificate;
use crate::config::Config;

/// A transcript whose chain (and, given roots, whose checkpoints) verified.
#[derive(Debug)]
pub struct VerifiedTranscript {
    pub records: Vec<AuditRecord>,
    pub summary: ChainSummary,
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The stored records of an exported transcript (`transcript.jsonl`).
pub fn read_file(path: &Path) -> Result<Vec<Vec<u8>>, CeremonyError> {
    Ok(lines(
        &std::fs::read(path).map_err(CeremonyError::read(path))?,
    ))
}

/// The stored records of this host's own log.
pub fn read_host(config_path: &Path) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let config = Config::load(config_path)?;
    let log = HostLog::open(&host_dir(&config))?;
    let mut out = Vec::new();
    log.export(&mut out)?;
    Ok(lines(&out))
}

/// Checks the chain of `stored` records and, when `root_cert` is given, every checkpoint's
/// signature against the roots in that PEM file.
pub fn verify(
    stored: &[Vec<u8>],
    root_cert: Option<&Path>,
) -> Result<VerifiedTranscript, CeremonyError> {
    let keys = match root_cert {
        Some(path) => root_keys(path)?,
        None => Vec::new(),
    };
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let summary =
        audit::record::verify_chain_with_keys(stored.iter().map(Vec::as_slice), &key_refs)
            .map_err(CeremonyError::TranscriptInvalid)?;
    let records = stored
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok(VerifiedTranscript { records, summary })
}

/// The public keys of every certificate in a PEM file.
pub fn root_keys(path: &Path) -> Result<Vec<Vec<u8>>, CeremonyError> {
    let certs = read_certificates(path)?;
    if certs.is_empty() {
        return Err(CeremonyError::NoCertificate(path.to_path_buf()));
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
