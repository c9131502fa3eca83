//! The clamd client: PING and VERSION through `clamav-client`, INSTREAM
//! written here so that (1) the blob is streamed straight from its shared
//! `Bytes` in chunks, never copied whole, and (2) a reply clamd sends
//! before it closes mid-stream ("INSTREAM size limit exceeded") is still
//! read instead of surfacing as a broken pipe.
//!
//! Every exchange is bounded by one timeout, connect included.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use clamav_client::tokio::{Socket, Tcp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes per INSTREAM chunk. clamd reads each into its own buffer; 256 KiB
/// keeps syscalls few without large buffers on either side.
const CHUNK: usize = 256 * 1024;
/// Longest reply accepted from clamd; real ones are a line.
const MAX_REPLY: u64 = 4096;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `tcp://host:port`
    Tcp(String),
    /// `unix:///path/to/clamd.sock`
    Unix(PathBuf),
}

impl FromStr for ClamdAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            let ok = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("`{s}` must be tcp://host:port"));
            }
            Ok(ClamdAddress::Tcp(rest.to_string()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("`{s}` must be unix:///absolute/path"));
            }
            Ok(ClamdAddress::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "`{s}` must start with tcp:// (tcp://127.0.0.1:3310) or unix:// (unix:///run/clamav/clamd.ctl)"
            ))
        }
    }
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddress::Tcp(a) => write!(f, "tcp://{a}"),
            ClamdAddress::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// What clamd said about one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Clean,
    /// A signature matched.
    Found(String),
    /// The blob is beyond clamd's limits: its own StreamMaxLength, or
    /// (with `AlertExceedsMax yes`) a `Heuristics.Limits.Exceeded.*`
    /// alert for a file or archive beyond MaxFileSize / MaxScanSize /
    /// MaxRecursion. Not a virus: the blob was not fully scanned.
    LimitExceeded(String),
}

/// Why clamd gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    #[error("cannot reach clamd at {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the connection to clamd broke")]
    Io(#[source] std::io::Error),
    #[error("clamd did not answer within {0:?}")]
    Timeout(Duration),
    /// clamd answered with an error of its own (out of memory, a broken
    /// database, ...).
    #[error("clamd reported an error: {0}")]
    Scanner(String),
    #[error("clamd answered something unexpected: {0:?}")]
    Protocol(String),
}

impl ClamdError {
    /// Whether this says clamd is down (rather than one scan failing).
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            ClamdError::Connect { .. } | ClamdError::Io(_) | ClamdError::Timeout(_)
        )
    }
}

/// A clamd client. Cheap to clone; every call opens its own connection,
/// as clamd's one-command-per-connection protocol expects.
#[derive(Debug, Clone)]
pub struct Clamd {
    address: ClamdAddress,
    /// Bound on each whole exchange, connect included.
    timeout: Duration,
}

impl Clamd {
    pub fn new(address: ClamdAddress, timeout: Duration) -> Self {
        Clamd { address, timeout }
    }

    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    /// PING: whether clamd answers now.
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let reply = self
            .bounded(async {
                match &self.address {
                    ClamdAddress::Tcp(a) => {
                        clamav_client::tokio::ping(Tcp {
                            host_address: a.as_str(),
                        })
                        .await
                    }
                    ClamdAddress::Unix(p) => {
                        clamav_client::tokio::ping(Socket { socket_path: p }).await
                    }
                }
                .map_err(|e| self.connect_error(e))
            })
            .await?;
        if reply == clamav_client::PONG {
            Ok(())
        } else {
            Err(ClamdError::Protocol(text(&reply)))
        }
    }

    /// VERSION: `ClamAV 1.4.6/27400/Mon Nov 23 08:30:00 2026`, or just
    /// `ClamAV 1.4.6` when clamd has no official database.
    pub async fn version(&self) -> Result<ClamVersion, ClamdError> {
        let reply = self
            .bounded(async {
                match &self.address {
                    ClamdAddress::Tcp(a) => {
                        clamav_client::tokio::get_version(Tcp {
                            host_address: a.as_str(),
                        })
                        .await
                    }
                    ClamdAddress::Unix(p) => {
                        clamav_client::tokio::get_version(Socket { socket_path: p }).await
                    }
                }
                .map_err(|e| self.connect_error(e))
            })
            .await?;
        Ok(ClamVersion::parse(&text(&reply)))
    }

    /// INSTREAM: streams `data` to clamd in chunks and returns its verdict.
    pub async fn scan(&self, data: &Bytes) -> Result<Reply, ClamdError> {
        self.bounded(async {
            match &self.address {
                ClamdAddress::Tcp(a) => {
                    let stream = tokio::net::TcpStream::connect(a.as_str())
                        .await
                        .map_err(|e| self.connect_error(e))?;
                    let _ = stream.set_nodelay(true);
                    instream(stream, data).await
                }
                ClamdAddress::Unix(p) => {
                    let stream = tokio::net::UnixStream::connect(p)
                        .await
                        .map_err(|e| self.connect_error(e))?;
                    instream(stream, data).await
                }
            }
        })
        .await
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClamdError>>,
    ) -> Result<T, ClamdError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or(Err(ClamdError::Timeout(self.timeout)))
    }

    fn connect_error(&self, source: std::io::Error) -> ClamdError {
        ClamdError::Connect {
            address: self.address.to_string(),
            source,
        }
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    data: &Bytes,
) -> Result<Reply, ClamdError> {
    let sent = async {
        stream.write_all(b"zINSTREAM\0").await?;
        for chunk in data.chunks(CHUNK) {
            // Fits: CHUNK is far below u32::MAX.
            stream
                .write_all(&(chunk.len() as u32).to_be_bytes())
                .await?;
            stream.write_all(chunk).await?;
        }
        stream.write_all(&[0, 0, 0, 0]).await?;
        stream.flush().await
    }
    .await;
    // Read the reply even when the write failed: clamd answers "INSTREAM
    // size limit exceeded" and closes while we are still sending.
    let mut reply = Vec::new();
    let read = (&mut stream).take(MAX_REPLY).read_to_end(&mut reply).await;
    if reply.is_empty() {
        return Err(ClamdError::Io(match (sent, read) {
            (Err(e), _) | (Ok(()), Err(e)) => e,
            (Ok(()), Ok(_)) => std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "clamd closed the connection without a reply",
            ),
        }));
    }
    parse_reply(&text(&reply))
}

/// Reads one INSTREAM reply: `stream: OK`, `stream: NAME FOUND`,
/// `INSTREAM size limit exceeded. ERROR`, `... ERROR`.
pub fn parse_reply(reply: &str) -> Result<Reply, ClamdError> {
    let body = reply.strip_prefix("stream: ").unwrap_or(reply);
    if body == "OK" {
        return Ok(Reply::Clean);
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        let name = name.trim().to_string();
        return Ok(if name.starts_with("Heuristics.Limits.Exceeded") {
            Reply::LimitExceeded(name)
        } else {
            Reply::Found(name)
        });
    }
    if body.contains("size limit exceeded") {
        return Ok(Reply::LimitExceeded(
            "clamd StreamMaxLength exceeded".to_string(),
        ));
    }
    if let Some(message) = body.strip_suffix(" ERROR") {
        return Err(ClamdError::Scanner(message.trim().to_string()));
    }
    Err(ClamdError::Protocol(reply.to_string()))
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .trim_end_matches(['\0', '\n', '\r'])
        .to_string()
}

/// The engine and signature database clamd reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClamVersion {
    /// `ClamAV 1.4.6`
    pub engine: String,
    /// The database version, when clamd has an official one.
    pub database: Option<String>,
    /// The database's date as clamd prints it.
    pub signature_date: Option<String>,
}

impl ClamVersion {
    pub fn parse(reply: &str) -> ClamVersion {
        let mut parts = reply.splitn(3, '/');
        let engine = parts.next().unwrap_or_default().trim().to_string();
        let database = parts
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let signature_date = parts
            .next()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        ClamVersion {
            engine,
            database,
            signature_date,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_verdicts() {
        assert_eq!(parse_reply("stream: OK").unwrap(), Reply::Clean);
        assert_eq!(
            parse_reply("stream: Intake-Test.EICAR.UNOFFICIAL FOUND").unwrap(),
            Reply::Found("Intake-Test.EICAR.UNOFFICIAL".into())
        );
        assert_eq!(
            parse_reply("stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND").unwrap(),
            Reply::LimitExceeded("Heuristics.Limits.Exceeded.MaxFileSize".into()),
            "a limit alert is not a virus"
        );
        assert!(matches!(
            parse_reply("INSTREAM size limit exceeded. ERROR").unwrap(),
            Reply::LimitExceeded(_)
        ));
        assert!(matches!(
            parse_reply("stream: Can't allocate memory ERROR"),
            Err(ClamdError::Scanner(_))
        ));
        assert!(matches!(parse_reply("PONG"), Err(ClamdError::Protocol(_))));
    }

    #[test]
    fn version_with_and_without_database() {
        let v = ClamVersion::parse("ClamAV 1.4.6/27400/Mon Nov 23 08:30:00 2026");
        assert_eq!(v.engine, "ClamAV 1.4.6");
        assert_eq!(v.database.as_deref(), Some("27400"));
        assert_eq!(
            v.signature_date.as_deref(),
            Some("Mon Nov 23 08:30:00 2026")
        );
        let v = ClamVersion::parse("ClamAV 1.4.6");
        assert_eq!(v.engine, "ClamAV 1.4.6");
        assert_eq!(v.database, None);
    }

    #[test]
    fn addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "tcp://127.0.0.1:3310".parse::<ClamdAddress>().unwrap(),
            ClamdAddress::Tcp("127.0.0.1:3310".into())
        );
        assert_eq!(
            "unix:///run/clamd.sock".parse::<ClamdAddress>().unwrap(),
            ClamdAddress::Unix("/run/clamd.sock".into())
        );
        for bad in ["127.0.0.1:3310", "tcp://host", "unix://relative.sock"] {
            assert!(bad.parse::<ClamdAddress>().is_err(), "{bad} accepted");
        }
    }
}
