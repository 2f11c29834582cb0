//! Serving HTTP/1.1 on a TCP listener with the limits a listener facing untrusted clients
//! needs, for the admin API and the gateway alike.
//!
//! `axum::serve` has none of them, so a client that trickles its request head (or never sends
//! one) holds a connection for as long as it likes. Here every connection is served by hyper's
//! HTTP/1 connection builder with a timer, and:
//!
//! - **Header read timeout** (hyper's): the request head must be complete within
//!   `header_read_timeout` of the connection being ready for it, that is of the connection
//!   opening (and of the PROXY header, where there is one) or, on a keep-alive connection, of
//!   the previous response. So it also bounds how long a keep-alive connection may wait idle
//!   for its next request.
//! - **Idle timeout**: a connection on which no byte moves in either direction for
//!   `idle_timeout` is closed, whatever it is doing: a body upload that stalled, a client that
//!   stopped reading its response (a slow-read attack), a stream that went quiet. It is checked
//!   on a tick of a quarter of the timeout, so a connection goes within 1.25 times it.
//! - **Body read timeout**: a request body must arrive whole within `body_read_timeout` of the
//!   request head; past it, reading fails with [`BodyReadTimeout`] (the admin API answers 408
//!   `request_timeout`, the gateway too) and the connection is closed.
//! - **Connection cap**: at most `max_connections` open connections per listener (shared by
//!   every thread serving it). A connection beyond the cap is accepted and closed at once, so
//!   the kernel's queue does not fill with clients that would wait behind it; a slot frees
//!   when a connection closes.
//!
//! Each request carries a [`ConnectionInfo`] extension (and axum's `ConnectInfo<SocketAddr>`
//! with the socket peer), from which [`ConnectionInfo::resolve`] finds the client address
//! under the listener's trusted proxies ([`crate::trusted_proxy`]). Graceful shutdown stops
//! accepting, lets in-flight requests finish and closes idle connections; `serve_router`
//! returns when every connection has closed. Every connection gets `TCP_NODELAY`: small
//! answers go out at once rather than waiting on Nagle's algorithm.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tower::ServiceExt as _;

use crate::trusted_proxy::{Resolved, TrustedProxies};

/// How a listener treats its connections.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Longest time to receive a complete request head (see the module documentation).
    pub header_read_timeout: Duration,
    /// Longest time a connection may pass with no byte read or written.
    pub idle_timeout: Duration,
    /// Longest time to receive a whole request body, from the end of its head.
    pub body_read_timeout: Duration,
    /// Most open connections; more are closed on arrival.
    pub max_connections: usize,
    /// Proxies whose forwarding headers (and PROXY headers) name the client.
    pub trusted_proxies: TrustedProxies,
    /// Read a PROXY protocol header (v1 or v2) at the start of connections from trusted
    /// proxies, and refuse one from anyone else.
    pub proxy_protocol: bool,
    /// Names this listener is reached by besides its IP addresses (and `localhost`):
    /// `GET /metrics` answers only requests whose `Host` is one of them or an address of
    /// the listener (see [`crate::prometheus`]).
    pub host_names: Vec<String>,
}

/// Default header read timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default body read timeout.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: TrustedProxies::default(),
            proxy_protocol: false,
            host_names: Vec::new(),
        }
    }
}

/// A listener configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerConfigError {
    /// PROXY protocol with no trusted proxy would refuse every header.
    #[error("the PROXY protocol needs at least one trusted proxy (only they may send it)")]
    ProxyProtocolWithoutTrustedProxies,
    /// A zero timeout or cap.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// One listener's connection policy and its open-connection slots. Clones share the slots, so
/// every thread serving one address (the per-core gateway) counts against one cap.
#[derive(Clone)]
pub struct Connections {
    name: &'static str,
    config: Arc<ListenerConfig>,
    slots: Arc<Semaphore>,
}

impl Connections {
    /// The policy of the listener called `name` (a metric label: `admin`, `gateway`).
    pub fn new(name: &'static str, config: ListenerConfig) -> Result<Self, ListenerConfigError> {
        if config.proxy_protocol && config.trusted_proxies.is_empty() {
            return Err(ListenerConfigError::ProxyProtocolWithoutTrustedProxies);
        }
        for (value, what) in [
            (config.header_read_timeout, "header_read_timeout"),
            (config.idle_timeout, "idle_timeout"),
            (config.body_read_timeout, "body_read_timeout"),
        ] {
            if value.is_zero() {
                return Err(ListenerConfigError::Zero(what));
            }
        }
        if config.max_connections == 0 {
            return Err(ListenerConfigError::Zero("max_connections"));
        }
        let slots = Arc::new(Semaphore::new(
            config.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            name,
            config: Arc::new(config),
            slots,
        })
    }

    /// The defaults, for tests and embedders.
    pub fn defaults(name: &'static str) -> Self {
        Self {
            name,
            config: Arc::new(ListenerConfig::default()),
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONNECTIONS)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }
}

/// What the listener knows of a request's connection; every request carries it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// The client a trusted proxy named in a PROXY protocol header.
    pub proxied: Option<SocketAddr>,
    config: Arc<ListenerConfig>,
}

impl ConnectionInfo {
    /// Where the request comes from, under the listener's trusted proxies.
    pub fn resolve(&self, headers: &HeaderMap) -> Resolved {
        let peer = self.proxied.unwrap_or(self.peer).ip();
        crate::trusted_proxy::resolve(peer, headers, &self.config.trusted_proxies)
    }

    /// The listener's configured host names.
    pub fn host_names(&self) -> &[String] {
        &self.config.host_names
    }
}

/// Reading a request body took longer than the listener's body read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyReadTimeout;

/// True if `error`, or an error in its source chain, is a [`BodyReadTimeout`].
pub fn is_body_read_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        let timed_out = e.is::<BodyReadTimeout>()
            || e.downcast_ref::<BodyError>()
                .is_some_and(|b| matches!(b, BodyError::TimedOut(_)));
        if timed_out {
            return true;
        }
        current = e.source();
    }
    false
}

/// Why a connection was closed by the listener rather than by its client.
fn closed(listener: &'static str, reason: &'static str) {
    metrics::counter!(
        keyward_engine::telemetry::CONNECTIONS_CLOSED,
        "listener" => listener,
        "reason" => reason
    )
    .increment(1);
}

/// Serves `router` on `listener` under `connections`' policy until `shutdown` resolves, then
/// stops accepting and returns once every open connection has finished.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_fronted(listener, NoFront, router, connections, shutdown).await
}

/// A handler that may take a request before the router: the admin API's lean path for its two
/// hot endpoints ([`crate::serve_api`]).
pub trait Front: Clone + Send + Sync + 'static {
    /// The answer to `request` if this front serves it, else the request back for the router.
    #[expect(
        clippy::result_large_err,
        reason = "the request goes straight on to the router; boxing it would allocate for every request"
    )]
    fn take(
        &self,
        request: Request<Body>,
    ) -> Result<impl Future<Output = axum::response::Response> + Send + use<Self>, Request<Body>>;
}

/// No front: every request goes to the router.
#[derive(Clone, Copy)]
pub struct NoFront;

impl Front for NoFront {
    fn take(
        &self,
        request: Request<Body>,
    ) -> Result<impl Future<Output = axum::response::Response> + Send + use<>, Request<Body>> {
        Err::<std::future::Pending<_>, _>(request)
    }
}

/// [`serve_router`] with `front` offered every request before the router.
pub async fn serve_fronted(
    listener: TcpListener,
    front: impl Front,
    router: Router,
    connections: Connections,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener_local = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a sender; when all are gone, every connection has closed.
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&connections.slots).try_acquire_owned() else {
            tracing::debug!(
                listener = connections.name,
                "connection cap reached; closing a new connection"
            );
            closed(connections.name, "connection_cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(listener_local);
        tokio::spawn(serve_connection(
            stream,
            Accepted { peer, local },
            router.clone(),
            front.clone(),
            connections.clone(),
            stop_rx.clone(),
            (drain_tx.clone(), slot),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(drain_tx);
    let _ = drain_rx.recv().await;
    Ok(())
}

/// Errors of `accept` that concern one connection are skipped; others (out of file
/// descriptors) would repeat at once, so the loop waits a moment, as `axum::serve` does.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

struct Accepted {
    peer: SocketAddr,
    local: SocketAddr,
}

async fn serve_connection(
    mut stream: TcpStream,
    accepted: Accepted,
    router: Router,
    front: impl Front,
    connections: Connections,
    mut stop: watch::Receiver<bool>,
    _held: (mpsc::Sender<()>, OwnedSemaphorePermit),
) {
    let config = &connections.config;
    let name = connections.name;
    let Accepted { peer, local } = accepted;
    let (proxied, prefix) = if config.proxy_protocol {
        let trusted = config.trusted_proxies.contains(peer.ip());
        let read = crate::proxy_protocol::read_preamble(&mut stream, trusted);
        match tokio::time::timeout(config.header_read_timeout, read).await {
            Ok(Ok(preamble)) => (preamble.source, preamble.rest),
            Ok(Err(e)) => {
                tracing::debug!(listener = name, %peer, error = %e, "closing a connection");
                closed(name, "proxy_protocol");
                return;
            }
            Err(_) => {
                closed(name, "header_timeout");
                return;
            }
        }
    } else {
        (None, Vec::new())
    };
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: stream,
        prefix,
        read_from_prefix: 0,
        activity: Arc::clone(&activity),
    });
    let info = ConnectionInfo {
        peer,
        local,
        proxied,
        config: Arc::clone(config),
    };
    let body_timeout = config.body_read_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(|body| Body::new(TimedBody::new(body, body_timeout)));
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(info.clone());
        match front.take(request) {
            Ok(answer) => Either::Left(answer.map(Ok::<_, std::convert::Infallible>)),
            Err(request) => Either::Right(router.clone().oneshot(request)),
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // Idle: four quiet quarter-periods in a row.
    let quarter = (config.idle_timeout / 4).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + quarter, quarter);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet) = (0, 0);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        closed(name, "header_timeout");
                    } else {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                    }
                }
                return;
            }
            _ = tick.tick() => {
                let now = activity.load(Ordering::Relaxed);
                if now == seen {
                    quiet += 1;
                    if quiet >= 4 {
                        closed(name, "idle_timeout");
                        return;
                    }
                } else {
                    (seen, quiet) = (now, 0);
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection's stream that first replays the bytes read ahead of it (past a PROXY header)
/// and counts every read and write that moves bytes, for the idle timeout.
struct Watched {
    inner: TcpStream,
    prefix: Vec<u8>,
    read_from_prefix: usize,
    activity: Arc<AtomicU64>,
}

impl Watched {
    fn moved(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read_from_prefix < this.prefix.len() {
            let rest = &this.prefix[this.read_from_prefix..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read_from_prefix += n;
            if this.read_from_prefix == this.prefix.len() {
                this.prefix = Vec::new();
                this.read_from_prefix = 0;
            }
            this.moved();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that must arrive whole by a deadline. The timer is made only if the body
/// has to be waited for, so a bodiless request costs no timer.
struct TimedBody {
    inner: Incoming,
    deadline: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        let deadline = (!inner.is_end_stream()).then(|| tokio::time::Instant::now() + timeout);
        Self {
            inner,
            deadline,
            timer: None,
        }
    }
}

/// What reading a request body can fail with.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    TimedOut(#[from] BodyReadTimeout),
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::from))),
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyReadTimeout.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_configurations_are_refused() {
        let proxy_only = ListenerConfig {
            proxy_protocol: true,
            ..ListenerConfig::default()
        };
        assert_eq!(
            Connections::new("t", proxy_only).err(),
            Some(ListenerConfigError::ProxyProtocolWithoutTrustedProxies)
        );
        let no_slots = ListenerConfig {
            max_connections: 0,
            ..ListenerConfig::default()
        };
        assert_eq!(
            Connections::new("t", no_slots).err(),
            Some(ListenerConfigError::Zero("max_connections"))
        );
        let no_time = ListenerConfig {
            idle_timeout: Duration::ZERO,
            ..ListenerConfig::default()
        };
        assert!(Connections::new("t", no_time).is_err());
    }

    #[test]
    fn a_body_timeout_is_found_in_a_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BodyError);
        assert!(is_body_read_timeout(&Outer(BodyReadTimeout.into())));
        assert!(!is_body_read_timeout(&std::io::Error::other("x")));
    }
}
