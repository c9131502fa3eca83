//! The normal client an attack test measures beside the attack: its
//! latencies before and during the attack are printed (never asserted
//! against a time: these machines are shared and noisy; the bench scripts
//! report the ratios), and every one of its requests must be served.
//!
//! Attackers and bystanders come from different loopback addresses
//! (127.0.0.0/8 all reach the gateway on 127.0.0.1), so per-address limits
//! tell them apart as they would tell real clients apart.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

/// A loopback source address of its own: `127.0.<a>.<b>`.
pub fn loopback(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

/// The address the bystander sends from, away from every attacker range
/// the tests use (127.0.0.x and 127.0.1.x).
pub fn bystander_address() -> IpAddr {
    loopback(200, 1)
}

/// The address of the `i`-th request of a bystander that stands for many
/// normal customers, each on a network (/24) of its own: rules keyed on
/// the client network (the shipped forms rules) see them as the distinct
/// customers they stand for.
pub fn customer_address(i: usize) -> IpAddr {
    loopback(150 + (i % 100) as u8, 1)
}

/// A TCP connection to `target` from `source` (any port).
pub async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// An HTTP client that sends from `source`.
pub fn client_from(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .local_address(source)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Latencies of one series of requests.
#[derive(Debug, Clone, Default)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    /// The `q` quantile (0.5, 0.99), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    pub fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

/// Runs `request` `n` times one after another and times each; `request`
/// returns whether the request was served as a normal client expects
/// (202 and the like). Panics with `what` when one is not: during an
/// attack the bystander must still be served, however slowly.
pub async fn measure<F, Fut>(what: &str, n: usize, mut request: F) -> Latencies
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        if let Err(e) = request(i).await {
            panic!("{what}: the normal client's request {i} was not served: {e}");
        }
        latencies.push(started.elapsed());
    }
    Latencies(latencies)
}

/// Prints the bystander's figures before and during an attack, in the
/// shape the closing notes and bench scripts quote.
pub fn report(test: &str, quiet: &Latencies, attacked: &Latencies) {
    let ratio = attacked.p99().as_secs_f64() / quiet.p99().as_secs_f64().max(1e-6);
    println!(
        "bystander {test}: quiet p50 {:?} p99 {:?} | under attack p50 {:?} p99 {:?} max {:?} | p99 ratio {ratio:.2}",
        quiet.p50(),
        quiet.p99(),
        attacked.p50(),
        attacked.p99(),
        attacked.max()
    );
}
