//! The LMTP source (RFC 2033): a mail server (Postfix `lmtp:`, Exim's
//! `lmtp` transport, Dovecot's proxy) delivers into the gateway over TCP.
//! Each message becomes one [`crate::submission::Submission`] with source
//! `lmtp` (envelope sender and recipients), the same item whatever the
//! number of recipients; after the final dot every accepted recipient gets
//! the same reply, 250 only once the item is stored (ack discipline of
//! src/submission.rs). `reply.rs` is where outcomes become reply codes.
//!
//! | file | job |
//! | --- | --- |
//! | `config.rs` | the `[lmtp]` section |
//! | `wire.rs` | bytes to command lines and to the message (CRLF only, dot-unstuffing, limits) |
//! | `command.rs` | command lines to commands |
//! | `xforward.rs` | Postfix's `XFORWARD`: the SMTP client behind the mail server |
//! | `session.rs` | one connection's conversation |
//! | `reply.rs` | replies, and the mapping from pipeline outcome to reply |

mod command;
pub mod config;
mod reply;
mod session;
mod wire;
mod xforward;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use config::LmtpConfig;

use crate::pipeline::Pipeline;
use crate::sources::connections::{self, Admission, Refusal, Registry};
use crate::telemetry::events::emit;
use crate::telemetry::events::lmtp::{ConnectionAccepted, ConnectionRefused};

/// What every session shares.
pub struct Shared {
    pub config: LmtpConfig,
    pub pipeline: Arc<Pipeline>,
    /// Keep the original message in the envelope (`messages.keep_raw`).
    pub keep_raw: bool,
    /// The process's memory budget for bodies in flight (`[memory]`).
    pub budget: crate::budget::BodyBudget,
}

/// How long a refusal at accept may take to write: the client is not
/// being served, so it gets no more.
const FAREWELL_WRITE: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown` completes, then tells idle
/// sessions 421 and gives sessions in the middle of a message up to
/// `drain` to get their answer.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let config = &shared.config;
    // Caps sessions per client and in all; when full, the slowest session
    // is shed for a newcomer. Nothing waits: a newcomer that finds no room
    // is told 421, which a mail server understands as "try again later".
    let registry = Registry::new(
        "lmtp",
        connections::Limits {
            max_connections: config.max_connections,
            max_per_client: config.max_connections_per_ip,
            grace: config.shed_grace.0,
            max_waiting: 0,
        },
    );
    // Cancelled at shutdown: sessions waiting for a command say 421.
    let stop = CancellationToken::new();
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
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
        let (result, reply, why) = match registry.admit(peer.ip()) {
            Admission::Admitted(slot) => {
                emit(ConnectionAccepted);
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let stop = stop.clone();
                tokio::spawn(session::run(shared, stream, peer, stop, slot));
                continue;
            }
            Admission::Refused(Refusal::PerClient) => (
                "refused_per_ip",
                "421 4.7.0 too many connections from your address; try again later\r\n",
                "lmtp.max_connections_per_ip reached for this address",
            ),
            Admission::Refused(Refusal::Full) | Admission::Queued(_) => (
                "refused",
                "421 4.3.2 too many connections; try again later\r\n",
                "lmtp.max_connections reached and no session could be shed",
            ),
        };
        emit(ConnectionRefused { result, peer, why });
        tokio::spawn(farewell(stream, reply));
    }
    drop(listener);
    tracing::info!(listener = ?local, "LMTP listener closed; draining open sessions");
    registry.close();
    stop.cancel();
    match tokio::time::timeout(drain, registry.wait_empty()).await {
        Ok(()) => tracing::info!(listener = ?local, "all LMTP sessions finished"),
        Err(_) => {
            tracing::warn!(listener = ?local, "LMTP sessions still open after the drain deadline")
        }
    }
}

/// Tells a refused client why and closes, within [`FAREWELL_WRITE`].
async fn farewell(mut stream: TcpStream, reply: &'static str) {
    let _ = tokio::time::timeout(FAREWELL_WRITE, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
