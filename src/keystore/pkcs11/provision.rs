//! Creating a fresh token: for the dev appliance's embedded SoftHSM token and for tests.
//!
//! Production tokens are initialised with the vendor's tools; this exists so that a developer
//! and CI get a real token without any manual step.

use std::path::Path;
use std::sync::Mutex;

use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use super::rv_name;
use crate::keystore::KeystoreError;
use crate::secret::Secret;

/// Where SoftHSM's module is found on Debian/Ubuntu and from source builds.
pub const SOFTHSM_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The first SoftHSM module installed here, if any.
pub fn softhsm_module() -> Option<std::path::PathBuf> {
    SOFTHSM_MODULES
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Serialises token creation in this process: two creators would race for the same free slot.
static CREATE: Mutex<()> = Mutex::new(());

/// The SoftHSM configuration that keeps tokens under `token_dir`.
pub fn softhsm_config(token_dir: &Path) -> String {
    format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        token_dir.display()
    )
}

/// Initialises a new token labelled `label` on the module's free slot and sets its user PIN.
/// Refuses if a token with that label already exists.
pub fn create_token(
    module: &Path,
    label: &str,
    so_pin: &Secret,
    user_pin: &Secret,
) -> Result<(), KeystoreError> {
    let _guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
    let fail = |operation: &str, e: cryptoki::error::Error| KeystoreError::Device {
        operation: operation.into(),
        reason: rv_name(&e),
    };
    let library = super::LibraryUse::acquire(module)?;
    let ctx = library.ctx();
    let slots = ctx.get_all_slots().map_err(|e| fail("list slots", e))?;
    let mut free = None;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if info.token_initialized() {
            if info.label().trim_end() == label {
                return Err(KeystoreError::Device {
                    operation: "create token".into(),
                    reason: format!("a token labelled {label:?} already exists"),
                });
            }
        } else if free.is_none() {
            free = Some(slot);
        }
    }
    let slot = free.ok_or_else(|| KeystoreError::Device {
        operation: "create token".into(),
        reason: "the module has no free slot".into(),
    })?;
    let so = AuthPin::from(so_pin.expose().to_string());
    ctx.init_token(slot, &so, label)
        .map_err(|e| fail("init token", e))?;
    // The slot id may change once the token exists: find it again by label.
    let slot = super::find_slot(ctx, &super::TokenSelector::Label(label.to_string()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| fail("open session", e))?;
    session
        .login(UserType::So, Some(&so))
        .map_err(|e| fail("SO login", e))?;
    session
        .init_pin(&AuthPin::from(user_pin.expose().to_string()))
        .map_err(|e| fail("init PIN", e))?;
    session.logout().map_err(|e| fail("SO logout", e))?;
    Ok(())
}
