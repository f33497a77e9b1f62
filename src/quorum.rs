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
use ring::{aead, digest, pbkdf2};
use vsss_rs::Gf256;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// Bytes of randomness in a generated PIN (printed as 32 hex characters).
pub const PIN_BYTES: usize = 16;
/// PBKDF2 rounds for passphrase-encrypted shares.
pub const PASSPHRASE_ITERATIONS: u32 = 600_000;
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
            index: i as u8 + 1,
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

fn key_from(passphrase: &str, salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        passphrase.as_bytes(),
        key.as_mut(),
    );
    key
}

fn sealing_key(key: &[u8; 32]) -> aead::LessSafeKey {
    // A 32-byte key always fits ChaCha20-Poly1305.
    aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).unwrap_or_else(|_| unreachable!()),
    )
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&bytes[..len]);
}

impl Share {
    fn header(&self, flags: u8, iterations: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(MAGIC);
        h.push(flags);
        h.extend_from_slice(&self.quorum);
        h.extend_from_slice(&[self.threshold, self.officers, self.index]);
        h.extend_from_slice(&self.commitment);
        push_str(&mut h, &self.holder);
        push_str(&mut h, &self.token);
        h.extend_from_slice(&iterations.to_be_bytes());
        h
    }

    /// The share as the text an officer keeps (and may print), optionally encrypted to
    /// `passphrase` with `iterations` PBKDF2 rounds.
    pub fn to_text(
        &self,
        passphrase: Option<&str>,
        iterations: u32,
        created: &str,
    ) -> Result<String, QuorumError> {
        let (flags, iterations) = match passphrase {
            Some(p) if p.chars().count() < MIN_PASSPHRASE_CHARS => {
                return Err(QuorumError::WeakPassphrase)
            }
            Some(_) => (FLAG_ENCRYPTED, iterations),
            None => (0, 0),
        };
        let mut bytes = self.header(flags, iterations);
        match passphrase {
            Some(p) => {
                let mut salt = [0u8; SALT_BYTES];
                let mut nonce = [0u8; aead::NONCE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut salt);
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let key = sealing_key(&key_from(p, &salt, iterations));
                let mut sealed = self.value.to_vec();
                key.seal_in_place_append_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(bytes.clone()),
                    &mut sealed,
                )
                .map_err(|_| QuorumError::Sharing("encryption failed".into()))?;
                bytes.extend_from_slice(&salt);
                bytes.extend_from_slice(&nonce);
                bytes.extend_from_slice(&sealed);
            }
            None => bytes.extend_from_slice(&self.value),
        }
        let sum = digest::digest(&digest::SHA256, &bytes);
        bytes.extend_from_slice(&sum.as_ref()[..CHECKSUM_BYTES]);
        let encoded = base32(&bytes);
        let groups: Vec<&str> = encoded
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        let lines: Vec<String> = groups.chunks(8).map(|g| g.join("-")).collect();
        Ok(format!(
            "hsm-ca PIN share: keep it secret and apart from the other officers' shares.\n\
             Officer:   {holder}\n\
             Share:     {index} of {officers}; any {threshold} shares unlock the token\n\
             Token:     {token}\n\
             Quorum:    {quorum}\n\
             Encrypted: {enc}\n\
             Created:   {created}\n\
             \n{BEGIN}\n{body}\n{END}\n",
            holder = self.holder,
            index = self.index,
            officers = self.officers,
            threshold = self.threshold,
            token = self.token,
            quorum = self.quorum_id(),
            enc = if flags & FLAG_ENCRYPTED != 0 {
                "yes (the officer's passphrase opens it)"
            } else {
                "no"
            },
            body = lines.join("\n"),
        ))
    }
}

/// A share as read from a file or typed in, before any passphrase is applied.
pub struct SealedShare {
    source: String,
    bytes: Zeroizing<Vec<u8>>,
    header_len: usize,
    encrypted: bool,
    iterations: u32,
    pub holder: String,
    pub index: u8,
}

impl SealedShare {
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Reads a share. `text` may be the whole file or just the encoded block (as typed in);
    /// spaces, dashes and letter case do not matter. `source` names it in errors.
    pub fn parse(source: &str, text: &str) -> Result<Self, QuorumError> {
        let malformed = |reason: &str| QuorumError::Malformed {
            from: source.to_string(),
            reason: reason.to_string(),
        };
        let block = match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if e > b => &text[b + BEGIN.len()..e],
            (None, None) => text,
            _ => return Err(malformed("the BEGIN/END lines are damaged")),
        };
        let compact: String = block
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        let bytes = Zeroizing::new(
            unbase32(&compact).ok_or_else(|| malformed("a character is not base32"))?,
        );
        if bytes.len() < MAGIC.len() + 1 + 8 + 3 + COMMITMENT_BYTES + 2 + 4 + CHECKSUM_BYTES {
            return Err(malformed("it is too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if &digest::digest(&digest::SHA256, body).as_ref()[..CHECKSUM_BYTES] != sum {
            return Err(QuorumError::Checksum(source.to_string()));
        }
        if &body[..4] != MAGIC {
            return Err(malformed("unknown format"));
        }
        let flags = body[4];
        let mut at = 5 + 8 + 3 + COMMITMENT_BYTES;
        let read_str = |at: &mut usize| -> Result<String, QuorumError> {
            let len = *body.get(*at).ok_or_else(|| malformed("truncated"))? as usize;
            let s = body
                .get(*at + 1..*at + 1 + len)
                .ok_or_else(|| malformed("truncated"))?;
            *at += 1 + len;
            String::from_utf8(s.to_vec()).map_err(|_| malformed("a name is not UTF-8"))
        };
        let holder = read_str(&mut at)?;
        let _token = read_str(&mut at)?;
        let iterations = body
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| malformed("truncated"))?;
        at += 4;
        let index = body[4 + 1 + 8 + 2];
        Ok(SealedShare {
            source: source.to_string(),
            header_len: at,
            encrypted: flags & FLAG_ENCRYPTED != 0,
            iterations,
            holder,
            index,
            bytes: Zeroizing::new(body.to_vec()),
        })
    }

    /// Opens the share (with its officer's passphrase when it is encrypted).
    pub fn open(&self, passphrase: Option<&str>) -> Result<Share, QuorumError> {
        let malformed = |reason: &str| QuorumError::Malformed {
            from: self.source.clone(),
            reason: reason.to_string(),
        };
        let header = &self.bytes[..self.header_len];
        let rest = &self.bytes[self.header_len..];
        let value = if self.encrypted {
            let p = passphrase.ok_or_else(|| QuorumError::PassphraseNeeded(self.source.clone()))?;
            if rest.len() < SALT_BYTES + aead::NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
                return Err(malformed("truncated"));
            }
            let (salt, rest) = rest.split_at(SALT_BYTES);
            let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
            let key = sealing_key(&key_from(p, salt, self.iterations));
            let mut buf = Zeroizing::new(sealed.to_vec());
            let nonce = aead::Nonce::try_assume_unique_for_key(nonce)
                .map_err(|_| malformed("bad nonce"))?;
            let plain = key
                .open_in_place(nonce, aead::Aad::from(header), &mut buf)
                .map_err(|_| QuorumError::WrongPassphrase(self.source.clone()))?;
            Zeroizing::new(plain.to_vec())
        } else {
            Zeroizing::new(rest.to_vec())
        };
        if value.len() < 2 || value[0] == 0 {
            return Err(malformed("empty share"));
        }
        let mut quorum = [0u8; 8];
        quorum.copy_from_slice(&header[5..13]);
        let (threshold, officers, index) = (header[13], header[14], header[15]);
        let mut commitment = [0u8; COMMITMENT_BYTES];
        commitment.copy_from_slice(&header[16..16 + COMMITMENT_BYTES]);
        let mut at = 16 + COMMITMENT_BYTES;
        let mut read_str = || {
            let len = header[at] as usize;
            let s = String::from_utf8_lossy(&header[at + 1..at + 1 + len]).into_owned();
            at += 1 + len;
            s
        };
        let holder = read_str();
        let token = read_str();
        if index == 0 || index > officers || value[0] != index {
            return Err(malformed("the share's number does not match its content"));
        }
        Ok(Share {
            quorum,
            threshold,
            officers,
            index,
            holder,
            token,
            commitment,
            value,
        })
    }
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for b in bytes {
        buffer = (buffer << 8) | *b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.chars() {
        let c = c.to_ascii_uppercase() as u8;
        let v = BASE32.iter().position(|x| *x == c)? as u32;
        buffer = ((buffer << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("officer {i}")).collect()
    }

    fn reread(share: &Share, passphrase: Option<&str>) -> Share {
        let text = share.to_text(passphrase, 1000, "now").expect("text");
        SealedShare::parse("share", &text)
            .expect("parse")
            .open(passphrase)
            .expect("open")
    }

    #[test]
    fn any_three_of_five_rebuild_the_pin_and_two_do_not() {
        let split = split(3, &holders(5), "root-token").expect("split");
        assert_eq!(split.pin.expose().len(), 2 * PIN_BYTES);
        let shares: Vec<Share> = split.shares.iter().map(|s| reread(s, None)).collect();
        for a in 0..5 {
            for b in a + 1..5 {
                for c in b + 1..5 {
                    let pin = combine(&[shares[a].clone(), shares[b].clone(), shares[c].clone()])
                        .expect("combine");
                    assert_eq!(pin.expose(), split.pin.expose());
                }
                let err = combine(&[shares[a].clone(), shares[b].clone()]).expect_err("two");
                assert!(
                    matches!(
                        err,
                        QuorumError::NotEnough {
                            given: 2,
                            threshold: 3,
                            ..
                        }
                    ),
                    "{err}"
                );
            }
        }
        // All five work too.
        assert_eq!(combine(&shares).expect("all").expose(), split.pin.expose());
    }

    #[test]
    fn typed_in_shares_ignore_case_spaces_and_dashes_and_catch_typos() {
        let split = split(2, &holders(3), "t").expect("split");
        let text = split.shares[0].to_text(None, 0, "now").expect("text");
        let start = text.find(BEGIN).expect("begin") + BEGIN.len();
        let block = &text[start..text.find(END).expect("end")];
        let typed = block.to_lowercase().replace('-', " ");
        let share = SealedShare::parse("typed", &typed).expect("parse");
        assert_eq!(share.index, 1);
        assert_eq!(share.holder, "officer 1");
        // One character changed: the checksum catches it.
        let mut chars: Vec<char> = block.trim().chars().collect();
        let i = chars
            .iter()
            .position(|c| c.is_ascii_alphanumeric())
            .expect("char");
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert!(matches!(
            SealedShare::parse("typed", &typo),
            Err(QuorumError::Checksum(_)) | Err(QuorumError::Malformed { .. })
        ));
    }

    #[test]
    fn an_altered_share_with_a_fixed_checksum_is_refused_before_any_login() {
        let split = split(2, &holders(3), "t").expect("split");
        let mut bad = split.shares[1].clone();
        bad.value[3] ^= 0x55;
        // Re-encoding recomputes the checksum, as an officer forging a share would.
        let bad = reread(&bad, None);
        let err = combine(&[split.shares[0].clone(), bad]).expect_err("altered");
        assert!(matches!(err, QuorumError::Commitment(_)), "{err}");
    }

    #[test]
    fn shares_of_different_splits_or_repeated_shares_are_refused() {
        let a = split(2, &holders(3), "t").expect("split");
        let b = split(2, &holders(3), "t").expect("split");
        assert!(matches!(
            combine(&[a.shares[0].clone(), b.shares[1].clone()]),
            Err(QuorumError::MixedQuorums(..))
        ));
        assert!(matches!(
            combine(&[a.shares[0].clone(), a.shares[0].clone()]),
            Err(QuorumError::Duplicate(1))
        ));
    }

    #[test]
    fn encrypted_shares_need_their_passphrase() {
        let split = split(2, &holders(2), "t").expect("split");
        let text = split.shares[0]
            .to_text(Some("correct horse battery"), 1000, "now")
            .expect("text");
        assert!(text.contains("Encrypted: yes"));
        let sealed = SealedShare::parse("f", &text).expect("parse");
        assert!(sealed.is_encrypted());
        assert!(matches!(
            sealed.open(None),
            Err(QuorumError::PassphraseNeeded(_))
        ));
        assert!(matches!(
            sealed.open(Some("wrong horse battery")),
            Err(QuorumError::WrongPassphrase(_))
        ));
        let opened = sealed.open(Some("correct horse battery")).expect("open");
        let pin = combine(&[opened, split.shares[1].clone()]).expect("combine");
        assert_eq!(pin.expose(), split.pin.expose());
        assert!(matches!(
            split.shares[0].to_text(Some("short"), 1000, "now"),
            Err(QuorumError::WeakPassphrase)
        ));
    }

    #[test]
    fn nothing_secret_in_the_text_header_or_debug() {
        let split = split(2, &holders(2), "t").expect("split");
        let text = split.shares[0].to_text(None, 0, "now").expect("text");
        assert!(!text.contains(split.pin.expose()));
        let shown = format!("{:?}", split.shares[0]);
        assert!(shown.contains("redacted"), "{shown}");
    }

    #[test]
    fn thresholds_outside_two_to_n_are_refused() {
        assert!(matches!(
            split(1, &holders(3), "t"),
            Err(QuorumError::BadThreshold { .. })
        ));
        assert!(matches!(
            split(4, &holders(3), "t"),
            Err(QuorumError::BadThreshold { .. })
        ));
    }
}
