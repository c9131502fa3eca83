//! The abuse rules against a real gateway and the dev Redis: every action,
//! shadow mode, allow lists, sender normalization, duplicates and their
//! counts in `events`, auto-reply loops, hot reload of a broken and of a
//! changed file, and one cluster limit held across two gateway processes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::header;
use support::{client, Gateway, TOKEN};

/// A rules folder of the test's own.
struct Rules {
    dir: tempfile::TempDir,
}

impl Rules {
    fn new(files: &[(&str, &str)]) -> Rules {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write rule file");
        }
        Rules { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write rule file");
    }

    /// The `[rules]` config section pointing here (polled every 200 ms).
    fn config(&self) -> String {
        format!(
            "[rules]\ndir = \"{}\"\npoll_interval = \"200ms\"\n",
            self.path().display()
        )
    }
}

fn shipped_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

async fn start(test: &str, rules: &Rules) -> Gateway {
    Gateway::start_with(test, &support::redis_url(), &rules.config()).await
}

fn mail(from: &str, subject: &str, body: &str, extra_headers: &str) -> String {
    format!(
        "From: {from}\r\nTo: support@shop.test\r\nSubject: {subject}\r\n{extra_headers}\r\n{body}\r\n"
    )
}

async fn post_mail(gw: &Gateway, raw: String) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(raw)
        .send()
        .await
        .expect("gateway answers")
}

async fn post_form(gw: &Gateway, email: &str, message: &str) -> reqwest::Response {
    client()
        .post(gw.form_url("contact"))
        .header(header::ORIGIN, "https://shop.test")
        .form(&[("email", email), ("message", message)])
        .send()
        .await
        .expect("gateway answers")
}

async fn receipt(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202, "accepted");
    let body: serde_json::Value = response.json().await.expect("json");
    body["id"].as_str().expect("receipt").to_string()
}

const MAIL_COLLAPSE: &str = r#"
[[rule]]
name = "mail-per-sender"
match = { channel = "email" }
key = ["sender"]
rate = "1/h"
burst = 2
action = "collapse"
scope = "cluster"

[dedupe]
near_duplicates = true
"#;

#[tokio::test]
async fn mail_over_quota_folds_into_the_latest_item_whatever_the_address_tricks() {
    let rules = Rules::new(&[("20-mail.toml", MAIL_COLLAPSE)]);
    let gw = start("rules_collapse", &rules).await;
    // One customer, five spellings: case, plus tags, all the same sender.
    let senders = [
        "ann@example.com",
        "Ann@Example.com",
        "ann+1@example.com",
        "ANN+orders@EXAMPLE.COM",
        "ann+x@example.com",
    ];
    let mut ids = Vec::new();
    for (i, from) in senders.iter().enumerate() {
        let raw = mail(
            from,
            &format!("Question {i}"),
            &format!("Different question number {i} about parcel {}", 500 + i),
            "",
        );
        ids.push(receipt(post_mail(&gw, raw).await).await);
    }
    let desk = gw.entries("desk").await;
    assert_eq!(
        desk.len(),
        2,
        "the burst of 2 reaches the desk, no more: {desk:?}"
    );
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 3, "the rest is kept in suppressed");
    for entry in &suppressed {
        assert_eq!(entry.field("kind"), "collapsed");
        assert_eq!(
            entry.field("duplicate_of"),
            ids[1],
            "folded into the latest desk item"
        );
        let env = entry.envelope();
        assert_eq!(env["abuse"]["matched_rules"][0], "mail-per-sender");
    }
    let events = gw.entries("events").await;
    assert_eq!(events.len(), 3, "one update per fold");
    let last = events.last().unwrap();
    assert_eq!(last.field("id"), ids[1], "the update names the desk item");
    assert_eq!(last.field("kind"), "duplicates");
    assert_eq!(
        last.field("count"),
        "3",
        "the running count: 3 more like this"
    );
}

#[tokio::test]
async fn form_over_quota_gets_429_with_the_rules_quota_and_is_kept() {
    let rules = Rules::new(&[(
        "30-forms.toml",
        r#"
[[rule]]
name = "form-per-network"
match = { channel = "form" }
key = ["ip_prefix"]
rate = "20/h"
burst = 2
action = "reject"
scope = "cluster"
"#,
    )]);
    let gw = start("rules_reject", &rules).await;
    for i in 0..2 {
        receipt(
            post_form(
                &gw,
                &format!("c{i}@example.com"),
                &format!("hello {i} order {}", 100 + i),
            )
            .await,
        )
        .await;
    }
    let refused = post_form(&gw, "c9@example.com", "a third post from the same network").await;
    assert_eq!(refused.status(), 429, "over the network's quota");
    let h = refused.headers();
    let retry: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=180).contains(&retry),
        "retry after about one emission interval (180 s): {retry}"
    );
    assert_eq!(
        h["ratelimit-policy"], "\"form-per-network\";q=20;w=3600",
        "the rule's real quota"
    );
    assert_eq!(
        h["ratelimit"],
        format!("\"form-per-network\";r=0;t={retry}")
    );
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 1, "the refused post is kept for audit");
    assert_eq!(suppressed[0].field("kind"), "rejected");
    assert!(suppressed[0].field("reason").contains("form-per-network"));
    assert_eq!(gw.entries("desk").await.len(), 2);
}

#[tokio::test]
async fn rejected_mail_is_kept_and_acknowledged_not_bounced() {
    let rules = Rules::new(&[(
        "20-mail.toml",
        "[[rule]]\nname = \"hard\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\nrate = \"1/d\"\naction = \"reject\"\n",
    )]);
    let gw = start("rules_reject_mail", &rules).await;
    receipt(post_mail(&gw, mail("bob@example.com", "one", "first text here", "")).await).await;
    // A 429 would make the mail server retry and deliver a copy each time:
    // mail over quota is accepted into suppressed instead.
    let second = post_mail(
        &gw,
        mail("bob@example.com", "two", "second, other text", ""),
    )
    .await;
    assert_eq!(second.status(), 202, "mail is acknowledged");
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0].field("kind"), "rejected");
    assert_eq!(gw.entries("desk").await.len(), 1);
}

#[tokio::test]
async fn quarantine_tag_shadow_and_allow_list_each_do_their_part() {
    let rules = Rules::new(&[(
        "20-mail.toml",
        r#"
[[rule]]
name = "quarantine-after-one"
match = { channel = "email", senders = ["*@quarantine.example"] }
key = ["sender"]
rate = "1/d"
action = "quarantine"

[[rule]]
name = "tag-after-one"
match = { channel = "email", domain = "tag.example" }
key = ["sender_domain"]
rate = "1/d"
action = "tag"
tag = "busy-domain"

[[rule]]
name = "shadow-reject"
match = { channel = "email" }
key = ["global"]
rate = "1/d"
action = "reject"
shadow = true

[[rule]]
name = "everyone-once"
match = { channel = "email", senders = ["*@staff.example"] }
key = ["sender"]
rate = "1/d"
action = "reject"

[[allow]]
name = "staff"
senders = ["*@staff.example"]
"#,
    )]);
    let gw = start("rules_actions", &rules).await;
    for i in 0..2 {
        let body = format!("quarantine text {i} about order {}", 700 + i);
        receipt(post_mail(&gw, mail("q@quarantine.example", "q", &body, "")).await).await;
        let body = format!("tag text {i} about order {}", 800 + i);
        receipt(post_mail(&gw, mail(&format!("t{i}@tag.example"), "t", &body, "")).await).await;
        let body = format!("staff text {i} about order {}", 900 + i);
        receipt(post_mail(&gw, mail("anna@staff.example", "s", &body, "")).await).await;
    }
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(
        quarantine.len(),
        1,
        "the second quarantine.example mail is quarantined"
    );
    assert_eq!(quarantine[0].field("kind"), "quarantined");
    let desk = gw.entries("desk").await;
    assert_eq!(
        desk.len(),
        5,
        "everything else reaches the desk; the shadow reject did nothing"
    );
    let tagged: Vec<_> = desk
        .iter()
        .filter(|e| {
            e.envelope()["abuse"]["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "busy-domain")
        })
        .collect();
    assert_eq!(tagged.len(), 1, "the second tag.example mail is tagged");
    let staff: Vec<_> = desk
        .iter()
        .filter(|e| e.envelope()["from"]["email"] == "anna@staff.example")
        .collect();
    assert_eq!(staff.len(), 2, "the allow list beats a reject rule");
    assert_eq!(
        staff[1].envelope()["abuse"]["matched_rules"][0],
        "allow:staff"
    );
    assert!(
        gw.entries("suppressed").await.is_empty(),
        "nothing rejected: the reject rule was shadow"
    );
}

#[tokio::test]
async fn exact_and_near_duplicates_are_collapsed_with_counts_in_events() {
    let rules = Rules::new(&[(
        "50-dedupe.toml",
        "[dedupe]\nwindow = \"1h\"\nsimilarity = 0.9\n",
    )]);
    let gw = start("rules_dedupe", &rules).await;
    let text =
        "Hello, my order 12345 has still not arrived and nobody answers my mails. Please help me.";
    let first = receipt(
        post_mail(
            &gw,
            mail(
                "carl@example.com",
                "Order",
                text,
                "Message-ID: <a1@example.com>\r\n",
            ),
        )
        .await,
    )
    .await;
    // The same mail again (a re-delivery through another relay: new
    // headers, same Message-ID, sender and body) is a copy of the first
    // item, whatever the rules say (tests/split_delivery.rs): answered with
    // its receipt, nothing written, no duplicate counted.
    let again = receipt(
        post_mail(
            &gw,
            mail(
                "carl@example.com",
                "Order",
                text,
                "Received: from mx2.example.com\r\nMessage-ID: <a1@example.com>\r\n",
            ),
        )
        .await,
    )
    .await;
    assert_eq!(again, first, "a copy of the first mail");
    // The same text, new Message-ID, from a plus address.
    receipt(
        post_mail(
            &gw,
            mail(
                "carl+x@example.com",
                "Re: Order",
                text,
                "Message-ID: <a2@example.com>\r\n",
            ),
        )
        .await,
    )
    .await;
    // Reworded a little: a near duplicate.
    let near = "Hello!! My order 12345 has still not arrived, and nobody answers my mails. Please help me!";
    receipt(
        post_mail(
            &gw,
            mail(
                "carl@example.com",
                "Order",
                &format!("{near} Thanks"),
                "Message-ID: <a3@example.com>\r\n",
            ),
        )
        .await,
    )
    .await;
    // About another order: a different message.
    let other = text.replace("12345", "67890");
    receipt(
        post_mail(
            &gw,
            mail(
                "carl@example.com",
                "Order",
                &other,
                "Message-ID: <a4@example.com>\r\n",
            ),
        )
        .await,
    )
    .await;

    let desk = gw.entries("desk").await;
    assert_eq!(
        desk.len(),
        2,
        "the first message and the one about another order: {:?}",
        desk.iter()
            .map(|e| e.envelope()["text"].clone())
            .collect::<Vec<_>>()
    );
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 2);
    let rules_hit: Vec<String> = suppressed
        .iter()
        .map(|e| {
            assert_eq!(e.field("duplicate_of"), first, "folded into the first item");
            e.field("reason").to_string()
        })
        .collect();
    assert!(rules_hit[0].contains("dedupe-exact"), "{rules_hit:?}");
    assert!(rules_hit[1].contains("dedupe-near"), "{rules_hit:?}");
    let events = gw.entries("events").await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.field("count").to_string())
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert!(events.iter().all(|e| e.field("id") == first));
    let body: serde_json::Value = serde_json::from_str(events[1].field("envelope")).unwrap();
    assert_eq!(body["count"], 2);
}

#[tokio::test]
async fn an_auto_responder_answering_its_own_replies_is_stopped_by_the_shipped_rules() {
    let gw = Gateway::start_with(
        "rules_loop",
        &support::redis_url(),
        &format!("[rules]\ndir = \"{}\"\n", shipped_rules().display()),
    )
    .await;
    // A responder replies to its own auto-replies: each reply quotes the
    // previous one and carries a new Message-ID, so no duplicate check
    // alone would stop it.
    let mut subject = "Out of office".to_string();
    for i in 0..20 {
        subject = format!("Re: {subject}");
        let body = format!(
            "I am away until Monday. Your message {i} was received.\n> previous auto-reply {i}"
        );
        let raw = mail(
            "autoresponder@vendor.example",
            &subject,
            &body,
            &format!("Auto-Submitted: auto-replied\r\nMessage-ID: <loop-{i}@vendor.example>\r\n"),
        );
        receipt(post_mail(&gw, raw).await).await;
    }
    let desk = gw.entries("desk").await;
    assert!(
        desk.len() <= 2,
        "the loop is cut after its small burst: {} on the desk",
        desk.len()
    );
    assert!(desk.iter().all(|e| e.envelope()["abuse"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "auto_submitted")));
    let kept = gw.entries("quarantine").await.len() + gw.entries("suppressed").await.len();
    assert_eq!(
        desk.len() + kept,
        20,
        "nothing lost: every reply is in some stream"
    );
}

#[tokio::test]
async fn a_broken_rule_file_keeps_the_old_rules_and_a_fixed_one_is_picked_up() {
    let rules = Rules::new(&[(
        "20-mail.toml",
        "[[rule]]\nname = \"limit\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\nrate = \"1/d\"\nburst = 1\naction = \"reject\"\n",
    )]);
    let token_file = rules.path().join("admin-token");
    std::fs::write(&token_file, "admin-secret\n").unwrap();
    let admin_port = support::free_port();
    let extra = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = {{ file = \"{}\" }}\n",
        rules.config(),
        token_file.display()
    );
    let gw = Gateway::start_with("rules_reload", &support::redis_url(), &extra).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    receipt(post_mail(&gw, mail("dora@example.com", "a", "text one", "")).await).await;
    receipt(post_mail(&gw, mail("dora@example.com", "b", "text two", "")).await).await;
    assert_eq!(
        gw.entries("suppressed").await.len(),
        1,
        "burst 1: the second is rejected"
    );

    // Broken while running: a typo in the rate.
    rules.write("20-mail.toml", "[[rule]]\nname = \"limit\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\nrate = \"100/dd\"\nburst = 100\naction = \"reject\"\n");
    let answer = client()
        .post(format!("{admin}/v1/rules/reload"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422, "the broken set is refused");
    let body: serde_json::Value = answer.json().await.unwrap();
    let error = body["errors"][0].as_str().unwrap();
    assert!(
        error.contains("20-mail.toml:5:") && error.contains("rule[0].rate"),
        "file, line and key: {error}"
    );
    let state: serde_json::Value = client()
        .get(format!("{admin}/v1/rules"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["rules"][0]["burst"], 1, "the old rules stay in force");
    assert!(state["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("rule[0].rate"));
    let metrics = client()
        .get(format!("{admin}/metrics"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("intake_rules_reload_failed 1"),
        "the failure is exported"
    );
    let ready: serde_json::Value = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["rules"], "reload_failed",
        "/readyz names the failed reload, without its text: {ready}"
    );
    let status: serde_json::Value = client()
        .get(format!("{admin}/status"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["rules"]["loaded"], 1,
        "the admin status counts the rules in force"
    );
    assert!(
        status["rules"]["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("rule[0].rate")),
        "the admin status reports the failed reload: {status}"
    );
    receipt(post_mail(&gw, mail("erik@example.com", "a", "text one", "")).await).await;
    receipt(post_mail(&gw, mail("erik@example.com", "b", "text two", "")).await).await;
    assert_eq!(
        gw.entries("suppressed").await.len(),
        2,
        "the old limit still holds"
    );

    // Fixed with a new limit: picked up by the file watch, no signal.
    rules.write("20-mail.toml", "[[rule]]\nname = \"limit\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\nrate = \"100/d\"\nburst = 3\naction = \"reject\"\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value = client()
            .get(format!("{admin}/v1/rules"))
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["rules"][0]["burst"] == 3 {
            assert!(state["last_reload_error"].is_null());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed file was not reloaded: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        receipt(
            post_mail(
                &gw,
                mail(
                    "fred@example.com",
                    "x",
                    &format!("text {i} order {}", 300 + i),
                    "",
                ),
            )
            .await,
        )
        .await;
    }
    assert_eq!(
        gw.entries("suppressed").await.len(),
        2,
        "the new burst of 3 lets all three through"
    );
}

/// A gateway process of its own (`intake serve --config FILE`).
struct Process {
    child: std::process::Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(dir: &Path, name: &str, prefix: &str, rules: &Path) -> Process {
    spawn_gateway_with(dir, name, prefix, rules, "")
}

fn spawn_gateway_with(
    dir: &Path,
    name: &str,
    prefix: &str,
    rules: &Path,
    rules_extra: &str,
) -> Process {
    let port = support::free_port();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut text = support::default_toml(
        &support::redis_url(),
        prefix,
        &token,
        &format!("[rules]\ndir = \"{}\"\n{rules_extra}", rules.display()),
    );
    text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("intake starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Process {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[tokio::test]
async fn a_cluster_limit_holds_across_two_gateway_processes() {
    let rules = Rules::new(&[(
        "30-forms.toml",
        "[[rule]]\nname = \"net\"\nmatch = { channel = \"form\" }\nkey = [\"ip_prefix\"]\nrate = \"1/h\"\nburst = 4\naction = \"reject\"\nscope = \"cluster\"\n",
    )]);
    let dir = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix("rules_cluster");
    let a = spawn_gateway(dir.path(), "a", &prefix, rules.path());
    let b = spawn_gateway(dir.path(), "b", &prefix, rules.path());
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let response = client()
            .post(format!("{}/v1/forms/contact", gw.url))
            .header(header::ORIGIN, "https://shop.test")
            .form(&[
                ("email", format!("p{i}@example.com")),
                ("message", format!("post {i} order {}", 400 + i)),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [202, 202, 202, 202, 429, 429],
        "one burst of 4 shared by both processes"
    );
    let desk = support::read_stream(&support::redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(desk.len(), 4);
}

#[tokio::test]
async fn sighup_reloads_the_rules_of_a_running_gateway() {
    let rules = Rules::new(&[(
        "30-forms.toml",
        "[[rule]]\nname = \"net\"\nmatch = { channel = \"form\" }\nkey = [\"ip\"]\nrate = \"1/d\"\nburst = 1\naction = \"reject\"\n",
    )]);
    let dir = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix("rules_sighup");
    // A poll interval of an hour: only the signal can reload in time.
    let gw = spawn_gateway_with(
        dir.path(),
        "hup",
        &prefix,
        rules.path(),
        "poll_interval = \"1h\"\n",
    );
    let post = |i: usize| {
        client()
            .post(format!("{}/v1/forms/contact", gw.url))
            .header(header::ORIGIN, "https://shop.test")
            .form(&[
                ("email", format!("h{i}@example.com")),
                ("message", format!("post {i} order {}", 600 + i)),
            ])
            .send()
    };
    assert_eq!(post(0).await.unwrap().status(), 202);
    assert_eq!(post(1).await.unwrap().status(), 429, "burst 1");
    rules.write(
        "30-forms.toml",
        "[[rule]]\nname = \"net\"\nmatch = { channel = \"form\" }\nkey = [\"ip\"]\nrate = \"1/d\"\nburst = 5\naction = \"reject\"\n",
    );
    let status = Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = post(2).await.unwrap().status();
        if s == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not load the new burst"
        );
    }
}

#[tokio::test]
async fn a_block_list_refuses_forms_and_keeps_mail_without_bouncing_it() {
    let rules = Rules::new(&[(
        "10-lists.toml",
        "[[block]]\nname = \"spammers\"\ndomains = [\"*.spam.example\"]\n",
    )]);
    let gw = start("rules_block", &rules).await;
    let form = post_form(&gw, "Bot+1@Mail.Spam.Example", "buy now").await;
    assert_eq!(form.status(), 403, "a blocked form poster is refused");
    let mail = post_mail(&gw, mail("bot@mail.spam.example", "offer", "buy now", "")).await;
    assert_eq!(mail.status(), 202, "blocked mail is kept, not bounced");
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 2, "both are kept for audit");
    assert!(suppressed.iter().all(|e| e.field("kind") == "blocked"));
    assert_eq!(
        suppressed[0].envelope()["abuse"]["matched_rules"][0],
        "block:spammers"
    );
    assert!(gw.entries("desk").await.is_empty());
}

#[tokio::test]
async fn with_redis_down_the_rules_fail_closed_and_recover() {
    let rules = Rules::new(&[(
        "30-forms.toml",
        "[[rule]]\nname = \"net\"\nmatch = { channel = \"form\" }\nkey = [\"ip\"]\nrate = \"100/h\"\nburst = 50\naction = \"reject\"\nscope = \"cluster\"\n[dedupe]\n",
    )]);
    let mut redis = support::PrivateRedis::start();
    let gw = Gateway::start_with("rules_redis_down", &redis.url(), &rules.config()).await;
    receipt(post_form(&gw, "ida@example.com", "first post").await).await;
    redis.stop();
    let down = post_form(&gw, "ida@example.com", "second post").await;
    assert_eq!(
        down.status(),
        503,
        "no rate decision, no acknowledgement: never a silent pass"
    );
    assert!(down.headers().contains_key(header::RETRY_AFTER));
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = post_form(&gw, "ida@example.com", "third post")
            .await
            .status();
        if status == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guard did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_forged_extra_from_opens_no_allow_list_and_any_identity_can_be_blocked() {
    let rules = Rules::new(&[(
        "20-mail.toml",
        r#"
[[rule]]
name = "once"
match = { channel = "email" }
key = ["sender"]
rate = "1/d"
burst = 1
action = "reject"

[[allow]]
name = "staff"
senders = ["*@staff.example"]

[[block]]
name = "spam"
domains = ["spam.example"]
"#,
    )]);
    let gw = start("rules_identities", &rules).await;
    let send = |from: &str, subject: &str, i: usize| {
        mail(
            from,
            subject,
            &format!("Text {i} of {subject}, about order {}", 4000 + i),
            "Content-Type: text/plain; charset=utf-8\r\n",
        )
    };
    for i in 0..2 {
        // Staff alone: allowed past the rule, twice.
        receipt(post_mail(&gw, send("anna@staff.example", "staff", i)).await).await;
        // Staff beside a stranger: the stranger is not staff.
        receipt(
            post_mail(
                &gw,
                send("anna@staff.example, mallory@evil.example", "forged", i),
            )
            .await,
        )
        .await;
        // A Cyrillic ѕ (U+0455) is not staff either.
        receipt(post_mail(&gw, send("lena@\u{0455}taff.example", "lookalike", i)).await).await;
    }
    // Block lists hold for any identity, and for a lookalike.
    receipt(
        post_mail(
            &gw,
            send("ann@example.com, x@spam.example", "blocked-second-from", 0),
        )
        .await,
    )
    .await;
    receipt(post_mail(&gw, send("x@\u{0455}pam.example", "blocked-lookalike", 0)).await).await;

    let subject = |e: &support::Entry| e.envelope()["subject"].as_str().unwrap().to_string();
    let desk = gw.entries("desk").await;
    let on_desk = |s: &str| desk.iter().filter(|e| subject(e) == s).count();
    assert_eq!(on_desk("staff"), 2, "staff alone skips the rule");
    assert_eq!(
        on_desk("forged"),
        1,
        "a forged extra From: is held to the rule's burst of 1"
    );
    assert_eq!(on_desk("lookalike"), 1, "a lookalike domain is held too");
    for entry in desk.iter().filter(|e| subject(e) != "staff") {
        let env = entry.envelope();
        assert!(
            !env["abuse"]["matched_rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "allow:staff"),
            "{} did not go through the allow list: {env}",
            subject(entry)
        );
    }
    let suppressed = gw.entries("suppressed").await;
    let kind_of = |s: &str| -> Vec<String> {
        suppressed
            .iter()
            .filter(|e| subject(e) == s)
            .map(|e| e.field("kind").to_string())
            .collect()
    };
    assert_eq!(kind_of("forged"), ["rejected"]);
    assert_eq!(kind_of("lookalike"), ["rejected"]);
    assert_eq!(
        kind_of("blocked-second-from"),
        ["blocked"],
        "the second From is on the block list"
    );
    assert_eq!(
        kind_of("blocked-lookalike"),
        ["blocked"],
        "a lookalike of a blocked domain is blocked"
    );
}
