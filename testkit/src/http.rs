//! A minimal HTTP GET, so nothing here depends on a client library. HTTP/1.0: every answer comes
//! whole, ended by the server's close (Prometheus would chunk an HTTP/1.1 one).
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// `GET path`: status and body.
pub fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    get_with(addr, path, "").map(|(code, _, body)| (code, body))
}

/// `GET path` with extra header lines (each ending in `\r\n`): status, head and body.
pub fn get_with(addr: SocketAddr, path: &str, headers: &str) -> io::Result<(u16, String, String)> {
    // A flooded daemon's backlog can hold a connect back for a while.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let resp = String::from_utf8_lossy(&raw);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, head.to_string(), body.to_string()))
}
