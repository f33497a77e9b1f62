//! `hsm-ca dev`: the arguments and the printing of the development appliance. The set-up
//! itself (token, first-start root and intermediate, swtpm, token signer) is [`crate::dev`].

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::keys::format_keys;
use super::serve::run_appliance;
use super::CliError;
use crate::authority;
use crate::ca::inspect;
use crate::config::Config;
use crate::dev::appliance::{self, DevDir};
use crate::dev::swtpm::{self, DevSwtpm};
use crate::keystore;
use crate::state::CaState;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Folder holding the token, config, certificates and state.
    #[arg(long, default_value = "hsm-ca-dev")]
    pub dir: PathBuf,
    /// SoftHSM PKCS#11 module (default: the first found of the usual locations).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Serve gRPC on this address instead of the config's (e.g. 127.0.0.1:0 for any free port).
    /// Unless --admin-listen is given too, the admin API then takes any free port on that IP.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve the admin API on this address instead of the config's.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Create or check the appliance, show it, and exit without serving.
    #[arg(long)]
    pub setup_only: bool,
    /// Where the online (intermediate) key lives: softhsm, or tpm (a swtpm the appliance
    /// starts and stops itself; the root stays in SoftHSM).
    #[arg(long, value_enum, default_value_t = DevBackend::Softhsm)]
    pub backend: DevBackend,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevBackend {
    Softhsm,
    Tpm,
}

pub fn run(args: DevArgs) -> Result<(), CliError> {
    let layout = DevDir::open(&args.dir, args.backend == DevBackend::Tpm)?;
    let (dir, config_path, created) = (&layout.dir, &layout.config_path, layout.created);
    // Stopped (by PID) when this function returns, i.e. when the appliance stops.
    let tpm = match args.backend {
        DevBackend::Tpm => Some(DevSwtpm::start(&layout.tpm_dir)?),
        DevBackend::Softhsm => None,
    };
    if created {
        let module = appliance::find_module(args.module)?;
        say!(
            "Creating a SoftHSM token, root and intermediate{} in {}",
            if tpm.is_some() { " (in a swtpm)" } else { "" },
            dir.display()
        );
        appliance::first_start(dir, &module, tpm.as_ref())?;
    } else if let Some(tpm) = &tpm {
        swtpm::set_tcti(config_path, &tpm.tcti())?;
    }
    if let Some(tpm) = &tpm {
        say!("swtpm (pid {}) at {}", tpm.pid(), tpm.tcti());
    }
    let (config, store, state, issuer) = layout.load()?;
    let now = OffsetDateTime::now_utc();

    say!(
        "hsm-ca dev appliance in {} ({})",
        dir.display(),
        if created { "new" } else { "reused" }
    );
    say!("Keystore: {}", store.describe());
    say!();
    say_raw!("{}", format_keys(&store.list_blocking()?));
    say!();
    say!(
        "Root (trust bundle {}):",
        config.root.certificates[0].display()
    );
    for der in authority::read_certificates(&config.root.certificates[0])? {
        say_raw!("{}", inspect::describe(&der, now)?);
    }
    say!();
    say!("Active intermediate:");
    say_raw!("{}", inspect::describe(issuer.cert_der(), now)?);
    say!();
    say!("Config: {}", config_path.display());
    if args.setup_only {
        return Ok(());
    }
    drop(issuer);
    let served = serve(config, store, state, (args.listen, args.admin_listen), dir);
    drop(tpm);
    served
}

fn serve(
    mut config: Config,
    store: keystore::KeyStore,
    state: CaState,
    (listen, admin_listen): (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
    dir: &Path,
) -> Result<(), CliError> {
    if let Some(addr) = listen {
        config.server.listen = addr;
        config.admin.listen = std::net::SocketAddr::new(addr.ip(), 0);
    }
    if let Some(addr) = admin_listen {
        config.admin.listen = addr;
    }
    let dir = dir.display().to_string();
    run_appliance(
        super::serve::runtime()?,
        config,
        store,
        state,
        move |server| {
            format!(
            "\nServing istio.v1.auth.IstioCertificateService on {addr} (TLS; server name localhost)\n\
             Admin API on https://{admin} (client certificate admin-cert.pem, key admin-key.pem)\n\
             Request a workload certificate from another shell:\n  \
             cargo run --quiet -- request --dev {dir} --addr {addr} --ns default --sa web --out web-certs\n\
             Stop with Ctrl-C.\n",
            addr = server.local_addr,
            admin = server
                .admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "(disabled)".into()),
        )
        },
    )
}
