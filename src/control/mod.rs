//! The CA's run-time control plane: every state change an officer or operator can ask for,
//! the checks that guard it, and officer approvals for the sensitive ones. It is split by
//! concern: [`rotation`] (intermediates), [`roots`] (the trust bundle), [`revocation`]
//! (revocations and CRLs), and [`approvals`] on top, which files operations for approval and
//! calls down into the others (never the other way round). Each change is audited and then
//! published through the [trust plane](crate::trust), without stopping the service.
//!
//! Results are typed values and failures one [`ControlError`]; this module must never know
//! HTTP (status codes, routes, request bodies), and reads the time only from its [`Clock`].

pub mod approvals;
mod error;
mod revocation;
pub mod root_crl;
mod roots;
mod rotation;
mod state_view;

use std::sync::{Arc, Mutex};

use crate::audit::{AuditEvent, AuditLog};
use crate::ca::certificates_from_pem;
use crate::ca::inspect::{check_issued_by, parse_certificate, serial_hex};
use crate::clock::{rfc3339, Clock};
use crate::config::{Config, Role};
use crate::keystore::{KeyId, KeyStore};
use crate::state::{CaState, IntermediateRecord, RootRecord};
use crate::trust::TrustPlane;

pub use approvals::{Operation, OperationResult, Outcome, Proposal};
pub use error::ControlError;
pub use revocation::{CrlImported, RevocationDone, RevokeRequest, CRL_VALIDITY};
pub use roots::{CrossSigned, RootAdded, RootRemoved};
pub use rotation::{
    log_rotation_step, Activation, IntermediateCsr, RotationStep, SignedIntermediate,
};
pub use state_view::{IntermediateView, RootView, StateView};

/// An authenticated caller: who acts, and with which roles.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Everything the control plane changes, shared with the running server.
pub struct Control {
    config: Arc<Config>,
    store: KeyStore,
    state: Arc<CaState>,
    trust: Arc<TrustPlane>,
    audit: Option<Arc<AuditLog>>,
    clock: Clock,
    /// State changes run one at a time.
    changes: tokio::sync::Mutex<()>,
    crls: Mutex<revocation::CrlCache>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The one certificate in `pem_text` (DER).
fn first_cert(pem_text: &str) -> Result<Vec<u8>, ControlError> {
    let mut certs = certificates_from_pem(pem_text.as_bytes())?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        0 => Err(ControlError::NoCertificate),
        n => Err(ControlError::ManyCertificates(n)),
    }
}

fn record_der(record: &IntermediateRecord) -> Result<Vec<u8>, ControlError> {
    first_cert(&record.certificate_pem)
}

/// The serial number (hex) of the certificate `der`.
fn serial_of(der: &[u8]) -> Result<String, ControlError> {
    Ok(serial_hex(parse_certificate(der)?.raw_serial()))
}

fn key_id(s: &str) -> Result<KeyId, ControlError> {
    s.parse::<KeyId>().map_err(ControlError::InvalidKeyId)
}

impl Control {
    /// A control plane over `state` and the keys in `store`, publishing through `trust`.
    /// Without [`with_audit`](Self::with_audit) nothing is audited; without
    /// [`with_clock`](Self::with_clock) it reads the system clock.
    pub fn new(
        config: Arc<Config>,
        store: KeyStore,
        state: Arc<CaState>,
        trust: Arc<TrustPlane>,
    ) -> Self {
        Control {
            config,
            store,
            state,
            trust,
            audit: None,
            clock: Clock::system(),
            changes: tokio::sync::Mutex::new(()),
            crls: Mutex::new(revocation::CrlCache::default()),
        }
    }

    /// Records every change (and refusal) in `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<AuditLog>>) -> Self {
        self.audit = audit;
        self
    }

    /// Reads the time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> &CaState {
        &self.state
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    pub fn trust(&self) -> &TrustPlane {
        &self.trust
    }

    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_deref()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Appends an audit record (when the audit is on); the change is answered only after.
    pub async fn record(&self, event: AuditEvent) -> Result<(), ControlError> {
        if let Some(audit) = &self.audit {
            audit
                .append(event)
                .await
                .map_err(ControlError::AuditFailed)?;
        }
        Ok(())
    }

    /// The trust bundle's records, oldest root first.
    pub async fn roots(&self) -> Result<Vec<RootRecord>, ControlError> {
        Ok(self.state.roots().await?)
    }

    async fn roots_der(&self) -> Result<Vec<Vec<u8>>, ControlError> {
        self.roots()
            .await?
            .iter()
            .map(|r| first_cert(&r.certificate_pem))
            .collect()
    }

    /// The bundle root that issued `cert_der`, if any.
    async fn root_of(&self, cert_der: &[u8]) -> Result<Option<RootRecord>, ControlError> {
        Ok(self.roots().await?.into_iter().find(|r| {
            first_cert(&r.certificate_pem)
                .map(|root| check_issued_by(cert_der, &root).is_ok())
                .unwrap_or(false)
        }))
    }

    /// Makes the current state visible (issuer view, TLS client verification, bundle file).
    pub async fn publish(&self) -> Result<(), ControlError> {
        let snapshot = self.state.snapshot().await?;
        blocking(|| self.trust.publish(&self.store, &snapshot))?;
        Ok(())
    }

    /// Publishes the shared state again when another node changed it, that is when the
    /// change sequence is no longer `seen`; returns the sequence the published state is at
    /// least as new as (`seen` on sled, which only this process changes). The sequence is
    /// read before the state, so a change committed in between is published now and seen
    /// again next time, never missed.
    pub async fn follow_changes(&self, seen: u64) -> Result<u64, ControlError> {
        let Some(now) = self.state.change_sequence().await? else {
            return Ok(seen);
        };
        if now == seen {
            return Ok(seen);
        }
        let _g = self.changes.lock().await;
        self.publish().await?;
        Ok(now)
    }

    /// Reloads the revocations client certificates are checked against.
    async fn reload_revocations(&self) -> Result<(), ControlError> {
        let snapshot = self.state.snapshot().await?;
        blocking(|| self.trust.reload_revocations(&snapshot))?;
        Ok(())
    }

    /// Audits a CA certificate signed here (an intermediate or a cross-certificate), with its
    /// key fingerprint in the same form as workload issuances; returns its serial.
    pub(crate) async fn record_ca_issued(
        &self,
        caller: &Caller,
        der: &[u8],
        method: &str,
        ca_key: &KeyId,
    ) -> Result<String, ControlError> {
        let parsed = parse_certificate(der)?;
        let serial = serial_hex(parsed.raw_serial());
        self.record(AuditEvent::Issued {
            serial: serial.clone(),
            identity: parsed.subject().to_string(),
            caller: caller.identity.clone(),
            method: method.into(),
            ca_key: ca_key.to_string(),
            not_before: rfc3339(parsed.validity().not_before.to_datetime()),
            not_after: rfc3339(parsed.validity().not_after.to_datetime()),
            csr_key_sha256: crate::ca::fingerprint(parsed.public_key().raw),
            certificate_sha256: Some(crate::ca::fingerprint_id(der)),
        })
        .await?;
        Ok(serial)
    }
}
