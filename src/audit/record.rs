//! Audit records and the hash chain that links them.
//!
//! Each record is stored as the exact JSON bytes that were hashed. Record `n` carries the
//! SHA-256 of record `n-1`'s bytes in `prev` (all zeros for the first), so changing, removing or
//! reordering any record breaks the link to the next one. (The last records are protected by
//! signed checkpoints over the chain head, which build on this.)
//!
//! Versions: in a version 2 record, a checkpoint's signature covers the checkpoint record
//! itself (its sequence number, time and key id as well as the head it names,
//! [`checkpoint_record_message`]), so the last record of a log cannot be edited either. A
//! version 1 checkpoint (written by older builds) signs only the head it names
//! ([`checkpoint_message`]) and verifies as it always did. This build writes version 2.

use serde::{Deserialize, Serialize};

/// Version of [`AuditRecord`] this build writes.
pub const RECORD_VERSION: u32 = 2;

/// The oldest record version this build still verifies.
pub const OLDEST_VERSION: u32 = 1;

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// One decision or state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditEvent {
    /// A workload certificate was issued.
    Issued {
        serial: String,
        identity: String,
        caller: String,
        method: String,
        ca_key: String,
        not_before: String,
        not_after: String,
        csr_key_sha256: String,
        /// SHA-256 of the certificate's DER (CA certificates).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate_sha256: Option<String>,
    },
    /// A request was refused. `folded` counts refusals of the same caller that were not
    /// recorded one by one since its previous record (rate limiting).
    Refused {
        caller: Option<String>,
        code: String,
        reason: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        folded: u64,
    },
    /// A front door (the Vault API) minted an access token at a login. The token itself is
    /// never recorded; its accessor names it.
    TokenIssued {
        login: String,
        caller: String,
        accessor: String,
        policies: Vec<String>,
        expires_at: String,
    },
    /// A signature by the audit key (in the device) over the chain up to `head_seq`, whose
    /// stored bytes hash to `head`.
    Checkpoint {
        head_seq: u64,
        head: String,
        key_id: String,
        /// Base64 DER signature over [`checkpoint_record_message`] (version 2 records) or
        /// [`checkpoint_message`] (version 1).
        signature: String,
    },
    /// A key pair was created inside the device.
    KeyGenerated {
        actor: String,
        key_id: String,
        algorithm: String,
        label: String,
    },
    /// An intermediate certificate was installed (state: prepared or active).
    CertificateInstalled {
        actor: String,
        key_id: String,
        subject: String,
        serial: String,
        not_after: String,
        status: String,
    },
    /// An intermediate became the one that issues.
    Activated {
        actor: String,
        key_id: String,
        previous: Option<String>,
    },
    /// An intermediate stopped issuing.
    Retired { actor: String, key_id: String },
    /// A root was added to the trust bundle.
    RootAdded {
        actor: String,
        fingerprint: String,
        subject: String,
        not_after: String,
    },
    /// A root was removed from the trust bundle.
    RootRemoved {
        actor: String,
        fingerprint: String,
        forced: bool,
    },
    /// A certificate was revoked.
    Revoked {
        actor: String,
        issuer_key: String,
        serial: String,
        reason: String,
    },
    /// A sensitive operation was proposed and waits for approvals.
    Proposed {
        actor: String,
        proposal: String,
        operation: String,
        threshold: u32,
    },
    /// An officer approved a proposal.
    Approved {
        actor: String,
        proposal: String,
        approvals: u32,
        threshold: u32,
    },
    /// An admin request was refused (no client certificate, unknown identity, wrong role).
    AdminRefused {
        caller: Option<String>,
        route: String,
        code: String,
        reason: String,
    },
    /// A ceremony began on the offline host, in front of `officers`.
    CeremonyStarted {
        command: String,
        officers: Vec<String>,
        host: String,
        version: String,
    },
    /// The token's PIN was split among officers (or re-split, replacing the old shares).
    QuorumCreated {
        quorum: String,
        threshold: u32,
        holders: Vec<String>,
        token: String,
        encrypted: bool,
        replaces: Option<String>,
    },
    /// Officers' shares rebuilt the PIN and the token was logged in with it.
    QuorumLogin {
        quorum: String,
        shares: Vec<u32>,
        holders: Vec<String>,
    },
    /// A CRL was signed.
    CrlSigned {
        actor: String,
        issuer: String,
        number: u64,
        revoked: u64,
        next_update: String,
    },
    /// A root's CRL, signed offline, was imported into the appliance; `newly_revoked` lists
    /// the serials the appliance had not known as revoked.
    CrlImported {
        actor: String,
        issuer: String,
        number: u64,
        revoked: u64,
        newly_revoked: Vec<String>,
    },
    /// A ceremony wrote its outputs (file name and SHA-256 of each).
    CeremonyEnded {
        command: String,
        outputs: Vec<(String, String)>,
    },
    /// A ceremony stopped before it finished.
    CeremonyFailed { command: String, error: String },
    /// An ACME External Account Binding key was made; `policy` is what its accounts may
    /// order, as JSON (never the MAC key).
    EabKeyCreated {
        actor: String,
        kid: String,
        policy: String,
    },
    /// A row of the shared database that no member signed was ignored (written there by
    /// other means than an appliance).
    StateRowRejected { table: String, key: String },
    /// An ACME External Account Binding key was revoked.
    EabKeyRevoked { actor: String, kid: String },
    /// The token's user PIN was changed (`hsm-ca keys change-pin`).
    PinChanged { token: String, actor: String },
    /// The log could be written again after a storage error (a full disk) that began at
    /// `failed_at`; `errors` callers were answered with an error meanwhile, their records not
    /// written (refusals are not among them: they are in the folded counts).
    StorageResumed { failed_at: String, errors: u64 },
    /// An `issued` record whose certificate never left: the device failed to sign it after
    /// the record was made (records are made while the device signs).
    NotIssued {
        serial: String,
        ca_key: String,
        reason: String,
    },
    /// The appliance started.
    Started { version: String },
    /// The appliance stopped cleanly.
    Stopped {},
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a version 1 checkpoint signs: the chain head, bound to its position (not the
/// checkpoint record's own time or key id).
pub fn checkpoint_message(head_seq: u64, head_hex: &str) -> Vec<u8> {
    format!("hsm-ca audit checkpoint v1\n{head_seq}\n{head_hex}\n").into_bytes()
}

/// What a version 2 checkpoint signs: the checkpoint record's own sequence number, time and
/// key id, and the chain head it names (JSON-encoded, so no two differ only in where one
/// field ends).
pub fn checkpoint_record_message(
    seq: u64,
    time: &str,
    key_id: &str,
    head_seq: u64,
    head_hex: &str,
) -> Vec<u8> {
    let fields = serde_json::json!([seq, time, key_id, head_seq, head_hex]);
    format!("hsm-ca audit checkpoint v2\n{fields}\n").into_bytes()
}

/// A record as stored: sequence number, UTC time, link to the previous record, the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// Hex SHA-256 of the previous record's stored bytes.
    pub prev: String,
    pub event: AuditEvent,
}

/// The hash that the next record links to.
pub fn link_hash(stored: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, stored);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why a chain does not verify: the first problem found, with the sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {position}: unreadable ({reason})")]
    Unreadable { position: u64, reason: String },
    #[error("record {position}: version {version} is not known to this build")]
    UnknownVersion { position: u64, version: u32 },
    #[error("record {position}: sequence number {found}, expected {expected} (a record was removed, added or moved)")]
    Sequence {
        position: u64,
        expected: u64,
        found: u64,
    },
    #[error(
        "record {seq}: does not link to record {previous} (a record was changed, removed or moved)"
    )]
    Link { seq: u64, previous: u64 },
    #[error("record {seq}: checkpoint does not verify ({reason})")]
    Checkpoint { seq: u64, reason: String },
}

/// What a verified chain looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub records: u64,
    /// Hash of the last record's stored bytes (what the next record will link to).
    pub head: [u8; 32],
    /// Checkpoints found (their signatures were checked when a key was given).
    pub checkpoints: u64,
    /// Sequence number and time of the last checkpoint.
    pub last_checkpoint: Option<(u64, String)>,
    /// Records after the last checkpoint (not yet covered by a signature).
    pub unsigned_tail: u64,
    /// Whether checkpoint signatures were checked against a public key.
    pub signatures_checked: bool,
}

/// Verifies stored records in order, starting at sequence 1 from [`GENESIS`]. Checkpoints
/// are checked for shape; their signatures too when `audit_key` (DER SubjectPublicKeyInfo of
/// the audit key) is given.
pub fn verify_chain<'a>(
    stored: impl IntoIterator<Item = &'a [u8]>,
) -> Result<ChainSummary, ChainError> {
    verify_chain_with_key(stored, None)
}

/// [`verify_chain`] with checkpoint signatures checked against `audit_key`.
pub fn verify_chain_with_key<'a>(
    stored: impl IntoIterator<Item = &'a [u8]>,
    audit_key: Option<&[u8]>,
) -> Result<ChainSummary, ChainError> {
    verify_chain_with_keys(stored, audit_key.as_slice())
}

/// [`verify_chain`] with every checkpoint signature checked against one of `keys` (DER
/// SubjectPublicKeyInfo: the appliance's audit key, or the roots a ceremony host signs with).
pub fn verify_chain_with_keys<'a>(
    stored: impl IntoIterator<Item = &'a [u8]>,
    keys: &[&[u8]],
) -> Result<ChainSummary, ChainError> {
    verify_chain_from(ChainStart::default(), stored, keys)
}

/// Where a verification starts: after a record already verified (its sequence number and
/// hash, and the last checkpoint up to it), or at the beginning ([`ChainStart::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStart {
    /// Sequence number of the last record already verified (0: none).
    pub seq: u64,
    /// Its hash ([`GENESIS`] for none).
    pub head: [u8; 32],
    /// The last checkpoint up to it (sequence number and time).
    pub last_checkpoint: Option<(u64, String)>,
}

impl Default for ChainStart {
    fn default() -> Self {
        ChainStart {
            seq: 0,
            head: GENESIS,
            last_checkpoint: None,
        }
    }
}

/// Verifies the records after `start` (`stored` begins with record `start.seq + 1`), each
/// checkpoint against one of `keys` (none given: shape only). The summary's `checkpoints`
/// counts those found after `start`.
pub fn verify_chain_from<'a>(
    start: ChainStart,
    stored: impl IntoIterator<Item = &'a [u8]>,
    keys: &[&[u8]],
) -> Result<ChainSummary, ChainError> {
    let keys = keys
        .iter()
        .map(|spki| {
            let scheme = crate::keystore::der::spki_scheme(spki);
            let point = crate::keystore::der::subject_public_key_bits(spki);
            scheme.zip(point).ok_or(ChainError::Checkpoint {
                seq: 0,
                reason: "a verification key is not an EC P-256/P-384 or RSA public key".into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut head = start.head;
    let mut expected = start.seq + 1;
    let mut checkpoints = 0;
    let mut last_checkpoint = start.last_checkpoint;
    for bytes in stored {
        let record: AuditRecord =
            serde_json::from_slice(bytes).map_err(|e| ChainError::Unreadable {
                position: expected,
                reason: e.to_string(),
            })?;
        if !(OLDEST_VERSION..=RECORD_VERSION).contains(&record.v) {
            return Err(ChainError::UnknownVersion {
                position: expected,
                version: record.v,
            });
        }
        if record.seq != expected {
            return Err(ChainError::Sequence {
                position: expected,
                expected,
                found: record.seq,
            });
        }
        if record.prev != hex::encode(head) {
            return Err(ChainError::Link {
                seq: record.seq,
                previous: record.seq - 1,
            });
        }
        if let AuditEvent::Checkpoint {
            head_seq,
            head: signed_head,
            signature,
            key_id,
        } = &record.event
        {
            let bad = |reason: &str| ChainError::Checkpoint {
                seq: record.seq,
                reason: reason.into(),
            };
            if *head_seq + 1 != record.seq || *signed_head != record.prev {
                return Err(bad("it names another head than the record before it"));
            }
            if !keys.is_empty() {
                use base64::Engine;
                let sig = base64::engine::general_purpose::STANDARD
                    .decode(signature)
                    .map_err(|_| bad("the signature is not base64"))?;
                let message = if record.v == 1 {
                    checkpoint_message(*head_seq, signed_head)
                } else {
                    checkpoint_record_message(
                        record.seq,
                        &record.time,
                        key_id,
                        *head_seq,
                        signed_head,
                    )
                };
                if !keys.iter().any(|(scheme, point)| {
                    crate::keystore::signature_verifies(*scheme, point, &message, &sig)
                }) {
                    return Err(bad(if keys.len() == 1 {
                        "the signature is not the given key's"
                    } else {
                        "the signature is none of the given keys'"
                    }));
                }
            }
            checkpoints += 1;
            last_checkpoint = Some((record.seq, record.time.clone()));
        }
        head = link_hash(bytes);
        expected += 1;
    }
    let records = expected - 1;
    Ok(ChainSummary {
        records,
        head,
        checkpoints,
        unsigned_tail: records - last_checkpoint.as_ref().map_or(0, |(s, _)| *s),
        last_checkpoint,
        signatures_checked: !keys.is_empty(),
    })
}

/// Serialises the next record after `head`, returning its stored bytes and the new head.
pub fn seal(seq: u64, time: String, head: &[u8; 32], event: AuditEvent) -> (Vec<u8>, [u8; 32]) {
    let record = AuditRecord {
        v: RECORD_VERSION,
        seq,
        time,
        prev: hex::encode(head),
        event,
    };
    // Serialising a struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let next = link_hash(&bytes);
    (bytes, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut head = GENESIS;
        (1..=n)
            .map(|seq| {
                let (bytes, next) = seal(
                    seq,
                    format!("2026-01-01T00:00:{seq:02}Z"),
                    &head,
                    AuditEvent::Refused {
                        caller: Some(format!("spiffe://td/ns/a/sa/{seq}")),
                        code: "PermissionDenied".into(),
                        reason: "test".into(),
                        folded: 0,
                    },
                );
                head = next;
                bytes
            })
            .collect()
    }

    fn check(records: &[Vec<u8>]) -> Result<ChainSummary, ChainError> {
        verify_chain(records.iter().map(Vec::as_slice))
    }

    #[test]
    fn an_intact_chain_verifies_and_reports_its_head() {
        let records = chain(5);
        let summary = check(&records).expect("intact");
        assert_eq!(summary.records, 5);
        assert_eq!(summary.head, link_hash(&records[4]));
        assert_eq!(check(&[]).expect("empty").records, 0);
    }

    #[test]
    fn an_edited_record_breaks_the_next_link() {
        let mut records = chain(5);
        let text = String::from_utf8(records[2].clone())
            .expect("utf8")
            .replace("PermissionDenied", "Ok");
        records[2] = text.into_bytes();
        assert_eq!(
            check(&records),
            Err(ChainError::Link {
                seq: 4,
                previous: 3
            })
        );
    }

    #[test]
    fn removed_reordered_and_inserted_records_are_found() {
        let mut removed = chain(5);
        removed.remove(1);
        assert!(matches!(
            check(&removed),
            Err(ChainError::Sequence {
                expected: 2,
                found: 3,
                ..
            })
        ));
        let mut swapped = chain(5);
        swapped.swap(1, 2);
        assert!(matches!(check(&swapped), Err(ChainError::Sequence { .. })));
        let mut doubled = chain(3);
        doubled.insert(1, doubled[0].clone());
        assert!(matches!(check(&doubled), Err(ChainError::Sequence { .. })));
    }

    #[test]
    fn garbage_and_unknown_versions_are_named() {
        let mut records = chain(2);
        records[1] = b"{not json".to_vec();
        assert!(matches!(
            check(&records),
            Err(ChainError::Unreadable { position: 2, .. })
        ));
        let records = vec![String::from_utf8(chain(1)[0].clone())
            .expect("utf8")
            .replace("\"v\":2", "\"v\":9")
            .into_bytes()];
        assert_eq!(
            check(&records),
            Err(ChainError::UnknownVersion {
                position: 1,
                version: 9
            })
        );
    }
}
