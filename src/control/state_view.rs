//! The CA state as officers see it (`GET /v1/state` in the admin API): the bundle roots with
//! whether their key is online and until when they may be in use, and every installed
//! intermediate with its root. Read-only: it must never change the state.

use serde::Serialize;

use super::{blocking, first_cert, record_der, serial_of, Control, ControlError};
use crate::authority;
use crate::ca::fingerprint_id;
use crate::clock::rfc3339;
use crate::state::IntermediateStatus;

/// The whole view.
#[derive(Clone, Debug, Serialize)]
pub struct StateView {
    pub trust_domain: String,
    pub bundle_sequence: u64,
    pub roots: Vec<RootView>,
    pub intermediates: Vec<IntermediateView>,
}

/// One root of the trust bundle.
#[derive(Clone, Debug, Serialize)]
pub struct RootView {
    pub fingerprint: String,
    pub subject: String,
    pub not_after: String,
    pub added_at: String,
    /// Whether its key is in this device.
    pub key_online: bool,
    /// Until when certificates anchored at it may be in use (RFC 3339); `None`: nothing was
    /// issued under it.
    pub in_use_until: Option<String>,
}

/// One installed intermediate.
#[derive(Clone, Debug, Serialize)]
pub struct IntermediateView {
    pub key_id: String,
    pub subject: String,
    pub status: IntermediateStatus,
    pub not_after: String,
    pub installed_at: String,
    pub activated_at: Option<String>,
    pub retired_at: Option<String>,
    /// Fingerprint of the bundle root it chains to.
    pub root: Option<String>,
    pub fingerprint: String,
    pub serial: String,
}

impl Control {
    /// The CA state. Blocks on the device (whether each root key is online).
    pub async fn describe(&self) -> Result<StateView, ControlError> {
        let now = self.clock.now();
        let mut roots = Vec::new();
        for r in self.roots().await? {
            let der = first_cert(&r.certificate_pem)?;
            let key_online = blocking(|| authority::issuing_ca_for(&self.store, &der)).is_ok();
            let in_use_until = self.root_in_use_until(&r, now).await?.map(rfc3339);
            roots.push(RootView {
                fingerprint: r.fingerprint,
                subject: r.subject,
                not_after: r.not_after,
                added_at: r.added_at,
                key_online,
                in_use_until,
            });
        }
        let mut intermediates = Vec::new();
        for rec in self.state.intermediates().await? {
            let der = record_der(&rec)?;
            intermediates.push(IntermediateView {
                key_id: rec.key_id.to_string(),
                subject: rec.subject,
                status: rec.status,
                not_after: rec.not_after,
                installed_at: rec.installed_at,
                activated_at: rec.activated_at,
                retired_at: rec.retired_at,
                root: self.root_of(&der).await?.map(|r| r.fingerprint),
                fingerprint: fingerprint_id(&der),
                serial: serial_of(&der)?,
            });
        }
        Ok(StateView {
            trust_domain: self.config.trust_domain.clone(),
            bundle_sequence: self.state.bundle_sequence().await?,
            roots,
            intermediates,
        })
    }
}
