//! The HTTP server: eso's own accept loop around hyper, because a client is
//! load before it has sent a whole request. `axum::serve` holds a
//! connection for as long as its client trickles bytes, and accepts until
//! the process runs out of files. Here every connection
//!
//! - takes one of `ESO_MAX_CONNECTIONS` slots; with none free it is
//!   answered `503` and closed at once, without a task;
//! - sends a request's headers within `ESO_HEADER_TIMEOUT` (hyper's
//!   header-read timeout, which also closes a kept-alive connection idle
//!   that long), or is closed;
//! - sends a request's body within `ESO_BODY_TIMEOUT` of its headers, or is
//!   answered `408` (by the handler reading it) and closed.
//!
//! On stop it no longer accepts, lets the requests in flight finish, closes
//! idle connections, and returns once every connection has ended.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::{self, Config};

/// `ESO_MAX_CONNECTIONS` when unset: enough for a replica behind a
/// gateway that pools its connections, few enough that the files fit the
/// common `ulimit -n` of containers and of a raised laptop shell.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Files eso opens besides its clients' connections: the listener, logs,
/// NATS, the sagas directory, the exporter, and some slack; each database
/// connection adds its own ([`reserved_files`]).
const RESERVED_FILES: u64 = 256;

/// After an accept error that is not one client's (out of files, of
/// memory): long enough not to spin on a listener that fails at once,
/// short enough to take connections again soon after files are freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often a run of accept errors is logged.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(5);

/// How a connection must behave to be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Limits {
    /// The configured limits, checked again (a `Config` built in code has
    /// not been through clap's parsers), with a connection cap the
    /// process's open-file limit can hold: the soft limit is raised toward
    /// it if the hard one allows. An explicit `ESO_MAX_CONNECTIONS` the
    /// limit cannot hold stops eso with the reason; the default is lowered
    /// to fit, with a warning.
    pub fn from_config(config: &Config) -> anyhow::Result<Limits> {
        let setting = |name: &str, checked: Result<(), String>| checked.map_err(|e| anyhow::anyhow!("{name} {e}"));
        setting("ESO_HEADER_TIMEOUT", config::check_duration(config.header_timeout, &config::HEADER_TIMEOUT))?;
        setting("ESO_BODY_TIMEOUT", config::check_duration(config.body_timeout, &config::BODY_TIMEOUT))?;
        if let Some(n) = config.max_connections {
            setting("ESO_MAX_CONNECTIONS", config::check_max_connections(n))?;
        }
        let reserved = reserved_files(config.db_pool);
        let wanted = config.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let limit = open_file_limit(wanted as u64 + reserved);
        let max_connections = fit_to_file_limit(config.max_connections, reserved, limit).map_err(|e| anyhow::anyhow!(e))?;
        if max_connections < wanted {
            tracing::warn!(
                max_connections,
                open_file_limit = limit,
                "the open-file limit (ulimit -n) cannot hold {DEFAULT_MAX_CONNECTIONS} connections; raise it, or set ESO_MAX_CONNECTIONS"
            );
        }
        Ok(Limits { max_connections, header_timeout: config.header_timeout, body_timeout: config.body_timeout })
    }
}

/// Files to keep for everything but clients: a SQLite connection holds its
/// file, its WAL and its shared memory, a Postgres one a socket.
fn reserved_files(db_pool: u32) -> u64 {
    RESERVED_FILES + 3 * u64::from(db_pool)
}

/// The connection cap under an open-file `limit` (`None`: unknown, or no
/// limit to speak of).
fn fit_to_file_limit(setting: Option<usize>, reserved: u64, limit: Option<u64>) -> Result<usize, String> {
    let wanted = setting.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let Some(limit) = limit else { return Ok(wanted) };
    if wanted as u64 + reserved <= limit {
        return Ok(wanted);
    }
    match setting {
        Some(n) => Err(format!(
            "ESO_MAX_CONNECTIONS={n} needs about {} open files, but this process may open {limit} (ulimit -n); raise the limit or lower ESO_MAX_CONNECTIONS",
            n as u64 + reserved
        )),
        // Under a tiny limit, half of it still serves clients.
        None => Ok(usize::try_from(limit.saturating_sub(reserved).max(limit / 2)).unwrap_or(wanted).clamp(1, wanted)),
    }
}

/// The process's open-file limit once raised toward `wanted` (unprivileged
/// processes may raise their soft limit up to the hard one); `None` if it
/// cannot be read.
#[cfg(unix)]
// `rlim_t` is `u64` on Linux, not on every Unix.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn open_file_limit(wanted: u64) -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let (soft, hard) = (u64::from(limit.rlim_cur), u64::from(limit.rlim_max));
    if soft >= wanted.min(hard) {
        return Some(soft);
    }
    let soft_wanted: libc::rlim_t = wanted.min(hard).try_into().unwrap_or(limit.rlim_max);
    let raised = libc::rlimit { rlim_cur: soft_wanted, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct we pass; a soft limit at most the
    // hard one is always allowed, and only this process's limit changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(from = soft, to = wanted.min(hard), "raised the open-file limit");
        Some(wanted.min(hard))
    } else {
        Some(soft)
    }
}

#[cfg(not(unix))]
fn open_file_limit(_wanted: u64) -> Option<u64> {
    None
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusal = refusal(limits.max_connections);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let connections = TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_one_clients(&e) => continue,
            Err(e) => {
                accept_errors.failed(&e);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(stream, &refusal);
            continue;
        };
        let open = Open::new(slot);
        let seen = Arc::new(Seen::default());
        let io = TokioIo::new(Watched { stream, seen: seen.clone() });
        let (router, body_timeout) = (router.clone(), limits.body_timeout);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(|body| axum::body::Body::new(Deadline::new(body, body_timeout)));
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let connection = http.serve_connection(io, service);
        let stop = stop.clone();
        connections.spawn(async move {
            let _open = open;
            let mut connection = pin!(connection);
            let mut stopping = false;
            let ended = loop {
                tokio::select! {
                    ended = connection.as_mut() => break ended,
                    // Finishes the request in flight, if any, then closes.
                    () = stop.cancelled(), if !stopping => {
                        connection.as_mut().graceful_shutdown();
                        stopping = true;
                    }
                }
            };
            match ended {
                Ok(()) => {}
                Err(e) if e.is_timeout() && seen.idle() => tracing::trace!(%remote, "closed a connection idle for the header timeout"),
                Err(e) if e.is_timeout() => {
                    metrics::counter!("eso_http_slow_clients_total", "phase" => "headers").increment(1);
                    tracing::debug!(%remote, "closed a connection that did not send its headers in time");
                }
                Err(e) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
            }
        });
    }
    // Dropping the listener refuses new connections at once, rather than
    // leaving them in the backlog until the process exits.
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors of one connection that was gone before it was accepted.
fn is_one_clients(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted)
}

/// Counts accept errors and logs a run of them now and then, not each: out
/// of files, the listener fails ten times a second.
#[derive(Default)]
struct AcceptErrors {
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, e: &io::Error) {
        metrics::counter!("eso_http_accept_errors_total").increment(1);
        if self.logged.is_some_and(|at| at.elapsed() < ACCEPT_ERROR_LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %e, since_last = self.unlogged, "cannot accept connections; retrying in {}ms", ACCEPT_BACKOFF.as_millis());
        (self.logged, self.unlogged) = (Some(Instant::now()), 0);
    }
}

/// The whole answer to a connection past the cap.
fn refusal(max_connections: usize) -> Vec<u8> {
    let body = serde_json::json!({ "error": format!("this replica holds its maximum of {max_connections} connections; try again") }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection past the cap and closes it, without a task or a
/// wait: a fresh socket's send buffer is empty, so the short answer is
/// written whole at once (or, if not, the client gets the close alone).
/// Answering rather than only closing tells a client, or a gateway that
/// would retry another replica, why. What the client already sent is read
/// first, so the close is a FIN after the answer and not a reset that
/// could discard it; a client whose request arrives after that may see a
/// reset instead, which is as quick a refusal.
fn refuse(stream: TcpStream, refusal: &[u8]) {
    metrics::counter!("eso_http_connections_refused_total").increment(1);
    // Plain non-blocking system calls: tokio's `try_read`/`try_write` would
    // answer "would block" until the reactor has polled the new socket.
    let Ok(stream) = stream.into_std() else { return };
    let mut sink = [0u8; 2048];
    for _ in 0..4 {
        match io::Read::read(&mut &stream, &mut sink) {
            Ok(n) if n == sink.len() => continue,
            _ => break,
        }
    }
    let _ = io::Write::write(&mut &stream, refusal);
}

/// A connection's slot, and its count in `eso_http_connections_open`, for
/// as long as its task lives.
struct Open {
    _slot: OwnedSemaphorePermit,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit) -> Open {
        metrics::gauge!("eso_http_connections_open").increment(1.0);
        Open { _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("eso_http_connections_open").decrement(1.0);
    }
}

/// What a connection did lately, to tell a slow client from an idle one
/// when the header timeout closes it: hyper's error is the same for both.
#[derive(Default)]
struct Seen(AtomicU8);

impl Seen {
    /// Bytes arrived since the last answer was written.
    const READ: u8 = 1;
    /// At least one answer was written.
    const ANSWERED: u8 = 2;

    /// Answered before and quiet since: a kept-alive connection at rest,
    /// not a client too slow to send its request. A connection that never
    /// sent a byte is counted slow: it held a slot for nothing.
    fn idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::ANSWERED
    }
}

/// The client's socket, noting in [`Seen`] when bytes come and go.
struct Watched {
    stream: TcpStream,
    seen: Arc<Seen>,
}

impl Watched {
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.seen.0.store(Seen::ANSWERED, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.seen.0.fetch_or(Seen::READ, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
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

/// A request body that must arrive whole by a deadline set when its
/// headers came in. Not tower-http's body timeout, which bounds each wait
/// between two frames: a client trickling a byte a second never trips it.
struct Deadline<B> {
    body: B,
    deadline: tokio::time::Instant,
    timeout: Duration,
    /// Started on the first wait, so a body read at once costs no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl<B> Deadline<B> {
    fn new(body: B, timeout: Duration) -> Deadline<B> {
        Deadline { body, deadline: tokio::time::Instant::now() + timeout, timeout, timer: None, expired: false }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
        }
        // Bytes that are here are taken even past the deadline: the client
        // sent them in time, eso was slow to read them.
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        ready!(this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline))).as_mut().poll(cx));
        this.expired = true;
        metrics::counter!("eso_http_slow_clients_total", "phase" => "body").increment(1);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        !self.expired && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error of a body that missed its deadline, found by [`body_timed_out`].
#[derive(Debug)]
pub struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body did not arrive within {}", humantime::format_duration(self.0))
    }
}

impl std::error::Error for BodyTimedOut {}

/// The body deadline behind an error, however deep axum wrapped it.
pub fn body_timed_out<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(timed_out) = error.downcast_ref::<BodyTimedOut>() {
            return Some(timed_out);
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let reserved = reserved_files(16);
        // No limit known, or room enough: the cap as set.
        assert_eq!(fit_to_file_limit(None, reserved, None), Ok(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(fit_to_file_limit(Some(50), reserved, Some(1024)), Ok(50));
        assert_eq!(fit_to_file_limit(None, reserved, Some(1 << 20)), Ok(DEFAULT_MAX_CONNECTIONS));
        // The default shrinks to fit; a setting that cannot fit is refused with the numbers.
        assert_eq!(fit_to_file_limit(None, reserved, Some(1024)), Ok(1024 - reserved as usize));
        assert_eq!(fit_to_file_limit(None, reserved, Some(64)), Ok(32));
        let refused = fit_to_file_limit(Some(20_000), reserved, Some(4096)).err().unwrap_or_default();
        assert!(refused.contains("ESO_MAX_CONNECTIONS=20000") && refused.contains("4096"), "{refused}");
    }

    #[test]
    fn the_refusal_is_one_complete_json_answer() {
        let refusal = String::from_utf8(refusal(50)).unwrap_or_default();
        let (head, body) = refusal.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("connection: close"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let error = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["error"].as_str().map(str::to_string));
        assert!(error.is_some_and(|e| e.contains("50 connections")), "{body}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_misses_its_deadline_fails_with_an_error_that_says_so() {
        use futures::StreamExt;
        use http_body_util::BodyExt;
        // One byte, then nothing, as a client that stopped sending.
        let trickle = futures::stream::iter([Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"{")))]).chain(futures::stream::pending());
        let mut body = Deadline::new(http_body_util::StreamBody::new(trickle), Duration::from_secs(1));
        let first = body.frame().await.and_then(|f| f.ok()).and_then(|f| f.into_data().ok());
        assert_eq!(first.as_deref(), Some(&b"{"[..]));
        // Nothing more: the deadline passes.
        let error = body.frame().await.and_then(|f| f.err()).map(|e| body_timed_out(&*e).map(ToString::to_string));
        assert_eq!(error, Some(Some("the request body did not arrive within 1s".to_string())));
    }
}
