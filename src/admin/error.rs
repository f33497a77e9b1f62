//! Errors of the admin API: an HTTP status and a stable machine-readable code, sent as JSON
//! `{"error": {"code": "...", "message": "..."}}`. The control plane's errors become HTTP
//! answers here and nowhere else (`From<ControlError> for ApiError`).
//!
//! Mapping only: nothing here may change state or decide whether a request is allowed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::authority::AuthorityError;
use crate::ca::CaError;
use crate::control::ControlError;
use crate::keystore::KeystoreError;
use crate::trust::TrustError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable across releases; clients may match on it.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "refused", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<KeystoreError> for ApiError {
    fn from(e: KeystoreError) -> Self {
        if e.is_retryable() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "device_unavailable",
                e.to_string(),
            )
        } else {
            match e {
                KeystoreError::KeyNotFound(_) => {
                    ApiError::new(StatusCode::CONFLICT, "key_not_in_device", e.to_string())
                }
                other => ApiError::new(StatusCode::BAD_GATEWAY, "device_error", other.to_string()),
            }
        }
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::Keystore(k) => k.into(),
            CaError::MalformedCsr(_) | CaError::CsrSignatureInvalid => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_csr", e.to_string())
            }
            CaError::MalformedCertificate(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_certificate",
                e.to_string(),
            ),
            CaError::Chain(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "chain_invalid", e.to_string())
            }
            CaError::Policy(_) => ApiError::new(StatusCode::BAD_REQUEST, "policy", e.to_string()),
            CaError::IssuerExpired(_) => {
                ApiError::new(StatusCode::CONFLICT, "issuer_expired", e.to_string())
            }
            CaError::Build(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl From<AuthorityError> for ApiError {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Ca(c) => c.into(),
            AuthorityError::Keystore(k) => k.into(),
            AuthorityError::NoMatchingKey(_) => {
                ApiError::new(StatusCode::CONFLICT, "key_not_in_device", e.to_string())
            }
            AuthorityError::Refused(m) => ApiError::refused(m),
            AuthorityError::State(_) | AuthorityError::Io { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
            }
        }
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> Self {
        match e {
            crate::state::StateError::Untrusted { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "state_untrusted",
                e.to_string(),
            ),
            // The shared database cannot be reached (or failed the statement): retry later.
            crate::state::StateError::Database(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string()),
        }
    }
}

impl From<crate::acme::error::AcmeError> for ApiError {
    fn from(e: crate::acme::error::AcmeError) -> Self {
        use crate::acme::error::AcmeError;
        match e {
            AcmeError::Malformed(m) => ApiError::bad_request(m),
            AcmeError::State(s) => s.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<TrustError> for ApiError {
    fn from(e: TrustError) -> Self {
        match e {
            TrustError::Authority(a) => a.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// The one place a control-plane failure becomes an HTTP answer; the codes are the admin
/// API's stable contract (README, "Admin API").
impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        use ControlError as C;
        let message = e.to_string();
        let (status, code) = match e {
            C::Authority(a) => return a.into(),
            C::Ca(c) => return c.into(),
            C::State(s) => return s.into(),
            C::Trust(t) => return t.into(),
            C::NoCertificate
            | C::ManyCertificates(_)
            | C::InvalidKeyId(_)
            | C::SerialNotHex(_)
            | C::SerialLength(_)
            | C::RevocationTarget
            | C::InvalidReason(_)
            | C::CrossSignItself
            | C::CrlNotPem(_)
            | C::NoCrl
            | C::ManyCrls(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            C::InvalidCrl(_) => (StatusCode::BAD_REQUEST, "invalid_crl"),
            C::NotSelfSigned(_) | C::CrlNotFromBundle(_) => {
                (StatusCode::BAD_REQUEST, "chain_invalid")
            }
            C::UnknownRoot(_)
            | C::UnknownIntermediate(_)
            | C::UnknownProposal(_)
            | C::UnknownCa(_)
            | C::NeverIssued { .. } => (StatusCode::NOT_FOUND, "not_found"),
            // A GET of a CRL that is not here: the resource is missing (404), where an
            // operation needing the key conflicts with where the key is (409).
            C::CrlSignedOffline(ca) => {
                return ApiError::new(
                    StatusCode::NOT_FOUND,
                    "key_not_in_device",
                    format!(
                        "the key of CA {ca} is not in this device; its CRL is signed offline \
                         (import it with POST /v1/crls)"
                    ),
                )
            }
            C::RootKeyNotInDevice => (StatusCode::CONFLICT, "key_not_in_device"),
            C::IntermediateExpired(_)
            | C::IntermediateRevoked(_)
            | C::NotAnchored(_)
            | C::RevokesActive(_)
            | C::NoActiveIntermediate
            | C::Transition(_)
            | C::LastRoot
            | C::AnchorsActive { .. }
            | C::RootExpired(_)
            | C::CrlRevokesActive(_) => (StatusCode::CONFLICT, "refused"),
            C::RootExists(_) | C::AlreadyRevoked { .. } => (StatusCode::CONFLICT, "exists"),
            C::RootInUse { .. } => (StatusCode::CONFLICT, "root_in_use"),
            C::PropagationWindow { .. } | C::NotPropagated { .. } => {
                (StatusCode::CONFLICT, "propagation_window")
            }
            C::StaleCrl { .. } => (StatusCode::CONFLICT, "stale_crl"),
            C::AlreadyApproved { .. } => (StatusCode::CONFLICT, "already_approved"),
            C::ProposalExpired(_) => (StatusCode::GONE, "proposal_expired"),
            C::AuditFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "audit_failed"),
        };
        ApiError::new(status, code, message)
    }
}
