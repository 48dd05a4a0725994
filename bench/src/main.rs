//! `connect-loop refused PORT N [RATE]`: N connects to a closed loopback port, paced to RATE per
//! second when given. `connect-loop success N`: N connect/accept/close rounds on loopback.
//! Prints the ns per operation of the loop alone (process start excluded).
use std::{
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> u64 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: connect-loop refused PORT N [RATE] | success N");
            std::process::exit(2)
        })
    };
    let (n, elapsed, failed) = match args.get(1).map(String::as_str) {
        Some("refused") => {
            let (port, n) = (arg(2) as u16, arg(3));
            let rate = args.get(4).and_then(|r| r.parse::<u64>().ok());
            let start = Instant::now();
            let mut refused = 0;
            for i in 0..n {
                if let Some(rate) = rate {
                    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                refused += u64::from(TcpStream::connect(("127.0.0.1", port)).is_err());
            }
            (n, start.elapsed(), refused)
        }
        Some("success") => {
            let n = arg(2);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let start = Instant::now();
            for _ in 0..n {
                let c = TcpStream::connect(addr).expect("connect");
                let (s, _) = listener.accept().expect("accept");
                drop(c);
                drop(s);
            }
            (n, start.elapsed(), 0)
        }
        _ => {
            eprintln!("usage: connect-loop refused PORT N [RATE] | success N");
            std::process::exit(2)
        }
    };
    println!("{} {} {}", n, elapsed.as_nanos() / u128::from(n.max(1)), failed);
}
