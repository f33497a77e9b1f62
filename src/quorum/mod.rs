//! Dual control for a token's user PIN: the PIN is made at random inside the tool, split with
//! Shamir's secret sharing (over GF(256), by the `vsss-rs` crate) into one share per officer,
//! and put back together in memory only when enough officers present their shares.
//!
//! A share is printable text. Its encoded block carries, besides the share itself: the quorum
//! it belongs to (a random id), the threshold and number of officers, the officer's name, the
//! token's label, a commitment to the PIN, and a checksum. The checksum catches a mistyped
//! share. The commitment — SHA-256 over the quorum id and the PIN, which is 128 random bits so
//! nothing can be learnt from it — lets [`combine`] refuse shares that do not rebuild this
//! quorum's PIN (a damaged share, a share from another split, a share an officer altered)
//! *before* anything is presented to the token: a bad share never counts as a failed login
//! towards the token's PIN lockout.
//!
//! A share may be encrypted to its officer's passphrase (PBKDF2-HMAC-SHA256, then
//! ChaCha20-Poly1305 with the share's header as associated data).

use std::fmt;

use rand::RngCore;
use ring::digest;
use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::secret::Secret;

mod sealed;
#[cfg(test)]
mod tests;

pub use sealed::SealedShare;

/// Bytes of randomness in a generated PIN (printed as 32 hex characters).
pub const PIN_BYTES: usize = 16;
/// PBKDF2 rounds for passphrase-encrypted shares.
pub const PASSPHRASE_ITERATIONS: u32 = 600_000;
/// Most PBKDF2 rounds a share may ask for: opening it must not take hours.
pub const MAX_PASSPHRASE_ITERATIONS: u32 = 10 * PASSPHRASE_ITERATIONS;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Most officers in one quorum.
pub const MAX_OFFICERS: u8 = 64;

const MAGIC: &[u8; 4] = b"HCQ1";
const FLAG_ENCRYPTED: u8 = 1;
const COMMITMENT_BYTES: usize = 16;
const CHECKSUM_BYTES: usize = 4;
const SALT_BYTES: usize = 16;
const BEGIN: &str = "-----BEGIN HSM-CA PIN SHARE-----";
const END: &str = "-----END HSM-CA PIN SHARE-----";
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Why shares could not be made or used. Never contains a share or the PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("a quorum needs a threshold of at least 2 and at most the number of officers ({officers}); got {threshold}")]
    BadThreshold { threshold: u8, officers: u8 },
    #[error("a quorum has at most {MAX_OFFICERS} officers")]
    TooManyOfficers,
    #[error("{holders} holder name(s) given for {officers} officers")]
    HolderCount { holders: usize, officers: u8 },
    #[error("holder name {0:?} must be 1 to 64 printable characters without newlines")]
    BadHolder(String),
    #[error("{from}: this is not an hsm-ca PIN share ({reason})")]
    Malformed { from: String, reason: String },
    #[error(
        "{0}: the share's checksum does not match (a character was mistyped or the file damaged)"
    )]
    Checksum(String),
    #[error("{0}: the share is encrypted; its officer's passphrase is needed")]
    PassphraseNeeded(String),
    #[error("{0}: the passphrase does not open this share")]
    WrongPassphrase(String),
    #[error("a passphrase needs at least {MIN_PASSPHRASE_CHARS} characters")]
    WeakPassphrase,
    #[error("the shares belong to different quorums ({0} and {1}); use shares of one split")]
    MixedQuorums(String, String),
    #[error("share {0} was given twice; each officer's share counts once")]
    Duplicate(u8),
    #[error("{given} share(s) given; quorum {quorum} needs {threshold} of its {officers} officers. Nothing was presented to the token")]
    NotEnough {
        given: usize,
        threshold: u8,
        officers: u8,
        quorum: String,
    },
    #[error("the shares do not rebuild quorum {0}'s PIN (a share was altered or damaged). Nothing was presented to the token")]
    Commitment(String),
    #[error("the shares are for token {found:?}, the config names token {expected:?}")]
    WrongToken { expected: String, found: String },
    #[error("secret sharing failed: {0}")]
    Sharing(String),
}

/// One officer's share, decoded (and decrypted). Its `Debug` hides the share value.
#[derive(Clone)]
pub struct Share {
    pub quorum: [u8; 8],
    pub threshold: u8,
    pub officers: u8,
    /// 1..=officers.
    pub index: u8,
    pub holder: String,
    pub token: String,
    commitment: [u8; COMMITMENT_BYTES],
    /// The Shamir share: identifier byte, then one byte per PIN byte.
    value: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share")
            .field("quorum", &self.quorum_id())
            .field("index", &self.index)
            .field("threshold", &self.threshold)
            .field("officers", &self.officers)
            .field("holder", &self.holder)
            .field("value", &"[redacted]")
            .finish()
    }
}

impl Share {
    /// The quorum id as printed (16 hex characters).
    pub fn quorum_id(&self) -> String {
        hex::encode(self.quorum)
    }
}

/// A freshly made PIN and its shares.
pub struct Split {
    pub pin: Secret,
    pub shares: Vec<Share>,
}

fn commitment(quorum: &[u8; 8], pin: &[u8]) -> [u8; COMMITMENT_BYTES] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"hsm-ca quorum commitment v1\n");
    ctx.update(quorum);
    ctx.update(pin);
    let mut out = [0u8; COMMITMENT_BYTES];
    out.copy_from_slice(&ctx.finish().as_ref()[..COMMITMENT_BYTES]);
    out
}

fn check_holder(name: &str) -> Result<(), QuorumError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(|c| c.is_control());
    ok.then_some(())
        .ok_or_else(|| QuorumError::BadHolder(name.to_string()))
}

/// Makes a random PIN and splits it into `holders.len()` shares, any `threshold` of which
/// rebuild it.
pub fn split(threshold: u8, holders: &[String], token: &str) -> Result<Split, QuorumError> {
    let officers = u8::try_from(holders.len()).map_err(|_| QuorumError::TooManyOfficers)?;
    if officers > MAX_OFFICERS {
        return Err(QuorumError::TooManyOfficers);
    }
    if threshold < 2 || threshold > officers {
        return Err(QuorumError::BadThreshold {
            threshold,
            officers,
        });
    }
    for h in holders {
        check_holder(h)?;
    }
    let mut rng = rand::rngs::OsRng;
    let mut raw = Zeroizing::new([0u8; PIN_BYTES]);
    rng.fill_bytes(raw.as_mut());
    let pin = Zeroizing::new(hex::encode(raw.as_ref()));
    let mut quorum = [0u8; 8];
    rng.fill_bytes(&mut quorum);
    let commitment = commitment(&quorum, pin.as_bytes());
    let values = Gf256::split_array(threshold as usize, officers as usize, pin.as_bytes(), rng)
        .map_err(|e| QuorumError::Sharing(format!("{e:?}")))?;
    let shares = values
        .into_iter()
        .zip(holders)
        .enumerate()
        .map(|(i, (value, holder))| Share {
            quorum,
            threshold,
            officers,
            index: u8::try_from(i + 1).expect("one share per officer, and officers is a u8"),
            holder: holder.clone(),
            token: token.to_string(),
            commitment,
            value: Zeroizing::new(value),
        })
        .collect();
    Ok(Split {
        pin: Secret::new(pin.to_string()),
        shares,
    })
}

/// Rebuilds the PIN from shares of one quorum; refuses too few, mixed, repeated or altered
/// shares without revealing anything about the PIN.
pub fn combine(shares: &[Share]) -> Result<Secret, QuorumError> {
    let first = shares.first().ok_or(QuorumError::NotEnough {
        given: 0,
        threshold: 0,
        officers: 0,
        quorum: "(none)".into(),
    })?;
    let mut seen = Vec::new();
    for s in shares {
        if s.quorum != first.quorum
            || s.threshold != first.threshold
            || s.officers != first.officers
            || s.commitment != first.commitment
        {
            return Err(QuorumError::MixedQuorums(first.quorum_id(), s.quorum_id()));
        }
        if seen.contains(&s.index) {
            return Err(QuorumError::Duplicate(s.index));
        }
        seen.push(s.index);
    }
    if shares.len() < first.threshold as usize {
        return Err(QuorumError::NotEnough {
            given: shares.len(),
            threshold: first.threshold,
            officers: first.officers,
            quorum: first.quorum_id(),
        });
    }
    let values: Vec<Vec<u8>> = shares.iter().map(|s| s.value.to_vec()).collect();
    let values = Zeroizing::new(values);
    let pin = Zeroizing::new(
        Gf256::combine_array(values.as_slice())
            .map_err(|_| QuorumError::Commitment(first.quorum_id()))?,
    );
    let ok = crate::secret::constant_time_eq(&commitment(&first.quorum, &pin), &first.commitment);
    let text = std::str::from_utf8(&pin).ok().filter(|_| ok);
    match text {
        Some(t) => Ok(Secret::new(t.to_string())),
        None => Err(QuorumError::Commitment(first.quorum_id())),
    }
}

/// Checks that shares are for the token the config names.
pub fn check_token(shares: &[Share], expected: &str) -> Result<(), QuorumError> {
    match shares.iter().find(|s| s.token != expected) {
        Some(s) => Err(QuorumError::WrongToken {
            expected: expected.to_string(),
            found: s.token.clone(),
        }),
        None => Ok(()),
    }
}
