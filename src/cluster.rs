//! What an appliance does because others share its database: it ships its audit chain to
//! PostgreSQL under its node id, so the records of every node are in one place (for
//! `hsm-ca audit verify --database`, for revoking a leaf through any node, and against a lost
//! disk), and with `[audit] require_shipped` it answers only once its record is there.
//!
//! A certificate still leaves only after its record is durable on the node's own disk; the
//! shipper follows behind (woken by every append that waits for it, otherwise every
//! [`SHIP_INTERVAL`]), in batches, idempotently by (node, sequence number). A node whose local
//! chain does not continue the one shipped under its id (a lost or restored disk, two
//! appliances with one `node_id`) refuses to start rather than fork the database copy.
//!
//! It also follows the other nodes' trust changes ([`spawn_follower`]) and runs the leader-only
//! jobs on one node at a time ([`spawn_leadership`]): a lease in the database with an epoch
//! that fences the leader's writes.
//!
//! It must never ship a record that is not durable on the node, never overwrite one that was
//! shipped, and never run a leader-only job unfenced on a shared database.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{AuditEvent, AuditLog, ShipGate, ShippingStatus};
use crate::config::Config;
use crate::control::Control;
use crate::keystore::{KeyAlgorithm, KeyInfo, KeyRequest, KeyStore, SignatureScheme};
use crate::state::postgres::{NodeReport, ShippedRecord};
use crate::state::rows::{OnReject, RowSign, RowTrust};
use crate::state::{CaState, Fence, PgState, StateError};

/// How often the shipper looks for new records when no append woke it.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(200);

/// The file in the data directory that keeps the newest seal this node has seen per table
/// (sequence and digest: a database rolled back below it, or forked, is refused, also after
/// a restart).
pub const SEALS_SEEN_FILE: &str = "seals-seen.json";

/// Most records in one shipment.
const BATCH: usize = 500;

/// Why shipping cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(
        "node {node}: the audit chain in the database does not continue this node's chain \
         (record {seq} differs or is missing here); a node that lost its disk, or a second \
         appliance, needs its own node_id"
    )]
    Diverged { node: String, seq: u64 },
}

/// Starts shipping `audit` to the database of `state` when it is PostgreSQL (`None` on sled).
/// Registers the node and its audit key, checks that the local chain continues the shipped
/// one, and, with `require_shipped`, makes every append wait for its record to be shipped.
pub async fn start_shipping(
    state: Arc<CaState>,
    audit: Arc<AuditLog>,
    config: &Config,
) -> Result<Option<tokio::task::JoinHandle<()>>, ShipError> {
    let CaState::Postgres(pg) = state.as_ref() else {
        return Ok(None);
    };
    let node = config.node_id.clone();
    let public_key = audit.key().map(|k| k.public_pem());
    pg.register_audit_node(&node, public_key.as_deref()).await?;
    let shipped = match pg.audit_shipped_head(&node).await? {
        None => 0,
        Some((seq, stored)) => {
            let local = tokio::task::block_in_place(|| audit.stored_page(seq, 1))?;
            match local.first() {
                Some((record, bytes)) if record.seq == seq && *bytes == stored => seq,
                _ => return Err(ShipError::Diverged { node, seq }),
            }
        }
    };
    let status = audit.shipping_status();
    status.shipped.store(shipped, Ordering::Relaxed);
    let (shipped_tx, shipped_rx) = tokio::sync::watch::channel(shipped);
    let wake = Arc::new(tokio::sync::Notify::new());
    if config.audit_shipping.require_shipped {
        audit.require_shipped(ShipGate {
            shipped: shipped_rx,
            wake: wake.clone(),
            timeout: config.audit_shipping.timeout,
        });
    }
    tracing::info!(node = %node, shipped, "shipping the audit chain to the shared database");
    Ok(Some(tokio::spawn(async move {
        let CaState::Postgres(pg) = state.as_ref() else {
            return;
        };
        let mut next = shipped + 1;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SHIP_INTERVAL) => {}
                _ = wake.notified() => {}
            }
            match ship_pending(pg, &audit, &node, next).await {
                Ok(last) => {
                    if last >= next {
                        next = last + 1;
                        status.shipped.store(last, Ordering::Relaxed);
                        shipped_tx.send_replace(last);
                    }
                    if crate::control::lock(&status.failing).take().is_some() {
                        tracing::info!(node = %node, "audit shipping works again");
                    }
                }
                Err(e) => {
                    status.failures.fetch_add(1, Ordering::Relaxed);
                    let mut failing = crate::control::lock(&status.failing);
                    if failing.is_none() {
                        tracing::warn!(error = %e, "audit records cannot be shipped; retrying");
                    }
                    let since = failing.as_ref().map_or_else(Instant::now, |(_, t)| *t);
                    *failing = Some((e.to_string(), since));
                }
            }
        }
    })))
}

/// Ships every record from `from` on that is on the node's disk; returns the last sequence
/// number shipped (`from - 1` when there was none).
async fn ship_pending(
    pg: &PgState,
    audit: &AuditLog,
    node: &str,
    mut from: u64,
) -> Result<u64, ShipError> {
    loop {
        let page = tokio::task::block_in_place(|| audit.stored_page(from, BATCH))?;
        let Some((last, _)) = page.last() else {
            return Ok(from - 1);
        };
        let last = last.seq;
        let full = page.len() == BATCH;
        let records: Vec<ShippedRecord> = page
            .into_iter()
            .map(|(record, stored)| ShippedRecord {
                seq: record.seq,
                issued: match record.event {
                    AuditEvent::Issued { serial, ca_key, .. } => Some((ca_key, serial)),
                    _ => None,
                },
                stored,
            })
            .collect();
        pg.ship_audit(node, &records).await?;
        from = last + 1;
        if !full {
            return Ok(last);
        }
    }
}

/// How often a node on a shared database reads the change sequence when no notification woke
/// it (a trust change made on another node takes effect here within about this long at most).
pub const CHANGE_POLL: Duration = Duration::from_millis(500);

/// Aborts a task when dropped (a helper task that lives as long as its owner).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the other nodes' trust changes from sequence `seen` on: the change-sequence
/// trigger's notifications (on a connection of its own) wake it at once, and every
/// [`CHANGE_POLL`] it reads the sequence anyway, for a lost notification or a broken listening
/// connection; when the sequence moved, the state is published again.
pub fn spawn_follower(control: Arc<Control>, seen: u64) -> tokio::task::JoinHandle<()> {
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener = {
        let (ctl, wake) = (control.clone(), wake.clone());
        tokio::spawn(async move {
            let CaState::Postgres(pg) = ctl.state() else {
                return;
            };
            let mut failing = false;
            loop {
                match pg.listen_for_changes(&wake).await {
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "not listening for changes; polling");
                    }
                    Err(_) => {}
                    Ok(()) => failing = false,
                }
                tokio::time::sleep(CHANGE_POLL).await;
            }
        })
    };
    tokio::spawn(async move {
        let _listener = AbortOnDrop(listener);
        let mut seen = seen;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHANGE_POLL) => {}
                _ = wake.notified() => {}
            }
            match control.follow_changes(seen).await {
                Ok(now) => {
                    if failing {
                        tracing::info!("following the shared state's changes again");
                    }
                    if now != seen {
                        tracing::info!(sequence = now, "published a change made on another node");
                    }
                    failing = false;
                    seen = now;
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot follow the shared state's changes; retrying");
                }
                Err(_) => {}
            }
        }
    })
}

/// How long a leadership lasts unless renewed; another node takes over after it lapses.
pub const LEADER_LEASE: Duration = Duration::from_secs(10);

/// How often the leader renews its lease (and the others try to take it).
pub const LEADER_RENEW: Duration = Duration::from_secs(3);

/// What this node reports to the registry now.
pub fn report(control: &Control) -> NodeReport {
    NodeReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        active_intermediate: control.trust().view().load().ca.key().id().to_string(),
        roots: control
            .trust()
            .roots()
            .iter()
            .map(|der| crate::ca::fingerprint_id(der))
            .collect(),
        audit_shipped: control
            .audit()
            .and_then(|a| a.shipping())
            .map(|s| s.shipped.load(Ordering::Relaxed)),
        row_key_pem: match control.state() {
            CaState::Postgres(pg) => pg
                .row_trust()
                .map(|t| pem::encode(&pem::Pem::new("PUBLIC KEY", t.own_key().to_vec()))),
            CaState::Sled(_) => None,
        },
    }
}

/// The node's life among those sharing the database: every [`LEADER_RENEW`] it reports to the
/// node registry (heartbeat, version, active intermediate, roots served) and takes or renews
/// the leader lease; the holder runs the leader-only jobs (automatic rotation, every
/// `rotation.check_interval`) fenced by its epoch. `None` on sled.
pub fn spawn_leadership(control: Arc<Control>) -> Option<tokio::task::JoinHandle<()>> {
    if !matches!(control.state(), CaState::Postgres(_)) {
        return None;
    }
    Some(tokio::spawn(async move {
        let CaState::Postgres(pg) = control.state() else {
            return;
        };
        let node = control.config().node_id.clone();
        let rotation = control.config().rotation.clone();
        let own = control.config().own_intermediate;
        let mut leading: Option<u64> = None;
        let mut failing = false;
        let mut last_step: Option<Instant> = None;
        let mut rotation_warned = false;
        loop {
            if let Err(e) = pg.heartbeat(&node, &report(&control)).await {
                if !failing {
                    tracing::warn!(error = %e, "the node registry cannot be updated");
                }
            }
            match pg.acquire_leadership(&node, LEADER_LEASE).await {
                Ok(now) => {
                    failing = false;
                    if now != leading {
                        match now {
                            Some(epoch) => tracing::info!(node = %node, epoch, "this node leads"),
                            None => tracing::info!(node = %node, "another node leads"),
                        }
                        leading = now;
                    }
                }
                Err(e) => {
                    // Without the database no write can be fenced: stop leading.
                    leading = None;
                    if !failing {
                        tracing::warn!(error = %e, "cannot take or renew the leadership");
                    }
                    failing = true;
                }
            }
            let due = last_step.is_none_or(|t| t.elapsed() >= rotation.check_interval);
            if rotation.auto && due && (own || leading.is_some()) {
                last_step = Some(Instant::now());
                // A node's own intermediate is rotated by that node alone (its device holds
                // the keys); shared ones by the leader, fenced.
                let step = match leading.filter(|_| !own) {
                    Some(epoch) => {
                        let fence = Fence {
                            node: node.clone(),
                            epoch,
                        };
                        crate::state::fenced(fence, control.auto_rotate_step()).await
                    }
                    None => control.auto_rotate_step().await,
                };
                crate::control::log_rotation_step(step, &mut rotation_warned);
            }
            tokio::time::sleep(LEADER_RENEW).await;
        }
    }))
}

/// The label of each appliance's row-signing key in its device.
pub const ROW_KEY_LABEL: &str = "hsm-ca-node";

/// This appliance's row-signing key: found in the device by label, or made there.
pub fn row_key(store: &KeyStore) -> Result<KeyInfo, String> {
    row_keys(store).map(|(key, _)| key)
}

/// This appliance's row-signing key and the public halves of every row key in its device.
/// Appliances that share a device and start at once may each make one; all of them are this
/// device's, and every one of those appliances signs with the same (the lowest id).
fn row_keys(store: &KeyStore) -> Result<(KeyInfo, Vec<Vec<u8>>), String> {
    let list = || -> Result<Vec<KeyInfo>, String> {
        // A key another process is making at this moment can be unreadable for a moment.
        let mut attempt = 0;
        loop {
            match store.list_blocking() {
                Ok(keys) => {
                    let mut keys: Vec<KeyInfo> = keys
                        .into_iter()
                        .filter(|k| {
                            k.label == ROW_KEY_LABEL && k.algorithm == Some(KeyAlgorithm::EcdsaP256)
                        })
                        .collect();
                    keys.sort_by(|a, b| a.id.0.cmp(&b.id.0));
                    return Ok(keys);
                }
                Err(e) if attempt >= 5 => return Err(e.to_string()),
                Err(_) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    };
    let mut keys = list()?;
    if keys.is_empty() {
        store
            .generate_blocking(KeyRequest {
                algorithm: KeyAlgorithm::EcdsaP256,
                label: ROW_KEY_LABEL.into(),
            })
            .map_err(|e| format!("cannot create the row-signing key: {e}"))?;
        keys = list()?;
    }
    let all = keys.iter().map(|k| k.public_key.clone()).collect();
    let first = keys
        .into_iter()
        .next()
        .ok_or_else(|| "the row-signing key made in the device is not listed".to_string())?;
    Ok((first, all))
}

/// On a shared database: roots are signed with this appliance's device key from now on, and
/// only roots a member signed are believed (this appliance's key and `member_keys`). Unsigned
/// roots this appliance already trusts from its own files (`known`: their fingerprints) are
/// signed now. A rejected row is logged and, once `audit` holds the log, audited.
pub async fn trust_rows(
    state: &CaState,
    store: &KeyStore,
    config: &Config,
    known: &[String],
    audit: Arc<std::sync::OnceLock<Arc<AuditLog>>>,
) -> Result<(), String> {
    let CaState::Postgres(pg) = state else {
        return Ok(());
    };
    let (key, own) = tokio::task::block_in_place(|| row_keys(store))?;
    let (signer, id) = (store.clone(), key.id.clone());
    let sign: RowSign = Arc::new(move |message: &[u8]| {
        signer
            .sign_blocking(&id, SignatureScheme::EcdsaSha256, message)
            .map_err(|e| e.to_string())
    });
    let on_reject: OnReject = Arc::new(move |table: &str, key: &str| {
        if table == "seals" {
            tracing::error!(
                table = key,
                "a table does not match its seal (changed, deleted or rolled back by other \
                 means than an appliance): not read until it does"
            );
        } else {
            tracing::warn!(
                table,
                key,
                "ignored a row that no member signed (written into the database by other means)"
            );
        }
        let (Some(log), Ok(runtime)) = (audit.get(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (log, table, key) = (log.clone(), table.to_string(), key.to_string());
        runtime.spawn(async move {
            if let Err(e) = log
                .append(AuditEvent::StateRowRejected { table, key })
                .await
            {
                tracing::warn!(error = %e, "a rejected row was not audited");
            }
        });
    });
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let members: Vec<Vec<u8>> = own
        .into_iter()
        .filter(|k| *k != key.public_key)
        .chain(config.member_keys.iter().cloned())
        .collect();
    let trust = RowTrust::new(sign, &key.public_key, &members, on_reject)?
        .with_seen_file(config.data_dir.join(SEALS_SEEN_FILE))?;
    pg.trust_rows(Arc::new(trust));
    if config.own_intermediate {
        pg.own_intermediates(&config.node_id);
    }
    let adopted = pg.adopt_roots(known).await.map_err(|e| e.to_string())?;
    if adopted > 0 {
        tracing::info!(adopted, "signed the roots this appliance already trusted");
    }
    let sealed = pg.seal_unsealed().await.map_err(|e| e.to_string())?;
    if !sealed.is_empty() {
        tracing::info!(tables = ?sealed, "sealed the trust tables found without a seal");
    }
    Ok(())
}

/// One node's chain as the shared database holds it.
#[derive(Debug)]
pub struct ShippedChain {
    pub node: String,
    /// The node's audit public key as registered (PEM), if its log has one.
    pub public_key_pem: Option<String>,
    /// The records as JSON Lines, in sequence order.
    pub lines: String,
}

/// Every node's shipped chain, read from the database in pages.
pub async fn shipped_chains(pg: &PgState) -> Result<Vec<ShippedChain>, StateError> {
    const PAGE: i64 = 10_000;
    let mut chains = Vec::new();
    for (node, public_key_pem) in pg.audit_nodes().await? {
        let mut lines = String::new();
        let mut from = 1;
        loop {
            let page = pg.audit_records(&node, from, PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            let full = page.len() as i64 == PAGE;
            for (_, stored) in page {
                lines.push_str(&String::from_utf8_lossy(&stored));
                lines.push('\n');
            }
            if !full {
                break;
            }
        }
        chains.push(ShippedChain {
            node,
            public_key_pem,
            lines,
        });
    }
    Ok(chains)
}

/// Verifies one shipped chain: the hash links from its first record, and every checkpoint
/// against the node's registered key. (The key comes from the database too: compare its
/// fingerprint with the one the node itself shows, `GET /v1/audit/public-key`.)
pub fn verify_shipped(
    chain: &ShippedChain,
) -> Result<crate::audit::ChainSummary, crate::audit::AuditError> {
    let key = match &chain.public_key_pem {
        Some(pem_text) => Some(
            pem::parse(pem_text)
                .map_err(|e| crate::audit::AuditError::Key(format!("node {}: {e}", chain.node)))?
                .into_contents(),
        ),
        None => None,
    };
    let keys: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
    crate::audit::verify_lines(&chain.lines, &keys)
}

/// Why `/readyz` should report the shipping (empty when it keeps up): failing for longer than
/// `grace`, or more than `max_lag` records behind.
pub fn shipping_problem(
    status: &ShippingStatus,
    records: u64,
    grace: Duration,
    max_lag: u64,
) -> Option<String> {
    if let Some((error, since)) = crate::control::lock(&status.failing).as_ref() {
        if since.elapsed() >= grace {
            return Some(format!(
                "audit shipping has failed for {} s: {error}",
                since.elapsed().as_secs()
            ));
        }
    }
    let lag = records.saturating_sub(status.shipped.load(Ordering::Relaxed));
    (lag > max_lag).then(|| format!("audit shipping is {lag} records behind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reports_a_long_failure_or_a_long_lag() {
        let status = ShippingStatus::default();
        status.shipped.store(90, Ordering::Relaxed);
        assert_eq!(shipping_problem(&status, 100, Duration::ZERO, 10), None);
        assert!(shipping_problem(&status, 101, Duration::ZERO, 10)
            .is_some_and(|p| p.contains("11 records behind")));
        *crate::control::lock(&status.failing) = Some(("down".into(), Instant::now()));
        assert!(
            shipping_problem(&status, 95, Duration::ZERO, 10).is_some_and(|p| p.contains("down"))
        );
        assert_eq!(
            shipping_problem(&status, 95, Duration::from_secs(60), 10),
            None
        );
    }
}
