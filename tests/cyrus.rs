//! The IMAP source against a real Cyrus IMAP 3.6 (Debian's, a private
//! instance per test: tests/support/cyrus.rs) and the real Redis, with the
//! gateway binary as a child process. Cyrus keeps a user's folders under
//! `INBOX.` (or `INBOX/` with `unixhierarchysep`), or at the top with
//! `altnamespace`: the configured `Processed` must work in all three; a
//! folder Cyrus will not create stops the mailbox with one clear error that
//! `/readyz` shows; a backlog survives a SIGKILL of the gateway, each mail
//! stored once; a second connection that stalls (through a proxy) is given
//! up after its own short deadline while the first reads on; with `idled`
//! running, new mail comes in through IDLE at once.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::cyrus::{Namespace, PrivateCyrus, USER};
use support::imap::{eventually, secret_file, small_mail, xlen, GatewayProcess};
use support::{client, free_port, redis_url, unique_prefix};

/// The gateway's name for the account: mailbox labels are `cyrus/INBOX`.
const ACCOUNT: &str = "cyrus";
const LABEL: &str = "cyrus/INBOX";

/// The `[[imap]]` table for the user's INBOX on `cyrus`; `extra` keys win
/// over the test timings.
fn imap_table(cyrus: &PrivateCyrus, password: &Path, extra: &str) -> String {
    let timings: String = [
        ("processed_folder", "\"Processed\""),
        ("quarantine_folder", "\"Quarantine\""),
        ("poll_interval", "\"500ms\""),
        ("connect_timeout", "\"3s\""),
        ("command_timeout", "\"10s\""),
        ("backoff_max", "\"2s\""),
        ("auth_backoff", "\"4s\""),
        ("lease_ttl", "\"3s\""),
    ]
    .iter()
    .filter(|(key, _)| !extra.contains(&format!("{key} =")))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect();
    format!(
        "\n[[imap]]\nname = \"{ACCOUNT}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         username = \"{USER}\"\npassword = {{ file = \"{password}\" }}\nmailboxes = [\"INBOX\"]\n\
         {timings}{extra}\n",
        port = cyrus.port,
        password = password.display(),
    )
}

/// A gateway process (`intake serve`) whose `/readyz` can be asked.
struct Watched {
    process: GatewayProcess,
    public: String,
    config: std::path::PathBuf,
}

fn start(dir: &Path, prefix: &str, imap: &str) -> Watched {
    let public = free_port();
    let config = dir.join("intake.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{public}\"\n\n[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{imap}",
            redis_url()
        ),
    )
    .expect("write config");
    Watched {
        process: GatewayProcess::start(&config, &dir.join("gateway.log")),
        public: format!("http://127.0.0.1:{public}"),
        config,
    }
}

impl Watched {
    /// What `/readyz` says about the mailbox (`None` before it answers).
    async fn readyz(&self) -> Option<(u16, String)> {
        let response = client()
            .get(format!("{}/readyz", self.public))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        let body: serde_json::Value = response.json().await.ok()?;
        Some((code, body["imap"][LABEL].as_str()?.to_string()))
    }

    /// Waits until `/readyz` names the mailbox in `state`; the HTTP code.
    async fn wait_state(&self, state: &str, secs: u64) -> u16 {
        eventually(
            secs,
            &format!("/readyz says {LABEL} is {state}"),
            || async {
                self.readyz()
                    .await
                    .and_then(|(code, s)| (s == state).then_some(code))
            },
        )
        .await
    }
}

/// Waits until `<prefix>:desk` holds at least `n` entries.
async fn wait_desk(prefix: &str, n: usize, secs: u64) -> usize {
    eventually(secs, &format!("{n} desk entries"), || async {
        let len = xlen(&redis_url(), prefix, "desk").await;
        (len >= n).then_some(len)
    })
    .await
}

/// Waits until the user's `folder` holds exactly `n` mails.
async fn wait_count(cyrus: &PrivateCyrus, folder: &str, n: u32, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = cyrus.count(folder);
        if now == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{folder} holds {now:?} mails, expected {n} within {secs}s\n{}",
            cyrus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every Message-ID of `tag`'s mails 1..=n on the desk exactly once.
async fn assert_each_once_on_desk(prefix: &str, tag: &str, n: usize) {
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for entry in &desk {
        let id = entry.envelope()["message_id"]
            .as_str()
            .expect("a Message-ID")
            .to_string();
        *by_id.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = by_id.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = (1..=n)
        .map(|i| format!("{tag}-{i}@example.com"))
        .filter(|id| !by_id.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} mails missing: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(desk.len(), n, "one desk item per mail");
}

/// 20 mails drained with `processed_folder = "Processed"`: each stored
/// once, all in the folder the server names `Processed` by.
async fn processed_works(namespace: Namespace, tag: &str) {
    let cyrus = PrivateCyrus::start(namespace);
    let mails: Vec<Vec<u8>> = (1..=20).map(|n| small_mail(n, tag)).collect();
    cyrus.append(&mails, 20);
    assert_eq!(cyrus.count("INBOX"), Some(20));
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "any-password");
    let prefix = unique_prefix(&format!("cyrus_{tag}"));
    let mut gw = start(dir.path(), &prefix, &imap_table(&cyrus, &pw, ""));

    wait_desk(&prefix, 20, 60).await;
    let processed = namespace.folder("Processed");
    wait_count(&cyrus, &processed, 20, 30).await;
    wait_count(&cyrus, "INBOX", 0, 10).await;
    assert_eq!(
        cyrus.count(&namespace.folder("Quarantine")),
        Some(0),
        "the quarantine folder is made under the same namespace"
    );
    assert_each_once_on_desk(&prefix, tag, 20).await;
    let (code, state) = gw.readyz().await.expect("/readyz answers");
    assert_eq!((code, state.as_str()), (200, "working"));
    assert!(
        cyrus.log().contains("Expunged"),
        "Cyrus's syslog is caught and shows the moves:\n{}",
        cyrus.log()
    );
    gw.process.terminate();
    let log = gw.process.log_text();
    assert!(
        !log.contains("cannot be acknowledged") && !log.contains("mailbox stopped"),
        "every move went through:\n{log}"
    );
    let resolved = log.contains("folder names resolved on the server");
    if namespace == Namespace::Alt {
        assert!(
            !resolved,
            "altnamespace keeps the names as they are:\n{log}"
        );
    } else {
        assert!(
            resolved && log.contains(&processed),
            "the log says which names the server gave the folders:\n{log}"
        );
    }
}

#[tokio::test]
async fn processed_is_inbox_dot_processed_in_the_standard_namespace() {
    processed_works(Namespace::Standard, "cyrus-dot").await;
}

#[tokio::test]
async fn processed_is_inbox_slash_processed_with_unixhierarchysep() {
    processed_works(Namespace::UnixSeparator, "cyrus-slash").await;
}

#[tokio::test]
async fn processed_stays_processed_with_altnamespace() {
    processed_works(Namespace::Alt, "cyrus-alt").await;
}

/// Starts a gateway on 20 waiting mails that cannot reach their processed
/// folder; returns it once `/readyz` says the mailbox is stopped, after
/// checking the error is said once (two retries' worth of waiting) and
/// nothing was read.
async fn stopped(
    cyrus: &PrivateCyrus,
    tag: &str,
    extra: &str,
) -> (Watched, String, tempfile::TempDir) {
    let mails: Vec<Vec<u8>> = (1..=20).map(|n| small_mail(n, tag)).collect();
    cyrus.append(&mails, 20);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "any-password");
    let prefix = unique_prefix(&format!("cyrus_{tag}"));
    let gw = start(dir.path(), &prefix, &imap_table(cyrus, &pw, extra));
    let code = gw.wait_state("stopped", 30).await;
    assert_eq!(
        code, 200,
        "a stopped mailbox does not make the gateway unready"
    );
    // auth_backoff is 4 s: two retries meanwhile, still one error line.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let log = gw.process.log_text();
    assert_eq!(
        log.matches("mailbox stopped").count(),
        1,
        "one clear error, not one per retry:\n{log}"
    );
    assert_eq!(xlen(&redis_url(), &prefix, "desk").await, 0, "nothing read");
    assert_eq!(
        cyrus.count("INBOX"),
        Some(20),
        "the mail waits on the server"
    );
    let (_, state) = gw.readyz().await.expect("/readyz answers");
    assert_eq!(state, "stopped", "still stopped after the retries");
    (gw, prefix, dir)
}

#[tokio::test]
async fn a_folder_cyrus_refuses_to_create_stops_the_mailbox_with_the_servers_answer() {
    // A name in the other users' namespace: taken as is, and Cyrus refuses
    // the user's CREATE of it.
    let cyrus = PrivateCyrus::start(Namespace::Standard);
    let (mut gw, _, _dir) = stopped(
        &cyrus,
        "cyrus-refused",
        "processed_folder = \"user.other.Processed\"",
    )
    .await;
    gw.process.terminate();
    let log = gw.process.log_text();
    assert!(
        log.contains("the server refused to create the folder")
            && log.contains("Permission denied"),
        "the refused CREATE is logged with the server's answer:\n{log}"
    );
    assert!(
        log.contains(r#"folder "user.other.Processed""#)
            && log.contains(r#"prefix "INBOX." and separator ".""#)
            && log.contains(r#"such as "INBOX.Processed""#),
        "the error names the folder, the server's prefix and separator, and a name that works:\n{log}"
    );
}

#[tokio::test]
async fn a_missing_folder_with_create_folders_off_stops_the_mailbox_until_it_is_made() {
    let cyrus = PrivateCyrus::start(Namespace::UnixSeparator);
    cyrus.create("INBOX/Quarantine");
    let (gw, prefix, _dir) = stopped(&cyrus, "cyrus-nocreate", "create_folders = false").await;
    let log = gw.process.log_text();
    assert!(
        log.contains(r#"folder "INBOX/Processed" (processed_folder = "Processed")"#)
            && log.contains("create_folders is off")
            && log.contains(r#"prefix "INBOX/" and separator "/""#),
        "the error names the resolved folder and the server's separator:\n{log}"
    );

    // The folder made: the mailbox works at the next look.
    cyrus.create("INBOX/Processed");
    gw.wait_state("working", 30).await;
    wait_count(&cyrus, "INBOX/Processed", 20, 30).await;
    wait_count(&cyrus, "INBOX", 0, 10).await;
    assert_each_once_on_desk(&prefix, "cyrus-nocreate", 20).await;
}

#[tokio::test]
async fn a_2000_mail_backlog_with_the_gateway_killed_midway_is_stored_once() {
    const N: usize = 2000;
    let tag = "cyrus-sigkill";
    let cyrus = PrivateCyrus::start(Namespace::Standard);
    let mails: Vec<Vec<u8>> = (1..=N).map(|n| small_mail(n, tag)).collect();
    let began = Instant::now();
    cyrus.append(&mails, 200);
    let appended = began.elapsed();
    assert_eq!(cyrus.count("INBOX"), Some(N as u32));
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "any-password");
    let prefix = unique_prefix("cyrus_sigkill");
    let mut first = start(
        dir.path(),
        &prefix,
        &imap_table(&cyrus, &pw, "batch_size = 100"),
    );
    // Killed within a batch (100 mails): some of it stored, none of it
    // moved yet. Polled tightly, as a batch is stored in a few ms.
    let deadline = Instant::now() + Duration::from_secs(120);
    while xlen(&redis_url(), &prefix, "desk").await < 250 {
        assert!(Instant::now() < deadline, "250 mails stored within 120 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.process.kill();
    let at_kill = xlen(&redis_url(), &prefix, "desk").await;
    assert!(at_kill < N, "killed mid-backlog ({at_kill} stored)");
    // Stored but not yet moved: what the second process must not store
    // again.
    let moved = cyrus.count("INBOX.Processed").unwrap_or(0) as usize;

    // The dead process holds the lease until it expires (3 s).
    let mut second = GatewayProcess::start(&first.config, &dir.path().join("second.log"));
    wait_desk(&prefix, N, 240).await;
    wait_count(&cyrus, "INBOX.Processed", N as u32, 60).await;
    wait_count(&cyrus, "INBOX", 0, 10).await;
    assert_each_once_on_desk(&prefix, tag, N).await;
    second.terminate();
    eprintln!(
        "{N} mails appended in {appended:?} (MULTIAPPEND, 200 a command); \
         {at_kill} stored at the SIGKILL, {} of them not yet moved; all stored and moved \
         {:?} after the first append",
        at_kill.saturating_sub(moved),
        began.elapsed()
    );
}

/// Where the proxy stalls the gateway's second connection.
#[derive(Clone, Copy)]
enum Stall {
    /// Accepted, but the server's greeting never comes.
    Greeting,
    /// The greeting comes; LOGIN and everything after it never arrive.
    Login,
}

/// A TCP proxy in front of Cyrus that forwards every connection but the
/// second, which it stalls (keeping it open, answering nothing).
fn stalling_proxy(upstream: u16, stall: Stall) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            if n == 1 {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    if let Stall::Login = stall {
                        if let Ok(got) = server.read(&mut buf) {
                            let _ = client.write_all(&buf[..got]);
                        }
                    }
                    // Swallow what the client says until it gives up.
                    while matches!(client.read(&mut buf), Ok(got) if got > 0) {}
                    let _ = server.shutdown(Shutdown::Both);
                });
                continue;
            }
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client, &mut server);
                let _ = server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// A backlog read while the second connection stalls at `stall`: the
/// first connection keeps reading and moving (it does not wait for the
/// second, nor for the 60 s command_timeout), the second is given up after
/// its own deadline (connect_timeout, 1 s) with a log line saying so, and
/// each mail is stored once.
async fn a_stalled_second_connection_does_not_hold_the_first_up(stall: Stall, tag: &str) {
    const N: usize = 1000;
    let cyrus = PrivateCyrus::start(Namespace::Standard);
    let mails: Vec<Vec<u8>> = (1..=N).map(|n| small_mail(n, tag)).collect();
    cyrus.append(&mails, 200);
    let proxy = stalling_proxy(cyrus.port, stall);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "any-password");
    let prefix = unique_prefix(&format!("cyrus_{tag}"));
    let mut table = imap_table(
        &cyrus,
        &pw,
        // A backlog that takes longer to read than the second connection's
        // deadline: small batches, one mail at a time.
        "batch_size = 20\nconcurrency = 1\nconnect_timeout = \"1s\"\ncommand_timeout = \"60s\"",
    );
    table = table.replace(
        &format!("port = {}\n", cyrus.port),
        &format!("port = {proxy}\n"),
    );
    let mut gw = start(dir.path(), &prefix, &table);

    // How much the first connection read while the second stalled: the
    // desk when the log says the second was given up.
    let began = Instant::now();
    let (given_up, stored_meanwhile) = loop {
        assert!(
            began.elapsed() < Duration::from_secs(40),
            "the second connection never given up:\n{}",
            gw.process.log_text()
        );
        if gw.process.log_text().contains("no second IMAP connection") {
            break (began.elapsed(), xlen(&redis_url(), &prefix, "desk").await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (40..N).contains(&stored_meanwhile),
        "the first connection read on (more than two batches of 20) while the second \
         stalled: {stored_meanwhile} stored when it was given up after {given_up:?}"
    );
    assert!(
        given_up < Duration::from_secs(10),
        "the second is given up after its own short deadline, not command_timeout: {given_up:?}"
    );
    wait_desk(&prefix, N, 60).await;
    wait_count(&cyrus, "INBOX.Processed", N as u32, 60).await;
    wait_count(&cyrus, "INBOX", 0, 10).await;
    assert_each_once_on_desk(&prefix, tag, N).await;
    gw.process.terminate();
    let log = gw.process.log_text();
    assert!(
        log.contains("no answer to second connection within 1s"),
        "the log says what happened to the second connection:\n{log}"
    );
    assert!(
        !log.contains("IMAP session failed"),
        "the first connection carried on:\n{log}"
    );
    eprintln!(
        "{tag}: second connection given up after {given_up:?}, {stored_meanwhile} mails stored meanwhile"
    );
}

#[tokio::test]
async fn a_second_connection_whose_greeting_never_comes_does_not_hold_the_first_up() {
    a_stalled_second_connection_does_not_hold_the_first_up(Stall::Greeting, "cyrus-stall-greeting")
        .await;
}

#[tokio::test]
async fn a_second_connection_whose_login_stalls_does_not_hold_the_first_up() {
    a_stalled_second_connection_does_not_hold_the_first_up(Stall::Login, "cyrus-stall-login").await;
}

#[tokio::test]
async fn with_idled_running_new_mail_comes_in_through_idle_at_once() {
    // Debian's cyrus.conf ships idled off; this instance runs it. Polling
    // every 10 minutes: only IDLE can bring the mail in in time.
    let cyrus = PrivateCyrus::start(Namespace::Standard);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "any-password");
    let prefix = unique_prefix("cyrus_idle");
    let mut gw = start(
        dir.path(),
        &prefix,
        &imap_table(&cyrus, &pw, "poll_interval = \"10m\""),
    );
    gw.wait_state("working", 30).await;
    // The folders exist once the session is prepared; then it IDLEs.
    eventually(30, "the gateway's folders made", || async {
        cyrus.count("INBOX.Processed").map(drop)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=2 {
        let sent = Instant::now();
        cyrus.append(&[small_mail(n, "cyrus-idle")], 1);
        wait_desk(&prefix, n, 10).await;
        wait_count(&cyrus, "INBOX.Processed", n as u32, 10).await;
        eprintln!(
            "mail {n} stored and moved {:?} after the APPEND",
            sent.elapsed()
        );
    }
    assert_each_once_on_desk(&prefix, "cyrus-idle", 2).await;
    gw.process.terminate();
}
