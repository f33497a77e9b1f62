//! A small raw ACME client for the protocol tests: P-256 (ES256) account keys signed with
//! ring, flattened JWS requests built by hand (so a test can break any part of them), EAB
//! bindings, and HTTPS calls that return the status, headers and body.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// One answer.
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The problem type without its namespace (`badNonce`).
    pub fn problem(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:ietf:params:acme:error:")
            .to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn nonce(&self) -> String {
        self.header("replay-nonce")
            .expect("every answer carries a Replay-Nonce")
    }
}

/// An ES256 account key.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        AccountKey { pair, rng }
    }

    pub fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"crv": "P-256", "kty": "EC", "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }

    pub fn thumbprint(&self) -> String {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            serde_json::to_string(&self.jwk()).expect("json").as_bytes(),
        );
        b64(digest.as_ref())
    }

    /// A flattened JWS of `payload` (`None`: POST-as-GET) with `header` as the protected header.
    pub fn sign(&self, header: &Value, payload: Option<&Value>) -> Value {
        let protected = b64(header.to_string().as_bytes());
        let payload = payload
            .map(|p| b64(p.to_string().as_bytes()))
            .unwrap_or_default();
        let sig = self
            .pair
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .expect("sign");
        json!({"protected": protected, "payload": payload, "signature": b64(sig.as_ref())})
    }
}

/// An External Account Binding over `jwk` for `url`, MACed with `hmac_key` (base64url).
pub fn eab(kid: &str, hmac_key: &str, jwk: &Value, url: &str) -> Value {
    let protected = b64(json!({"alg": "HS256", "kid": kid, "url": url})
        .to_string()
        .as_bytes());
    let payload = b64(jwk.to_string().as_bytes());
    let key = URL_SAFE_NO_PAD.decode(hmac_key).expect("hmac key");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let tag = ring::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    json!({"protected": protected, "payload": payload, "signature": b64(tag.as_ref())})
}

/// An HTTPS client of the ACME listener.
pub struct Client {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub base: String,
}

impl Client {
    pub fn new(addr: SocketAddr, roots: &[Vec<u8>]) -> Self {
        let mut tls = hsm_ca::tls::client_config(roots, None, false).expect("tls");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            addr,
            tls: Arc::new(tls),
            base: format!("https://127.0.0.1:{}", addr.port()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        let host = self.base.trim_start_matches("https://").to_string();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/jose+json");
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(bytes))).expect("request"))
            .await
            .expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn nonce(&self) -> String {
        self.call("HEAD", "/acme/new-nonce", None).await.nonce()
    }

    /// POSTs `payload` signed by `key` as account `kid` (or with its jwk when `kid` is None).
    pub async fn post(
        &self,
        key: &AccountKey,
        kid: Option<&str>,
        path: &str,
        payload: Option<&Value>,
    ) -> Answer {
        let mut header =
            json!({"alg": "ES256", "nonce": self.nonce().await, "url": self.url(path)});
        match kid {
            Some(k) => header["kid"] = json!(k),
            None => header["jwk"] = key.jwk(),
        }
        self.call("POST", path, Some(&key.sign(&header, payload)))
            .await
    }

    /// Registers `key` with an EAB binding; the account URL.
    pub async fn register(&self, key: &AccountKey, kid: &str, hmac: &str) -> String {
        let binding = eab(kid, hmac, &key.jwk(), &self.url("/acme/new-account"));
        let a = self
            .post(
                key,
                None,
                "/acme/new-account",
                Some(&json!({"termsOfServiceAgreed": true, "contact": [], "externalAccountBinding": binding})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        a.header("location").expect("account location")
    }

    /// The path of one of our URLs.
    pub fn path_of(&self, url: &str) -> String {
        url.strip_prefix(&self.base).expect("our URL").to_string()
    }
}
