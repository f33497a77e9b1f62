//! The TPM's auth values, its counterpart of a PKCS#11 PIN: the owner hierarchy's (to create
//! keys when the owner has set one) and the one given to hsm-ca's keys (to sign with them).
//!
//! They are read from their [`SecretSource`] once, at open, checked against the TPM's 32-byte
//! limit, and handed to ESYS only as an [`Auth`]. This part never logs an auth value and never
//! puts one in an error.

use tss_esapi::structures::Auth;

use crate::keystore::KeystoreError;
use crate::secret::{Secret, SecretSource};

/// Reads the owner and key auth values (those configured); refuses one longer than 32 bytes.
pub(super) fn load(
    owner: Option<&SecretSource>,
    key: Option<&SecretSource>,
) -> Result<(Option<Secret>, Option<Secret>), KeystoreError> {
    let owner_auth = owner.map(|s| s.load()).transpose()?;
    let key_auth = key.map(|s| s.load()).transpose()?;
    for (what, value) in [("owner", &owner_auth), ("key", &key_auth)] {
        if value.as_ref().is_some_and(|v| v.expose().len() > 32) {
            return Err(KeystoreError::Unsupported(format!(
                "a TPM {what} auth value longer than 32 bytes"
            )));
        }
    }
    Ok((owner_auth, key_auth))
}

/// An auth value as ESYS takes it.
pub(super) fn auth_of(secret: &Secret) -> Result<Auth, KeystoreError> {
    Auth::try_from(secret.expose().as_bytes().to_vec())
        .map_err(|_| KeystoreError::Unsupported("this TPM auth value".into()))
}
