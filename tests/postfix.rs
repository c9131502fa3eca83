//! Postfix delivering into the gateway, with the shipped examples of
//! deploy/postfix/: a private Postfix instance (tests/support/postfix.rs)
//! pipes mail to the real `intake mailgate` binary, or delivers it over
//! LMTP into the daemon's `[lmtp]` listener. While the gateway is down the
//! mail waits in Postfix's queue; once it is back, it arrives exactly once.
//! Mail submitted over SMTP arrives with the SMTP client Postfix took it
//! from (`source.client`), by the pipe's flags or by LMTP's XFORWARD.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::envelope::assert_matches_schema;
use support::postfix::{Delivery, PrivatePostfix, DOMAIN, PATIENCE};
use support::{free_port, redis_url, Gateway, TOKEN};

/// The name the customer's mail server greets Postfix with.
const CUSTOMER_HELO: &str = "mx.customer.test";

fn mail(subject: &str) -> Vec<u8> {
    format!(
        "From: Ann Customer <ann@example.com>\nTo: support@{DOMAIN}\n\
         Subject: {subject}\nMessage-ID: <{subject}@example.com>\n\n\
         My order has not arrived.\n.\nA line with only a dot above.\n"
    )
    .into_bytes()
}

/// Waits until the desk holds `n` entries; returns them as envelopes.
async fn wait_desk(gw: &Gateway, n: usize, postfix: &PrivatePostfix) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let desk = gw.entries("desk").await;
        if desk.len() >= n {
            return desk.iter().map(|e| e.envelope()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "the mail did not reach the desk.\nqueue:\n{}\nlog:\n{}",
            postfix.queue(),
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Addresses in a stable order (Postfix sorts recipients its own way).
fn sorted(addresses: &Value) -> Vec<String> {
    let mut list: Vec<String> = addresses
        .as_array()
        .expect("a list of addresses")
        .iter()
        .map(|a| a.as_str().expect("an address").to_string())
        .collect();
    list.sort();
    list
}

fn is_empty(queue: &str) -> bool {
    queue.contains("Mail queue is empty")
}

#[tokio::test]
async fn postfix_pipes_mail_to_mailgate_onto_the_desk() {
    let gw = Gateway::start("postfix_pipe").await;
    let postfix = PrivatePostfix::start(Delivery::Pipe {
        url: &gw.url,
        token: TOKEN,
    });
    let recipients = [
        format!("support+order-77@{DOMAIN}"),
        format!("billing@{DOMAIN}"),
    ];
    let rcpts: Vec<&str> = recipients.iter().map(String::as_str).collect();
    postfix.sendmail("ann@example.com", &rcpts, &mail("postfix-pipe"));

    let desk = wait_desk(&gw, 1, &postfix).await;
    let env = &desk[0];
    assert_matches_schema("postfix pipe", env);
    assert_eq!(env["subject"], "postfix-pipe");
    assert_eq!(env["from"]["email"], "ann@example.com");
    assert_eq!(env["source"]["type"], "mailgate");
    assert_eq!(env["source"]["sender"], "ann@example.com");
    assert_eq!(
        sorted(&env["source"]["recipients"]),
        sorted(&serde_json::json!(recipients)),
        "both recipients, one pipe run"
    );
    assert_eq!(env["customer"]["mailbox_hash"], "order-77");
    assert!(
        env["source"].get("client").is_none(),
        "a locally submitted mail has no SMTP client (the pipe passes empty \
         or `unknown`, and mailgate takes that as none): {}",
        env["source"]
    );
    assert!(
        env["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Return-Path"),
        "flags=R added Return-Path"
    );
    assert!(
        env["text"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .contains("\n.\n"),
        "a lone dot in the body survives: {}",
        env["text"]
    );
    postfix.wait_queue("delivery finished", is_empty);
    assert!(
        postfix.log().contains("status=sent"),
        "Postfix logged the delivery:\n{}",
        postfix.log()
    );
    assert_eq!(gw.entries("desk").await.len(), 1, "stored once");
}

#[tokio::test]
async fn gateway_down_keeps_the_mail_queued_until_it_is_back() {
    // The pipe points at a port where no gateway runs yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let postfix = PrivatePostfix::start(Delivery::Pipe {
        url: &url,
        token: TOKEN,
    });
    postfix.sendmail(
        "ann@example.com",
        &[&format!("support@{DOMAIN}")],
        &mail("postfix-deferred"),
    );
    // mailgate exits 75 with its status line; Postfix keeps the mail.
    let queue = postfix.wait_queue("deferral", |q| q.contains("gateway unavailable"));
    assert!(queue.contains("ann@example.com"), "{queue}");
    assert!(
        postfix.log().contains("status=deferred"),
        "{}",
        postfix.log()
    );
    assert!(
        !postfix.log().contains("status=bounced"),
        "{}",
        postfix.log()
    );

    let gw = Gateway::start_custom_at(
        "postfix_deferred",
        &redis_url(),
        &format!("127.0.0.1:{port}"),
        |prefix, token_file| support::default_toml(&redis_url(), prefix, token_file, ""),
    )
    .await;
    postfix.flush();
    let desk = wait_desk(&gw, 1, &postfix).await;
    assert_eq!(desk[0]["subject"], "postfix-deferred");
    assert_eq!(desk[0]["source"]["type"], "mailgate");
    postfix.wait_queue("the queue to drain", is_empty);
    // A last flush must not deliver it again.
    postfix.flush();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.entries("desk").await.len(), 1, "arrived exactly once");
    gw.stop().await;
}

#[tokio::test]
async fn postfix_delivers_over_lmtp_into_the_listener() {
    let lmtp_port = free_port();
    let gw = Gateway::start_with(
        "postfix_lmtp",
        &redis_url(),
        &format!("[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\ndomains = [\"{DOMAIN}\"]\n"),
    )
    .await;
    let postfix = PrivatePostfix::start(Delivery::Lmtp { port: lmtp_port });
    let recipients = [
        format!("support+case-5@{DOMAIN}"),
        format!("sales@{DOMAIN}"),
    ];
    let rcpts: Vec<&str> = recipients.iter().map(String::as_str).collect();
    postfix.sendmail("ann@example.com", &rcpts, &mail("postfix-lmtp"));
    postfix.sendmail("bob@example.com", &rcpts[1..], &mail("postfix-lmtp-2"));

    let desk = wait_desk(&gw, 2, &postfix).await;
    let env = desk
        .iter()
        .find(|e| e["subject"] == "postfix-lmtp")
        .expect("the first mail");
    assert_matches_schema("postfix lmtp", env);
    assert_eq!(env["source"]["type"], "lmtp");
    assert_eq!(env["source"]["sender"], "ann@example.com");
    assert_eq!(
        sorted(&env["source"]["recipients"]),
        sorted(&serde_json::json!(recipients)),
        "one item for both recipients"
    );
    assert_eq!(env["customer"]["mailbox_hash"], "case-5");
    assert!(
        env["source"].get("client").is_none(),
        "a locally submitted mail has no SMTP client (XFORWARD says \
         [UNAVAILABLE]): {}",
        env["source"]
    );
    assert!(
        env["text"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .contains("\n.\n"),
        "{}",
        env["text"]
    );
    postfix.wait_queue("delivery finished", is_empty);
    let log = postfix.log();
    assert_eq!(
        log.matches("status=sent").count(),
        3,
        "three recipient deliveries acknowledged:\n{log}"
    );
    assert_eq!(gw.entries("desk").await.len(), 2, "one item per message");
    gw.stop().await;
}

#[tokio::test]
async fn postfix_delivers_mail_with_utf8_headers_over_lmtp() {
    // Postfix marks a locally submitted mail with UTF-8 headers as needing
    // SMTPUTF8 and bounces it (5.6.7) to a listener that does not offer it.
    let lmtp_port = free_port();
    let gw = Gateway::start_with(
        "postfix_lmtp_utf8",
        &redis_url(),
        &format!("[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\ndomains = [\"{DOMAIN}\"]\n"),
    )
    .await;
    let postfix = PrivatePostfix::start(Delivery::Lmtp { port: lmtp_port });
    let raw = format!(
        "From: José Núñez <jose@correo.example>\r\nTo: soporte@{DOMAIN}\r\n\
         Subject: Devolución del pedido nº 4411\r\nMessage-ID: <utf8-1@correo.example>\r\n\r\n\
         ¿Cómo devuelvo las botas?\r\n"
    );
    postfix.sendmail(
        "jose@correo.example",
        &[&format!("soporte@{DOMAIN}")],
        raw.as_bytes(),
    );
    let desk = wait_desk(&gw, 1, &postfix).await;
    assert_eq!(desk[0]["subject"], "Devolución del pedido nº 4411");
    assert_eq!(desk[0]["from"]["name"], "José Núñez");
    let log = postfix.log();
    assert!(!log.contains("status=bounced"), "nothing bounced:\n{log}");
    gw.stop().await;
}

#[tokio::test]
async fn postfix_passes_the_smtp_client_on_over_lmtp_with_xforward() {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postfix/main.cf"),
    )
    .unwrap();
    assert!(
        shipped.contains("\nlmtp_send_xforward_command = yes\n"),
        "the shipped main.cf, which this instance runs, turns XFORWARD on"
    );
    let lmtp_port = free_port();
    // SPF against the dev DNS, where customer.test allows 127.0.0.1.
    let dns = std::env::var("INTAKE_TEST_DNS").unwrap_or_else(|_| "127.0.0.1:15353".into());
    let gw = Gateway::start_with(
        "postfix_xforward",
        &redis_url(),
        &format!(
            "[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\ndomains = [\"{DOMAIN}\"]\n\n[auth]\nnameservers = [\"{dns}\"]\n"
        ),
    )
    .await;
    let postfix = PrivatePostfix::start_with_smtpd(Delivery::Lmtp { port: lmtp_port }, free_port());
    postfix.submit_smtp(
        CUSTOMER_HELO,
        "ann@customer.test",
        &[&format!("support@{DOMAIN}")],
        &mail("postfix-xforward"),
    );

    let desk = wait_desk(&gw, 1, &postfix).await;
    let env = &desk[0];
    assert_matches_schema("postfix lmtp xforward", env);
    assert_eq!(env["subject"], "postfix-xforward");
    assert_eq!(env["source"]["type"], "lmtp");
    assert_eq!(
        env["source"]["client"],
        serde_json::json!({ "address": "127.0.0.1", "helo": CUSTOMER_HELO }),
        "Postfix's XFORWARD named the SMTP client it took the mail from"
    );
    assert_eq!(
        env["auth"]["spf"],
        serde_json::json!({
            "result": "pass",
            "domain": "customer.test",
            "client_address": "127.0.0.1",
            "helo": CUSTOMER_HELO,
        }),
        "that client is what SPF checked"
    );
    postfix.wait_queue("delivery finished", is_empty);
    let log = postfix.log();
    assert!(
        !log.contains("in reply to XFORWARD"),
        "every XFORWARD was taken:\n{log}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn postfix_passes_the_smtp_client_on_to_mailgate() {
    let gw = Gateway::start("postfix_pipe_client").await;
    let postfix = PrivatePostfix::start_with_smtpd(
        Delivery::Pipe {
            url: &gw.url,
            token: TOKEN,
        },
        free_port(),
    );
    postfix.submit_smtp(
        CUSTOMER_HELO,
        "ann@example.com",
        &[&format!("support@{DOMAIN}")],
        &mail("postfix-pipe-client"),
    );

    let desk = wait_desk(&gw, 1, &postfix).await;
    let env = &desk[0];
    assert_matches_schema("postfix pipe client", env);
    assert_eq!(env["source"]["type"], "mailgate");
    assert_eq!(
        env["source"]["client"],
        serde_json::json!({ "address": "127.0.0.1", "helo": CUSTOMER_HELO }),
        "master.cf's --client-address=${{client_address}} --helo=${{client_helo}}"
    );
    postfix.wait_queue("delivery finished", is_empty);
    gw.stop().await;
}
