//! A small HTTPS client for the admin API: real TLS (optionally with a client certificate)
//! and HTTP/1.1 over hyper, one connection per call.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The `Content-Type` header, when there is one.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The stable error code of an error reply.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Opens a TLS connection to `addr` (trusting `roots`) and holds it without sending anything.
pub async fn idle_tls(
    addr: SocketAddr,
    roots: &[Vec<u8>],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = hsm_ca::tls::client_config(roots, None, false).expect("tls");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
}

/// Whether the server has closed `conn`: a read returns end of file or an error within
/// `within` (an open, idle connection gives nothing to read).
pub async fn closed_by_server(
    conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // Session tickets and the like: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

impl AdminClient {
    /// A client trusting `roots`, presenting `identity` (chain, PKCS#8 key) when given.
    pub fn new(addr: SocketAddr, roots: &[Vec<u8>], identity: Option<(&[Vec<u8>], &[u8])>) -> Self {
        let mut tls = hsm_ca::tls::client_config(roots, identity, false).expect("tls");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        AdminClient {
            addr,
            tls: Arc::new(tls),
        }
    }

    /// One request; a call that takes longer than 30 s fails the test instead of hanging it.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.call_inner(method, path, body),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} took longer than 30 s"))
    }

    async fn call_inner(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        self.raw(method, path, Some("application/json"), bytes)
            .await
    }

    /// One request with the given `Content-Type` (none when `None`) and body bytes.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        self.request(method, path, &headers, body).await
    }

    /// One request with exactly the given headers (besides `host`) and body bytes.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(&body)).await
    }
}
