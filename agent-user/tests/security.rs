//! The HTTP side under abuse and behind access control, against the real daemon: a flood of
//! resetting, slow, oversized and surplus clients followed by a normal scrape; TLS, client
//! certificates and basic auth from an exporter-toolkit web config; bad web configs.
use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use testkit::{Daemon, get, get_with, linger_zero, metrics::BUILD_INFO, privileged};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("refusal-security-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }

    fn write(&self, file: &str, text: &str) -> String {
        std::fs::write(self.0.join(file), text).unwrap();
        self.path(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `raw` and reads the answer until the server closes. A reset after some bytes (the
/// server closing with our surplus unread) still returns those bytes.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    try_exchange(addr, raw).unwrap()
}

fn try_exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(raw);
    Ok(read_all(&mut s))
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no answer within 30 s (got {:?})", String::from_utf8_lossy(&out))
            }
            Err(_) => return out, // reset
        }
    }
}

fn status_of(resp: &[u8]) -> u16 {
    let head = String::from_utf8_lossy(&resp[..resp.len().min(64)]).into_owned();
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Room for a few thousand sockets in this process.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max.max(want));
            lim.rlim_max = lim.rlim_max.max(want);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "RLIMIT_NOFILE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[derive(Debug, PartialEq)]
enum Slow {
    /// The daemon closed the connection (FIN or RST) without answering it.
    ClosedByServer,
    Answered(String),
    StillOpen,
}

/// Sends a request line, then trickles header bytes (one every 250 ms, far below the header
/// timeout per byte) without ever ending the head; `trickle = false` sends nothing at all (a
/// half-open peer). Reports how the daemon ended it, within `limit`.
fn slow_client(addr: SocketAddr, trickle: bool, limit: Duration) -> Slow {
    // Shed while the daemon was full (a 503 at once): come back, as a real client would.
    for _ in 0..50 {
        match slow_connection(addr, trickle, limit) {
            Slow::Answered(a) if a.starts_with("HTTP/1.1 503") => thread::sleep(Duration::from_millis(100)),
            other => return other,
        }
    }
    Slow::Answered("503 on every try".into())
}

fn slow_connection(addr: SocketAddr, trickle: bool, limit: Duration) -> Slow {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    if trickle {
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    }
    let pattern = b"X-Slow: aaaaaaaaaaaaaaaaaaaa\r\n";
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < limit {
        if trickle && s.write_all(&pattern[i % pattern.len()..][..1]).is_err() {
            return Slow::ClosedByServer;
        }
        i += 1;
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return Slow::ClosedByServer,
            Ok(n) => return Slow::Answered(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Slow::ClosedByServer,
        }
    }
    Slow::StillOpen
}

#[derive(Debug, Default)]
struct Flood {
    served: usize,
    /// Closed with a 503, or closed (FIN or RST) before answering.
    shed: usize,
    shed_with_503: usize,
    connect_failed: usize,
    other: Vec<String>,
}

/// `total` connections opened by `threads` threads and all held open at once, then each sends
/// a request and reads the answer.
fn flood(addr: SocketAddr, total: usize, threads: usize) -> Flood {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut f = Flood::default();
                let mut conns = Vec::new();
                for _ in 0..total / threads {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                        Ok(s) => conns.push(s),
                        Err(_) => f.connect_failed += 1,
                    }
                }
                barrier.wait();
                for mut s in conns {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                    let resp = read_all(&mut s);
                    match status_of(&resp) {
                        200 => f.served += 1,
                        503 => {
                            f.shed += 1;
                            f.shed_with_503 += 1;
                        }
                        0 if resp.is_empty() => f.shed += 1,
                        _ => f.other.push(String::from_utf8_lossy(&resp).into_owned()),
                    }
                }
                f
            })
        })
        .collect();
    let mut all = Flood::default();
    for h in handles {
        let f = h.join().unwrap();
        all.served += f.served;
        all.shed += f.shed;
        all.shed_with_503 += f.shed_with_503;
        all.connect_failed += f.connect_failed;
        all.other.extend(f.other);
    }
    all
}

#[derive(Debug, PartialEq)]
struct Held {
    /// Accepted and waiting for a request.
    open: usize,
    /// Answered `503 Service Unavailable` and closed.
    busy_503: usize,
}

/// Opens `n` connections that send nothing, waits until the daemon has answered every one it
/// will not serve (bounded), and then for a moment more, to see that the count holds; closes them.
fn hold(addr: SocketAddr, n: usize) -> Held {
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap())
        .collect();
    for c in &conns {
        c.set_nonblocking(true).unwrap();
    }
    let count = || {
        let mut held = Held { open: 0, busy_503: 0 };
        for c in &conns {
            let mut buf = [0u8; 64];
            match c.peek(&mut buf) {
                Ok(k) if k > 0 => {
                    assert_eq!(status_of(&buf[..k]), 503, "{:?}", String::from_utf8_lossy(&buf[..k]));
                    held.busy_503 += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => held.open += 1,
                other => panic!("a held connection ended without a 503: {other:?}"),
            }
        }
        held
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().open > MAX_CONNECTIONS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    let held = count();
    // Close, and wait for the daemon to close its side: its slots are free again.
    for mut c in conns {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = read_all(&mut c);
    }
    held
}

/// The daemon's connection cap (`http::MAX_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 256;

#[test]
fn flood_of_resetting_slow_oversized_and_surplus_clients_then_a_normal_scrape() {
    if !privileged("flood_of_resetting_slow_oversized_and_surplus_clients_then_a_normal_scrape") {
        return;
    }
    raise_nofile(8192);
    let mut d = Daemon::start(BIN, &[]);
    let addr = d.addr;
    assert_eq!(get(addr, "/metrics").unwrap().0, 200);
    let rss_before = d.rss_kib();
    let started = Instant::now();

    // The cap: 300 idle connections at once; the daemon holds exactly MAX_CONNECTIONS of them
    // and answers the others 503 at once.
    let held = hold(addr, 300);
    assert_eq!(
        held,
        Held {
            open: MAX_CONNECTIONS,
            busy_503: 300 - MAX_CONNECTIONS
        }
    );
    eprintln!("flood: cap held after {:?}", started.elapsed());

    // Slowloris and half-open peers, alive through everything below.
    let slow: Vec<_> = (0..40)
        .map(|i| thread::spawn(move || slow_client(addr, i % 4 != 0, Duration::from_secs(60))))
        .collect();
    thread::sleep(Duration::from_millis(300));

    // Clients that reset mid-request: half before the head is complete, half right after a
    // complete scrape request, while the daemon collects or writes the answer.
    let resetters: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..75 {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
                    let req: &[u8] = if (t + i) % 2 == 0 {
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Ag"
                    } else {
                        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                    };
                    let _ = s.write_all(req);
                    linger_zero(&s).expect("SO_LINGER");
                    drop(s);
                }
            })
        })
        .collect();
    for r in resetters {
        r.join().unwrap();
    }
    eprintln!("flood: 300 resetting clients done after {:?}", started.elapsed());

    // 2,000 connections at once, with the slow clients still there: every one is served or
    // shed (503, or closed), none hangs.
    let f = flood(addr, 2000, 8);
    eprintln!("flood: {f:?} after {:?}", started.elapsed());
    assert_eq!(f.connect_failed, 0, "{f:?}");
    assert!(f.other.is_empty(), "unexpected answers: {:?}", f.other);
    assert_eq!(f.served + f.shed, 2000, "{f:?}");
    assert!(f.served >= 1 && f.shed >= 1, "{f:?}");

    // Oversized and malformed requests get their status and a close, never a hang.
    let big_header = [
        &b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "[..],
        &vec![b'a'; 64 * 1024],
        b"\r\n\r\n",
    ]
    .concat();
    assert_eq!(status_of(&exchange(addr, &big_header)), 431);
    let long_line = [&b"GET /"[..], &vec![b'a'; 64 * 1024], b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    assert_eq!(status_of(&exchange(addr, &long_line)), 431);
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    assert_eq!(status_of(&exchange(addr, many.as_bytes())), 431);
    assert_eq!(status_of(&exchange(addr, b"\x16\x03\x01garbage\r\n\r\n")), 400);
    let post = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status_of(&post), 405);

    // A normal scrape, with the slow clients still connected.
    let (code, body) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(BUILD_INFO), "{body}");
    let scraped_after = started.elapsed();

    // The daemon ended every slow and half-open connection itself.
    for (i, s) in slow.into_iter().enumerate() {
        assert_eq!(s.join().unwrap(), Slow::ClosedByServer, "slow client {i}");
    }
    let rss_after = d.rss_kib();
    eprintln!(
        "flood: scrape after {scraped_after:?}, all done after {:?}; daemon RSS {rss_before} KiB before, {rss_after} KiB after",
        started.elapsed()
    );
    // Per-connection state is freed with the connection: the flood leaves no lasting growth
    // beyond allocator slack (measured: about +6 MiB).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} KiB before the flood, {rss_after} KiB after"
    );
    assert!(d.alive(), "{}", d.log());
    assert_eq!(get(addr, "/healthz").unwrap(), (200, "ok\n".into()));
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("connection cap reached"), "{log}");
    assert_eq!(d.stop(), Some(0));
}

/// A self-signed certificate for 127.0.0.1 and localhost: `<name>.pem`, `<name>.key`.
fn self_signed(dir: &TempDir, name: &str) {
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout",
        &dir.path(&format!("{name}.key")),
        "-out",
        &dir.path(&format!("{name}.pem")),
    ]));
}

/// A client certificate `<name>.pem`/`<name>.key` signed by CA `<ca>.pem`/`<ca>.key`.
fn client_cert(dir: &TempDir, name: &str, ca: &str) {
    let ext = dir.write(
        &format!("{name}.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &dir.path(&format!("{name}.key")),
        "-out",
        &dir.path(&format!("{name}.csr")),
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &dir.path(&format!("{name}.csr")),
        "-CA",
        &dir.path(&format!("{ca}.pem")),
        "-CAkey",
        &dir.path(&format!("{ca}.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &dir.path(&format!("{name}.pem")),
    ]));
}

/// curl's exit code and `%{http_code}` (`000` when no HTTP answer came), and the body.
fn curl(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (out.status.code().unwrap_or(-1), code.to_string(), body.to_string())
}

#[test]
fn tls_from_web_config_serves_https_and_refuses_plain_http() {
    if !privileged("tls_from_web_config_serves_https_and_refuses_plain_http") {
        return;
    }
    let dir = TempDir::new("tls");
    self_signed(&dir, "server");
    // Relative paths resolve against the web config's directory.
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    );
    let ca = dir.path("server.pem");
    let ca2 = ca.clone();
    let d = Daemon::start_when(BIN, &["--web.config.file", &web], move |addr| {
        curl(
            &format!("https://127.0.0.1:{}/readyz", addr.port()),
            &["--cacert", &ca2],
        )
        .1 == "200"
    });
    let port = d.addr.port();

    let (rc, code, body) = curl(&format!("https://127.0.0.1:{port}/metrics"), &["--cacert", &ca]);
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    assert!(body.contains(BUILD_INFO), "{body}");
    let (rc, code, _) = curl(
        &format!("https://localhost:{port}/healthz"),
        &["--cacert", &ca, "--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!((rc, code.as_str()), (0, "200"), "TLS 1.2 is accepted by default");

    // The certificate is what curl verifies: without the CA it refuses (60: peer certificate).
    let (rc, code, _) = curl(&format!("https://127.0.0.1:{port}/metrics"), &[]);
    assert_eq!((rc, code.as_str()), (60, "000"));

    // Plain HTTP on the TLS port gets no metrics: a 400 that says why.
    let (code, body) = get(d.addr, "/metrics").unwrap();
    assert_eq!(code, 400);
    assert_eq!(body, "Client sent an HTTP request to an HTTPS server.\n");
    let (rc, code, _) = curl(&format!("http://127.0.0.1:{port}/metrics"), &[]);
    assert_eq!((rc, code.as_str()), (0, "400"));

    assert_eq!(d.stop(), Some(0));
}

#[test]
fn rotated_certificates_are_served_without_a_restart() {
    if !privileged("rotated_certificates_are_served_without_a_restart") {
        return;
    }
    let dir = TempDir::new("rotate");
    self_signed(&dir, "old");
    self_signed(&dir, "new");
    for ext in ["pem", "key"] {
        std::fs::copy(dir.path(&format!("old.{ext}")), dir.path(&format!("server.{ext}"))).unwrap();
    }
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n",
    );
    let (old_ca, new_ca) = (dir.path("old.pem"), dir.path("new.pem"));
    let ready_ca = old_ca.clone();
    let d = Daemon::start_when(BIN, &["--web.config.file", &web], move |addr| {
        curl(
            &format!("https://127.0.0.1:{}/readyz", addr.port()),
            &["--cacert", &ready_ca],
        )
        .1 == "200"
    });
    let url = format!("https://127.0.0.1:{}/healthz", d.addr.port());
    assert_eq!(
        curl(&url, &["--cacert", &new_ca]).0,
        60,
        "the new certificate is not served yet"
    );

    // Rotate as cert-manager does: new files renamed into place.
    for ext in ["pem", "key"] {
        std::fs::copy(dir.path(&format!("new.{ext}")), dir.path(&format!("next.{ext}"))).unwrap();
        std::fs::rename(dir.path(&format!("next.{ext}")), dir.path(&format!("server.{ext}"))).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&url, &["--cacert", &new_ca]).1 != "200" {
        assert!(
            Instant::now() < deadline,
            "rotated certificate not served:\n{}",
            d.log()
        );
        thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(curl(&url, &["--cacert", &old_ca]).0, 60, "the old certificate is gone");

    // A broken rotation (a key that does not match) keeps the last good pair in service.
    std::fs::copy(dir.path("old.key"), dir.path("next.key")).unwrap();
    std::fs::rename(dir.path("next.key"), dir.path("server.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("web config changed but does not load") {
        assert!(Instant::now() < deadline, "bad rotation not noticed:\n{}", d.log());
        let _ = curl(&url, &["--cacert", &new_ca]);
        thread::sleep(Duration::from_millis(250));
    }
    let (rc, code, _) = curl(&url, &["--cacert", &new_ca]);
    assert_eq!((rc, code.as_str()), (0, "200"));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn tls_client_certificates_are_verified_when_required() {
    if !privileged("tls_client_certificates_are_verified_when_required") {
        return;
    }
    let dir = TempDir::new("mtls");
    self_signed(&dir, "server");
    self_signed(&dir, "ca");
    client_cert(&dir, "client", "ca");
    self_signed(&dir, "rogue");
    let web = dir.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\n",
    );
    let (server_ca, cert, key) = (dir.path("server.pem"), dir.path("client.pem"), dir.path("client.key"));
    let with_cert = [
        "--cacert",
        server_ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];
    let ready_args: Vec<String> = with_cert.iter().map(|s| s.to_string()).collect();
    let d = Daemon::start_when(BIN, &["--web.config.file", &web], move |addr| {
        let args: Vec<&str> = ready_args.iter().map(String::as_str).collect();
        curl(&format!("https://127.0.0.1:{}/readyz", addr.port()), &args).1 == "200"
    });
    let url = format!("https://127.0.0.1:{}/metrics", d.addr.port());

    let (rc, code, body) = curl(&url, &with_cert);
    assert_eq!((rc, code.as_str()), (0, "200"), "{body}");
    // No client certificate, one from another CA, or TLS 1.2 (below min_version): no answer.
    let (rc, code, _) = curl(&url, &["--cacert", &server_ca]);
    assert!(
        rc != 0 && code == "000",
        "without a client certificate: curl {rc}, HTTP {code}"
    );
    let rogue = [
        "--cacert",
        &server_ca,
        "--cert",
        &dir.path("rogue.pem"),
        "--key",
        &dir.path("rogue.key"),
    ];
    let (rc, code, _) = curl(&url, &rogue);
    assert!(
        rc != 0 && code == "000",
        "with a certificate from another CA: curl {rc}, HTTP {code}"
    );
    let old = [&with_cert[..], &["--tls-max", "1.2"]].concat();
    let (rc, code, _) = curl(&url, &old);
    assert!(rc != 0 && code == "000", "over TLS 1.2: curl {rc}, HTTP {code}");

    assert_eq!(d.stop(), Some(0));
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

#[test]
fn basic_auth_from_web_config_admits_the_right_password_only() {
    if !privileged("basic_auth_from_web_config_admits_the_right_password_only") {
        return;
    }
    let dir = TempDir::new("auth");
    // A low cost keeps the (debug-built) daemon quick; the format is the one htpasswd writes.
    let hash = bcrypt::hash("correct horse", 5).unwrap();
    let web = dir.write("web.yml", &format!("basic_auth_users:\n  prometheus: '{hash}'\n"));
    let right = basic("prometheus", "correct horse");
    let ready = right.clone();
    let d = Daemon::start_when(BIN, &["--web.config.file", &web], move |addr| {
        get_with(addr, "/readyz", &ready).is_ok_and(|(code, _, _)| code == 200)
    });
    let addr = d.addr;

    let (code, _, body) = get_with(addr, "/metrics", &right).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(BUILD_INFO), "{body}");
    // Again, from the cache of verified passwords.
    assert_eq!(get_with(addr, "/metrics", &right).unwrap().0, 200);

    let challenge = "www-authenticate: Basic realm=\"refusal-agent\"";
    for (what, headers) in [
        ("wrong password", basic("prometheus", "battery staple")),
        ("password with a suffix", basic("prometheus", "correct horse!")),
        ("unknown user", basic("admin", "correct horse")),
        ("no credentials", String::new()),
        ("another scheme", "Authorization: Bearer correct-horse\r\n".to_string()),
        ("not base64", "Authorization: Basic !!!\r\n".to_string()),
    ] {
        for path in ["/metrics", "/healthz", "/api/targets", "/nope"] {
            let (code, head, body) = get_with(addr, path, &headers).unwrap();
            assert_eq!(code, 401, "{what} on {path}");
            assert!(
                head.to_ascii_lowercase().contains(&challenge.to_ascii_lowercase()),
                "{what}: {head}"
            );
            assert!(!body.contains("refusal_"), "{what} leaked metrics");
        }
    }
    let (code, _, body) = get_with(addr, "/healthz", &right).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn bad_web_configs_exit_2_naming_the_key() {
    if !privileged("bad_web_configs_exit_2_naming_the_key") {
        return;
    }
    let dir = TempDir::new("badweb");
    let cases = [
        (
            "tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  client_auth: RequireAndVerifyClientCert\n",
            "tls_server_config: unknown field `client_auth`",
        ),
        ("basic_auth_user:\n  alice: x\n", "unknown field `basic_auth_user`"),
        (
            "basic_auth_users:\n  alice: hunter2\n",
            "`basic_auth_users.alice`: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n",
            "`tls_server_config.cert_file`: reading ",
        ),
        (
            "tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  min_version: TLS10\n",
            "`tls_server_config.min_version`: TLS10 and TLS11 are not supported",
        ),
    ];
    let mut running: Vec<(Daemon, &str, String)> = cases
        .iter()
        .enumerate()
        .map(|(i, (yaml, want))| {
            let file = dir.write(&format!("web{i}.yml"), yaml);
            (Daemon::spawn(BIN, &["--web.config.file", &file]), *want, file)
        })
        .collect();
    let missing = dir.path("absent.yml");
    running.push((
        Daemon::spawn(BIN, &["--web.config.file", &missing]),
        "absent.yml: No such file",
        missing.clone(),
    ));
    for (agent, want, file) in &mut running {
        let code = agent.wait_exit(Duration::from_secs(60));
        let log = agent.log();
        assert_eq!(code, Some(2), "{file}: {log}");
        assert!(
            log.contains(&format!("refusal-agent: bad configuration: web config file {file}")),
            "{log}"
        );
        assert!(log.contains(*want), "{file}: want {want:?} in\n{log}");
    }
}
