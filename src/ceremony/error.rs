//! The one error type of the ceremony. Its messages are what officers read on the terminal and
//! what a failed ceremony records in its transcript, so they say what to do next; they never
//! hold a PIN, a share or a passphrase.

use std::path::PathBuf;

/// Why a ceremony stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Quorum(#[from] crate::quorum::QuorumError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The officers' terminal failed or gave no answer.
    #[error("{0}")]
    Terminal(String),
    #[error("refusing to go ahead without confirmation: run on a terminal or pass --yes")]
    NoConfirmation,
    #[error("stopped: not confirmed; nothing was done")]
    NotConfirmed,
    #[error("{0}: the passphrases differ; nothing was done")]
    PassphrasesDiffer(String),
    #[error(
        "network interface(s) up: {}. A ceremony runs offline: take them down (or pass \
         --allow-network for a network HSM on a link of its own)",
        .0.join(", ")
    )]
    NetworkUp(Vec<String>),
    #[error(
        "{} already exists; a ceremony never replaces an earlier output (choose another --out-dir)",
        .0.display()
    )]
    OutputExists(PathBuf),
    #[error("officer PIN shares are for PKCS#11 tokens; this config uses a TPM")]
    NotPkcs11,
    #[error(
        "the token's PIN is held by officers (keystore.pin_shares): give their shares with \
         --share FILE (once per officer)"
    )]
    SharesRequired,
    #[error("give the current shares with --share FILE (as many as the quorum needs)")]
    CurrentSharesRequired,
    #[error("the current shares did not give a PIN")]
    NoPinFromShares,
    #[error(
        "these shares belong to quorum {shares}, which this host replaced by quorum {current} \
         at {replaced_at}. Nothing was presented to the token"
    )]
    ReplacedQuorum {
        shares: String,
        current: String,
        replaced_at: String,
    },
    #[error("the token's PIN was not changed ({0}); the new share files were removed")]
    PinNotChanged(crate::keystore::KeystoreError),
    #[error("the token is not open")]
    TokenNotOpen,
    #[error("this host has made a root already; use `ceremony rotate-root` for another")]
    RootExists,
    #[error("{} already exists; refusing to create a second root over it", .0.display())]
    RootFileExists(PathBuf),
    #[error("the host's root record is empty")]
    EmptyRootRecord,
    #[error("{}: no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} was not signed by root {root}", cert.display())]
    NotIssuedByRoot { cert: PathBuf, root: String },
    #[error("--valid-days must be 1 to 366")]
    CrlValidity,
    #[error("the transcript does not verify: {0}")]
    TranscriptInvalid(crate::audit::ChainError),
}

impl CeremonyError {
    pub(super) fn read(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CeremonyError {
        let path = path.into();
        move |source| CeremonyError::Read { path, source }
    }
}

impl From<crate::keystore::KeystoreError> for CeremonyError {
    fn from(e: crate::keystore::KeystoreError) -> Self {
        CeremonyError::Authority(e.into())
    }
}

impl From<crate::ca::CaError> for CeremonyError {
    fn from(e: crate::ca::CaError) -> Self {
        CeremonyError::Authority(e.into())
    }
}

impl From<crate::state::StateError> for CeremonyError {
    fn from(e: crate::state::StateError) -> Self {
        CeremonyError::Authority(e.into())
    }
}
