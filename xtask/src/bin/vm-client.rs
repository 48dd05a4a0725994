//! The traffic of `cargo xtask test-kernels`, run inside the guest (static scenarios with known
//! counts; each prints what it did so the host can demand exactly that in `/metrics`):
//!
//! - `refused ADDR PORT N`: N blocking connects to a closed port.
//! - `reset PORT N`: N loopback connections the client aborts with SO_LINGER 0 (N RSTs sent by
//!   the client, N received by the server in ESTABLISHED).
//! - `cold-start PORT MS`: connects every 50 ms until a listener this process opens after MS
//!   milliseconds accepts; prints how many were refused first.
//! - `elsewhere LISTEN CONNECT PORT N`: listens on LISTEN:PORT, makes N connects to CONNECT:PORT
//!   (refused: nobody listens there), then keeps listening until killed, so the daemon's inbound
//!   diagnosis sees the listener.
//! - `udp PORT N`: N datagrams on a connected UDP socket to a closed loopback port, each
//!   answered by ICMP port unreachable: N `ECONNREFUSED` on the next receive.
//! - `noroute ADDR PORT N`: N connects to an address with no route: connect(2) itself fails
//!   with `ENETUNREACH`, before any TCP state (the opt-in `connect_sync` hook counts these).
//! - `listen-killed PORT N`: a child process listens on 127.0.0.1:PORT and is SIGKILLed, then N
//!   connects to that port, refused.
//! - `listen-oom CGROUP PORT N`: a child listens on 127.0.0.1:PORT inside the memory-limited
//!   cgroup v2 directory CGROUP and allocates until the OOM killer takes it, then N connects,
//!   refused.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["refused", addr, port, n] => refused(addr, port, n),
        ["reset", port, n] => reset(port, n),
        ["cold-start", port, ms] => cold_start(port, ms),
        ["elsewhere", listen, connect, port, n] => elsewhere(listen, connect, port, n),
        ["udp", port, n] => udp(port, n),
        ["noroute", addr, port, n] => noroute(addr, port, n),
        ["listen-killed", port, n] => listen_killed(port, n),
        ["listen-oom", cgroup, port, n] => listen_oom(cgroup, port, n),
        // The child processes of the two above.
        ["listen", port] => listen(port, false),
        ["hog", port] => listen(port, true),
        _ => Err(
            "usage: vm-client refused ADDR PORT N | reset PORT N | cold-start PORT MS | \
                  elsewhere LISTEN CONNECT PORT N | udp PORT N | noroute ADDR PORT N | \
                  listen-killed PORT N | listen-oom CGROUP PORT N"
                .into(),
        ),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vm-client: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn num<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn ip(addr: &str) -> Result<IpAddr> {
    addr.parse().map_err(|_| format!("not an address: {addr}"))
}

fn refused(addr: &str, port: &str, n: &str) -> Result<String> {
    let n = connects_fail(addr, port, n, "ECONNREFUSED", refused_error)?;
    Ok(format!("refused {n}"))
}

/// N blocking connects to ADDR:PORT, each failing as `expected` says.
fn connects_fail(addr: &str, port: &str, n: &str, what: &str, expected: fn(&std::io::Error) -> bool) -> Result<u32> {
    let to = SocketAddr::new(ip(addr)?, num(port)?);
    let n: u32 = num(n)?;
    for _ in 0..n {
        match TcpStream::connect(to) {
            Err(e) if expected(&e) => {}
            other => return Err(format!("connect to {to}: expected {what}, got {other:?}")),
        }
    }
    Ok(n)
}

fn udp(port: &str, n: &str) -> Result<String> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    s.connect((Ipv4Addr::LOCALHOST, num(port)?))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let n: u32 = num(n)?;
    for _ in 0..n {
        s.send(b"x").map_err(|e| format!("send: {e}"))?;
        match s.recv(&mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => return Err(format!("udp recv: expected ECONNREFUSED, got {other:?}")),
        }
    }
    Ok(format!("udp {n}"))
}

fn noroute(addr: &str, port: &str, n: &str) -> Result<String> {
    let n = connects_fail(addr, port, n, "ENETUNREACH", |e| {
        e.raw_os_error() == Some(libc::ENETUNREACH)
    })?;
    Ok(format!("noroute {n}"))
}

fn reset(port: &str, n: &str) -> Result<String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, num(port)?)).map_err(|e| e.to_string())?;
    let n: u32 = num(n)?;
    for _ in 0..n {
        let client =
            TcpStream::connect(listener.local_addr().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let (server, _) = listener.accept().map_err(|e| e.to_string())?;
        testkit::linger_zero(&client).map_err(|e| format!("SO_LINGER: {e}"))?;
        drop(client);
        // The RST has arrived once the server sees it.
        let mut buf = [0u8; 1];
        match std::io::Read::read(&mut &server, &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => return Err(format!("server read after the client's abort: {other:?}")),
        }
    }
    Ok(format!("reset {n}"))
}

fn cold_start(port: &str, ms: &str) -> Result<String> {
    let port: u16 = num(port)?;
    let up_after = Duration::from_millis(num(ms)?);
    let server = std::thread::spawn(move || -> Result<()> {
        std::thread::sleep(up_after);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
        listener.accept().map(drop).map_err(|e| e.to_string())
    });
    let started = Instant::now();
    let mut refused = 0u32;
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => return Err(format!("connect: {e}")),
        }
        if started.elapsed() > up_after + Duration::from_secs(30) {
            return Err("the listener never came up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.join().map_err(|_| "server thread panicked")??;
    Ok(format!("cold-start {refused}"))
}

fn elsewhere(listen: &str, connect: &str, port: &str, n: &str) -> Result<String> {
    let port: u16 = num(port)?;
    let _listener = TcpListener::bind((ip(listen)?, port)).map_err(|e| format!("listen on {listen}: {e}"))?;
    let line = refused(connect, &port.to_string(), n)?;
    println!("elsewhere {}", line.trim_start_matches("refused "));
    loop {
        std::thread::park();
    }
}

/// The child: listens on 127.0.0.1:PORT, says so, then waits to be killed, or (`hog`) touches
/// memory a MiB at a time until the OOM killer takes it.
fn listen(port: &str, hog: bool) -> Result<String> {
    let _listener = TcpListener::bind((Ipv4Addr::LOCALHOST, num(port)?)).map_err(|e| e.to_string())?;
    println!("listening");
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        if hog {
            held.push(vec![1; 1 << 20]);
        } else {
            std::thread::park();
        }
    }
}

/// Starts `cmd` (a child listener), waits until it listens, lets `end` end it, and checks it
/// died of SIGKILL.
fn child_listener(mut cmd: std::process::Command, end: impl FnOnce(&mut std::process::Child)) -> Result<()> {
    use std::{io::BufRead as _, os::unix::process::ExitStatusExt as _};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the listener: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() != "listening" {
        return Err(format!("the listener said {line:?}"));
    }
    end(&mut child);
    let status = child.wait().map_err(|e| e.to_string())?;
    match status.signal() {
        Some(libc::SIGKILL) => Ok(()),
        _ => Err(format!("the listener ended with {status}, not SIGKILL")),
    }
}

fn listen_killed(port: &str, n: &str) -> Result<String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.args(["listen", port]);
    child_listener(cmd, |c| {
        let _ = c.kill();
    })?;
    let n = connects_fail("127.0.0.1", port, n, "ECONNREFUSED", refused_error)?;
    Ok(format!("listen-killed {n}"))
}

fn listen_oom(cgroup: &str, port: &str, n: &str) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The shell joins the cgroup, then becomes the hog.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        &format!("echo $$ > {cgroup}/cgroup.procs && exec \"$0\" hog {port}"),
    ])
    .arg(exe);
    child_listener(cmd, |_| {})?;
    let n = connects_fail("127.0.0.1", port, n, "ECONNREFUSED", refused_error)?;
    Ok(format!("listen-oom {n}"))
}

fn refused_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::ConnectionRefused
}
