//! One HTTPS request at a time, as a client: hyper's HTTP/1.1 over tokio-rustls with the TLS
//! policy of [`crate::tls`], one connection per request, a deadline on the whole exchange and
//! a cap on the answer's size. Used to fetch a cluster's keys (JWKS, OIDC discovery) and by
//! `hsm-ca admin`. It must never log a header value (a bearer token travels in one) or follow
//! a redirect.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::secret::Secret;

/// Largest answer read, in bytes.
pub const MAX_BODY: usize = 4 << 20;

/// Why a request got no answer. Never carries a header value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsError {
    #[error("{0:?} is not an https:// URL with a host")]
    Url(String),
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer: the status and the body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A request to send.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `https://host[:port]/path?query`.
    pub url: &'a str,
    /// Sent as `authorization: Bearer …` when present.
    pub bearer: Option<&'a Secret>,
    /// A JSON body (sent with `content-type: application/json`).
    pub json: Option<Vec<u8>>,
    /// Extra headers (such as `content-type` for a non-JSON body) and a raw body.
    pub raw: Option<(&'a str, Vec<u8>)>,
}

impl<'a> Request<'a> {
    pub fn get(url: &'a str) -> Self {
        Request {
            method: "GET",
            url,
            bearer: None,
            json: None,
            raw: None,
        }
    }
}

/// A client TLS config for HTTP/1.1 trusting `roots`, presenting `identity` (chain, PKCS#8
/// key) when given.
pub fn client_tls(
    roots: &[Vec<u8>],
    identity: Option<(&[Vec<u8>], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
    let mut tls = crate::tls::client_config(roots, identity, false)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The host, port and path-and-query of an `https://` URL.
pub fn split_url(url: &str) -> Result<(String, u16, String), HttpsError> {
    let bad = || HttpsError::Url(url.to_string());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok((host, uri.port_u16().unwrap_or(443), path))
}

/// Sends `req` with `tls` and reads the answer, all within `deadline`.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    req: Request<'_>,
    deadline: Duration,
) -> Result<Answer, HttpsError> {
    tokio::time::timeout(deadline, send_inner(tls, req))
        .await
        .map_err(|_| HttpsError::Timeout(deadline))?
}

async fn send_inner(
    tls: Arc<rustls::ClientConfig>,
    req: Request<'_>,
) -> Result<Answer, HttpsError> {
    let (host, port, path) = split_url(req.url)?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| HttpsError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let name = ServerName::try_from(host.clone()).map_err(|_| HttpsError::Url(req.url.into()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| HttpsError::Tls {
            host: host.clone(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let authority = if port == 443 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = req.bearer {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| HttpsError::Http("the bearer token is not a valid header value".into()))?;
        value.set_sensitive(true);
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let body = match (req.json, req.raw) {
        (Some(json), _) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            json
        }
        (None, Some((content_type, raw))) => {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
            raw
        }
        (None, None) => Vec::new(),
    };
    let request = builder
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpsError::Http(format!("reading the answer: {e}")))?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://127.0.0.1:8443/openid/v1/jwks").expect("url"),
            ("127.0.0.1".into(), 8443, "/openid/v1/jwks".into())
        );
        assert_eq!(
            split_url("https://kubernetes.default.svc").expect("url"),
            ("kubernetes.default.svc".into(), 443, "/".into())
        );
        assert_eq!(
            split_url("https://[::1]:9/x?y=1").expect("url"),
            ("::1".into(), 9, "/x?y=1".into())
        );
        assert!(split_url("http://example.com/").is_err());
        assert!(split_url("not a url").is_err());
    }
}
