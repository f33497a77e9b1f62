//! The Istio certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`).
//!
//! A request flows: decode and size limits → authenticate the caller → decide the identity to
//! issue (own, registration authority, or impersonated by a trusted node agent) → parse the CSR
//! and check it against that identity → clamp the TTL → sign on a blocking thread through the
//! keystore → answer `[leaf, intermediate(s)…, trust bundle]`. An identity configured as an
//! admin identity is never issued. Every refusal has one gRPC code, chosen in
//! [`IssuanceError::status`], also for the size limits enforced in front of tonic ([`edge`]).

pub mod edge;
pub mod policy;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::audit::{AuditError, AuditEvent, AuditLog, NotIssued};
use crate::auth::{AuthError, Authenticator, Caller, SpiffeId};
use crate::ca::{self, CaError};
use crate::keystore::KeystoreError;
pub use view::{IssuerSnapshot, IssuerView};

/// Generated from proto/ca.proto.
pub mod pb {
    #![allow(clippy::all, missing_docs, unused_qualifications)]
    tonic::include_proto!("istio.v1.auth");
}

use pb::istio_certificate_service_server::IstioCertificateService;
use pb::{IstioCertificateRequest, IstioCertificateResponse};

/// Largest request message accepted (a CSR and a little metadata).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a request was not answered with a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuanceError {
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error("request impersonation authentication failure: {0}")]
    Impersonation(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Headers or message over the service's limits.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("the issuance could not be recorded: {0}")]
    Audit(#[from] AuditError),
}

impl IssuanceError {
    /// The one mapping from issuance errors to gRPC status. Policy refusals use codes
    /// istio-agent does not retry; overload and device trouble use codes it does.
    pub fn status(&self) -> Status {
        use tonic::Code;
        let code = match self {
            IssuanceError::Unauthenticated(_) | IssuanceError::Impersonation(_) => {
                Code::Unauthenticated
            }
            IssuanceError::InvalidRequest(_) => Code::InvalidArgument,
            IssuanceError::PermissionDenied(_) => Code::PermissionDenied,
            IssuanceError::TooLarge(_) => Code::ResourceExhausted,
            IssuanceError::Ca(e) => match e {
                CaError::MalformedCsr(_) | CaError::CsrSignatureInvalid => Code::InvalidArgument,
                CaError::Policy(_) => Code::PermissionDenied,
                CaError::Keystore(k) => match k {
                    KeystoreError::Overloaded | KeystoreError::DeadlineExceeded => {
                        Code::ResourceExhausted
                    }
                    KeystoreError::Unavailable(_)
                    | KeystoreError::SessionLost(_)
                    | KeystoreError::Closed => Code::Unavailable,
                    _ => Code::Internal,
                },
                CaError::IssuerExpired(_) => Code::Unavailable,
                _ => Code::Internal,
            },
            IssuanceError::Audit(_) => Code::Unavailable,
        };
        // Device details stay in the server log; the caller learns the class of failure.
        let message = match code {
            Code::Unavailable if matches!(self, IssuanceError::Audit(_)) => {
                "the CA could not record the issuance; retry later".to_string()
            }
            Code::Unavailable => "the CA's key device is unavailable; retry later".to_string(),
            Code::ResourceExhausted if !matches!(self, IssuanceError::TooLarge(_)) => {
                "the CA is overloaded; retry later".to_string()
            }
            Code::Internal => "internal error in the CA".to_string(),
            _ => self.to_string(),
        };
        Status::new(code, message)
    }
}

/// Limits and defaults for workload certificates.
#[derive(Clone, Debug)]
pub struct IssuanceRules {
    pub trust_domain: String,
    /// The admin API's identities (`[[admin.users]]`): never issued to anyone.
    pub admin_identities: std::collections::BTreeSet<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub clock_skew: Duration,
}

/// The gRPC service.
pub struct CertificateService {
    view: Arc<IssuerView>,
    auth: Arc<Authenticator>,
    rules: IssuanceRules,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<crate::metrics::IssuanceMetrics>,
    /// Whether the last signature asked of the device was made: only then is a record
    /// written while the device signs (see [`CertificateService::handle`]).
    signing: std::sync::atomic::AtomicBool,
}

impl CertificateService {
    pub fn new(
        view: Arc<IssuerView>,
        auth: Arc<Authenticator>,
        rules: IssuanceRules,
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<crate::metrics::IssuanceMetrics>,
    ) -> Self {
        CertificateService {
            view,
            auth,
            rules,
            audit,
            metrics,
            signing: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The tonic server for this service, with message size limits.
    pub fn into_server(
        self,
    ) -> pb::istio_certificate_service_server::IstioCertificateServiceServer<Self> {
        pb::istio_certificate_service_server::IstioCertificateServiceServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Decides which identity `caller` gets for this request.
    fn identity_to_issue(
        &self,
        caller: &Caller,
        impersonated: Option<&str>,
        csr: &ca::ParsedCsr,
    ) -> Result<SpiffeId, IssuanceError> {
        if let Some(target) = impersonated {
            if !self.auth.may_impersonate(caller) {
                return Err(IssuanceError::Impersonation(format!(
                    "{} is not a trusted node account",
                    caller.id
                )));
            }
            let id = SpiffeId::parse(target)
                .map_err(|e| IssuanceError::InvalidRequest(format!("ImpersonatedIdentity: {e}")))?;
            if id.trust_domain() != self.rules.trust_domain || id.namespace_and_account().is_none()
            {
                return Err(IssuanceError::Impersonation(format!(
                    "{id} is not a workload of trust domain {}",
                    self.rules.trust_domain
                )));
            }
            return Ok(id);
        }
        if let Some(ra) = self.auth.registration_authority(caller) {
            let [uri] = csr.uri_sans.as_slice() else {
                return Err(IssuanceError::PermissionDenied(
                    "a registration authority's CSR must carry exactly one URI SAN".into(),
                ));
            };
            let id = SpiffeId::parse(uri)
                .map_err(|e| IssuanceError::PermissionDenied(format!("requested identity: {e}")))?;
            if id.trust_domain() != self.rules.trust_domain || !ra.may_request(&id) {
                return Err(IssuanceError::PermissionDenied(format!(
                    "registration authority {} may not request {id}",
                    caller.id
                )));
            }
            return Ok(id);
        }
        Ok(caller.id.clone())
    }

    /// Issues for one request. `progress` learns the caller's identity as soon as it is known,
    /// so a refusal can be recorded against it, and when the issuance record is made.
    async fn handle(
        &self,
        peer_leaf: Option<Vec<u8>>,
        bearer: Option<String>,
        cluster: Option<String>,
        request: IstioCertificateRequest,
        progress: &mut Progress<'_>,
    ) -> Result<(Vec<String>, Caller, SpiffeId, String), IssuanceError> {
        let caller =
            self.auth
                .authenticate(peer_leaf.as_deref(), bearer.as_deref(), cluster.as_deref())?;
        progress.who = Some(caller.id.to_string());
        if request.csr.len() > policy::MAX_CSR_PEM {
            return Err(IssuanceError::InvalidRequest(format!(
                "CSR is larger than {} bytes",
                policy::MAX_CSR_PEM
            )));
        }
        let csr = ca::parse_csr(request.csr.as_bytes())?;
        let impersonated = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            });
        let identity = self.identity_to_issue(&caller, impersonated.as_deref(), &csr)?;
        if self.rules.admin_identities.contains(&identity.to_string()) {
            return Err(IssuanceError::PermissionDenied(format!(
                "{identity} is an admin identity; the CA does not issue it to workloads"
            )));
        }
        policy::check_csr(&csr, &identity).map_err(IssuanceError::PermissionDenied)?;
        let ttl = policy::ttl(
            request.validity_duration,
            self.rules.default_ttl,
            self.rules.max_ttl,
        );

        // Hold this snapshot for the whole request: a rotation meanwhile does not affect it.
        let issuer = self.view.load();
        let prepared = issuer.ca.prepare_leaf(
            &csr.spki,
            &identity.to_string(),
            ttl,
            self.rules.clock_skew,
            OffsetDateTime::now_utc(),
        )?;
        let Some(audit) = &self.audit else {
            let leaf = prepared.sign(&issuer.ca).await?;
            return Ok(answer(&issuer, leaf.pem, caller, identity, leaf.serial));
        };
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let ca_key = issuer.ca.key().id().to_string();
        let record = AuditEvent::Issued {
            serial: prepared.serial().to_string(),
            identity: identity.to_string(),
            caller: caller.id.to_string(),
            method: caller.method.to_string(),
            ca_key: ca_key.clone(),
            not_before: rfc3339(prepared.not_before()),
            not_after: rfc3339(prepared.not_after()),
            csr_key_sha256: csr.public_key_fingerprint(),
            certificate_sha256: None,
        };
        let serial = prepared.serial().to_string();
        // The certificate leaves only once its record is on disk. While the device signs, the
        // record is written meanwhile (the disk sync and the signature overlap); a signature
        // that then fails is recorded as `not_issued`. After a failed signature the device
        // signs first until it signs again, so an outage adds no records beyond refusals.
        use std::sync::atomic::Ordering;
        let leaf = if self.signing.load(Ordering::Relaxed) {
            // From here on the issuance is recorded even if the caller goes away.
            progress.recorded = true;
            let issued = audit
                .record_while_signing(record, &serial, &ca_key, prepared.sign(&issuer.ca))
                .await;
            self.signing.store(
                !matches!(issued, Err(NotIssued::Sign(_))),
                Ordering::Relaxed,
            );
            match issued {
                Ok(leaf) => leaf,
                Err(NotIssued::Sign(e)) => return Err(e.into()),
                Err(NotIssued::Audit(e)) => return Err(e.into()),
            }
        } else {
            let leaf = prepared.sign(&issuer.ca).await;
            self.signing.store(leaf.is_ok(), Ordering::Relaxed);
            let leaf = leaf?;
            progress.recorded = true;
            if let Err(e) = audit.append(record).await {
                audit.record_withheld(&e, &serial, &ca_key).await;
                return Err(e.into());
            }
            leaf
        };
        Ok(answer(&issuer, leaf.pem, caller, identity, serial))
    }
}

/// The answer for an issued leaf: `[leaf, intermediate(s)…, trust bundle]`.
fn answer(
    issuer: &IssuerSnapshot,
    leaf_pem: String,
    caller: Caller,
    identity: SpiffeId,
    serial: String,
) -> (Vec<String>, Caller, SpiffeId, String) {
    let mut chain = Vec::with_capacity(issuer.intermediates_pem.len() + 2);
    chain.push(leaf_pem);
    chain.extend(issuer.intermediates_pem.iter().cloned());
    chain.push(issuer.bundle_pem.clone());
    (chain, caller, identity, serial)
}

/// How far one request got. Counted in the metrics when answered, or, when the caller went
/// away first (its stream reset, the handler dropped), as `reset` if the issuance record was
/// already made (the audit log holds it) and `cancelled` if not.
struct Progress<'a> {
    metrics: &'a crate::metrics::IssuanceMetrics,
    started: std::time::Instant,
    who: Option<String>,
    recorded: bool,
    answered: bool,
}

impl Progress<'_> {
    fn answered(&mut self, result: &str) {
        self.answered = true;
        self.metrics.results.inc(result);
        self.metrics.latency.observe(self.started.elapsed());
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let result = if self.recorded { "reset" } else { "cancelled" };
            self.metrics.results.inc(result);
        }
    }
}

fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer_leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        let bearer = bearer_token(request.metadata());
        let cluster = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut progress = Progress {
            metrics: &self.metrics,
            started: std::time::Instant::now(),
            who: None,
            recorded: false,
            answered: false,
        };
        let result = match self
            .handle(
                peer_leaf,
                bearer,
                cluster,
                request.into_inner(),
                &mut progress,
            )
            .await
        {
            Ok((cert_chain, caller, identity, serial)) => {
                tracing::debug!(%serial, %identity, caller = %caller.id, method = %caller.method, "issued");
                progress.answered("ok");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                let status = e.status();
                tracing::info!(code = ?status.code(), reason = %e, "refused");
                let code = format!("{:?}", status.code());
                progress.answered(&code);
                if let Some(audit) = &self.audit {
                    audit.refused(progress.who.as_deref(), &code, status.message());
                }
                Err(status)
            }
        };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn code(e: IssuanceError) -> Code {
        e.status().code()
    }

    #[test]
    fn each_failure_class_has_its_grpc_code() {
        assert_eq!(code(AuthError::NoCredentials.into()), Code::Unauthenticated);
        assert_eq!(
            code(IssuanceError::Impersonation("x".into())),
            Code::Unauthenticated
        );
        assert_eq!(
            code(CaError::MalformedCsr("x".into()).into()),
            Code::InvalidArgument
        );
        assert_eq!(
            code(CaError::CsrSignatureInvalid.into()),
            Code::InvalidArgument
        );
        assert_eq!(
            code(CaError::Policy("x".into()).into()),
            Code::PermissionDenied
        );
        assert_eq!(
            code(IssuanceError::PermissionDenied("x".into())),
            Code::PermissionDenied
        );
        for k in [KeystoreError::Overloaded, KeystoreError::DeadlineExceeded] {
            assert_eq!(code(CaError::Keystore(k).into()), Code::ResourceExhausted);
        }
        for k in [
            KeystoreError::Unavailable("x".into()),
            KeystoreError::SessionLost("x".into()),
            KeystoreError::Closed,
        ] {
            assert_eq!(code(CaError::Keystore(k).into()), Code::Unavailable);
        }
        assert_eq!(
            code(CaError::IssuerExpired("t".into()).into()),
            Code::Unavailable
        );
        assert_eq!(
            code(CaError::Keystore(KeystoreError::PinIncorrect).into()),
            Code::Internal
        );
    }

    #[test]
    fn device_details_stay_out_of_the_callers_message() {
        let s = IssuanceError::from(CaError::Keystore(KeystoreError::Unavailable(
            "sign: DeviceError in Sign on token hsm-ca".into(),
        )))
        .status();
        assert!(
            !s.message().contains("DeviceError") && !s.message().contains("hsm-ca"),
            "{}",
            s.message()
        );
    }
}
