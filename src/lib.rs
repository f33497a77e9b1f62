//! hsm-ca: a certificate authority whose signing keys never leave hardware.
//!
//! The crate is organised the way a request travels: [`config`] is read and validated once,
//! [`keystore`] owns every conversation with the HSM, [`ca`] builds and checks certificates,
//! [`state`] records which CA certificates are installed, and [`cli`] is the officer's front door.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod issuance;
pub mod keystore;
pub mod metrics;
pub mod quorum;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod trust;
