//! One worker's TPM session: its own TCTI connection (`Connection`: the ESYS context, one
//! long-lived HMAC authorization session, the key handles it has loaded) and the rule that a
//! call failing because the connection or the TPM went away reconnects and is retried once.
//! Signing lives here too: the digest is made in software, signed by the TPM, re-encoded as
//! DER and, when configured, verified before it leaves.
//!
//! This part never retries a key creation (a lost answer may hide a key that was made
//! persistent), never retries more than once, and never closes the ESYS object of a key a
//! signature may be about to use.

use std::collections::HashMap;
use std::sync::Arc;

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, HashScheme, HashcheckTicket, Public, Signature, SignatureScheme as TpmScheme,
    SymmetricDefinition,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::auth::auth_of;
use super::provision::{create_persistent_key, handle_of, persistent_handles, persistent_object};
use super::template::{key_info, public_key_of};
use super::{classify, TpmDevice};
use crate::keystore::check::KeyCheck;
use crate::keystore::{
    der, DeviceSession, KeyAlgorithm, KeyId, KeyInfo, KeyRequest, KeystoreError, SignatureScheme,
};
use crate::secret::Secret;

/// One open TCTI connection with its authorization session and loaded key handles.
struct Connection {
    ctx: Context,
    session: AuthSession,
    keys: HashMap<u32, LoadedKey>,
}

#[derive(Clone)]
struct LoadedKey {
    handle: KeyHandle,
    algorithm: KeyAlgorithm,
    /// Verifies signatures with the public key before they leave.
    check: Arc<KeyCheck>,
}

/// One worker's TPM connection.
pub struct TpmSession {
    device: Arc<TpmDevice>,
    connection: Option<Connection>,
}

impl TpmSession {
    /// Opens a connection to the device's TPM for one worker.
    pub(super) fn open(device: Arc<TpmDevice>) -> Result<Self, KeystoreError> {
        let connection = Connection::open(&device)?;
        Ok(TpmSession {
            device,
            connection: Some(connection),
        })
    }
}

impl Connection {
    /// Connects to the TPM and starts the HMAC authorization session.
    fn open(device: &TpmDevice) -> Result<Self, KeystoreError> {
        let mut ctx = Context::new(device.tcti.clone()).map_err(|e| {
            KeystoreError::Unavailable(format!("cannot reach TPM at {}: {e}", device.settings.tcti))
        })?;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| KeystoreError::Unavailable(format!("TPM auth session: {e}")))?
            .ok_or_else(|| KeystoreError::Unavailable("TPM auth session: none returned".into()))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .build();
        ctx.tr_sess_set_attributes(session, attributes, mask)
            .map_err(|e| KeystoreError::Unavailable(format!("TPM auth session: {e}")))?;
        Ok(Connection {
            ctx,
            session,
            keys: HashMap::new(),
        })
    }

    /// The public area of the persistent key at `handle` (through its loaded object when
    /// this connection has one).
    fn read_public(&mut self, handle: u32) -> Result<Public, tss_esapi::Error> {
        if let Some(key) = self.keys.get(&handle) {
            // ESYS hands out one object per TPM handle: closing it here would unload the key
            // a signature is about to use.
            let object: ObjectHandle = key.handle.into();
            return self
                .ctx
                .execute_without_session(|ctx| ctx.read_public(object.into()))
                .map(|(public, _, _)| public);
        }
        let object = persistent_object(&mut self.ctx, handle)?;
        let public = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(object.into()))
            .map(|(public, _, _)| public);
        // Only the ESYS bookkeeping is closed; the persistent key stays.
        let mut object = object;
        let _ = self.ctx.tr_close(&mut object);
        public
    }

    /// The key `id` names, its auth value set and its public key read once per connection.
    fn loaded(
        &mut self,
        id: &KeyId,
        key_auth: Option<&Secret>,
    ) -> Result<LoadedKey, KeystoreError> {
        let handle = handle_of(id)?;
        if let Some(found) = self.keys.get(&handle) {
            return Ok(found.clone());
        }
        if !persistent_handles(&mut self.ctx)?.contains(&handle) {
            return Err(KeystoreError::KeyNotFound(id.clone()));
        }
        let object = persistent_object(&mut self.ctx, handle)
            .map_err(|e| classify("load key", Some(id), e))?;
        if let Some(auth) = key_auth {
            self.ctx
                .tr_set_auth(object, auth_of(auth)?)
                .map_err(|e| classify("set key auth", Some(id), e))?;
        }
        let (public, _, _) = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(object.into()))
            .map_err(|e| classify("read key", Some(id), e))?;
        let (algorithm, spki) = public_key_of(&public).ok_or_else(|| {
            KeystoreError::Unsupported(format!("key {id}: algorithm not recognised"))
        })?;
        let public_key = der::subject_public_key_bits(&spki)
            .map(Arc::from)
            .ok_or_else(|| {
                KeystoreError::Unavailable(format!("key {id}: public key unreadable"))
            })?;
        let key = LoadedKey {
            handle: object.into(),
            algorithm,
            check: KeyCheck::for_key(public_key),
        };
        self.keys.insert(handle, key.clone());
        Ok(key)
    }
}

impl TpmSession {
    /// Runs `op`; when it fails with a lost session, reconnects and runs it once more.
    fn with_recovery<T>(
        &mut self,
        mut op: impl FnMut(&TpmDevice, &mut Connection) -> Result<T, KeystoreError>,
    ) -> Result<T, KeystoreError> {
        let mut attempt = 0;
        loop {
            if self.connection.is_none() {
                self.connection = Some(Connection::open(&self.device)?);
            }
            let connection = self
                .connection
                .as_mut()
                .expect("invariant: a connection was just made");
            let result = op(&self.device, connection);
            match &result {
                Err(KeystoreError::SessionLost(e)) if attempt == 0 => {
                    tracing::warn!(error = %e, "TPM call failed; reconnecting and retrying once");
                    self.connection = None;
                    attempt += 1;
                }
                Err(KeystoreError::SessionLost(_)) => {
                    self.connection = None;
                    return result;
                }
                _ => return result,
            }
        }
    }
}

fn generate_once(
    device: &TpmDevice,
    conn: &mut Connection,
    request: &KeyRequest,
) -> Result<KeyInfo, KeystoreError> {
    let handle = create_persistent_key(
        &mut conn.ctx,
        conn.session,
        device.owner_auth.as_ref(),
        device.key_auth.as_ref(),
        request,
    )?;
    let public = conn
        .read_public(handle)
        .map_err(|e| classify("read key", None, e))?;
    key_info(handle, &public)
}

fn sign_once(
    device: &TpmDevice,
    conn: &mut Connection,
    id: &KeyId,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, KeystoreError> {
    let key = conn.loaded(id, device.key_auth.as_ref())?;
    if !scheme.fits(key.algorithm) || scheme == SignatureScheme::RsaPssSha256 {
        return Err(KeystoreError::WrongScheme {
            id: id.clone(),
            actual: key.algorithm.to_string(),
            scheme,
        });
    }
    let (digest_alg, tpm_scheme) = match scheme {
        SignatureScheme::EcdsaSha256 => (
            &ring::digest::SHA256,
            TpmScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            },
        ),
        SignatureScheme::EcdsaSha384 => (
            &ring::digest::SHA384,
            TpmScheme::EcDsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha384),
            },
        ),
        _ => (
            &ring::digest::SHA256,
            TpmScheme::RsaSsa {
                hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
            },
        ),
    };
    let digest = ring::digest::digest(digest_alg, message);
    let digest =
        Digest::try_from(digest.as_ref().to_vec()).map_err(|e| classify("digest", Some(id), e))?;
    // The key is unrestricted, so the TPM needs no proof that it computed the digest itself.
    let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(|e| classify("ticket", Some(id), e))?;
    let session = Some(conn.session);
    let signature = conn
        .ctx
        .execute_with_session(session, |ctx| {
            ctx.sign(key.handle, digest, tpm_scheme, ticket)
        })
        .map_err(|e| classify("sign", Some(id), e))?;
    let encoded = match (signature, key.algorithm) {
        (Signature::EcDsa(sig), KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384) => {
            let field = if key.algorithm == KeyAlgorithm::EcdsaP256 {
                32
            } else {
                48
            };
            // r and s come without leading zero bytes.
            let r = der::left_pad(sig.signature_r().value(), field);
            let s = der::left_pad(sig.signature_s().value(), field);
            r.zip(s)
                .and_then(|(r, s)| der::ecdsa_signature(&[r, s].concat(), field))
        }
        (Signature::RsaSsa(sig), KeyAlgorithm::Rsa2048) => {
            der::left_pad(sig.signature().value(), 256)
        }
        _ => None,
    }
    .ok_or_else(|| {
        KeystoreError::Unavailable(format!(
            "sign: the TPM returned a malformed signature for key {id}"
        ))
    })?;
    if device.settings.verify_signatures && !key.check.verifies(scheme, message, &encoded) {
        return Err(KeystoreError::Unavailable(format!(
            "sign: the TPM returned a signature that does not verify with key {id}"
        )));
    }
    Ok(encoded)
}

impl DeviceSession for TpmSession {
    fn generate(&mut self, request: &KeyRequest) -> Result<KeyInfo, KeystoreError> {
        // Not retried: a lost answer may hide a key that was made persistent.
        if self.connection.is_none() {
            self.connection = Some(Connection::open(&self.device)?);
        }
        let conn = self
            .connection
            .as_mut()
            .expect("invariant: a connection was just made");
        let result = generate_once(&self.device, conn, request);
        if matches!(result, Err(KeystoreError::SessionLost(_))) {
            self.connection = None;
        }
        result
    }

    fn key_info(&mut self, id: &KeyId) -> Result<KeyInfo, KeystoreError> {
        let handle = handle_of(id)?;
        self.with_recovery(|_, conn| {
            if !persistent_handles(&mut conn.ctx)?.contains(&handle) {
                return Err(KeystoreError::KeyNotFound(id.clone()));
            }
            let public = conn
                .read_public(handle)
                .map_err(|e| classify("read key", Some(id), e))?;
            key_info(handle, &public)
        })
    }

    fn sign(
        &mut self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        self.with_recovery(|device, conn| sign_once(device, conn, id, scheme, message))
    }

    fn list(&mut self) -> Result<Vec<KeyInfo>, KeystoreError> {
        self.with_recovery(|_, conn| {
            let mut keys = Vec::new();
            for handle in persistent_handles(&mut conn.ctx)? {
                let public = conn
                    .read_public(handle)
                    .map_err(|e| classify("read key", None, e))?;
                keys.push(key_info(handle, &public)?);
            }
            Ok(keys)
        })
    }
}
