//! The bridge from rcgen's remote-signing traits to a key held in the device.
//!
//! rcgen signs synchronously, so [`DeviceSigningKey`] waits for a keystore worker. rcgen's error
//! type cannot carry our cause, so the keystore error of a failed signature is kept for the
//! calling thread ([`take_last_error`]) to tell overload from device trouble.

use std::cell::RefCell;

use super::{KeyAlgorithm, KeyId, KeyInfo, KeyStore, KeystoreError};

/// A CA key in the device, usable wherever rcgen wants a signing key.
#[derive(Clone, Debug)]
pub struct DeviceSigningKey {
    store: KeyStore,
    id: KeyId,
    algorithm: KeyAlgorithm,
    /// DER SubjectPublicKeyInfo.
    spki: Vec<u8>,
    /// The subjectPublicKey BIT STRING contents, as rcgen wants them.
    public_key_bits: Vec<u8>,
}

impl DeviceSigningKey {
    /// Builds a signer for a key the device described.
    pub fn new(store: KeyStore, info: &KeyInfo) -> Result<Self, KeystoreError> {
        let algorithm = info
            .algorithm
            .ok_or_else(|| KeystoreError::Unsupported(format!("key {} algorithm", info.id)))?;
        let public_key_bits = super::der::subject_public_key_bits(&info.public_key)
            .ok_or_else(|| KeystoreError::Device {
                operation: "read public key".into(),
                reason: format!("key {}: malformed SubjectPublicKeyInfo", info.id),
            })?
            .to_vec();
        Ok(DeviceSigningKey {
            store,
            id: info.id.clone(),
            algorithm,
            spki: info.public_key.clone(),
            public_key_bits,
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }
}

/// rcgen's signature algorithm for certificates signed by a key of this type.
pub fn rcgen_algorithm(algorithm: KeyAlgorithm) -> &'static rcgen::SignatureAlgorithm {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &rcgen::PKCS_RSA_SHA256
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<KeystoreError>> = const { RefCell::new(None) };
    /// `Some` while [`capture_signed_message`] runs on this thread: `sign` records the message
    /// instead of signing it.
    static CAPTURE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `build` (which calls `sign` once through rcgen) without signing: the message rcgen
/// wanted signed is returned instead, and `sign` yields an empty signature. The caller signs
/// the message asynchronously and assembles the result, so no thread blocks on the device.
pub fn capture_signed_message<T>(build: impl FnOnce() -> T) -> (T, Option<Vec<u8>>) {
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = build();
    let message = CAPTURE.with(|c| c.borrow_mut().take());
    (out, message.filter(|m| !m.is_empty()))
}

/// The keystore error behind the last `rcgen::Error::RemoteKeyError` on this thread.
/// rcgen signs synchronously on the caller's thread, so the cause is kept here for it.
pub fn take_last_error() -> Option<KeystoreError> {
    LAST_ERROR.with(|e| e.borrow_mut().take())
}

impl rcgen::PublicKeyData for DeviceSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen_algorithm(self.algorithm)
    }
}

impl rcgen::SigningKey for DeviceSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let captured = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(slot) => {
                *slot = msg.to_vec();
                true
            }
            None => false,
        });
        if captured {
            return Ok(Vec::new());
        }
        self.store
            .sign_blocking(&self.id, self.algorithm.default_scheme(), msg)
            .map_err(|e| {
                LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
                rcgen::Error::RemoteKeyError
            })
    }
}
