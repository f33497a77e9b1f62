//! Development and tests only; no production module imports it. It owns what the `hsm-ca dev`
//! appliance and the test suites need and a production appliance must never have: an embedded
//! SoftHSM token made on first start with an online root and intermediate ([`appliance`]), the
//! dev appliance's own swtpm ([`swtpm`]), and a software service-account token signer standing
//! in for a Kubernetes token issuer ([`token`]).
//!
//! Only [`crate::cli`] (for the `dev` and `request --dev` commands), tests and benchmarks use
//! this module. It never prints: the command line says what happened.

pub mod appliance;
pub mod swtpm;
pub mod token;

use std::path::PathBuf;

/// Why the dev appliance could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "SoftHSM is not installed (no libsofthsm2.so found); run ops/dev.sh, or apt-get install softhsm2"
    )]
    NoSoftHsm,
    #[error("{} was made with --backend {made}; use it again or pick another --dir", dir.display())]
    BackendMismatch { dir: PathBuf, made: &'static str },
    #[error("{} was made by an older hsm-ca; remove it to start afresh", .0.display())]
    Outdated(PathBuf),
    #[error("no free port on 127.0.0.1: {0}")]
    NoFreePort(std::io::Error),
    #[error("no free pair of ports on 127.0.0.1 for swtpm")]
    NoFreePortPair,
    #[error("cannot start swtpm ({0}); run ops/dev.sh, or apt-get install swtpm swtpm-tools")]
    SwtpmStart(std::io::Error),
    #[error("swtpm exited at start: {0}")]
    SwtpmExited(std::process::ExitStatus),
    #[error("swtpm did not start within 10 s")]
    SwtpmTimeout,
    #[error("{0}")]
    AdminKey(String),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Authority(#[from] crate::authority::AuthorityError),
}

impl DevError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DevError {
        let path = path.into();
        move |source| DevError::Io { path, source }
    }
}

impl From<crate::keystore::KeystoreError> for DevError {
    fn from(e: crate::keystore::KeystoreError) -> Self {
        DevError::Authority(e.into())
    }
}

impl From<crate::ca::CaError> for DevError {
    fn from(e: crate::ca::CaError) -> Self {
        DevError::Authority(e.into())
    }
}

impl From<crate::state::StateError> for DevError {
    fn from(e: crate::state::StateError) -> Self {
        DevError::Authority(e.into())
    }
}
