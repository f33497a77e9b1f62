//! PKCS#11 backend: SoftHSM in tests, network and USB HSMs in production.
//!
//! [`Pkcs11Token`] loads the module, finds the token by label or serial (never by slot number,
//! which tokens reassign), logs in once and keeps that login session open for the life of the
//! process. Worker sessions ([`session::Pkcs11Session`]) share the login. When a call fails
//! because the session, the login or the library itself went away, the token is recovered
//! (re-initialise the library if it was finalised, find the slot again, log in again) and the
//! call is retried. When the retry fails too — the device kept a broken view of its objects,
//! say after running out of file descriptors, so that a key it held "cannot be found" — the
//! library is finalised and initialised again (at most once per backoff interval, which grows
//! while re-initialising fails) and the call is retried a last time; a failure after that
//! reaches the caller as a retryable error, and the next call tries again.

pub mod pin;
pub mod provision;
mod session;
mod template;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::{DeviceSession, KeyDevice, KeyId, KeystoreError};
use crate::secret::{Secret, SecretSource};

/// How the token is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// Everything needed to reach a PKCS#11 token.
#[derive(Clone, Debug)]
pub struct Pkcs11Settings {
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: SecretSource,
    /// Verify every signature with the public key before it leaves the keystore, so that a
    /// device fault or a stale handle can never hand out a wrong signature.
    pub verify_signatures: bool,
}

/// A logged-in PKCS#11 token shared by the keystore workers.
pub struct Pkcs11Token {
    settings: Pkcs11Settings,
    pin: Secret,
    ctx: Pkcs11,
    state: Mutex<TokenState>,
    /// Held shared by every call into the library and exclusively while recovery
    /// re-initialises it: PKCS#11 leaves a call that races C_Initialize undefined. One lock
    /// per module, shared by every token of the process that uses it, since finalising the
    /// library ends every token's sessions.
    calls: Arc<RwLock<()>>,
    /// Keys this token has seen: one of them missing later is device trouble, not a caller's
    /// mistake.
    known: Mutex<HashSet<KeyId>>,
    /// Declared last so sessions close before the library may be finalised.
    _library: LibraryUse,
}

/// Live users of each loaded module in this process. The last one out finalises the library:
/// SoftHSM crashes at process exit when it was never finalised, and finalising while another
/// user still has sessions would break them.
static LIBRARY_USERS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// The call gate of each loaded module (see `Pkcs11Token::calls`).
static LIBRARY_GATES: Mutex<BTreeMap<PathBuf, Arc<RwLock<()>>>> = Mutex::new(BTreeMap::new());

fn library_gate(module: &Path) -> Arc<RwLock<()>> {
    LIBRARY_GATES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(module.to_path_buf())
        .or_default()
        .clone()
}

/// The shortest wait between two full re-initialisations, and the longest it grows to while
/// re-initialising keeps failing.
const REINIT_BACKOFF_MIN: Duration = Duration::from_millis(500);
const REINIT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One user's claim on an initialised module; finalises it when the last claim is dropped.
pub(crate) struct LibraryUse {
    ctx: Pkcs11,
    module: PathBuf,
}

impl LibraryUse {
    /// Loads and initialises `module` and registers a user of it.
    pub(crate) fn acquire(module: &Path) -> Result<Self, KeystoreError> {
        let ctx = Pkcs11::new(module).map_err(|e| KeystoreError::Module {
            module: module.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut users = LIBRARY_USERS.lock().unwrap_or_else(|p| p.into_inner());
        initialize(&ctx)?;
        *users.entry(module.to_path_buf()).or_insert(0) += 1;
        Ok(LibraryUse {
            ctx,
            module: module.to_path_buf(),
        })
    }

    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.ctx
    }
}

impl Drop for LibraryUse {
    fn drop(&mut self) {
        let mut users = LIBRARY_USERS.lock().unwrap_or_else(|p| p.into_inner());
        let count = users.entry(self.module.clone()).or_insert(1);
        *count -= 1;
        if *count == 0 {
            users.remove(&self.module);
            // Errors here (e.g. already finalised by someone else) leave nothing to undo.
            let _ = self.ctx.clone().finalize();
        }
    }
}

struct TokenState {
    slot: Slot,
    /// Bumped on every recovery; sessions opened under an older generation are stale.
    generation: u64,
    /// The generation of the last recovery that re-initialised the library: sessions opened
    /// before it are dead, sessions opened after it survived any later re-login.
    sessions_valid_from: u64,
    /// Keeps the login alive: PKCS#11 logs out when the last session of the token closes.
    login_session: Option<Session>,
    /// No full re-initialisation before this instant.
    reinit_not_before: Option<Instant>,
    /// The wait after the next failed re-initialisation.
    reinit_backoff: Duration,
}

impl std::fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The initialisation every PKCS#11 context needs: SoftHSM corrupts memory under threads
/// unless it may use OS locking.
pub fn init_args() -> CInitializeArgs {
    CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)
}

impl Pkcs11Token {
    /// Loads the module, finds the token and logs in. Errors are one clear line each.
    pub fn open(settings: Pkcs11Settings) -> Result<Arc<Self>, KeystoreError> {
        let pin = settings.pin.load()?;
        let library = LibraryUse::acquire(&settings.module)?;
        let ctx = library.ctx().clone();
        let slot = find_slot(&ctx, &settings.token)?;
        let login_session = login(&ctx, slot, &pin)?;
        let calls = library_gate(&settings.module);
        Ok(Arc::new(Pkcs11Token {
            settings,
            pin,
            ctx,
            state: Mutex::new(TokenState {
                slot,
                generation: 0,
                sessions_valid_from: 0,
                login_session: Some(login_session),
                reinit_not_before: None,
                reinit_backoff: REINIT_BACKOFF_MIN,
            }),
            calls,
            known: Mutex::new(HashSet::new()),
            _library: library,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, TokenState> {
        // A poisoned lock only means a thread panicked while holding it; the state inside is
        // still a slot number and a session, both of which recovery replaces anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot and generation new sessions should use.
    fn current(&self) -> (Slot, u64) {
        let state = self.lock();
        (state.slot, state.generation)
    }

    /// Shared permission to call into the library (see `calls`).
    fn call_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the token back after a failure seen under generation `seen`. `lost` says the
    /// failure showed that sessions are gone (library finalised, session handle invalid,
    /// device removed); otherwise only the login is renewed. If another worker already
    /// recovered since `seen`, this returns at once.
    fn recover(&self, seen: u64, lost: bool) -> Result<(Slot, u64), KeystoreError> {
        let _exclusive = self.calls.write().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        if state.generation != seen {
            return Ok((state.slot, state.generation));
        }
        tracing::warn!(token = %self.settings.token, lost, "recovering PKCS#11 token");
        if !lost {
            if let Some(session) = &state.login_session {
                let auth = AuthPin::from(self.pin.expose().to_string());
                match session.login(UserType::User, Some(&auth)) {
                    Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                        state.generation += 1;
                        return Ok((state.slot, state.generation));
                    }
                    Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => {
                        return Err(KeystoreError::PinIncorrect)
                    }
                    Err(_) => {}
                }
            }
        }
        // The old login session is dead or unusable: forget it without closing, since after
        // a re-initialisation its handle number may belong to a new session.
        if let Some(old) = state.login_session.take() {
            session::abandon(old);
        }
        initialize(&self.ctx)?;
        let slot = find_slot(&self.ctx, &self.settings.token)?;
        let session = login(&self.ctx, slot, &self.pin)?;
        state.slot = slot;
        state.login_session = Some(session);
        state.generation += 1;
        state.sessions_valid_from = state.generation;
        Ok((state.slot, state.generation))
    }

    /// The escalation when recovering did not help: finalises and initialises the library
    /// again, finds the slot and logs in, unless another worker already recovered since `seen`
    /// or the last re-initialisation was too recent (then the caller gets a retryable error and
    /// a later call tries again).
    fn reinitialize(&self, seen: u64) -> Result<(Slot, u64), KeystoreError> {
        let _exclusive = self.calls.write().unwrap_or_else(|p| p.into_inner());
        let mut state = self.lock();
        if state.generation != seen {
            return Ok((state.slot, state.generation));
        }
        let now = Instant::now();
        if state.reinit_not_before.is_some_and(|t| now < t) {
            return Err(KeystoreError::Unavailable(
                "the device was re-initialised moments ago and still fails".into(),
            ));
        }
        tracing::warn!(token = %self.settings.token, "re-initialising the PKCS#11 library");
        if let Some(old) = state.login_session.take() {
            session::abandon(old);
        }
        // Finalising a library someone else already finalised is fine: initialise follows.
        let _ = self.ctx.clone().finalize();
        // Every session opened before this point is dead, whatever happens next.
        state.generation += 1;
        state.sessions_valid_from = state.generation;
        let reopened = initialize(&self.ctx).and_then(|()| {
            let slot = find_slot(&self.ctx, &self.settings.token)?;
            Ok((slot, login(&self.ctx, slot, &self.pin)?))
        });
        match reopened {
            Ok((slot, session)) => {
                state.slot = slot;
                state.login_session = Some(session);
                state.reinit_not_before = Some(now + REINIT_BACKOFF_MIN);
                state.reinit_backoff = REINIT_BACKOFF_MIN;
                Ok((state.slot, state.generation))
            }
            Err(e) => {
                state.reinit_not_before = Some(now + state.reinit_backoff);
                state.reinit_backoff = (state.reinit_backoff * 2).min(REINIT_BACKOFF_MAX);
                Err(e)
            }
        }
    }

    /// Records that the token holds key `id`.
    fn note_known(&self, id: &KeyId) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
    }

    /// Whether this token was seen holding key `id`.
    fn is_known(&self, id: &KeyId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// The generation sessions must have been opened at (or after) to still be alive.
    fn sessions_valid_from(&self) -> u64 {
        self.lock().sessions_valid_from
    }

    fn open_worker_session(&self, slot: Slot) -> Result<Session, KeystoreError> {
        self.ctx
            .open_rw_session(slot)
            .map_err(|e| classify("open session", e))
    }
}

impl Drop for Pkcs11Token {
    fn drop(&mut self) {
        // Close the login session before the library claim (the last field) is released.
        let _exclusive = self.calls.write().unwrap_or_else(|p| p.into_inner());
        self.lock().login_session = None;
    }
}

impl Pkcs11Token {
    pub fn describe(&self) -> String {
        format!(
            "PKCS#11 token with {} via {}",
            self.settings.token,
            self.settings.module.display()
        )
    }
}

/// The [`KeyDevice`] the keystore pool uses: a shared handle to the token.
#[derive(Debug, Clone)]
pub struct Pkcs11Device(pub Arc<Pkcs11Token>);

impl Pkcs11Device {
    pub fn open(settings: Pkcs11Settings) -> Result<Self, KeystoreError> {
        Pkcs11Token::open(settings).map(Pkcs11Device)
    }
}

impl KeyDevice for Pkcs11Device {
    fn open_session(&self) -> Result<Box<dyn DeviceSession>, KeystoreError> {
        Ok(Box::new(session::Pkcs11Session::new(self.0.clone())))
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

fn initialize(ctx: &Pkcs11) -> Result<(), KeystoreError> {
    match ctx.initialize(init_args()) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(KeystoreError::Unavailable(format!(
            "cannot initialise the PKCS#11 library: {}",
            rv_name(&e)
        ))),
    }
}

fn find_slot(ctx: &Pkcs11, selector: &TokenSelector) -> Result<Slot, KeystoreError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| classify("list slots", e))?;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let matches = match selector {
            TokenSelector::Label(l) => info.label().trim_end() == l,
            TokenSelector::Serial(s) => info.serial_number().trim_end() == s,
        };
        if matches {
            return Ok(slot);
        }
    }
    Err(KeystoreError::TokenNotFound(selector.to_string()))
}

fn login(ctx: &Pkcs11, slot: Slot, pin: &Secret) -> Result<Session, KeystoreError> {
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| classify("open login session", e))?;
    let auth = AuthPin::from(pin.expose().to_string());
    match session.login(UserType::User, Some(&auth)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => Err(KeystoreError::PinIncorrect),
        Err(P11Error::Pkcs11(RvError::PinLocked, _)) => Err(KeystoreError::PinLocked),
        Err(e) => Err(classify("login", e)),
    }
}

/// The short name of a PKCS#11 error (`CKR_…`-like), without the library's long prose.
fn rv_name(e: &P11Error) -> String {
    match e {
        P11Error::Pkcs11(rv, function) => format!("{rv:?} in {function:?}"),
        other => other.to_string(),
    }
}

/// Maps a PKCS#11 error to a keystore error. Errors after which re-opening the session,
/// logging in again or re-initialising the library can help become [`KeystoreError::Unavailable`].
fn classify(operation: &str, e: P11Error) -> KeystoreError {
    match &e {
        P11Error::Pkcs11(rv, _) if session_lost(*rv) => {
            KeystoreError::SessionLost(format!("{operation}: {}", rv_name(&e)))
        }
        P11Error::Pkcs11(rv, _) if is_recoverable(*rv) => {
            KeystoreError::Unavailable(format!("{operation}: {}", rv_name(&e)))
        }
        P11Error::Pkcs11(RvError::MechanismInvalid, _) => {
            KeystoreError::Unsupported(format!("{operation}: mechanism"))
        }
        _ => KeystoreError::Device {
            operation: operation.into(),
            reason: rv_name(&e),
        },
    }
}

/// Errors after which the session handle is dead: it is forgotten, not closed.
fn session_lost(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::CryptokiNotInitialized
    )
}

/// Errors after which a new login and fresh key handles can help. A key created by hsm-ca
/// can always sign, so "not permitted" or "inconsistent" on it means the handle is stale (it
/// names another object since a re-initialisation).
fn is_recoverable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::OperationActive
            | RvError::UserNotLoggedIn
            | RvError::DeviceError
            | RvError::GeneralError
    )
}
