//! A share as officers keep it: printable text (base32 between BEGIN and END lines) with a
//! checksum, optionally encrypted to its officer's passphrase (PBKDF2-HMAC-SHA256, then
//! ChaCha20-Poly1305 with the share's header as associated data). Never holds a passphrase
//! longer than one call.

use rand::RngCore;
use ring::{aead, digest, pbkdf2};
use zeroize::Zeroizing;

use super::{
    QuorumError, Share, BASE32, BEGIN, CHECKSUM_BYTES, COMMITMENT_BYTES, END, FLAG_ENCRYPTED,
    MAGIC, MAX_PASSPHRASE_ITERATIONS, MIN_PASSPHRASE_CHARS, SALT_BYTES,
};

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
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&bytes[..usize::from(len)]);
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
        // The END line is looked for after the BEGIN line: the two may share their dashes.
        let begin = text.find(BEGIN);
        let end = match begin {
            Some(b) => text[b + BEGIN.len()..]
                .find(END)
                .map(|e| b + BEGIN.len() + e),
            None => text.find(END),
        };
        let block = match (begin, end) {
            (Some(b), Some(e)) => &text[b + BEGIN.len()..e],
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
        if flags & FLAG_ENCRYPTED != 0 && iterations > MAX_PASSPHRASE_ITERATIONS {
            return Err(malformed(
                "it asks for more passphrase rounds than any share has",
            ));
        }
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
        // Only ASCII: a wider character must not alias a letter by truncation.
        let c = u8::try_from(c.to_ascii_uppercase()).ok()?;
        let v = u32::try_from(BASE32.iter().position(|x| *x == c)?).ok()?;
        buffer = ((buffer << 5) | v) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff).to_le_bytes()[0]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_asking_for_endless_passphrase_rounds_is_refused_before_opening() {
        let holders = ["a".to_string(), "b".to_string()];
        let share = super::super::split(2, &holders, "t").expect("split").shares[0].clone();
        // Encrypted as `to_text` lays it out, but with u32::MAX PBKDF2 rounds (hours of work
        // for whoever opens it); the checksum is fixed, as a forger would.
        let mut bytes = share.header(FLAG_ENCRYPTED, u32::MAX);
        bytes.extend_from_slice(&[0u8; SALT_BYTES + aead::NONCE_LEN]);
        bytes.extend_from_slice(&share.value);
        bytes.extend_from_slice(&[0u8; 16]);
        let sum = digest::digest(&digest::SHA256, &bytes);
        bytes.extend_from_slice(&sum.as_ref()[..CHECKSUM_BYTES]);
        let text = format!("{BEGIN}\n{}\n{END}\n", base32(&bytes));
        let err = SealedShare::parse("forged", &text).err();
        assert!(
            matches!(err, Some(QuorumError::Malformed { .. })),
            "{:?}",
            err.map(|e| e.to_string())
        );
    }
}
