//! A workload client that behaves like istio-agent: makes a key and a CSR shaped like the
//! agent's, authenticates with a service-account token or a previous certificate (mTLS), calls
//! `CreateCertificate`, and writes `key.pem`, `cert-chain.pem`, `root-cert.pem`.
//! Reaches a CA served by several appliances: every address of every name given is tried in
//! turn, from a random one, until one answers or refuses for a reason another node would share.
//! Also the gRPC-over-rustls connector that tests and benchmarks use.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};
use zeroize::Zeroizing;

use crate::issuance::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::issuance::pb::{IstioCertificateRequest, IstioCertificateResponse};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("cannot resolve {target}: {reason}")]
    Resolve { target: String, reason: String },
    #[error("no CA node answered ({tried} addresses tried); the last: {last}")]
    AllFailed {
        tried: usize,
        last: Box<ClientError>,
    },
    #[error("the CA refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("{0}")]
    Local(String),
}

/// A gRPC channel to the CA over our own rustls client (so tests control versions and ALPN).
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
) -> Result<IstioCertificateServiceClient<Channel>, ClientError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ClientError::Local(format!("server name {server_name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let service = tower::service_fn(move |_uri: http::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::try_from(format!("http://{addr}"))
        .map_err(|e| ClientError::Local(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    let channel = endpoint
        .connect_with_connector(service)
        .await
        .map_err(|e| ClientError::Connect {
            addr,
            reason: format!("{e}: {}", source_chain(&e)),
        })?;
    Ok(IstioCertificateServiceClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// Every address of `targets` (`host:port` or `ip:port`; a name may resolve to several),
/// without repeats, in the order given.
pub async fn resolve(targets: &[String]) -> Result<Vec<SocketAddr>, ClientError> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for target in targets {
        let found = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|e| ClientError::Resolve {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        for addr in found {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    if out.is_empty() {
        return Err(ClientError::Resolve {
            target: targets.join(","),
            reason: "no address".into(),
        });
    }
    Ok(out)
}

impl ClientError {
    /// Whether another node of the CA may answer where this attempt failed: it could not be
    /// reached, was unavailable or went away mid-call. A refusal of the request itself (bad
    /// CSR, denied identity) would be the same on every node.
    pub fn worth_another_node(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            _ => false,
        }
    }
}

/// What [`request_from_any`] sends.
pub struct Ask<'a> {
    pub server_name: &'a str,
    pub tls: rustls::ClientConfig,
    pub csr_pem: &'a str,
    pub ttl_secs: i64,
    pub token: Option<&'a str>,
    pub cluster_id: Option<&'a str>,
}

/// One `CreateCertificate` answered by any of `addrs`: tried in turn from a random one (so that
/// clients spread over the nodes), moving on when [`ClientError::worth_another_node`]. Returns
/// the answer and the address that gave it.
pub async fn request_from_any(
    addrs: &[SocketAddr],
    ask: &Ask<'_>,
) -> Result<(IstioCertificateResponse, SocketAddr), ClientError> {
    use rand::Rng;
    let first = if addrs.is_empty() {
        0
    } else {
        rand::thread_rng().gen_range(0..addrs.len())
    };
    let mut last = None;
    for i in 0..addrs.len() {
        let addr = addrs[(first + i) % addrs.len()];
        let attempt = async {
            let mut ca = connect(addr, ask.server_name, ask.tls.clone()).await?;
            create_certificate(
                &mut ca,
                ask.csr_pem,
                ask.ttl_secs,
                ask.token,
                ask.cluster_id,
                None,
            )
            .await
        };
        match attempt.await {
            Ok(answer) => return Ok((answer, addr)),
            Err(e) if e.worth_another_node() => {
                tracing::info!(%addr, error = %e, "CA node did not answer; trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(last) if addrs.len() == 1 => Err(last),
        Some(last) => Err(ClientError::AllFailed {
            tried: addrs.len(),
            last: Box::new(last),
        }),
        None => Err(ClientError::Local("no CA address to try".into())),
    }
}

/// Workload key types the client can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKey {
    /// ECDSA P-256 (ztunnel's and the agent's ECDSA choice).
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA-2048 (istio-agent's default).
    Rsa2048,
}

/// A workload key held in memory (zeroized on drop) and a CSR for `spiffe_id`.
pub struct WorkloadCsr {
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    pub csr_pem: String,
}

/// Makes a key and a CSR the way the Istio clients do: RSA with one empty `O` attribute
/// (istio-agent), ECDSA with an empty subject (ztunnel); one URI SAN.
pub fn workload_csr(kind: WorkloadKey, spiffe_id: &str) -> Result<WorkloadCsr, ClientError> {
    let local = |e: rcgen::Error| ClientError::Local(e.to_string());
    let mut dn = DistinguishedName::new();
    let key = match kind {
        WorkloadKey::P256 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(local)?
        }
        WorkloadKey::P384 => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(local)?
        }
        WorkloadKey::Rsa2048 => {
            use rsa::pkcs8::EncodePrivateKey;
            let rsa_key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| ClientError::Local(format!("RSA key generation: {e}")))?;
            let der = rsa_key
                .to_pkcs8_der()
                .map_err(|e| ClientError::Local(format!("RSA key encoding: {e}")))?;
            dn.push(DnType::OrganizationName, "");
            KeyPair::from_pkcs8_der_and_sign_algo(
                &rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes()),
                &rcgen::PKCS_RSA_SHA256,
            )
            .map_err(local)?
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names =
        vec![SanType::URI(spiffe_id.try_into().map_err(|_| {
            ClientError::Local(format!("{spiffe_id:?} is not a URI"))
        })?)];
    let csr_pem = params
        .serialize_request(&key)
        .map_err(local)?
        .pem()
        .map_err(local)?;
    Ok(WorkloadCsr {
        key_pkcs8: Zeroizing::new(key.serialize_der()),
        csr_pem,
    })
}

/// One `CreateCertificate` call with optional bearer token, cluster id and metadata.
pub async fn create_certificate(
    client: &mut IstioCertificateServiceClient<Channel>,
    csr_pem: &str,
    ttl_secs: i64,
    token: Option<&str>,
    cluster_id: Option<&str>,
    impersonate: Option<&str>,
) -> Result<IstioCertificateResponse, ClientError> {
    let mut fields = std::collections::BTreeMap::new();
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_string())),
    };
    fields.insert("CertSigner".to_string(), string(""));
    if let Some(id) = impersonate {
        fields.insert("ImpersonatedIdentity".to_string(), string(id));
    }
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_string(),
        validity_duration: ttl_secs,
        metadata: Some(prost_types::Struct { fields }),
    });
    if let Some(t) = token {
        let value = format!("Bearer {t}").parse().map_err(|_| {
            ClientError::Local("the token has characters not allowed in a header".into())
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    if let Some(c) = cluster_id {
        let value = c
            .parse()
            .map_err(|_| ClientError::Local("bad cluster id".into()))?;
        request.metadata_mut().insert("clusterid", value);
    }
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| ClientError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        })
}

/// Writes the agent's files: `key.pem` (0600), `cert-chain.pem` (every element but the last),
/// `root-cert.pem` (the last element: the trust bundle).
pub fn write_credentials(
    dir: &Path,
    key_pkcs8: &[u8],
    chain: &[String],
) -> Result<(), ClientError> {
    if chain.len() < 2 {
        return Err(ClientError::Local(format!(
            "the CA answered {} element(s); at least 2 are required",
            chain.len()
        )));
    }
    let key_path = dir.join("key.pem");
    let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        key_pkcs8.to_vec(),
    )));
    crate::authority::write_secret_file(&key_path, key_pem.as_bytes(), true)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let (bundle, certs) = chain
        .split_last()
        .ok_or_else(|| ClientError::Local("empty chain".into()))?;
    crate::authority::write_file(&dir.join("cert-chain.pem"), certs.concat().as_bytes(), true)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    crate::authority::write_file(&dir.join("root-cert.pem"), bundle.as_bytes(), true)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    Ok(())
}
