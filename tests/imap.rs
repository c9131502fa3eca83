//! The IMAP source against the real dev Dovecot (each test its own
//! mailbox) and, where a server must go down, a private Dovecot: new mail
//! through IDLE, a backlog, charsets and attachments, oversized mail,
//! UIDVALIDITY changes, a wrong password, a server restart, a gateway
//! killed mid-backlog, and two replicas on one mailbox. Every mail must end
//! in the streams exactly once and leave the mailbox only after that.

mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use support::envelope::schema_errors;
use support::imap::*;
use support::{redis_url, unique_prefix, Gateway};

/// Waits until `<prefix>:<stream>` holds at least `n` entries.
async fn wait_xlen(prefix: &str, stream: &str, n: usize, secs: u64) -> usize {
    let url = redis_url();
    eventually(secs, &format!("{n} entries in {prefix}:{stream}"), || {
        let url = url.clone();
        async move {
            let len = xlen(&url, prefix, stream).await;
            (len >= n).then_some(len)
        }
    })
    .await
}

/// Waits until `mailbox` on `port` holds exactly `n` mails.
async fn wait_count(port: u16, mailbox: &str, n: u32, secs: u64) {
    let mut session = login(port, &dev_user(), &dev_password()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = count(&mut session, mailbox).await;
        if now == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{mailbox} holds {now} mails, expected {n} within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_each_once(uids: &[u64], n: usize) {
    let mut unique = uids.to_vec();
    unique.dedup();
    assert_eq!(
        unique.len(),
        uids.len(),
        "a mail was stored twice: {} entries for {} UIDs",
        uids.len(),
        unique.len()
    );
    assert_eq!(uids.len(), n, "every mail stored, none lost");
}

/// A complete config file for the gateway binary.
fn process_config(dir: &Path, prefix: &str, imap: &str) -> std::path::PathBuf {
    let path = dir.join("intake.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{imap}",
            redis_url()
        ),
    )
    .expect("write config");
    path
}

#[tokio::test]
async fn new_mail_is_seen_at_once_through_idle_and_moved_after_it_is_stored() {
    let boxes = Boxes::new("idle");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    // Polling every 10 minutes: only IDLE can bring the mail in in time.
    let extra = imap_toml(dev_port(), &boxes, &pw, "poll_interval = \"10m\"");
    let gw = Gateway::start_with("imap_idle", &redis_url(), &extra).await;
    // The gateway creates its folders on login; then it is about to IDLE.
    eventually(20, "the gateway's session is up", || async {
        let mut s = dev_login().await;
        s.status(&boxes.done, "(MESSAGES)").await.ok().map(drop)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    append_all(&mut imap, &boxes.inbox, &[small_mail(1, "idle")], None).await;
    wait_xlen(&gw.prefix, "desk", 1, 10).await;
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "one mail, one desk entry");
    let env = desk[0].envelope();
    assert_eq!(env["subject"], "idle mail 1");
    assert_eq!(env["channel"], "email");
    assert_eq!(env["source"]["type"], "imap");
    assert_eq!(env["source"]["account"], "test");
    assert_eq!(env["source"]["mailbox"], boxes.inbox.as_str());
    assert_eq!(env["source"]["uid"], 1);
    assert!(env["source"]["uidvalidity"].as_u64().unwrap() > 0);
    let errors = schema_errors(&env);
    assert!(
        errors.is_empty(),
        "an IMAP envelope breaks the schema: {errors:#?}"
    );
    wait_count(dev_port(), &boxes.done, 1, 10).await;
    wait_count(dev_port(), &boxes.inbox, 0, 10).await;
    // The gateway is idling now: a second mail can only come in through
    // IDLE within the next seconds.
    append_all(&mut imap, &boxes.inbox, &[small_mail(2, "idle")], None).await;
    wait_xlen(&gw.prefix, "desk", 2, 10).await;
    wait_count(dev_port(), &boxes.done, 2, 10).await;
    gw.stop().await;
    cleanup(&boxes).await;
}

#[tokio::test]
async fn backlog_of_2000_mails_is_stored_once_each_in_batches() {
    let boxes = Boxes::new("backlog");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=2000).map(|n| small_mail(n, "backlog")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(dev_port(), &boxes, &pw, "batch_size = 250");
    let gw = Gateway::start_with("imap_backlog", &redis_url(), &extra).await;
    wait_xlen(&gw.prefix, "desk", 2000, 180).await;
    wait_count(dev_port(), &boxes.inbox, 0, 20).await;
    wait_count(dev_port(), &boxes.done, 2000, 20).await;
    let desk = gw.entries("desk").await;
    assert_each_once(&uids(&desk), 2000);
    // The last batch is settled after the backlog is read (each batch's
    // acknowledgement runs while the next one is delivered): the
    // checkpoint still reaches the last mail.
    let conn = support::test_connection(&redis_url()).await;
    let key = format!("{}:imap:{{test/{}}}:checkpoint", gw.prefix, boxes.inbox);
    eventually(20, "the checkpoint reaches UID 2000", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let last: Option<u32> = redis::cmd("HGET")
                .arg(&key)
                .arg("last_uid")
                .query_async(&mut conn)
                .await
                .ok()?;
            (last == Some(2000)).then_some(())
        }
    })
    .await;
    gw.stop().await;
    cleanup(&boxes).await;
}

#[tokio::test]
async fn attachments_and_legacy_charsets_are_decoded() {
    let boxes = Boxes::new("charset");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let pdf = b"%PDF-1.4 fake invoice 42".to_vec();
    let mut mail = Vec::new();
    mail.extend_from_slice(
        b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>\r\n\
To: support@shop.test\r\n\
Subject: =?windows-1252?Q?Rechnung_=96_Bestellung_=80_42?=\r\n\
Message-ID: <charset-1@example.de>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\n\
Content-Type: text/plain; charset=ISO-8859-1\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\n",
    );
    // Latin-1 bytes, not UTF-8: "Grüße aus Köln".
    mail.extend_from_slice(b"Gr\xfc\xdfe aus K\xf6ln\r\n");
    mail.extend_from_slice(
        b"--b1\r\n\
Content-Type: application/pdf; name=\"rechnung.pdf\"\r\n\
Content-Disposition: attachment; filename=\"rechnung.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n",
    );
    mail.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(&pdf)
            .as_bytes(),
    );
    mail.extend_from_slice(b"\r\n--b1--\r\n");
    append_all(&mut imap, &boxes.inbox, &[mail], None).await;

    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(dev_port(), &boxes, &pw, "");
    let gw = Gateway::start_with("imap_charset", &redis_url(), &extra).await;
    wait_xlen(&gw.prefix, "desk", 1, 20).await;
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(
        env["from"]["name"], "Jörg Müller",
        "ISO-8859-1 encoded word"
    );
    assert_eq!(
        env["subject"], "Rechnung – Bestellung € 42",
        "windows-1252 encoded word"
    );
    assert!(
        env["text"]
            .as_str()
            .unwrap_or("")
            .contains("Grüße aus Köln"),
        "Latin-1 body decoded: {}",
        env["text"]
    );
    let attachments = env["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "one attachment: {attachments:?}");
    assert_eq!(attachments[0]["filename"], "rechnung.pdf");
    assert_eq!(attachments[0]["content_type"], "application/pdf");
    assert_eq!(attachments[0]["size"], pdf.len());
    assert_eq!(
        attachments[0]["content_base64"],
        base64::engine::general_purpose::STANDARD.encode(&pdf)
    );
    gw.stop().await;
    cleanup(&boxes).await;
}

#[tokio::test]
async fn oversized_mail_is_recorded_by_its_headers_and_quarantined_unread() {
    let boxes = Boxes::new("oversize");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let mut big = b"From: big@example.com\r\nTo: support@shop.test\r\nSubject: huge scan\r\nMessage-ID: <big-1@example.com>\r\n\r\n".to_vec();
    for _ in 0..1000 {
        big.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    let size = big.len();
    append_all(
        &mut imap,
        &boxes.inbox,
        &[big, small_mail(2, "oversize")],
        None,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(
        dev_port(),
        &boxes,
        &pw,
        "max_size = \"4KB\"\nbatch_bytes = \"8KB\"",
    );
    let gw = Gateway::start_with("imap_oversize", &redis_url(), &extra).await;
    wait_xlen(&gw.prefix, "quarantine", 1, 20).await;
    wait_xlen(&gw.prefix, "desk", 1, 20).await;
    wait_count(dev_port(), &boxes.quarantine, 1, 10).await;
    wait_count(dev_port(), &boxes.done, 1, 10).await;
    wait_count(dev_port(), &boxes.inbox, 0, 10).await;

    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0].field("kind"), "oversize");
    let reason = quarantine[0].field("reason");
    assert!(
        reason.contains(&size.to_string()),
        "reason gives the size: {reason}"
    );
    assert!(reason.contains("4KB"), "reason gives the limit: {reason}");
    let env = quarantine[0].envelope();
    assert_eq!(env["subject"], "huge scan", "headers are recorded");
    assert_eq!(env["source"]["uid"], 1);
    let errors = schema_errors(&env);
    assert!(
        errors.is_empty(),
        "an oversize record breaks the schema: {errors:#?}"
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().expect("raw kept"))
        .unwrap();
    assert!(
        raw.len() < 1000,
        "only the headers were fetched, not {} bytes",
        raw.len()
    );
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "the small mail still reaches the desk");
    assert_eq!(desk[0].envelope()["subject"], "oversize mail 2");
    gw.stop().await;
    cleanup(&boxes).await;
}

#[tokio::test]
async fn uidvalidity_change_reads_the_new_mailbox_without_resending_or_losing() {
    let boxes = Boxes::new("uidvalidity");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let first: Vec<Vec<u8>> = (1..=3).map(|n| small_mail(n, "uv")).collect();
    append_all(&mut imap, &boxes.inbox, &first, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    // Flag mode: processed mail stays in the mailbox, flagged \Seen.
    let extra = imap_toml(dev_port(), &boxes, &pw, "processed = \"seen\"");
    let gw = Gateway::start_with("imap_uidvalidity", &redis_url(), &extra).await;
    wait_xlen(&gw.prefix, "desk", 3, 20).await;
    let old_validity = gw.entries("desk").await[0].envelope()["source"]["uidvalidity"].clone();

    // The mailbox is re-created (a restore): the old mails come back with
    // new UIDs and their \Seen flag, and two new mails arrive. UIDs start
    // at 1 again, below the checkpoint of the old UIDVALIDITY.
    imap.delete(&boxes.inbox).await.expect("DELETE");
    create(&mut imap, &boxes.inbox).await;
    append_all(&mut imap, &boxes.inbox, &first, Some("(\\Seen)")).await;
    let new: Vec<Vec<u8>> = (4..=5).map(|n| small_mail(n, "uv")).collect();
    append_all(&mut imap, &boxes.inbox, &new, None).await;

    wait_xlen(&gw.prefix, "desk", 5, 30).await;
    // Both new mails flagged means the gateway is through the mailbox.
    eventually(20, "every mail flagged seen", || async {
        let mut s = dev_login().await;
        let status = s.status(&boxes.inbox, "(UNSEEN)").await.ok()?;
        (status.unseen == Some(0)).then_some(())
    })
    .await;
    let desk = gw.entries("desk").await;
    let subjects: Vec<String> = desk
        .iter()
        .map(|e| e.envelope()["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subjects,
        [
            "uv mail 1",
            "uv mail 2",
            "uv mail 3",
            "uv mail 4",
            "uv mail 5"
        ],
        "new mail read despite low UIDs, restored mail not sent again"
    );
    let new_validity = &desk[3].envelope()["source"]["uidvalidity"];
    assert_ne!(
        *new_validity, old_validity,
        "the new mails carry the new UIDVALIDITY"
    );
    assert_eq!(desk[3].envelope()["source"]["uid"], 4);
    gw.stop().await;
    cleanup(&boxes).await;
}

#[tokio::test]
async fn wrong_password_is_reported_clearly_and_not_retried_at_once() {
    let boxes = Boxes::new("badpw");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    append_all(&mut imap, &boxes.inbox, &[small_mail(1, "badpw")], None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", "not-the-password");
    let prefix = unique_prefix("imap_badpw");
    let table = imap_toml(dev_port(), &boxes, &pw, "auth_backoff = \"1h\"");
    let config = process_config(dir.path(), &prefix, &table);
    let mut gateway = GatewayProcess::start(&config, &dir.path().join("log"));
    eventually(20, "the refused login in the log", || async {
        gateway
            .log_text()
            .contains("IMAP login refused")
            .then_some(())
    })
    .await;
    // A server that refused us is not asked again within the auth backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = gateway.log_text();
    assert_eq!(
        log.matches("IMAP login refused").count(),
        1,
        "one attempt, then a long wait:\n{log}"
    );
    assert!(
        log.contains("support@shop.test"),
        "the log names the user:\n{log}"
    );
    assert!(
        log.contains("retry_in"),
        "the log says when it tries again:\n{log}"
    );
    assert!(
        !log.contains("not-the-password"),
        "the password is never logged"
    );
    assert_eq!(xlen(&redis_url(), &prefix, "desk").await, 0);
    assert_eq!(
        count(&mut imap, &boxes.inbox).await,
        1,
        "the mail stays on the server"
    );
    gateway.terminate();
    cleanup(&boxes).await;
}

#[tokio::test]
async fn dovecot_restarted_mid_backlog_loses_and_doubles_nothing() {
    let mut dovecot = PrivateDovecot::start();
    let boxes = Boxes::new("restart");
    let mut imap = login(dovecot.port, &dev_user(), &dev_password()).await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=400).map(|n| small_mail(n, "restart")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    drop(imap);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(
        dovecot.port,
        &boxes,
        &pw,
        "batch_size = 10\nconcurrency = 1",
    );
    let gw = Gateway::start_with("imap_restart", &redis_url(), &extra).await;
    let before = wait_xlen(&gw.prefix, "desk", 40, 60).await;
    dovecot.stop();
    let during = xlen(&redis_url(), &gw.prefix, "desk").await;
    assert!(
        during < 400,
        "the restart must come mid-backlog ({during} stored)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    dovecot.restart();
    wait_xlen(&gw.prefix, "desk", 400, 120).await;
    wait_count(dovecot.port, &boxes.inbox, 0, 30).await;
    wait_count(dovecot.port, &boxes.done, 400, 10).await;
    let desk = gw.entries("desk").await;
    assert_each_once(&uids(&desk), 400);
    assert!(before >= 40);
    gw.stop().await;
}

#[tokio::test]
async fn gateway_killed_mid_backlog_and_restarted_stores_each_mail_once() {
    let boxes = Boxes::new("sigkill");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=1500).map(|n| small_mail(n, "sigkill")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_sigkill");
    let table = imap_toml(dev_port(), &boxes, &pw, "batch_size = 50");
    let config = process_config(dir.path(), &prefix, &table);

    let mut first = GatewayProcess::start(&config, &dir.path().join("first.log"));
    wait_xlen(&prefix, "desk", 200, 60).await;
    first.kill();
    let at_kill = xlen(&redis_url(), &prefix, "desk").await;
    assert!(at_kill < 1500, "killed mid-backlog ({at_kill} stored)");

    // The dead process still holds the lease until it expires (3 s).
    let mut second = GatewayProcess::start(&config, &dir.path().join("second.log"));
    wait_xlen(&prefix, "desk", 1500, 120).await;
    wait_count(dev_port(), &boxes.inbox, 0, 30).await;
    wait_count(dev_port(), &boxes.done, 1500, 10).await;
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_each_once(&uids(&desk), 1500);
    second.terminate();
    let log = second.log_text();
    assert!(
        log.contains("lease released"),
        "a clean stop releases the lease:\n{log}"
    );
    cleanup(&boxes).await;
}

/// What a server killed between the copy and the expunge of a MOVE leaves:
/// the mail in both folders, and above the checkpoint. Read again, it is
/// known as stored; it must be expunged, not moved into the processed (or
/// quarantine) folder a second time.
#[tokio::test]
async fn a_move_the_server_did_not_finish_is_finished_without_a_second_copy() {
    let boxes = Boxes::new("halfmove");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    create(&mut imap, &boxes.done).await;
    let mut mails: Vec<Vec<u8>> = (1..=5).map(|n| small_mail(n, "halfmove")).collect();
    // Mail 6 is over max_size: recorded in quarantine by its headers.
    let mut big = small_mail(6, "halfmove");
    big.extend(std::iter::repeat_n(b'x', 8000));
    mails.push(big);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_halfmove");

    // Every mail stored and none moved: the small ones are only flagged,
    // and the quarantine folder is deleted once the gateway has made it,
    // so mail 6 cannot go there (and no checkpoint is written past it);
    // the retry after that refusal waits a minute.
    let first_run = "processed = \"seen\"\nmax_size = \"4KB\"\nbackoff_max = \"60s\"";
    let flagging = imap_toml(dev_port(), &boxes, &pw, first_run);
    let config = process_config(dir.path(), &prefix, &flagging);
    let mut first = GatewayProcess::start(&config, &dir.path().join("first.log"));
    eventually(30, "the quarantine folder made by the gateway", || async {
        let mut s = dev_login().await;
        let made = s.status(&boxes.quarantine, "(MESSAGES)").await.ok();
        let _ = s.logout().await;
        made.map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    imap.delete(&boxes.quarantine).await.expect("DELETE");
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    wait_xlen(&prefix, "desk", 5, 30).await;
    wait_xlen(&prefix, "quarantine", 1, 30).await;
    eventually(20, "the small mails flagged seen", || async {
        let mut s = dev_login().await;
        let status = s.status(&boxes.inbox, "(UNSEEN)").await.ok()?;
        (status.unseen == Some(1)).then_some(())
    })
    .await;
    first.terminate();

    // The first half of a MOVE of mails 1 to 3 and of mail 6, and no
    // checkpoint past them.
    create(&mut imap, &boxes.quarantine).await;
    imap.select(&boxes.inbox).await.expect("SELECT");
    imap.uid_copy("1:3", &boxes.done).await.expect("UID COPY");
    imap.uid_copy("6", &boxes.quarantine)
        .await
        .expect("UID COPY");
    let checkpoint = format!("{prefix}:imap:{{test/{}}}:checkpoint", boxes.inbox);
    let mut redis = support::test_connection(&redis_url()).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&checkpoint)
        .query_async(&mut redis)
        .await
        .expect("DEL");

    let moving = imap_toml(dev_port(), &boxes, &pw, "max_size = \"4KB\"");
    let config = process_config(dir.path(), &prefix, &moving);
    let mut second = GatewayProcess::start(&config, &dir.path().join("second.log"));
    wait_count(dev_port(), &boxes.inbox, 0, 30).await;
    second.terminate();
    let log = second.log_text();
    assert!(
        log.contains("not moved a second time"),
        "the copied mails are recognised in their folders:\n{log}"
    );
    imap.select(&boxes.done).await.expect("SELECT");
    let headers = collect(imap.fetch("1:*", "BODY.PEEK[HEADER]").await.expect("FETCH")).await;
    let mut ids: Vec<String> = headers
        .iter()
        .map(|f| {
            let header = String::from_utf8_lossy(f.header().expect("header")).to_string();
            header
                .lines()
                .find(|l| l.starts_with("Message-ID:"))
                .expect("Message-ID")
                .to_string()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (headers.len(), ids.len()),
        (5, 5),
        "each mail once in the processed folder: {ids:?}"
    );
    assert_eq!(
        count(&mut imap, &boxes.quarantine).await,
        1,
        "the oversized mail once in the quarantine folder: {log}"
    );
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_each_once(&uids(&desk), 5);
    assert_eq!(xlen(&redis_url(), &prefix, "quarantine").await, 1);
    drop(imap);
    cleanup(&boxes).await;
}

#[tokio::test]
async fn two_replicas_work_a_mailbox_one_at_a_time_and_take_over() {
    let boxes = Boxes::new("replicas");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let first: Vec<Vec<u8>> = (1..=20).map(|n| small_mail(n, "replicas")).collect();
    append_all(&mut imap, &boxes.inbox, &first, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_replicas");
    let table = imap_toml(dev_port(), &boxes, &pw, "batch_size = 20\nconcurrency = 1");
    let config = process_config(dir.path(), &prefix, &table);

    let mut a = GatewayProcess::start(&config, &dir.path().join("a.log"));
    wait_xlen(&prefix, "desk", 20, 30).await;
    let mut b = GatewayProcess::start(&config, &dir.path().join("b.log"));
    eventually(20, "replica B standing by", || async {
        b.log_text()
            .contains("another replica works this mailbox")
            .then_some(())
    })
    .await;

    // More mail while both run, then the holder dies mid-backlog.
    let more: Vec<Vec<u8>> = (21..=600).map(|n| small_mail(n, "replicas")).collect();
    append_all(&mut imap, &boxes.inbox, &more, None).await;
    wait_xlen(&prefix, "desk", 100, 60).await;
    a.kill();
    wait_xlen(&prefix, "desk", 600, 120).await;
    wait_count(dev_port(), &boxes.inbox, 0, 30).await;
    wait_count(dev_port(), &boxes.done, 600, 10).await;
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_each_once(&uids(&desk), 600);
    let log_b = b.log_text();
    assert!(
        log_b.contains("lease taken"),
        "B took the mailbox over:\n{log_b}"
    );
    b.terminate();
    cleanup(&boxes).await;
}

#[tokio::test]
async fn a_backlog_is_acknowledged_on_a_second_connection_while_the_next_batch_is_read() {
    let boxes = Boxes::new("second");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=300).map(|n| small_mail(n, "second")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_second");
    let table = imap_toml(dev_port(), &boxes, &pw, "batch_size = 50");
    let config = process_config(dir.path(), &prefix, &table);

    let mut gateway = GatewayProcess::start(&config, &dir.path().join("log"));
    wait_xlen(&prefix, "desk", 300, 60).await;
    wait_count(dev_port(), &boxes.inbox, 0, 30).await;
    wait_count(dev_port(), &boxes.done, 300, 10).await;
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_each_once(&uids(&desk), 300);
    // New mail after the backlog: one batch, read and acknowledged on the
    // first connection alone (the second was logged out with the backlog).
    let more: Vec<Vec<u8>> = (301..=310).map(|n| small_mail(n, "second")).collect();
    append_all(&mut imap, &boxes.inbox, &more, None).await;
    wait_xlen(&prefix, "desk", 310, 30).await;
    wait_count(dev_port(), &boxes.done, 310, 10).await;
    gateway.terminate();
    let log = gateway.log_text();
    assert_eq!(
        log.matches("acknowledging on a second IMAP connection")
            .count(),
        1,
        "the 300-mail backlog (six batches) opened a second connection, the 10 new mails did not:\n{log}"
    );
    assert!(!log.contains("no second IMAP connection"), "{log}");
    cleanup(&boxes).await;
}

#[tokio::test]
async fn a_server_that_refuses_a_second_connection_gets_the_backlog_acknowledged_on_one() {
    // Two connections allowed: this test's own session and the gateway's
    // first; the second connection's login is refused.
    let dovecot = PrivateDovecot::start_limited(2);
    let boxes = Boxes::new("single");
    let mut imap = login(dovecot.port, &dev_user(), &dev_password()).await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=200).map(|n| small_mail(n, "single")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_single");
    let table = imap_toml(dovecot.port, &boxes, &pw, "batch_size = 50");
    let config = process_config(dir.path(), &prefix, &table);

    let mut gateway = GatewayProcess::start(&config, &dir.path().join("log"));
    wait_xlen(&prefix, "desk", 200, 60).await;
    // Counted on the session held all along: a new login would be refused.
    let mut moved = 0;
    for _ in 0..100 {
        moved = count(&mut imap, &boxes.done).await;
        if moved == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        moved, 200,
        "every stored mail moved to the processed folder"
    );
    assert_eq!(count(&mut imap, &boxes.inbox).await, 0);
    let desk = support::read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_each_once(&uids(&desk), 200);
    gateway.terminate();
    let log = gateway.log_text();
    assert!(
        log.contains("no second IMAP connection"),
        "the refused second connection is reported:\n{log}"
    );
    assert!(
        !log.contains("IMAP session failed"),
        "the first connection carried on:\n{log}"
    );
}

#[tokio::test]
async fn imaps_and_starttls_verify_the_server_against_the_configured_ca() {
    let Ok(ca) = std::env::var("INTAKE_TEST_IMAP_CA") else {
        panic!("INTAKE_TEST_IMAP_CA is not set: source deploy/dev/intake-env");
    };
    let tls_port: u16 = std::env::var("INTAKE_TEST_IMAP_TLS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(11993);
    for (mode, port) in [("implicit", tls_port), ("starttls", dev_port())] {
        let boxes = Boxes::new(mode);
        let mut imap = dev_login().await;
        create(&mut imap, &boxes.inbox).await;
        append_all(&mut imap, &boxes.inbox, &[small_mail(1, mode)], None).await;
        let dir = tempfile::tempdir().unwrap();
        let pw = secret_file(dir.path(), "pw", &dev_password());
        let table = imap_toml(port, &boxes, &pw, &format!("ca_file = \"{ca}\""))
            .replace("tls = \"none\"", &format!("tls = \"{mode}\""))
            .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
        let gw = Gateway::start_with(&format!("imap_{mode}"), &redis_url(), &table).await;
        wait_xlen(&gw.prefix, "desk", 1, 20).await;
        assert_eq!(
            gw.entries("desk").await[0].envelope()["subject"],
            format!("{mode} mail 1")
        );
        gw.stop().await;
        cleanup(&boxes).await;
    }
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    let tls_port: u16 = std::env::var("INTAKE_TEST_IMAP_TLS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(11993);
    let boxes = Boxes::new("untrusted");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    append_all(&mut imap, &boxes.inbox, &[small_mail(1, "untrusted")], None).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let prefix = unique_prefix("imap_untrusted");
    // No ca_file: the system's roots, which do not include the dev CA.
    let table = imap_toml(tls_port, &boxes, &pw, "backoff_max = \"1h\"")
        .replace("tls = \"none\"", "tls = \"implicit\"")
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let config = process_config(dir.path(), &prefix, &table);
    let mut gateway = GatewayProcess::start(&config, &dir.path().join("log"));
    eventually(20, "the TLS failure in the log", || async {
        gateway
            .log_text()
            .contains("TLS with localhost failed")
            .then_some(())
    })
    .await;
    let log = gateway.log_text();
    assert!(
        log.contains("UnknownIssuer")
            || log.contains("unknown issuer")
            || log.contains("invalid peer certificate"),
        "the log says why:\n{log}"
    );
    assert_eq!(
        xlen(&redis_url(), &prefix, "desk").await,
        0,
        "nothing read over an unverified link"
    );
    assert_eq!(
        count(&mut imap, &boxes.inbox).await,
        1,
        "the mail stays on the server"
    );
    gateway.terminate();
    cleanup(&boxes).await;
}

#[tokio::test]
async fn mail_stays_on_the_server_while_redis_is_down_and_is_stored_when_it_is_back() {
    let mut redis = support::PrivateRedis::start();
    let boxes = Boxes::new("redisdown");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(dev_port(), &boxes, &pw, "");
    let gw = Gateway::start_with("imap_redisdown", &redis.url(), &extra).await;
    eventually(20, "the gateway's session is up", || async {
        let mut s = dev_login().await;
        s.status(&boxes.done, "(MESSAGES)").await.ok().map(drop)
    })
    .await;

    redis.stop();
    append_all(&mut imap, &boxes.inbox, &[small_mail(1, "redisdown")], None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&mut imap, &boxes.inbox).await,
        1,
        "not stored, so not moved"
    );
    assert_eq!(
        count(&mut imap, &boxes.done).await,
        0,
        "nothing acknowledged"
    );

    redis.restart();
    wait_count(dev_port(), &boxes.done, 1, 30).await;
    wait_count(dev_port(), &boxes.inbox, 0, 10).await;
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "stored once when Redis is back");
    assert_eq!(desk[0].envelope()["subject"], "redisdown mail 1");
    gw.stop().await;
    cleanup(&boxes).await;
}
