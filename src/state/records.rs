//! The CA state's records, as every backend stores them: versioned JSON, so later versions can
//! read what earlier ones wrote, and the same bytes whether they sit in sled or in a PostgreSQL
//! `jsonb` column. Also the result of an intermediate's state change and a read-only snapshot.
//!
//! Only public material: certificates and key identifiers. It must never hold key material or
//! know where a record is stored.

use serde::{Deserialize, Serialize};

use super::StateError;
use crate::keystore::KeyId;

/// Version of the records written by this build.
pub const RECORD_VERSION: u32 = 1;

/// Where an intermediate is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntermediateStatus {
    /// Installed, not yet issuing.
    Prepared,
    /// Issuing workload certificates.
    Active,
    /// No longer issuing; kept until its last leaf has expired.
    Retired,
}

impl IntermediateStatus {
    /// The name stored next to the record (the same as in its JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            IntermediateStatus::Prepared => "prepared",
            IntermediateStatus::Active => "active",
            IntermediateStatus::Retired => "retired",
        }
    }
}

/// One installed intermediate certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntermediateRecord {
    pub version: u32,
    pub key_id: KeyId,
    pub certificate_pem: String,
    pub status: IntermediateStatus,
    /// RFC 3339 time of installation.
    pub installed_at: String,
    pub not_after: String,
    pub subject: String,
    /// When it started issuing (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    /// When it stopped issuing (RFC 3339): its last leaf was issued no later than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// The node whose device holds the key and which alone issues with it; empty: shared by
    /// every node whose device holds it (one appliance, or nodes on one network HSM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
}

impl IntermediateRecord {
    /// Whether `node` may issue with it: its own, or a shared one.
    pub fn serves(&self, node: &str) -> bool {
        self.node.is_empty() || self.node == node
    }
}

/// The active intermediate `node` issues with among `all`: its own if it has one active, else
/// the shared one.
pub fn active_for<'a>(
    all: impl IntoIterator<Item = &'a IntermediateRecord>,
    node: &str,
) -> Option<&'a IntermediateRecord> {
    let mut shared = None;
    for r in all {
        if r.status != IntermediateStatus::Active {
            continue;
        }
        if !node.is_empty() && r.node == node {
            return Some(r);
        }
        if r.node.is_empty() {
            shared = Some(r);
        }
    }
    shared
}

/// A root certificate in the trust bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    pub version: u32,
    /// Hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    pub certificate_pem: String,
    pub subject: String,
    pub not_after: String,
    /// When it entered the bundle (RFC 3339).
    pub added_at: String,
}

/// A revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub version: u32,
    /// Hex SHA-256 fingerprint of the CA certificate that issued the revoked certificate.
    pub issuer: String,
    /// Hex serial number.
    pub serial: String,
    pub reason: String,
    pub revoked_at: String,
}

/// A root's CRL, signed offline in a ceremony and imported through the admin API. Served for
/// roots whose key is not in this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCrl {
    pub version: u32,
    /// Hex SHA-256 fingerprint of the root that signed it.
    pub issuer: String,
    pub number: u64,
    /// The CRL as signed (PEM, `X509 CRL`).
    pub crl_pem: String,
    pub this_update: String,
    pub next_update: Option<String>,
    pub imported_at: String,
}

/// A cross-certificate made here: the root `issuer_root` (its key in this device) signed the
/// subject and key of the root `subject_root`. Kept so that a chain to the new root can be
/// offered, as an alternative, to clients that trust only the old one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossCertificate {
    pub version: u32,
    /// Hex SHA-256 of the cross-certificate's DER.
    pub fingerprint: String,
    /// Fingerprint of the root it certifies.
    pub subject_root: String,
    /// Fingerprint of the root that signed it.
    pub issuer_root: String,
    pub certificate_pem: String,
    pub created_at: String,
}

/// The outcome of an intermediate's state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Done: the changed record and, for an activation, the one it retired.
    Done(Box<IntermediateRecord>, Option<Box<IntermediateRecord>>),
    NotFound,
    /// Refused, with the reason.
    Refused(String),
}

/// What the trust plane publishes, read at one moment: the bundle, the installed
/// intermediates and every revocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Oldest first.
    pub roots: Vec<RootRecord>,
    /// Every node's.
    pub intermediates: Vec<IntermediateRecord>,
    pub revocations: Vec<RevocationRecord>,
    /// The node that read it (empty: one appliance, or nodes sharing their intermediates).
    pub node: String,
}

impl Snapshot {
    /// The intermediate this node issues with, if any (see [`active_for`]).
    pub fn active(&self) -> Option<&IntermediateRecord> {
        active_for(&self.intermediates, &self.node)
    }
}

/// An intermediate's state change, checked against its current record: `Ok` with the changed
/// record, or the refusal. Shared by the backends so they refuse with the same words.
pub(super) fn activated(
    mut record: IntermediateRecord,
    now: &str,
) -> Result<IntermediateRecord, Transition> {
    let key_id = &record.key_id;
    match record.status {
        IntermediateStatus::Prepared => {}
        IntermediateStatus::Active => {
            return Err(Transition::Refused(format!("{key_id} is already active")))
        }
        IntermediateStatus::Retired => {
            return Err(Transition::Refused(format!(
                "{key_id} is retired; a retired intermediate is not activated again"
            )))
        }
    }
    record.status = IntermediateStatus::Active;
    record.activated_at = Some(now.to_string());
    Ok(record)
}

/// [`activated`] for retiring a prepared intermediate.
pub(super) fn retired(
    mut record: IntermediateRecord,
    now: &str,
) -> Result<IntermediateRecord, Transition> {
    let key_id = &record.key_id;
    match record.status {
        IntermediateStatus::Prepared => {}
        IntermediateStatus::Active => {
            return Err(Transition::Refused(format!(
                "{key_id} is the active intermediate; activate its successor instead"
            )))
        }
        IntermediateStatus::Retired => {
            return Err(Transition::Refused(format!("{key_id} is already retired")))
        }
    }
    record.status = IntermediateStatus::Retired;
    record.retired_at = Some(now.to_string());
    Ok(record)
}

/// The previous active intermediate, retired at `now`.
pub(super) fn superseded(mut previous: IntermediateRecord, now: &str) -> IntermediateRecord {
    previous.status = IntermediateStatus::Retired;
    previous.retired_at = Some(now.to_string());
    previous
}

/// A record being installed: active when no other is, else prepared.
pub(super) fn installing(
    mut record: IntermediateRecord,
    another_is_active: bool,
) -> IntermediateRecord {
    record.version = RECORD_VERSION;
    if another_is_active {
        record.status = IntermediateStatus::Prepared;
    } else {
        record.status = IntermediateStatus::Active;
        record.activated_at = Some(record.installed_at.clone());
    }
    record
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(v).map_err(|e| StateError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(|e| StateError::Storage(e.to_string()))
}
