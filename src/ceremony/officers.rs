//! What passes between a ceremony and the people in the room: the plan they read before they
//! agree, the go-ahead, passphrases and typed-in shares they give, and the steps they watch.
//! The ceremony asks through [`Officers`]; the command line answers (it prompts and prints).
//! Nothing here reads a terminal or writes one.

use std::fmt;
use std::path::Path;

use super::CeremonyError;
use crate::keystore::{KeyId, KeyInfo};
use crate::secret::Secret;

/// The people in the room, as a ceremony sees them.
pub trait Officers {
    /// Shows what is about to happen, before anyone is asked to agree.
    fn show(&self, plan: &Plan<'_>);
    /// Asks for the go-ahead; an error stops the ceremony before anything is recorded.
    fn confirm(&self, action: Action) -> Result<(), CeremonyError>;
    /// Asks an officer for a passphrase.
    fn passphrase(&self, ask: PassphraseFor<'_>) -> Result<Secret, CeremonyError>;
    /// Has `holder` type a newly chosen passphrase again, where that is possible (`None`: it
    /// is not, e.g. passphrases come from a script).
    fn repeat_passphrase(&self, holder: &str) -> Result<Option<Secret>, CeremonyError>;
    /// A share an officer types in: the text between its BEGIN and END lines.
    fn typed_share(&self) -> Result<String, CeremonyError>;
    /// Tells the room that a step is done.
    fn report(&self, step: &Step<'_>);
}

/// Whose passphrase is asked for, and why.
#[derive(Clone, Copy, Debug)]
pub enum PassphraseFor<'a> {
    /// To open the share `index` that `holder` brought.
    OpenShare { holder: &'a str, index: u8 },
    /// A new passphrase `holder` chooses for their new share.
    Choose { holder: &'a str },
}

/// What the officers are asked to agree to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Set a new random user PIN on the token and split it.
    SplitPin,
    /// Replace the token's PIN and every share.
    ReplacePin,
    /// Generate the root key and self-sign the root.
    InitRoot,
    SignIntermediate,
    RevokeIntermediate,
    SignCrl,
    /// Generate a new root key and cross-sign it with the current root.
    RotateRoot,
}

/// A root certificate as officers identify it: subject, fingerprint, expiry.
#[derive(Clone, Debug)]
pub struct RootSummary {
    pub subject: String,
    pub sha256: String,
    pub not_after: String,
}

impl fmt::Display for RootSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SHA-256 {}, until {})",
            self.subject, self.sha256, self.not_after
        )
    }
}

/// The root a ceremony is about to make, from the config.
#[derive(Clone, Debug)]
pub struct RootPlan<'a> {
    pub common_name: &'a str,
    pub organization: Option<&'a str>,
    pub key_algorithm: String,
    pub validity_days: u64,
}

/// What is about to happen, shown before the officers agree.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Plan<'a> {
    /// A new PIN split among `holders`, any `threshold` of them unlocking the token.
    Quorum {
        token: &'a str,
        threshold: u8,
        officers: u8,
        holders: &'a [String],
        encrypted: bool,
    },
    Root(RootPlan<'a>),
    SignIntermediate {
        csr_subject: String,
        csr_key: String,
        csr_key_sha256: String,
        root: RootSummary,
        trust_domain: &'a str,
        validity_days: u64,
    },
    RevokeIntermediate {
        subject: String,
        serial: String,
        certificate_sha256: String,
        reason: &'static str,
        root: RootSummary,
    },
    Crl {
        root: RootSummary,
        valid_days: u32,
    },
    RotateRoot {
        current: RootSummary,
        new: RootPlan<'a>,
    },
}

/// A step done, as the room sees it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Step<'a> {
    /// An output was written to the media.
    Wrote(&'a Path),
    /// A root key was generated (`rotation`: next to the current root).
    RootKeyCreated {
        key: &'a KeyInfo,
        device: &'a str,
        rotation: bool,
    },
    /// A certificate was signed; `description` is its readable form.
    Signed {
        description: String,
    },
    /// The serial was on the host's revocation list already.
    AlreadyRevoked {
        serial: &'a str,
    },
    CrlSigned {
        number: u64,
        revoked: usize,
        next_update: String,
    },
    /// The ceremony log up to `record` is signed by the root key `key`.
    LogSigned {
        record: u64,
        key: &'a KeyId,
    },
    /// No root key signs the log yet.
    LogUnsigned,
    TranscriptWritten {
        records: u64,
        path: &'a Path,
    },
}
