//! Untrusted input: an exported audit log or ceremony transcript (JSON Lines, one stored
//! record per line) handed to `hsm-ca audit verify --file` or `ceremony transcript`, which
//! may have been edited, truncated or made up by whoever held the file.
//!
//! Two forms of input:
//! - text (first byte not 0): verified as it is with `audit::verify_lines` (the bytes API of
//!   `verify_file`), without a key and against the fixture audit key whose checkpoint the
//!   seeds carry; then read as a transcript (`transcript::verify`, `transcript::render`);
//! - `0x00` then lines: every line that parses as a record is sealed again in place (sequence
//!   number, link to the previous line, and a checkpoint's `head_seq`/`head`), so that
//!   mutations of the fields get past the hash chain, which a fuzzer cannot forge; the result
//!   is verified (without a key: no signature can match a changed head) and rendered.
#![no_main]

use hsm_ca::audit::record::{self, AuditEvent, AuditRecord, GENESIS};
use hsm_ca::ceremony::transcript;

/// DER SubjectPublicKeyInfo of the P-256 key that signed the seeds' checkpoints.
const AUDIT_KEY: &[u8] = include_bytes!("../fixtures/audit-key.spki.der");

fn check(text: &str, keys: &[&[u8]]) {
    let _ = hsm_ca::audit::verify_lines(text, keys);
    let stored: Vec<Vec<u8>> = text
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if let Ok(verified) = transcript::verify(&stored, None) {
        let _ = transcript::render(&verified.records);
    }
}

/// The lines of `text`, each record sealed again after the one before it.
fn resealed(text: &str) -> String {
    let mut out = String::new();
    let mut head = GENESIS;
    for (n, line) in text.split('\n').filter(|l| !l.is_empty()).enumerate() {
        let seq = n as u64 + 1;
        let stored = match serde_json::from_str::<AuditRecord>(line) {
            Ok(mut r) => {
                if let AuditEvent::Checkpoint {
                    head_seq,
                    head: signed,
                    ..
                } = &mut r.event
                {
                    *head_seq = seq - 1;
                    *signed = hex(&head);
                }
                let (bytes, next) = record::seal(seq, r.time, &head, r.event);
                head = next;
                String::from_utf8(bytes).unwrap_or_default()
            }
            Err(_) => {
                head = record::link_hash(line.as_bytes());
                line.to_string()
            }
        };
        out.push_str(&stored);
        out.push('\n');
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, rest)) => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check(&resealed(text), &[]);
            }
        }
        Some(_) => {
            if let Ok(text) = std::str::from_utf8(data) {
                check(text, &[]);
                check(text, &[AUDIT_KEY]);
            }
        }
        None => {}
    }
});
