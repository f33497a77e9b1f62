//! What the config says about a TPM 2.0 backend. Kept apart from [`super::tpm`] so that a
//! build without the `tpm` cargo feature (no libtss2) still reads a config and can say that
//! this build has no TPM support. It must never reach the TPM itself.

use crate::secret::SecretSource;

/// Everything needed to reach a TPM.
#[derive(Clone, Debug)]
pub struct TpmSettings {
    /// `device:/dev/tpmrm0`, `tabrmd`, or `swtpm:host=127.0.0.1,port=N`.
    pub tcti: String,
    /// Authorization of the owner hierarchy, when the owner has set one.
    pub owner_auth: Option<SecretSource>,
    /// Authorization value given to new keys and used to sign with them.
    pub key_auth: Option<SecretSource>,
    /// Verify every signature with the public key before it leaves the keystore.
    pub verify_signatures: bool,
}
