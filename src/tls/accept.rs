//! Accepting TLS connections on a listener within limits: at most `max_connections` open at
//! once on the listener and, over all listeners of the process, no more than the soft
//! `RLIMIT_NOFILE` leaves after a reserve for the device, the stores and the audit log
//! ([`DescriptorBudget`]). A connection beyond either cap is closed as soon as it is accepted.
//! Each handshake runs on its own task within `handshake_timeout`; afterwards a connection on
//! which nothing is read or written for `idle_timeout` is closed ([`Connection`]). It must
//! never look at what a connection carries.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

/// Descriptors kept free for everything that is not a client connection: the device library
/// and its sessions, sled's files, the audit log, the listeners, the runtime and logs.
pub const DESCRIPTOR_RESERVE: usize = 64;

/// The most descriptors connections may take when the limit is unknown or unlimited.
const UNLIMITED_BUDGET: usize = 1 << 20;

/// How a listener accepts connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (handshaking included); more are closed when accepted.
    pub max_connections: usize,
    /// Time a client has to complete its TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout: Duration,
}

/// The connections all listeners of the process may hold together: the soft `RLIMIT_NOFILE`
/// (from `/proc/self/limits`) minus [`DESCRIPTOR_RESERVE`].
#[derive(Clone, Debug)]
pub struct DescriptorBudget {
    slots: Arc<Semaphore>,
    size: usize,
}

impl DescriptorBudget {
    /// The budget the process's descriptor limit allows.
    pub fn from_process_limit() -> Self {
        let soft = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| soft_open_files(&text));
        let size = match soft {
            Some(soft) => soft.saturating_sub(DESCRIPTOR_RESERVE).max(1),
            None => UNLIMITED_BUDGET,
        };
        Self::new(size)
    }

    /// A budget of `size` connections.
    pub fn new(size: usize) -> Self {
        DescriptorBudget {
            slots: Arc::new(Semaphore::new(size.min(Semaphore::MAX_PERMITS))),
            size,
        }
    }

    /// Connections the budget allows in all.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None`: unlimited or absent).
fn soft_open_files(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An accepted, handshaken TLS connection holding its place under both caps until dropped,
/// and closed (reads and writes fail with `TimedOut`) once idle for the listener's timeout.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    idle_timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    _places: [OwnedSemaphorePermit; 2],
}

impl Connection {
    /// The TLS stream (peer certificates).
    pub fn tls(&self) -> &TlsStream<TcpStream> {
        &self.stream
    }

    fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether the connection has been idle too long; arranges a wake-up otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_activity + self.idle_timeout;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        // The timer fires at the deadline or later, so once it has fired the time is up.
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn idle_error() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if this.idle_expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Accepts on `listener` (named `name` in logs) until the receiver is dropped: each connection
/// takes a place under `limits.max_connections` and in `budget` or is closed at once, then
/// completes its handshake with the current config of `tls` on a task of its own.
pub fn accept(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    budget: DescriptorBudget,
) -> tokio::sync::mpsc::Receiver<(Connection, SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let own = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    tokio::spawn(async move {
        let mut refused_since_log = 0u64;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let places = own
                .clone()
                .try_acquire_owned()
                .ok()
                .zip(budget.slots.clone().try_acquire_owned().ok());
            let Some((mine, process)) = places else {
                // Closing it at once gives the descriptor back.
                drop(tcp);
                if refused_since_log == 0 {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        descriptor_budget = budget.size,
                        "connection limit reached: closing new connections"
                    );
                }
                refused_since_log += 1;
                continue;
            };
            if refused_since_log > 0 && own.available_permits() > 0 {
                tracing::info!(
                    listener = name,
                    closed = refused_since_log,
                    "accepting connections again"
                );
                refused_since_log = 0;
            }
            let _ = tcp.set_nodelay(true);
            // The current TLS config: the trust bundle for client certificates can change.
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let now = Instant::now();
                        let conn = Connection {
                            stream,
                            idle_timeout: limits.idle_timeout,
                            last_activity: now,
                            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
                            _places: [mine, process],
                        };
                        let _ = tx.send((conn, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_descriptor_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            256                  4096                 files     \n";
        assert_eq!(soft_open_files(text), Some(256));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_open_files(unlimited), None);
        assert!(DescriptorBudget::from_process_limit().size() >= 1);
    }
}
