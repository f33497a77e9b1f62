//! Every way a control-plane request can fail, as data. The admin API turns these into HTTP
//! answers in one place (`From<ControlError> for ApiError`); nothing here may know a status
//! code or a route.

use time::OffsetDateTime;

use crate::audit::AuditError;
use crate::authority::AuthorityError;
use crate::ca::CaError;
use crate::clock::rfc3339;
use crate::keystore::{KeyId, KeystoreError};
use crate::state::StateError;
use crate::trust::TrustError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    // The request itself is wrong.
    #[error("no certificate in certificate_pem")]
    NoCertificate,
    #[error("certificate_pem holds {0} certificates; send one")]
    ManyCertificates(usize),
    #[error("{0}")]
    InvalidKeyId(String),
    #[error("serial {0:?} is not hex")]
    SerialNotHex(String),
    #[error("serial {0:?} must be 1 to 20 bytes")]
    SerialLength(String),
    #[error("give either \"serial\" (with an optional \"issuer\") or \"intermediate\"")]
    RevocationTarget,
    #[error("reason: {0}")]
    InvalidReason(String),
    #[error("a root does not cross-sign itself")]
    CrossSignItself,
    #[error("crl_pem is not PEM: {0}")]
    CrlNotPem(String),
    #[error("no X509 CRL block in crl_pem")]
    NoCrl,
    #[error("crl_pem holds {0} CRLs; send one")]
    ManyCrls(usize),
    /// Not a complete root CRL this appliance can take (the reason says why).
    #[error("{0}")]
    InvalidCrl(String),
    /// A root candidate that did not sign itself (its subject).
    #[error("{0} is not a self-signed root")]
    NotSelfSigned(String),
    /// A CRL whose issuer (named) is no root of the bundle.
    #[error("the CRL of {0} is not signed by a root in the trust bundle")]
    CrlNotFromBundle(String),

    // Something named does not exist.
    #[error("no root {0} in the trust bundle")]
    UnknownRoot(String),
    #[error("no intermediate {0}")]
    UnknownIntermediate(KeyId),
    #[error("no open proposal {0}")]
    UnknownProposal(String),
    #[error("no CA certificate {0}")]
    UnknownCa(String),
    /// The CA's key is not in this device and no CRL its ceremony signed was imported.
    #[error("the key of CA {0} is not in this device and no CRL signed offline was imported")]
    CrlSignedOffline(String),

    // The state does not allow it.
    #[error("no root key for this request is in the device; sign the CSR in a ceremony")]
    RootKeyNotInDevice,
    #[error("intermediate {0} has expired")]
    IntermediateExpired(KeyId),
    #[error("intermediate {0} is revoked")]
    IntermediateRevoked(KeyId),
    #[error("intermediate {0} does not chain to a root in the trust bundle")]
    NotAnchored(KeyId),
    #[error("{0} is the active intermediate; activate a successor before revoking it")]
    RevokesActive(KeyId),
    #[error("no active intermediate")]
    NoActiveIntermediate,
    /// The state refused an intermediate transition (its reason).
    #[error("{0}")]
    Transition(String),
    #[error("the last root of the bundle cannot be removed")]
    LastRoot,
    #[error(
        "the active intermediate {active} chains to root {root}; activate one under another \
         root first"
    )]
    AnchorsActive { root: String, active: KeyId },
    /// A root candidate that has expired (its subject).
    #[error("{0} has expired")]
    RootExpired(String),
    #[error("root {0} is in the bundle already")]
    RootExists(String),
    #[error("serial {serial} of CA {issuer} is revoked already")]
    AlreadyRevoked { issuer: String, serial: String },
    /// A revocation of a serial the audit log has no issuance of (by that intermediate).
    #[error(
        "serial {serial} was never issued by intermediate {intermediate} (no issuance of it in \
         the audit log); check the serial and the issuer"
    )]
    NeverIssued {
        intermediate: String,
        serial: String,
    },
    #[error(
        "certificates anchored at root {root} may be in use until {} (last issuance + \
         workload.max_ttl_secs); remove it then, or force it with approval",
        rfc3339(*until)
    )]
    RootInUse { root: String, until: OffsetDateTime },
    #[error(
        "root {root} entered the trust bundle at {added_at}; intermediates under it can be \
         activated from {} (admin.propagation_window_secs)",
        rfc3339(*ready_at)
    )]
    PropagationWindow {
        root: String,
        added_at: String,
        ready_at: OffsetDateTime,
    },
    #[error(
        "root {root} is not served yet by the live node(s) {}: wait for them to report it \
         (GET /v1/nodes)",
        nodes.join(", ")
    )]
    NotPropagated { root: String, nodes: Vec<String> },
    #[error(
        "this CRL revokes the active intermediate {0}; activate a successor, then import it \
         again"
    )]
    CrlRevokesActive(KeyId),
    #[error("CRL number {number} is not newer than the imported CRL number {stored}")]
    StaleCrl { number: u64, stored: u64 },
    #[error("{identity} already approved proposal {proposal}")]
    AlreadyApproved { identity: String, proposal: String },
    #[error("proposal {0} expired; propose the operation again")]
    ProposalExpired(String),

    // What lies below failed.
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The change was made; its audit record could not be written.
    #[error("the change was made but could not be audited: {0}")]
    AuditFailed(#[source] AuditError),
}

impl ControlError {
    /// Whether this failed because a CA key is not in this device (a CRL is then skipped
    /// from the CRL bundle rather than failing it).
    pub fn is_key_missing(&self) -> bool {
        fn keystore(e: &KeystoreError) -> bool {
            !e.is_retryable() && matches!(e, KeystoreError::KeyNotFound(_))
        }
        fn ca(e: &CaError) -> bool {
            matches!(e, CaError::Keystore(k) if keystore(k))
        }
        match self {
            ControlError::CrlSignedOffline(_) | ControlError::RootKeyNotInDevice => true,
            ControlError::Ca(c) => ca(c),
            ControlError::Authority(a) | ControlError::Trust(TrustError::Authority(a)) => match a {
                AuthorityError::NoMatchingKey(_) => true,
                AuthorityError::Keystore(k) => keystore(k),
                AuthorityError::Ca(c) => ca(c),
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<KeystoreError> for ControlError {
    fn from(e: KeystoreError) -> Self {
        ControlError::Authority(e.into())
    }
}
