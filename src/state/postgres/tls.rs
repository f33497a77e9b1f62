//! TLS to the CA state database on rustls (ring): the small `MakeTlsConnect` adapter
//! tokio-postgres needs, over the client config [`crate::tls::database_client_config`] builds.
//! Each host of a multi-host URL is checked under its own name (`sslmode=verify-full`), and the
//! server's certificate is bound into SCRAM authentication (`tls-server-end-point`).
//!
//! It must never accept a server certificate that does not chain to the configured CA file or
//! does not name the host connected to, and never builds TLS policy of its own.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use super::super::StateError;

/// Makes one TLS connector per host, checked against that host's name.
#[derive(Clone)]
pub(super) struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustls {
    /// Trusts the CA certificates in the PEM file at `path`.
    pub(super) fn from_ca_file(path: &Path) -> Result<Self, StateError> {
        let bad = |why: String| {
            StateError::Settings(format!("store.postgres.ca_file {}: {why}", path.display()))
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let roots: Vec<Vec<u8>> = pem::parse_many(&text)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(pem::Pem::into_contents)
            .collect();
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let config = crate::tls::database_client_config(&roots).map_err(|e| bad(e.to_string()))?;
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_string())?,
        })
    }
}

/// Connects one stream to one host.
pub(super) struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS connection to the database.
pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the server certificate's hash, with the hash of its
    /// signature algorithm (SHA-256 for SHA-1 and MD5). None where that is undefined (Ed25519,
    /// RSA-PSS), and SCRAM then runs without channel binding.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.0.get_ref();
        let Some(cert) = connection.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_hash(cert) {
            Some(algorithm) => ChannelBinding::tls_server_end_point(
                ring::digest::digest(algorithm, cert).as_ref().to_vec(),
            ),
            None => ChannelBinding::none(),
        }
    }
}

/// The hash `tls-server-end-point` uses for a certificate signed with its algorithm.
fn end_point_hash(der: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        // ecdsa-with-SHA256, sha256WithRSAEncryption, sha1WithRSAEncryption, md5WithRSA
        "1.2.840.10045.4.3.2"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.4"
        | "1.2.840.10045.4.1" => Some(&ring::digest::SHA256),
        // ecdsa-with-SHA384, sha384WithRSAEncryption
        "1.2.840.10045.4.3.3" | "1.2.840.113549.1.1.12" => Some(&ring::digest::SHA384),
        // ecdsa-with-SHA512, sha512WithRSAEncryption
        "1.2.840.10045.4.3.4" | "1.2.840.113549.1.1.13" => Some(&ring::digest::SHA512),
        _ => None,
    }
}
