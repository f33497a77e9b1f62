//! Errors of the ACME front door and the one place they become answers: RFC 7807 problem
//! documents (`application/problem+json`) with the `urn:ietf:params:acme:error:*` types of
//! RFC 8555 §6.7 and their HTTP statuses. The fresh `Replay-Nonce` every error answer carries
//! is added by the handler ([`super::handle`]). Device and storage details stay in the server
//! log; the caller sees what it can act on.
//!
//! Mapping only: nothing here may decide whether a request is allowed. Messages never carry
//! an EAB MAC key.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::audit::AuditError;
use crate::ca::CaError;
use crate::control::ControlError;
use crate::keystore::KeystoreError;
use crate::state::StateError;

/// Why an ACME request was not answered as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    #[error("{0}")]
    Malformed(String),
    #[error("the nonce is unknown, expired or used")]
    BadNonce,
    #[error("{0}")]
    Unauthorized(String),
    #[error("no account exists with this key")]
    AccountDoesNotExist,
    #[error("unsupported signature algorithm {0} (RS256, ES256, ES384, EdDSA)")]
    BadSignatureAlgorithm(String),
    #[error("{0}")]
    BadPublicKey(String),
    #[error("this server requires an external account binding")]
    ExternalAccountRequired,
    #[error("{0}")]
    RejectedIdentifier(String),
    #[error("{0}")]
    UnsupportedIdentifier(String),
    #[error("{0}")]
    BadCsr(String),
    #[error("{0}")]
    OrderNotReady(String),
    #[error("{0}")]
    AlreadyRevoked(String),
    #[error("{0}")]
    BadRevocationReason(String),
    /// The request names something that does not exist (or not for this account).
    #[error("{0}")]
    NotFound(String),
    #[error("this resource does not take that method")]
    MethodNotAllowed,
    /// A JWS must come as `application/jose+json`.
    #[error("the request must be application/jose+json")]
    UnsupportedMediaType,
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

const NS: &str = "urn:ietf:params:acme:error:";

impl AcmeError {
    /// The one mapping: HTTP status, problem type (without the namespace) and the detail the
    /// caller sees.
    pub fn problem(&self) -> (StatusCode, &'static str, String) {
        use AcmeError as E;
        let shown = || self.to_string();
        match self {
            E::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed", shown()),
            E::BadNonce => (StatusCode::BAD_REQUEST, "badNonce", shown()),
            E::Unauthorized(_) => (StatusCode::FORBIDDEN, "unauthorized", shown()),
            E::AccountDoesNotExist => (StatusCode::BAD_REQUEST, "accountDoesNotExist", shown()),
            E::BadSignatureAlgorithm(_) => {
                (StatusCode::BAD_REQUEST, "badSignatureAlgorithm", shown())
            }
            E::BadPublicKey(_) => (StatusCode::BAD_REQUEST, "badPublicKey", shown()),
            E::ExternalAccountRequired => {
                (StatusCode::UNAUTHORIZED, "externalAccountRequired", shown())
            }
            E::RejectedIdentifier(_) => (StatusCode::BAD_REQUEST, "rejectedIdentifier", shown()),
            E::UnsupportedIdentifier(_) => {
                (StatusCode::BAD_REQUEST, "unsupportedIdentifier", shown())
            }
            E::BadCsr(_) => (StatusCode::BAD_REQUEST, "badCSR", shown()),
            E::OrderNotReady(_) => (StatusCode::FORBIDDEN, "orderNotReady", shown()),
            E::AlreadyRevoked(_) => (StatusCode::BAD_REQUEST, "alreadyRevoked", shown()),
            E::BadRevocationReason(_) => (StatusCode::BAD_REQUEST, "badRevocationReason", shown()),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "malformed", shown()),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "malformed", shown()),
            E::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "malformed", shown()),
            E::Ca(e) => ca_problem(e),
            E::Control(e) => match e {
                ControlError::Ca(c) => ca_problem(c),
                ControlError::AlreadyRevoked { .. } => {
                    (StatusCode::BAD_REQUEST, "alreadyRevoked", e.to_string())
                }
                ControlError::NoActiveIntermediate => unavailable("no active intermediate"),
                ControlError::AuditFailed(_) => {
                    unavailable("the CA could not record the change; retry later")
                }
                _ if e.is_key_missing() => unavailable("the CA's key device is unavailable"),
                _ => internal(),
            },
            E::State(_) => unavailable("the CA state cannot be reached; retry later"),
            E::Audit(_) => unavailable("the CA could not record the issuance; retry later"),
            E::Internal(_) => internal(),
        }
    }

    /// A stable name of the failure class, for refusal records.
    pub fn code(&self) -> &'static str {
        self.problem().1
    }

    /// The problem document.
    pub fn document(&self) -> Value {
        let (status, kind, detail) = self.problem();
        json!({
            "type": format!("{NS}{kind}"),
            "detail": detail,
            "status": status.as_u16(),
        })
    }
}

/// A problem document stored in a challenge or an order (validation and issuance failures).
pub fn stored_problem(kind: &str, detail: &str) -> Value {
    json!({"type": format!("{NS}{kind}"), "detail": detail, "status": 400})
}

fn unavailable(what: &str) -> (StatusCode, &'static str, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "serverInternal",
        what.to_string(),
    )
}

fn internal() -> (StatusCode, &'static str, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "serverInternal",
        "internal error in the CA".to_string(),
    )
}

/// A CA error: the CSR's fault (`badCSR`), the device's (503 while it may recover), or ours.
fn ca_problem(e: &CaError) -> (StatusCode, &'static str, String) {
    match e {
        CaError::MalformedCsr(_) | CaError::CsrSignatureInvalid | CaError::Policy(_) => {
            (StatusCode::BAD_REQUEST, "badCSR", e.to_string())
        }
        CaError::Keystore(k) if k.is_retryable() || matches!(k, KeystoreError::Closed) => {
            unavailable("the CA's key device is unavailable; retry later")
        }
        CaError::IssuerExpired(_) => unavailable("the issuing CA has expired"),
        _ => internal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_acme_type_and_status() {
        let t = |e: AcmeError| {
            let (s, k, _) = e.problem();
            (s.as_u16(), k)
        };
        assert_eq!(t(AcmeError::BadNonce), (400, "badNonce"));
        assert_eq!(
            t(AcmeError::ExternalAccountRequired),
            (401, "externalAccountRequired")
        );
        assert_eq!(
            t(AcmeError::OrderNotReady("x".into())),
            (403, "orderNotReady")
        );
        assert_eq!(t(CaError::CsrSignatureInvalid.into()), (400, "badCSR"));
        assert_eq!(
            t(StateError::Database("x".into()).into()),
            (503, "serverInternal")
        );
    }

    #[test]
    fn storage_details_stay_out_of_the_answer() {
        let doc = AcmeError::from(StateError::Database("password=hunter2".into())).document();
        assert!(!doc.to_string().contains("hunter2"), "{doc}");
        assert_eq!(doc["type"], "urn:ietf:params:acme:error:serverInternal");
    }
}
