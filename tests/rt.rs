//! Delivery to a real Request Tracker 5 (the dev stack's, started by
//! `deploy/dev/services start rt`), checked through RT's own REST 2.0 API:
//! a form post and a mail each become a ticket (requestor, subject, body,
//! attachments); replies join their ticket by In-Reply-To and by subject
//! tag; a flood of 50 is one ticket plus a few comments; RT stopped
//! mid-run loses nothing; a worker killed between RT's answer and the
//! acknowledgement leaves one ticket, not two.
//!
//! RT's database outlives test runs, so every test writes as customers of
//! its own (`<test prefix>@example.com`). The tests share one RT and one
//! of them stops it: `tests/nextest.toml` (deploy/dev/test passes it) runs this binary's tests one
//! at a time.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::redis_proxy::{RedisProxy, Rule};
use support::{default_toml, redis_url, rt, test_connection, Gateway, TOKEN};

/// A gateway delivering to the dev RT; `extra` is more config.
async fn gateway(test: &str, extra: &str) -> Gateway {
    let delivery = rt::delivery_toml("desk", "");
    Gateway::start_custom(test, &redis_url(), |prefix, token| {
        default_toml(&redis_url(), prefix, token, &format!("{extra}\n{delivery}"))
    })
    .await
}

/// An address of this test's own.
fn customer(gw: &Gateway) -> String {
    format!("{}@example.com", gw.prefix.replace([':', '_'], "-"))
}

/// Hands `raw` to the gateway as a mail server would; the receipt id.
async fn post_mail(gw: &Gateway, raw: String) -> String {
    let response = support::client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(raw.replace('\n', "\r\n"))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 202, "the mail is accepted");
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// Entries of `<prefix>:desk` the delivery has not acknowledged.
async fn unacknowledged(prefix: &str) -> usize {
    let mut conn = test_connection(&redis_url()).await;
    let groups: Result<Vec<HashMap<String, redis::Value>>, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("{prefix}:desk"))
        .query_async(&mut conn)
        .await;
    let Ok(groups) = groups else {
        return usize::MAX;
    };
    let number = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n as usize,
        _ => 0,
    };
    groups
        .iter()
        .map(|g| number(g.get("pending")) + number(g.get("lag")))
        .sum()
}

#[tokio::test]
async fn rt_form_post_becomes_a_ticket_with_requestor_subject_body_and_attachment() {
    let gw = gateway("rt_form", "").await;
    let email = customer(&gw);
    let dir = tempfile::tempdir().unwrap();
    let receipt_pdf = dir.path().join("factura.pdf");
    let pdf: Vec<u8> = b"%PDF-1.4\n"
        .iter()
        .copied()
        .chain((0..2000u32).map(|i| (i % 251) as u8))
        .collect();
    std::fs::write(&receipt_pdf, &pdf).unwrap();
    // curl, as a shop page's form would post it (multipart, one file).
    // On the blocking pool: the gateway answers on this test's runtime.
    let form_url = gw.form_url("contact");
    let pdf_path = receipt_pdf.clone();
    let email_field = format!("email={email}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30", "-H", "Origin: https://shop.test"])
            .args(["-H", "Accept: application/json"])
            .args(["-F", &email_field])
            .args(["-F", "name=Ana García"])
            .args(["-F", "_subject=Mi pedido 1001 no ha llegado"])
            .args([
                "-F",
                "message=Hola, pedí el 1001 hace dos semanas y no llega.",
            ])
            .args(["-F", "order=1001"])
            .args([
                "-F",
                &format!("file=@{};type=application/pdf", pdf_path.display()),
            ])
            .arg(&form_url)
            .output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("curl: {}", String::from_utf8_lossy(&out.stdout)));
    let receipt = answer["id"].as_str().expect("a receipt id").to_string();

    let ticket = rt::wait_ticket(&receipt, Duration::from_secs(60)).await;
    let (requestors, subject) = rt::ticket(ticket).await;
    assert_eq!(requestors, std::slice::from_ref(&email));
    assert_eq!(subject, "Mi pedido 1001 no ha llegado");
    let messages = rt::messages(ticket).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let create = &messages[0];
    assert_eq!(create.kind, "Create");
    assert_eq!(create.creator, "intake", "made by intake's own RT user");
    let body = create.body();
    assert!(
        body.starts_with("Hola, pedí el 1001 hace dos semanas y no llega."),
        "{body}"
    );
    assert!(
        body.contains("order: 1001"),
        "the form's other fields: {body}"
    );
    assert_eq!(
        create.file("factura.pdf"),
        Some(pdf.as_slice()),
        "the upload, byte for byte"
    );
    assert_eq!(rt::tickets_of(&email).await, [ticket]);
}

#[tokio::test]
async fn rt_mail_becomes_a_ticket_and_replies_join_it_by_in_reply_to_and_by_subject_tag() {
    let gw = gateway("rt_mail", "").await;
    let email = customer(&gw);
    let first = post_mail(
        &gw,
        format!(
            "From: Ana García <{email}>\nTo: support@shop.test\nSubject: Talla equivocada\n\
             Message-ID: <first-{receipt}@example.com>\nMIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=b1\n\n--b1\n\
             Content-Type: text/plain; charset=utf-8\n\n\
             Me llegó una talla M y pedí una L.\n--b1\n\
             Content-Type: image/png\nContent-Disposition: attachment; filename=\"etiqueta.png\"\n\
             Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--b1--\n",
            receipt = gw.prefix.replace(':', "-")
        ),
    )
    .await;
    let ticket = rt::wait_ticket(&first, Duration::from_secs(60)).await;
    let (requestors, subject) = rt::ticket(ticket).await;
    assert_eq!(requestors, std::slice::from_ref(&email));
    assert_eq!(subject, "Talla equivocada");

    // A reply naming the first mail: correspondence, its quote left out of
    // what the agent reads and kept beside it.
    let by_header = post_mail(
        &gw,
        format!(
            "From: {email}\nTo: support@shop.test\nSubject: Re: Talla equivocada\n\
             Message-ID: <second-{p}@example.com>\nIn-Reply-To: <first-{p}@example.com>\n\
             References: <first-{p}@example.com>\n\n\
             Os mando la foto otra vez.\n\nEl lun, 1 dic 2026, Ana escribió:\n\
             > Me llegó una talla M y pedí una L.\n",
            p = gw.prefix.replace(':', "-")
        ),
    )
    .await;
    // A reply to the agent's mail, which only the subject tag ties to
    // the ticket (RT's Message-ID is unknown to intake here).
    let by_tag = post_mail(
        &gw,
        format!(
            "From: {email}\nTo: support@shop.test\n\
             Subject: RE: [{rtname} #{ticket}] Talla equivocada\n\
             Message-ID: <third-{p}@example.com>\nIn-Reply-To: <unknown-{p}@example.com>\n\n\
             Vale, espero el cambio.\n",
            rtname = rt::rtname(),
            p = gw.prefix.replace(':', "-")
        ),
    )
    .await;
    for receipt in [&by_header, &by_tag] {
        assert_eq!(
            rt::wait_ticket(receipt, Duration::from_secs(60)).await,
            ticket,
            "the reply is on the first mail's ticket"
        );
    }
    let messages = rt::messages(ticket).await;
    let kinds: Vec<&str> = messages.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["Create", "Correspond", "Correspond"],
        "{messages:?}"
    );
    assert!(messages[0].body().contains("talla M"), "{messages:?}");
    assert_eq!(
        messages[0].file("etiqueta.png"),
        Some(&b"\x89PNG\r\n\x1a\n"[..])
    );
    // The two replies are delivered side by side: in either order.
    let reply = |text: &str| {
        messages[1..]
            .iter()
            .find(|m| m.body().trim() == text)
            .unwrap_or_else(|| panic!("a correspondence saying {text:?}: {messages:?}"))
    };
    let quoted = reply("Os mando la foto otra vez.");
    let full = String::from_utf8_lossy(quoted.file("full-message.txt").expect("kept")).into_owned();
    assert!(full.contains("> Me llegó una talla M"), "{full}");
    reply("Vale, espero el cambio.");
    assert_eq!(
        rt::tickets_of(&email).await,
        [ticket],
        "one ticket for the thread"
    );
}

#[tokio::test]
async fn rt_flood_of_50_from_one_customer_is_one_ticket_plus_comments() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("50-dedupe.toml"),
        "[dedupe]\nwindow = \"1h\"\nexact = true\nnear_duplicates = false\n",
    )
    .unwrap();
    let gw = gateway(
        "rt_flood",
        &format!("[rules]\ndir = \"{}\"\n", rules.path().display()),
    )
    .await;
    let email = customer(&gw);
    // A script's mails: each its own Message-ID (so none is a copy of
    // another), the same words.
    let mut receipts = Vec::new();
    for n in 0..50 {
        let mail = format!(
            "From: {email}\nTo: support@shop.test\nSubject: DEVOLVEDME EL DINERO\n\
             Message-ID: <flood-{n}-{p}@example.com>\n\n\
             Quiero mi dinero ya.\n",
            p = gw.prefix.replace(':', "-")
        );
        receipts.push(post_mail(&gw, mail).await);
    }
    let ticket = rt::wait_ticket(&receipts[0], Duration::from_secs(60)).await;
    // The 49 folded into it are told in comments, spaced 2 s apart
    // (`fold_comment_every`), each counting those since the last.
    let deadline = Instant::now() + Duration::from_secs(90);
    let comments = loop {
        let comments: Vec<String> = rt::messages(ticket)
            .await
            .into_iter()
            .filter(|m| m.kind == "Comment")
            .map(|m| m.body())
            .collect();
        let told: u64 = comments
            .iter()
            .map(|c| c.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert!(told <= 49, "told more than came: {comments:?}");
        if told == 49 {
            break comments;
        }
        assert!(
            Instant::now() < deadline,
            "comments tell {told} of 49: {comments:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        comments.len() <= 5,
        "a few comments, not one per mail: {comments:?}"
    );
    assert!(
        comments[0].contains("more messages like this from the customer since"),
        "{comments:?}"
    );
    assert_eq!(rt::tickets_of(&email).await, [ticket], "one ticket");
    let deadline = Instant::now() + Duration::from_secs(30);
    while unacknowledged(&gw.prefix).await != 0 {
        assert!(Instant::now() < deadline, "the desk is acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `deploy/dev/services COMMAND rt`.
fn services(command: &str) {
    let status =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/dev/services"))
            .args([command, "rt"])
            .status()
            .expect("deploy/dev/services runs");
    assert!(status.success(), "deploy/dev/services {command} rt");
}

#[tokio::test]
async fn rt_stopped_mid_run_loses_nothing_and_delivers_everything_after_its_restart() {
    let gw = gateway("rt_down", "").await;
    let email = customer(&gw);
    let mail = |n: u32| {
        format!("From: {email}\nTo: support@shop.test\nSubject: Pedido {n}\n\nConsulta {n}.\n")
    };
    let before = post_mail(&gw, mail(0)).await;
    rt::wait_ticket(&before, Duration::from_secs(60)).await;

    services("stop");
    // Started again whatever the assertions below do.
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            services("start");
        }
    }
    let restart = Restart;
    let mut during = Vec::new();
    for n in 1..=5 {
        during.push(post_mail(&gw, mail(n)).await);
    }
    // Attempts fail and are retried meanwhile; nothing is acknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(unacknowledged(&gw.prefix).await, 5, "all five wait");
    drop(restart);

    let mut tickets = Vec::new();
    for receipt in &during {
        tickets.push(rt::wait_ticket(receipt, Duration::from_secs(90)).await);
    }
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), 5, "one ticket each: {tickets:?}");
    assert_eq!(rt::tickets_of(&email).await.len(), 6);
    let dead = gw.entries("dead").await;
    assert!(dead.is_empty(), "nothing dead: {dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_worker_killed_between_the_ticket_and_the_acknowledgement_leaves_one_ticket() {
    // The gateway stores the mail; the delivery runs as its own process
    // (`intake deliver`), its Redis behind a proxy that holds the write
    // made after RT answered: the ticket exists, nothing is acknowledged.
    let gw = Gateway::start("rt_sigkill").await;
    let email = customer(&gw);
    let receipt = post_mail(
        &gw,
        format!("From: {email}\nTo: support@shop.test\nSubject: Factura\n\nNecesito la factura.\n"),
    )
    .await;
    let proxy = RedisProxy::start(redis_url().trim_start_matches("redis://")).await;
    proxy.set(Rule::HoldAfter {
        arm: vec![b"XREADGROUP".to_vec()],
        hold: vec![b"SETEX".to_vec(), b":rt:ticket:".to_vec()],
    });
    let dir = tempfile::tempdir().unwrap();
    let config = |redis: &str| {
        let path = dir.path().join(format!("deliver-{}.toml", redis.len()));
        let text = format!(
            "[redis]\nurl = \"{redis}\"\nprefix = \"{}\"\ntimeout = \"1s\"\n{}",
            gw.prefix,
            rt::delivery_toml("desk", "")
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let spawn = |config: &std::path::Path, consumer: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(["deliver", "--config"])
            .arg(config)
            .args(["--consumer", consumer])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn(&config(&proxy.url()), "killed");
    assert!(
        proxy.wait_held(Duration::from_secs(60)).await,
        "the worker got RT's answer and wrote to Redis"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        rt::tickets_with_receipt(&receipt).await.len(),
        1,
        "RT made the ticket"
    );
    assert_eq!(unacknowledged(&gw.prefix).await, 1, "the entry is pending");

    // Restarted under its name, the worker takes its pending entry back
    // at once.
    let mut second = spawn(&config(&redis_url()), "killed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while unacknowledged(&gw.prefix).await != 0 {
        assert!(Instant::now() < deadline, "the survivor settles the entry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let tickets = rt::tickets_with_receipt(&receipt).await;
    assert_eq!(tickets.len(), 1, "still one ticket: {tickets:?}");
    let messages = rt::messages(tickets[0]).await;
    assert_eq!(messages.len(), 1, "one message on it: {messages:?}");
    assert_eq!(rt::tickets_of(&email).await, tickets);
}
