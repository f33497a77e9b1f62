//! Checking challenges from the appliance: `http-01` (a plain HTTP GET of the token on the
//! configured port, redirects followed only to the same host, the body size capped),
//! `dns-01` (the TXT record at `_acme-challenge.<name>` through the configured resolver) and
//! `tls-alpn-01` (RFC 8737: a handshake offering only `acme-tls/1` with the name as SNI, and
//! a self-signed certificate that names exactly that name and carries the critical
//! acmeIdentifier extension with the key authorization's SHA-256). At most
//! `max_concurrent` run at once; each gives up after `timeout`. The outcome is written to
//! the authorization in the CA state, so any node reports it.
//!
//! It must never mark a challenge valid on a partial match, and never follow a redirect to
//! another host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::dns;
use super::error::stored_problem;
use super::jws::b64;
use super::records::{Authorization, Records, KEEP_AFTER_EXPIRY};
use crate::config::acme::ValidationSettings;
use crate::control::Control;
use crate::state::AcmeKind;

/// Largest http-01 answer read (headers and body).
const MAX_HTTP_BYTES: usize = 16 * 1024;
/// Redirects followed (same host only).
const MAX_REDIRECTS: usize = 3;
/// id-pe-acmeIdentifier (RFC 8737).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Why a challenge failed: the ACME problem type and what the client is told.
type Failure = (&'static str, String);

pub struct Validator {
    settings: ValidationSettings,
    permits: Arc<Semaphore>,
    alpn: Option<Arc<rustls::ClientConfig>>,
}

impl Validator {
    pub fn new(settings: &ValidationSettings) -> Self {
        let alpn = match crate::tls::acme_tls_alpn_client_config() {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!(error = %e, "tls-alpn-01 cannot be validated");
                None
            }
        };
        Validator {
            settings: settings.clone(),
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            alpn,
        }
    }

    /// Validates challenge `n` of `authz` in the background and records the outcome.
    pub fn start(
        self: Arc<Self>,
        control: Arc<Control>,
        authz: Authorization,
        n: usize,
        key_authorization: String,
    ) {
        tokio::spawn(async move {
            let outcome = match self.permits.clone().acquire_owned().await {
                Ok(_permit) => {
                    match tokio::time::timeout(
                        self.settings.timeout,
                        self.check(&authz, n, &key_authorization),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err((
                            "connection",
                            format!("no answer within {} s", self.settings.timeout.as_secs()),
                        )),
                    }
                }
                Err(_) => Err(("serverInternal", "the validator stopped".to_string())),
            };
            let kind = &authz.challenges[n].kind;
            match &outcome {
                Ok(()) => {
                    tracing::info!(authz = %authz.id, challenge = %kind, name = %authz.identifier.value, "acme challenge valid")
                }
                Err((t, d)) => {
                    tracing::info!(authz = %authz.id, challenge = %kind, name = %authz.identifier.value, problem = %t, detail = %d, "acme challenge invalid")
                }
            }
            if let Err(e) = record(&control, &authz.id, n, outcome).await {
                tracing::warn!(authz = %authz.id, error = %e, "challenge outcome not recorded");
            }
        });
    }

    async fn check(&self, authz: &Authorization, n: usize, key_auth: &str) -> Result<(), Failure> {
        let challenge = &authz.challenges[n];
        let name = authz.identifier.value.as_str();
        match challenge.kind.as_str() {
            "http-01" => self.http01(name, &challenge.token, key_auth).await,
            "dns-01" => self.dns01(name, key_auth).await,
            "tls-alpn-01" => self.tls_alpn01(name, key_auth).await,
            other => Err(("malformed", format!("unknown challenge type {other}"))),
        }
    }

    /// The addresses of `host` (an IP address is itself).
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Failure> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = match self.settings.resolver {
            Some(resolver) => dns::addresses(resolver, host, self.settings.timeout)
                .await
                .map_err(|e| ("dns", format!("looking up {host}: {e}")))?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ("dns", format!("looking up {host}: {e}")))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(("dns", format!("{host} has no address")));
        }
        Ok(addrs)
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Failure> {
        let mut last = String::new();
        for addr in self.resolve(host, port).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(("connection", format!("cannot connect to {host}: {last}")))
    }

    async fn http01(&self, host: &str, token: &str, key_auth: &str) -> Result<(), Failure> {
        let port = self.settings.http01_port;
        let mut path = format!("/.well-known/acme-challenge/{token}");
        for _ in 0..=MAX_REDIRECTS {
            let (status, headers, body) = self.http_get(host, port, &path).await?;
            if (300..400).contains(&status) {
                let location = header(&headers, "location").unwrap_or_default();
                path = same_host_path(host, port, &location).ok_or_else(|| {
                    (
                        "unauthorized",
                        format!("redirect to {location:?}: only the same host is followed"),
                    )
                })?;
                continue;
            }
            if status != 200 {
                return Err((
                    "unauthorized",
                    format!("http://{host}:{port}{path} answered {status}"),
                ));
            }
            let text = String::from_utf8_lossy(&body);
            return if text.trim() == key_auth {
                Ok(())
            } else {
                Err((
                    "incorrectResponse",
                    "the http-01 answer is not the key authorization".into(),
                ))
            };
        }
        Err(("unauthorized", "too many redirects".into()))
    }

    /// One HTTP/1.1 GET; the status, header lines and body (at most [`MAX_HTTP_BYTES`]).
    async fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<(u16, Vec<String>, Vec<u8>), Failure> {
        let mut stream = self.connect(host, port).await?;
        let host_header = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: hsm-ca-acme\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let io = |e: std::io::Error| ("connection", format!("http://{host_header}{path}: {e}"));
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > MAX_HTTP_BYTES {
                return Err(("unauthorized", "the http-01 answer is too large".into()));
            }
            if let Some(done) = complete(&raw) {
                raw.truncate(done);
                break;
            }
        }
        parse_response(&raw).ok_or_else(|| ("connection", "malformed HTTP answer".into()))
    }

    async fn dns01(&self, name: &str, key_auth: &str) -> Result<(), Failure> {
        let resolver = self.settings.resolver.ok_or_else(|| {
            (
                "dns",
                "dns-01 needs acme.validation.resolver set on this CA".to_string(),
            )
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
        let expected = b64(digest.as_ref());
        let at = format!("_acme-challenge.{name}");
        let found = dns::txt(resolver, &at, self.settings.timeout)
            .await
            .map_err(|e| ("dns", format!("TXT {at}: {e}")))?;
        if found.iter().any(|t| t.trim() == expected) {
            Ok(())
        } else if found.is_empty() {
            Err(("unauthorized", format!("no TXT record at {at}")))
        } else {
            Err((
                "incorrectResponse",
                format!("no TXT record at {at} holds the key authorization's digest"),
            ))
        }
    }

    async fn tls_alpn01(&self, name: &str, key_auth: &str) -> Result<(), Failure> {
        let config = self
            .alpn
            .clone()
            .ok_or_else(|| ("serverInternal", "tls-alpn-01 is unavailable".to_string()))?;
        let port = self.settings.tls_alpn01_port;
        let stream = self.connect(name, port).await?;
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|_| ("malformed", format!("{name} cannot be sent as SNI")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await
            .map_err(|e| ("tls", format!("handshake with {name}:{port}: {e}")))?;
        let (_, conn) = tls.get_ref();
        if conn.alpn_protocol() != Some(b"acme-tls/1".as_slice()) {
            return Err(("tls", "the server did not negotiate acme-tls/1".into()));
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ("tls", "no certificate".to_string()))?;
        check_alpn_certificate(leaf, name, key_auth).map_err(|m| ("unauthorized", m))
    }
}

/// Checks an RFC 8737 validation certificate.
fn check_alpn_certificate(der: &[u8], name: &str, key_auth: &str) -> Result<(), String> {
    let cert = crate::ca::inspect::parse_certificate(der)
        .map_err(|_| "the certificate does not parse".to_string())?;
    let mut names = Vec::new();
    let mut digest = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == ACME_IDENTIFIER_OID {
            if !ext.critical {
                return Err("the acmeIdentifier extension is not critical".into());
            }
            // OCTET STRING (32 bytes).
            digest = match ext.value {
                [0x04, 0x20, rest @ ..] if rest.len() == 32 => Some(rest.to_vec()),
                _ => return Err("the acmeIdentifier extension is malformed".into()),
            };
        }
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                    _ => names.push(format!("{n:?}")),
                }
            }
        }
    }
    if names != [name.to_string()] {
        return Err(format!("the certificate must name exactly {name}"));
    }
    let expected = ring::digest::digest(&ring::digest::SHA256, key_auth.as_bytes());
    match digest {
        Some(d) if d == expected.as_ref() => Ok(()),
        Some(_) => Err("the acmeIdentifier does not match the key authorization".into()),
        None => Err("the certificate has no acmeIdentifier extension".into()),
    }
}

/// Where a complete answer ends, once the headers say (`Content-Length`).
fn complete(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]);
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    (raw.len() >= end + len).then_some(end + len)
}

fn header(headers: &[String], name: &str) -> Option<String> {
    headers.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn parse_response(raw: &[u8]) -> Option<(u16, Vec<String>, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let body = raw[end + 4..].to_vec();
    let chunked =
        header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(&body)? } else { body };
    Some((status, headers, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The path of a redirect that stays on `host` over plain HTTP on `port`.
fn same_host_path(host: &str, port: u16, location: &str) -> Option<String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_string());
    }
    let rest = location.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let same = authority.eq_ignore_ascii_case(host)
        || authority.eq_ignore_ascii_case(&format!("{host}:{port}"));
    same.then(|| path.to_string())
}

/// Writes a challenge's outcome into its authorization (retrying if it changed meanwhile).
async fn record(
    control: &Control,
    authz_id: &str,
    n: usize,
    outcome: Result<(), Failure>,
) -> Result<(), super::error::AcmeError> {
    let records = Records(control.state());
    for _ in 0..8 {
        let Some((mut authz, raw)) = records
            .get::<Authorization>(AcmeKind::Authorization, authz_id)
            .await?
        else {
            return Ok(());
        };
        let Some(c) = authz.challenges.get_mut(n) else {
            return Ok(());
        };
        match &outcome {
            Ok(()) => {
                c.status = "valid".into();
                c.validated = Some(crate::clock::rfc3339(control.clock().now()));
            }
            Err((kind, detail)) => {
                c.status = "invalid".into();
                c.error = Some(stored_problem(kind, detail));
            }
        }
        let keep = Some(authz.expires + KEEP_AFTER_EXPIRY);
        if records
            .update(AcmeKind::Authorization, authz_id, &raw, &authz, keep)
            .await?
        {
            return Ok(());
        }
    }
    Err(super::error::AcmeError::Internal(
        "the authorization kept changing".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_same_host() {
        assert_eq!(same_host_path("a.test", 80, "/x").as_deref(), Some("/x"));
        assert_eq!(
            same_host_path("a.test", 5002, "http://a.test:5002/y").as_deref(),
            Some("/y")
        );
        assert_eq!(same_host_path("a.test", 80, "http://evil.test/y"), None);
        assert_eq!(same_host_path("a.test", 80, "//evil.test/y"), None);
        assert_eq!(same_host_path("a.test", 80, "https://a.test/y"), None);
    }

    #[test]
    fn answers_with_and_without_chunks_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(complete(plain), Some(plain.len()));
        assert_eq!(parse_response(plain).expect("parse").2, b"abc");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).expect("parse").2, b"abc");
    }
}
