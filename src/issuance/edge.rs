//! The HTTP/2 edge of the issuance service, in front of tonic: request headers larger than
//! [`MAX_HEADER_BYTES`] and request messages larger than [`super::MAX_REQUEST_BYTES`] are
//! answered with a gRPC status (`RESOURCE_EXHAUSTED`, from [`IssuanceError::status`]) instead of
//! HTTP 431 (which clients read as `UNKNOWN`) or tonic's `OUT_OF_RANGE`. HTTP/2 itself refuses
//! header blocks only beyond [`HEADER_CEILING`]. Such refusals are counted and audited like the
//! service's own. A refusal of oversized headers is sent once the client has finished sending
//! its (small) message: answering while the client is still sending makes HTTP/2 reset the
//! stream, which some clients (curl) report as a framing error instead of the status. It must
//! never look into a request's credentials or message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::IssuanceError;
use crate::audit::AuditLog;
use crate::metrics::IssuanceMetrics;

/// Largest request header list accepted (names, values and 32 bytes per field, as HTTP/2
/// counts them). A service-account token is a few KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest header list HTTP/2 decodes at all; beyond it the stream is refused with HTTP 431
/// before any gRPC handling.
pub const HEADER_CEILING: u32 = 256 * 1024;

/// How long a refusal of oversized headers waits for the rest of the request message.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The gRPC status tonic gives a message over the decoding limit (`OUT_OF_RANGE`).
const TONIC_TOO_LARGE: &str = "11";

/// Puts [`RequestLimits`] in front of the gRPC routes.
#[derive(Clone)]
pub struct RequestLimitsLayer {
    metrics: Arc<IssuanceMetrics>,
    audit: Option<Arc<AuditLog>>,
}

impl RequestLimitsLayer {
    pub fn new(metrics: Arc<IssuanceMetrics>, audit: Option<Arc<AuditLog>>) -> Self {
        RequestLimitsLayer { metrics, audit }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            edge: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    edge: RequestLimitsLayer,
}

impl RequestLimitsLayer {
    /// Counts and audits a refusal made here; returns its status.
    fn refuse(&self, e: &IssuanceError) -> tonic::Status {
        let status = e.status();
        let code = format!("{:?}", status.code());
        tracing::info!(code = %code, reason = %e, "refused");
        self.metrics.results.inc(&code);
        if let Some(audit) = &self.audit {
            audit.refused(None, &code, status.message());
        }
        status
    }
}

/// The size of a request's header list as HTTP/2 counts it.
fn header_bytes<B>(req: &Request<B>) -> usize {
    let pseudo = req.uri().path().len() + req.method().as_str().len() + 2 * 32;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// Reads and discards what is left of a request body: at most a gRPC message of the largest
/// size accepted (with its 5-byte prefix), for at most [`DRAIN_WAIT`]. A client that sends more
/// or takes longer gets its answer anyway (with the stream reset).
async fn drain<B>(body: B)
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Send,
{
    let limit = super::MAX_REQUEST_BYTES + 5;
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += bytes::Buf::remaining(data);
            }
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, read).await;
}

impl<S, B> Service<Request<B>> for RequestLimits<S>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let size = header_bytes(&req);
        if size > MAX_HEADER_BYTES {
            let status = self.edge.refuse(&IssuanceError::TooLarge(format!(
                "the request headers are {size} bytes; at most {MAX_HEADER_BYTES} are accepted"
            )));
            return Box::pin(async move {
                drain(req.into_body()).await;
                Ok(status.into_http())
            });
        }
        let answer = self.inner.call(req);
        let edge = self.edge.clone();
        Box::pin(async move {
            let response = answer.await?;
            let too_large = response.headers().get("grpc-status")
                == Some(&HeaderValue::from_static(TONIC_TOO_LARGE));
            if !too_large {
                return Ok(response);
            }
            let status = edge.refuse(&IssuanceError::TooLarge(format!(
                "the request message is larger than {} bytes",
                super::MAX_REQUEST_BYTES
            )));
            Ok(status.into_http())
        })
    }
}
