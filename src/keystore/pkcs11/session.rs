//! One worker's PKCS#11 session, with cached key handles and the recovery ladder: a failed
//! call is retried after recovering the token (a new login, or a new session after the library
//! was finalised), and once more after re-initialising the library if that did not help.

use std::collections::HashMap;
use std::sync::Arc;

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};

use super::template::{key_pair_templates, read_key_info, single};
use super::{classify, Pkcs11Token};
use crate::keystore::check::KeyCheck;
use crate::keystore::{
    der, DeviceSession, KeyAlgorithm, KeyId, KeyInfo, KeyRequest, KeystoreError, SignatureScheme,
};

pub struct Pkcs11Session {
    token: Arc<Pkcs11Token>,
    /// The open session and the token generation it was opened under.
    session: Option<(Session, u64)>,
    /// Private key handles by id. Cleared on any recovery, since a logout or
    /// re-initialisation invalidates handles.
    handles: HashMap<KeyId, CachedKey>,
}

#[derive(Clone)]
struct CachedKey {
    handle: ObjectHandle,
    algorithm: KeyAlgorithm,
    /// Verifies signatures with the public key before they leave.
    check: Arc<KeyCheck>,
}

impl Pkcs11Session {
    pub fn new(token: Arc<Pkcs11Token>) -> Self {
        Pkcs11Session {
            token,
            session: None,
            handles: HashMap::new(),
        }
    }

    fn ensure_session(&mut self) -> Result<(), KeystoreError> {
        // Another worker recovered the token since this session was opened: a session from
        // before a library re-initialisation is dead (forget it, its number may be reused);
        // one that only saw a re-login is alive and now belongs to the new generation, so a
        // new failure on it is recovered rather than mistaken for the old one.
        let (_, current) = self.token.current();
        if let Some((_, opened)) = &self.session {
            if *opened < current {
                self.handles.clear();
                if *opened < self.token.sessions_valid_from() {
                    if let Some((dead, _)) = self.session.take() {
                        abandon(dead);
                    }
                } else if let Some((_, generation)) = self.session.as_mut() {
                    *generation = current;
                }
            }
        }
        if self.session.is_none() {
            let (slot, generation) = self.token.current();
            let session = self.token.open_worker_session(slot)?;
            self.session = Some((session, generation));
        }
        Ok(())
    }

    /// Runs `op`; on a recoverable failure recovers the token and runs it again, and when that
    /// fails too, re-initialises the library and runs it a last time. A failure after that is
    /// returned as is (retryable for the caller).
    fn with_recovery<T>(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<T, KeystoreError>,
    ) -> Result<T, KeystoreError> {
        let mut attempt = 0;
        loop {
            // The generation this attempt runs under, read inside the gate (no recovery can
            // bump it until the gate is released). Not the session's own: a session opened
            // before another worker's recovery would name a generation already recovered
            // from, and its failure would then never lead to a recovery of its own.
            let (seen, result) = {
                let token = self.token.clone();
                let _gate = token.call_gate();
                let (_, seen) = token.current();
                (seen, self.ensure_session().and_then(|()| op(self)))
            };
            let lost = match &result {
                Err(KeystoreError::SessionLost(_)) => true,
                Err(KeystoreError::Unavailable(_)) => false,
                _ => return result,
            };
            self.handles.clear();
            if lost {
                // The handle is dead; closing it could hit a new session that reuses its number.
                if let Some((session, _)) = self.session.take() {
                    abandon(session);
                }
            } else if let Some((session, _)) = self.session.take() {
                // Close the session (it may hold a half-finished operation) and retry on a fresh
                // one, but only if it still looks like ours: worker sessions are read-write.
                // After a re-initialisation by someone else its number may name their session.
                let token = self.token.clone();
                let _gate = token.call_gate();
                let ours = session.get_session_info().is_ok_and(|info| {
                    matches!(
                        info.session_state(),
                        SessionState::RwPublic
                            | SessionState::RwUser
                            | SessionState::RwSecurityOfficer
                    )
                });
                if ours {
                    drop(session);
                } else {
                    abandon(session);
                }
            }
            let error = result.as_ref().err().map(ToString::to_string);
            match attempt {
                0 => {
                    tracing::warn!(error, "PKCS#11 call failed; recovering and retrying once");
                    self.token.recover(seen, lost)?
                }
                1 => {
                    tracing::warn!(
                        error,
                        "PKCS#11 call failed again; re-initialising the library and retrying"
                    );
                    self.token.reinitialize(seen)?
                }
                _ => return result,
            };
            attempt += 1;
        }
    }

    fn session(&self) -> Result<&Session, KeystoreError> {
        self.session
            .as_ref()
            .map(|(s, _)| s)
            .ok_or_else(|| KeystoreError::Unavailable("no session".into()))
    }

    /// The private key handle for `id`, from the cache or the token.
    fn private_key(&mut self, id: &KeyId) -> Result<CachedKey, KeystoreError> {
        if let Some(found) = self.handles.get(id) {
            return Ok(found.clone());
        }
        let session = self.session()?;
        let handles = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.0.clone()),
            ])
            .map_err(|e| classify("find key", e))?;
        let Some(handle) = single(handles, id)? else {
            // Private objects are invisible without a login: tell that apart from a missing key.
            let state = session
                .get_session_info()
                .map_err(|e| classify("session info", e))?
                .session_state();
            if matches!(state, SessionState::RoPublic | SessionState::RwPublic) {
                return Err(KeystoreError::Unavailable("find key: not logged in".into()));
            }
            // A key this token held before does not vanish in normal operation: the device's
            // view of its objects broke (e.g. it ran out of file descriptors), so recover.
            if self.token.is_known(id) {
                return Err(KeystoreError::Unavailable(format!(
                    "find key: key {id} was in the device and cannot be found now"
                )));
            }
            return Err(KeystoreError::KeyNotFound(id.clone()));
        };
        self.token.note_known(id);
        let info = read_key_info(session, handle).map_err(|e| classify("read key", e))?;
        let algorithm = info.algorithm.ok_or_else(|| {
            KeystoreError::Unsupported(format!("key {id}: algorithm not recognised"))
        })?;
        let public_key = der::subject_public_key_bits(&info.public_key)
            .map(Arc::from)
            .ok_or_else(|| {
                KeystoreError::Unavailable(format!("key {id}: public key unreadable"))
            })?;
        let cached = CachedKey {
            handle,
            algorithm,
            check: KeyCheck::for_key(public_key),
        };
        self.handles.insert(id.clone(), cached.clone());
        Ok(cached)
    }

    fn sign_once(
        &mut self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        let key = self.private_key(id)?;
        let (handle, algorithm) = (key.handle, key.algorithm);
        if !scheme.fits(algorithm) {
            return Err(KeystoreError::WrongScheme {
                id: id.clone(),
                actual: algorithm.to_string(),
                scheme,
            });
        }
        let session = self.session()?;
        let sign = |mechanism: &Mechanism<'_>, data: &[u8]| {
            session
                .sign(mechanism, handle, data)
                .map_err(|e| classify("sign", e))
        };
        let signature = match scheme {
            SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384 => {
                let (digest_alg, field) = if scheme == SignatureScheme::EcdsaSha256 {
                    (&ring::digest::SHA256, 32)
                } else {
                    (&ring::digest::SHA384, 48)
                };
                let digest = ring::digest::digest(digest_alg, message);
                let raw = sign(&Mechanism::Ecdsa, digest.as_ref())?;
                der::ecdsa_signature(&raw, field).ok_or_else(|| {
                    KeystoreError::Unavailable(format!(
                        "sign: device returned a malformed {}-byte ECDSA signature",
                        raw.len()
                    ))
                })
            }
            SignatureScheme::RsaPkcs1Sha256 => sign(&Mechanism::Sha256RsaPkcs, message),
            SignatureScheme::RsaPssSha256 => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                };
                sign(&Mechanism::Sha256RsaPkcsPss(params), message)
            }
        }?;
        if self.token.settings.verify_signatures && !key.check.verifies(scheme, message, &signature)
        {
            return Err(KeystoreError::Unavailable(format!(
                "sign: the device returned a signature that does not verify with key {id}"
            )));
        }
        Ok(signature)
    }
}

impl DeviceSession for Pkcs11Session {
    fn generate(&mut self, request: &KeyRequest) -> Result<KeyInfo, KeystoreError> {
        let id = KeyId::random();
        let (mechanism, public, private) =
            key_pair_templates(request.algorithm, &id, &request.label);
        self.with_recovery(|this| {
            let session = this.session()?;
            let (_public, private) = session
                .generate_key_pair(&mechanism, &public, &private)
                .map_err(|e| classify("generate key pair", e))?;
            let info = read_key_info(session, private).map_err(|e| classify("read key", e))?;
            this.token.note_known(&info.id);
            Ok(info)
        })
    }

    fn key_info(&mut self, id: &KeyId) -> Result<KeyInfo, KeystoreError> {
        self.with_recovery(|this| {
            let key = this.private_key(id)?;
            read_key_info(this.session()?, key.handle).map_err(|e| classify("read key", e))
        })
    }

    fn sign(
        &mut self,
        id: &KeyId,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, KeystoreError> {
        self.with_recovery(|this| this.sign_once(id, scheme, message))
    }

    fn list(&mut self) -> Result<Vec<KeyInfo>, KeystoreError> {
        self.with_recovery(|this| {
            let session = this.session()?;
            let handles = session
                .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                .map_err(|e| classify("list keys", e))?;
            let mut keys = handles
                .into_iter()
                .map(|h| read_key_info(session, h).map_err(|e| classify("read key", e)))
                .collect::<Result<Vec<_>, _>>()?;
            keys.sort_by(|a, b| a.label.cmp(&b.label).then(a.id.0.cmp(&b.id.0)));
            Ok(keys)
        })
    }
}

/// Lets go of a session without closing it: after a re-initialisation or a lost session its
/// handle number may already name another, live session, which `C_CloseSession` would close.
pub(super) fn abandon(session: Session) {
    #[allow(
        clippy::mem_forget,
        reason = "closing a stale handle could close a live session"
    )]
    std::mem::forget(session);
}
