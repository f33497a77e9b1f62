//! Errors of the Vault front door and the one place they become HTTP answers, with Vault's
//! status codes and body (`{"errors": ["..."]}`): 400 for a request or policy the role
//! refuses (Vault's `logical.ErrorResponse`), 403 `permission denied` for a missing,
//! expired, revoked or under-privileged token, a failed identity check, or a path or operation
//! no token of ours may use (as Vault's ACL answers every token but root), 405 for an
//! unsupported operation on an unauthenticated path, 503 while the device or the audit log cannot
//! serve (Vault's "sealed"), 500 otherwise. Device and storage details stay in the server log.
//!
//! Mapping only: nothing here may decide whether a request is allowed. Messages never carry a
//! token, a secret id or a JWT.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::audit::AuditError;
use crate::ca::CaError;
use crate::control::ControlError;
use crate::keystore::KeystoreError;
use crate::state::StateError;

/// Why a Vault request was not answered as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// A malformed request, or one the role's policy refuses (Vault answers 400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid token, a token without the policy, or a failed login check.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("unsupported operation")]
    MethodNotAllowed,
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the certificate could not be recorded: {0}")]
    Audit(#[from] AuditError),
    /// A fault on our side (its cause goes to the server log, not to the caller).
    #[error("{0}")]
    Internal(String),
}

impl VaultError {
    /// The denial every token problem answers with (Vault's wording).
    pub fn denied() -> Self {
        VaultError::PermissionDenied("permission denied".into())
    }

    /// The one mapping to Vault's status codes, with the message the caller sees.
    pub fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            VaultError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            VaultError::PermissionDenied(m) => (StatusCode::FORBIDDEN, m.clone()),
            VaultError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, self.to_string()),
            VaultError::Ca(e) => ca_status(e),
            VaultError::Control(e) => match e {
                ControlError::Ca(c) => ca_status(c),
                ControlError::RootKeyNotInDevice => (
                    StatusCode::BAD_REQUEST,
                    "the root's key is not in this device: intermediates are signed offline \
                     (hsm-ca ceremony sign-intermediate)"
                        .to_string(),
                ),
                ControlError::NoActiveIntermediate => unavailable("no active intermediate"),
                ControlError::AuditFailed(_) => {
                    unavailable("the CA could not record the issuance; retry later")
                }
                _ if e.is_key_missing() => unavailable("the CA's key device is unavailable"),
                _ => internal(),
            },
            VaultError::State(_) => unavailable("the CA state cannot be reached; retry later"),
            VaultError::Audit(_) => {
                unavailable("the CA could not record the issuance; retry later")
            }
            VaultError::Internal(_) => internal(),
        }
    }

    /// A stable name of the failure class, for refusal records.
    pub fn code(&self) -> &'static str {
        match self.status_and_message().0 {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "unsupported_operation",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        }
    }
}

fn unavailable(what: &str) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, what.to_string())
}

fn internal() -> (StatusCode, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error in the CA".to_string(),
    )
}

/// A CA error's status: the request's fault (400), the device's (503 while it may recover),
/// or ours (500).
fn ca_status(e: &CaError) -> (StatusCode, String) {
    match e {
        CaError::MalformedCsr(_) | CaError::CsrSignatureInvalid | CaError::Policy(_) => {
            (StatusCode::BAD_REQUEST, e.to_string())
        }
        CaError::Keystore(k) if k.is_retryable() || matches!(k, KeystoreError::Closed) => {
            unavailable("the CA's key device is unavailable; retry later")
        }
        CaError::IssuerExpired(_) => unavailable("the issuing CA has expired"),
        _ => internal(),
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        (status, Json(serde_json::json!({ "errors": [message] }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: VaultError) -> u16 {
        e.status_and_message().0.as_u16()
    }

    #[test]
    fn each_failure_class_has_vaults_status() {
        assert_eq!(status(VaultError::BadRequest("x".into())), 400);
        assert_eq!(status(VaultError::denied()), 403);
        assert_eq!(status(VaultError::MethodNotAllowed), 405);
        assert_eq!(status(CaError::CsrSignatureInvalid.into()), 400);
        assert_eq!(status(CaError::Policy("x".into()).into()), 400);
        assert_eq!(
            status(CaError::Keystore(KeystoreError::Unavailable("x".into())).into()),
            503
        );
        assert_eq!(
            status(CaError::Keystore(KeystoreError::PinIncorrect).into()),
            500
        );
        assert_eq!(status(ControlError::RootKeyNotInDevice.into()), 400);
        assert_eq!(status(StateError::Database("x".into()).into()), 503);
    }

    #[test]
    fn device_and_storage_details_stay_out_of_the_answer() {
        let (_, m) = VaultError::from(CaError::Keystore(KeystoreError::Unavailable(
            "DeviceError in Sign on token hsm-ca".into(),
        )))
        .status_and_message();
        assert!(!m.contains("DeviceError") && !m.contains("hsm-ca"), "{m}");
        let (_, m) =
            VaultError::from(StateError::Database("password=hunter2".into())).status_and_message();
        assert!(!m.contains("hunter2"), "{m}");
    }
}
