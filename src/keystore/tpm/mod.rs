//! TPM 2.0 backend: a machine's TPM (`device:/dev/tpmrm0`, `tabrmd`) or swtpm in tests.
//!
//! Keys are created under a storage primary key of the owner hierarchy (ECC P-256, derived
//! from the TPM's owner seed with a fixed template, so it is the same key every time and is
//! never stored) with `fixedTPM`, `fixedParent`, `sensitiveDataOrigin`, `userWithAuth` and
//! `sign`, and are then made **persistent** with `TPM2_EvictControl` at the first free handle
//! in `0x8101_0000..0x8101_0100`. The key id is the handle's four bytes, big-endian.
//!
//! Why persistent handles rather than TPM-wrapped blobs on disk: the key then lives only in
//! the TPM's non-volatile memory, so there is no file to back up, lose, or mix up between
//! machines; `keys list` reads the TPM itself; and a reconnect needs no parent key, only the
//! handle. The cost is the TPM's small NV space (a few keys), which is ample for a CA that
//! holds a handful of intermediates. A blob store would allow more keys and is the way to go
//! if that ever matters.
//!
//! Each worker owns one connection and one long-lived HMAC authorization session: a new
//! session per signature is several times slower. An HMAC session rather than a plain
//! password: the key's auth value then never crosses the TCTI (a socket, for swtpm or a
//! remote resource manager), only HMACs over fresh nonces do. On swtpm that costs sign rate
//! (measured on a loaded 2-core machine: about 580 signs/s against about 2,750 with a
//! password), which is still far above what issuance needs from one intermediate.
//!
//! A TPM that loses power, or a swtpm that is killed, while keys are in use counts that as a
//! failed authorization; after a few such restarts it refuses the keys until its lockout time
//! passes. That is reported as a plain "dictionary-attack lockout" error. When a call fails
//! because the connection or the TPM went away (swtpm restarted, resource manager restarted),
//! the worker reconnects, opens a new session, reloads the key handle and retries once; a
//! second failure is a retryable error. Every signature is checked in software before it
//! leaves.
//!
//! The parts, laid out like the PKCS#11 backend's: this file holds the settings, the device,
//! the [`KeyDevice`] the keystore pool uses and how a TSS error is classified; `session` one
//! worker's connection (TCTI context, HMAC session, loaded keys) with the
//! reconnect-and-retry-once rule and signing; `template` the key templates and the reading of
//! a public area into a [`KeyInfo`](super::KeyInfo); `provision` key creation and the
//! persistent handles; `auth` the owner and key auth values.
//!
//! This module never asks the TPM for private key material, and never puts an auth value in a
//! log line or an error.

mod auth;
mod provision;
mod session;
mod template;

use std::str::FromStr;
use std::sync::Arc;

use tss_esapi::constants::Tss2ResponseCodeKind;
use tss_esapi::tcti_ldr::TctiNameConf;

use super::{DeviceSession, KeyDevice, KeyId, KeystoreError};
use crate::secret::Secret;
pub use session::TpmSession;

/// First persistent handle hsm-ca uses (owner range, TCG's "platform-independent" block).
pub const HANDLE_BASE: u32 = 0x8101_0000;
/// How many handles from [`HANDLE_BASE`] hsm-ca may use.
pub const HANDLE_COUNT: u32 = 0x100;

pub use super::tpm_settings::TpmSettings;

/// A TPM shared by the keystore workers; each worker opens its own connection.
pub struct TpmDevice {
    settings: TpmSettings,
    tcti: TctiNameConf,
    owner_auth: Option<Secret>,
    key_auth: Option<Secret>,
}

impl std::fmt::Debug for TpmDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description())
    }
}

impl TpmDevice {
    /// Reads the auth values and checks that the TPM answers.
    pub fn open(settings: TpmSettings) -> Result<Arc<Self>, KeystoreError> {
        let tcti = TctiNameConf::from_str(&settings.tcti).map_err(|e| KeystoreError::Module {
            module: settings.tcti.clone(),
            reason: format!("keystore.tcti is not a TCTI this build knows: {e}"),
        })?;
        let (owner_auth, key_auth) =
            auth::load(settings.owner_auth.as_ref(), settings.key_auth.as_ref())?;
        let device = Arc::new(TpmDevice {
            settings,
            tcti,
            owner_auth,
            key_auth,
        });
        // Fail at start, with a clear message, when the TPM cannot be reached.
        drop(TpmSession::open(device.clone())?);
        Ok(device)
    }

    /// A one-line description for logs; names the TCTI, never an auth value.
    pub fn description(&self) -> String {
        format!("TPM 2.0 via {}", self.settings.tcti)
    }
}

/// The [`KeyDevice`] handed to the keystore pool: an `Arc` so sessions can share it.
#[derive(Debug, Clone)]
pub struct SharedTpm(pub Arc<TpmDevice>);

impl KeyDevice for SharedTpm {
    fn open_session(&self) -> Result<Box<dyn DeviceSession>, KeystoreError> {
        Ok(Box::new(TpmSession::open(self.0.clone())?))
    }

    fn describe(&self) -> String {
        self.0.description()
    }
}

/// A TSS error as a keystore error: a refused authorization is final, anything else may be a
/// lost connection or a restarted TPM and is worth one reconnect.
fn classify(operation: &str, key: Option<&KeyId>, error: tss_esapi::Error) -> KeystoreError {
    let what = match key {
        Some(id) => format!("{operation} (key {id})"),
        None => operation.to_string(),
    };
    if let tss_esapi::Error::Tss2Error(rc) = error {
        if matches!(
            rc.kind(),
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
        ) {
            return KeystoreError::Device {
                operation: what,
                reason: "the TPM refused the authorization value".into(),
            };
        }
        // A TPM that lost power (or a swtpm killed) while keys were in use counts that as a
        // failed authorization; after a few it locks keys out until its lockout time passes.
        // Reconnecting cannot help, so this is reported as it is.
        if rc.kind() == Some(Tss2ResponseCodeKind::Lockout) {
            return KeystoreError::Unavailable(format!(
                "TPM {what}: the TPM is in dictionary-attack lockout; wait for it to expire \
                 or reset it with the lockout authorization"
            ));
        }
    }
    KeystoreError::SessionLost(format!("TPM {what}: {error}"))
}
