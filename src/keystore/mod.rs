//! The only code in hsm-ca that talks to key-holding hardware.
//!
//! A backend ([`KeyDevice`]) opens sessions ([`DeviceSession`]); each session lives on one
//! worker thread of a [`KeyStore`], which callers reach through a bounded queue with a deadline
//! per call. The operations are: create a key pair inside the device, read a public key, sign,
//! list keys. There is deliberately no operation that could return private key material.

pub mod check;
pub mod der;
pub mod pkcs11;
mod pool;
pub mod signer;
#[cfg(feature = "tpm")]
pub mod tpm;
mod tpm_settings;

pub use tpm_settings::TpmSettings;

/// Whether this build can use a TPM 2.0 (the `tpm` cargo feature, which links libtss2).
pub const TPM_SUPPORT: bool = cfg!(feature = "tpm");

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use pool::{KeyStore, PoolOptions};
pub use signer::DeviceSigningKey;

/// Key types a CA key can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// The signature scheme certificates are signed with when this key signs.
    pub fn default_scheme(self) -> SignatureScheme {
        match self {
            KeyAlgorithm::EcdsaP256 => SignatureScheme::EcdsaSha256,
            KeyAlgorithm::EcdsaP384 => SignatureScheme::EcdsaSha384,
            _ => SignatureScheme::RsaPkcs1Sha256,
        }
    }

    pub fn rsa_bits(self) -> Option<u64> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown key algorithm {s:?} (expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096)")
            })
    }
}

/// How a message is signed. The device hashes where it can; for raw ECDSA the hash is computed
/// here and only the digest is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    EcdsaSha256,
    EcdsaSha384,
    RsaPkcs1Sha256,
    RsaPssSha256,
}

impl SignatureScheme {
    pub fn fits(self, key: KeyAlgorithm) -> bool {
        match self {
            SignatureScheme::EcdsaSha256 => key == KeyAlgorithm::EcdsaP256,
            SignatureScheme::EcdsaSha384 => key == KeyAlgorithm::EcdsaP384,
            SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256 => {
                key.rsa_bits().is_some()
            }
        }
    }
}

/// The identifier of a key inside a device (PKCS#11 `CKA_ID`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(#[serde(with = "hex_bytes")] pub Vec<u8>);

impl KeyId {
    /// A fresh random 16-byte identifier.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut id = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex::decode(s)
            .map(KeyId)
            .map_err(|_| format!("key id {s:?} is not hex"))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// What to create.
#[derive(Clone, Debug)]
pub struct KeyRequest {
    pub algorithm: KeyAlgorithm,
    /// A human label stored with the key (`CKA_LABEL`).
    pub label: String,
}

/// A key as the device describes it: enough for an auditor to see it was born in the device
/// and cannot leave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: KeyId,
    pub label: String,
    pub algorithm: Option<KeyAlgorithm>,
    /// DER SubjectPublicKeyInfo of the public half.
    pub public_key: Vec<u8>,
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
    /// Generated on the device (PKCS#11 `CKA_LOCAL`).
    pub local: bool,
}

impl KeyInfo {
    /// True when the device says the private key was created inside it and can never leave.
    pub fn is_device_bound(&self) -> bool {
        self.sensitive
            && !self.extractable
            && self.always_sensitive
            && self.never_extractable
            && self.local
    }
}

/// Errors from the keystore. None of them carries a PIN or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    #[error("cannot load PKCS#11 module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("no token with {0} is present")]
    TokenNotFound(String),
    #[error("the PIN was refused by the token")]
    PinIncorrect,
    #[error("the token's PIN is locked")]
    PinLocked,
    #[error("cannot read the PIN: {0}")]
    Pin(#[from] crate::secret::SecretError),
    #[error("no key with id {0} in the device")]
    KeyNotFound(KeyId),
    #[error("key {id} is {actual}, it cannot sign with {scheme:?}")]
    WrongScheme {
        id: KeyId,
        actual: String,
        scheme: SignatureScheme,
    },
    #[error("the device does not support {0}")]
    Unsupported(String),
    #[error("the keystore queue is full")]
    Overloaded,
    #[error("the keystore call did not finish before its deadline")]
    DeadlineExceeded,
    #[error("the device is unavailable ({0}); try again")]
    Unavailable(String),
    #[error("the device session was lost ({0}); try again")]
    SessionLost(String),
    #[error("the keystore has shut down")]
    Closed,
    #[error("device error in {operation}: {reason}")]
    Device { operation: String, reason: String },
}

impl KeystoreError {
    /// True when the device itself is in trouble (not the caller's request, not the queue):
    /// the keystore reports it as unhealthy until a call succeeds again.
    pub fn is_device_trouble(&self) -> bool {
        matches!(
            self,
            KeystoreError::Module { .. }
                | KeystoreError::TokenNotFound(_)
                | KeystoreError::PinIncorrect
                | KeystoreError::PinLocked
                | KeystoreError::Pin(_)
                | KeystoreError::Unavailable(_)
                | KeystoreError::SessionLost(_)
                | KeystoreError::Device { .. }
        )
    }

    /// True when the same call may succeed if repeated later (overload, device trouble).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KeystoreError::Overloaded
                | KeystoreError::DeadlineExceeded
                | KeystoreError::Unavailable(_)
                | KeystoreError::SessionLost(_)
        )
    }
}

/// A key-holding device: an HSM token or a TPM. Shared by all worker threads.
pub trait KeyDevice: fmt::Debug + Send + Sync + 'static {
    /// Opens a session for one worker thread. Called again after a session broke.
    fn open_session(&self) -> Result<Box<dyn DeviceSession>, KeystoreError>;
    /// A one-line description for logs ("PKCS#11 token 'hsm-ca' via /usr/lib/...").
    fn describe(&self) -> String;
}

/// One worker's session with the device. Owned by exactly one thread.
pub trait DeviceSession: Send {
    /// Creates a key pair inside the device: sensitive, never extractable.
    fn generate(&mut self, request: &KeyRequest) -> Result<KeyInfo, KeystoreError>;
    /// Describes one key, including its public half.
    fn key_info(&mut self, id: &KeyId) -> Result<KeyInfo, KeystoreError>;
    /// Signs `message` with the private key `id`. ECDSA signatures come back DER-encoded.
    fn sign(
        &mut self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError>;
    /// Lists the private keys on the device.
    fn list(&mut self) -> Result<Vec<KeyInfo>, KeystoreError>;
}

/// Software check of a device signature (the self-check every backend runs before a signature
/// leaves the keystore). `public_key` is the SubjectPublicKeyInfo's key bits as ring reads them.
pub fn signature_verifies(
    scheme: SignatureScheme,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    use ring::signature as sig;
    let algorithm: &dyn sig::VerificationAlgorithm = match scheme {
        SignatureScheme::EcdsaSha256 => &sig::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::EcdsaSha384 => &sig::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RsaPssSha256 => &sig::RSA_PSS_2048_8192_SHA256,
    };
    sig::UnparsedPublicKey::new(algorithm, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Which device holds the keys (`keystore.backend` in the config file).
#[derive(Debug, Clone)]
pub enum BackendSettings {
    Pkcs11(pkcs11::Pkcs11Settings),
    Tpm(TpmSettings),
}

/// Everything needed to open the device and run its workers.
#[derive(Debug, Clone)]
pub struct KeystoreConfig {
    pub backend: BackendSettings,
    /// Environment variables the PKCS#11 module reads (e.g. `SOFTHSM2_CONF`), set before loading.
    pub module_env: std::collections::BTreeMap<String, String>,
    pub pool: PoolOptions,
}

/// Checks a TPM TCTI string (`device:PATH`, `tabrmd`, `swtpm:host=H,port=P`) without opening it.
#[cfg(feature = "tpm")]
pub fn check_tcti(tcti: &str) -> Result<(), String> {
    <tss_esapi::tcti_ldr::TctiNameConf as FromStr>::from_str(tcti)
        .map(|_| ())
        .map_err(|_| format!("{tcti:?} is not device:PATH, tabrmd or swtpm:host=H,port=P"))
}

/// Without the `tpm` feature there is no TPM to name: every TCTI is refused.
#[cfg(not(feature = "tpm"))]
pub fn check_tcti(_tcti: &str) -> Result<(), String> {
    Err(NO_TPM.into())
}

/// Why a build without the `tpm` cargo feature refuses a TPM backend.
pub const NO_TPM: &str = "this hsm-ca was built without TPM support (cargo feature `tpm`, which \
     links libtss2); use backend = \"pkcs11\" or a build with default features";

/// Opens the configured device and starts the keystore workers on it.
pub fn open(config: &KeystoreConfig) -> Result<KeyStore, KeystoreError> {
    match &config.backend {
        BackendSettings::Pkcs11(settings) => {
            apply_module_env(config);
            let device = pkcs11::Pkcs11Device::open(settings.clone())?;
            KeyStore::start(std::sync::Arc::new(device), config.pool.clone())
        }
        #[cfg(feature = "tpm")]
        BackendSettings::Tpm(settings) => {
            let device = tpm::SharedTpm(tpm::TpmDevice::open(settings.clone())?);
            KeyStore::start(std::sync::Arc::new(device), config.pool.clone())
        }
        #[cfg(not(feature = "tpm"))]
        BackendSettings::Tpm(_) => Err(KeystoreError::Unsupported(NO_TPM.into())),
    }
}

/// Sets the environment variables the PKCS#11 module reads when it initialises. Call before the
/// module is loaded, while the process has no other threads reading the environment.
pub fn apply_module_env(config: &KeystoreConfig) {
    for (name, value) in &config.module_env {
        std::env::set_var(name, value);
    }
}
