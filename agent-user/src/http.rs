//! The HTTP endpoints, hardened against misbehaving clients:
//!
//! - at most [`MAX_CONNECTIONS`] connections are served at once; past that a new connection
//!   gets a best-effort `503` and is closed at once, counted by [`rejected_connections`];
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] (slowloris), fit in
//!   [`MAX_BUF`] bytes (else `431`), and be GET or HEAD; request bodies are never read;
//! - a connection with no request in flight and no byte moving either way for
//!   [`IDLE_TIMEOUT`] is closed (idle keep-alive, half-open peers, readers that stopped
//!   reading), and no connection lives longer than [`CONNECTION_LIFETIME`];
//! - the expensive work is bounded too: one collection per endpoint runs at a time, and every
//!   request that arrived before it started shares its result ([`Coalesced`]), so a burst of
//!   scrapes (or of scrape requests whose clients reset at once) costs two collections, not one
//!   each; [`BCRYPTS`] password checks run at once; each holds its turn until the blocking work
//!   itself ends, even when the client has gone;
//! - a client that resets or vanishes only ends its own connection task.
//!
//! Optional TLS and basic auth come from the exporter-toolkit web config (`webconfig.rs`). The
//! file and the PEM files it names are re-read when they change (checked at most every
//! [`RELOAD_CHECK`], on accept), so certificates can be rotated without a restart; a changed
//! file that does not load is logged and the previous configuration stays in force.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::{self, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    api,
    daemon::Shared,
    metrics,
    webconfig::{self, AuthCache, Verdict, WebConfig},
};

/// Connections served at once; past this, new connections are closed right away.
pub const MAX_CONNECTIONS: usize = 256;
/// A request head (request line and headers) must be complete within this long.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must be complete within this long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// No request in flight and no byte read or written for this long: the connection is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the whole life of one connection, keep-alive included.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Read buffer of a connection: a request head larger than this gets `431`.
pub const MAX_BUF: usize = 16 * 1024;
/// bcrypt verifications at once (each costs tens to hundreds of ms of one core).
pub const BCRYPTS: usize = 1;
/// Connections the kernel queues for accept (capped by `net.core.somaxconn`). The listener comes
/// with std's 128, which a burst of connections overflows: their SYNs are dropped and retried a
/// second or more later.
pub const LISTEN_BACKLOG: i32 = 4096;
/// How often, at most, the web config files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Connections closed at once because [`MAX_CONNECTIONS`] were being served.
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// Connections refused since start because the connection cap was reached.
pub fn rejected_connections() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// Sent (best effort, one non-blocking write) to a plain-HTTP connection past the cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\
Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";
/// Sent to a plain-HTTP request on the TLS port (Go's wording, which Prometheus users know).
const HTTP_TO_HTTPS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
Client sent an HTTP request to an HTTPS server.\n";

/// State shared by every connection.
struct Server {
    shared: Arc<Shared>,
    auth_cache: AuthCache,
    metrics: Arc<Coalesced>,
    targets: Arc<Coalesced>,
    bcrypts: Arc<Semaphore>,
}

/// One endpoint's expensive answer, computed once for everyone waiting. A request is answered
/// by a computation that started after it arrived (never by an older one), so coalescing never
/// serves stale data.
#[derive(Default)]
struct Coalesced {
    /// Held by the computation in progress, until its blocking work ends.
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Requests waiting for their turn.
    waiting: AtomicUsize,
    /// When the last computation started, and what it gave, kept only while requests wait that
    /// may share it: an idle endpoint holds no answer (a scrape's is megabytes).
    last: std::sync::Mutex<Option<(Instant, Answer)>>,
}

/// Counts a request in [`Coalesced::waiting`] for as long as it lives (it may be cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A computed body (shared by every response that serves it, never copied), or why there is none.
type Answer = Arc<Result<Bytes, String>>;

impl Coalesced {
    async fn get(self: &Arc<Self>, shared: &Arc<Shared>, compute: fn(&Arc<Shared>) -> Result<Bytes, String>) -> Answer {
        // Counted before its arrival time is taken: a computation that starts later sees it.
        let waiting = Waiting::new(&self.waiting);
        let arrived = Instant::now();
        let turn = self.turn.clone().lock_owned().await;
        drop(waiting);
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((started, result)) = &*last
                && *started >= arrived
            {
                let result = result.clone();
                if self.waiting.load(Ordering::SeqCst) == 0 {
                    *last = None;
                }
                return result;
            }
            // Turns come in arrival order: whoever could share that answer has had it.
            *last = None;
        }
        let (this, shared) = (self.clone(), shared.clone());
        let job = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let started = Instant::now();
            let result = Arc::new(compute(&shared));
            if this.waiting.load(Ordering::SeqCst) > 0 {
                *this.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((started, result.clone()));
            }
            result
        });
        job.await.unwrap_or_else(|e| Arc::new(Err(e.to_string())))
    }
}

fn metrics_text(shared: &Arc<Shared>) -> Result<Bytes, String> {
    metrics::scrape(shared)
        .map(Bytes::from_owner)
        .map_err(|e| e.to_string())
}

/// What the web config says, ready to serve with.
struct Site {
    tls: Option<TlsAcceptor>,
    /// User → bcrypt hash; empty: no authentication.
    users: Arc<BTreeMap<String, String>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Site {
    fn new(cfg: &WebConfig) -> Site {
        Site {
            tls: cfg.tls_server_config().map(TlsAcceptor::from),
            users: Arc::new(cfg.basic_auth_users.clone()),
            // Validated by the parser: printable ASCII, names from a fixed list.
            headers: (cfg.headers.iter())
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }
}

/// Serves until the process ends. A web config that does not load ends the process with exit
/// code 2 and a message naming the key (the daemon is expected to have checked it with
/// [`webconfig::load`] before loading anything, so this only happens if the file changed since).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, web_config: Option<PathBuf>) {
    let mut web = match WebSource::new(web_config) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("refusal-agent: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let server = Arc::new(Server {
        shared,
        auth_cache: AuthCache::new(),
        metrics: Arc::default(),
        targets: Arc::default(),
        bcrypts: Arc::new(Semaphore::new(BCRYPTS)),
    });
    // SAFETY: listen(2) on our own listening socket; on Linux listening again only resizes its
    // accept queue.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "could not enlarge the accept queue");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_log = RateLimited::default();
    let mut shed_log = RateLimited::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // The peer gave up between its SYN and our accept: nothing to do.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR)) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: back off instead of spinning.
                if accept_log.ready() {
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let site = web.current();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let total = REJECTED.fetch_add(1, Ordering::Relaxed) + 1;
            // One non-blocking write straight to the socket (the reactor has not seen it
            // writable yet), then close.
            if let Ok(std_stream) = stream.into_std()
                && site.tls.is_none()
            {
                let _ = (&std_stream).write(BUSY);
            }
            if shed_log.ready() {
                tracing::warn!(
                    max = MAX_CONNECTIONS,
                    rejected_total = total,
                    "connection cap reached: closing new connections"
                );
            }
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection(stream, site, server)).await;
            drop(permit);
        });
    }
}

/// One log line per [`RateLimited::EVERY`] at most, for events a client can repeat at will.
#[derive(Default)]
struct RateLimited(Option<Instant>);

impl RateLimited {
    const EVERY: Duration = Duration::from_secs(10);

    fn ready(&mut self) -> bool {
        let ready = self.0.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if ready {
            self.0 = Some(Instant::now());
        }
        ready
    }
}

/// The web config in force, re-read when one of its files changes.
struct WebSource {
    path: Option<PathBuf>,
    site: Arc<Site>,
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

impl WebSource {
    fn new(path: Option<PathBuf>) -> Result<WebSource, webconfig::WebConfigError> {
        let cfg = match &path {
            Some(p) => webconfig::load(p)?,
            None => WebConfig::default(),
        };
        if path.is_some() {
            describe(&cfg);
        }
        Ok(WebSource {
            path,
            site: Arc::new(Site::new(&cfg)),
            stamps: cfg.files.iter().map(|f| stamp(f)).collect(),
            files: cfg.files,
            checked: Instant::now(),
        })
    }

    fn current(&mut self) -> Arc<Site> {
        if let Some(path) = &self.path
            && self.checked.elapsed() >= RELOAD_CHECK
        {
            self.checked = Instant::now();
            let stamps: Vec<Stamp> = self.files.iter().map(|f| stamp(f)).collect();
            if stamps != self.stamps {
                // Remembered even when the load fails: retried on the next change, not logged
                // every few seconds.
                self.stamps = stamps;
                match webconfig::load(path) {
                    Ok(cfg) => {
                        tracing::info!(file = %path.display(), "web config changed: reloaded");
                        describe(&cfg);
                        self.site = Arc::new(Site::new(&cfg));
                        self.stamps = cfg.files.iter().map(|f| stamp(f)).collect();
                        self.files = cfg.files;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "web config changed but does not load: keeping the previous one")
                    }
                }
            }
        }
        self.site.clone()
    }
}

fn describe(cfg: &WebConfig) {
    let tls = cfg.tls.as_ref().map(|t| format!("{:?}", t.client_auth));
    tracing::info!(
        tls = tls.as_deref().unwrap_or("off"),
        basic_auth_users = cfg.basic_auth_users.len(),
        "web config"
    );
    if cfg.tls.is_none() && !cfg.basic_auth_users.is_empty() {
        tracing::warn!("basic auth without TLS: passwords cross the network in clear text");
    }
}

async fn connection(stream: TcpStream, site: Arc<Site>, server: Arc<Server>) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let Some(acceptor) = site.tls.clone() else {
        return http(Tracked::new(stream, activity.clone()), activity, site, server).await;
    };
    // A TLS connection opens with a handshake record (0x16); anything else is most likely
    // plain HTTP: say so rather than fail the handshake without a word.
    let mut first = [0u8; 1];
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(1)) => return refuse_plain_http(stream).await,
        _ => return,
    }
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    http(Tracked::new(tls, activity.clone()), activity, site, server).await
}

async fn refuse_plain_http(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(HTTP_TO_HTTPS).await?;
        stream.shutdown().await?;
        // Read what the client sent, a little, so that closing does not reset the connection
        // before the client has read the answer.
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// Serves HTTP/1.1 on one connection until the client closes, an error, or [`IDLE_TIMEOUT`].
async fn http<I>(io: Tracked<I>, activity: Arc<Activity>, site: Arc<Site>, server: Arc<Server>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let busy = activity.clone();
    let service = service_fn(move |req| {
        let (site, server, guard) = (site.clone(), server.clone(), Busy::new(busy.clone()));
        async move {
            let response = handle(req, site, server).await;
            drop(guard);
            response
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        let idle_deadline = activity.last() + IDLE_TIMEOUT;
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(idle_deadline.into()) => {
                if activity.busy.load(Ordering::Relaxed) == 0 && activity.last().elapsed() >= IDLE_TIMEOUT {
                    // Dropping the connection closes it.
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and whether a request is being handled.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Marks a request in flight for as long as it lives (dropped too when the client goes).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An I/O stream that records progress in its [`Activity`].
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> Tracked<I> {
    fn new(inner: I, activity: Arc<Activity>) -> Tracked<I> {
        Tracked { inner, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn handle(
    req: Request<Incoming>,
    site: Arc<Site>,
    server: Arc<Server>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = route(req, &site, server).await;
    for (name, value) in &site.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(response)
}

async fn route(req: Request<Incoming>, site: &Site, server: Arc<Server>) -> Response<Full<Bytes>> {
    // As exporter-toolkit: with users configured, every path needs them.
    if !site.users.is_empty() && !authenticated(&req, site, &server).await {
        let mut r = reply(StatusCode::UNAUTHORIZED, "text/plain", "Unauthorized\n".into());
        let challenge = format!("Basic realm=\"{}\"", webconfig::REALM);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match &*server.metrics.get(&server.shared, metrics_text).await {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text.clone()),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n").into()),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if server.shared.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        "/api/targets" => match &*server.targets.get(&server.shared, |s| Ok(api::targets_json(s).into())).await {
            Ok(json) => reply(StatusCode::OK, "application/json", json.clone()),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n").into()),
        },
        "/" => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><h1>refusal-agent</h1><a href=\"/metrics\">/metrics</a> <a href=\"/api/targets\">/api/targets</a></body></html>\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Checks `Authorization: Basic` against the configured users: a cached success costs an HMAC,
/// anything else one bcrypt on the blocking pool, at most [`BCRYPTS`] at once.
async fn authenticated(req: &Request<Incoming>, site: &Site, server: &Arc<Server>) -> bool {
    let Some((user, password)) =
        (req.headers().get(AUTHORIZATION)).and_then(|v| webconfig::parse_basic_authorization(v.as_bytes()))
    else {
        return false;
    };
    if webconfig::verify_cached(&site.users, &server.auth_cache, &user, &password) == Verdict::Allowed {
        return true;
    }
    let permit = server.bcrypts.clone().acquire_owned().await.ok();
    let (users, server) = (site.users.clone(), server.clone());
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        webconfig::verify_slow(&users, &server.auth_cache, &user, &password)
    })
    .await
    .is_ok_and(|v| v == Verdict::Allowed)
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
