//! The ceremony's people at a terminal: [`Terminal`] shows the plan, asks for the go-ahead
//! (or takes `--yes`), reads passphrases without echo (one line of stdin when not a
//! terminal) and typed-in shares, and prints each step. It decides nothing about the
//! ceremony itself.

use std::io::{BufRead, IsTerminal, Write};

use crate::ceremony::{Action, CeremonyError, Officers, PassphraseFor, Plan, RootPlan, Step};
use crate::secret::Secret;

/// Officers at this terminal; `yes` answers every confirmation (scripted ceremonies).
pub struct Terminal {
    pub yes: bool,
}

fn stdin_line(prompt: &str) -> Result<String, CeremonyError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _ = write!(std::io::stderr(), "{prompt}");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    let n = stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CeremonyError::Terminal(format!("cannot read the terminal: {e}")))?;
    if n == 0 {
        return Err(CeremonyError::Terminal(format!(
            "no answer on stdin to: {}",
            prompt.trim()
        )));
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// A passphrase: without echo on a terminal, else one line of stdin.
fn passphrase(prompt: &str) -> Result<Secret, CeremonyError> {
    let value = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| CeremonyError::Terminal(format!("cannot read the passphrase: {e}")))?
    } else {
        stdin_line(prompt)?
    };
    Ok(Secret::new(value))
}

fn question(action: Action) -> &'static str {
    match action {
        Action::SplitPin => "Set a new random user PIN on this token and split it?",
        Action::ReplacePin => "Replace the token's PIN and every officer's share?",
        Action::InitRoot => "Generate the root key in the token and sign the root?",
        Action::SignIntermediate => "Sign this intermediate?",
        Action::RevokeIntermediate => "Revoke this intermediate?",
        Action::SignCrl => "Sign the root CRL?",
        Action::RotateRoot => "Generate the new root key and cross-sign it?",
    }
}

fn print_root_plan(root: &RootPlan<'_>) {
    say!(
        "Root subject:    CN={}{}",
        root.common_name,
        root.organization
            .map(|o| format!(", O={o}"))
            .unwrap_or_default()
    );
    say!("Key algorithm:   {}", root.key_algorithm);
    say!("Validity:        {} days", root.validity_days);
}

impl Officers for Terminal {
    fn show(&self, plan: &Plan<'_>) {
        match plan {
            Plan::Quorum {
                token,
                threshold,
                officers,
                holders,
                encrypted,
            } => {
                say!("Token:           {token}");
                say!(
                    "Quorum:          any {threshold} of {officers} officers: {}",
                    holders.join(", ")
                );
                say!(
                    "Shares:          {}",
                    if *encrypted {
                        "encrypted to each officer's passphrase"
                    } else {
                        "plain text (keep each in a sealed envelope)"
                    }
                );
            }
            Plan::Root(root) => print_root_plan(root),
            Plan::SignIntermediate {
                csr_subject,
                csr_key,
                csr_key_sha256,
                root,
                trust_domain,
                validity_days,
            } => {
                say!("CSR subject:            {csr_subject}");
                say!("CSR public key:         {csr_key}");
                say!("CSR public key SHA-256: {csr_key_sha256}");
                say!("Signing root:           {root}");
                say!(
                    "Intermediate for trust domain {trust_domain} valid {validity_days} days \
                     (capped at the root's expiry)"
                );
            }
            Plan::RevokeIntermediate {
                subject,
                serial,
                certificate_sha256,
                reason,
                root,
            } => {
                say!("Revoke:          {subject}");
                say!("Serial:          {serial}");
                say!("Certificate:     SHA-256 {certificate_sha256}");
                say!("Reason:          {reason}");
                say!("Issued by root:  {root}");
            }
            Plan::Crl { root, valid_days } => {
                say!("Sign the CRL of root {root}");
                say!("Valid for {valid_days} days");
            }
            Plan::RotateRoot { current, new } => {
                say!("Current root:    {current}");
                say!("New root:");
                print_root_plan(new);
                say!("The current root cross-signs the new root (same subject and key).");
            }
        }
    }

    fn confirm(&self, action: Action) -> Result<(), CeremonyError> {
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(CeremonyError::NoConfirmation);
        }
        let answer = stdin_line(&format!("{} [y/N] ", question(action)))?;
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(CeremonyError::NotConfirmed)
        }
    }

    fn passphrase(&self, ask: PassphraseFor<'_>) -> Result<Secret, CeremonyError> {
        match ask {
            PassphraseFor::OpenShare { holder, index } => {
                passphrase(&format!("Passphrase of {holder} for share {index}: "))
            }
            PassphraseFor::Choose { holder } => {
                passphrase(&format!("{holder}, choose a passphrase for your share: "))
            }
        }
    }

    fn repeat_passphrase(&self, holder: &str) -> Result<Option<Secret>, CeremonyError> {
        if !std::io::stdin().is_terminal() {
            return Ok(None);
        }
        passphrase(&format!("{holder}, type it again: ")).map(Some)
    }

    /// Reads lines until the share's END line or an empty line.
    fn typed_share(&self) -> Result<String, CeremonyError> {
        let _ = writeln!(
            std::io::stderr(),
            "Type your share (the lines between BEGIN and END), then an empty line:"
        );
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CeremonyError::Terminal(format!("cannot read the share: {e}")))?;
            if n == 0 || line.trim().is_empty() || line.contains("END HSM-CA PIN SHARE") {
                break;
            }
            if !line.contains("BEGIN HSM-CA PIN SHARE") {
                text.push_str(&line);
            }
        }
        Ok(text)
    }

    fn report(&self, step: &Step<'_>) {
        match step {
            Step::Wrote(path) => say!("Wrote {}", path.display()),
            Step::RootKeyCreated {
                key,
                device,
                rotation,
            } => say!(
                "{} {} ({}) created in {device}",
                if *rotation {
                    "New root key"
                } else {
                    "Root key"
                },
                key.id,
                key.label
            ),
            Step::Signed { description } => say_raw!("{description}"),
            Step::AlreadyRevoked { serial } => {
                say!("Serial {serial} was revoked already; signing the CRL again.")
            }
            Step::CrlSigned {
                number,
                revoked,
                next_update,
            } => say!(
                "Root CRL number {number}: {revoked} revoked certificate(s), next update \
                 {next_update}"
            ),
            Step::LogSigned { record, key } => {
                say!("The ceremony log (record {record}) is signed by root key {key}.")
            }
            Step::LogUnsigned => {
                say!("No root key yet: the next ceremony's root signature covers these records.")
            }
            Step::TranscriptWritten { records, path } => say!(
                "Transcript ({records} records) written to {} and transcript.txt",
                path.display()
            ),
        }
    }
}
