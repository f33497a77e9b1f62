//! hsm-ca: a certificate authority whose signing keys never leave hardware.
//!
//! The crate is organised the way a request travels, and imports go one way only (top to
//! bottom below; `ops/check-modules.py` checks it). `ARCHITECTURE.md` says what each module must
//! never do.
//!
//! Front doors and wiring:
//! - [`cli`]: the command line (arguments, prompts, printing); [`dev`]: the development
//!   appliance and test fixtures, reached only from `cli` and tests.
//! - [`server`]: the running appliance's listeners and serving certificate; [`issuance`]: the
//!   Istio gRPC certificate service; [`vault`]: the Vault PKI API subset for SPIRE and
//!   cert-manager; [`acme`]: the ACME server (RFC 8555) for gateways, webhooks and hosts;
//!   [`admin`]: the admin API's HTTP skin; [`metrics`]:
//!   counters for `/metrics`; [`client`]: the istio-agent-like workload client.
//!
//! Domain:
//! - [`control`]: run-time CA changes (rotation, roots, revocation, approvals) with one
//!   [`clock`]; [`trust`]: publishing roots, revocations and TLS configs; [`ceremony`]: the
//!   offline root ceremony; [`quorum`]: M-of-N shares of a token PIN; [`authority`]: the CA
//!   state-change primitives they share.
//! - [`config`]: the config file, validated once and assembled from the modules' own types.
//! - [`auth`]: who is calling (certificates, service-account tokens, SPIFFE IDs); [`ca`]:
//!   certificate profiles, CSR checks, signing through the keystore; [`audit`]: the
//!   hash-chained, device-signed log; [`state`]: the CA state in sled.
//!
//! Foundations:
//! - [`keystore`]: every conversation with the HSM or TPM; [`tls`]: all TLS policy;
//!   [`https`]: one HTTPS request as a client (cluster keys, `hsm-ca admin`);
//!   [`store`]: opening sled; [`secret`]: PINs and auth values that never leak.

pub mod acme;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod authority;
pub mod ca;
pub mod ceremony;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dev;
pub mod https;
pub mod issuance;
pub mod keystore;
pub mod metrics;
#[cfg(feature = "profile")]
pub mod profile;
pub mod quorum;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod trust;
pub mod vault;
