//! The admin listener: TLS connections accepted within the admin limits (connection cap,
//! handshake and idle timeouts: [`crate::tls::accept`]) with the current admin TLS config,
//! and the peer identities each connection's client certificate presents. It must never decide what a peer may do (that is
//! [`super::access`]).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::connect_info::Connected;
use tokio::net::TcpListener;
use x509_parser::extensions::GeneralName;

use crate::tls::{Connection, ConnectionLimits, DescriptorBudget};

/// Who is on the other end of a connection: the identities in its client certificate.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// URI SANs first, then `CN=<common name>`; empty without a client certificate.
    pub identities: Vec<String>,
    /// The client certificate (DER), checked against revocations on every request.
    pub leaf: Option<Arc<[u8]>>,
}

/// The identities a client certificate (leaf, DER) presents.
pub fn identities(leaf: &[u8]) -> Vec<String> {
    let Ok(cert) = crate::ca::inspect::parse_certificate(leaf) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push(uri.to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            out.push(format!("CN={cn}"));
        }
    }
    out
}

/// Accepted TLS connections within the admin listener's limits ([`crate::tls::accept`]).
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(Connection, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` within `limits` and `budget`, using the current config of `tls`
    /// for each handshake.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ArcSwap<rustls::ServerConfig>>,
        limits: ConnectionLimits,
        budget: DescriptorBudget,
    ) -> std::io::Result<Self> {
        Self::named("admin", listener, tls, limits, budget)
    }

    /// Like [`TlsListener::new`], for the listener `name` (in logs): another HTTPS front door.
    pub fn named(
        name: &'static str,
        listener: TcpListener,
        tls: Arc<ArcSwap<rustls::ServerConfig>>,
        limits: ConnectionLimits,
        budget: DescriptorBudget,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let rx = crate::tls::accept(name, listener, tls, limits, budget);
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor task is gone: never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let (_, conn) = stream.io().tls().get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        Peer {
            addr: *stream.remote_addr(),
            identities: leaf.map(|l| identities(l)).unwrap_or_default(),
            leaf: leaf.map(|l| Arc::from(l.as_ref())),
        }
    }
}
