//! The HTTP endpoints, hardened against misbehaving clients:
//!
//! - at most [`MAX_CONNECTIONS`] connections are served at once; past that a new connection
//!   gets a best-effort `503` and is closed at once, counted (`refusal_agent_http_rejected_connections_total`);
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
//! Optional TLS and basic auth come from the exporter-toolkit web config (`agent_core::config::web`). The
//! file and the PEM files it names are re-read when they change (checked at most every
//! [`RELOAD_CHECK`], on accept), so certificates can be rotated without a restart; a changed
//! file that does not load is logged and the previous configuration stays in force.
mod coalesce;
mod conn;
mod routes;
mod site;

use std::{
    io::{self, Write as _},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_core::config::web::AuthCache;
use hyper::body::Bytes;
use prometheus::IntCounter;
use tokio::{net::TcpListener, sync::Semaphore};

use self::{coalesce::Coalesced, site::WebSource};

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

/// An endpoint's expensive answer, computed on the blocking pool.
pub type Compute = Arc<dyn Fn() -> Result<Bytes, String> + Send + Sync>;

/// What the server answers with: it knows the paths, not what produces the answers.
pub struct Endpoints {
    /// `/metrics`.
    pub metrics: Compute,
    /// `/api/targets`.
    pub targets: Compute,
    /// `/readyz`.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Sent (best effort, one non-blocking write) to a plain-HTTP connection past the cap.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\
Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";
/// State shared by every connection.
struct Server {
    endpoints: Endpoints,
    auth_cache: AuthCache,
    metrics: Arc<Coalesced>,
    targets: Arc<Coalesced>,
    bcrypts: Arc<Semaphore>,
}

/// Serves until the process ends, or the listening socket itself fails (an error that no
/// retry mends): the daemon then exits rather than count on unscraped. A web config that does not load ends the process with exit
/// code 2 and a message naming the key (the daemon is expected to have checked it with
/// `agent_core::config::web::load` before loading anything, so this only happens if the file changed since).
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    // Connections closed at once because [`MAX_CONNECTIONS`] were being served.
    rejected: IntCounter,
    web_config: Option<PathBuf>,
) -> io::Error {
    let mut web = match WebSource::new(web_config) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("refusal-agent: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    let server = Arc::new(Server {
        endpoints,
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
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
                ) =>
            {
                return e;
            }
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
            rejected.inc();
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
                    rejected_total = rejected.get(),
                    "connection cap reached: closing new connections"
                );
            }
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn::connection(stream, site, server)).await;
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
