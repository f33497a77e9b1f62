//! A cluster's token-signing keys, kept current while the appliance runs: read from a file
//! (re-read when it changes) or fetched over HTTPS from a JWKS URL or through OIDC discovery
//! (`<issuer>/.well-known/openid-configuration` names the `jwks_uri`, as the Kubernetes API
//! server serves `/openid/v1/jwks`). Refreshed every `refresh` and, at most once per
//! [`UNKNOWN_KID_MIN_INTERVAL`], when a token names a key id the set does not hold. A failed
//! refresh keeps the last good set and counts the failure.
//!
//! It must never log or return the bearer token it fetches with, and never replace a good set
//! with one that does not parse.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Deserialize;

use super::jwt::ClusterVerifier;
use super::spiffe::SpiffeId;
use super::AuthError;
use crate::https::{self, Request};
use crate::secret::SecretSource;

/// Least time between two refreshes asked for by tokens with an unknown key id.
pub const UNKNOWN_KID_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// How long one fetch (discovery and JWKS together) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a cluster's JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file, re-read when its content changes.
    File(PathBuf),
    /// Fetched over HTTPS.
    Https {
        endpoint: JwksEndpoint,
        /// Trust anchors (PEM) for the server's certificate.
        ca_file: PathBuf,
        /// A bearer token sent with each fetch (re-read each time: projected tokens rotate).
        token: Option<SecretSource>,
    },
}

/// Which HTTPS document names the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksEndpoint {
    /// The JWKS itself.
    Url(String),
    /// `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` is fetched.
    Discovery,
}

/// The current keys of one cluster and how they are refreshed.
pub struct ClusterKeys {
    pub id: String,
    issuer: String,
    audiences: Vec<String>,
    source: JwksSource,
    refresh: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    current: ArcSwapOption<ClusterVerifier>,
    /// SHA-256 of the JWKS document last loaded.
    digest: Mutex<Option<[u8; 32]>>,
    last_success_unix: AtomicI64,
    failures: AtomicU64,
    last_unknown_kid: Mutex<Option<Instant>>,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .field("keys", &self.key_count())
            .finish()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl ClusterKeys {
    /// Prepares a cluster's keys. A file is read now (and must hold a valid JWKS); for HTTPS
    /// the CA file is read now and the keys on the first [`ClusterKeys::refresh`].
    pub fn new(
        id: &str,
        issuer: &str,
        audiences: &[String],
        source: JwksSource,
        refresh: Duration,
    ) -> Result<Self, String> {
        let tls = match &source {
            JwksSource::File(_) => None,
            JwksSource::Https { ca_file, .. } => {
                let pem = std::fs::read(ca_file)
                    .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
                let roots = crate::ca::certificates_from_pem(&pem)
                    .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
                Some(https::client_tls(&roots, None).map_err(|e| format!("ca_file: {e}"))?)
            }
        };
        let keys = ClusterKeys {
            id: id.to_string(),
            issuer: issuer.to_string(),
            audiences: audiences.to_vec(),
            source,
            refresh,
            tls,
            current: ArcSwapOption::empty(),
            digest: Mutex::new(None),
            last_success_unix: AtomicI64::new(0),
            failures: AtomicU64::new(0),
            last_unknown_kid: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        };
        if let JwksSource::File(path) = &keys.source {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            keys.install(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(keys)
    }

    /// A cluster with a fixed key set (tests and tools).
    pub fn fixed(verifier: ClusterVerifier) -> Self {
        let keys = ClusterKeys {
            id: verifier.id.clone(),
            issuer: String::new(),
            audiences: Vec::new(),
            source: JwksSource::File(PathBuf::new()),
            refresh: Duration::MAX,
            tls: None,
            current: ArcSwapOption::empty(),
            digest: Mutex::new(None),
            last_success_unix: AtomicI64::new(now_unix()),
            failures: AtomicU64::new(0),
            last_unknown_kid: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
        };
        keys.current.store(Some(Arc::new(verifier)));
        keys
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// Keys in the current set (0 before the first successful load).
    pub fn key_count(&self) -> usize {
        self.current.load().as_ref().map_or(0, |v| v.key_count())
    }

    /// When the keys were last loaded or confirmed unchanged (Unix seconds; 0 never).
    pub fn last_success_unix(&self) -> i64 {
        self.last_success_unix.load(Ordering::Relaxed)
    }

    /// Refreshes that failed since the start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Verifies `token` against the current keys. A token naming a key id the set lacks asks
    /// for a refresh (rate limited) and is refused; the caller's retry meets the new set.
    pub fn verify_with_expiry(
        &self,
        token: &str,
        trust_domain: &str,
    ) -> Result<(SpiffeId, i64), AuthError> {
        let Some(verifier) = self.current.load_full() else {
            self.ask_refresh();
            return Err(AuthError::InvalidToken(format!(
                "the keys of cluster {} are not loaded yet",
                self.id
            )));
        };
        if let Ok(header) = jsonwebtoken::decode_header(token) {
            if let Some(kid) = header.kid.as_deref() {
                if !verifier.knows_kid(kid) {
                    self.ask_refresh();
                    return Err(AuthError::InvalidToken(format!(
                        "no key of cluster {} has the token's key id; the keys are being \
                         refreshed",
                        self.id
                    )));
                }
            }
        }
        verifier.verify_with_expiry(token, trust_domain)
    }

    /// Like [`ClusterKeys::verify_with_expiry`], without the expiry.
    pub fn verify(&self, token: &str, trust_domain: &str) -> Result<SpiffeId, AuthError> {
        self.verify_with_expiry(token, trust_domain)
            .map(|(id, _)| id)
    }

    fn ask_refresh(&self) {
        let mut last = self
            .last_unknown_kid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_MIN_INTERVAL) {
            *last = Some(Instant::now());
            self.wake.notify_one();
        }
    }

    /// Loads the keys from their source now. On failure the current set stays and the
    /// failure is counted.
    pub async fn refresh(&self) -> Result<(), String> {
        let result = match &self.source {
            // A small local file: read in place rather than on the blocking pool.
            JwksSource::File(path) => {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
            }
            JwksSource::Https {
                endpoint, token, ..
            } => self.fetch(endpoint, token.as_ref()).await,
        }
        .and_then(|text| self.install(&text));
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Parses `text` and makes it the current set unless it is the set already loaded.
    fn install(&self, text: &[u8]) -> Result<(), String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, text);
        let mut last = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().map(|d| d.as_slice()) != Some(digest.as_ref()) {
            let text = std::str::from_utf8(text).map_err(|_| "JWKS is not UTF-8".to_string())?;
            let verifier = ClusterVerifier::new(&self.id, &self.issuer, &self.audiences, text)?;
            let count = verifier.key_count();
            self.current.store(Some(Arc::new(verifier)));
            let mut d = [0u8; 32];
            d.copy_from_slice(digest.as_ref());
            *last = Some(d);
            tracing::info!(cluster = %self.id, keys = count, "cluster token keys loaded");
        }
        self.last_success_unix.store(now_unix(), Ordering::Relaxed);
        Ok(())
    }

    async fn fetch(
        &self,
        endpoint: &JwksEndpoint,
        token: Option<&SecretSource>,
    ) -> Result<Vec<u8>, String> {
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| "no TLS settings for an HTTPS source".to_string())?;
        let bearer = match token {
            Some(source) => Some(source.load().map_err(|e| format!("token_file: {e}"))?),
            None => None,
        };
        let get = |url: String| {
            let (tls, bearer) = (tls.clone(), bearer.clone());
            async move {
                let answer = https::send(
                    tls,
                    Request {
                        bearer: bearer.as_ref(),
                        ..Request::get(&url)
                    },
                    FETCH_TIMEOUT,
                )
                .await
                .map_err(|e| format!("{url}: {e}"))?;
                if answer.status != 200 {
                    return Err(format!("{url}: HTTP status {}", answer.status));
                }
                Ok(answer.body)
            }
        };
        let url = match endpoint {
            JwksEndpoint::Url(url) => url.clone(),
            JwksEndpoint::Discovery => {
                let at = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc: Discovery = serde_json::from_slice(&get(at.clone()).await?)
                    .map_err(|e| format!("{at}: not an OpenID configuration: {e}"))?;
                if doc.issuer != self.issuer {
                    return Err(format!(
                        "{at} names issuer {:?}, not {:?}",
                        doc.issuer, self.issuer
                    ));
                }
                doc.jwks_uri
            }
        };
        get(url).await
    }

    /// Refreshes every `refresh` and whenever a token asks, until the task is aborted. Logs a
    /// failure once per run of failures, and the recovery.
    pub fn spawn_refresher(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.refresh) => {}
                    _ = self.wake.notified() => {}
                }
                match self.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!(cluster = %self.id, "cluster token keys refreshed again");
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !failing {
                            tracing::warn!(
                                cluster = %self.id,
                                error = %e,
                                "cannot refresh the cluster's token keys; keeping the last good set"
                            );
                        }
                        failing = true;
                    }
                }
            }
        })
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
