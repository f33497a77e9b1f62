//! `hsm-ca serve`: the production appliance served until SIGTERM or Ctrl-C, and the serving
//! loop the dev appliance shares. Never sets anything up: the keystore, state and intermediate
//! must exist.

use std::path::Path;

use super::CliError;
use crate::config::Config;
use crate::keystore;
use crate::state::CaState;

/// The production appliance: the config's keystore, state and audit log, served until stopped.
pub fn serve(config_path: &Path, listen: Option<std::net::SocketAddr>) -> Result<(), CliError> {
    let mut config = Config::load(config_path)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let store = keystore::open(&config.keystore)?;
    let runtime = runtime()?;
    let state = runtime.block_on(CaState::connect(
        &config.store_backend,
        &config.data_dir,
        config.store_cache_bytes,
    ))?;
    if runtime.block_on(state.active())?.is_none() {
        return Err(CliError::Message(
            "no intermediate is installed: `hsm-ca intermediate new`, have it signed in a \
             ceremony, then `hsm-ca intermediate install`"
                .into(),
        ));
    }
    run_appliance(runtime, config, store, state, |server| {
        let metrics = server
            .metrics_addr
            .map(|a| format!("Plaintext /metrics on {a}\n"))
            .unwrap_or_default();
        format!(
            "Serving istio.v1.auth.IstioCertificateService on {}\nAdmin API on {}\n{metrics}",
            server.local_addr,
            server
                .admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(disabled)".into())
        )
    })
}

/// The runtime the appliance serves on (the CA state's connections live on it too).
pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Message(format!("cannot start the runtime: {e}")))
}

/// Starts the appliance on `runtime` and serves until Ctrl-C or SIGTERM; `banner` says where
/// it listens.
pub(super) fn run_appliance(
    runtime: tokio::runtime::Runtime,
    config: Config,
    store: keystore::KeyStore,
    state: CaState,
    banner: impl FnOnce(&crate::server::RunningServer) -> String,
) -> Result<(), CliError> {
    #[cfg(feature = "profile")]
    let profile = crate::profile::Profile::from_env();
    let served = runtime.block_on(async move {
        let mut server = crate::server::start(config, store, std::sync::Arc::new(state))
            .await
            .map_err(|e| CliError::Message(e.to_string()))?;
        // SIGTERM is caught before the banner says we serve: a stop sent right after it is a
        // clean stop.
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::Message(e.to_string()))?;
        // Whoever started us may stop reading stdout once it knows the address: a closed
        // pipe must not take the appliance down, so write errors are ignored here.
        use std::io::Write;
        let banner = banner(&server);
        let mut out = std::io::stdout();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
            r = server.wait() => {
                return r.map_err(|e| CliError::Message(format!("server stopped: {e}")));
            }
        }
        let _ = writeln!(std::io::stdout(), "Stopping.");
        server.shutdown().await;
        Ok(())
    });
    #[cfg(feature = "profile")]
    if let Some(profile) = profile {
        profile.finish();
    }
    served
}
