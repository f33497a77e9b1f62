//! `hsm-ca acme eab create|list|revoke`: External Account Binding keys for the ACME front
//! door, written to the CA state the config names (with sled, while the appliance is
//! stopped; with PostgreSQL, at any time — or use the admin API's `/v1/acme/eab`). `create`
//! prints the key id and the MAC key once; nothing prints it again.

use std::path::Path;

use clap::Subcommand;

use super::commands::with_state;
use super::output::{print_json, OutputArgs};
use super::CliError;
use crate::acme::records::EabPolicy;
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum AcmeCommand {
    /// External Account Binding keys.
    #[command(subcommand)]
    Eab(EabCommand),
}

/// An EAB key's policy from the command line (`acme eab create`, `admin acme-eab-create`).
#[derive(clap::Args, Debug)]
pub struct EabPolicyArgs {
    /// DNS names under this suffix (and the suffix itself) may be ordered; repeatable.
    #[arg(long = "dns-suffix")]
    dns_suffixes: Vec<String>,
    /// This DNS name exactly may be ordered; repeatable.
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Wildcard names under an allowed suffix may be ordered.
    #[arg(long)]
    wildcards: bool,
    /// IP address identifiers may be ordered.
    #[arg(long)]
    ip: bool,
    /// Longest certificate lifetime, in seconds (default: `[acme] max_validity_secs`).
    #[arg(long)]
    max_validity_secs: Option<u64>,
    /// Certificates carry clientAuth besides serverAuth.
    #[arg(long)]
    client_auth: bool,
}

impl EabPolicyArgs {
    pub(super) fn policy(&self) -> EabPolicy {
        EabPolicy {
            dns_suffixes: self.dns_suffixes.clone(),
            dns_names: self.dns_names.clone(),
            wildcards: self.wildcards,
            ip: self.ip,
            max_validity_secs: self.max_validity_secs,
            client_auth: self.client_auth,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum EabCommand {
    /// Make a key with its policy; prints the key id and the MAC key (shown once).
    Create {
        #[command(flatten)]
        policy: EabPolicyArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the keys and their policies (never the MAC keys).
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a key: its accounts can order nothing more.
    Revoke {
        /// The key id.
        kid: String,
    },
}

fn failed(e: crate::acme::error::AcmeError) -> CliError {
    CliError::Message(e.to_string())
}

pub fn run(config_path: &Path, cmd: AcmeCommand) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let AcmeCommand::Eab(cmd) = cmd;
    match cmd {
        EabCommand::Create { policy, output } => {
            let policy = policy.policy();
            let created = with_state(&config, async |state| {
                crate::acme::eab::create(state, policy, now)
                    .await
                    .map_err(failed)
            })?;
            if output.json() {
                print_json(&created)?;
            } else {
                say!("kid: {}", created.kid);
                say!("hmac_key: {}", created.hmac_key);
                say!("(the HMAC key is shown only now)");
            }
            Ok(())
        }
        EabCommand::List { output } => {
            let keys = with_state(&config, async |state| {
                crate::acme::eab::list(state).await.map_err(failed)
            })?;
            if output.json() {
                return print_json(&keys);
            }
            for k in keys {
                let p = &k.policy;
                say!(
                    "{}{}  suffixes={} names={} wildcards={} ip={} client_auth={} max_validity_secs={}",
                    k.kid,
                    if k.revoked { " (revoked)" } else { "" },
                    p.dns_suffixes.join(","),
                    p.dns_names.join(","),
                    p.wildcards,
                    p.ip,
                    p.client_auth,
                    p.max_validity_secs
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "default".into())
                );
            }
            Ok(())
        }
        EabCommand::Revoke { kid } => {
            let found = with_state(&config, async |state| {
                crate::acme::eab::revoke(state, &kid).await.map_err(failed)
            })?;
            if !found {
                return Err(CliError::Message(format!("no EAB key {kid}")));
            }
            say!("revoked {kid}");
            Ok(())
        }
    }
}
