//! The running appliance: the issuance service on its TLS listener, the serving certificate
//! it renews itself, the admin API, the Vault API front door (when enabled) and automatic
//! rotation, wired to the trust plane
//! ([`crate::trust`]) and the control plane ([`crate::control`]).
//!
//! TLS is terminated here with tokio-rustls (tonic cannot take a reloadable rustls config);
//! both listeners accept within their connection limits and the process's descriptor budget
//! ([`crate::tls::accept`]), and each connection finishes its handshake on its own task, so a
//! slow client cannot hold up others, before it is handed to tonic or axum. `start` refuses admin
//! identities a workload certificate could carry unless the config says development
//! ([`check_admin_identities`]). This module starts and stops things; it must never decide a
//! state change (the control plane does) or build TLS configs itself (the trust plane does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{Authenticator, ClusterKeys};
use crate::authority::{self, AuthorityError};
use crate::ca::{profile, CaError};
use crate::clock::Clock;
use crate::config::Config;
use crate::control::Control;
use crate::issuance::edge::{RequestLimitsLayer, HEADER_CEILING};
use crate::issuance::{CertificateService, IssuanceRules, IssuerSnapshot, IssuerView};
use crate::keystore::KeyStore;
use crate::state::CaState;
use crate::tls::{self, DescriptorBudget, ServingCert};
use crate::trust::{self, TrustError, TrustPlane};

/// How long requests in flight may take to finish when the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cluster {cluster}: {reason}")]
    Cluster { cluster: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving certificate: {0}")]
    Serving(String),
    #[error(transparent)]
    Audit(crate::audit::AuditError),
    #[error("vault_api: {0}")]
    Vault(String),
    #[error("acme: {0}")]
    Acme(String),
    #[error("the shared state: {0}")]
    Control(String),
    #[error(
        "admin identity {0} lies in the workload trust domain and admin.client_ca_files is \
         empty: a workload certificate for it would open the admin API. Give the admin API its \
         own CA (admin.client_ca_files), or, for development only, set \
         admin.development_shared_ca = true"
    )]
    AdminInWorkloadDomain(String),
}

/// Refuses admin identities that a workload certificate could carry (in the workload trust
/// domain, with no admin CA of their own) unless `admin.development_shared_ca` allows them,
/// which is logged as a warning.
pub fn check_admin_identities(config: &Config) -> Result<(), ServerError> {
    if !config.admin.enabled || !config.admin.client_ca_files.is_empty() {
        return Ok(());
    }
    let shared = config.admin.users.keys().find(|id| {
        crate::auth::SpiffeId::parse(id).is_ok_and(|s| s.trust_domain() == config.trust_domain)
    });
    match shared {
        None => Ok(()),
        Some(id) if config.admin.development_shared_ca => {
            tracing::warn!(
                identity = %id,
                "admin.development_shared_ca = true: admin identities share the workload CA \
                 (development only; the issuance service still refuses to issue them)"
            );
            Ok(())
        }
        Some(id) => Err(ServerError::AdminInWorkloadDomain(id.clone())),
    }
}

/// A started appliance.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// Where the admin API listens (when enabled).
    pub admin_addr: Option<SocketAddr>,
    /// Where the plaintext `/metrics` listener listens (`[metrics] listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// Where the Vault API listens (when `[vault_api] enabled`).
    pub vault_addr: Option<SocketAddr>,
    /// Where the ACME server listens (when `[acme] enabled`).
    pub acme_addr: Option<SocketAddr>,
    pub view: Arc<IssuerView>,
    pub serving: Arc<ServingCert>,
    /// The control plane the admin API drives.
    pub control: Arc<Control>,
    audit: Option<Arc<AuditLog>>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    vault_task: Option<tokio::task::JoinHandle<()>>,
    acme_task: Option<tokio::task::JoinHandle<()>>,
    rotation: Option<tokio::task::JoinHandle<()>>,
    /// Publishes other nodes' changes of the shared state.
    follower: Option<tokio::task::JoinHandle<()>>,
    /// Ships the audit chain to the shared database.
    shipper: Option<tokio::task::JoinHandle<()>>,
    /// Takes and renews the leader lease and runs the leader-only jobs.
    leadership: Option<tokio::task::JoinHandle<()>>,
    renewal: tokio::task::JoinHandle<()>,
    key_refreshers: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting, lets requests in flight finish (up to [`SHUTDOWN_GRACE`]), and waits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        self.renewal.abort();
        for refresher in self.key_refreshers.drain(..) {
            refresher.abort();
        }
        if let Some(metrics) = self.metrics_task.take() {
            metrics.abort();
        }
        if let Some(task) = self.leadership.take() {
            task.abort();
            // Another node takes over at its next renewal instead of after the lease.
            if let CaState::Postgres(pg) = self.control.state() {
                let node = &self.control.config().node_id;
                if let Err(e) = pg.release_leadership(node).await {
                    tracing::warn!(error = %e, "the leadership was not released");
                }
                let report = crate::cluster::report(&self.control);
                if let Err(e) = pg.node_stopped(node, &report).await {
                    tracing::warn!(error = %e, "the node registry was not told of the stop");
                }
            }
        }
        for task in [
            self.rotation.take(),
            self.follower.take(),
            self.shipper.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
        for mut task in [self.vault_task.take(), self.acme_task.take()]
            .into_iter()
            .flatten()
        {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        if let Some(mut admin) = self.admin_task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut admin)
                .await
                .is_err()
            {
                tracing::warn!("admin connections still open after the grace period; closing them");
                admin.abort();
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period; closing them");
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.append(AuditEvent::Stopped {}).await {
                tracing::warn!(error = %e, "could not record the stop in the audit log");
            }
        }
    }

    /// Waits until the server stops on its own (an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Builds the authenticator from the config: reads every cluster's JWKS file and CA file;
/// keys fetched over HTTPS come with [`load_cluster_keys`].
pub fn authenticator(config: &Config) -> Result<Authenticator, ServerError> {
    let clusters = config
        .clusters
        .iter()
        .map(|c| {
            ClusterKeys::new(&c.id, &c.issuer, &c.audiences, c.keys.clone(), c.refresh)
                .map(Arc::new)
                .map_err(|reason| ServerError::Cluster {
                    cluster: c.id.clone(),
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Authenticator {
        trust_domain: config.trust_domain.clone(),
        clusters,
        registration_authorities: config.authorization.registration_authorities.clone(),
        trusted_node_accounts: config.authorization.trusted_node_accounts.clone(),
        verified_tokens: Default::default(),
        revocations: Default::default(),
    })
}

/// Fetches the keys of clusters served over HTTPS; a cluster whose server does not answer
/// starts without keys, refusing its tokens until a refresh succeeds.
pub async fn load_cluster_keys(auth: &Authenticator) {
    for keys in &auth.clusters {
        if keys.key_count() == 0 {
            if let Err(e) = keys.refresh().await {
                tracing::warn!(
                    cluster = %keys.id,
                    error = %e,
                    "cannot fetch the cluster's token keys; its tokens are refused until a \
                     refresh succeeds"
                );
            }
        }
    }
}

/// Issues a serving certificate from the current issuer, with a fresh in-memory key.
/// Returns the rustls key and the moment it should be renewed (half its life).
async fn issue_serving(
    view: &IssuerView,
    config: &Config,
) -> Result<(rustls::sign::CertifiedKey, OffsetDateTime), ServerError> {
    let issuer = view.load();
    let (key_der, spki) = {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ServerError::Serving(e.to_string()))?;
        (
            Zeroizing::new(key.serialize_der()),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    };
    let now = OffsetDateTime::now_utc();
    let (not_before, not_after) = profile::leaf_validity(
        now,
        config.server.serving_cert_ttl,
        config.workload.clock_skew,
        issuer.ca.not_after(),
    );
    let params = profile::server(
        &config.server.dns_names,
        &config.server.ip_addresses,
        not_before,
        not_after,
    )
    .map_err(AuthorityError::from)?;
    let cert = issuer
        .ca
        .sign_async(&params, &spki, now)
        .await
        .map_err(AuthorityError::from)?;
    let chain = vec![cert.der, issuer.ca.cert_der().to_vec()];
    let certified = tls::certified_key(&chain, &key_der)?;
    let renew_at = now + (not_after - now) / 2;
    Ok((certified, renew_at))
}

/// Loads the CA state and starts serving: the issuance service and, when enabled, the admin
/// API. Call inside a multi-threaded tokio runtime.
pub async fn start(
    config: Config,
    store: KeyStore,
    state: Arc<CaState>,
) -> Result<RunningServer, ServerError> {
    check_admin_identities(&config)?;
    let config = Arc::new(config);
    let clock = Clock::system();
    // On a shared database, roots are believed only when a member signed them.
    let audit_slot = Arc::new(std::sync::OnceLock::new());
    let known = trust::local_root_fingerprints(&config);
    crate::cluster::trust_rows(&state, &store, &config, &known, audit_slot.clone())
        .await
        .map_err(ServerError::Control)?;
    // Read before the state the appliance starts with: a change committed after it is
    // published by the follower, never missed.
    let start_sequence = state
        .change_sequence()
        .await
        .map_err(|e| ServerError::Control(e.to_string()))?;
    let roots = trust::load_roots(&config, &state, clock.now()).await?;
    let snapshot = state.snapshot().await.map_err(TrustError::from)?;
    let issuer = tokio::task::block_in_place(|| authority::issuer_of(&store, snapshot.active()))?;
    if issuer.not_after() <= clock.now() {
        return Err(
            AuthorityError::from(CaError::IssuerExpired(issuer.not_after().to_string())).into(),
        );
    }
    let view = Arc::new(IssuerView::new(IssuerSnapshot::new(issuer, roots.clone())));
    let auth = Arc::new(authenticator(&config)?);
    load_cluster_keys(&auth).await;

    let (first, mut renew_at) = issue_serving(&view, &config).await?;
    let serving = Arc::new(ServingCert::new(first));
    let trust = Arc::new(tokio::task::block_in_place(|| {
        TrustPlane::new(
            config.clone(),
            &snapshot,
            &roots,
            view.clone(),
            serving.clone(),
            auth.revocations.clone(),
        )
    })?);

    let listener = bind(config.server.listen).await?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.server.listen,
            source,
        })?;
    let admin_listener = if config.admin.enabled {
        Some(bind(config.admin.listen).await?)
    } else {
        None
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let vault_listener = if config.vault_api.enabled {
        let tls =
            crate::vault::tls(&trust, &config).map_err(|e| ServerError::Vault(e.to_string()))?;
        Some((bind(config.vault_api.listen).await?, tls))
    } else {
        None
    };
    let acme_listener = if config.acme.enabled {
        let tls =
            crate::acme::tls(&trust, &config).map_err(|e| ServerError::Acme(e.to_string()))?;
        Some((bind(config.acme.listen).await?, tls))
    } else {
        None
    };

    let budget = DescriptorBudget::from_process_limit();
    tracing::info!(
        descriptor_budget = budget.size(),
        grpc_max_connections = config.server.connections.max_connections,
        admin_max_connections = config.admin.connections.max_connections,
        "connection limits"
    );
    let conn_rx = tls::accept(
        "issuance",
        listener,
        trust.grpc_tls(),
        config.server.connections,
        budget.clone(),
    );
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(conn_rx),
        |(conn, _)| Ok::<_, std::io::Error>(conn),
    );

    let rules = IssuanceRules {
        admin_identities: config.admin.users.keys().cloned().collect(),
        trust_domain: config.trust_domain.clone(),
        default_ttl: config.workload.default_ttl,
        max_ttl: config.workload.max_ttl,
        clock_skew: config.workload.clock_skew,
    };
    let audit = if config.audit_enabled {
        let log = Arc::new(
            tokio::task::block_in_place(|| {
                AuditLog::open_signed(&config.data_dir, &store, config.audit)
            })
            .map_err(ServerError::Audit)?,
        );
        log.append(AuditEvent::Started {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(ServerError::Audit)?;
        Some(log)
    } else {
        tracing::warn!("audit.enabled = false: issuances are NOT recorded (measurement mode)");
        None
    };
    if let Some(log) = &audit {
        let _ = audit_slot.set(log.clone());
    }
    // On a shared database the chain is shipped there, before the first request is served
    // (with require_shipped, every answer waits for its record to arrive).
    let shipper = match &audit {
        Some(log) => crate::cluster::start_shipping(state.clone(), log.clone(), &config)
            .await
            .map_err(|e| ServerError::Control(e.to_string()))?,
        None => None,
    };
    let issuance_metrics = Arc::new(crate::metrics::IssuanceMetrics::default());
    let service = CertificateService::new(
        view.clone(),
        auth.clone(),
        rules,
        audit.clone(),
        issuance_metrics.clone(),
    )
    .into_server();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_max_header_list_size(HEADER_CEILING)
            .layer(RequestLimitsLayer::new(
                issuance_metrics.clone(),
                audit.clone(),
            ))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped(shutdown_rx.clone())),
    );

    let renew = trust.renewal();
    let control = Arc::new(
        Control::new(config.clone(), store, state, trust)
            .with_audit(audit.clone())
            .with_clock(clock),
    );
    control.warn_of_stuck_proposals().await;
    let (vault_addr, vault_task) = match vault_listener {
        Some((listener, tls)) => {
            let addr = listener.local_addr().ok();
            let api = crate::vault::VaultApi::new(control.clone(), auth.clone());
            let (stop, budget) = (stopped(shutdown_rx.clone()), budget.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = crate::vault::serve(api, tls, listener, budget, stop).await {
                    tracing::error!(error = %e, "the Vault API stopped");
                }
            });
            (addr, Some(task))
        }
        None => (None, None),
    };
    let auth_for_admin = auth.clone();
    let (acme_addr, acme_task) = match acme_listener {
        Some((listener, tls)) => {
            let addr = listener.local_addr().ok();
            let acme = crate::acme::AcmeServer::new(control.clone());
            let stop = stopped(shutdown_rx.clone());
            let limits = config.acme.connections;
            let listener =
                crate::admin::TlsListener::named("acme", listener, tls, limits, budget.clone())
                    .map_err(|e| ServerError::Acme(e.to_string()))?;
            let task = tokio::spawn(async move {
                if let Err(e) = crate::acme::serve(acme, listener, stop).await {
                    tracing::error!(error = %e, "the ACME server stopped");
                }
            });
            (addr, Some(task))
        }
        None => (None, None),
    };
    let (admin_addr, admin_task) = match admin_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let api =
                crate::admin::Api::new(control.clone(), issuance_metrics.clone(), auth_for_admin);
            let stop = stopped(shutdown_rx.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = crate::admin::serve(api, listener, budget, stop).await {
                    tracing::error!(error = %e, "the admin API stopped");
                }
            });
            (addr, Some(task))
        }
        None => (None, None),
    };

    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_task = metrics_listener.map(|listener| {
        let (ctl, stop, auth) = (control.clone(), stopped(shutdown_rx.clone()), auth.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::admin::serve_metrics(listener, ctl, issuance_metrics, auth, stop).await
            {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        })
    });

    // On a shared database the leader-only jobs run on one node (the lease holder), fenced.
    let leadership = crate::cluster::spawn_leadership(control.clone());
    let rotation = (config.rotation.auto && leadership.is_none()).then(|| {
        let (ctl, every) = (control.clone(), config.rotation.check_interval);
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                crate::control::log_rotation_step(ctl.auto_rotate_step().await, &mut warned);
            }
        })
    });

    // On a shared database, other nodes' trust changes (roots, revocations, intermediates)
    // are published here as they commit.
    let follower = start_sequence.map(|seen| crate::cluster::spawn_follower(control.clone(), seen));

    let renewal = {
        let (view, config, serving) = (view.clone(), config.clone(), serving.clone());
        tokio::spawn(async move {
            loop {
                let wait = (renew_at - OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
                    .max(Duration::from_millis(500));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // The issuer changed: serve a certificate from the new one right away.
                    _ = renew.notified() => {}
                }
                match issue_serving(&view, &config).await {
                    Ok((next, at)) => {
                        serving.replace(next);
                        renew_at = at;
                        tracing::info!("serving certificate renewed");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate renewal failed; retrying");
                        renew_at = OffsetDateTime::now_utc() + time::Duration::seconds(5);
                    }
                }
            }
        })
    };

    let key_refreshers = auth
        .clusters
        .iter()
        .map(|k| k.clone().spawn_refresher())
        .collect();
    Ok(RunningServer {
        local_addr,
        admin_addr,
        metrics_addr,
        vault_addr,
        acme_addr,
        view,
        serving,
        control,
        audit,
        shutdown: Some(shutdown_tx),
        task,
        admin_task,
        metrics_task,
        vault_task,
        acme_task,
        rotation,
        follower,
        shipper,
        leadership,
        renewal,
        key_refreshers,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}
