//! The two ceremonies that change who can log in: `init-quorum` gives the token a random user
//! PIN (with the security officer's PIN) and splits it among officers; `reshare` replaces the
//! PIN and every share (logged in with the current shares). The share files are written before
//! the token's PIN changes and removed again if it does not, so no share ever exists for a PIN
//! the token lacks.

use std::path::Path;

use time::OffsetDateTime;

use super::error::CeremonyError;
use super::officers::{Action, Officers, Step};
use super::roots::newest_root;
use super::session::{sha256, Attendance, Finished, Prep, Session};
use super::shares::{pkcs11_settings, token_label, ShareSource, SplitPlan};
use crate::audit::AuditEvent;
use crate::authority::{self, write_secret_file};
use crate::clock::rfc3339;
use crate::keystore::{self, pkcs11::pin as token_pin};
use crate::quorum;
use crate::secret::{Secret, SecretSource};

/// Splits a new PIN, writes the share files, then `set_pin` puts the PIN on the token; if that
/// fails the share files are removed again, so no share exists for a PIN the token lacks.
fn make_shares(
    c: &mut Session<'_>,
    plan: &SplitPlan,
    holders: &[String],
    passes: &[Option<Secret>],
    replaces: Option<String>,
    set_pin: impl FnOnce(&Secret) -> Result<(), keystore::KeystoreError>,
) -> Result<Secret, CeremonyError> {
    let settings = pkcs11_settings(&c.config)?.clone();
    let token = token_label(&settings);
    let split = quorum::split(plan.threshold, holders, &token)?;
    let created = rfc3339(OffsetDateTime::now_utc());
    let names = SplitPlan::file_names(holders);
    let mut written = Vec::new();
    let mut hashes = Vec::new();
    for ((share, name), pass) in split.shares.iter().zip(&names).zip(passes) {
        let text = share.to_text(
            pass.as_ref().map(|p| p.expose()),
            quorum::PASSPHRASE_ITERATIONS,
            &created,
        )?;
        let path = c.out_dir.join(name);
        if let Err(e) = write_secret_file(&path, text.as_bytes(), false) {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
        hashes.push((name.clone(), hex::encode(sha256(text.as_bytes()))));
        written.push(path);
    }
    if let Err(e) = set_pin(&split.pin) {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(CeremonyError::PinNotChanged(e));
    }
    for p in &written {
        c.officers.report(&Step::Wrote(p));
    }
    c.log.append(AuditEvent::QuorumCreated {
        quorum: split.shares[0].quorum_id(),
        threshold: plan.threshold as u32,
        holders: holders.to_vec(),
        token,
        encrypted: plan.encrypt,
        replaces,
    })?;
    // The share files are on the media already: their hashes go with the other outputs.
    c.written.extend(hashes);
    Ok(split.pin)
}

/// After the PIN changed: log in with the new one (proving it works) and pick the host's
/// newest root, when its key is in this token, to sign the chain head.
fn relogin(c: &mut Session<'_>, pin: Secret) -> Result<(), CeremonyError> {
    c.login(Some(&pin))?;
    if let Some(der) = newest_root(&c.state)? {
        if let Ok(root) = authority::issuing_ca_for(c.store()?, &der) {
            c.sign_with(&root);
        }
    }
    Ok(())
}

/// `init-quorum`: a new random user PIN set with the security officer's PIN `so`, split
/// among the officers as `plan` says.
pub fn init_quorum(
    config_path: &Path,
    plan: &SplitPlan,
    so: &SecretSource,
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    let names = SplitPlan::file_names(&plan.holders()?);
    let prep = Prep::new(config_path, "init-quorum", attend, &names, officers)?;
    let settings = pkcs11_settings(&prep.config)?.clone();
    let (holders, passes) = plan.prepare(&token_label(&settings), officers)?;
    let so_pin = so.load()?;
    officers.confirm(Action::SplitPin)?;
    keystore::apply_module_env(&prep.config.keystore);
    // No login: the security officer replaces whatever user PIN the token had.
    let (c, _) = prep.begin()?;
    c.run(|c| {
        let pin = make_shares(c, plan, &holders, &passes, None, |new| {
            token_pin::init_user_pin(&settings, &so_pin, new)
        })?;
        relogin(c, pin)
    })
}

/// `reshare`: log in with the current `shares`, then replace the PIN and every share.
pub fn reshare(
    config_path: &Path,
    plan: &SplitPlan,
    shares: &[ShareSource],
    attend: Attendance,
    officers: &dyn Officers,
) -> Result<Finished, CeremonyError> {
    if shares.is_empty() {
        return Err(CeremonyError::CurrentSharesRequired);
    }
    let names = SplitPlan::file_names(&plan.holders()?);
    let prep = Prep::new(config_path, "reshare", attend, &names, officers)?.shares(shares)?;
    let settings = pkcs11_settings(&prep.config)?.clone();
    let (holders, passes) = plan.prepare(&token_label(&settings), officers)?;
    let (old_pin, old_quorum) = match &prep.pin {
        Some((pin, shares)) => (pin.clone(), shares[0].quorum_id()),
        None => return Err(CeremonyError::NoPinFromShares),
    };
    officers.confirm(Action::ReplacePin)?;
    let c = prep.start()?;
    c.run(|c| {
        // Close the login before the PIN changes under it.
        c.store = None;
        let pin = make_shares(c, plan, &holders, &passes, Some(old_quorum), |new| {
            token_pin::change_user_pin(&settings, &old_pin, new)
        })?;
        relogin(c, pin)
    })
}
