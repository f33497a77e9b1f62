//! hsm-ca: a certificate authority whose signing keys never leave hardware.
//!
//! The crate is organised the way a request travels: [`config`] is read and validated once,
//! [`keystore`] owns every conversation with the HSM, [`ca`] builds and checks certificates,
//! [`state`] records which CA certificates are installed, and [`cli`] is the officer's front door.

pub mod authority;
pub mod ca;
pub mod cli;
pub mod config;
pub mod keystore;
pub mod secret;
pub mod state;
