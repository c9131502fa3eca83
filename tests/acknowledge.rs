//! Acknowledgements to customers against the real dev SMTP relay (a
//! private Postfix, deploy/dev/services relay, that puts every mail it
//! takes into the dev Dovecot account outbox@shop.test): one per customer
//! per window through mailgate, LMTP and IMAP; none to what must not be
//! answered; the relay down, then back; the gateway SIGKILLed mid-send;
//! two replicas on one Redis.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::imap::{
    create, dev_login, dev_password, dev_port, eventually, imap_toml, secret_file, Boxes,
    GatewayProcess,
};
use support::outbox::{
    acknowledge_toml, acks_to, customer, grace, header, relay, relay_port, settled, wait_acks,
    Forwarder,
};
use support::redis_proxy::{RedisProxy, Rule};
use support::{free_port, redis_url, Gateway, TOKEN};

fn rules_toml() -> String {
    format!(
        "[rules]\ndir = \"{}\"\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("rules")
            .display()
    )
}

/// A mail from `from` with a Message-ID of its own; `headers` end in CRLF.
fn mail(from: &str, subject: &str, headers: &str, body: &str) -> (String, String) {
    let id = format!("{}@customer.test", ulid::Ulid::new());
    (
        format!(
            "From: {from}\r\nTo: support@shop.test\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{id}>\r\n{headers}\r\n{body}\r\n"
        ),
        id,
    )
}

/// `intake mailgate` (the real binary) hands `raw` over; its exit status.
async fn mailgate(url: &str, sender: &str, raw: String) -> std::process::Output {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), TOKEN).unwrap();
    let url = url.to_string();
    let sender = sender.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(["mailgate", "--url", &url, "--token-file"])
            .arg(token.path())
            .arg(format!("--sender={sender}"))
            .arg("--recipient=support@shop.test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(raw.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

async fn mailgate_ok(url: &str, sender: &str, raw: String) {
    let out = mailgate(url, sender, raw).await;
    assert!(
        out.status.success(),
        "mailgate: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One LMTP transaction on a raw connection; the DATA answer.
async fn lmtp(port: u16, sender: &str, raw: &str) -> String {
    support::lmtp::deliver(port, None, sender, raw).await
}

async fn lmtp_from(port: u16, xforward: Option<&str>, sender: &str, raw: &str) -> String {
    support::lmtp::deliver(port, xforward, sender, raw).await
}

/// The receipt of the desk item whose customer is `address`.
fn receipt_of(desk: &[support::Entry], address: &str) -> String {
    let found: Vec<&support::Entry> = desk
        .iter()
        .filter(|e| e.envelope()["customer"]["email"] == address)
        .collect();
    assert!(!found.is_empty(), "no desk item from {address}");
    found[0].field("id").to_string()
}

/// Checks one acknowledgement against the customer's mail it answers.
fn assert_acknowledges(ack: &[u8], receipt: &str, their_id: &str, subject: &str) {
    assert_eq!(header(ack, "Auto-Submitted"), "auto-replied");
    assert_eq!(header(ack, "X-Loop"), "support@shop.test");
    assert_eq!(header(ack, "In-Reply-To"), format!("<{their_id}>"));
    assert!(header(ack, "References").contains(&format!("<{their_id}>")));
    assert_eq!(
        header(ack, "Message-ID"),
        format!("<ack.{receipt}@shop.test>")
    );
    assert_eq!(header(ack, "X-Intake-Receipt"), receipt);
    let parsed = mail_parser::MessageParser::default().parse(ack).unwrap();
    assert_eq!(
        parsed.subject().unwrap(),
        format!("Re: {subject} [ref. {receipt}]")
    );
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains(&format!("Su referencia es {receipt}")),
        "{text}"
    );
    assert!(parsed.body_html(0).is_some(), "the HTML part is there");
    // The envelope sender was <>: Postfix wrote it as Return-Path.
    assert_eq!(header(ack, "Return-Path"), "<>");
}

#[tokio::test]
async fn mailgate_lmtp_and_imap_mail_each_get_one_acknowledgement() {
    let lmtp_port = free_port();
    let boxes = Boxes::new("ack");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = format!(
        "{}\n[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\n{}\n{}",
        rules_toml(),
        acknowledge_toml(relay_port(), ""),
        imap_toml(dev_port(), &boxes, &pw, "")
    );
    let gw = Gateway::start_with("ack_doors", &redis_url(), &extra).await;

    let by_mailgate = customer("ann");
    let (raw, mailgate_id) = mail(
        &by_mailgate,
        "Pedido 1001 sin llegar",
        "",
        "¿Dónde está mi pedido?",
    );
    mailgate_ok(&gw.url, &by_mailgate, raw).await;
    let by_lmtp = customer("bea");
    let (raw, lmtp_id) = mail(&by_lmtp, "Factura 2002", "", "Necesito la factura.");
    lmtp(lmtp_port, &by_lmtp, &raw).await;
    let by_imap = customer("cid");
    let (raw, imap_id) = mail(&by_imap, "Cambio de talla", "", "Quiero cambiar la talla.");
    imap.append(&boxes.inbox, None, None, raw.as_bytes())
        .await
        .expect("APPEND");

    let acks = [
        (&by_mailgate, &mailgate_id, "Pedido 1001 sin llegar"),
        (&by_lmtp, &lmtp_id, "Factura 2002"),
        (&by_imap, &imap_id, "Cambio de talla"),
    ];
    for (address, _, _) in &acks {
        wait_acks(address, 1).await;
    }
    // A second mail from the first customer within the window: stored,
    // not acknowledged.
    let (raw, _) = mail(
        &by_mailgate,
        "Otra pregunta",
        "",
        "Y otra cosa más, distinta.",
    );
    mailgate_ok(&gw.url, &by_mailgate, raw).await;
    eventually(30, "the second mail on the desk", || async {
        let desk = gw.entries("desk").await;
        (desk.len() == 4).then_some(())
    })
    .await;
    settled(&gw.redis_url, &gw.prefix).await;
    grace().await;

    let desk = gw.entries("desk").await;
    for (address, their_id, subject) in acks {
        let mails = acks_to(address).await;
        assert_eq!(mails.len(), 1, "one acknowledgement to {address}");
        assert_acknowledges(&mails[0], &receipt_of(&desk, address), their_id, subject);
    }
    gw.stop().await;
}

#[tokio::test]
async fn what_must_not_be_answered_gets_nothing_and_a_flood_gets_one() {
    let lmtp_port = free_port();
    let extra = format!(
        "{}\n[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\n{}",
        rules_toml(),
        acknowledge_toml(relay_port(), "")
    );
    let gw = Gateway::start_with("ack_never", &redis_url(), &extra).await;

    // The null sender: a bounce about some mail of ours.
    let bounced = customer("bounced");
    let (raw, _) = mail(&bounced, "Undelivered Mail Returned to Sender", "", "gone");
    lmtp(lmtp_port, "", &raw).await;
    let auto = customer("away");
    let (raw, _) = mail(
        &auto,
        "Fuera de la oficina",
        "Auto-Submitted: auto-replied\r\n",
        "Vuelvo el lunes.",
    );
    lmtp(lmtp_port, &auto, &raw).await;
    let list = customer("news");
    let (raw, _) = mail(
        &list,
        "Boletín",
        "List-Id: <news.customer.test>\r\nList-Unsubscribe: <mailto:u@customer.test>\r\n",
        "Ofertas",
    );
    lmtp(lmtp_port, &list, &raw).await;
    let noreply = format!("noreply+{}@customer.test", ulid::Ulid::new()).to_ascii_lowercase();
    let (raw, _) = mail(&noreply, "Su pedido ha sido enviado", "", "Tracking 123");
    lmtp(lmtp_port, &noreply, &raw).await;
    let suppress = customer("outlook");
    let (raw, _) = mail(
        &suppress,
        "Aceptada: reunión",
        "X-Auto-Response-Suppress: All\r\n",
        "Aceptada",
    );
    lmtp(lmtp_port, &suppress, &raw).await;
    // A flood of 50 from one customer: the shipped rules collapse it.
    let flood = customer("flood");
    for n in 0..50 {
        let (raw, _) = mail(
            &flood,
            "DEVUELVANME EL DINERO",
            "",
            &format!("Quiero mi dinero ya. Mensaje {n}."),
        );
        lmtp(lmtp_port, &flood, &raw).await;
    }
    // A person, last: once hers is in, the others were decided before.
    let person = customer("person");
    let (raw, _) = mail(&person, "Una consulta", "", "Hola, una consulta.");
    lmtp(lmtp_port, &person, &raw).await;
    wait_acks(&person, 1).await;
    settled(&gw.redis_url, &gw.prefix).await;
    grace().await;

    for address in [&bounced, &auto, &list, &noreply, &suppress] {
        assert_eq!(
            acks_to(address).await.len(),
            0,
            "no acknowledgement to {address}"
        );
    }
    let desk = gw.entries("desk").await;
    let flood_on_desk = desk
        .iter()
        .filter(|e| e.envelope()["customer"]["email"] == flood.as_str())
        .count();
    let suppressed = gw.entries("suppressed").await.len();
    assert!(
        suppressed >= 40,
        "the flood was collapsed: {suppressed} suppressed"
    );
    assert!(flood_on_desk >= 1);
    assert_eq!(
        acks_to(&flood).await.len(),
        1,
        "the flood's first gets one, the rest none ({flood_on_desk} of 50 on the desk)"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_relay_down_holds_acknowledgements_until_it_is_back_then_sends_each_once() {
    // The gateway's relay port has nothing behind it at first.
    let port = free_port();
    let extra = format!("{}\n{}", rules_toml(), acknowledge_toml(port, ""));
    let gw = Gateway::start_with("ack_relay_down", &redis_url(), &extra).await;
    let customers: Vec<String> = (0..3).map(|i| customer(&format!("wait{i}"))).collect();
    for address in &customers {
        let (raw, _) = mail(address, "Sin relay", "", "¿Me oyen?");
        mailgate_ok(&gw.url, address, raw).await;
    }
    // Queued, waiting: the outbox holds them and nothing went out.
    eventually(30, "three acknowledgements in the outbox", || async {
        let n = support::imap::xlen(&gw.redis_url, &gw.prefix, "outbox").await;
        (n == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        support::imap::xlen(&gw.redis_url, &gw.prefix, "outbox").await,
        3
    );
    for address in &customers {
        assert_eq!(acks_to(address).await.len(), 0);
    }
    // The relay is back on the same port.
    let forwarder = Forwarder::start(port, relay()).await;
    for address in &customers {
        wait_acks(address, 1).await;
    }
    settled(&gw.redis_url, &gw.prefix).await;
    grace().await;
    for address in &customers {
        assert_eq!(acks_to(address).await.len(), 1, "sent once to {address}");
    }
    drop(forwarder);
    gw.stop().await;
}

fn process_config(
    dir: &std::path::Path,
    prefix: &str,
    relay_port: u16,
    lmtp_port: u16,
) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:{http}"

[redis]
url = "{redis}"
prefix = "{prefix}"
timeout = "1s"

[messages]
token = {{ file = "{token}" }}

[lmtp]
listen = "127.0.0.1:{lmtp_port}"

{rules}
{acknowledge}
"#,
        http = free_port(),
        redis = redis_url(),
        token = token.display(),
        rules = rules_toml(),
        acknowledge = acknowledge_toml(relay_port, ""),
    );
    let path = dir.join(format!("intake-{lmtp_port}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_gateway_killed_mid_send_sends_the_same_message_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix("ack_kill");
    // A proxy in front of the relay holds the end of the first DATA: the
    // relay has the mail's bytes but not its final dot, so it keeps nothing.
    let proxy = RedisProxy::start(&relay()).await;
    proxy.set(Rule::HoldAfter {
        arm: vec![b"DATA".to_vec()],
        hold: vec![b"\r\n.\r\n".to_vec()],
    });
    let lmtp_port = free_port();
    let config = process_config(dir.path(), &prefix, proxy.port, lmtp_port);
    let mut gateway = GatewayProcess::start_as(&config, &dir.path().join("first.log"), "ack-kill");
    let address = customer("killed");
    let (raw, _) = mail(&address, "Antes del kill", "", "Hola.");
    lmtp(lmtp_port, &address, &raw).await;
    assert!(
        proxy.wait_held(Duration::from_secs(60)).await,
        "the acknowledgement reached the relay's DATA"
    );
    gateway.kill();
    drop(proxy);
    // Back, straight to the relay, as the same consumer.
    let config = process_config(dir.path(), &prefix, relay_port(), lmtp_port);
    let mut gateway = GatewayProcess::start_as(&config, &dir.path().join("second.log"), "ack-kill");
    let mails = wait_acks(&address, 1).await;
    settled(&redis_url(), &prefix).await;
    grace().await;
    let mails_after = acks_to(&address).await;
    assert_eq!(mails_after.len(), 1, "sent once: {}", mails.len());
    let mut conn = support::test_connection(&redis_url()).await;
    let desk: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:desk"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let receipt = desk[0]
        .1
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        header(&mails_after[0], "Message-ID"),
        format!("<ack.{receipt}@shop.test>")
    );
    gateway.terminate();
}

#[tokio::test]
async fn two_replicas_on_one_redis_send_one_per_customer_per_window() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = support::unique_prefix("ack_replicas");
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<GatewayProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let config = process_config(dir.path(), &prefix, relay_port(), *port);
            GatewayProcess::start_as(
                &config,
                &dir.path().join(format!("r{i}.log")),
                &format!("replica-{i}"),
            )
        })
        .collect();
    // Six customers, each writing four different mails, spread over both
    // replicas.
    let customers: Vec<String> = (0..6).map(|i| customer(&format!("rep{i}"))).collect();
    for round in 0..4 {
        for (i, address) in customers.iter().enumerate() {
            let (raw, _) = mail(
                address,
                &format!("Consulta {round}"),
                "",
                &format!("Pregunta número {round} del cliente {i}, sobre otra cosa."),
            );
            lmtp(ports[(i + round) % 2], address, &raw).await;
        }
    }
    for address in &customers {
        wait_acks(address, 1).await;
    }
    settled(&redis_url(), &prefix).await;
    grace().await;
    let mut conn = support::test_connection(&redis_url()).await;
    let desk: usize = redis::cmd("XLEN")
        .arg(format!("{prefix}:desk"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for address in &customers {
        assert_eq!(
            acks_to(address).await.len(),
            1,
            "one to {address} ({desk} desk items)"
        );
    }
    for replica in &mut replicas {
        replica.terminate();
    }
}

#[tokio::test]
async fn forms_are_acknowledged_only_where_turned_on_in_their_language_and_limited_per_network() {
    let extra = format!(
        "[[form]]\nid = \"quiet\"\nrequired = [\"email\"]\nallowed_origins = [\"https://shop.test\"]\n{}",
        acknowledge_toml(
            relay_port(),
            "form_per_network = 2\n[[acknowledge.override]]\nform = \"contact\"\nenabled = true\n"
        )
    );
    let gw = Gateway::start_with("ack_forms", &redis_url(), &extra).await;
    let post = |form: &'static str, email: String, language: &'static str| {
        let url = gw.form_url(form);
        async move {
            let response = support::client()
                .post(url)
                .header("Origin", "https://shop.test")
                .header("Accept", "application/json")
                .header("Accept-Language", language)
                .form(&[
                    ("email", email.as_str()),
                    ("name", "Ann Example"),
                    ("message", "¿Dónde está mi pedido?"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        }
    };
    // The default is off: a form without an override gets none.
    let quiet = customer("quiet");
    post("quiet", quiet.clone(), "es-ES").await;
    // The customer's Accept-Language picks the template.
    let english = customer("english");
    post("contact", english.clone(), "en-GB,en;q=0.9,es;q=0.5").await;
    let mails = wait_acks(&english, 1).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mails[0])
        .unwrap();
    assert!(
        parsed
            .subject()
            .unwrap()
            .starts_with("We have received your request [ref. "),
        "{:?}",
        parsed.subject()
    );
    assert!(parsed.body_text(0).unwrap().contains("Hello Ann Example,"));
    // A bot typing other people's addresses from one network: the
    // network's allowance (2 per window) ends the acknowledgements.
    let typed: Vec<String> = (0..4).map(|i| customer(&format!("typed{i}"))).collect();
    for address in &typed {
        post("contact", address.clone(), "es").await;
    }
    settled(&gw.redis_url, &gw.prefix).await;
    grace().await;
    assert_eq!(
        acks_to(&quiet).await.len(),
        0,
        "forms are off unless turned on"
    );
    let mut sent = 0;
    for address in &typed {
        sent += acks_to(address).await.len();
    }
    assert_eq!(
        sent, 1,
        "the network had 2: the English one and one of these"
    );
    gw.stop().await;
}

#[tokio::test]
async fn with_auth_only_senders_that_authenticated_are_answered() {
    let lmtp_port = free_port();
    let dns = std::env::var("INTAKE_TEST_DNS").unwrap_or_else(|_| "127.0.0.1:15353".into());
    let extra = format!(
        "[auth]\nauthserv_id = \"intake.shop.test\"\nnameservers = [\"{dns}\"]\ntimeout = \"1s\"\n\n[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\n{}",
        acknowledge_toml(relay_port(), "")
    );
    let gw = Gateway::start_with("ack_auth", &redis_url(), &extra).await;
    // customer.test's SPF allows 127.0.0.1 only; its DMARC aligns on it.
    let genuine = customer("genuine");
    let (raw, _) = mail(&genuine, "Mi pedido", "", "Hola.");
    lmtp_from(
        lmtp_port,
        Some("ADDR=127.0.0.1 HELO=mx.customer.test NAME=mx.customer.test"),
        &genuine,
        &raw,
    )
    .await;
    // The same domain from elsewhere: stored (no rules here), not answered,
    // so a forger gets no backscatter sent to the name he used.
    let forged = customer("forged");
    let (raw, _) = mail(&forged, "Mi pedido", "", "Hola.");
    lmtp_from(
        lmtp_port,
        Some("ADDR=198.51.100.7 HELO=mx.elsewhere.test NAME=mx.elsewhere.test"),
        &forged,
        &raw,
    )
    .await;
    wait_acks(&genuine, 1).await;
    settled(&gw.redis_url, &gw.prefix).await;
    grace().await;
    let desk = gw.entries("desk").await;
    let forged_item = desk
        .iter()
        .find(|e| e.envelope()["customer"]["email"] == forged.as_str())
        .expect("the forged mail is on the desk");
    assert_eq!(forged_item.envelope()["auth"]["aligned_from"], false);
    assert_eq!(acks_to(&forged).await.len(), 0);
    assert_eq!(acks_to(&genuine).await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn starttls_to_the_relay_is_verified_against_the_ca_given() {
    let ca =
        std::env::var("INTAKE_TEST_IMAP_CA").expect("INTAKE_TEST_IMAP_CA (deploy/dev/intake-env)");
    let starttls = |ca_file: Option<&str>| {
        acknowledge_toml(relay_port(), "").replace(
            "tls = \"none\"",
            &match ca_file {
                Some(ca) => format!("tls = \"starttls\"\nca_file = \"{ca}\""),
                None => "tls = \"starttls\"".into(),
            },
        )
    };
    // The dev relay's certificate comes from the dev CA: trusted when named.
    let gw = Gateway::start_with("ack_starttls", &redis_url(), &starttls(Some(&ca))).await;
    let address = customer("tls");
    let (raw, _) = mail(&address, "Por TLS", "", "Hola.");
    mailgate_ok(&gw.url, &address, raw).await;
    wait_acks(&address, 1).await;
    gw.stop().await;
    // With the system's roots the same certificate is not trusted: nothing
    // goes out, the acknowledgement waits in the outbox.
    let gw = Gateway::start_with("ack_starttls_untrusted", &redis_url(), &starttls(None)).await;
    let address = customer("untrusted");
    let (raw, _) = mail(&address, "Por TLS", "", "Hola.");
    mailgate_ok(&gw.url, &address, raw).await;
    eventually(30, "the acknowledgement queued", || async {
        let n = support::imap::xlen(&gw.redis_url, &gw.prefix, "outbox").await;
        (n == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        support::imap::xlen(&gw.redis_url, &gw.prefix, "outbox").await,
        1
    );
    assert_eq!(
        acks_to(&address).await.len(),
        0,
        "never sent over an unverified TLS"
    );
    gw.stop().await;
}
