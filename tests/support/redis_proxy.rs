//! A TCP proxy between a gateway and Redis that a test tells to hold back
//! or delay the gateway's commands, so a fault lands exactly where the test
//! needs it: between the dedupe reservation and the write (hold the write,
//! then SIGKILL the gateway), or a write that times out in the gateway and
//! lands in Redis later (delay it past `redis.timeout`).
//!
//! Commands are recognised by byte patterns in what the gateway sends (a
//! RESP command is one write from redis-rs; the last bytes of the previous
//! read are kept so a pattern split across reads is still found).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the gateway's commands.
#[derive(Debug, Clone)]
pub enum Rule {
    /// Forward everything.
    Pass,
    /// Once a read holding every pattern of `arm` went through, hold the
    /// first read holding every pattern of `hold` and everything after it
    /// on that connection, for good: that command never reaches Redis.
    HoldAfter {
        arm: Vec<Vec<u8>>,
        hold: Vec<Vec<u8>>,
    },
    /// Delay each read holding every pattern of `pattern` (and, the
    /// connection being ordered, what follows it) by `by`.
    Delay { pattern: Vec<Vec<u8>>, by: Duration },
}

#[derive(Debug)]
struct State {
    rule: Rule,
    armed: bool,
}

pub struct RedisProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
    held: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// How many bytes of the previous read are searched with the next one:
/// one less than the longest pattern allowed, so no pattern lies wholly in
/// bytes already forwarded and matches twice.
const CARRY: usize = 63;

fn holds_all(haystack: &[u8], patterns: &[Vec<u8>]) -> bool {
    patterns
        .iter()
        .all(|p| haystack.windows(p.len()).any(|w| w == p.as_slice()))
}

impl RedisProxy {
    /// A proxy on a free loopback port in front of `upstream` (host:port).
    pub async fn start(upstream: &str) -> RedisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            rule: Rule::Pass,
            armed: false,
        }));
        let held = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let task = tokio::spawn({
            let state = state.clone();
            let held = held.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    tokio::spawn(pump(client, server, state.clone(), held.clone()));
                }
            }
        });
        RedisProxy {
            port,
            state,
            held,
            task,
        }
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Patterns longer than 64 bytes are refused (see [`CARRY`]).
    pub fn set(&self, rule: Rule) {
        let patterns: Vec<&Vec<u8>> = match &rule {
            Rule::Pass => vec![],
            Rule::HoldAfter { arm, hold } => arm.iter().chain(hold).collect(),
            Rule::Delay { pattern, .. } => pattern.iter().collect(),
        };
        assert!(
            patterns
                .iter()
                .all(|p| !p.is_empty() && p.len() <= CARRY + 1),
            "proxy patterns must be 1 to {} bytes",
            CARRY + 1
        );
        let mut state = self.state.lock().unwrap();
        state.rule = rule;
        state.armed = false;
        self.held.store(false, Ordering::SeqCst);
    }

    /// Waits until a [`Rule::HoldAfter`] holds a command; false after `limit`.
    pub async fn wait_held(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.held.load(Ordering::SeqCst) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    state: Arc<Mutex<State>>,
    held: Arc<AtomicBool>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Redis to gateway: always straight through.
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        let action = {
            let mut state = state.lock().unwrap();
            let rule = state.rule.clone();
            match rule {
                Rule::Pass => None,
                Rule::HoldAfter { arm, hold } => {
                    if state.armed && holds_all(&window, &hold) {
                        Some(None)
                    } else {
                        if holds_all(&window, &arm) {
                            state.armed = true;
                        }
                        None
                    }
                }
                Rule::Delay { pattern, by } => holds_all(&window, &pattern).then_some(Some(by)),
            }
        };
        match action {
            // Held for good: the command never reaches Redis. The
            // connection stays open, as a Redis that stopped reading would.
            Some(None) => {
                held.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            Some(Some(by)) => tokio::time::sleep(by).await,
            None => {}
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let keep = window.len().min(CARRY);
        carry = window[window.len() - keep..].to_vec();
    }
    down.abort();
}
