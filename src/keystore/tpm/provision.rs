//! Key creation and the persistent handles: a key id is a handle's four bytes in
//! `HANDLE_BASE..HANDLE_BASE + HANDLE_COUNT`; a new key is created under the storage primary
//! and made persistent with `TPM2_EvictControl` at the first free handle of that range.
//!
//! This part never touches a handle outside hsm-ca's range, never evicts (deletes) a
//! persistent key, and never retries a creation: a lost answer may hide a key that was made
//! persistent.

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::CapabilityData;
use tss_esapi::Context;

use super::auth::auth_of;
use super::template::{key_template, primary_template};
use super::{classify, HANDLE_BASE, HANDLE_COUNT};
use crate::keystore::{KeyId, KeyRequest, KeystoreError};
use crate::secret::Secret;

/// The persistent handle a key id names; ids outside hsm-ca's range are not found.
pub(super) fn handle_of(id: &KeyId) -> Result<u32, KeystoreError> {
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

/// The persistent handles in hsm-ca's range.
pub(super) fn persistent_handles(ctx: &mut Context) -> Result<Vec<u32>, KeystoreError> {
    let mut found = Vec::new();
    let mut next = HANDLE_BASE;
    loop {
        let (data, more) = ctx
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

/// The ESYS object for the persistent key at `handle`.
pub(super) fn persistent_object(
    ctx: &mut Context,
    handle: u32,
) -> Result<ObjectHandle, tss_esapi::Error> {
    let tpm_handle = TpmHandle::Persistent(PersistentTpmHandle::new(handle)?);
    ctx.execute_without_session(|ctx| ctx.tr_from_tpm_public(tpm_handle))
}

/// Creates a key for `request` under the storage primary (with `owner_auth` when the owner
/// has set one), gives it `key_auth`, and makes it persistent at the first free handle, which
/// is returned. The primary is flushed again whatever happens.
pub(super) fn create_persistent_key(
    ctx: &mut Context,
    session: AuthSession,
    owner_auth: Option<&Secret>,
    key_auth: Option<&Secret>,
    request: &KeyRequest,
) -> Result<u32, KeystoreError> {
    let template = key_template(request.algorithm)?;
    let taken = persistent_handles(ctx)?;
    let handle = (HANDLE_BASE..HANDLE_BASE + HANDLE_COUNT)
        .find(|h| !taken.contains(h))
        .ok_or_else(|| {
            KeystoreError::Unsupported("more keys: every hsm-ca persistent handle is in use".into())
        })?;
    if let Some(auth) = owner_auth {
        ctx.tr_set_auth(ObjectHandle::Owner, auth_of(auth)?)
            .map_err(|e| classify("set owner auth", None, e))?;
    }
    let key_auth = key_auth.map(auth_of).transpose()?;
    let session = Some(session);
    let primary = ctx
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
        let created = ctx
            .execute_with_session(session, |ctx| {
                ctx.create(primary, template, key_auth, None, None, None)
            })
            .map_err(|e| classify("create key", None, e))?;
        let transient = ctx
            .execute_with_session(session, |ctx| {
                ctx.load(primary, created.out_private, created.out_public)
            })
            .map_err(|e| classify("load key", None, e))?;
        let persistent =
            PersistentTpmHandle::new(handle).map_err(|e| classify("handle", None, e))?;
        let evicted = ctx.execute_with_session(session, |ctx| {
            ctx.evict_control(
                Provision::Owner,
                transient.into(),
                Persistent::Persistent(persistent),
            )
        });
        let _ = ctx.flush_context(transient.into());
        let mut persistent_object =
            evicted.map_err(|e| classify("make key persistent", None, e))?;
        let _ = ctx.tr_close(&mut persistent_object);
        Ok(handle)
    })();
    let _ = ctx.flush_context(primary.into());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
