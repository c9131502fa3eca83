//! One LMTP connection, command by command (RFC 2033). Every read is
//! bounded: a command line by `command_timeout` and its length, the
//! message by `data_timeout`, `max_size` and `min_data_rate`. Replies are
//! written as soon as they are known and flushed when no more pipelined
//! input is waiting (RFC 2920), so a pipelining client gets them in one go;
//! the per-recipient replies after DATA are the exception, one write each.
//! The session tells the connection registry its phase (waiting for a
//! command, DATA, storing); a session the registry sheds to make room is
//! told 421 and closed, except while its message is being stored.
//! XFORWARD is offered and taken only from `lmtp.xforward_from`; what it
//! says belongs to the transaction that follows and goes with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::command::{self, Command};
use super::reply::{self, Reply, Verdict};
use super::wire::{self, Data, Line};
use super::xforward::{self, Forwarded};
use super::Shared;
use crate::budget::Metered;
use crate::envelope::Source;
use crate::parse::ParseOptions;
use crate::sources::connections::{Conn, Counted, Phase, Slot};
use crate::submission::{Payload, Submission};
use crate::telemetry::events::emit;
use crate::telemetry::events::lmtp::{
    CommandError, Message, MessageHandled, Recipient, TimedOut, XforwardRefused,
};

/// The longest command line (RFC 5321 4.5.3.1.4 says 512 with CRLF; MAIL
/// parameters may extend it, RFC 1869, so some room above).
const MAX_COMMAND_LINE: usize = 2048;

/// Bad commands in one session before it is closed: a client that sends
/// junk is not a mail server worth talking to (Postfix smtpd allows 20 too).
const MAX_ERRORS: u32 = 20;

/// How long the last words to a session being closed (shed, too slow) may
/// take: its slot is given away already.
const FAREWELL_WRITE: Duration = Duration::from_secs(1);

/// The pause between two per-recipient replies after DATA. OpenSMTPD's
/// LMTP client (6.8, `mta_session.c`) handles one reply per read and calls
/// anything more in its buffer "too much data", failing the recipients not
/// yet answered; the pause lets it read each reply before the next lands.
/// 2 ms was tight on a busy machine (one run in five of the relay test in
/// tests/opensmtpd.rs failed with it); 20 recipients now cost 0.2 s, the most
/// (`max_recipients`, 100) 1 s, which clients that read ahead (Postfix,
/// Exim) do not mind.
const REPLY_GAP: Duration = Duration::from_millis(10);

/// The transaction in progress.
#[derive(Debug, Default)]
struct Transaction {
    /// `MAIL FROM` given: the envelope sender (empty for `<>`).
    sender: Option<String>,
    /// The size `MAIL FROM ... SIZE=` declared (RFC 1870), if any.
    size: Option<u64>,
    /// The recipients accepted so far, in order.
    recipients: Vec<String>,
    /// What XFORWARD said about the SMTP client, before MAIL.
    client: Forwarded,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

pub struct Session<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    /// This session in the connection registry.
    conn: Arc<Conn>,
    reader: BufReader<Counted<ReadHalf<'a>>>,
    writer: BufWriter<WriteHalf<'a>>,
    /// LHLO seen: MAIL is allowed.
    greeted: bool,
    /// The peer is in `lmtp.xforward_from`: XFORWARD is offered and taken.
    xforward: bool,
    transaction: Transaction,
    errors: u32,
}

/// Serves one connection to its end.
pub async fn run(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    slot: Slot,
) {
    let conn = slot.conn().clone();
    let (read, write) = stream.split();
    let mut session = Session {
        shared: &shared,
        peer,
        reader: BufReader::new(Counted::new(read, conn.clone())),
        conn,
        writer: BufWriter::new(write),
        greeted: false,
        xforward: shared.config.trusts_xforward(peer.ip()),
        transaction: Transaction::default(),
        errors: 0,
    };
    tracing::debug!(%peer, "LMTP session opened");
    match session.converse(&stop).await {
        Ok(()) => tracing::debug!(%peer, "LMTP session closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "LMTP connection ended with an error"),
    }
    if !session.conn.is_shed() {
        let _ = session.flush().await;
    }
    drop(session);
    let _ = tokio::time::timeout(FAREWELL_WRITE, stream.shutdown()).await;
    drop(slot);
}

impl Session<'_> {
    async fn converse(&mut self, stop: &CancellationToken) -> std::io::Result<()> {
        let greeting = format!("{} LMTP intake ready", self.shared.config.hostname);
        self.send(&Reply::multiline(220, vec![greeting])).await?;
        loop {
            self.conn.begin(Phase::Idle);
            let conn = self.conn.clone();
            let timeout = self.shared.config.command_timeout.0;
            let next_line = async {
                // Replies go out once the client has no more commands queued.
                if self.reader.buffer().is_empty() {
                    self.flush().await?;
                }
                let read = wire::read_line(&mut self.reader, MAX_COMMAND_LINE);
                Ok::<_, std::io::Error>(tokio::time::timeout(timeout, read).await)
            };
            let line = tokio::select! {
                read = next_line => read?,
                () = stop.cancelled() => {
                    self.send(&Reply::new(421, "4.3.2", "shutting down; try again later")).await?;
                    return Ok(());
                }
                () = conn.shed_requested() => {
                    self.farewell(&shed_reply()).await;
                    return Ok(());
                }
            };
            let line = match line {
                Err(_) => {
                    emit(TimedOut {
                        phase: "command",
                        peer: self.peer,
                        min_rate: 0,
                    });
                    self.send(&Reply::new(421, "4.4.2", "timed out waiting for a command"))
                        .await?;
                    return Ok(());
                }
                Ok(line) => line?,
            };
            let reply = match line {
                Line::Closed => return Ok(()),
                Line::TooLong => Err(Reply::new(500, "5.5.2", "line too long")),
                Line::BareLf => Err(Reply::new(
                    500,
                    "5.5.2",
                    "line ends in a bare LF; end every line with CRLF",
                )),
                Line::BareCr => Err(Reply::new(
                    500,
                    "5.5.2",
                    "bare CR in a command line; end every line with CRLF",
                )),
                Line::Complete(line) => command::parse(&line),
            };
            let next = match reply {
                Ok(command) => self.handle(command).await?,
                Err(refusal) => {
                    self.refuse(refusal).await?;
                    Next::Continue
                }
            };
            if matches!(next, Next::Close) {
                return Ok(());
            }
            if self.errors >= MAX_ERRORS {
                self.send(&Reply::new(421, "4.7.0", "too many errors; closing"))
                    .await?;
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, command: Command) -> std::io::Result<Next> {
        let config = &self.shared.config;
        let reply = match command {
            Command::Lhlo => {
                self.greeted = true;
                self.transaction = Transaction::default();
                let mut lines = vec![
                    config.hostname.clone(),
                    "PIPELINING".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    format!("SIZE {}", config.max_size.bytes()),
                ];
                if self.xforward {
                    lines.push(xforward::announcement());
                }
                Reply::multiline(250, lines)
            }
            Command::SmtpGreeting => {
                return self
                    .refuse(Reply::new(500, "5.5.1", "this is LMTP; greet with LHLO"))
                    .await
            }
            Command::Mail { sender, size } => {
                if !self.greeted {
                    return self
                        .refuse(Reply::new(503, "5.5.1", "send LHLO first"))
                        .await;
                }
                if self.transaction.sender.is_some() {
                    return self
                        .refuse(Reply::new(503, "5.5.1", "MAIL already given; RSET first"))
                        .await;
                }
                let limit = config.max_size.bytes();
                if size.is_some_and(|size| size > limit) {
                    emit(Message {
                        outcome: "rejected",
                    });
                    Reply::new(
                        552,
                        "5.3.4",
                        format!("message too big (limit {limit} bytes)"),
                    )
                } else {
                    self.transaction.sender = Some(sender);
                    self.transaction.size = size;
                    Reply::new(250, "2.1.0", "sender ok")
                }
            }
            Command::Rcpt { recipient } => {
                if self.transaction.sender.is_none() {
                    return self
                        .refuse(Reply::new(503, "5.5.1", "send MAIL first"))
                        .await;
                }
                if self.transaction.recipients.len() >= config.max_recipients {
                    Reply::new(
                        452,
                        "4.5.3",
                        "too many recipients; send the rest in another transaction",
                    )
                } else if !config.accepts(&recipient) {
                    emit(Recipient { accepted: false });
                    Reply::new(550, "5.1.1", format!("<{recipient}> is not a mailbox here"))
                } else {
                    emit(Recipient { accepted: true });
                    let reply = Reply::new(250, "2.1.5", format!("<{recipient}> ok"));
                    self.transaction.recipients.push(recipient);
                    reply
                }
            }
            Command::Data => {
                if self.transaction.sender.is_none() {
                    return self
                        .refuse(Reply::new(503, "5.5.1", "send MAIL first"))
                        .await;
                }
                if self.transaction.recipients.is_empty() {
                    // RFC 2033 4.2: DATA without a good recipient fails 503.
                    return self
                        .refuse(Reply::new(503, "5.5.1", "no valid recipients"))
                        .await;
                }
                return self.data().await;
            }
            Command::Rset => {
                self.transaction = Transaction::default();
                Reply::new(250, "2.0.0", "ok")
            }
            Command::Noop => Reply::new(250, "2.0.0", "ok"),
            Command::Quit => {
                self.send(&Reply::new(221, "2.0.0", "bye")).await?;
                return Ok(Next::Close);
            }
            Command::Vrfy => Reply::new(
                252,
                "2.5.0",
                "cannot verify, but will take the message and try",
            ),
            Command::Help => Reply::new(
                214,
                "2.0.0",
                "LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY (RFC 2033)",
            ),
            Command::Xforward { args } => return self.xforward(&args).await,
            Command::NotImplemented => {
                return self
                    .refuse(Reply::new(502, "5.5.1", "command not implemented"))
                    .await
            }
        };
        self.send(&reply).await?;
        Ok(Next::Continue)
    }

    /// XFORWARD: refused to a peer outside `lmtp.xforward_from` (550,
    /// before its arguments are even read: a forged client address is
    /// what SPF would believe), and after MAIL (503: the client of a
    /// transaction is said before it starts, as Postfix's smtpd wants).
    async fn xforward(&mut self, args: &str) -> std::io::Result<Next> {
        let peer = self.peer.ip().to_canonical();
        if !self.xforward {
            emit(XforwardRefused { peer });
            return self
                .refuse(Reply::new(
                    550,
                    "5.7.0",
                    format!("XFORWARD not allowed from {peer}"),
                ))
                .await;
        }
        if !self.greeted {
            return self
                .refuse(Reply::new(503, "5.5.1", "send LHLO first"))
                .await;
        }
        if self.transaction.sender.is_some() {
            return self
                .refuse(Reply::new(
                    503,
                    "5.5.1",
                    "XFORWARD comes before MAIL; RSET first",
                ))
                .await;
        }
        match self.transaction.client.with(args) {
            Ok(client) => {
                self.transaction.client = client;
                self.send(&Reply::new(250, "2.0.0", "ok")).await?;
                Ok(Next::Continue)
            }
            Err(refusal) => self.refuse(refusal).await,
        }
    }

    /// DATA: 354, the message, then one reply per accepted recipient.
    ///
    /// The message's bytes come from the memory budget: the declared
    /// `SIZE` before 354 (451 4.3.1 instead of 354 when the budget stays
    /// full for `memory.body_wait`), the rest as the data arrives; they are
    /// held until the replies are sent.
    async fn data(&mut self) -> std::io::Result<Next> {
        let config = &self.shared.config;
        let limit = config.max_size.bytes();
        // Room for the declared size and its wire overhead (dot-stuffing,
        // the final dot), so an honest client never waits mid-message.
        let declared = self
            .transaction
            .size
            .map(|size| (size + size / 64 + 4096).min(limit + 4096));
        let mut held = match self
            .shared
            .budget
            .reserve(declared.unwrap_or(0), crate::budget::Source::Lmtp)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "LMTP message deferred: no room in the memory budget");
                emit(Message {
                    outcome: "deferred",
                });
                self.send(&Reply::new(
                    451,
                    "4.3.1",
                    "insufficient system resources; try again later",
                ))
                .await?;
                return Ok(Next::Continue);
            }
        };
        self.send(&Reply::new(354, "", "end data with <CR><LF>.<CR><LF>"))
            .await?;
        self.flush().await?;
        let config = &self.shared.config;
        let min_rate = config.min_data_rate.bytes();
        let (data_timeout, rate_grace) = (config.data_timeout.0, config.data_rate_grace.0);
        self.conn.begin(Phase::Body);
        let conn = self.conn.clone();
        // Past max_size (and the line that crosses it) the reader keeps
        // nothing, so nothing more is reserved.
        let read = {
            let (reader, held) = (&mut self.reader, &mut held);
            async move {
                let mut metered = Metered::new(reader, held, limit + 4096);
                tokio::time::timeout(data_timeout, wire::read_data(&mut metered, limit)).await
            }
        };
        let read = tokio::select! {
            read = read => read,
            () = conn.below_rate(min_rate, rate_grace), if min_rate > 0 => {
                emit(TimedOut {
                    phase: "data_rate",
                    peer: self.peer,
                    min_rate,
                });
                self.farewell(&Reply::new(421, "4.4.2", "the message is coming too slowly; closing"))
                    .await;
                return Ok(Next::Close);
            }
            () = conn.shed_requested() => {
                self.farewell(&shed_reply()).await;
                return Ok(Next::Close);
            }
        };
        let data = match read {
            Err(_) => {
                emit(TimedOut {
                    phase: "data",
                    peer: self.peer,
                    min_rate: 0,
                });
                self.send(&Reply::new(421, "4.4.2", "timed out receiving the message"))
                    .await?;
                return Ok(Next::Close);
            }
            Ok(Err(e)) if crate::budget::is_budget_error(&e) => {
                // Mid-message: the rest cannot be read to its dot without
                // room for it, so the connection ends and the client retries.
                tracing::info!(peer = %self.peer, error = %e, "LMTP message deferred mid-data: no room in the memory budget");
                emit(Message {
                    outcome: "deferred",
                });
                self.send(&Reply::new(
                    421,
                    "4.3.1",
                    "insufficient system resources; closing, try again later",
                ))
                .await?;
                return Ok(Next::Close);
            }
            Ok(data) => data?,
        };
        let transaction = std::mem::take(&mut self.transaction);
        let verdict = match data {
            // Closed mid-message: nothing was acknowledged, nothing kept.
            None => return Ok(Next::Close),
            Some(Data::TooBig { size }) => {
                tracing::info!(peer = %self.peer, size, limit, "LMTP message over lmtp.max_size refused");
                Verdict::too_big(limit)
            }
            Some(Data::Complete(message)) => {
                held.shrink_to(message.len() as u64);
                self.store(&transaction, message).await
            }
        };
        emit(Message {
            outcome: verdict.outcome,
        });
        // RFC 2033 4.2: one reply per recipient that RCPT accepted, in
        // order. The message is one item, so every recipient hears the same.
        // Each reply is a write of its own, flushed, and the next follows
        // after REPLY_GAP: a client that reads one reply per read (OpenSMTPD)
        // takes a second reply already in its buffer as an error.
        let count = transaction.recipients.len();
        for (n, recipient) in transaction.recipients.iter().enumerate() {
            self.send(&verdict.for_recipient(recipient)).await?;
            self.flush().await?;
            if n + 1 < count {
                tokio::time::sleep(REPLY_GAP).await;
            }
        }
        drop(held);
        Ok(Next::Continue)
    }

    /// Runs the pipeline on one message; the verdict says whether it is
    /// stored.
    async fn store(&self, transaction: &Transaction, message: Vec<u8>) -> Verdict {
        // From here until the replies are queued the session is not shed:
        // cutting it off could lose the answer for a stored item.
        self.conn.begin(Phase::Working);
        let started = Instant::now();
        let source = Source::Lmtp {
            sender: transaction.sender.clone().unwrap_or_default(),
            recipients: transaction.recipients.clone(),
            ip: self.peer.ip().to_string(),
            client: transaction.client.client(),
        };
        let size = message.len();
        let options = ParseOptions {
            form: None,
            keep_raw: self.shared.keep_raw,
        };
        // A big message's hashing (its key), parsing and encoding run off
        // the async workers.
        let pipeline = self.shared.pipeline.clone();
        let sender = transaction.sender.clone();
        let recipients = transaction.recipients.clone();
        let result = crate::sources::offload::process(size, async move {
            // A mail server that lost our reply (a timeout, the gateway
            // killed after the write) delivers the same transaction again:
            // keyed by its envelope and bytes, the retry gets the first
            // receipt.
            let key = crate::submission::IdempotencyKey::of_delivery(
                "lmtp",
                sender.as_deref(),
                &recipients,
                &message,
            );
            let mut submission = Submission::new(source, Payload::Mail(Bytes::from(message)));
            submission.idempotency_key = Some(key);
            pipeline.process(submission, options).await
        })
        .await;
        emit(MessageHandled {
            took: started.elapsed(),
        });
        reply::verdict(&result)
    }

    /// Sends a refusal of a command and counts it against the session.
    async fn refuse(&mut self, reply: Reply) -> std::io::Result<Next> {
        self.errors += 1;
        emit(CommandError);
        self.send(&reply).await?;
        Ok(Next::Continue)
    }

    /// Queues a reply; it goes out at the next flush, or sooner when the
    /// buffer fills. A client that stops reading cannot hold the session:
    /// the write is bounded by `command_timeout` too.
    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        let timeout = self.shared.config.command_timeout.0;
        match tokio::time::timeout(timeout, self.writer.write_all(reply.encode().as_bytes())).await
        {
            Ok(written) => written,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// The last reply to a session being closed, bounded by
    /// [`FAREWELL_WRITE`] whatever the client does.
    async fn farewell(&mut self, reply: &Reply) {
        let _ = tokio::time::timeout(FAREWELL_WRITE, async {
            self.writer.write_all(reply.encode().as_bytes()).await?;
            self.writer.flush().await
        })
        .await;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let timeout = self.shared.config.command_timeout.0;
        match tokio::time::timeout(timeout, self.writer.flush()).await {
            Ok(flushed) => flushed,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// What a session shed to make room hears; the mail server tries again.
fn shed_reply() -> Reply {
    Reply::new(
        421,
        "4.3.2",
        "too many connections; closing the slowest, try again later",
    )
}
