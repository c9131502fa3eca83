//! The acknowledgements side of the dev stack: the dev SMTP relay
//! (deploy/dev/services relay), the mailbox every mail it takes lands in
//! (outbox@shop.test over IMAP), and waiting until a gateway's
//! acknowledgement workers have nothing left to do.

use std::time::Duration;

use futures_util::TryStreamExt;
use redis::streams::StreamInfoGroupsReply;

use super::imap::{eventually, login, Session};

/// The dev relay, `host:port`.
pub fn relay() -> String {
    std::env::var("INTAKE_TEST_SMTP_RELAY").unwrap_or_else(|_| "127.0.0.1:12725".into())
}

pub fn relay_port() -> u16 {
    relay()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .expect("INTAKE_TEST_SMTP_RELAY is host:port")
}

/// An `[acknowledge]` table sending through the relay on `port`, quick
/// to retry; `extra` goes into the table (before `[acknowledge.relay]`).
pub fn acknowledge_toml(port: u16, extra: &str) -> String {
    format!(
        r#"
[acknowledge]
from = "Soporte Tienda <support@shop.test>"
templates = "{templates}"
backoff_initial = "200ms"
backoff_max = "1s"
claim_after = "5s"
{extra}

[acknowledge.relay]
host = "127.0.0.1"
port = {port}
tls = "none"
timeout = "10s"
"#,
        templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/acknowledge")
            .display()
    )
}

/// A customer address no other test uses.
pub fn customer(name: &str) -> String {
    format!("{name}.{}@customer.test", ulid::Ulid::new()).to_ascii_lowercase()
}

async fn outbox_session() -> Session {
    let user =
        std::env::var("INTAKE_TEST_OUTBOX_USER").unwrap_or_else(|_| "outbox@shop.test".into());
    let password =
        std::env::var("INTAKE_TEST_OUTBOX_PASSWORD").unwrap_or_else(|_| "outbox-dev".into());
    let mut session = login(super::imap::dev_port(), &user, &password).await;
    session
        .select("INBOX")
        .await
        .expect("SELECT INBOX of the outbox");
    session
}

/// Every mail in the outbox mailbox addressed to `address`, whole.
pub async fn acks_to(address: &str) -> Vec<Vec<u8>> {
    let mut session = outbox_session().await;
    let uids = session
        .uid_search(format!("TO \"{address}\""))
        .await
        .expect("UID SEARCH");
    let mut mails = Vec::new();
    if !uids.is_empty() {
        let set: Vec<String> = uids.iter().map(u32::to_string).collect();
        let fetched: Vec<_> = session
            .uid_fetch(set.join(","), "BODY.PEEK[]")
            .await
            .expect("UID FETCH")
            .try_collect()
            .await
            .expect("UID FETCH answers");
        for fetch in fetched {
            if let Some(body) = fetch.body() {
                mails.push(body.to_vec());
            }
        }
    }
    let _ = session.logout().await;
    mails
}

/// Waits until `address` has at least `n` acknowledgements, and returns them.
pub async fn wait_acks(address: &str, n: usize) -> Vec<Vec<u8>> {
    eventually(
        60,
        &format!("{n} acknowledgement(s) to {address}"),
        || async {
            let mails = acks_to(address).await;
            (mails.len() >= n).then_some(mails)
        },
    )
    .await
}

/// Waits until the acknowledgement workers of `prefix` have read the
/// whole desk and the outbox is empty: every decision made, every queued
/// mail handed to the relay. The relay then needs a moment of its own to
/// put it in the mailbox ([`wait_acks`]).
pub async fn settled(redis_url: &str, prefix: &str) {
    eventually(90, "the acknowledgements to settle", || async {
        let mut conn = super::test_connection(redis_url).await;
        let desk = format!("{prefix}:desk");
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&desk)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .ok()?;
        let last = last.ids.first().map(|e| e.id.clone())?;
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&desk)
            .query_async(&mut conn)
            .await
            .ok()?;
        let group = groups.groups.iter().find(|g| g.name == "acknowledge")?;
        let outbox: usize = redis::cmd("XLEN")
            .arg(format!("{prefix}:outbox"))
            .query_async(&mut conn)
            .await
            .ok()?;
        (group.last_delivered_id == last && group.pending == 0 && outbox == 0).then_some(())
    })
    .await;
}

/// A header of a mail, unfolded, or panics.
pub fn header(mail: &[u8], name: &str) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(mail)
        .expect("the acknowledgement parses");
    let value = parsed
        .headers_raw()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.replace("\r\n", "").trim().to_string());
    value.unwrap_or_else(|| panic!("no {name} in {}", String::from_utf8_lossy(mail)))
}

/// A TCP forwarder from `127.0.0.1:port` to `upstream`, for a relay that
/// comes back on the port the gateway points at. Dropped: stops accepting.
pub struct Forwarder(tokio::task::JoinHandle<()>);

impl Forwarder {
    pub async fn start(port: u16, upstream: String) -> Forwarder {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the forwarder");
        Forwarder(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A short pause for what a check of absence must let happen first.
pub async fn grace() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}
