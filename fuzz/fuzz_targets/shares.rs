//! Untrusted input: PIN share files and shares typed in by officers at the ceremony host
//! (`--share FILE`, or the encoded block pasted at a prompt), possibly encrypted to a
//! passphrase, and the set of shares presented together for a quorum login.
//!
//! Two forms of input:
//! - text (first byte not 0): one share as read from a file, through `SealedShare::parse`,
//!   `open` with and without a passphrase, then `combine` and `check_token`;
//! - `0x00` then share bodies separated by `0xff 0x00`: each body is the decoded block of a
//!   share without its checksum. The target appends the checksum and encodes the text as the
//!   tool writes it, so that mutations reach the fields behind the checksum (which a fuzzer
//!   cannot forge), clamps a body's PBKDF2 round count to at most 4 (a real count makes one
//!   input take a second), then parses and opens every share and combines them.
#![no_main]

use hsm_ca::quorum::{self, SealedShare, Share};

const BEGIN: &str = "-----BEGIN HSM-CA PIN SHARE-----";
const END: &str = "-----END HSM-CA PIN SHARE-----";
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The passphrase the seed shares are encrypted to.
const PASSPHRASE: &str = "correct horse battery staple";
/// Where the holder name's length byte sits: magic, flags, quorum, threshold/officers/index,
/// commitment.
const HOLDER_AT: usize = 4 + 1 + 8 + 3 + 16;

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for b in bytes {
        buffer = (buffer << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The share text for `body` (the decoded block without its checksum).
fn share_text(body: &[u8]) -> String {
    let mut bytes = body.to_vec();
    // Few PBKDF2 rounds, wherever the round count sits.
    let at = HOLDER_AT;
    if let Some(holder) = bytes.get(at).map(|l| usize::from(*l)) {
        if let Some(token) = bytes.get(at + 1 + holder).map(|l| usize::from(*l)) {
            let rounds = at + 2 + holder + token;
            if let Some(field) = bytes.get_mut(rounds..rounds + 4) {
                field.copy_from_slice(&[0, 0, 0, field[3] & 3]);
            }
        }
    }
    let sum = ring::digest::digest(&ring::digest::SHA256, &bytes);
    bytes.extend_from_slice(&sum.as_ref()[..4]);
    format!("{BEGIN}\n{}\n{END}\n", base32(&bytes))
}

fn open(text: &str) -> Option<Share> {
    let sealed = SealedShare::parse("fuzz", text).ok()?;
    let _ = sealed.is_encrypted();
    let _ = sealed.open(None);
    sealed.open(Some(PASSPHRASE)).ok()
}

fn login(shares: &[Share]) {
    let _ = quorum::check_token(shares, "hsm-ca");
    let _ = quorum::combine(shares);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, bodies)) => {
            let mut shares = Vec::new();
            let mut rest = bodies;
            loop {
                let (body, next) = match rest.windows(2).position(|w| w == [0xff, 0]) {
                    Some(i) => (&rest[..i], Some(&rest[i + 2..])),
                    None => (rest, None),
                };
                if let Some(share) = open(&share_text(body)) {
                    shares.push(share);
                }
                match next {
                    Some(n) if shares.len() < 8 => rest = n,
                    _ => break,
                }
            }
            login(&shares);
        }
        Some(_) => {
            if let Ok(text) = std::str::from_utf8(data) {
                if let Some(share) = open(text) {
                    login(&[share]);
                }
            }
        }
        None => {}
    }
});
