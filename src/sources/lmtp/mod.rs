//! The LMTP source (RFC 2033): a mail server (Postfix `lmtp:`, Exim's
//! `lmtp` transport, Dovecot's proxy) delivers into the gateway over TCP.
//! Each message becomes one [`crate::submission::Submission`] with source
//! `lmtp` (envelope sender and recipients), the same item whatever the
//! number of recipients; after the final dot every accepted recipient gets
//! the same reply, 250 only once the item is stored (ack discipline of
//! DESIGN.md). `reply.rs` is where outcomes become reply codes.
//!
//! | file | job |
//! | --- | --- |
//! | `config.rs` | the `[lmtp]` section |
//! | `wire.rs` | bytes to command lines and to the message (dot-unstuffing, limits) |
//! | `command.rs` | command lines to commands |
//! | `session.rs` | one connection's conversation |
//! | `reply.rs` | replies, and the mapping from pipeline outcome to reply |

mod command;
pub mod config;
mod reply;
mod session;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::LmtpConfig;

use crate::pipeline::Pipeline;

/// What every session shares.
pub struct Shared {
    pub config: LmtpConfig,
    pub pipeline: Arc<Pipeline>,
    /// Keep the original message in the envelope (`messages.keep_raw`).
    pub keep_raw: bool,
    /// The process's memory budget for bodies in flight (`[memory]`).
    pub budget: crate::budget::BodyBudget,
}

/// Accepts connections until `shutdown` completes, then tells idle
/// sessions 421 and gives sessions in the middle of a message up to
/// `drain` to get their answer.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let max = shared.config.max_connections;
    // Caps open sessions; one more is told 421 and closed, which a mail
    // server understands as "try again later".
    let connections = Arc::new(Semaphore::new(max));
    // Cancelled at shutdown: sessions waiting for a command say 421.
    let stop = CancellationToken::new();
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "LMTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("intake_lmtp_connections_total", "result" => "refused").increment(1);
            tracing::info!(%peer, max, "LMTP connection refused: lmtp.max_connections reached");
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"421 4.3.2 too many connections; try again later\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        metrics::counter!("intake_lmtp_connections_total", "result" => "accepted").increment(1);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            session::run(shared, stream, peer, stop).await;
        });
    }
    drop(listener);
    tracing::info!(listener = ?local, "LMTP listener closed; draining open sessions");
    stop.cancel();
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let finished = tokio::time::timeout(drain, connections.acquire_many(all)).await;
    match finished {
        Ok(_) => tracing::info!(listener = ?local, "all LMTP sessions finished"),
        Err(_) => {
            tracing::warn!(listener = ?local, "LMTP sessions still open after the drain deadline")
        }
    }
}
