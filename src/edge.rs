//! The network edge: accepts TCP connections on each listener and serves HTTP/1.1 on them with
//! hyper, under `[server]`'s connection limits, so slow and large clients can't hold the host.
//!
//! Each limit and what enforces it:
//! - header read timeout and the bounded header buffer: hyper's HTTP/1 builder;
//! - body timeout: [`DeadlineBody`], one deadline for the whole body;
//! - idle timeout: [`Activity`], which watches bytes and requests on the connection;
//! - connection cap: a semaphore per listener; a connection over it is closed once accepted.
//!
//! Shutdown stops accepting on every listener, then lets each open connection finish the request
//! it is on (hyper's graceful shutdown) before [`serve`] returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::settings::ConnectionLimits;

/// One listener and the routes it serves.
pub(crate) struct Endpoint {
    /// Names the listener in logs: `main` or `admin`.
    pub(crate) name: &'static str,
    pub(crate) listener: TcpListener,
    pub(crate) router: Router,
}

/// Serves every endpoint until `shutdown` completes, then stops accepting and waits for open
/// connections to finish. Each connection's limits bound that wait.
pub(crate) async fn serve(
    endpoints: Vec<Endpoint>,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_header_size(limits.max_header_bytes);
    let graceful = GracefulShutdown::new();
    let accepting = futures::future::join_all(
        endpoints
            .into_iter()
            .map(|endpoint| accept(endpoint, &http, limits, &graceful)),
    );
    tokio::select! {
        _ = accepting => {}
        () = shutdown => {}
    }
    // The accept loops, and with them the listeners, are dropped: no new connection is taken.
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "waiting for open connections to finish");
    }
    graceful.shutdown().await;
}

/// Accepts connections on one listener forever, each served on its own task.
async fn accept(
    endpoint: Endpoint,
    http: &http1::Builder,
    limits: &ConnectionLimits,
    graceful: &GracefulShutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = Refusals::default();
    loop {
        let (stream, remote) = match endpoint.listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::error!(listener = endpoint.name, error = %e, "failed to accept a connection; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once rather than left waiting in the kernel's queue: the client learns
            // now, and nothing it sent is read or buffered.
            drop(stream);
            refusals.note(endpoint.name, limits.max_connections);
            continue;
        };
        let activity = Arc::new(Activity::default());
        let service = Edge {
            router: endpoint.router.clone(),
            remote,
            activity: activity.clone(),
            body_timeout: limits.body_timeout,
        };
        let io = TokioIo::new(Tracked {
            stream,
            activity: activity.clone(),
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(%remote, error = %e, "connection closed with an error");
                    }
                }
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(%remote, ?idle_timeout, "closed an idle connection");
                }
            }
            drop(slot);
        });
    }
}

/// Errors about one connection, which the next `accept` doesn't share.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts connections refused over the cap, and warns at most every ten seconds so a flood
/// doesn't flood the log too.
#[derive(Default)]
struct Refusals {
    since_warning: u64,
    warned_at: Option<Instant>,
}

impl Refusals {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, listener: &str, cap: usize) {
        self.since_warning += 1;
        if self.warned_at.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            tracing::warn!(
                listener,
                refused = self.since_warning,
                max_connections = cap,
                "refused connections over server.max_connections"
            );
            self.since_warning = 0;
            self.warned_at = Some(Instant::now());
        }
    }
}

/// The per-connection service: hands each request to the router with the client's address and
/// a body deadline, and marks the connection busy until the response is ready.
#[derive(Clone)]
struct Edge {
    router: Router,
    remote: SocketAddr,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(&self.activity);
        let expired = Arc::new(AtomicBool::new(false));
        let (mut parts, body) = request.into_parts();
        // What `into_make_service_with_connect_info` would add: the dashboard's login limit
        // reads it.
        parts.extensions.insert(ConnectInfo(self.remote));
        let body = DeadlineBody {
            body,
            deadline: Instant::now() + self.body_timeout,
            timer: None,
            expired: expired.clone(),
        };
        let response = self
            .router
            .clone()
            .oneshot(Request::from_parts(parts, body));
        let body_timeout = self.body_timeout;
        Box::pin(async move {
            let response = response.await?;
            drop(busy);
            if expired.load(Ordering::Relaxed) {
                return Ok(body_timed_out(body_timeout));
            }
            Ok(response)
        })
    }
}

/// The answer when a body missed its deadline, whatever the handler made of the error.
fn body_timed_out(limit: Duration) -> Response {
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, "close")],
        format!(
            "the request body did not arrive within {} ms (server.body_timeout_ms)\n",
            limit.as_millis()
        ),
    )
        .into_response()
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within server.body_timeout_ms")]
struct BodyTimedOut;

/// A request body that fails once its deadline passes. One deadline for the whole body, where
/// tower-http's `RequestBodyTimeout` restarts its timer at every chunk, which a client sending a
/// byte every few seconds would keep alive for hours.
struct DeadlineBody {
    body: Incoming,
    deadline: Instant,
    /// Made on the first wait, so requests without a body never arm a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Tells [`Edge`] to answer 408 whatever the handler answered.
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        // What has arrived is taken first, even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        this.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(BodyTimedOut.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a connection is doing, for the idle timeout: bytes moved and requests being handled.
#[derive(Default)]
struct Activity {
    /// Bumped for every read or write that moved bytes; only compared, never read as a count.
    progress: AtomicU64,
    /// Requests whose response is not ready yet: a slow handler is not an idle client.
    busy: AtomicUsize,
}

impl Activity {
    fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle for `limit`: nothing handled, nothing read
    /// or written. Checked four times per `limit`, so it completes within 1.25 × `limit`.
    async fn idle_for(&self, limit: Duration) {
        let tick = limit / 4;
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = self.progress.load(Ordering::Relaxed);
            if now != seen || self.busy.load(Ordering::Relaxed) > 0 {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= limit {
                return;
            }
        }
    }
}

/// Held while a request is being handled.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        // The idle clock restarts when the response is ready, not when the request came.
        self.0.progressed();
    }
}

/// The TCP stream, noting every read and write that moves bytes.
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.progressed();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
