//! The ceiling for `deploy/bench/imap`: logs in, selects a mailbox and
//! downloads every mail with one `UID FETCH 1:* (UID BODY.PEEK[])`, with
//! the same IMAP client the gateway uses, doing nothing with the mails.
//!
//!     cargo run --release --example imap_fetch -- HOST PORT USER MAILBOX [move:FOLDER]
//!
//! The password is read from the `IMAP_PASSWORD` environment variable.
//! Prints `mails=N bytes=B seconds=S`.
//!
//! With `move:FOLDER` it times one `UID MOVE 1:* FOLDER` of the whole
//! mailbox instead, and prints `mails=N seconds=S`: what the server itself
//! needs to acknowledge that many mails, a floor under any ingestion that
//! moves what it stored.

use std::time::Instant;

use futures_util::TryStreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (host, port, user, mailbox, move_to) = match args.as_slice() {
        [_, host, port, user, mailbox] => (host, port, user, mailbox, None),
        [_, host, port, user, mailbox, target] => match target.strip_prefix("move:") {
            Some(folder) => (host, port, user, mailbox, Some(folder)),
            None => return Err(format!("expected move:FOLDER, not {target}").into()),
        },
        _ => return Err(
            "usage: imap_fetch HOST PORT USER MAILBOX [move:FOLDER] (password in IMAP_PASSWORD)"
                .into(),
        ),
    };
    let password = std::env::var("IMAP_PASSWORD").map_err(|_| "set IMAP_PASSWORD")?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port.parse::<u16>()?)).await?;
    tcp.set_nodelay(true)?;
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await?.ok_or("no greeting")?;
    let mut session = client.login(user, &password).await.map_err(|(e, _)| e)?;
    let selected = session.select(mailbox).await?;
    if let Some(folder) = move_to {
        let started = Instant::now();
        session.uid_mv("1:*", folder).await?;
        let seconds = started.elapsed().as_secs_f64();
        session.logout().await?;
        println!("mails={} seconds={seconds:.3}", selected.exists);
        return Ok(());
    }
    let started = Instant::now();
    let mut mails = 0usize;
    let mut bytes = 0usize;
    {
        let mut fetches = session.uid_fetch("1:*", "(UID BODY.PEEK[])").await?;
        while let Some(fetch) = fetches.try_next().await? {
            if let Some(body) = fetch.body() {
                mails += 1;
                bytes += body.len();
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    session.logout().await?;
    println!("mails={mails} bytes={bytes} seconds={seconds:.3}");
    Ok(())
}
