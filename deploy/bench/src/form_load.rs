//! The load client of the realistic form row of `deploy/bench/run`: form
//! posts as a shop's customers send them, many customers from many
//! networks, so the shipped rules decide on every post without one client
//! address tripping the per-network limit.
//!
//!     form_load HOST:PORT PATH SECONDS CONNECTIONS
//!
//! CONNECTIONS workers post for SECONDS. Each connection is opened from its
//! own source address, one per /24 (127.A.B.1: Linux answers every address
//! of 127/8), sends `PER_CONNECTION` keep-alive posts and is closed; the
//! next one comes from the next network. Each post is a different customer
//! (`c<N>@customers.example`) with a different 1 KB message that quotes a
//! payment card number, so card redaction has work on every item and
//! nothing folds as a duplicate. The same client and the same posts go to
//! the bare ceiling.
//!
//! Prints `requests=N seconds=S rps=R p50_ms=X p99_ms=Y failed=F`; a
//! failed post is one answered with anything but 2xx/3xx, or not at all.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Posts per connection: within the shipped per-network burst (10), as a
/// few customers behind one office network would send.
const PER_CONNECTION: u64 = 5;

fn body(n: u64) -> String {
    let mut message =
        format!("Order {n}: my card 4111 1111 1111 1111 was charged twice for the same parcel. ");
    while message.len() < 900 {
        message.push_str("Where is my order? It was due last week and nobody answers. ");
    }
    let message: String = message
        .chars()
        .map(|c| if c == ' ' { '+' } else { c })
        .collect();
    format!("email=c{n}%40customers.example&name=Customer+{n}&message={message}")
}

/// The source address of the `i`th connection: one /24 each, 127.0/16 left
/// alone (the servers listen there).
fn source(i: u64) -> SocketAddr {
    let network = i % (254 * 256);
    let a = 1 + (network / 256) as u8;
    let b = (network % 256) as u8;
    SocketAddr::from((Ipv4Addr::new(127, a, b, 1), 0))
}

/// Reads one HTTP/1.1 response; returns its status. Bodies are small and
/// carry Content-Length or chunked encoding.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let complete = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => true,
        };
        if complete {
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Shared {
    target: SocketAddr,
    path: String,
    deadline: Instant,
    next_post: AtomicU64,
    next_connection: AtomicU64,
    failed: AtomicU64,
}

async fn worker(shared: Arc<Shared>) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    while Instant::now() < shared.deadline {
        let i = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        if let Err(e) = socket.bind(source(i)) {
            panic!(
                "cannot bind {}: {e} (needs Linux's 127/8 loopback)",
                source(i)
            );
        }
        let mut stream = match socket.connect(shared.target).await {
            Ok(stream) => stream,
            Err(e) => panic!("nothing answers on {}: {e}", shared.target),
        };
        stream.set_nodelay(true).expect("TCP_NODELAY");
        for _ in 0..PER_CONNECTION {
            if Instant::now() >= shared.deadline {
                break;
            }
            let n = shared.next_post.fetch_add(1, Ordering::Relaxed);
            let body = body(n);
            let request = format!(
                "POST {} HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                shared.path,
                body.len()
            );
            let started = Instant::now();
            let answered = match stream.write_all(request.as_bytes()).await {
                Ok(()) => read_response(&mut stream, &mut buf).await,
                Err(e) => Err(e),
            };
            match answered {
                Ok(status) if (200..400).contains(&status) => latencies.push(started.elapsed()),
                Ok(_) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    latencies
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, path, seconds, connections] = args.as_slice() else {
        return Err("usage: form_load HOST:PORT PATH SECONDS CONNECTIONS".into());
    };
    let seconds: f64 = seconds.parse()?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        target: target.parse()?,
        path: path.clone(),
        deadline: started + Duration::from_secs_f64(seconds),
        next_post: AtomicU64::new(0),
        next_connection: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let workers: Vec<_> = (0..connections.parse::<usize>()?)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "requests={} seconds={elapsed:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3} failed={}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        quantile(0.50),
        quantile(0.99),
        shared.failed.load(Ordering::Relaxed)
    );
    Ok(())
}
