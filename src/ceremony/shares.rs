//! The officers' PIN shares as a ceremony meets them: reading a share (a file, or typed in by
//! its officer), opening it with its passphrase and rebuilding the token's PIN; and the plan of
//! a new split (holders, share file names, passphrases), checked before the token is touched.
//! The secret sharing itself is [`crate::quorum`]. Never opens the token, never records.

use std::path::PathBuf;

use super::error::CeremonyError;
use super::officers::{Officers, PassphraseFor, Plan};
use crate::config::Config;
use crate::keystore::pkcs11::{Pkcs11Settings, TokenSelector};
use crate::keystore::BackendSettings;
use crate::quorum::{self, QuorumError, SealedShare, Share};
use crate::secret::Secret;

/// Where an officer's share comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShareSource {
    File(PathBuf),
    /// The officer types it in (see [`Officers::typed_share`]).
    Typed,
}

/// Reads one share.
fn read_share(source: &ShareSource, officers: &dyn Officers) -> Result<SealedShare, CeremonyError> {
    let (from, text) = match source {
        ShareSource::Typed => ("typed-in share".to_string(), officers.typed_share()?),
        ShareSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(CeremonyError::read(path))?;
            (path.display().to_string(), text)
        }
    };
    Ok(SealedShare::parse(&from, &text)?)
}

/// Opens the shares (asking each officer for a passphrase where needed) and rebuilds the PIN.
pub(super) fn combine_shares(
    sources: &[ShareSource],
    token: &str,
    officers: &dyn Officers,
) -> Result<(Secret, Vec<Share>), CeremonyError> {
    let mut opened = Vec::new();
    for source in sources {
        let sealed = read_share(source, officers)?;
        let pass = if sealed.is_encrypted() {
            Some(officers.passphrase(PassphraseFor::OpenShare {
                holder: &sealed.holder,
                index: sealed.index,
            })?)
        } else {
            None
        };
        opened.push(sealed.open(pass.as_ref().map(|p| p.expose()))?);
    }
    quorum::check_token(&opened, token)?;
    let pin = quorum::combine(&opened)?;
    Ok((pin, opened))
}

pub(super) fn pkcs11_settings(config: &Config) -> Result<&Pkcs11Settings, CeremonyError> {
    match &config.keystore.backend {
        BackendSettings::Pkcs11(s) => Ok(s),
        BackendSettings::Tpm(_) => Err(CeremonyError::NotPkcs11),
    }
}

/// The token as shares name it.
pub(super) fn token_label(settings: &Pkcs11Settings) -> String {
    match &settings.token {
        TokenSelector::Label(l) => l.clone(),
        TokenSelector::Serial(s) => format!("serial {s}"),
    }
}

/// How the PIN is split.
#[derive(Clone, Debug)]
pub struct SplitPlan {
    /// Number of officers (shares).
    pub officers: u8,
    /// Shares needed to log in.
    pub threshold: u8,
    /// The officers' names, one per share, in order (empty: officer-1 … officer-N).
    pub holders: Vec<String>,
    /// Encrypt each share to a passphrase its officer chooses.
    pub encrypt: bool,
}

impl SplitPlan {
    /// The officers' names: as given, else officer-1 … officer-N.
    pub fn holders(&self) -> Result<Vec<String>, CeremonyError> {
        if self.holders.is_empty() {
            return Ok((1..=self.officers)
                .map(|i| format!("officer-{i}"))
                .collect());
        }
        if self.holders.len() != self.officers as usize {
            return Err(QuorumError::HolderCount {
                holders: self.holders.len(),
                officers: self.officers,
            }
            .into());
        }
        Ok(self.holders.clone())
    }

    /// The share files, one per holder: `share-<n>-<name>.txt`.
    pub fn file_names(holders: &[String]) -> Vec<String> {
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

    /// Checks the plan, shows it, and collects passphrases: all before the token.
    pub(super) fn prepare(
        &self,
        token: &str,
        officers: &dyn Officers,
    ) -> Result<(Vec<String>, Vec<Option<Secret>>), CeremonyError> {
        let holders = self.holders()?;
        // Validate threshold and names before anyone types a passphrase.
        quorum::split(self.threshold, &holders, token)?;
        officers.show(&Plan::Quorum {
            token,
            threshold: self.threshold,
            officers: self.officers,
            holders: &holders,
            encrypted: self.encrypt,
        });
        let mut passes = Vec::new();
        for h in &holders {
            if !self.encrypt {
                passes.push(None);
                continue;
            }
            let p = officers.passphrase(PassphraseFor::Choose { holder: h })?;
            if p.expose().chars().count() < quorum::MIN_PASSPHRASE_CHARS {
                return Err(QuorumError::WeakPassphrase.into());
            }
            if let Some(again) = officers.repeat_passphrase(h)? {
                if again != p {
                    return Err(CeremonyError::PassphrasesDiffer(h.clone()));
                }
            }
            passes.push(Some(p));
        }
        Ok((holders, passes))
    }
}
