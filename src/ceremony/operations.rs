//! The ceremonies that use the root key: `init-root`, `sign-intermediate`,
//! `revoke-intermediate`, `crl` and `rotate-root`. Each checks its inputs and shows its plan
//! before any share is opened, asks for the go-ahead, and does its work inside a
//! [`Session`](super::session) so that every step is recorded and signed. Never prints.

use std::path::Path;

use time::OffsetDateTime;

use super::error::CeremonyError;
use super::officers::{Action, Officers, Plan, Step};
use super::roots::{self, first_cert, root_der};
use super::session::{Attendance, Finished, Prep, Session};
use super::shares::ShareSource;
use crate::audit::AuditEvent;
use crate::authority::{self, write_file};
use crate::ca::inspect::{self, check_issued_by, parse_certificate, serial_hex};
use crate::ca::{self, fingerprint, fingerprint_id, IssuingCa, Revoked};
use crate::clock::rfc3339;
use crate::state::RevocationRecord;

/// How long a root CRL signed in a ceremony is valid by default.
pub const DEFAULT_CRL_DAYS: u32 = 30;

/// Why an intermediate is revoked.
pub use crate::ca::RevocationReason;

/// `init-root`: the root key generated in the token and the self-signed root, written to the
/// media and to the config's root certificate path on this host.
pub fn init_root(
    config_path: &Path,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let prep = Prep::new(
        config_path,
        "init-root",
        attend,
        &["root-cert.pem"],
        officers,
    )?;
    if !prep.state.roots()?.is_empty() {
        return Err(CeremonyError::RootExists);
    }
    let host_copy = prep.config.root.certificates[0].clone();
    if host_copy.exists() {
        return Err(CeremonyError::RootFileExists(host_copy));
    }
    let prep = prep.shares(shares)?;
    officers.show(&Plan::Root(roots::plan(&prep.config)));
    officers.confirm(Action::InitRoot)?;
    let c = prep.start()?;
    c.run(|c| {
        let now = OffsetDateTime::now_utc();
        let store = c.store()?.clone();
        let (info, cert) = c.new_root("init-root", now)?;
        write_file(&host_copy, cert.pem.as_bytes(), false)?;
        c.officers.report(&Step::RootKeyCreated {
            key: &info,
            device: store.describe(),
            rotation: false,
        });
        c.officers.report(&Step::Signed {
            description: inspect::describe(&cert.der, now)?,
        });
        c.output("root-cert.pem", cert.pem.clone());
        Ok(())
    })
}

/// `sign-intermediate`: the CSR at `csr_path` signed by `root` (default: the host's newest).
pub fn sign_intermediate(
    config_path: &Path,
    csr_path: &Path,
    root: Option<&Path>,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let prep = Prep::new(
        config_path,
        "sign-intermediate",
        attend,
        &["intermediate-cert.pem"],
        officers,
    )?;
    let csr_bytes = std::fs::read(csr_path).map_err(CeremonyError::read(csr_path))?;
    let csr = ca::parse_csr(&csr_bytes)?;
    let root_der = root_der(&prep.state, &prep.config, root)?;
    officers.show(&Plan::SignIntermediate {
        csr_subject: csr.subject.clone(),
        csr_key: csr.key.to_string(),
        csr_key_sha256: csr.public_key_fingerprint(),
        root: roots::summary(&root_der)?,
        trust_domain: &prep.config.trust_domain,
        validity_days: prep.config.intermediate.validity.as_secs() / 86400,
    });
    let prep = prep.shares(shares)?;
    officers.confirm(Action::SignIntermediate)?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        let now = OffsetDateTime::now_utc();
        let cert = authority::sign_intermediate(&root, &csr, &c.config, now)?;
        c.record_issued("sign-intermediate", &cert, root.key().id())?;
        c.officers.report(&Step::Signed {
            description: inspect::describe(&cert.der, now)?,
        });
        c.output("intermediate-cert.pem", cert.pem.clone());
        Ok(())
    })
}

/// Signs the root's CRL with every revocation this host recorded under it.
fn sign_root_crl(
    c: &mut Session<'_>,
    root: &IssuingCa,
    valid_days: u32,
) -> Result<(), CeremonyError> {
    if valid_days == 0 || valid_days > 366 {
        return Err(CeremonyError::CrlValidity);
    }
    let now = OffsetDateTime::now_utc();
    let issuer = fingerprint_id(root.cert_der());
    let revoked = c.state.revocations(&issuer)?;
    let entries: Vec<Revoked> = revoked
        .iter()
        .map(|r| Revoked::from_stored(&r.serial, &r.revoked_at, &r.reason, now))
        .collect();
    let number = c.state.next_crl_number(&issuer)?;
    let next_update = now + time::Duration::days(valid_days as i64);
    let der = root.sign_crl(&entries, number, now, next_update)?;
    c.log.append(AuditEvent::CrlSigned {
        actor: c.actor.clone(),
        issuer: issuer.clone(),
        number,
        revoked: entries.len() as u64,
        next_update: rfc3339(next_update),
    })?;
    c.officers.report(&Step::CrlSigned {
        number,
        revoked: entries.len(),
        next_update: rfc3339(next_update),
    });
    c.output("root-crl.pem", pem::encode(&pem::Pem::new("X509 CRL", der)));
    Ok(())
}

/// An intermediate to revoke.
#[derive(Clone, Copy, Debug)]
pub struct Revocation<'a> {
    /// The intermediate certificate (PEM).
    pub cert: &'a Path,
    pub reason: RevocationReason,
    /// The root that signed it (default: the host's newest).
    pub root: Option<&'a Path>,
    /// Days until the CRL's next update.
    pub valid_days: u32,
}

/// `revoke-intermediate`: the intermediate recorded as revoked under its root, and the root's
/// CRL signed again.
pub fn revoke_intermediate(
    config_path: &Path,
    revocation: Revocation<'_>,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let Revocation {
        cert: cert_path,
        reason,
        root,
        valid_days,
    } = revocation;
    let prep = Prep::new(
        config_path,
        "revoke-intermediate",
        attend,
        &["root-crl.pem"],
        officers,
    )?;
    let cert_der = first_cert(cert_path)?;
    let root_der = root_der(&prep.state, &prep.config, root)?;
    check_issued_by(&cert_der, &root_der).map_err(|_| CeremonyError::NotIssuedByRoot {
        cert: cert_path.to_path_buf(),
        root: roots::summary(&root_der)
            .map(|r| r.to_string())
            .unwrap_or_default(),
    })?;
    let parsed = parse_certificate(&cert_der)?;
    let serial = serial_hex(parsed.raw_serial());
    officers.show(&Plan::RevokeIntermediate {
        subject: parsed.subject().to_string(),
        serial: serial.clone(),
        certificate_sha256: fingerprint(&cert_der),
        reason: reason.name(),
        root: roots::summary(&root_der)?,
    });
    let prep = prep.shares(shares)?;
    officers.confirm(Action::RevokeIntermediate)?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        let issuer = fingerprint_id(&root_der);
        let fresh = c.state.revoke(RevocationRecord {
            version: crate::state::RECORD_VERSION,
            issuer: issuer.clone(),
            serial: serial.clone(),
            reason: reason.name().into(),
            revoked_at: rfc3339(OffsetDateTime::now_utc()),
        })?;
        if fresh {
            c.log.append(AuditEvent::Revoked {
                actor: c.actor.clone(),
                issuer_key: issuer,
                serial: serial.clone(),
                reason: reason.name().into(),
            })?;
        } else {
            c.officers.report(&Step::AlreadyRevoked { serial: &serial });
        }
        sign_root_crl(c, &root, valid_days)
    })
}

/// `crl`: the root's CRL signed again, valid for `valid_days`.
pub fn crl(
    config_path: &Path,
    root: Option<&Path>,
    valid_days: u32,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let prep = Prep::new(config_path, "crl", attend, &["root-crl.pem"], officers)?;
    let root_der = root_der(&prep.state, &prep.config, root)?;
    officers.show(&Plan::Crl {
        root: roots::summary(&root_der)?,
        valid_days,
    });
    let prep = prep.shares(shares)?;
    officers.confirm(Action::SignCrl)?;
    let c = prep.start()?;
    c.run(|c| {
        let root = authority::issuing_ca_for(c.store()?, &root_der)?;
        c.sign_with(&root);
        sign_root_crl(c, &root, valid_days)
    })
}

/// `rotate-root`: a new root key and certificate, cross-signed by the current `root`, and the
/// trust bundle holding both roots.
pub fn rotate_root(
    config_path: &Path,
    root: Option<&Path>,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let prep = Prep::new(
        config_path,
        "rotate-root",
        attend,
        &["root-cert.pem", "cross-signed-root.pem", "trust-bundle.pem"],
        officers,
    )?;
    let old_der = root_der(&prep.state, &prep.config, root)?;
    officers.show(&Plan::RotateRoot {
        current: roots::summary(&old_der)?,
        new: roots::plan(&prep.config),
    });
    let prep = prep.shares(shares)?;
    officers.confirm(Action::RotateRoot)?;
    let c = prep.start()?;
    c.run(|c| {
        let store = c.store()?.clone();
        let old = authority::issuing_ca_for(&store, &old_der)?;
        let now = OffsetDateTime::now_utc();
        let (info, new_cert) = c.new_root("rotate-root", now)?;
        let cross = old.cross_sign(&new_cert.der, now)?;
        check_issued_by(&cross.der, &old_der)?;
        c.record_issued("cross-sign", &cross, old.key().id())?;
        c.officers.report(&Step::RootKeyCreated {
            key: &info,
            device: store.describe(),
            rotation: true,
        });
        c.officers.report(&Step::Signed {
            description: inspect::describe(&new_cert.der, now)?,
        });
        c.output("root-cert.pem", new_cert.pem.clone());
        c.output("cross-signed-root.pem", cross.pem.clone());
        let mut bundle = ca::certificate_pem(&old_der);
        bundle.push_str(&new_cert.pem);
        c.output("trust-bundle.pem", bundle);
        Ok(())
    })
}
