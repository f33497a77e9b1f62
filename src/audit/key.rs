//! The audit key: an ECDSA P-256 key generated in the device on first use, its id and public
//! key kept in the log's own `meta.json`, and the checkpoint it signs over a chain head (and
//! over the checkpoint record's own position, time and key id).
//!
//! This part never holds private key material (the device signs) and never accepts a stored
//! key the device does not confirm: a log whose key is missing from the device, or whose
//! recorded public key differs from the device's, is refused.

use std::path::Path;

use base64::Engine;

use super::record::{self, AuditEvent};
use super::segments::Store;
use super::{open_store, AuditError};
use crate::keystore::{KeyAlgorithm, KeyId, KeyRequest, KeyStore, SignatureScheme};

/// The label of the audit key in the device.
pub const AUDIT_KEY_LABEL: &str = "hsm-ca audit";

/// The audit key: where it lives and its public half.
#[derive(Clone, Debug)]
pub struct AuditKey {
    pub id: KeyId,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl AuditKey {
    /// The public key as PEM, for offline verification of exports.
    pub fn public_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }
}

/// The audit key recorded in the log, if any (id and public key as stored).
pub(super) fn stored_key(store: &Store) -> Result<Option<AuditKey>, AuditError> {
    let meta = store.meta();
    let unreadable =
        |what: &str| AuditError::Key(format!("the audit key {what} in meta.json is not hex"));
    Ok(match (meta.key_id, meta.key_spki) {
        (Some(id), Some(spki)) => Some(AuditKey {
            id: KeyId(hex::decode(id).map_err(|_| unreadable("id"))?),
            spki: hex::decode(spki).map_err(|_| unreadable("public key"))?,
        }),
        _ => None,
    })
}

/// Finds the log's audit key in the device, or creates it on first use. A log whose key is not
/// in this device, or whose stored public key differs from the device's, is refused.
pub(super) fn device_key(log: &Store, store: &KeyStore) -> Result<AuditKey, AuditError> {
    if let Some(stored) = stored_key(log)? {
        let info = store.key_info_blocking(&stored.id).map_err(|e| {
            AuditError::Key(format!(
                "the log's audit key {} is not usable in this device: {e}",
                stored.id
            ))
        })?;
        if info.public_key != stored.spki {
            return Err(AuditError::Key(format!(
                "the public key recorded for audit key {} is not the device's",
                stored.id
            )));
        }
        return Ok(stored);
    }
    let info = store
        .generate_blocking(KeyRequest {
            algorithm: KeyAlgorithm::EcdsaP256,
            label: AUDIT_KEY_LABEL.into(),
        })
        .map_err(|e| AuditError::Key(format!("cannot create the audit key: {e}")))?;
    let mut meta = log.meta();
    meta.key_id = Some(hex::encode(&info.id.0));
    meta.key_spki = Some(hex::encode(&info.public_key));
    log.set_meta(meta)?;
    Ok(AuditKey {
        id: info.id,
        spki: info.public_key,
    })
}

/// A checkpoint over the chain head `head` (record `head_seq`), to be record `head_seq + 1`
/// with time `time`, signed in the device by `key`. The signature covers that record's
/// sequence number, time and key id too ([`record::checkpoint_record_message`]).
pub(super) fn sign_checkpoint(
    store: &KeyStore,
    key: &KeyId,
    scheme: SignatureScheme,
    head_seq: u64,
    head: &[u8; 32],
    time: &str,
) -> Result<AuditEvent, crate::keystore::KeystoreError> {
    let head_hex = hex::encode(head);
    let key_id = key.to_string();
    let message =
        record::checkpoint_record_message(head_seq + 1, time, &key_id, head_seq, &head_hex);
    let sig = store.sign_blocking(key, scheme, &message)?;
    Ok(AuditEvent::Checkpoint {
        head_seq,
        head: head_hex,
        key_id,
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    })
}

/// The audit key recorded in the log under `dir`.
pub fn recorded_key(dir: &Path) -> Result<Option<AuditKey>, AuditError> {
    stored_key(&open_store(dir)?)
}

/// Reads a PEM `PUBLIC KEY` (as `audit export` writes it) into DER.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, AuditError> {
    let err = |reason: String| AuditError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let block = pem::parse(text).map_err(|e| err(e.to_string()))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(err(format!("expected a PUBLIC KEY, found {}", block.tag())));
    }
    Ok(block.into_contents())
}
