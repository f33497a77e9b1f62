//! Changing a token's user PIN: by the security officer (`C_InitPIN`, which replaces a
//! forgotten or first PIN) or by the user (`C_SetPIN`, which needs the current one). Used by
//! the ceremony commands that split the PIN among officers.

use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::{find_slot, rv_name, LibraryUse, Pkcs11Settings};
use crate::keystore::KeystoreError;
use crate::secret::Secret;

fn fail(operation: &str, e: P11Error) -> KeystoreError {
    match e {
        P11Error::Pkcs11(RvError::PinIncorrect, _) => KeystoreError::PinIncorrect,
        P11Error::Pkcs11(RvError::PinLocked, _) => KeystoreError::PinLocked,
        other => KeystoreError::Device {
            operation: operation.into(),
            reason: rv_name(&other),
        },
    }
}

/// A read-write session on the token. The fields drop in this order: the session is closed
/// while the library is still initialised.
struct TokenSession {
    session: Session,
    _library: LibraryUse,
}

fn session(settings: &Pkcs11Settings) -> Result<TokenSession, KeystoreError> {
    let library = LibraryUse::acquire(&settings.module)?;
    let slot = find_slot(library.ctx(), &settings.token)?;
    let session = library
        .ctx()
        .open_rw_session(slot)
        .map_err(|e| fail("open session", e))?;
    Ok(TokenSession {
        session,
        _library: library,
    })
}

/// Refuses a PIN the token would not take, before anything is sent to it.
fn check_length(token: &TokenSession, pin: &Secret) -> Result<(), KeystoreError> {
    let info = token
        .session
        .get_session_info()
        .and_then(|s| token._library.ctx().get_token_info(s.slot_id()))
        .map_err(|e| fail("token info", e))?;
    let (min, max) = (info.min_pin_length(), info.max_pin_length());
    let len = pin.expose().len();
    if len < min || len > max {
        return Err(KeystoreError::Device {
            operation: "set PIN".into(),
            reason: format!(
                "the token takes PINs of {min} to {max} characters; the new one has {len}"
            ),
        });
    }
    Ok(())
}

/// Sets the user PIN as the security officer, whose PIN is `so_pin`.
pub fn init_user_pin(
    settings: &Pkcs11Settings,
    so_pin: &Secret,
    new_pin: &Secret,
) -> Result<(), KeystoreError> {
    let token = session(settings)?;
    let session = &token.session;
    session
        .login(
            UserType::So,
            Some(&AuthPin::from(so_pin.expose().to_string())),
        )
        .map_err(|e| fail("SO login", e))?;
    let result = session
        .init_pin(&AuthPin::from(new_pin.expose().to_string()))
        .map_err(|e| fail("init PIN", e));
    let _ = session.logout();
    result
}

/// Replaces the user PIN `old` by `new` (logged in as the user).
pub fn change_user_pin(
    settings: &Pkcs11Settings,
    old: &Secret,
    new: &Secret,
) -> Result<(), KeystoreError> {
    let token = session(settings)?;
    check_length(&token, new)?;
    let session = &token.session;
    let old_pin = AuthPin::from(old.expose().to_string());
    session
        .login(UserType::User, Some(&old_pin))
        .map_err(|e| fail("login", e))?;
    let result = session
        .set_pin(&old_pin, &AuthPin::from(new.expose().to_string()))
        .map_err(|e| fail("set PIN", e));
    let _ = session.logout();
    result
}
