//! The IMAP source against a real Cyrus IMAP 3.6 (Debian's, a private
//! instance per test: tests/support/cyrus.rs) and the real Redis, with the
//! gateway binary as a child process. Cyrus keeps a user's folders under
//! `INBOX.` (or `INBOX/` with `unixhierarchysep`), or at the top with
//! `altnamespace`: the configured `Processed` must work in all three; a
//! folder Cyrus will not create stops the mailbox with one clear error that
//! `/readyz` shows; a backlog survives a SIGKILL of the gateway, each mail
//! stored once.

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
