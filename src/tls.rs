//! All TLS policy in one place: protocol versions (1.2 and 1.3), the crypto provider (ring),
//! ALPN `h2` (grpc-go refuses a CA without it), client-certificate verification against the
//! trust bundle, a serving certificate that can be replaced while the server runs, the ACME
//! listener and its tls-alpn-01 validation client, and how the listeners accept connections
//! ([`accept`]): a cap on connections per listener and on descriptors for the whole process,
//! a handshake timeout, and an idle timeout after the handshake. It must never read the CA state or decide who a peer is.

mod accept;

pub use accept::{accept, Connection, ConnectionLimits, DescriptorBudget};

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;

/// The protocol versions hsm-ca speaks (istio-agent uses 1.2+, ztunnel 1.3 only).
pub const VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider: ring, so the build needs no cmake.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether callers must present a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Requested, not required: in-cluster pods authenticate with a token instead.
    #[default]
    Optional,
    Required,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

/// A serving certificate chain and its (software, in-memory) key, replaceable at run time.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ServingCert {
    pub fn new(first: CertifiedKey) -> Self {
        ServingCert {
            current: ArcSwap::from_pointee(first),
        }
    }

    /// Publishes a new certificate; handshakes from now on use it.
    pub fn replace(&self, next: CertifiedKey) {
        self.current.store(Arc::new(next));
    }

    /// The leaf of the certificate currently served.
    pub fn leaf(&self) -> Vec<u8> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A chain (leaf first, DER) and its PKCS#8 key as rustls wants them.
pub fn certified_key(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<CertifiedKey, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key_pkcs8.to_vec(),
        )))
        .map_err(setup)?;
    let certs = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    Ok(CertifiedKey::new(certs, key))
}

fn root_store(roots: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(CertificateDer::from(root.clone()))
            .map_err(setup)?;
    }
    Ok(store)
}

/// The admin API's server side: like [`server_config`] with optional client certificates
/// (the public bundle routes need none) and ALPN for HTTP/2 and HTTP/1.1.
pub fn admin_server_config(
    roots: &[Vec<u8>],
    certs: Arc<ServingCert>,
) -> Result<ServerConfig, TlsError> {
    let mut config = server_config(roots, ClientAuth::Optional, certs)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server side: TLS 1.2/1.3, ALPN h2, client certificates checked against `roots`.
pub fn server_config(
    roots: &[Vec<u8>],
    client_auth: ClientAuth,
    certs: Arc<ServingCert>,
) -> Result<ServerConfig, TlsError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider());
    let verifier = match client_auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
        ClientAuth::Required => builder.build(),
    }
    .map_err(setup)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(setup)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The ACME listener's server side: no client certificates (JWS authenticates), ALPN for
/// HTTP/2 and HTTP/1.1, the serving certificate as it is renewed.
pub fn acme_server_config(certs: Arc<ServingCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(setup)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`acme_server_config`] with a configured chain (PEM, leaf first) and key (PEM: PKCS#8,
/// SEC1 or PKCS#1), read once at start; the key bytes are zeroized after loading.
pub fn acme_server_config_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ServerConfig, TlsError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| TlsError::Setup(format!("{}: {e}", p.display())))
    };
    let chain: Vec<CertificateDer<'static>> = pem::parse_many(read(cert)?.as_slice())
        .map_err(|e| TlsError::Setup(format!("{}: {e}", cert.display())))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Setup(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key_pem = pem::parse(read(key)?.as_slice())
        .map_err(|_| TlsError::Setup(format!("{}: not a PEM key", key.display())))?;
    let contents = zeroize::Zeroizing::new(key_pem.contents().to_vec());
    let key_der = match key_pem.tag() {
        "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(contents.to_vec())),
        "EC PRIVATE KEY" => PrivateKeyDer::Sec1(contents.to_vec().into()),
        "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(contents.to_vec().into()),
        other => {
            return Err(TlsError::Setup(format!(
                "{}: unsupported key type {other}",
                key.display()
            )))
        }
    };
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(setup)?;
    let certified = CertifiedKey::new(chain, signing);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(setup)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ServingCert::new(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any server certificate at the TLS layer and still checks the handshake signature
/// with its key: for tls-alpn-01, whose certificate is self-signed, carries a critical
/// extension no path validator knows, and is judged by its content instead.
#[derive(Debug)]
struct AcmeValidationVerifier;

/// The handshake signature schemes the validation client offers, with ring's verifier for
/// each.
const VALIDATION_SCHEMES: &[(
    rustls::SignatureScheme,
    &'static dyn ring::signature::VerificationAlgorithm,
)] = &[
    (
        rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
        &ring::signature::ECDSA_P256_SHA256_ASN1,
    ),
    (
        rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
        &ring::signature::ECDSA_P384_SHA384_ASN1,
    ),
    (rustls::SignatureScheme::ED25519, &ring::signature::ED25519),
    (
        rustls::SignatureScheme::RSA_PSS_SHA256,
        &ring::signature::RSA_PSS_2048_8192_SHA256,
    ),
    (
        rustls::SignatureScheme::RSA_PSS_SHA384,
        &ring::signature::RSA_PSS_2048_8192_SHA384,
    ),
    (
        rustls::SignatureScheme::RSA_PKCS1_SHA256,
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
    ),
];

impl AcmeValidationVerifier {
    fn verify(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        use x509_parser::prelude::FromDer;
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
        let (_, algorithm) = VALIDATION_SCHEMES
            .iter()
            .find(|(s, _)| *s == dss.scheme)
            .ok_or_else(bad)?;
        let key = parsed.public_key().subject_public_key.data.as_ref();
        ring::signature::UnparsedPublicKey::new(*algorithm, key)
            .verify(message, dss.signature())
            .map_err(|_| bad())?;
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
}

impl rustls::client::danger::ServerCertVerifier for AcmeValidationVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Self::verify(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Self::verify(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        VALIDATION_SCHEMES.iter().map(|(s, _)| *s).collect()
    }
}

/// The tls-alpn-01 validation client (RFC 8737): offers only ALPN `acme-tls/1` and accepts
/// the self-signed validation certificate, which the caller then checks by its content. Never
/// use it for anything else.
pub fn acme_tls_alpn_client_config() -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcmeValidationVerifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    Ok(config)
}

/// The client side (the `request` command and tests): trusts `roots`, offers ALPN h2, and
/// optionally presents a client certificate chain with its PKCS#8 key.
pub fn client_config(
    roots: &[Vec<u8>],
    identity: Option<(&[Vec<u8>], &[u8])>,
    tls13_only: bool,
) -> Result<ClientConfig, TlsError> {
    let versions: &[&SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        VERSIONS
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(setup)?
        .with_root_certificates(root_store(roots)?);
    let mut config = match identity {
        Some((chain, key)) => {
            let certs = chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
            builder.with_client_auth_cert(certs, key).map_err(setup)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The connection to the CA state database (`store.postgres.ca_file`): trusts only `roots`,
/// and checks the server's certificate chain and its name against the host connected to
/// (`sslmode=verify-full`); no ALPN, no client certificate.
pub fn database_client_config(roots: &[Vec<u8>]) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(setup)?
        .with_root_certificates(root_store(roots)?)
        .with_no_client_auth())
}
