//! IMAP folders that are missing or refuse mail, against the dev Dovecot
//! (each test its own mailbox): a folder that is missing and may not be
//! created stops the mailbox with one clear error that `/readyz` shows;
//! mail the server will not move is shown as unacknowledged (gauge,
//! backlog, `/status`) and tried again at long intervals, not downloaded
//! again and again; both recover once the folder exists, each mail stored
//! once.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::imap::*;
use support::{client, free_port, redis_url, unique_prefix};

/// A gateway process with its public and admin listeners on known ports.
pub struct Watched {
    pub process: GatewayProcess,
    pub public: String,
    pub admin: String,
}

const TOKEN: &str = "admin-secret-folders";

fn start(dir: &Path, prefix: &str, imap: &str) -> Watched {
    let (public, admin) = (free_port(), free_port());
    let token = secret_file(dir, "admin-token", TOKEN);
    let path: PathBuf = dir.join("intake.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:{public}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = {{ file = \"{}\" }}\n\n[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{imap}",
            token.display(),
            redis_url()
        ),
    )
    .expect("write config");
    Watched {
        process: GatewayProcess::start(&path, &dir.join("gateway.log")),
        public: format!("http://127.0.0.1:{public}"),
        admin: format!("http://127.0.0.1:{admin}"),
    }
}

impl Watched {
    /// What `/readyz` says about `mailbox` (`None` before it answers).
    pub async fn readyz(&self, mailbox: &str) -> Option<(u16, String)> {
        let response = client()
            .get(format!("{}/readyz", self.public))
            .send()
            .await
            .ok()?;
        let code = response.status().as_u16();
        let body: serde_json::Value = response.json().await.ok()?;
        Some((code, body["imap"][mailbox].as_str()?.to_string()))
    }

    /// Waits until `/readyz` names `mailbox` in `state`; returns the code.
    pub async fn wait_state(&self, mailbox: &str, state: &str, secs: u64) -> u16 {
        eventually(
            secs,
            &format!("/readyz says {mailbox} is {state}"),
            || async {
                self.readyz(mailbox)
                    .await
                    .and_then(|(code, s)| (s == state).then_some(code))
            },
        )
        .await
    }

    /// One line of the admin `/metrics` with all of `parts`, as a number.
    pub async fn metric(&self, parts: &[&str]) -> Option<f64> {
        let text = client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The admin `/status` entry of `mailbox`.
    pub async fn status(&self, mailbox: &str) -> serde_json::Value {
        let body: serde_json::Value = client()
            .get(format!("{}/status", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /status")
            .json()
            .await
            .expect("JSON");
        body["imap"][mailbox].clone()
    }
}

fn each_once(desk: &[support::Entry], n: usize) {
    let mut ids = uids(desk);
    let all = ids.len();
    ids.dedup();
    assert_eq!((all, ids.len()), (n, n), "each mail stored once, none lost");
}

#[tokio::test]
async fn a_folder_that_is_missing_and_may_not_be_created_stops_the_mailbox_with_one_clear_error() {
    let boxes = Boxes::new("nofolder");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    create(&mut imap, &boxes.quarantine).await;
    let mails: Vec<Vec<u8>> = (1..=20).map(|n| small_mail(n, "nofolder")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_nofolder");
    let table = imap_toml(
        dev_port(),
        &boxes,
        &pw,
        "create_folders = false\nauth_backoff = \"4s\"",
    );
    let label = format!("test/{}", boxes.inbox);
    let mut gw = start(dir.path(), &prefix, &table);

    let code = gw.wait_state(&label, "stopped", 30).await;
    assert_eq!(
        code, 200,
        "a stopped mailbox does not make the gateway unready"
    );
    let status = gw.status(&label).await;
    let error = status["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&boxes.done) && error.contains("create_folders is off"),
        "the admin status says which folder and why: {status}"
    );
    // Two retries' worth of time: still one error line, nothing read.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let log = gw.process.log_text();
    let lines = log.matches("mailbox stopped").count();
    assert_eq!(lines, 1, "one error, not one per retry:\n{log}");
    assert!(
        log.contains("separator") && log.contains("processed_folder"),
        "the error names the setting and the server's separator:\n{log}"
    );
    assert_eq!(xlen(&redis_url(), &prefix, "desk").await, 0, "nothing read");
    assert_eq!(count(&mut imap, &boxes.inbox).await, 20);

    // The folder made: the mailbox works at the next look.
    create(&mut imap, &boxes.done).await;
    gw.wait_state(&label, "working", 30).await;
    eventually(30, "every mail moved", || async {
        let mut s = dev_login().await;
        let n = count(&mut s, &boxes.done).await;
        (n == 20).then_some(())
    })
    .await;
    each_once(
        &support::read_stream(&redis_url(), &format!("{prefix}:desk")).await,
        20,
    );
    gw.process.terminate();
    cleanup(&boxes).await;
}

#[tokio::test]
async fn mail_the_server_will_not_move_is_shown_unacknowledged_and_not_downloaded_again_and_again()
{
    let boxes = Boxes::new("unacked");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    create(&mut imap, &boxes.done).await;
    create(&mut imap, &boxes.quarantine).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_unacked");
    let table = imap_toml(
        dev_port(),
        &boxes,
        &pw,
        "create_folders = false\nauth_backoff = \"4s\"",
    );
    let label = format!("test/{}", boxes.inbox);
    let mut gw = start(dir.path(), &prefix, &table);
    gw.wait_state(&label, "working", 30).await;

    // The processed folder goes away under the running session: every
    // move of the new mail is refused.
    imap.delete(&boxes.done).await.expect("DELETE");
    let mails: Vec<Vec<u8>> = (1..=20).map(|n| small_mail(n, "unacked")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let mailbox = format!("mailbox=\"{label}\"");
    let unacked = eventually(30, "the unacknowledged gauge at 20", || async {
        let n = gw
            .metric(&["intake_imap_unacknowledged{", &mailbox])
            .await?;
        (n == 20.0).then_some(n)
    })
    .await;
    assert_eq!(unacked, 20.0);
    let backlog = gw.metric(&["intake_imap_backlog{", &mailbox]).await;
    assert_eq!(backlog, Some(20.0), "the backlog counts the stuck mail");
    let status = gw.status(&label).await;
    assert_eq!(status["unacknowledged"], 20, "{status}");
    assert_ne!(status["state"], "working", "{status}");
    let (_, state) = gw.readyz(&label).await.expect("readyz");
    assert!(
        state == "unacknowledged" || state == "stopped",
        "/readyz names the mailbox: {state}"
    );

    // Stuck for a while: fetched once, not batch after batch.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let fetched = gw
        .metric(&["intake_imap_mails_total{", "outcome=\"fetched\""])
        .await;
    assert_eq!(
        fetched,
        Some(20.0),
        "the stuck batch is not downloaded again and again"
    );
    let log = gw.process.log_text();
    assert!(
        log.contains("cannot be acknowledged") && log.contains("UID MOVE"),
        "the log says why mail stays:\n{log}"
    );
    assert_eq!(
        count(&mut imap, &boxes.inbox).await,
        20,
        "mail stays on the server"
    );

    create(&mut imap, &boxes.done).await;
    gw.wait_state(&label, "working", 30).await;
    eventually(30, "every mail moved", || async {
        let mut s = dev_login().await;
        let n = count(&mut s, &boxes.done).await;
        (n == 20).then_some(())
    })
    .await;
    assert_eq!(
        gw.metric(&["intake_imap_unacknowledged{", &mailbox]).await,
        Some(0.0)
    );
    each_once(
        &support::read_stream(&redis_url(), &format!("{prefix}:desk")).await,
        20,
    );
    gw.process.terminate();
    cleanup(&boxes).await;
}
