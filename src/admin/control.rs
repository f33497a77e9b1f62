//! The CA's run-time control plane: every state change the admin API offers, the checks
//! that guard it, officer approvals for sensitive operations, and publishing the result
//! (issuer view, trust bundle, TLS client verification) without stopping the service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::ApiError;
use crate::audit::{AuditEvent, AuditLog};
use crate::auth::revoked::Revocations;
use crate::authority::{self, AuthorityError};
use crate::ca::inspect::{check_issued_by, parse_certificate, serial_hex};
use crate::ca::{certificate_pem, certificates_from_pem, fingerprint_id, CaError, IssuingCa};
use crate::config::{Config, Role};
use crate::issuance::{IssuerSnapshot, IssuerView};
use crate::keystore::{KeyId, KeyStore};
use crate::state::{
    CaState, IntermediateRecord, IntermediateStatus, RevocationRecord, RootRecord, Transition,
};
use crate::tls::{self, ServingCert};

/// How long a CRL stays valid; a fresh one is signed at half this age or on any change.
pub const CRL_VALIDITY: time::Duration = time::Duration::hours(24);

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// An authenticated admin caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: String,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// An operation that may need officer approvals before it runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Operation {
    RootAdd { certificate_pem: String },
    RootRemove { fingerprint: String, force: bool },
    Revoke(RevokeRequest),
    ActivateNewRoot { key_id: String },
}

impl Operation {
    /// The config name of the operation (`admin.approvals.sensitive`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::RootAdd { .. } => "root_add",
            Operation::RootRemove { .. } => "root_remove",
            Operation::Revoke(_) => "revoke",
            Operation::ActivateNewRoot { .. } => "activate_new_root",
        }
    }
}

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

#[derive(Clone, Debug, Serialize)]
pub struct Proposal {
    pub id: String,
    #[serde(flatten)]
    pub operation: Operation,
    pub proposer: String,
    pub approvals: BTreeSet<String>,
    pub threshold: u32,
    pub created_at: String,
    pub expires_at: String,
    #[serde(skip)]
    expires: OffsetDateTime,
}

/// The outcome of asking for an operation.
pub enum Outcome {
    /// It ran; here is its result.
    Done(Value),
    /// It waits for approvals.
    Pending(Box<Proposal>),
}

struct CachedCrl {
    der: Vec<u8>,
    made: OffsetDateTime,
    entries: usize,
}

/// Everything the admin API changes, shared with the running server.
pub struct Control {
    pub config: Arc<Config>,
    pub store: KeyStore,
    pub state: Arc<CaState>,
    pub view: Arc<IssuerView>,
    pub audit: Option<Arc<AuditLog>>,
    pub serving: Arc<ServingCert>,
    pub grpc_tls: Arc<ArcSwap<rustls::ServerConfig>>,
    pub admin_tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Wakes the serving-certificate renewal (after the issuer changed).
    pub renew: Arc<tokio::sync::Notify>,
    pub issuance: Arc<crate::metrics::IssuanceMetrics>,
    /// What client certificates are checked against; reloaded with every change.
    pub revocations: Arc<Revocations>,
    /// State changes run one at a time.
    changes: tokio::sync::Mutex<()>,
    proposals: Mutex<BTreeMap<String, Proposal>>,
    crls: Mutex<HashMap<String, CachedCrl>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn first_cert(pem_text: &str) -> Result<Vec<u8>, ApiError> {
    let mut certs = certificates_from_pem(pem_text.as_bytes()).map_err(ApiError::from)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        0 => Err(ApiError::bad_request("no certificate in certificate_pem")),
        n => Err(ApiError::bad_request(format!(
            "certificate_pem holds {n} certificates; send one"
        ))),
    }
}

fn record_der(record: &IntermediateRecord) -> Result<Vec<u8>, ApiError> {
    first_cert(&record.certificate_pem)
}

/// The serial number (hex) of the certificate `der`.
fn serial_of(der: &[u8]) -> Result<String, ApiError> {
    Ok(serial_hex(
        parse_certificate(der).map_err(ApiError::from)?.raw_serial(),
    ))
}

fn key_id(s: &str) -> Result<KeyId, ApiError> {
    s.parse::<KeyId>().map_err(ApiError::bad_request)
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        store: KeyStore,
        state: Arc<CaState>,
        view: Arc<IssuerView>,
        audit: Option<Arc<AuditLog>>,
        serving: Arc<ServingCert>,
        grpc_tls: Arc<ArcSwap<rustls::ServerConfig>>,
        admin_tls: Arc<ArcSwap<rustls::ServerConfig>>,
        renew: Arc<tokio::sync::Notify>,
        issuance: Arc<crate::metrics::IssuanceMetrics>,
        revocations: Arc<Revocations>,
    ) -> Self {
        Control {
            issuance,
            revocations,
            config,
            store,
            state,
            view,
            audit,
            serving,
            grpc_tls,
            admin_tls,
            renew,
            changes: tokio::sync::Mutex::new(()),
            proposals: Mutex::new(BTreeMap::new()),
            crls: Mutex::new(HashMap::new()),
        }
    }

    /// Appends an audit record (when the audit is on); the change is answered only after.
    pub async fn record(&self, event: AuditEvent) -> Result<(), ApiError> {
        if let Some(audit) = &self.audit {
            audit.append(event).await.map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "audit_failed",
                    format!("the change was made but could not be audited: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// The trust bundle (DER), oldest root first.
    pub fn roots(&self) -> Result<Vec<RootRecord>, ApiError> {
        Ok(self.state.roots()?)
    }

    fn roots_der(&self) -> Result<Vec<Vec<u8>>, ApiError> {
        self.roots()?
            .iter()
            .map(|r| first_cert(&r.certificate_pem))
            .collect()
    }

    /// The bundle root that issued `cert_der`, if any.
    fn root_of(&self, cert_der: &[u8]) -> Result<Option<RootRecord>, ApiError> {
        Ok(self.roots()?.into_iter().find(|r| {
            first_cert(&r.certificate_pem)
                .map(|root| check_issued_by(cert_der, &root).is_ok())
                .unwrap_or(false)
        }))
    }

    /// Makes the current state visible: issuer view, TLS client verification, bundle file.
    pub fn publish(&self) -> Result<(), ApiError> {
        let roots = self.roots_der()?;
        load_revocations(&self.revocations, &self.state, &roots)?;
        let issuer = blocking(|| authority::active_issuer(&self.store, &self.state))?;
        let issuer_changed = self.view.load().ca.key().id() != issuer.key().id();
        self.view
            .replace(IssuerSnapshot::new(issuer, roots.clone()));
        let grpc = tls::server_config(&roots, self.config.server.client_auth, self.serving.clone())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.grpc_tls.store(Arc::new(grpc));
        let admin = tls::admin_server_config(
            &admin_client_roots(&self.config, &roots)?,
            self.serving.clone(),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
        self.admin_tls.store(Arc::new(admin));
        write_bundle_file(&self.config, &roots)?;
        if issuer_changed {
            self.renew.notify_one();
        }
        Ok(())
    }

    /// The CA state as the admin API shows it.
    pub fn describe(&self) -> Result<Value, ApiError> {
        let roots = self.roots()?;
        let now = OffsetDateTime::now_utc();
        let mut root_list = Vec::new();
        for r in &roots {
            let der = first_cert(&r.certificate_pem)?;
            let online = blocking(|| authority::issuing_ca_for(&self.store, &der)).is_ok();
            root_list.push(json!({
                "fingerprint": r.fingerprint,
                "subject": r.subject,
                "not_after": r.not_after,
                "added_at": r.added_at,
                "key_online": online,
                "in_use_until": self.root_in_use_until(r, now)?.map(rfc3339),
            }));
        }
        let mut inters = Vec::new();
        for rec in self.state.intermediates()? {
            let der = record_der(&rec)?;
            inters.push(json!({
                "key_id": rec.key_id.to_string(),
                "subject": rec.subject,
                "status": rec.status,
                "not_after": rec.not_after,
                "installed_at": rec.installed_at,
                "activated_at": rec.activated_at,
                "retired_at": rec.retired_at,
                "root": self.root_of(&der)?.map(|r| r.fingerprint),
                "fingerprint": fingerprint_id(&der),
                "serial": serial_of(&der)?,
            }));
        }
        Ok(json!({
            "trust_domain": self.config.trust_domain,
            "bundle_sequence": self.state.bundle_sequence()?,
            "roots": root_list,
            "intermediates": inters,
        }))
    }

    /// Until when certificates anchored at `root` may still be in use: the last issuance under
    /// it plus the longest workload TTL and the clock skew. `None`: nothing was issued under it.
    /// An active intermediate under it means "now and on".
    pub fn root_in_use_until(
        &self,
        root: &RootRecord,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, ApiError> {
        let root_der = first_cert(&root.certificate_pem)?;
        let margin = self.config.workload.max_ttl + self.config.workload.clock_skew;
        let mut until: Option<OffsetDateTime> = None;
        for rec in self.state.intermediates()? {
            let der = record_der(&rec)?;
            if check_issued_by(&der, &root_der).is_err() {
                continue;
            }
            let last = match rec.status {
                IntermediateStatus::Active => Some(now),
                IntermediateStatus::Retired => rec.retired_at.as_deref().and_then(parse_time),
                IntermediateStatus::Prepared => None,
            };
            if let Some(last) = last {
                let end = last + margin;
                until = Some(until.map_or(end, |u| u.max(end)));
            }
        }
        Ok(until)
    }

    /// Generates the next intermediate key in the device and returns its CSR.
    pub async fn new_intermediate(&self, caller: &Caller) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let now = OffsetDateTime::now_utc();
        let (info, csr) =
            blocking(|| authority::new_intermediate_csr(&self.store, &self.config, now))?;
        self.record(AuditEvent::KeyGenerated {
            actor: caller.identity.clone(),
            key_id: info.id.to_string(),
            algorithm: info
                .algorithm
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
            label: info.label.clone(),
        })
        .await?;
        Ok(json!({"key_id": info.id.to_string(), "csr_pem": csr}))
    }

    /// Signs an intermediate CSR with a root whose key is in this device.
    pub async fn sign_intermediate(
        &self,
        caller: &Caller,
        csr_pem: &str,
        root: Option<&str>,
    ) -> Result<Value, ApiError> {
        let now = OffsetDateTime::now_utc();
        let csr = crate::ca::csr::parse_csr(csr_pem.as_bytes()).map_err(ApiError::from)?;
        let roots = self.roots()?;
        let candidates: Vec<&RootRecord> = match root {
            Some(fp) => roots.iter().filter(|r| r.fingerprint == fp).collect(),
            None => roots.iter().rev().collect(),
        };
        if candidates.is_empty() {
            return Err(ApiError::not_found(format!(
                "no root {} in the trust bundle",
                root.unwrap_or("")
            )));
        }
        let mut signer: Option<(IssuingCa, &RootRecord)> = None;
        for r in candidates {
            let der = first_cert(&r.certificate_pem)?;
            match blocking(|| authority::issuing_ca_for(&self.store, &der)) {
                Ok(ca) => {
                    signer = Some((ca, r));
                    break;
                }
                Err(AuthorityError::NoMatchingKey(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let (root_ca, record) = signer.ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "key_not_in_device",
                "no root key for this request is in the device; sign the CSR in a ceremony",
            )
        })?;
        let cert = blocking(|| authority::sign_intermediate(&root_ca, &csr, &self.config, now))?;
        let serial = self
            .record_ca_issued(
                caller,
                &cert.der,
                "admin:sign-intermediate",
                root_ca.key().id(),
            )
            .await?;
        Ok(json!({
            "certificate_pem": certificate_pem(&cert.der),
            "serial": serial,
            "root": record.fingerprint,
        }))
    }

    /// Audits a CA certificate signed here (an intermediate or a cross-certificate), with its
    /// key fingerprint in the same form as workload issuances; returns its serial.
    async fn record_ca_issued(
        &self,
        caller: &Caller,
        der: &[u8],
        method: &str,
        ca_key: &KeyId,
    ) -> Result<String, ApiError> {
        let parsed = parse_certificate(der).map_err(ApiError::from)?;
        let serial = serial_hex(parsed.raw_serial());
        self.record(AuditEvent::Issued {
            serial: serial.clone(),
            identity: parsed.subject().to_string(),
            caller: caller.identity.clone(),
            method: method.into(),
            ca_key: ca_key.to_string(),
            not_before: rfc3339(parsed.validity().not_before.to_datetime()),
            not_after: rfc3339(parsed.validity().not_after.to_datetime()),
            csr_key_sha256: crate::ca::fingerprint(parsed.public_key().raw),
            certificate_sha256: Some(crate::ca::fingerprint_id(der)),
        })
        .await?;
        Ok(serial)
    }

    /// Installs a signed intermediate (prepared; active when it is the first).
    pub async fn install(&self, caller: &Caller, pem_text: &str) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let der = first_cert(pem_text)?;
        let now = OffsetDateTime::now_utc();
        let roots = self.roots_der()?;
        let record = blocking(|| {
            authority::install_intermediate(&self.store, &self.state, &roots, &der, now)
        })?;
        let parsed = parse_certificate(&der).map_err(ApiError::from)?;
        self.record(AuditEvent::CertificateInstalled {
            actor: caller.identity.clone(),
            key_id: record.key_id.to_string(),
            subject: record.subject.clone(),
            serial: serial_hex(parsed.raw_serial()),
            not_after: record.not_after.clone(),
            status: format!("{:?}", record.status).to_lowercase(),
        })
        .await?;
        if record.status == IntermediateStatus::Active {
            self.publish()?;
        }
        Ok(serde_json::to_value(&record).unwrap_or_default())
    }

    /// Whether activating `key_id` moves issuance to another root.
    fn activation_changes_root(&self, key_id: &KeyId) -> Result<bool, ApiError> {
        let next = self
            .state
            .intermediate(key_id)?
            .ok_or_else(|| ApiError::not_found(format!("no intermediate {key_id}")))?;
        let next_root = self.root_of(&record_der(&next)?)?;
        let current_root = match self.state.active()? {
            Some(active) => self.root_of(&record_der(&active)?)?,
            None => return Ok(false),
        };
        Ok(next_root.map(|r| r.fingerprint) != current_root.map(|r| r.fingerprint))
    }

    /// Asks to activate an intermediate; under a new root this may need approvals.
    pub async fn request_activation(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<Outcome, ApiError> {
        let id = key_id_checked(key_id)?;
        if self.activation_changes_root(&id)? {
            return self
                .gate(
                    caller,
                    Operation::ActivateNewRoot {
                        key_id: id.to_string(),
                    },
                )
                .await;
        }
        self.activate(caller, &id).await.map(Outcome::Done)
    }

    async fn activate(&self, caller: &Caller, id: &KeyId) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let now = OffsetDateTime::now_utc();
        let record = self
            .state
            .intermediate(id)?
            .ok_or_else(|| ApiError::not_found(format!("no intermediate {id}")))?;
        let der = record_der(&record)?;
        // Moving issuance to another root waits until that root has been served long enough.
        if self.activation_changes_root(id)? {
            self.check_propagated(id, &der)?;
        }
        if parse_certificate(&der)
            .map_err(ApiError::from)?
            .validity()
            .not_after
            .to_datetime()
            <= now
        {
            return Err(ApiError::refused(format!("intermediate {id} has expired")));
        }
        if self.is_revoked_intermediate(&record)? {
            return Err(ApiError::refused(format!("intermediate {id} is revoked")));
        }
        // The key must be usable before issuance switches to it.
        blocking(|| authority::issuing_ca_for(&self.store, &der))?;
        let (next, previous) = match self.state.activate(id, &rfc3339(now))? {
            Transition::Done(next, previous) => (next, previous),
            Transition::NotFound => {
                return Err(ApiError::not_found(format!("no intermediate {id}")))
            }
            Transition::Refused(why) => return Err(ApiError::refused(why)),
        };
        self.publish()?;
        self.record(AuditEvent::Activated {
            actor: caller.identity.clone(),
            key_id: id.to_string(),
            previous: previous.as_ref().map(|p| p.key_id.to_string()),
        })
        .await?;
        Ok(json!({"activated": next, "retired": previous}))
    }

    /// Retires a prepared intermediate.
    pub async fn retire(&self, caller: &Caller, key_id: &str) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let id = key_id_checked(key_id)?;
        let now = OffsetDateTime::now_utc();
        let record = match self.state.retire(&id, &rfc3339(now))? {
            Transition::Done(r, _) => *r,
            Transition::NotFound => {
                return Err(ApiError::not_found(format!("no intermediate {id}")))
            }
            Transition::Refused(why) => return Err(ApiError::refused(why)),
        };
        self.record(AuditEvent::Retired {
            actor: caller.identity.clone(),
            key_id: id.to_string(),
        })
        .await?;
        Ok(serde_json::to_value(&record).unwrap_or_default())
    }

    /// One step of automatic rotation: prepares the active intermediate's successor (a new key
    /// signed by the same root, whose key must be in this device) once `rotation.prepare_at` of
    /// its life has passed, and activates it after `rotation.activate_at`. Returns what it did.
    pub async fn auto_rotate_step(&self) -> Result<Option<String>, ApiError> {
        let actor = Caller {
            identity: "hsm-ca:auto-rotation".into(),
            roles: Vec::new(),
        };
        let Some(active) = self.state.active()? else {
            return Ok(None);
        };
        let der = record_der(&active)?;
        let (nb, na) = {
            let cert = parse_certificate(&der).map_err(ApiError::from)?;
            (
                cert.validity().not_before.to_datetime(),
                cert.validity().not_after.to_datetime(),
            )
        };
        let now = OffsetDateTime::now_utc();
        let elapsed = (now - nb).as_seconds_f64() / (na - nb).as_seconds_f64().max(1.0);
        let rotation = &self.config.rotation;
        if elapsed < rotation.prepare_at {
            return Ok(None);
        }
        let Some(root) = self.root_of(&der)? else {
            return Ok(None);
        };
        let mut successor = None;
        for rec in self.state.intermediates()? {
            if rec.status != IntermediateStatus::Prepared {
                continue;
            }
            let d = record_der(&rec)?;
            let fresh = parse_certificate(&d)
                .map(|c| c.validity().not_after.to_datetime() > na)
                .unwrap_or(false);
            if fresh && self.root_of(&d)?.map(|r| r.fingerprint) == Some(root.fingerprint.clone()) {
                successor = Some(rec.key_id.clone());
            }
        }
        match successor {
            Some(id) if elapsed >= rotation.activate_at => {
                self.activate(&actor, &id).await?;
                Ok(Some(format!("activated intermediate {id}")))
            }
            Some(_) => Ok(None),
            None => {
                let csr = self.new_intermediate(&actor).await?;
                let csr_pem = csr["csr_pem"].as_str().unwrap_or_default().to_string();
                let signed = self
                    .sign_intermediate(&actor, &csr_pem, Some(&root.fingerprint))
                    .await?;
                let pem = signed["certificate_pem"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let installed = self.install(&actor, &pem).await?;
                Ok(Some(format!(
                    "prepared intermediate {}",
                    installed["key_id"].as_str().unwrap_or_default()
                )))
            }
        }
    }

    /// Runs `op` now or files it for approvals, as the config says.
    pub async fn gate(&self, caller: &Caller, op: Operation) -> Result<Outcome, ApiError> {
        let forced = matches!(op, Operation::RootRemove { force: true, .. });
        let sensitive = forced || self.config.admin.sensitive.iter().any(|s| s == op.name());
        let threshold = self.config.admin.approval_threshold;
        if !sensitive || (threshold <= 1 && caller.has(Role::Officer)) {
            return self.execute(caller, &op).await.map(Outcome::Done);
        }
        self.precheck(&op)?;
        let now = OffsetDateTime::now_utc();
        let expires = now + self.config.admin.proposal_ttl;
        let id = hex::encode(KeyId::random().0);
        let mut approvals = BTreeSet::new();
        if caller.has(Role::Officer) {
            approvals.insert(caller.identity.clone());
        }
        let proposal = Proposal {
            id: id.clone(),
            operation: op.clone(),
            proposer: caller.identity.clone(),
            approvals,
            threshold,
            created_at: rfc3339(now),
            expires_at: rfc3339(expires),
            expires,
        };
        self.record(AuditEvent::Proposed {
            actor: caller.identity.clone(),
            proposal: id.clone(),
            operation: op.name().into(),
            threshold,
        })
        .await?;
        lock(&self.proposals).insert(id, proposal.clone());
        Ok(Outcome::Pending(Box::new(proposal)))
    }

    /// Open proposals (expired ones are dropped).
    pub fn proposals(&self) -> Vec<Proposal> {
        let now = OffsetDateTime::now_utc();
        let mut all = lock(&self.proposals);
        all.retain(|_, p| p.expires > now);
        all.values().cloned().collect()
    }

    /// An officer approves; the operation runs when the threshold is reached.
    pub async fn approve(&self, caller: &Caller, id: &str) -> Result<Outcome, ApiError> {
        let now = OffsetDateTime::now_utc();
        let (ready, approvals, threshold) = {
            let mut all = lock(&self.proposals);
            let Some(p) = all.get_mut(id) else {
                return Err(ApiError::not_found(format!("no open proposal {id}")));
            };
            if p.expires <= now {
                all.remove(id);
                return Err(ApiError::new(
                    axum::http::StatusCode::GONE,
                    "proposal_expired",
                    format!("proposal {id} expired; propose the operation again"),
                ));
            }
            if !p.approvals.insert(caller.identity.clone()) {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "already_approved",
                    format!("{} already approved proposal {id}", caller.identity),
                ));
            }
            let n = p.approvals.len() as u32;
            let ready = if n >= p.threshold {
                all.remove(id)
            } else {
                None
            };
            let pending = ready.is_none().then(|| all.get(id).cloned()).flatten();
            (ready.ok_or(pending), n, threshold_of(&self.config))
        };
        self.record(AuditEvent::Approved {
            actor: caller.identity.clone(),
            proposal: id.to_string(),
            approvals,
            threshold,
        })
        .await?;
        match ready {
            Ok(p) => self.execute(caller, &p.operation).await.map(Outcome::Done),
            Err(Some(p)) => Ok(Outcome::Pending(Box::new(p))),
            Err(None) => Err(ApiError::not_found(format!("no open proposal {id}"))),
        }
    }

    async fn execute(&self, caller: &Caller, op: &Operation) -> Result<Value, ApiError> {
        match op {
            Operation::RootAdd { certificate_pem } => self.add_root(caller, certificate_pem).await,
            Operation::RootRemove { fingerprint, force } => {
                self.remove_root(caller, fingerprint, *force).await
            }
            Operation::Revoke(req) => self.revoke(caller, req).await,
            Operation::ActivateNewRoot { key_id } => {
                self.activate(caller, &key_id_checked(key_id)?).await
            }
        }
    }

    /// A certificate that may enter the bundle: a self-signed, unexpired CA certificate.
    fn root_record(&self, pem_text: &str) -> Result<RootRecord, ApiError> {
        let der = first_cert(pem_text)?;
        let cert = parse_certificate(&der).map_err(ApiError::from)?;
        if !cert.is_ca() {
            return Err(
                CaError::Chain(format!("{} is not a CA certificate", cert.subject())).into(),
            );
        }
        check_issued_by(&der, &der).map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "chain_invalid",
                format!("{} is not a self-signed root", cert.subject()),
            )
        })?;
        let now = OffsetDateTime::now_utc();
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= now {
            return Err(ApiError::refused(format!("{} has expired", cert.subject())));
        }
        Ok(RootRecord {
            version: crate::state::RECORD_VERSION,
            fingerprint: fingerprint_id(&der),
            certificate_pem: certificate_pem(&der),
            subject: cert.subject().to_string(),
            not_after: rfc3339(not_after),
            added_at: rfc3339(now),
        })
    }

    /// Checks an operation's input before it is filed for approvals, so officers are never
    /// asked to approve something that cannot run.
    fn precheck(&self, op: &Operation) -> Result<(), ApiError> {
        match op {
            Operation::RootAdd { certificate_pem } => {
                let record = self.root_record(certificate_pem)?;
                if self
                    .roots()?
                    .iter()
                    .any(|r| r.fingerprint == record.fingerprint)
                {
                    return Err(ApiError::new(
                        axum::http::StatusCode::CONFLICT,
                        "exists",
                        format!("root {} is in the bundle already", record.fingerprint),
                    ));
                }
            }
            Operation::RootRemove { fingerprint, force } => {
                self.check_removable(fingerprint, *force)?;
            }
            Operation::Revoke(req) => {
                match (&req.intermediate, &req.serial) {
                    (Some(id), None) => {
                        let id = key_id_checked(id)?;
                        if self.state.intermediate(&id)?.is_none() {
                            return Err(ApiError::not_found(format!("no intermediate {id}")));
                        }
                    }
                    (None, Some(serial)) => {
                        normalize_serial(serial)?;
                        if let Some(id) = &req.issuer {
                            let id = key_id_checked(id)?;
                            if self.state.intermediate(&id)?.is_none() {
                                return Err(ApiError::not_found(format!("no intermediate {id}")));
                            }
                        }
                    }
                    _ => return Err(ApiError::bad_request(
                        "give either \"serial\" (with an optional \"issuer\") or \"intermediate\"",
                    )),
                }
            }
            Operation::ActivateNewRoot { key_id } => {
                let id = key_id_checked(key_id)?;
                let record = self
                    .state
                    .intermediate(&id)?
                    .ok_or_else(|| ApiError::not_found(format!("no intermediate {id}")))?;
                self.check_propagated(&id, &record_der(&record)?)?;
            }
        }
        Ok(())
    }

    /// Refuses while the root above `der` has not been served in the bundle for the
    /// configured propagation window.
    fn check_propagated(&self, id: &KeyId, der: &[u8]) -> Result<(), ApiError> {
        let now = OffsetDateTime::now_utc();
        let root = self.root_of(der)?.ok_or_else(|| {
            ApiError::refused(format!(
                "intermediate {id} does not chain to a root in the trust bundle"
            ))
        })?;
        let added = parse_time(&root.added_at).unwrap_or(now);
        let ready_at = added + self.config.admin.propagation_window;
        if now < ready_at {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "propagation_window",
                format!(
                    "root {} entered the trust bundle at {}; intermediates under it can be \
                     activated from {} (admin.propagation_window_secs)",
                    root.fingerprint,
                    root.added_at,
                    rfc3339(ready_at)
                ),
            ));
        }
        Ok(())
    }

    async fn add_root(&self, caller: &Caller, pem_text: &str) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let record = self.root_record(pem_text)?;
        if !self.state.add_root(record.clone())? {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "exists",
                format!("root {} is in the bundle already", record.fingerprint),
            ));
        }
        self.publish()?;
        self.record(AuditEvent::RootAdded {
            actor: caller.identity.clone(),
            fingerprint: record.fingerprint.clone(),
            subject: record.subject.clone(),
            not_after: record.not_after.clone(),
        })
        .await?;
        Ok(json!({"root": record, "bundle_sequence": self.state.bundle_sequence()?}))
    }

    /// Refuses to remove a root that is not in the bundle, is the last one, anchors the active
    /// intermediate, or (unless forced) may still anchor leaves in use.
    fn check_removable(&self, fingerprint: &str, force: bool) -> Result<(), ApiError> {
        let roots = self.roots()?;
        let Some(root) = roots.iter().find(|r| r.fingerprint == fingerprint) else {
            return Err(ApiError::not_found(format!(
                "no root {fingerprint} in the bundle"
            )));
        };
        if roots.len() == 1 {
            return Err(ApiError::refused(
                "the last root of the bundle cannot be removed",
            ));
        }
        let root_der = first_cert(&root.certificate_pem)?;
        if let Some(active) = self.state.active()? {
            if check_issued_by(&record_der(&active)?, &root_der).is_ok() {
                return Err(ApiError::refused(format!(
                    "the active intermediate {} chains to root {fingerprint}; activate one \
                     under another root first",
                    active.key_id
                )));
            }
        }
        let now = OffsetDateTime::now_utc();
        if let Some(until) = self.root_in_use_until(root, now)? {
            if now < until && !force {
                return Err(ApiError::new(
                    axum::http::StatusCode::CONFLICT,
                    "root_in_use",
                    format!(
                        "certificates anchored at root {fingerprint} may be in use until {} \
                         (last issuance + workload.max_ttl_secs); remove it then, or force it \
                         with approval",
                        rfc3339(until)
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn remove_root(
        &self,
        caller: &Caller,
        fingerprint: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        self.check_removable(fingerprint, force)?;
        if !self.state.remove_root(fingerprint)? {
            return Err(ApiError::not_found(format!(
                "no root {fingerprint} in the bundle"
            )));
        }
        self.publish()?;
        self.record(AuditEvent::RootRemoved {
            actor: caller.identity.clone(),
            fingerprint: fingerprint.to_string(),
            forced: force,
        })
        .await?;
        Ok(json!({"removed": fingerprint, "bundle_sequence": self.state.bundle_sequence()?}))
    }

    /// The old root `by` cross-signs the new root `fingerprint` (both in the bundle, the old
    /// root's key in this device).
    pub async fn cross_sign(
        &self,
        caller: &Caller,
        fingerprint: &str,
        by: &str,
    ) -> Result<Value, ApiError> {
        let roots = self.roots()?;
        let find = |fp: &str| {
            roots
                .iter()
                .find(|r| r.fingerprint == fp)
                .ok_or_else(|| ApiError::not_found(format!("no root {fp} in the bundle")))
        };
        let subject = first_cert(&find(fingerprint)?.certificate_pem)?;
        let signer_der = first_cert(&find(by)?.certificate_pem)?;
        if fingerprint == by {
            return Err(ApiError::bad_request("a root does not cross-sign itself"));
        }
        let signer = blocking(|| authority::issuing_ca_for(&self.store, &signer_der))?;
        let now = OffsetDateTime::now_utc();
        let cert = blocking(|| signer.cross_sign(&subject, now)).map_err(ApiError::from)?;
        check_issued_by(&cert.der, &signer_der).map_err(ApiError::from)?;
        let serial = self
            .record_ca_issued(caller, &cert.der, "admin:cross-sign", signer.key().id())
            .await?;
        Ok(json!({"certificate_pem": certificate_pem(&cert.der), "serial": serial}))
    }

    fn is_revoked_intermediate(&self, record: &IntermediateRecord) -> Result<bool, ApiError> {
        let der = record_der(record)?;
        let Some(root) = self.root_of(&der)? else {
            return Ok(false);
        };
        let serial = serial_of(&der)?;
        Ok(self
            .state
            .revocations(&root.fingerprint)?
            .iter()
            .any(|r| r.serial == serial))
    }

    async fn revoke(&self, caller: &Caller, req: &RevokeRequest) -> Result<Value, ApiError> {
        let _g = self.changes.lock().await;
        let now = OffsetDateTime::now_utc();
        let reason = req.reason.clone().unwrap_or_else(|| "unspecified".into());
        let (issuer_fp, serial) = match (&req.intermediate, &req.serial) {
            (Some(id), None) => {
                let id = key_id_checked(id)?;
                let record = self
                    .state
                    .intermediate(&id)?
                    .ok_or_else(|| ApiError::not_found(format!("no intermediate {id}")))?;
                if record.status == IntermediateStatus::Active {
                    return Err(ApiError::refused(format!(
                        "{id} is the active intermediate; activate a successor before revoking it"
                    )));
                }
                let der = record_der(&record)?;
                let root = self.root_of(&der)?.ok_or_else(|| {
                    ApiError::refused(format!("{id} does not chain to a root in the bundle"))
                })?;
                if record.status == IntermediateStatus::Prepared {
                    self.state.retire(&id, &rfc3339(now))?;
                }
                let serial = serial_of(&der)?;
                (root.fingerprint, serial)
            }
            (None, Some(serial)) => {
                let serial = normalize_serial(serial)?;
                let issuer = match &req.issuer {
                    Some(id) => self
                        .state
                        .intermediate(&key_id_checked(id)?)?
                        .ok_or_else(|| ApiError::not_found(format!("no intermediate {id}")))?,
                    None => self
                        .state
                        .active()?
                        .ok_or_else(|| ApiError::refused("no active intermediate"))?,
                };
                (fingerprint_id(&record_der(&issuer)?), serial)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give either \"serial\" (with an optional \"issuer\") or \"intermediate\"",
                ))
            }
        };
        let fresh = self.state.revoke(RevocationRecord {
            version: crate::state::RECORD_VERSION,
            issuer: issuer_fp.clone(),
            serial: serial.clone(),
            reason: reason.clone(),
            revoked_at: rfc3339(now),
        })?;
        if !fresh {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "exists",
                format!("serial {serial} of CA {issuer_fp} is revoked already"),
            ));
        }
        lock(&self.crls).remove(&issuer_fp);
        load_revocations(&self.revocations, &self.state, &self.roots_der()?)?;
        self.record(AuditEvent::Revoked {
            actor: caller.identity.clone(),
            issuer_key: issuer_fp.clone(),
            serial: serial.clone(),
            reason,
        })
        .await?;
        Ok(json!({"issuer": issuer_fp, "serial": serial, "crl": format!("/crl/{issuer_fp}.crl")}))
    }

    /// Imports a root's CRL signed offline (a ceremony's `root-crl.pem`). The root's signature
    /// is the authority: the revocations it lists were decided by the root's officer quorum,
    /// so no approvals are asked here. The CRL must be signed by a root in the bundle and be
    /// newer (by CRL number) than any imported before; it may not revoke the active
    /// intermediate (activate a successor first). Its entries join the appliance's
    /// revocations at once; a prepared intermediate it revokes is retired. Nothing is written
    /// when a check fails.
    pub async fn import_crl(&self, caller: &Caller, crl_pem: &str) -> Result<Value, ApiError> {
        let der = crl_der(crl_pem)?;
        let _g = self.changes.lock().await;
        let now = OffsetDateTime::now_utc();
        let crl = RootCrl::parse(&der, &self.roots()?)?;
        let root = &crl.root;
        if let Some(active) = self.state.active()? {
            if crl.lists(&record_der(&active)?)? {
                return Err(ApiError::refused(format!(
                    "this CRL revokes the active intermediate {}; activate a successor, then \
                     import it again",
                    active.key_id
                )));
            }
        }
        if let Some(stored) = self.state.imported_crl(&root.fingerprint)? {
            if stored.number >= crl.number {
                return Err(stale_crl(crl.number, stored.number));
            }
        }
        let mut retired = Vec::new();
        for record in self.state.intermediates()? {
            if record.status != IntermediateStatus::Prepared {
                continue;
            }
            if crl.lists(&record_der(&record)?)? {
                self.state.retire(&record.key_id, &rfc3339(now))?;
                retired.push(record.key_id.to_string());
            }
        }
        let mut newly_revoked = Vec::new();
        for entry in &crl.entries {
            let fresh = self.state.revoke(RevocationRecord {
                version: crate::state::RECORD_VERSION,
                issuer: root.fingerprint.clone(),
                serial: entry.serial.clone(),
                reason: entry.reason.to_string(),
                revoked_at: rfc3339(entry.revoked_at),
            })?;
            if fresh {
                newly_revoked.push(entry.serial.clone());
            }
        }
        let stored = self.state.store_imported_crl(crate::state::ImportedCrl {
            version: crate::state::RECORD_VERSION,
            issuer: root.fingerprint.clone(),
            number: crl.number,
            crl_pem: pem::encode(&pem::Pem::new("X509 CRL", der.clone())),
            this_update: rfc3339(crl.this_update),
            next_update: crl.next_update.map(rfc3339),
            imported_at: rfc3339(now),
        })?;
        if let Err(newer) = stored {
            return Err(stale_crl(crl.number, newer.number));
        }
        lock(&self.crls).remove(&root.fingerprint);
        load_revocations(&self.revocations, &self.state, &self.roots_der()?)?;
        self.record(AuditEvent::CrlImported {
            actor: caller.identity.clone(),
            issuer: root.fingerprint.clone(),
            number: crl.number,
            revoked: crl.entries.len() as u64,
            newly_revoked: newly_revoked.clone(),
        })
        .await?;
        Ok(json!({
            "issuer": root.fingerprint,
            "crl_number": crl.number,
            "revoked": crl.entries.len(),
            "newly_revoked": newly_revoked,
            "retired": retired,
            "next_update": crl.next_update.map(rfc3339),
        }))
    }

    /// Every CA certificate this appliance knows: bundle roots and installed intermediates.
    fn ca_certificates(&self) -> Result<Vec<Vec<u8>>, ApiError> {
        let mut all = self.roots_der()?;
        for rec in self.state.intermediates()? {
            all.push(record_der(&rec)?);
        }
        Ok(all)
    }

    /// The current CRL (DER) of the CA whose certificate fingerprint is `fp`, signed in the
    /// device. Re-signed when a revocation was added or at half its validity.
    pub fn crl(&self, fp: &str) -> Result<Vec<u8>, ApiError> {
        let now = OffsetDateTime::now_utc();
        let revoked = self.state.revocations(fp)?;
        if let Some(c) = lock(&self.crls).get(fp) {
            if c.entries == revoked.len() && now - c.made < CRL_VALIDITY / 2 {
                return Ok(c.der.clone());
            }
        }
        let ca_der = self
            .ca_certificates()?
            .into_iter()
            .find(|d| fingerprint_id(d) == fp)
            .ok_or_else(|| ApiError::not_found(format!("no CA certificate {fp}")))?;
        let ca = match blocking(|| authority::issuing_ca_for(&self.store, &ca_der)) {
            Ok(ca) => ca,
            Err(AuthorityError::NoMatchingKey(_)) => {
                // A root kept offline: serve the CRL its ceremony signed, once imported.
                return match self.state.imported_crl(fp)? {
                    Some(imported) => crl_der(&imported.crl_pem),
                    None => Err(ApiError::new(
                        axum::http::StatusCode::NOT_FOUND,
                        "key_not_in_device",
                        format!(
                            "the key of CA {fp} is not in this device; its CRL is signed \
                             offline (import it with POST /v1/crls)"
                        ),
                    )),
                };
            }
            Err(other) => return Err(other.into()),
        };
        let entries = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(&r.serial).unwrap_or_default();
                (serial, parse_time(&r.revoked_at).unwrap_or(now))
            })
            .collect::<Vec<_>>();
        let number = self.state.next_crl_number(fp)?;
        let der = blocking(|| ca.sign_crl(&entries, number, now, now + CRL_VALIDITY))
            .map_err(ApiError::from)?;
        lock(&self.crls).insert(
            fp.to_string(),
            CachedCrl {
                der: der.clone(),
                made: now,
                entries: revoked.len(),
            },
        );
        Ok(der)
    }

    /// Every CRL this device can sign, PEM-concatenated (Istio's `ca-crl.pem`).
    pub fn crl_bundle_pem(&self) -> Result<String, ApiError> {
        let mut out = String::new();
        for der in self.ca_certificates()? {
            let fp = fingerprint_id(&der);
            match self.crl(&fp) {
                Ok(crl) => out.push_str(&pem::encode(&pem::Pem::new("X509 CRL", crl))),
                Err(e) if e.code == "key_not_in_device" => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn stale_crl(number: u64, stored: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "stale_crl",
        format!("CRL number {number} is not newer than the imported CRL number {stored}"),
    )
}

/// The one CRL in `text` (PEM `X509 CRL`), as DER.
fn crl_der(text: &str) -> Result<Vec<u8>, ApiError> {
    let blocks = pem::parse_many(text.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("crl_pem is not PEM: {e}")))?;
    let mut crls: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "X509 CRL")
        .map(pem::Pem::into_contents)
        .collect();
    match crls.len() {
        1 => Ok(crls.remove(0)),
        0 => Err(ApiError::bad_request("no X509 CRL block in crl_pem")),
        n => Err(ApiError::bad_request(format!(
            "crl_pem holds {n} CRLs; send one"
        ))),
    }
}

/// One revoked certificate of an imported CRL.
struct CrlEntry {
    serial: String,
    reason: &'static str,
    revoked_at: OffsetDateTime,
}

/// A CRL checked against the trust bundle: which root signed it and what it revokes.
struct RootCrl {
    root: RootRecord,
    root_der: Vec<u8>,
    number: u64,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    entries: Vec<CrlEntry>,
}

impl RootCrl {
    fn parse(der: &[u8], roots: &[RootRecord]) -> Result<Self, ApiError> {
        let invalid =
            |why: String| ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_crl", why);
        let (rest, crl) =
            x509_parser::parse_x509_crl(der).map_err(|e| invalid(format!("not a CRL: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes after the CRL", rest.len())));
        }
        if let Some(ext) = crl.extensions().iter().find(|e| e.critical) {
            // A delta CRL, or one whose issuing distribution point limits its scope: neither
            // is the complete list a root ceremony signs.
            return Err(invalid(format!(
                "the CRL carries a critical extension {}; send the root's complete CRL",
                ext.oid
            )));
        }
        if crl
            .extensions()
            .iter()
            .any(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_DELTA_CRL_INDICATOR)
        {
            return Err(invalid("a delta CRL; send the root's complete CRL".into()));
        }
        let (root, root_der) = roots
            .iter()
            .find_map(|r| {
                let root_der = first_cert(&r.certificate_pem).ok()?;
                let cert = parse_certificate(&root_der).ok()?;
                let signed = cert.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(cert.public_key()).is_ok();
                signed.then(|| (r.clone(), root_der.clone()))
            })
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "chain_invalid",
                    format!(
                        "the CRL of {} is not signed by a root in the trust bundle",
                        crl.issuer()
                    ),
                )
            })?;
        let number = crl
            .crl_number()
            .map(|n| n.to_bytes_be())
            .filter(|b| b.len() <= 8)
            .map(|b| b.iter().fold(0u64, |n, byte| (n << 8) | u64::from(*byte)))
            .ok_or_else(|| invalid("the CRL has no CRL number (or one beyond 64 bits)".into()))?;
        if crl
            .iter_revoked_certificates()
            .any(|e| e.reason_code().is_some_and(|(_, code)| code.0 == 8))
        {
            return Err(invalid(
                "an entry says removeFromCRL, which only delta CRLs use; send the root's \
                 complete CRL"
                    .into(),
            ));
        }
        let entries = crl
            .iter_revoked_certificates()
            .map(|entry| CrlEntry {
                serial: serial_hex(entry.raw_serial()),
                reason: entry
                    .reason_code()
                    .map_or("unspecified", |(_, code)| reason_name(code.0)),
                revoked_at: entry.revocation_date.to_datetime(),
            })
            .collect();
        Ok(RootCrl {
            root,
            root_der,
            number,
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            entries,
        })
    }

    /// Whether this CRL revokes the CA certificate `der` (issued by its root).
    fn lists(&self, der: &[u8]) -> Result<bool, ApiError> {
        let serial = serial_of(der)?;
        Ok(self.entries.iter().any(|e| e.serial == serial)
            && check_issued_by(der, &self.root_der).is_ok())
    }
}

/// RFC 5280 CRLReason names, spelled as the ceremony spells them.
fn reason_name(code: u8) -> &'static str {
    match code {
        1 => "key-compromise",
        2 => "ca-compromise",
        3 => "affiliation-changed",
        4 => "superseded",
        5 => "cessation-of-operation",
        6 => "certificate-hold",
        9 => "privilege-withdrawn",
        10 => "aa-compromise",
        _ => "unspecified",
    }
}

fn threshold_of(config: &Config) -> u32 {
    config.admin.approval_threshold
}

fn key_id_checked(s: &str) -> Result<KeyId, ApiError> {
    key_id(s)
}

/// Lowercase hex without separators or leading zero bytes, as serials are audited.
fn normalize_serial(s: &str) -> Result<String, ApiError> {
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
    let bytes = hex::decode(&clean)
        .map_err(|_| ApiError::bad_request(format!("serial {s:?} is not hex")))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(ApiError::bad_request(format!(
            "serial {s:?} must be 1 to 20 bytes"
        )));
    }
    Ok(serial_hex(&bytes))
}

/// The bundle file (data_dir/trust-bundle.pem) the `bundle` command reads while the
/// appliance runs.
pub fn bundle_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("trust-bundle.pem")
}

fn write_bundle_file(config: &Config, roots: &[Vec<u8>]) -> Result<(), ApiError> {
    authority::write_file(
        &bundle_file(config),
        super::bundle::pem(roots).as_bytes(),
        true,
    )
    .map_err(ApiError::from)
}

/// The CAs admin client certificates must chain to: `admin.client_ca_files`, or else the
/// trust bundle.
pub fn admin_client_roots(
    config: &Config,
    bundle: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, AuthorityError> {
    if config.admin.client_ca_files.is_empty() {
        return Ok(bundle.to_vec());
    }
    let mut cas = Vec::new();
    for path in &config.admin.client_ca_files {
        cas.extend(authority::read_certificates(path)?);
    }
    Ok(cas)
}

/// Loads into `index` every bundle root (`roots`) and installed intermediate, and every
/// revocation recorded against them, for checking client certificates.
pub fn load_revocations(
    index: &Revocations,
    state: &CaState,
    roots: &[Vec<u8>],
) -> Result<(), AuthorityError> {
    let mut cas = roots.to_vec();
    for rec in state.intermediates()? {
        cas.extend(
            certificates_from_pem(rec.certificate_pem.as_bytes())?
                .into_iter()
                .next(),
        );
    }
    index.replace(&cas, &state.all_revocations()?);
    Ok(())
}

/// Seeds the bundle from the config's root files the first time, then publishes the file.
pub fn load_roots(config: &Config, state: &CaState) -> Result<Vec<Vec<u8>>, AuthorityError> {
    if state.roots()?.is_empty() {
        let now = rfc3339(OffsetDateTime::now_utc());
        for path in &config.root.certificates {
            for der in authority::read_certificates(path)? {
                let cert = parse_certificate(&der)?;
                state.add_root(RootRecord {
                    version: crate::state::RECORD_VERSION,
                    fingerprint: fingerprint_id(&der),
                    certificate_pem: certificate_pem(&der),
                    subject: cert.subject().to_string(),
                    not_after: rfc3339(cert.validity().not_after.to_datetime()),
                    added_at: now.clone(),
                })?;
            }
        }
    }
    let roots = state
        .roots()?
        .iter()
        .map(|r| {
            certificates_from_pem(r.certificate_pem.as_bytes())?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    AuthorityError::from(CaError::MalformedCertificate(format!(
                        "root record {} holds no certificate",
                        r.fingerprint
                    )))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    authority::write_file(
        &bundle_file(config),
        super::bundle::pem(&roots).as_bytes(),
        true,
    )?;
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalised_like_audited_ones() {
        assert_eq!(normalize_serial("00:AB:cd").expect("ok"), "abcd");
        assert_eq!(normalize_serial("abc").expect("ok"), "0abc");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial(&"ab".repeat(21)).is_err());
    }
}
