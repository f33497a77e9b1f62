//! The trust bundle's roots: adding a self-signed root, removing one once nothing anchored at
//! it may be in use, cross-signing a root with another whose key is online, and until when a
//! root may still be in use. It must never file anything for approval (approvals call these
//! once approved) and never change an intermediate.

use serde::Serialize;
use time::OffsetDateTime;

use super::{blocking, first_cert, record_der, Caller, Control, ControlError};
use crate::audit::AuditEvent;
use crate::authority;
use crate::ca::inspect::{check_issued_by, parse_certificate};
use crate::ca::{certificate_pem, fingerprint_id, CaError};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::state::{IntermediateRecord, IntermediateStatus, RootRecord};

/// A root added to the bundle.
#[derive(Clone, Debug, Serialize)]
pub struct RootAdded {
    pub root: RootRecord,
    pub bundle_sequence: u64,
}

/// A root removed from the bundle.
#[derive(Clone, Debug, Serialize)]
pub struct RootRemoved {
    /// Its fingerprint.
    pub removed: String,
    pub bundle_sequence: u64,
}

/// A cross-certificate: one root's key signed another root.
#[derive(Clone, Debug, Serialize)]
pub struct CrossSigned {
    pub certificate_pem: String,
    pub serial: String,
}

/// Until when certificates issued under `anchored` (the intermediates under one root) may
/// still be in use: the last issuance plus `margin` (longest workload TTL and clock skew).
/// An active intermediate issues "now"; a prepared one has issued nothing. `None`: nothing
/// was issued.
pub(super) fn in_use_until<'a>(
    anchored: impl IntoIterator<Item = &'a IntermediateRecord>,
    margin: std::time::Duration,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    anchored
        .into_iter()
        .filter_map(|rec| match rec.status {
            IntermediateStatus::Active => Some(now),
            IntermediateStatus::Retired => rec.retired_at.as_deref().and_then(parse_rfc3339),
            IntermediateStatus::Prepared => None,
        })
        .map(|last| last + margin)
        .max()
}

impl Control {
    /// Until when certificates anchored at `root` may still be in use (see [`in_use_until`]).
    pub async fn root_in_use_until(
        &self,
        root: &RootRecord,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, ControlError> {
        let root_der = first_cert(&root.certificate_pem)?;
        let margin = self.config.workload.max_ttl + self.config.workload.clock_skew;
        let mut anchored = Vec::new();
        for rec in self.state.intermediates().await? {
            if check_issued_by(&record_der(&rec)?, &root_der).is_ok() {
                anchored.push(rec);
            }
        }
        Ok(in_use_until(&anchored, margin, now))
    }

    /// A certificate that may enter the bundle: a self-signed, unexpired CA certificate.
    fn root_record(&self, pem_text: &str) -> Result<RootRecord, ControlError> {
        let der = first_cert(pem_text)?;
        let cert = parse_certificate(&der)?;
        if !cert.is_ca() {
            return Err(
                CaError::Chain(format!("{} is not a CA certificate", cert.subject())).into(),
            );
        }
        check_issued_by(&der, &der)
            .map_err(|_| ControlError::NotSelfSigned(cert.subject().to_string()))?;
        let now = self.clock.now();
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= now {
            return Err(ControlError::RootExpired(cert.subject().to_string()));
        }
        Ok(RootRecord {
            version: crate::state::RECORD_VERSION,
            fingerprint: fingerprint_id(&der),
            certificate_pem: certificate_pem(&der),
            subject: cert.subject().to_string(),
            not_after: rfc3339(not_after),
            added_at: rfc3339(now),
        })
    }

    /// Checks a root may be added, without adding it.
    pub async fn check_addable(&self, pem_text: &str) -> Result<(), ControlError> {
        let record = self.root_record(pem_text)?;
        if self
            .roots()
            .await?
            .iter()
            .any(|r| r.fingerprint == record.fingerprint)
        {
            return Err(ControlError::RootExists(record.fingerprint));
        }
        Ok(())
    }

    /// Adds a self-signed root to the bundle and publishes it.
    pub async fn add_root(
        &self,
        caller: &Caller,
        pem_text: &str,
    ) -> Result<RootAdded, ControlError> {
        let _g = self.changes.lock().await;
        let record = self.root_record(pem_text)?;
        if !self.state.add_root(record.clone()).await? {
            return Err(ControlError::RootExists(record.fingerprint));
        }
        self.publish().await?;
        self.record(AuditEvent::RootAdded {
            actor: caller.identity.clone(),
            fingerprint: record.fingerprint.clone(),
            subject: record.subject.clone(),
            not_after: record.not_after.clone(),
        })
        .await?;
        Ok(RootAdded {
            root: record,
            bundle_sequence: self.state.bundle_sequence().await?,
        })
    }

    /// Refuses to remove a root that is not in the bundle, is the last one, anchors the active
    /// intermediate, or (unless forced) may still anchor leaves in use.
    pub async fn check_removable(
        &self,
        fingerprint: &str,
        force: bool,
    ) -> Result<(), ControlError> {
        let roots = self.roots().await?;
        let Some(root) = roots.iter().find(|r| r.fingerprint == fingerprint) else {
            return Err(ControlError::UnknownRoot(fingerprint.to_string()));
        };
        if roots.len() == 1 {
            return Err(ControlError::LastRoot);
        }
        let root_der = first_cert(&root.certificate_pem)?;
        if let Some(active) = self.state.active().await? {
            if check_issued_by(&record_der(&active)?, &root_der).is_ok() {
                return Err(ControlError::AnchorsActive {
                    root: fingerprint.to_string(),
                    active: active.key_id,
                });
            }
        }
        let now = self.clock.now();
        if let Some(until) = self.root_in_use_until(root, now).await? {
            if now < until && !force {
                return Err(ControlError::RootInUse {
                    root: fingerprint.to_string(),
                    until,
                });
            }
        }
        Ok(())
    }

    /// Removes a root from the bundle and publishes the rest.
    pub async fn remove_root(
        &self,
        caller: &Caller,
        fingerprint: &str,
        force: bool,
    ) -> Result<RootRemoved, ControlError> {
        let _g = self.changes.lock().await;
        self.check_removable(fingerprint, force).await?;
        if !self.state.remove_root(fingerprint).await? {
            return Err(ControlError::UnknownRoot(fingerprint.to_string()));
        }
        self.publish().await?;
        self.record(AuditEvent::RootRemoved {
            actor: caller.identity.clone(),
            fingerprint: fingerprint.to_string(),
            forced: force,
        })
        .await?;
        Ok(RootRemoved {
            removed: fingerprint.to_string(),
            bundle_sequence: self.state.bundle_sequence().await?,
        })
    }

    /// The old root `by` cross-signs the new root `fingerprint` (both in the bundle, the old
    /// root's key in this device).
    pub async fn cross_sign(
        &self,
        caller: &Caller,
        fingerprint: &str,
        by: &str,
    ) -> Result<CrossSigned, ControlError> {
        let roots = self.roots().await?;
        let find = |fp: &str| {
            roots
                .iter()
                .find(|r| r.fingerprint == fp)
                .ok_or_else(|| ControlError::UnknownRoot(fp.to_string()))
        };
        let subject = first_cert(&find(fingerprint)?.certificate_pem)?;
        let signer_der = first_cert(&find(by)?.certificate_pem)?;
        if fingerprint == by {
            return Err(ControlError::CrossSignItself);
        }
        let signer = blocking(|| authority::issuing_ca_for(&self.store, &signer_der))?;
        let now = self.clock.now();
        let cert = blocking(|| signer.cross_sign(&subject, now))?;
        check_issued_by(&cert.der, &signer_der)?;
        let serial = self
            .record_ca_issued(caller, &cert.der, "admin:cross-sign", signer.key().id())
            .await?;
        self.state
            .add_cross_certificate(crate::state::CrossCertificate {
                version: crate::state::RECORD_VERSION,
                fingerprint: fingerprint_id(&cert.der),
                subject_root: fingerprint.to_string(),
                issuer_root: by.to_string(),
                certificate_pem: certificate_pem(&cert.der),
                created_at: rfc3339(now),
            })
            .await?;
        Ok(CrossSigned {
            certificate_pem: certificate_pem(&cert.der),
            serial,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keystore::KeyId;
    use time::macros::datetime;
    use time::Duration;

    fn record(
        status: IntermediateStatus,
        retired_at: Option<OffsetDateTime>,
    ) -> IntermediateRecord {
        IntermediateRecord {
            version: crate::state::RECORD_VERSION,
            key_id: KeyId(vec![1, 2]),
            certificate_pem: String::new(),
            status,
            installed_at: "2030-01-01T00:00:00Z".into(),
            not_after: "2031-01-01T00:00:00Z".into(),
            subject: "CN=intermediate".into(),
            activated_at: None,
            retired_at: retired_at.map(rfc3339),
            node: String::new(),
        }
    }

    #[test]
    fn a_root_stays_in_use_for_the_longest_ttl_after_its_last_issuance() {
        let clock = ManualClock::new(datetime!(2030-03-01 00:00 UTC));
        let margin = std::time::Duration::from_secs(24 * 3600 + 60);
        let retired_at = clock.now();
        let retired = record(IntermediateStatus::Retired, Some(retired_at));
        let prepared = record(IntermediateStatus::Prepared, None);
        assert_eq!(in_use_until([&prepared], margin, clock.now()), None);

        let until = in_use_until([&retired, &prepared], margin, clock.now()).expect("in use");
        assert_eq!(until, retired_at + margin);
        clock.advance(Duration::hours(24));
        assert!(clock.now() < until, "still in use a day later");
        clock.advance(Duration::minutes(1));
        assert!(
            clock.now() >= until,
            "free once the TTL and skew have passed"
        );
    }

    #[test]
    fn an_active_intermediate_keeps_its_root_in_use_from_now_on() {
        let clock = ManualClock::new(datetime!(2030-03-01 00:00 UTC));
        let margin = std::time::Duration::from_secs(3600);
        let active = record(IntermediateStatus::Active, None);
        let old = record(
            IntermediateStatus::Retired,
            Some(clock.now() - Duration::days(3)),
        );
        for _ in 0..3 {
            assert_eq!(
                in_use_until([&old, &active], margin, clock.now()),
                Some(clock.now() + margin)
            );
            clock.advance(Duration::days(30));
        }
    }
}
