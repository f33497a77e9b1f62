//! `hsm-ca request`: ask the CA for a workload certificate, as istio-agent would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::CliError;
use crate::auth::SpiffeId;
use crate::ca::inspect;
use crate::client::{self, WorkloadKey};
use crate::config::Config;
use crate::dev::token::{mint, TokenClaims};

#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// The SPIFFE ID to request (default: from --ns/--sa, or the --renew-with certificate).
    #[arg(long)]
    pub identity: Option<String>,
    /// Kubernetes namespace (with --sa).
    #[arg(long)]
    pub ns: Option<String>,
    /// Kubernetes service account (with --ns).
    #[arg(long)]
    pub sa: Option<String>,
    /// Trust domain for --ns/--sa (default: the dev appliance's, else cluster.local).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// The CA's address, `host:port` (default: the dev appliance's, else 127.0.0.1:15012).
    /// Several, comma-separated or repeated, or a name with several addresses: a CA served by
    /// several appliances; each is tried in turn until one answers.
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<String>,
    /// The name the CA's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Trust anchor(s) for the CA's serving certificate (default: --dev DIR/root-cert.pem).
    #[arg(long)]
    pub ca_root: Option<PathBuf>,
    /// A service-account token file (sent as `authorization: Bearer`).
    #[arg(long)]
    pub token: Option<PathBuf>,
    /// Renew with the key.pem and cert-chain.pem in this folder (mTLS, no token).
    #[arg(long)]
    pub renew_with: Option<PathBuf>,
    /// A dev appliance folder: its root, address and token signer are used.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Key type of the workload key.
    #[arg(long, value_enum, default_value = "p256")]
    pub key: WorkloadKey,
    /// Requested lifetime in seconds (0: the CA's default).
    #[arg(long, default_value_t = 0)]
    pub ttl: i64,
    /// The `clusterid` header (default: none, which the CA reads as "Kubernetes").
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Where to write key.pem, cert-chain.pem and root-cert.pem.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Speak only TLS 1.3 (as ztunnel does).
    #[arg(long)]
    pub tls13_only: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Message(format!("{}: {e}", path.display())))
}

pub fn run(args: RequestArgs) -> Result<(), CliError> {
    let dev = match &args.dev {
        Some(dir) => Some((dir.clone(), Config::load(&dir.join("hsm-ca.toml"))?)),
        None => None,
    };
    let trust_domain = args
        .trust_domain
        .clone()
        .or_else(|| dev.as_ref().map(|(_, c)| c.trust_domain.clone()))
        .unwrap_or_else(|| "cluster.local".into());
    let targets = if !args.addr.is_empty() {
        args.addr.clone()
    } else {
        let default = dev
            .as_ref()
            .map(|(_, c)| c.server.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 15012)));
        vec![default.to_string()]
    };
    let ca_root = args
        .ca_root
        .clone()
        .or_else(|| dev.as_ref().map(|(d, _)| d.join("root-cert.pem")))
        .ok_or_else(|| {
            CliError::Message("give --ca-root (the CA's root certificate) or --dev".into())
        })?;
    let roots = crate::authority::read_certificates(&ca_root)?;

    // Client identity for renewal.
    let renewal = match &args.renew_with {
        Some(dir) => {
            let chain = crate::authority::read_certificates(&dir.join("cert-chain.pem"))?;
            let key_pem = zeroize::Zeroizing::new(read(&dir.join("key.pem"))?);
            let key = pem::parse(&*key_pem).map_err(|e| {
                CliError::Message(format!("{}: {e}", dir.join("key.pem").display()))
            })?;
            Some((chain, zeroize::Zeroizing::new(key.into_contents())))
        }
        None => None,
    };

    let identity = match (&args.identity, &args.ns, &args.sa, &renewal) {
        (Some(id), _, _, _) => SpiffeId::parse(id).map_err(|e| CliError::Message(e.to_string()))?,
        (None, Some(ns), Some(sa), _) => SpiffeId::workload(&trust_domain, ns, sa)
            .map_err(|e| CliError::Message(e.to_string()))?,
        (None, None, None, Some((chain, _))) => identity_of(&chain[0])?,
        _ => {
            return Err(CliError::Message(
                "say which identity: --identity spiffe://..., or --ns and --sa".into(),
            ))
        }
    };

    let token = match (&args.token, &renewal, &dev) {
        (Some(path), _, _) => Some(
            String::from_utf8(read(path)?)
                .map_err(|_| CliError::Message(format!("{}: not text", path.display())))?
                .trim()
                .to_string(),
        ),
        (None, Some(_), _) => None,
        (None, None, Some((dir, config))) => Some(dev_token(dir, config, &identity)?),
        (None, None, None) => {
            return Err(CliError::Message(
                "no credentials: give --token FILE, --renew-with DIR, or --dev DIR".into(),
            ))
        }
    };

    let csr = client::workload_csr(args.key, &identity.to_string())
        .map_err(|e| CliError::Message(e.to_string()))?;
    let tls = crate::tls::client_config(
        &roots,
        renewal
            .as_ref()
            .map(|(chain, key)| (chain.as_slice(), key.as_slice())),
        args.tls13_only,
    )
    .map_err(|e| CliError::Message(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Message(e.to_string()))?;
    let ask = client::Ask {
        server_name: &args.server_name,
        tls,
        csr_pem: &csr.csr_pem,
        ttl_secs: args.ttl,
        token: token.as_deref(),
        cluster_id: args.cluster_id.as_deref(),
    };
    let (response, answered_by) = runtime
        .block_on(async {
            let addrs = client::resolve(&targets).await?;
            client::request_from_any(&addrs, &ask).await
        })
        .map_err(|e| CliError::Message(e.to_string()))?;
    client::write_credentials(&args.out, &csr.key_pkcs8, &response.cert_chain)
        .map_err(|e| CliError::Message(e.to_string()))?;
    let leaf = crate::ca::certificates_from_pem(response.cert_chain[0].as_bytes())?;
    say!(
        "Issued {identity} by {answered_by}; wrote key.pem, cert-chain.pem, root-cert.pem to {}",
        args.out.display()
    );
    say_raw!(
        "{}",
        inspect::describe(&leaf[0], time::OffsetDateTime::now_utc())?
    );
    Ok(())
}

fn identity_of(cert: &[u8]) -> Result<SpiffeId, CliError> {
    let parsed = inspect::parse_certificate(cert)?;
    let san = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| CliError::Message("the renewal certificate has no SAN".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => SpiffeId::parse(u).ok(),
            _ => None,
        })
        .ok_or_else(|| CliError::Message("the renewal certificate has no SPIFFE ID".into()))
}

/// A token from the dev appliance's signer for the identity's namespace and service account.
fn dev_token(dir: &Path, config: &Config, identity: &SpiffeId) -> Result<String, CliError> {
    let (ns, sa) = identity.namespace_and_account().ok_or_else(|| {
        CliError::Message(format!(
            "{identity} is not spiffe://<td>/ns/<ns>/sa/<sa>; dev tokens name a service account"
        ))
    })?;
    let cluster = config
        .clusters
        .first()
        .ok_or_else(|| CliError::Message("the dev config lists no cluster".into()))?;
    let key = zeroize::Zeroizing::new(
        String::from_utf8(read(&dir.join("token-signer-key.pem"))?)
            .map_err(|_| CliError::Message("token-signer-key.pem is not text".into()))?,
    );
    mint(
        &key,
        crate::dev::appliance::DEV_TOKEN_KID,
        &TokenClaims {
            issuer: &cluster.issuer,
            audiences: &cluster.audiences,
            namespace: ns,
            service_account: sa,
            expires_in: 600,
            not_before_in: 0,
        },
    )
    .map_err(|e| CliError::Message(e.to_string()))
}
