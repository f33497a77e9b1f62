//! Revocation: revoking a leaf serial or an intermediate, the CRLs this device signs (cached,
//! re-signed on a change or at half their validity), and importing a root's CRL signed
//! offline. Every revocation reaches client-certificate checks at once through the trust
//! plane. It must never file anything for approval (approvals call [`Control::revoke`] once
//! approved), and revocations are never undone.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::root_crl::{crl_der, RootCrl};
use super::{blocking, key_id, lock, record_der, serial_of, Caller, Control, ControlError};
use crate::audit::AuditEvent;
use crate::authority::{self, AuthorityError};
use crate::ca::inspect::serial_hex;
use crate::ca::{fingerprint_id, RevocationReason, Revoked};
use crate::clock::rfc3339;
use crate::state::{IntermediateRecord, IntermediateStatus, RevocationRecord};

/// How long a CRL stays valid; a fresh one is signed at half this age or on any change.
pub const CRL_VALIDITY: time::Duration = time::Duration::hours(24);

/// What to revoke: a leaf serial (issued by `issuer`, default the active intermediate) or an
/// intermediate by key id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub serial: Option<String>,
    /// Key id of the intermediate that issued `serial`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Key id of an intermediate to revoke.
    #[serde(default)]
    pub intermediate: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl RevokeRequest {
    /// The reason given (`key-compromise`, …), `unspecified` when none is.
    fn reason(&self) -> Result<RevocationReason, ControlError> {
        self.reason
            .as_deref()
            .map_or(Ok(RevocationReason::Unspecified), |name| {
                name.parse().map_err(ControlError::InvalidReason)
            })
    }
}

/// A revocation made.
#[derive(Clone, Debug, Serialize)]
pub struct RevocationDone {
    /// Fingerprint of the CA whose CRL now lists the serial.
    pub issuer: String,
    pub serial: String,
    /// Where that CA's CRL is published.
    pub crl: String,
}

/// A root CRL imported.
#[derive(Clone, Debug, Serialize)]
pub struct CrlImported {
    /// Fingerprint of the root that signed it.
    pub issuer: String,
    pub crl_number: u64,
    /// How many serials it lists.
    pub revoked: usize,
    /// The serials this appliance had not revoked before.
    pub newly_revoked: Vec<String>,
    /// Prepared intermediates it revoked, now retired.
    pub retired: Vec<String>,
    pub next_update: Option<String>,
}

struct CachedCrl {
    der: Vec<u8>,
    made: OffsetDateTime,
    entries: usize,
}

impl CachedCrl {
    /// Whether it can still be served: nothing was revoked since and it is younger than half
    /// its validity.
    fn fresh(&self, entries: usize, now: OffsetDateTime) -> bool {
        self.entries == entries && now - self.made < CRL_VALIDITY / 2
    }
}

/// The CRLs signed so far, by CA fingerprint.
#[derive(Default)]
pub(super) struct CrlCache(HashMap<String, CachedCrl>);

/// Lowercase hex without separators or leading zero bytes, as serials are audited.
fn normalize_serial(s: &str) -> Result<String, ControlError> {
    let clean: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_lowercase();
    let clean = if clean.len() % 2 == 1 {
        format!("0{clean}")
    } else {
        clean
    };
    let bytes = hex::decode(&clean).map_err(|_| ControlError::SerialNotHex(s.to_string()))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(ControlError::SerialLength(s.to_string()));
    }
    Ok(serial_hex(&bytes))
}

/// Where the CRL of the CA `fingerprint` is published.
fn crl_location(fingerprint: &str) -> String {
    format!("/crl/{fingerprint}.crl")
}

impl Control {
    async fn intermediate_record(&self, id: &str) -> Result<IntermediateRecord, ControlError> {
        let id = key_id(id)?;
        self.state
            .intermediate(&id)
            .await?
            .ok_or(ControlError::UnknownIntermediate(id))
    }

    /// Checks a revocation request names something that exists, without revoking.
    pub async fn check_revocable(&self, req: &RevokeRequest) -> Result<(), ControlError> {
        req.reason()?;
        match (&req.intermediate, &req.serial) {
            (Some(id), None) => {
                self.intermediate_record(id).await?;
            }
            (None, Some(serial)) => {
                let serial = normalize_serial(serial)?;
                let issuer = match &req.issuer {
                    Some(id) => self.intermediate_record(id).await?,
                    None => self
                        .state
                        .active()
                        .await?
                        .ok_or(ControlError::NoActiveIntermediate)?,
                };
                self.check_issued(&issuer, &serial).await?;
            }
            _ => return Err(ControlError::RevocationTarget),
        }
        Ok(())
    }

    /// With the audit log on, a leaf serial is revocable only when the log holds its issuance
    /// by `issuer`; without it (measurements only) nothing can say, and it is accepted.
    async fn check_issued(
        &self,
        issuer: &IntermediateRecord,
        serial: &str,
    ) -> Result<(), ControlError> {
        let Some(audit) = self.audit() else {
            return Ok(());
        };
        let key = issuer.key_id.to_string();
        // This node's log, then the records other nodes shipped to the shared database.
        if audit
            .was_issued(&key, serial)
            .map_err(ControlError::AuditFailed)?
            || self.state.audit_issued(&key, serial).await?
        {
            Ok(())
        } else {
            Err(ControlError::NeverIssued {
                intermediate: key,
                serial: serial.to_string(),
            })
        }
    }

    /// Whether the intermediate `record` is revoked by its root.
    pub(super) async fn is_revoked_intermediate(
        &self,
        record: &IntermediateRecord,
    ) -> Result<bool, ControlError> {
        let der = record_der(record)?;
        let Some(root) = self.root_of(&der).await? else {
            return Ok(false);
        };
        let serial = serial_of(&der)?;
        Ok(self
            .state
            .revocations(&root.fingerprint)
            .await?
            .iter()
            .any(|r| r.serial == serial))
    }

    /// Revokes a leaf serial or an intermediate (not the active one; a prepared one is
    /// retired). Client certificates under it stop authenticating at once.
    pub async fn revoke(
        &self,
        caller: &Caller,
        req: &RevokeRequest,
    ) -> Result<RevocationDone, ControlError> {
        let _g = self.changes.lock().await;
        let now = self.clock.now();
        let reason = req.reason()?.name().to_string();
        let (issuer_fp, serial) = match (&req.intermediate, &req.serial) {
            (Some(id), None) => {
                let record = self.intermediate_record(id).await?;
                let id = record.key_id.clone();
                if record.status == IntermediateStatus::Active {
                    return Err(ControlError::RevokesActive(id));
                }
                let der = record_der(&record)?;
                let root = self
                    .root_of(&der)
                    .await?
                    .ok_or_else(|| ControlError::NotAnchored(id.clone()))?;
                if record.status == IntermediateStatus::Prepared {
                    self.state.retire(&id, &rfc3339(now)).await?;
                }
                (root.fingerprint, serial_of(&der)?)
            }
            (None, Some(serial)) => {
                let serial = normalize_serial(serial)?;
                let issuer = match &req.issuer {
                    Some(id) => self.intermediate_record(id).await?,
                    None => self
                        .state
                        .active()
                        .await?
                        .ok_or(ControlError::NoActiveIntermediate)?,
                };
                self.check_issued(&issuer, &serial).await?;
                (fingerprint_id(&record_der(&issuer)?), serial)
            }
            _ => return Err(ControlError::RevocationTarget),
        };
        let fresh = self
            .state
            .revoke(RevocationRecord {
                version: crate::state::RECORD_VERSION,
                issuer: issuer_fp.clone(),
                serial: serial.clone(),
                reason: reason.clone(),
                revoked_at: rfc3339(now),
            })
            .await?;
        if !fresh {
            return Err(ControlError::AlreadyRevoked {
                issuer: issuer_fp,
                serial,
            });
        }
        lock(&self.crls).0.remove(&issuer_fp);
        self.reload_revocations().await?;
        self.record(AuditEvent::Revoked {
            actor: caller.identity.clone(),
            issuer_key: issuer_fp.clone(),
            serial: serial.clone(),
            reason,
        })
        .await?;
        Ok(RevocationDone {
            crl: crl_location(&issuer_fp),
            issuer: issuer_fp,
            serial,
        })
    }

    /// Imports a root's CRL signed offline (a ceremony's `root-crl.pem`). The root's signature
    /// is the authority: the revocations it lists were decided by the root's officer quorum,
    /// so no approvals are asked here. The CRL must be signed by a root in the bundle and be
    /// newer (by CRL number) than any imported before; it may not revoke the active
    /// intermediate (activate a successor first). Its entries join the appliance's
    /// revocations at once; a prepared intermediate it revokes is retired. Nothing is written
    /// when a check fails.
    pub async fn import_crl(
        &self,
        caller: &Caller,
        crl_pem: &str,
    ) -> Result<CrlImported, ControlError> {
        let der = crl_der(crl_pem)?;
        let _g = self.changes.lock().await;
        let now = self.clock.now();
        let crl = RootCrl::parse(&der, &self.roots().await?)?;
        let root = &crl.root;
        // Any node's active intermediate (with intermediates of their own, not only this one's).
        for active in self.state.intermediates().await? {
            if active.status == IntermediateStatus::Active && crl.lists(&record_der(&active)?)? {
                return Err(ControlError::CrlRevokesActive(active.key_id));
            }
        }
        let stale = |stored: u64| ControlError::StaleCrl {
            number: crl.number,
            stored,
        };
        if let Some(stored) = self.state.imported_crl(&root.fingerprint).await? {
            if stored.number >= crl.number {
                return Err(stale(stored.number));
            }
        }
        let mut retired = Vec::new();
        for record in self.state.intermediates().await? {
            if record.status != IntermediateStatus::Prepared {
                continue;
            }
            if crl.lists(&record_der(&record)?)? {
                self.state.retire(&record.key_id, &rfc3339(now)).await?;
                retired.push(record.key_id.to_string());
            }
        }
        let mut newly_revoked = Vec::new();
        for entry in &crl.entries {
            let fresh = self
                .state
                .revoke(RevocationRecord {
                    version: crate::state::RECORD_VERSION,
                    issuer: root.fingerprint.clone(),
                    serial: entry.serial.clone(),
                    reason: entry.reason.to_string(),
                    revoked_at: rfc3339(entry.revoked_at),
                })
                .await?;
            if fresh {
                newly_revoked.push(entry.serial.clone());
            }
        }
        let stored = self
            .state
            .store_imported_crl(crate::state::ImportedCrl {
                version: crate::state::RECORD_VERSION,
                issuer: root.fingerprint.clone(),
                number: crl.number,
                crl_pem: pem::encode(&pem::Pem::new("X509 CRL", der.clone())),
                this_update: rfc3339(crl.this_update),
                next_update: crl.next_update.map(rfc3339),
                imported_at: rfc3339(now),
            })
            .await?;
        if let Err(newer) = stored {
            return Err(stale(newer.number));
        }
        lock(&self.crls).0.remove(&root.fingerprint);
        self.reload_revocations().await?;
        self.record(AuditEvent::CrlImported {
            actor: caller.identity.clone(),
            issuer: root.fingerprint.clone(),
            number: crl.number,
            revoked: crl.entries.len() as u64,
            newly_revoked: newly_revoked.clone(),
        })
        .await?;
        Ok(CrlImported {
            issuer: root.fingerprint.clone(),
            crl_number: crl.number,
            revoked: crl.entries.len(),
            newly_revoked,
            retired,
            next_update: crl.next_update.map(rfc3339),
        })
    }

    /// Every CA certificate this appliance knows: bundle roots and installed intermediates.
    async fn ca_certificates(&self) -> Result<Vec<Vec<u8>>, ControlError> {
        let mut all = self.roots_der().await?;
        for rec in self.state.intermediates().await? {
            all.push(record_der(&rec)?);
        }
        Ok(all)
    }

    /// The current CRL (DER) of the CA whose certificate fingerprint is `fp`, signed in the
    /// device, or for a root kept offline the last one imported. Re-signed when a revocation
    /// was added or at half its validity. Blocks on the device.
    pub async fn crl(&self, fp: &str) -> Result<Vec<u8>, ControlError> {
        let now = self.clock.now();
        let revoked = self.state.revocations(fp).await?;
        if let Some(c) = lock(&self.crls).0.get(fp) {
            if c.fresh(revoked.len(), now) {
                return Ok(c.der.clone());
            }
        }
        let ca_der = self
            .ca_certificates()
            .await?
            .into_iter()
            .find(|d| fingerprint_id(d) == fp)
            .ok_or_else(|| ControlError::UnknownCa(fp.to_string()))?;
        let ca = match blocking(|| authority::issuing_ca_for(&self.store, &ca_der)) {
            Ok(ca) => ca,
            Err(AuthorityError::NoMatchingKey(_)) => {
                // A root kept offline: serve the CRL its ceremony signed, once imported.
                return match self.state.imported_crl(fp).await? {
                    Some(imported) => crl_der(&imported.crl_pem),
                    None => Err(ControlError::CrlSignedOffline(fp.to_string())),
                };
            }
            Err(other) => return Err(other.into()),
        };
        let entries = revoked
            .iter()
            .map(|r| Revoked::from_stored(&r.serial, &r.revoked_at, &r.reason, now))
            .collect::<Vec<_>>();
        let number = self.state.next_crl_number(fp).await?;
        let der = blocking(|| ca.sign_crl(&entries, number, now, now + CRL_VALIDITY))?;
        lock(&self.crls).0.insert(
            fp.to_string(),
            CachedCrl {
                der: der.clone(),
                made: now,
                entries: revoked.len(),
            },
        );
        Ok(der)
    }

    /// Every CRL this device can sign or has imported, PEM-concatenated (Istio's
    /// `ca-crl.pem`). Blocks on the device.
    pub async fn crl_bundle_pem(&self) -> Result<String, ControlError> {
        let mut out = String::new();
        for der in self.ca_certificates().await? {
            let fp = fingerprint_id(&der);
            match self.crl(&fp).await {
                Ok(crl) => out.push_str(&pem::encode(&pem::Pem::new("X509 CRL", crl))),
                Err(e) if e.is_key_missing() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use time::macros::datetime;

    #[test]
    fn serials_are_normalised_like_audited_ones() {
        assert_eq!(normalize_serial("00:AB:cd").expect("ok"), "abcd");
        assert_eq!(normalize_serial("abc").expect("ok"), "0abc");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial(&"ab".repeat(21)).is_err());
    }

    #[test]
    fn a_cached_crl_is_resigned_at_half_its_validity_or_on_a_new_revocation() {
        let clock = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let cached = CachedCrl {
            der: vec![1],
            made: clock.now(),
            entries: 2,
        };
        assert!(cached.fresh(2, clock.now()));
        assert!(!cached.fresh(3, clock.now()), "a revocation was added");
        clock.advance(CRL_VALIDITY / 2 - time::Duration::seconds(1));
        assert!(cached.fresh(2, clock.now()));
        clock.advance(time::Duration::seconds(1));
        assert!(
            !cached.fresh(2, clock.now()),
            "half its validity has passed"
        );
    }
}
