//! Large entries on a single Redis, written on a connection of their own
//! with the RESP command put together here: the envelope's JSON goes
//! straight onto the socket, piece by piece as it is encoded (its length
//! first, from a counting pass), so it is never held whole, neither here
//! nor in redis-rs' command and write buffers (the shared connection's
//! buffer would keep the largest command's size for good).
//!
//! Written at most once per idempotency key as the script path does:
//! WATCH the key, look, then XADD and mark it in one MULTI; a writer that
//! set the key meanwhile makes EXEC fail, and its entry is the answer.
//! Every read and write on the socket is bounded by `redis.timeout`. Redis
//! Cluster and TLS keep the script path with the whole JSON.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::sync::mpsc;

use super::json::{encode_in_pieces, encoded_len, EnvelopeJson};
use super::{Appended, SinkError};
use crate::envelope::Envelope;

/// Size of one piece of encoded JSON on its way to the socket; at most
/// [`PIECES_IN_FLIGHT`] of them wait at a time.
const PIECE: usize = 64 * 1024;
const PIECES_IN_FLIGHT: usize = 4;

/// The longest reply line or bulk string read back (entry ids, the
/// idempotency key's value, error messages).
const MAX_REPLY: usize = 64 * 1024;

/// Where and how to connect for a large write.
pub struct LargeWriter {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    timeout: Duration,
}

enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// The write-once part of a large write.
pub struct Once<'a> {
    /// The idempotency key in Redis.
    pub key: &'a str,
    /// The receipt id the key names.
    pub receipt: &'a str,
    /// The payload digest stored beside the receipt, if any.
    pub digest: Option<&'a str>,
    pub ttl_secs: u64,
}

/// One field value of the entry.
pub enum Value<'a> {
    Text(&'a str),
    Envelope(&'a EnvelopeJson),
}

impl Value<'_> {
    /// Its length in bytes; a deferred envelope is counted by encoding it
    /// once on a blocking thread, without keeping the JSON.
    async fn len(&self) -> Result<u64, SinkError> {
        match self {
            Value::Text(text) => Ok(text.len() as u64),
            Value::Envelope(EnvelopeJson::Encoded(json)) => Ok(json.len() as u64),
            Value::Envelope(EnvelopeJson::Deferred(envelope)) => {
                let envelope = envelope.clone();
                tokio::task::spawn_blocking(move || encoded_len(&envelope))
                    .await
                    .map_err(|e| refused("the envelope could not be encoded", e.to_string()))?
                    .map_err(|e| refused("the envelope could not be encoded", e.to_string()))
            }
        }
    }
}

impl LargeWriter {
    /// `None` for a server this writer cannot reach (TLS): large entries
    /// then take the script path.
    pub fn new(info: &ConnectionInfo, timeout: Duration) -> Option<Self> {
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return None,
        };
        let settings = info.redis_settings();
        Some(LargeWriter {
            addr,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
            timeout,
        })
    }

    /// XADD `stream * <fields...>`; with `once`, at most once per key.
    pub async fn append(
        &self,
        stream: &str,
        fields: &[(&str, Value<'_>)],
        once: Option<Once<'_>>,
    ) -> Result<Appended, SinkError> {
        let mut conn = self.connect().await?;
        if let Some(once) = &once {
            conn.send(&[b"WATCH", once.key.as_bytes()]).await?;
            conn.send(&[b"GET", once.key.as_bytes()]).await?;
            conn.flush().await?;
            conn.expect_ok("WATCH").await?;
            if let Some(value) = conn.bulk("GET").await? {
                return Ok(super::KeyValue::parse(&value).into());
            }
            conn.send(&[b"MULTI"]).await?;
        }
        // RESP announces each argument's length before its first byte.
        let mut lens = Vec::with_capacity(fields.len());
        for (_, value) in fields {
            lens.push(value.len().await?);
        }
        conn.begin(3 + 2 * fields.len()).await?;
        conn.arg(b"XADD").await?;
        conn.arg(stream.as_bytes()).await?;
        conn.arg(b"*").await?;
        for ((name, value), len) in fields.iter().zip(lens) {
            conn.arg(name.as_bytes()).await?;
            conn.header(len).await?;
            match value {
                Value::Text(text) => conn.raw(text.as_bytes()).await?,
                Value::Envelope(EnvelopeJson::Encoded(json)) => conn.raw(json.as_bytes()).await?,
                Value::Envelope(EnvelopeJson::Deferred(envelope)) => {
                    conn.stream_json(envelope.clone(), len).await?
                }
            }
            conn.raw(b"\r\n").await?;
        }
        let Some(once) = once else {
            conn.flush().await?;
            let entry_id = conn.bulk("XADD").await?.unwrap_or_default();
            return Ok(Appended::Written { entry_id });
        };
        // The key names the receipt inside the MULTI; the entry id (only
        // informative) is added after EXEC.
        let ttl = once.ttl_secs.to_string();
        let first = super::KeyValue::encode(once.receipt, None, once.digest);
        conn.send(&[
            b"SET",
            once.key.as_bytes(),
            first.as_bytes(),
            b"EX",
            ttl.as_bytes(),
        ])
        .await?;
        conn.send(&[b"EXEC"]).await?;
        conn.flush().await?;
        conn.expect_ok("MULTI").await?;
        conn.expect_queued("XADD").await?;
        conn.expect_queued("SET").await?;
        match conn.reply("EXEC").await? {
            Reply::Array(Some(items)) => {
                let entry_id = match items.into_iter().next() {
                    Some(Reply::Bulk(Some(id))) => String::from_utf8_lossy(&id).into_owned(),
                    other => return Err(unexpected("EXEC", &format!("{other:?}"))),
                };
                let value = super::KeyValue::encode(once.receipt, Some(&entry_id), once.digest);
                conn.send(&[
                    b"SET",
                    once.key.as_bytes(),
                    value.as_bytes(),
                    b"XX",
                    b"KEEPTTL",
                ])
                .await?;
                conn.flush().await?;
                if let Err(e) = conn.expect_ok("SET").await {
                    tracing::debug!(error = %e, "entry id not added to the idempotency key");
                }
                Ok(Appended::Written { entry_id })
            }
            // EXEC refused: another writer set the key after our look.
            Reply::Array(None) => {
                conn.send(&[b"GET", once.key.as_bytes()]).await?;
                conn.flush().await?;
                let value = conn.bulk("GET").await?.unwrap_or_default();
                Ok(super::KeyValue::parse(&value).into())
            }
            other => Err(unexpected("EXEC", &format!("{other:?}"))),
        }
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        let timeout = self.timeout;
        let connected = tokio::time::timeout(timeout, async {
            let io: Box<dyn Io> = match &self.addr {
                Addr::Tcp(host, port) => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                Addr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            };
            Ok::<_, io::Error>(io)
        })
        .await
        .map_err(|_| SinkError::Timeout(timeout))?
        .map_err(unavailable)?;
        let mut conn = Conn {
            io: BufStream::with_capacity(8 * 1024, PIECE, connected),
            timeout,
        };
        let mut setup = 0;
        if let Some(password) = &self.password {
            match &self.username {
                Some(user) => {
                    conn.send(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.send(&[b"AUTH", password.as_bytes()]).await?,
            }
            setup += 1;
        }
        if self.db != 0 {
            conn.send(&[b"SELECT", self.db.to_string().as_bytes()])
                .await?;
            setup += 1;
        }
        if setup > 0 {
            conn.flush().await?;
            for _ in 0..setup {
                conn.expect_ok("AUTH/SELECT").await?;
            }
        }
        Ok(conn)
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection of a large write.
struct Conn {
    io: BufStream<Box<dyn Io>>,
    timeout: Duration,
}

impl Conn {
    /// A whole command of small arguments.
    async fn send(&mut self, args: &[&[u8]]) -> Result<(), SinkError> {
        self.begin(args.len()).await?;
        for arg in args {
            self.arg(arg).await?;
        }
        Ok(())
    }

    async fn begin(&mut self, args: usize) -> Result<(), SinkError> {
        self.raw(format!("*{args}\r\n").as_bytes()).await
    }

    async fn arg(&mut self, arg: &[u8]) -> Result<(), SinkError> {
        self.header(arg.len() as u64).await?;
        self.raw(arg).await?;
        self.raw(b"\r\n").await
    }

    async fn header(&mut self, len: u64) -> Result<(), SinkError> {
        self.raw(format!("${len}\r\n").as_bytes()).await
    }

    /// Writes `bytes`, each piece bounded by the timeout (a large JSON
    /// already encoded is written in pieces too).
    async fn raw(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        for piece in bytes.chunks(PIECE) {
            bounded(self.timeout, self.io.write_all(piece)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        bounded(self.timeout, self.io.flush()).await
    }

    /// Writes the envelope's JSON as it is encoded on a blocking thread,
    /// `len` bytes exactly (the counting pass's figure): a mismatch stops
    /// before anything is stored, since the command would be cut short.
    async fn stream_json(&mut self, envelope: Arc<Envelope>, len: u64) -> Result<(), SinkError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(PIECES_IN_FLIGHT);
        let encoder = tokio::task::spawn_blocking(move || {
            encode_in_pieces(&envelope, PIECE, |piece| {
                tx.blocking_send(piece)
                    .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
            })
        });
        let mut written = 0u64;
        while let Some(piece) = rx.recv().await {
            written += piece.len() as u64;
            if written > len {
                break;
            }
            self.raw(&piece).await?;
        }
        drop(rx);
        let encoded = encoder
            .await
            .map_err(|e| refused("the envelope could not be encoded", e.to_string()))?;
        match encoded {
            Ok(total) if total == len && written == len => Ok(()),
            Ok(total) => Err(refused(
                "the envelope's JSON changed length while it was written",
                format!("{total} bytes, {len} announced"),
            )),
            Err(e) => Err(refused("the envelope could not be encoded", e.to_string())),
        }
    }

    async fn reply(&mut self, command: &'static str) -> Result<Reply, SinkError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, read_reply(&mut self.io, 0)).await {
            Err(_) => Err(SinkError::Timeout(timeout)),
            Ok(Err(e)) => Err(unavailable(e)),
            Ok(Ok(Reply::Error(line))) => Err(SinkError::Refused(RedisError::from((
                ErrorKind::Extension,
                command,
                line,
            )))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    async fn expect_ok(&mut self, command: &'static str) -> Result<(), SinkError> {
        match self.reply(command).await? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(unexpected(command, &format!("{other:?}"))),
        }
    }

    async fn expect_queued(&mut self, command: &'static str) -> Result<(), SinkError> {
        match self.reply(command).await? {
            Reply::Simple(s) if s == "QUEUED" => Ok(()),
            other => Err(unexpected(command, &format!("{other:?}"))),
        }
    }

    async fn bulk(&mut self, command: &'static str) -> Result<Option<String>, SinkError> {
        match self.reply(command).await? {
            Reply::Bulk(value) => Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
            other => Err(unexpected(command, &format!("{other:?}"))),
        }
    }
}

/// One socket operation, bounded by the timeout.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, SinkError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(SinkError::Timeout(timeout)),
        Ok(result) => result.map_err(unavailable),
    }
}

/// One RESP2 reply, as far as these commands need.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Reads one reply; bounded in size (MAX_REPLY per line or string, a few
/// elements, one level of nesting), since only short answers are expected.
fn read_reply<'a, R: AsyncBufRead + Unpin + Send>(
    reader: &'a mut R,
    depth: u8,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let line = read_line(reader).await?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a RESP length"))
        };
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Integer(number()?)),
            "$" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(Reply::Bulk(None));
                };
                if len > MAX_REPLY {
                    return Err(invalid("a bulk reply longer than expected"));
                }
                let mut data = vec![0; len + 2];
                tokio::io::AsyncReadExt::read_exact(reader, &mut data).await?;
                if !data.ends_with(b"\r\n") {
                    return Err(invalid("a bulk reply without its CRLF"));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let Ok(count) = usize::try_from(number()?) else {
                    return Ok(Reply::Array(None));
                };
                if count > 16 || depth > 1 {
                    return Err(invalid("an array reply larger than expected"));
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(read_reply(reader, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(invalid("not a RESP reply")),
        }
    })
}

async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut *reader, MAX_REPLY as u64 + 2);
    limited.read_until(b'\n', &mut line).await?;
    if !line.ends_with(b"\r\n") {
        return Err(if line.is_empty() {
            io::ErrorKind::UnexpectedEof.into()
        } else {
            invalid("a reply line too long or cut off")
        });
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("a reply line that is not UTF-8"))
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn unavailable(e: io::Error) -> SinkError {
    SinkError::Unavailable(RedisError::from(e))
}

fn refused(what: &'static str, detail: String) -> SinkError {
    SinkError::Refused(RedisError::from((ErrorKind::Client, what, detail)))
}

fn unexpected(command: &'static str, reply: &str) -> SinkError {
    SinkError::Refused(RedisError::from((
        ErrorKind::UnexpectedReturnType,
        command,
        format!(
            "unexpected reply {}",
            reply.chars().take(200).collect::<String>()
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> io::Result<Reply> {
        let mut reader = tokio::io::BufReader::new(bytes);
        read_reply(&mut reader, 0).await
    }

    #[tokio::test]
    async fn replies_of_a_large_write_are_read() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Reply::Bulk(None));
        assert_eq!(parse(b"*-1\r\n").await.unwrap(), Reply::Array(None));
        assert_eq!(
            parse(b"*2\r\n$3\r\n1-0\r\n+OK\r\n").await.unwrap(),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"1-0".to_vec())),
                Reply::Simple("OK".into())
            ]))
        );
        assert_eq!(
            parse(b"-ERR wrong\r\n").await.unwrap(),
            Reply::Error("ERR wrong".into())
        );
    }

    #[tokio::test]
    async fn oversized_or_cut_replies_are_errors_not_allocations() {
        assert!(parse(b"$99999999\r\n").await.is_err(), "bulk too long");
        assert!(parse(b"*99999\r\n").await.is_err(), "array too long");
        assert!(parse(b"+OK").await.is_err(), "no line end");
        assert!(parse(b"").await.is_err(), "nothing");
        let long = [b"+".as_slice(), &vec![b'a'; MAX_REPLY + 10], b"\r\n"].concat();
        assert!(parse(&long).await.is_err(), "line too long");
    }
}
