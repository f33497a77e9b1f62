//! `hsm-ca admin …`: one command per admin API route, over mutual TLS with the admin's client
//! certificate (from flags, or the config file's `[admin_client]` section). `--output json`
//! prints the API's own JSON document (an error document on failure), so scripts see the
//! field names the API documents. Exit codes: 0 done (or waiting for approvals), 1 the API
//! refused or could not be reached, 2 a usage error, 3 the audit log did not verify. This
//! module only sends requests and prints answers; it must never print a private key.

mod print;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::output::{print_json, OutputFormat};
use super::CliError;
use crate::config::load_admin_client;
use crate::https::{self, Request};

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The admin API, `https://host:port` (default: `[admin_client] url`, else
    /// `https://` + `admin.listen` of the config file).
    #[arg(long, global = true, env = "HSM_CA_ADMIN_URL")]
    pub url: Option<String>,
    /// CA certificate(s) (PEM) the admin API's serving certificate chains to (default:
    /// `[admin_client] ca_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The admin's client certificate chain (PEM) (default: `[admin_client] cert_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// The admin's private key (PKCS#8 PEM) (default: `[admin_client] key_file`).
    #[arg(long, global = true, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// text (default) or json: the API's JSON document, stable for scripts.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Roots and intermediates with their state (`GET /v1/state`).
    State,
    /// Whether the appliance can issue, and its warnings (`GET /readyz`); exit 1 when not.
    Ready,
    /// The trust bundle: PEM, or with --output json the SPIFFE bundle (`GET /bundle.pem`,
    /// `GET /bundle.spiffe`).
    Bundle,
    /// CRLs: every CA's (`GET /ca-crl.pem`), or one root's with --fingerprint
    /// (`GET /crl/<fingerprint>.crl`, printed as PEM).
    Crl {
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// The Prometheus metrics (`GET /metrics`); with --output json one object per sample.
    Metrics,
    /// A new intermediate key in the device and its CSR (`POST /v1/intermediates`).
    IntermediateNew {
        /// Also write the CSR to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Sign an intermediate CSR with a root whose key is in the device
    /// (`POST /v1/intermediates/sign`).
    IntermediateSign {
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Fingerprint of the signing root (default: the appliance's choice).
        #[arg(long)]
        root: Option<String>,
        /// Also write the certificate to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check and record a signed intermediate (`POST /v1/intermediates/install`).
    IntermediateInstall {
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// Switch issuance to an installed intermediate (`POST /v1/intermediates/<id>/activate`).
    IntermediateActivate { key_id: String },
    /// Retire a prepared intermediate (`POST /v1/intermediates/<id>/retire`).
    IntermediateRetire { key_id: String },
    /// Add a self-signed root to the bundle (`POST /v1/roots`).
    RootAdd {
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
    /// Remove a root from the bundle (`DELETE /v1/roots/<fingerprint>`).
    RootRemove {
        fingerprint: String,
        /// Remove it even while certificates under it may be in use.
        #[arg(long)]
        force: bool,
    },
    /// Cross-sign a root with another whose key is in the device
    /// (`POST /v1/roots/<fingerprint>/cross-sign`).
    RootCrossSign {
        fingerprint: String,
        /// Fingerprint of the signing root.
        #[arg(long)]
        by: String,
        /// Also write the certificate to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a leaf serial or an intermediate (`POST /v1/revocations`).
    Revoke {
        /// Serial (hex) of a leaf certificate.
        #[arg(
            long,
            conflicts_with = "intermediate",
            required_unless_present = "intermediate"
        )]
        serial: Option<String>,
        /// Key id of the intermediate that issued --serial (default: the active one).
        #[arg(long, requires = "serial")]
        issuer: Option<String>,
        /// Key id of an intermediate to revoke.
        #[arg(long)]
        intermediate: Option<String>,
        /// RFC 5280 reason (key-compromise, superseded, …; default unspecified).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Import a root CRL signed offline (`POST /v1/crls`).
    CrlImport {
        #[arg(long, value_name = "FILE")]
        crl: PathBuf,
    },
    /// Operations waiting for approvals (`GET /v1/proposals`).
    Proposals {
        /// Every proposal with its status, result or error.
        #[arg(long)]
        all: bool,
    },
    /// Approve a proposal (`POST /v1/proposals/<id>/approve`).
    Approve {
        id: String,
        /// Approve only if the proposal is this operation (root_add, root_remove, revoke,
        /// activate_new_root).
        #[arg(long)]
        operation: Option<String>,
    },
    /// A page of audit records (`GET /v1/audit`).
    Audit {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records (the API gives at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Verify the running audit log (`GET /v1/audit/verify`); exit 3 when it does not verify.
    AuditVerify,
    /// The audit log's public key, PEM (`GET /v1/audit/public-key`).
    AuditPublicKey,
    /// Make an ACME External Account Binding key with its policy (`POST /v1/acme/eab`); the
    /// answer holds the HMAC key, shown only this once.
    AcmeEabCreate {
        #[command(flatten)]
        policy: super::acme::EabPolicyArgs,
    },
    /// The appliances sharing the database: heartbeat, version, intermediate, roots served
    /// (`GET /v1/nodes`).
    Nodes,
    /// The EAB keys and their policies, never the HMAC keys (`GET /v1/acme/eab`).
    AcmeEabList,
    /// Revoke an EAB key: its accounts can order nothing more (`DELETE /v1/acme/eab/<kid>`).
    AcmeEabRevoke { kid: String },
}

/// A call to make: method, path, JSON body.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

fn get(path: impl Into<String>) -> Call {
    Call {
        method: "GET",
        path: path.into(),
        body: None,
    }
}

fn post(path: impl Into<String>, body: Value) -> Call {
    Call {
        method: "POST",
        path: path.into(),
        body: Some(body),
    }
}

fn read_text(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Message(format!("{}: {e}", path.display())))
}

/// A path segment as sent: ids and fingerprints are hex or plain words; anything else is
/// refused rather than escaped.
fn segment(value: &str) -> Result<&str, CliError> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        Ok(value)
    } else {
        Err(CliError::Message(format!("{value:?} is not an id")))
    }
}

fn call_for(command: &AdminCommand) -> Result<Call, CliError> {
    use AdminCommand as C;
    Ok(match command {
        C::State => get("/v1/state"),
        C::Ready => get("/readyz"),
        C::Bundle => get("/bundle.pem"),
        C::Crl { fingerprint: None } => get("/ca-crl.pem"),
        C::Crl {
            fingerprint: Some(fp),
        } => get(format!("/crl/{}.crl", segment(fp)?)),
        C::Metrics => get("/metrics"),
        C::IntermediateNew { .. } => post("/v1/intermediates", json!({})),
        C::IntermediateSign { csr, root, .. } => post(
            "/v1/intermediates/sign",
            json!({"csr_pem": read_text(csr)?, "root": root}),
        ),
        C::IntermediateInstall { cert } => post(
            "/v1/intermediates/install",
            json!({"certificate_pem": read_text(cert)?}),
        ),
        C::IntermediateActivate { key_id } => post(
            format!("/v1/intermediates/{}/activate", segment(key_id)?),
            json!({}),
        ),
        C::IntermediateRetire { key_id } => post(
            format!("/v1/intermediates/{}/retire", segment(key_id)?),
            json!({}),
        ),
        C::RootAdd { cert } => post("/v1/roots", json!({"certificate_pem": read_text(cert)?})),
        C::RootRemove { fingerprint, force } => Call {
            method: "DELETE",
            path: format!(
                "/v1/roots/{}{}",
                segment(fingerprint)?,
                if *force { "?force=true" } else { "" }
            ),
            body: None,
        },
        C::RootCrossSign {
            fingerprint, by, ..
        } => post(
            format!("/v1/roots/{}/cross-sign", segment(fingerprint)?),
            json!({"by": by}),
        ),
        C::Revoke {
            serial,
            issuer,
            intermediate,
            reason,
        } => {
            let mut body = serde_json::Map::new();
            for (k, v) in [
                ("serial", serial),
                ("issuer", issuer),
                ("intermediate", intermediate),
                ("reason", reason),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            post("/v1/revocations", Value::Object(body))
        }
        C::CrlImport { crl } => post("/v1/crls", json!({"crl_pem": read_text(crl)?})),
        C::Proposals { all } => get(if *all {
            "/v1/proposals?all=true"
        } else {
            "/v1/proposals"
        }),
        C::Approve { id, operation } => {
            let body = match operation {
                Some(op) => json!({"operation": op}),
                None => json!({}),
            };
            post(format!("/v1/proposals/{}/approve", segment(id)?), body)
        }
        C::Audit { from, limit } => get(format!("/v1/audit?from={from}&limit={limit}")),
        C::AuditVerify => get("/v1/audit/verify"),
        C::AuditPublicKey => get("/v1/audit/public-key"),
        C::AcmeEabCreate { policy } => post(
            "/v1/acme/eab",
            serde_json::to_value(policy.policy()).map_err(|e| CliError::Message(e.to_string()))?,
        ),
        C::AcmeEabList => get("/v1/acme/eab"),
        C::Nodes => get("/v1/nodes"),
        C::AcmeEabRevoke { kid } => Call {
            method: "DELETE",
            path: format!("/v1/acme/eab/{}", segment(kid)?),
            body: None,
        },
    })
}

/// The connection settings: flags first, then the config file's `[admin_client]`.
fn connection(
    config: &Path,
    args: &AdminArgs,
) -> Result<(String, std::sync::Arc<rustls::ClientConfig>), CliError> {
    let section = load_admin_client(config)?;
    let url = args.url.clone().or(section.url).ok_or_else(|| {
        CliError::Message(
            "say where the admin API is: --url https://host:port, or [admin_client] url".into(),
        )
    })?;
    https::split_url(&url).map_err(|e| CliError::Message(e.to_string()))?;
    let ca_file = args.ca_file.clone().or(section.ca_file).ok_or_else(|| {
        CliError::Message(
            "give the admin API's CA: --ca-file FILE, or [admin_client] ca_file".into(),
        )
    })?;
    let roots = crate::authority::read_certificates(&ca_file)?;
    let (cert, key) = match (args.client_cert.clone(), args.client_key.clone()) {
        (Some(c), Some(k)) => (Some(c), Some(k)),
        (None, None) => (section.cert_file, section.key_file),
        _ => {
            return Err(CliError::Message(
                "--client-cert and --client-key go together".into(),
            ))
        }
    };
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = crate::authority::read_certificates(&cert)?;
            let key_pem = Zeroizing::new(
                std::fs::read(&key)
                    .map_err(|e| CliError::Message(format!("{}: {e}", key.display())))?,
            );
            let parsed = pem::parse(&*key_pem)
                .ok()
                .filter(|p| p.tag() == "PRIVATE KEY")
                .ok_or_else(|| {
                    CliError::Message(format!("{}: not a PKCS#8 PEM private key", key.display()))
                })?;
            Some((chain, Zeroizing::new(parsed.into_contents())))
        }
        _ => None,
    };
    let tls = https::client_tls(
        &roots,
        identity
            .as_ref()
            .map(|(chain, key)| (chain.as_slice(), key.as_slice())),
    )
    .map_err(|e| CliError::Message(e.to_string()))?;
    Ok((url.trim_end_matches('/').to_string(), tls))
}

pub fn run(config: &Path, args: AdminArgs) -> Result<(), CliError> {
    let (base, tls) = connection(config, &args)?;
    let json_out = args.output == OutputFormat::Json;
    let mut call = call_for(&args.command)?;
    if json_out && matches!(args.command, AdminCommand::Bundle) {
        call = get("/bundle.spiffe");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Message(e.to_string()))?;
    let url = format!("{base}{}", call.path);
    let answer = runtime
        .block_on(https::send(
            tls,
            Request {
                method: call.method,
                json: call
                    .body
                    .as_ref()
                    .map(|b| serde_json::to_vec(b).unwrap_or_default()),
                ..Request::get(&url)
            },
            CALL_TIMEOUT,
        ))
        .map_err(|e| CliError::Message(format!("admin API: {e}")))?;
    let ok = (200..300).contains(&answer.status);
    let ready_refusal = matches!(args.command, AdminCommand::Ready) && answer.status == 503;
    if !ok && !ready_refusal {
        return Err(refusal(&answer, json_out));
    }
    print::print(&args.command, &answer, json_out)?;
    if ready_refusal {
        return Err(CliError::Message("the appliance is not ready".into()));
    }
    if matches!(args.command, AdminCommand::AuditVerify) {
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        if body["verified"] != true {
            return Err(CliError::Verification(format!(
                "the audit log does not verify: {}",
                body["problem"].as_str().unwrap_or("no reason given")
            )));
        }
    }
    Ok(())
}

/// The API's refusal as one line (and, for scripts, its error document on stdout).
fn refusal(answer: &https::Answer, json_out: bool) -> CliError {
    let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    if json_out && body.is_object() {
        let _ = print_json(&body);
    }
    let code = body["error"]["code"].as_str().unwrap_or("error");
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
    CliError::Message(format!(
        "admin API refused (HTTP {} {code}): {message}",
        answer.status
    ))
}
