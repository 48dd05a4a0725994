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
        _ => Err(
            "usage: vm-client refused ADDR PORT N | reset PORT N | cold-start PORT MS | \
                  elsewhere LISTEN CONNECT PORT N | udp PORT N | noroute ADDR PORT N"
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
    let n = connects_fail(addr, port, n, "ECONNREFUSED", |e| {
        e.kind() == std::io::ErrorKind::ConnectionRefused
    })?;
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
