//! Intermediate rotation: a new key and its CSR in the device, signing with a root whose key
//! is online, installing, activating and retiring intermediates, and the automatic rotation
//! step. It must never file anything for approval (approvals call [`Control::activate`] once
//! an activation under a new root is approved), and never change the trust bundle.

use serde::Serialize;
use time::OffsetDateTime;

use super::{blocking, first_cert, record_der, Caller, Control, ControlError};
use crate::audit::AuditEvent;
use crate::authority::{self, AuthorityError};
use crate::ca::inspect::{parse_certificate, serial_hex};
use crate::ca::{certificate_pem, IssuingCa};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::keystore::KeyId;
use crate::state::{IntermediateRecord, IntermediateStatus, RootRecord, Transition};

/// A new intermediate key in the device and its CSR.
#[derive(Clone, Debug, Serialize)]
pub struct IntermediateCsr {
    pub key_id: String,
    pub csr_pem: String,
}

/// An intermediate signed by a root whose key is in this device.
#[derive(Clone, Debug, Serialize)]
pub struct SignedIntermediate {
    pub certificate_pem: String,
    pub serial: String,
    /// Fingerprint of the root that signed it.
    pub root: String,
}

/// An activation: the intermediate now issuing and the one it replaced.
#[derive(Clone, Debug, Serialize)]
pub struct Activation {
    pub activated: Box<IntermediateRecord>,
    pub retired: Option<Box<IntermediateRecord>>,
}

/// What one step of automatic rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationStep {
    Prepared(KeyId),
    Activated(KeyId),
}

/// Logs what an automatic rotation step did; a failure once until a step succeeds again
/// (`warned` remembers it between steps).
pub fn log_rotation_step(step: Result<Option<RotationStep>, ControlError>, warned: &mut bool) {
    match step {
        Ok(Some(what)) => {
            *warned = false;
            tracing::info!("automatic rotation: {what}");
        }
        Ok(None) => *warned = false,
        Err(e) if !*warned => {
            *warned = true;
            tracing::warn!(error = %e, "automatic rotation cannot proceed");
        }
        Err(_) => {}
    }
}

impl std::fmt::Display for RotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RotationStep::Prepared(id) => write!(f, "prepared intermediate {id}"),
            RotationStep::Activated(id) => write!(f, "activated intermediate {id}"),
        }
    }
}

/// The share (0 to 1, beyond 1 once expired) of the validity `not_before..not_after` that has
/// passed at `now`.
pub(super) fn life_elapsed(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> f64 {
    (now - not_before).as_seconds_f64() / (not_after - not_before).as_seconds_f64().max(1.0)
}

/// When intermediates under a root that entered the bundle at `added_at` may be activated
/// (`window` later); a time that does not parse counts as `now`.
pub(super) fn activatable_from(
    added_at: &str,
    window: std::time::Duration,
    now: OffsetDateTime,
) -> OffsetDateTime {
    parse_rfc3339(added_at).unwrap_or(now) + window
}

fn not_after_of(der: &[u8]) -> Result<OffsetDateTime, ControlError> {
    Ok(parse_certificate(der)?.validity().not_after.to_datetime())
}

impl Control {
    /// Generates the next intermediate key in the device and returns its CSR.
    pub async fn new_intermediate(&self, caller: &Caller) -> Result<IntermediateCsr, ControlError> {
        let _g = self.changes.lock().await;
        let now = self.clock.now();
        let (info, csr) =
            blocking(|| authority::new_intermediate_csr(&self.store, &self.config, now))?;
        self.record(AuditEvent::KeyGenerated {
            actor: caller.identity.clone(),
            key_id: info.id.to_string(),
            algorithm: info
                .algorithm
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
            label: info.label.clone(),
        })
        .await?;
        Ok(IntermediateCsr {
            key_id: info.id.to_string(),
            csr_pem: csr,
        })
    }

    /// The root (and its bundle record) that signs CA certificates here: `root` (a
    /// fingerprint), or else the newest root whose key is in this device.
    pub async fn root_signer(
        &self,
        root: Option<&str>,
    ) -> Result<(IssuingCa, RootRecord), ControlError> {
        let roots = self.roots().await?;
        let candidates: Vec<&RootRecord> = match root {
            Some(fp) => roots.iter().filter(|r| r.fingerprint == fp).collect(),
            None => roots.iter().rev().collect(),
        };
        if candidates.is_empty() {
            return Err(ControlError::UnknownRoot(root.unwrap_or("").to_string()));
        }
        for r in candidates {
            let der = first_cert(&r.certificate_pem)?;
            match blocking(|| authority::issuing_ca_for(&self.store, &der)) {
                Ok(ca) => return Ok((ca, r.clone())),
                Err(AuthorityError::NoMatchingKey(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::RootKeyNotInDevice)
    }

    /// Signs an intermediate CSR with a root whose key is in this device: `root` (a
    /// fingerprint), or else the newest such root.
    pub async fn sign_intermediate(
        &self,
        caller: &Caller,
        csr_pem: &str,
        root: Option<&str>,
    ) -> Result<SignedIntermediate, ControlError> {
        let now = self.clock.now();
        let csr = crate::ca::csr::parse_csr(csr_pem.as_bytes())?;
        let (root_ca, record) = self.root_signer(root).await?;
        let cert = blocking(|| authority::sign_intermediate(&root_ca, &csr, &self.config, now))?;
        let serial = self
            .record_ca_issued(
                caller,
                &cert.der,
                "admin:sign-intermediate",
                root_ca.key().id(),
            )
            .await?;
        Ok(SignedIntermediate {
            certificate_pem: certificate_pem(&cert.der),
            serial,
            root: record.fingerprint.clone(),
        })
    }

    /// Installs a signed intermediate (prepared; active when it is the first).
    pub async fn install(
        &self,
        caller: &Caller,
        pem_text: &str,
    ) -> Result<IntermediateRecord, ControlError> {
        let _g = self.changes.lock().await;
        let der = first_cert(pem_text)?;
        let now = self.clock.now();
        let roots = self.roots_der().await?;
        let checked = blocking(|| authority::check_intermediate(&self.store, &roots, &der, now))?;
        let record = self.state.install(checked).await?;
        let parsed = parse_certificate(&der)?;
        self.record(AuditEvent::CertificateInstalled {
            actor: caller.identity.clone(),
            key_id: record.key_id.to_string(),
            subject: record.subject.clone(),
            serial: serial_hex(parsed.raw_serial()),
            not_after: record.not_after.clone(),
            status: format!("{:?}", record.status).to_lowercase(),
        })
        .await?;
        if record.status == IntermediateStatus::Active {
            self.publish().await?;
        }
        Ok(record)
    }

    /// Whether activating `key_id` moves issuance to another root.
    pub async fn activation_changes_root(&self, key_id: &KeyId) -> Result<bool, ControlError> {
        let next = self
            .state
            .intermediate(key_id)
            .await?
            .ok_or_else(|| ControlError::UnknownIntermediate(key_id.clone()))?;
        let next_root = self.root_of(&record_der(&next)?).await?;
        let current_root = match self.state.active().await? {
            Some(active) => self.root_of(&record_der(&active)?).await?,
            None => return Ok(false),
        };
        Ok(next_root.map(|r| r.fingerprint) != current_root.map(|r| r.fingerprint))
    }

    /// Activates an installed intermediate: issuance switches to it and the previous one is
    /// retired. Moving issuance to another root needs the root to have been served for the
    /// propagation window; whether it also needs approvals is the caller's business.
    pub async fn activate(&self, caller: &Caller, id: &KeyId) -> Result<Activation, ControlError> {
        let _g = self.changes.lock().await;
        let now = self.clock.now();
        let record = self
            .state
            .intermediate(id)
            .await?
            .ok_or_else(|| ControlError::UnknownIntermediate(id.clone()))?;
        let der = record_der(&record)?;
        if self.activation_changes_root(id).await? {
            self.check_propagated(id, &der).await?;
        }
        if not_after_of(&der)? <= now {
            return Err(ControlError::IntermediateExpired(id.clone()));
        }
        if self.is_revoked_intermediate(&record).await? {
            return Err(ControlError::IntermediateRevoked(id.clone()));
        }
        // The key must be usable before issuance switches to it.
        blocking(|| authority::issuing_ca_for(&self.store, &der))?;
        let (next, previous) = match self.state.activate(id, &rfc3339(now)).await? {
            Transition::Done(next, previous) => (next, previous),
            Transition::NotFound => return Err(ControlError::UnknownIntermediate(id.clone())),
            Transition::Refused(why) => return Err(ControlError::Transition(why)),
        };
        self.publish().await?;
        self.record(AuditEvent::Activated {
            actor: caller.identity.clone(),
            key_id: id.to_string(),
            previous: previous.as_ref().map(|p| p.key_id.to_string()),
        })
        .await?;
        Ok(Activation {
            activated: next,
            retired: previous,
        })
    }

    /// Refuses while the root above `der` has not been served in the bundle for the
    /// configured propagation window.
    pub async fn check_propagated(&self, id: &KeyId, der: &[u8]) -> Result<(), ControlError> {
        let now = self.clock.now();
        let root = self
            .root_of(der)
            .await?
            .ok_or_else(|| ControlError::NotAnchored(id.clone()))?;
        let ready_at = activatable_from(&root.added_at, self.config.admin.propagation_window, now);
        if now < ready_at {
            return Err(ControlError::PropagationWindow {
                root: root.fingerprint,
                added_at: root.added_at,
                ready_at,
            });
        }
        // On a shared database, every live node must serve the root already.
        if let crate::state::CaState::Postgres(pg) = self.state.as_ref() {
            let behind: Vec<String> = pg
                .nodes()
                .await?
                .into_iter()
                // A report no member signed cannot say a node is ready.
                .filter(|n| n.live && !(n.believed && n.report.roots.contains(&root.fingerprint)))
                .map(|n| n.node_id)
                .collect();
            if !behind.is_empty() {
                return Err(ControlError::NotPropagated {
                    root: root.fingerprint,
                    nodes: behind,
                });
            }
        }
        Ok(())
    }

    /// Retires a prepared intermediate.
    pub async fn retire(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<IntermediateRecord, ControlError> {
        let _g = self.changes.lock().await;
        let id = super::key_id(key_id)?;
        let now = self.clock.now();
        let record = match self.state.retire(&id, &rfc3339(now)).await? {
            Transition::Done(r, _) => *r,
            Transition::NotFound => return Err(ControlError::UnknownIntermediate(id)),
            Transition::Refused(why) => return Err(ControlError::Transition(why)),
        };
        self.record(AuditEvent::Retired {
            actor: caller.identity.clone(),
            key_id: id.to_string(),
        })
        .await?;
        Ok(record)
    }

    /// One step of automatic rotation: prepares the active intermediate's successor (a new key
    /// signed by the same root, whose key must be in this device) once `rotation.prepare_at` of
    /// its life has passed, and activates it after `rotation.activate_at`. Returns what it did.
    pub async fn auto_rotate_step(&self) -> Result<Option<RotationStep>, ControlError> {
        let actor = Caller {
            identity: "hsm-ca:auto-rotation".into(),
            roles: Vec::new(),
        };
        let Some(active) = self.state.active().await? else {
            return Ok(None);
        };
        let der = record_der(&active)?;
        let (nb, na) = {
            let cert = parse_certificate(&der)?;
            (
                cert.validity().not_before.to_datetime(),
                cert.validity().not_after.to_datetime(),
            )
        };
        let elapsed = life_elapsed(nb, na, self.clock.now());
        let rotation = &self.config.rotation;
        if elapsed < rotation.prepare_at {
            return Ok(None);
        }
        let Some(root) = self.root_of(&der).await? else {
            return Ok(None);
        };
        let mut successor = None;
        let node = self.state.intermediate_node();
        for rec in self.state.intermediates().await? {
            // Only one this node installed can succeed (its own, or a shared one).
            if rec.status != IntermediateStatus::Prepared || rec.node != node {
                continue;
            }
            let d = record_der(&rec)?;
            let fresh = not_after_of(&d).map(|t| t > na).unwrap_or(false);
            if fresh
                && self.root_of(&d).await?.map(|r| r.fingerprint) == Some(root.fingerprint.clone())
            {
                successor = Some(rec.key_id.clone());
            }
        }
        match successor {
            Some(id) if elapsed >= rotation.activate_at => {
                self.activate(&actor, &id).await?;
                Ok(Some(RotationStep::Activated(id)))
            }
            Some(_) => Ok(None),
            None => {
                // A leader paused since its step began must not make a key or have the root
                // sign before its install is refused: check the fence first.
                self.state.check_fence().await?;
                let csr = self.new_intermediate(&actor).await?;
                let signed = self
                    .sign_intermediate(&actor, &csr.csr_pem, Some(&root.fingerprint))
                    .await?;
                let installed = self.install(&actor, &signed.certificate_pem).await?;
                Ok(Some(RotationStep::Prepared(installed.key_id)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use time::macros::datetime;
    use time::Duration;

    #[test]
    fn rotation_thresholds_follow_the_clock() {
        let nb = datetime!(2030-01-01 00:00 UTC);
        let na = nb + Duration::days(100);
        let clock = ManualClock::new(nb);
        assert_eq!(life_elapsed(nb, na, clock.now()), 0.0);
        clock.advance(Duration::days(50));
        assert!((life_elapsed(nb, na, clock.now()) - 0.5).abs() < 1e-9);
        clock.advance(Duration::days(17));
        assert!(life_elapsed(nb, na, clock.now()) >= 0.67);
        clock.advance(Duration::days(40));
        assert!(life_elapsed(nb, na, clock.now()) > 1.0);
        // A certificate valid for no time at all does not divide by zero.
        assert!(life_elapsed(nb, nb, nb + Duration::seconds(1)).is_finite());
    }

    #[test]
    fn a_new_root_anchors_activations_after_the_propagation_window() {
        let clock = ManualClock::new(datetime!(2030-01-01 12:00 UTC));
        let added = rfc3339(clock.now());
        let window = std::time::Duration::from_secs(3600);
        assert!(clock.now() < activatable_from(&added, window, clock.now()));
        clock.advance(Duration::minutes(59));
        assert!(clock.now() < activatable_from(&added, window, clock.now()));
        clock.advance(Duration::minutes(1));
        assert!(clock.now() >= activatable_from(&added, window, clock.now()));
        // An unreadable time counts as now: the window starts over.
        assert_eq!(
            activatable_from("never", window, clock.now()),
            clock.now() + window
        );
    }
}
