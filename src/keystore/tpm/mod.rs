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
//! passes. That is reported as a plain "dictionary-attack lockout" error. When a call fails because the connection or
//! the TPM went away (swtpm restarted, resource manager restarted), the worker reconnects,
//! opens a new session, reloads the key handle and retries once; a second failure is a
//! retryable error. Every signature is checked in software before it leaves.
//!
//! This module never asks the TPM for private key material, and never puts an auth value in a
//! log line or an error.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, Signature, SignatureScheme as TpmScheme, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use super::{
    der, DeviceSession, KeyAlgorithm, KeyDevice, KeyId, KeyInfo, KeyRequest, KeystoreError,
    SignatureScheme,
};
use crate::secret::{Secret, SecretSource};

/// First persistent handle hsm-ca uses (owner range, TCG's "platform-independent" block).
pub const HANDLE_BASE: u32 = 0x8101_0000;
/// How many handles from [`HANDLE_BASE`] hsm-ca may use.
pub const HANDLE_COUNT: u32 = 0x100;

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
        let owner_auth = settings.owner_auth.as_ref().map(|s| s.load()).transpose()?;
        let key_auth = settings.key_auth.as_ref().map(|s| s.load()).transpose()?;
        for (what, value) in [("owner", &owner_auth), ("key", &key_auth)] {
            if value.as_ref().is_some_and(|v| v.expose().len() > 32) {
                return Err(KeystoreError::Unsupported(format!(
                    "a TPM {what} auth value longer than 32 bytes"
                )));
            }
        }
        let device = Arc::new(TpmDevice {
            settings,
            tcti,
            owner_auth,
            key_auth,
        });
        // Fail at start, with a clear message, when the TPM cannot be reached.
        drop(device.connect()?);
        Ok(device)
    }

    /// A one-line description for logs; names the TCTI, never an auth value.
    pub fn description(&self) -> String {
        format!("TPM 2.0 via {}", self.settings.tcti)
    }

    fn connect(&self) -> Result<Connection, KeystoreError> {
        let mut ctx = Context::new(self.tcti.clone()).map_err(|e| {
            KeystoreError::Unavailable(format!("cannot reach TPM at {}: {e}", self.settings.tcti))
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
}

/// The [`KeyDevice`] handed to the keystore pool: an `Arc` so sessions can share it.
#[derive(Debug, Clone)]
pub struct SharedTpm(pub Arc<TpmDevice>);

impl KeyDevice for SharedTpm {
    fn open_session(&self) -> Result<Box<dyn DeviceSession>, KeystoreError> {
        let connection = self.0.connect()?;
        Ok(Box::new(TpmSession {
            device: self.0.clone(),
            connection: Some(connection),
        }))
    }

    fn describe(&self) -> String {
        self.0.description()
    }
}

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
    /// The subjectPublicKey bits, to verify signatures before they leave.
    public_key: Arc<[u8]>,
}

/// One worker's TPM connection.
pub struct TpmSession {
    device: Arc<TpmDevice>,
    connection: Option<Connection>,
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

fn handle_of(id: &KeyId) -> Result<u32, KeystoreError> {
    let bytes: [u8; 4] =
        id.0.as_slice()
            .try_into()
            .map_err(|_| KeystoreError::KeyNotFound(id.clone()))?;
    let handle = u32::from_be_bytes(bytes);
    if !(HANDLE_BASE..HANDLE_BASE + HANDLE_COUNT).contains(&handle) {
        return Err(KeystoreError::KeyNotFound(id.clone()));
    }
    Ok(handle)
}

fn auth_of(secret: &Secret) -> Result<Auth, KeystoreError> {
    Auth::try_from(secret.expose().as_bytes().to_vec())
        .map_err(|_| KeystoreError::Unsupported("this TPM auth value".into()))
}

fn sign_attributes() -> Result<ObjectAttributes, tss_esapi::Error> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
}

/// The storage primary: the same template gives the same key on every call.
fn primary_template() -> Result<Public, tss_esapi::Error> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn key_template(algorithm: KeyAlgorithm) -> Result<Public, KeystoreError> {
    let build = || -> Result<Public, tss_esapi::Error> {
        let builder = PublicBuilder::new()
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(sign_attributes()?);
        let ecc = |hash, curve| -> Result<Public, tss_esapi::Error> {
            builder
                .clone()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_unrestricted_signing_key(
                        EccScheme::EcDsa(HashScheme::new(hash)),
                        curve,
                    )
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
        };
        match algorithm {
            KeyAlgorithm::EcdsaP256 => ecc(HashingAlgorithm::Sha256, EccCurve::NistP256),
            KeyAlgorithm::EcdsaP384 => ecc(HashingAlgorithm::Sha384, EccCurve::NistP384),
            _ => builder
                .clone()
                .with_public_algorithm(PublicAlgorithm::Rsa)
                .with_rsa_parameters(
                    PublicRsaParametersBuilder::new_unrestricted_signing_key(
                        RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)),
                        RsaKeyBits::Rsa2048,
                        RsaExponent::default(),
                    )
                    .build()?,
                )
                .with_rsa_unique_identifier(PublicKeyRsa::default())
                .build(),
        }
    };
    if algorithm.rsa_bits().is_some_and(|bits| bits != 2048) {
        return Err(KeystoreError::Unsupported(format!(
            "{algorithm} keys in the TPM backend (rsa-2048, ecdsa-p256, ecdsa-p384 only)"
        )));
    }
    build().map_err(|e| KeystoreError::Device {
        operation: "key template".into(),
        reason: e.to_string(),
    })
}

/// Algorithm and DER SubjectPublicKeyInfo of a TPM public area.
fn public_key_of(public: &Public) -> Option<(KeyAlgorithm, Vec<u8>)> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let (algorithm, oid, field) = match parameters.ecc_curve() {
                EccCurve::NistP256 => (KeyAlgorithm::EcdsaP256, der::OID_P256, 32),
                EccCurve::NistP384 => (KeyAlgorithm::EcdsaP384, der::OID_P384, 48),
                _ => return None,
            };
            // The TPM drops leading zero bytes of x and y; the SEC1 point needs full width.
            let mut point = vec![0x04];
            point.extend(der::left_pad(unique.x().value(), field)?);
            point.extend(der::left_pad(unique.y().value(), field)?);
            Some((algorithm, der::ec_spki(oid, &point)))
        }
        Public::Rsa {
            parameters, unique, ..
        } => {
            if parameters.key_bits() != RsaKeyBits::Rsa2048 {
                return None;
            }
            // Exponent 0 in a TPM public area means the default, 65537.
            let exponent = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            Some((
                KeyAlgorithm::Rsa2048,
                der::rsa_spki(unique.value(), &exponent.to_be_bytes()),
            ))
        }
        _ => None,
    }
}

/// How TPM object attributes answer the questions [`KeyInfo`] asks (they come from PKCS#11):
/// - `local` and `always_sensitive`: `sensitiveDataOrigin` — the TPM generated the private
///   part itself, so it never existed outside.
/// - `never_extractable` and `!extractable`: `fixedTPM` and `fixedParent` — the key can never
///   be duplicated to another TPM or re-parented (a TPM has no command that returns a private
///   key in the clear; duplication is the only way out, and these attributes forbid it).
/// - `sensitive`: a TPM never reveals a private key, so it is sensitive whenever it cannot be
///   duplicated.
fn key_info(handle: u32, public: &Public) -> Result<KeyInfo, KeystoreError> {
    let id = KeyId(handle.to_be_bytes().to_vec());
    let attributes = public.object_attributes();
    let non_duplicable = attributes.fixed_tpm() && attributes.fixed_parent();
    let born_inside = attributes.sensitive_data_origin();
    let (algorithm, public_key) = match public_key_of(public) {
        Some((a, k)) => (Some(a), k),
        None => (None, Vec::new()),
    };
    Ok(KeyInfo {
        label: format!("tpm 0x{handle:08x}"),
        id,
        algorithm,
        public_key,
        sensitive: non_duplicable,
        extractable: !non_duplicable,
        always_sensitive: born_inside,
        never_extractable: non_duplicable,
        local: born_inside,
    })
}

impl Connection {
    /// The persistent handles in hsm-ca's range.
    fn persistent_handles(&mut self) -> Result<Vec<u32>, KeystoreError> {
        let mut found = Vec::new();
        let mut next = HANDLE_BASE;
        loop {
            let (data, more) = self
                .ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, next, HANDLE_COUNT)
                })
                .map_err(|e| classify("list handles", None, e))?;
            let CapabilityData::Handles(list) = data else {
                return Err(KeystoreError::SessionLost(
                    "TPM list handles: unexpected answer".into(),
                ));
            };
            let handles: Vec<u32> = list.into_inner().into_iter().map(u32::from).collect();
            let last = handles.last().copied();
            found.extend(
                handles
                    .into_iter()
                    .filter(|h| (HANDLE_BASE..HANDLE_BASE + HANDLE_COUNT).contains(h)),
            );
            match last {
                Some(l) if more && l < HANDLE_BASE + HANDLE_COUNT => next = l + 1,
                _ => return Ok(found),
            }
        }
    }

    fn object(&mut self, handle: u32) -> Result<ObjectHandle, tss_esapi::Error> {
        let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle)?);
        self.ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
    }

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
        let object = self.object(handle)?;
        let public = self
            .ctx
            .execute_without_session(|ctx| ctx.read_public(object.into()))
            .map(|(public, _, _)| public);
        // Only the ESYS bookkeeping is closed; the persistent key stays.
        let mut object = object;
        let _ = self.ctx.tr_close(&mut object);
        public
    }

    fn loaded(
        &mut self,
        id: &KeyId,
        key_auth: Option<&Secret>,
    ) -> Result<LoadedKey, KeystoreError> {
        let handle = handle_of(id)?;
        if let Some(found) = self.keys.get(&handle) {
            return Ok(found.clone());
        }
        if !self.persistent_handles()?.contains(&handle) {
            return Err(KeystoreError::KeyNotFound(id.clone()));
        }
        let object = self
            .object(handle)
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
            public_key,
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
                self.connection = Some(self.device.connect()?);
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
    let template = key_template(request.algorithm)?;
    let taken = conn.persistent_handles()?;
    let handle = (HANDLE_BASE..HANDLE_BASE + HANDLE_COUNT)
        .find(|h| !taken.contains(h))
        .ok_or_else(|| {
            KeystoreError::Unsupported("more keys: every hsm-ca persistent handle is in use".into())
        })?;
    if let Some(auth) = &device.owner_auth {
        conn.ctx
            .tr_set_auth(ObjectHandle::Owner, auth_of(auth)?)
            .map_err(|e| classify("set owner auth", None, e))?;
    }
    let key_auth = device.key_auth.as_ref().map(auth_of).transpose()?;
    let session = Some(conn.session);
    let primary = conn
        .ctx
        .execute_with_session(session, |ctx| {
            ctx.create_primary(
                Hierarchy::Owner,
                primary_template()?,
                None,
                None,
                None,
                None,
            )
        })
        .map_err(|e| classify("create primary key", None, e))?
        .key_handle;
    let result = (|| {
        let created = conn
            .ctx
            .execute_with_session(session, |ctx| {
                ctx.create(primary, template, key_auth, None, None, None)
            })
            .map_err(|e| classify("create key", None, e))?;
        let transient = conn
            .ctx
            .execute_with_session(session, |ctx| {
                ctx.load(primary, created.out_private, created.out_public)
            })
            .map_err(|e| classify("load key", None, e))?;
        let persistent =
            PersistentTpmHandle::new(handle).map_err(|e| classify("handle", None, e))?;
        let evicted = conn.ctx.execute_with_session(session, |ctx| {
            ctx.evict_control(
                Provision::Owner,
                transient.into(),
                Persistent::Persistent(persistent),
            )
        });
        let _ = conn.ctx.flush_context(transient.into());
        let mut persistent_object =
            evicted.map_err(|e| classify("make key persistent", None, e))?;
        let _ = conn.ctx.tr_close(&mut persistent_object);
        let public = conn
            .read_public(handle)
            .map_err(|e| classify("read key", None, e))?;
        key_info(handle, &public)
    })();
    let _ = conn.ctx.flush_context(primary.into());
    result
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
    if device.settings.verify_signatures
        && !crate::keystore::signature_verifies(scheme, &key.public_key, message, &encoded)
    {
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
            self.connection = Some(self.device.connect()?);
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
            if !conn.persistent_handles()?.contains(&handle) {
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
            for handle in conn.persistent_handles()? {
                let public = conn
                    .read_public(handle)
                    .map_err(|e| classify("read key", None, e))?;
                keys.push(key_info(handle, &public)?);
            }
            Ok(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public_with(fixed_tpm: bool, fixed_parent: bool, sensitive_origin: bool) -> Public {
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(fixed_tpm)
            .with_fixed_parent(fixed_parent)
            .with_sensitive_data_origin(sensitive_origin)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .expect("attributes");
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_ecc_parameters(
                PublicEccParametersBuilder::new_unrestricted_signing_key(
                    EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                    EccCurve::NistP256,
                )
                .build()
                .expect("params"),
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .expect("public")
    }

    #[test]
    fn only_non_duplicable_keys_born_in_the_tpm_count_as_device_bound() {
        let bound = key_info(HANDLE_BASE, &public_with(true, true, true)).expect("info");
        assert!(bound.is_device_bound());
        assert_eq!(bound.id.0, vec![0x81, 0x01, 0x00, 0x00]);
        for (tpm, parent, origin) in [
            (false, true, true),
            (true, false, true),
            (true, true, false),
        ] {
            let info = key_info(HANDLE_BASE, &public_with(tpm, parent, origin)).expect("info");
            assert!(
                !info.is_device_bound(),
                "fixedTPM {tpm} fixedParent {parent} sensitiveDataOrigin {origin}"
            );
        }
    }

    #[test]
    fn key_ids_outside_the_handle_range_are_not_found() {
        for id in [
            vec![0x81, 0x00, 0x00, 0x01],
            vec![1, 2, 3],
            KeyId::random().0,
        ] {
            assert!(matches!(
                handle_of(&KeyId(id)),
                Err(KeystoreError::KeyNotFound(_))
            ));
        }
        assert_eq!(
            handle_of(&KeyId(vec![0x81, 0x01, 0x00, 0x05])).expect("in range"),
            0x8101_0005
        );
    }
}
