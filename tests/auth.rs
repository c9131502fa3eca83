//! Sender authentication against the dev DNS (deploy/dev/services dns,
//! test zones with DKIM keys, SPF and DMARC records): mails signed by
//! `deploy/dev/sign-mail` (Perl's Mail::DKIM, an implementation
//! independent of intake's) through `/v1/messages` with the SMTP client's
//! headers, through LMTP with XFORWARD, and through the real
//! `intake mailgate` with its flags; the shipped rules act on the verdicts.

mod support;

use std::process::{Command, Stdio};

use serde_json::Value;
use support::envelope::assert_matches_schema;
use support::{client, free_port, redis_url, Entry, Gateway, TOKEN};

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dns() -> String {
    std::env::var("INTAKE_TEST_DNS").unwrap_or_else(|_| "127.0.0.1:15353".into())
}

/// `[auth]` against `nameserver`, with the shipped rules.
fn auth_config(nameserver: &str, extra: &str) -> String {
    format!(
        r#"
[auth]
authserv_id = "intake.shop.test"
nameservers = ["{nameserver}"]
timeout = "500ms"
attempts = 1
trusted_authserv_ids = ["mx.shop.test"]
trusted_received = ["mx.shop.test"]
trusted_arc_sealers = ["forwarder.test"]
own_domains = ["shop.test"]

[rules]
dir = "{rules}"

{extra}
"#,
        rules = repo().join("rules").display()
    )
}

async fn gateway(test: &str, extra: &str) -> Gateway {
    Gateway::start_with(test, &redis_url(), &auth_config(&dns(), extra)).await
}

/// A mail from `from` with a Message-ID of its own.
fn mail(from: &str, subject: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: support@shop.test\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{}@test>\r\n\r\n{body}\r\n",
        ulid::Ulid::new()
    )
}

/// The mail signed by sign-mail with `args` (off the runtime: the gateway
/// runs in this process).
async fn sign(mail: &str, args: &[&str]) -> String {
    let mail = mail.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(repo().join("deploy/dev/sign-mail"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("deploy/dev/sign-mail runs");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(mail.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sign-mail {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// Posts a mail as a mail server would, with the SMTP client it took the
/// mail from; returns the receipt id.
async fn post(gw: &Gateway, raw: &str, sender: &str, client_address: Option<&str>) -> String {
    let mut request = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("Content-Type", "message/rfc822")
        .header("X-Intake-Envelope-Sender", sender)
        .header("X-Intake-Envelope-Recipient", "support@shop.test")
        .body(raw.to_string());
    if let Some(address) = client_address {
        request = request
            .header("X-Intake-Client-Address", address)
            .header("X-Intake-Client-Helo", "mx.customer.test");
    }
    let response = request.send().await.expect("post");
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

/// The stored entry with receipt `id`, in whichever stream it is.
async fn stored(gw: &Gateway, id: &str) -> (String, Value) {
    for stream in ["desk", "quarantine", "suppressed", "held"] {
        if let Some(entry) = gw
            .entries(stream)
            .await
            .into_iter()
            .find(|e| e.field("id") == id)
        {
            return (stream.to_string(), entry.envelope());
        }
    }
    panic!("{id} is stored nowhere");
}

fn auth_of(envelope: &Value) -> &Value {
    let auth = &envelope["auth"];
    assert!(auth.is_object(), "no auth in {envelope}");
    auth
}

fn own_header(envelope: &Value) -> String {
    let headers = envelope["headers"].as_array().unwrap();
    let ours: Vec<&str> = headers
        .iter()
        .filter(|h| h["name"] == "Authentication-Results")
        .filter_map(|h| h["value"].as_str())
        .filter(|v| v.starts_with("intake.shop.test;"))
        .collect();
    assert_eq!(ours.len(), 1, "one header of intake's own: {ours:?}");
    ours[0].to_string()
}

#[tokio::test]
async fn a_signed_mail_from_an_allowed_client_passes_dkim_spf_and_dmarc() {
    let gw = gateway("auth_pass", "").await;
    let signed = sign(
        &mail("Ann <ann@customer.test>", "Order 1", "Where is it?"),
        &[],
    )
    .await;
    let id = post(&gw, &signed, "ann@customer.test", Some("127.0.0.1")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    assert_eq!(stream, "desk");
    assert_matches_schema("auth pass", &envelope);
    let auth = auth_of(&envelope);
    assert_eq!(auth["dkim"][0]["result"], "pass", "{auth}");
    assert_eq!(auth["dkim"][0]["domain"], "customer.test");
    assert_eq!(auth["dkim"][0]["selector"], "dev");
    assert_eq!(auth["spf"]["result"], "pass");
    assert_eq!(auth["spf"]["client_address"], "127.0.0.1");
    assert_eq!(auth["spf"]["helo"], "mx.customer.test");
    assert_eq!(auth["dmarc"]["result"], "pass");
    assert_eq!(auth["dmarc"]["policy"], "reject");
    assert_eq!(auth["from"], "verified");
    assert_eq!(auth["aligned_from"], true);
    assert_eq!(auth["authenticated_domain"], "customer.test");
    let header = own_header(&envelope);
    assert!(
        header.contains("dkim=pass header.d=customer.test header.s=dev")
            && header.contains("spf=pass")
            && header.contains("dmarc=pass"),
        "{header}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_changed_body_fails_dkim_and_a_forged_client_fails_spf_so_dmarc_reject_quarantines() {
    let gw = gateway("auth_fail", "").await;
    let signed = sign(
        &mail("ann@customer.test", "Refund", "Send the refund to me"),
        &[],
    )
    .await;
    let tampered = signed.replace("Send the refund to me", "Send the refund to IBAN XX00");
    let id = post(&gw, &tampered, "ann@customer.test", Some("203.0.113.9")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert_eq!(auth["spf"]["result"], "fail");
    assert_eq!(auth["spf"]["client_address"], "203.0.113.9");
    assert_eq!(auth["dmarc"]["result"], "fail");
    assert_eq!(auth["dmarc"]["policy"], "reject");
    assert_eq!(auth["aligned_from"], false);
    assert_eq!(stream, "quarantine", "the shipped rule quarantines it");
    let rules = envelope["abuse"]["matched_rules"].to_string();
    assert!(rules.contains("dmarc-fail-enforced"), "{rules}");
    gw.stop().await;
}

#[tokio::test]
async fn a_domain_without_dmarc_gets_none_and_aligns_by_its_own_signature() {
    let gw = gateway("auth_none", "").await;
    let signed = sign(
        &mail("bob@nodmarc.test", "Hello", "A question"),
        &["--domain", "nodmarc.test"],
    )
    .await;
    let id = post(&gw, &signed, "bob@nodmarc.test", Some("127.0.0.1")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["dkim"][0]["result"], "pass", "{auth}");
    assert_eq!(auth["dmarc"]["result"], "none");
    assert!(auth["dmarc"].get("policy").is_none(), "{auth}");
    assert_eq!(
        auth["aligned_from"], true,
        "relaxed alignment of the passing DKIM domain"
    );
    assert_eq!(stream, "desk");

    // Unsigned, from a client SPF does not allow: nothing vouches for it,
    // and without a DMARC policy the mail still reaches the desk.
    let id = post(
        &gw,
        &mail("bob@nodmarc.test", "Hello again", "Another question"),
        "bob@nodmarc.test",
        Some("198.51.100.20"),
    )
    .await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["spf"]["result"], "fail", "{auth}");
    assert_eq!(auth["aligned_from"], false);
    assert!(auth["dkim"].as_array().unwrap().is_empty());
    assert_eq!(stream, "desk");
    gw.stop().await;
}

#[tokio::test]
async fn an_arc_sealed_forward_from_a_trusted_sealer_aligns_though_dkim_broke() {
    let gw = gateway("auth_arc", "").await;
    let signed = sign(
        &mail("ann@customer.test", "Via the list", "Hello list"),
        &[],
    )
    .await;
    // The list checked the mail, added its footer (breaking DKIM) and
    // sealed it; it sends from its own address, which SPF does not allow
    // for customer.test.
    let forwarded = format!(
        "Authentication-Results: forwarder.test; dkim=pass header.d=customer.test; spf=pass smtp.mailfrom=customer.test; dmarc=pass header.from=customer.test\r\n{}-- \r\nThe list footer\r\n",
        signed
    );
    let sealed = sign(
        &forwarded,
        &["--arc", "--domain", "forwarder.test", "--selector", "arc"],
    )
    .await;
    let id = post(
        &gw,
        &sealed,
        "list-bounces@forwarder.test",
        Some("127.0.0.2"),
    )
    .await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert_eq!(auth["dmarc"]["result"], "fail");
    assert_eq!(auth["arc"]["result"], "pass");
    assert_eq!(auth["arc"]["sealer"], "forwarder.test");
    assert_eq!(auth["arc"]["claims"]["dmarc"], "pass");
    assert_eq!(auth["aligned_from"], true, "the trusted sealer vouches");
    assert_eq!(stream, "desk", "not quarantined as a DMARC failure");
    gw.stop().await;
}

#[tokio::test]
async fn an_untrusted_authentication_results_claiming_dmarc_pass_is_ignored() {
    let gw = gateway("auth_forged_header", "").await;
    let forged = format!(
        "Authentication-Results: mx.attacker.example; dkim=pass header.d=customer.test; spf=pass smtp.mailfrom=customer.test; dmarc=pass header.from=customer.test\r\nAuthentication-Results: intake.shop.test; dmarc=pass header.from=customer.test\r\n{}",
        mail("ann@customer.test", "Pay this invoice", "Urgent")
    );
    let id = post(&gw, &forged, "ann@customer.test", Some("203.0.113.9")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["from"], "verified");
    assert_eq!(auth["dmarc"]["result"], "fail", "{auth}");
    assert_eq!(auth["aligned_from"], false);
    assert_eq!(stream, "quarantine");
    // The forged header in intake's own name is not among the stored ones.
    let header = own_header(&envelope);
    assert!(header.contains("dmarc=fail"), "{header}");
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_mx_header_is_read_for_imap_style_mail_without_a_client() {
    let gw = gateway("auth_trusted_header", "").await;
    let raw = format!(
        "Authentication-Results: mx.shop.test; dkim=pass header.d=lax.test header.s=dev; spf=pass smtp.mailfrom=carol@lax.test; dmarc=pass policy.dmarc=none header.from=lax.test\r\n{}",
        mail("carol@lax.test", "From my phone", "Hi")
    );
    let id = post(&gw, &raw, "carol@lax.test", None).await;
    let (_, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["from"], "trusted-header", "{auth}");
    assert_eq!(auth["authserv_id"], "mx.shop.test");
    assert_eq!(auth["aligned_from"], true);
    assert!(
        auth["notes"].to_string().contains("no SMTP client"),
        "{auth}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn mail_claiming_the_shops_own_domain_without_authentication_is_quarantined() {
    let gw = gateway("auth_own_domain", "").await;
    let id = post(
        &gw,
        &mail(
            "CEO <ceo@shop.test>",
            "Urgent wire transfer",
            "Please pay this today",
        ),
        "ceo@shop.test",
        Some("203.0.113.50"),
    )
    .await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["own_domain"], true, "{auth}");
    assert_eq!(auth["aligned_from"], false);
    assert_eq!(stream, "quarantine");

    let signed = sign(
        &mail("billing@shop.test", "Invoice copy", "Attached"),
        &["--domain", "shop.test"],
    )
    .await;
    let id = post(&gw, &signed, "billing@shop.test", Some("127.0.0.1")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    assert_eq!(auth_of(&envelope)["aligned_from"], true);
    assert_eq!(
        stream, "desk",
        "the shop's own authenticated mail is not phishing"
    );
    gw.stop().await;
}

#[tokio::test]
async fn dns_that_does_not_answer_is_temperror_and_the_mail_is_stored() {
    // A UDP socket that reads and never answers: a DNS server that died.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nameserver = silent.local_addr().unwrap().to_string();
    let gw =
        Gateway::start_with("auth_dns_down", &redis_url(), &auth_config(&nameserver, "")).await;
    let signed = sign(&mail("ann@customer.test", "Still here", "DNS is down"), &[]).await;
    let id = post(&gw, &signed, "ann@customer.test", Some("127.0.0.1")).await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["dkim"][0]["result"], "temperror", "{auth}");
    assert_eq!(auth["spf"]["result"], "temperror");
    assert_eq!(auth["aligned_from"], false);
    assert_eq!(stream, "desk", "a temperror refuses nothing");
    let tags = envelope["abuse"]["tags"].to_string();
    assert!(tags.contains("auth-temperror"), "{tags}");
    drop(silent);
    gw.stop().await;
}

/// One LMTP transaction with XFORWARD, on a raw connection.
async fn lmtp_deliver(port: u16, xforward: &str, sender: &str, raw: &str) -> String {
    support::lmtp::deliver(port, Some(xforward), sender, raw).await
}

#[tokio::test]
async fn spf_reads_the_client_lmtp_xforward_names() {
    let port = free_port();
    let gw = gateway(
        "auth_lmtp_xforward",
        &format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    lmtp_deliver(
        port,
        "ADDR=127.0.0.1 HELO=mx.customer.test",
        "ann@customer.test",
        &mail("ann@customer.test", "Allowed client", "hi"),
    )
    .await;
    lmtp_deliver(
        port,
        "ADDR=203.0.113.77 HELO=mx.customer.test",
        "ann@customer.test",
        &mail("ann@customer.test", "Other client", "hi"),
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    for stream in ["desk", "quarantine"] {
        for entry in gw.entries(stream).await {
            let envelope = entry.envelope();
            seen.insert(
                envelope["subject"].as_str().unwrap().to_string(),
                (stream, envelope["auth"]["spf"].clone()),
            );
        }
    }
    let (stream, spf) = &seen["Allowed client"];
    assert_eq!(spf["result"], "pass", "{spf}");
    assert_eq!(spf["client_address"], "127.0.0.1");
    assert_eq!(
        *stream, "desk",
        "SPF aligns: DMARC passes without a signature"
    );
    let (stream, spf) = &seen["Other client"];
    assert_eq!(spf["result"], "fail", "{spf}");
    assert_eq!(spf["client_address"], "203.0.113.77");
    assert_eq!(*stream, "quarantine");
    gw.stop().await;
}

#[tokio::test]
async fn spf_reads_the_client_mailgate_flags_name() {
    let gw = gateway("auth_mailgate_flags", "").await;
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), TOKEN).unwrap();
    for (address, subject) in [
        ("127.0.0.1", "By mailgate, allowed"),
        ("198.51.100.3", "By mailgate, other"),
    ] {
        let raw = mail("ann@customer.test", subject, "hi");
        let url = gw.url.clone();
        let token = token.path().to_path_buf();
        let out = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
                .args(["mailgate", "--url", &url, "--token-file"])
                .arg(&token)
                .args([
                    "--sender=ann@customer.test",
                    &format!("--client-address={address}"),
                    "--helo=mx.customer.test",
                    "--recipient=support@shop.test",
                ])
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
        .unwrap();
        assert!(
            out.status.success(),
            "mailgate: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all: Vec<Entry> = [gw.entries("desk").await, gw.entries("quarantine").await].concat();
    let spf_of = |subject: &str| {
        all.iter()
            .map(Entry::envelope)
            .find(|e| e["subject"] == subject)
            .map(|e| e["auth"]["spf"].clone())
            .unwrap_or_else(|| panic!("{subject} not stored"))
    };
    assert_eq!(spf_of("By mailgate, allowed")["result"], "pass");
    let other = spf_of("By mailgate, other");
    assert_eq!(other["result"], "fail", "{other}");
    assert_eq!(other["client_address"], "198.51.100.3");
    gw.stop().await;
}

#[tokio::test]
async fn a_forged_flood_in_a_customers_name_leaves_their_own_next_mail_on_the_desk() {
    let gw = gateway("auth_forged_flood", "").await;
    // nodmarc.test publishes no DMARC policy, so nothing quarantines the
    // forgeries: only the bucket they are counted in protects Dana.
    let mut flood_ids = Vec::new();
    for i in 0..200 {
        let raw = mail(
            "Dana <dana@nodmarc.test>",
            &format!("Complaint {i}"),
            &format!("Forged complaint number {i} about order {}", 9000 + i),
        );
        let address = format!("198.51.100.{}", 1 + i % 200);
        flood_ids.push(post(&gw, &raw, "dana@nodmarc.test", Some(&address)).await);
    }
    // A normal client measured beside it: Dana's own mail, signed, from
    // the network her domain's SPF allows.
    let signed = sign(
        &mail(
            "Dana <dana@nodmarc.test>",
            "My real order",
            "Order 1234 is late",
        ),
        &["--domain", "nodmarc.test"],
    )
    .await;
    let real = post(&gw, &signed, "dana@nodmarc.test", Some("127.0.0.1")).await;

    let (stream, envelope) = stored(&gw, &real).await;
    assert_eq!(auth_of(&envelope)["aligned_from"], true);
    assert_eq!(
        stream, "desk",
        "Dana's own mail is not collapsed: {envelope}"
    );
    assert!(envelope["abuse"]["duplicates"].as_u64().unwrap_or(0) == 0);

    // The flood was bounded: a burst reached the desk, the rest folded.
    let desk = gw.entries("desk").await;
    let suppressed = gw.entries("suppressed").await;
    let quarantine = gw.entries("quarantine").await;
    let flood_on_desk = desk
        .iter()
        .filter(|e| flood_ids.contains(&e.field("id").to_string()))
        .count();
    assert!(
        flood_on_desk <= 6,
        "{flood_on_desk} forgeries reached the desk"
    );
    // Every acknowledged item is stored exactly once.
    let mut ids: Vec<String> = desk
        .iter()
        .chain(&suppressed)
        .chain(&quarantine)
        .map(|e| e.field("id").to_string())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "an item stored twice");
    for id in flood_ids.iter().chain([&real]) {
        assert!(
            ids.binary_search(id).is_ok(),
            "{id} acknowledged but not stored"
        );
    }
    assert_eq!(ids.len(), 201);
    gw.stop().await;
}

/// Runs the intake binary with `args` and `stdin`; its exit code and output.
async fn intake(args: Vec<String>, stdin: String) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(&args)
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
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn rules_explain_shows_the_verdicts_and_the_rule_they_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("intake.toml");
    // Only [auth] is read: the rest of a gateway config may name secrets
    // this machine does not have.
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"redis://nowhere:1\"\n[messages]\ntoken = {{ file = \"/no/such/file\" }}\n{}",
            auth_config(&dns(), "")
        ),
    )
    .unwrap();
    let rules = repo().join("rules").display().to_string();
    let args = |client: &str| {
        vec![
            "rules".to_string(),
            "explain".into(),
            "--rules".into(),
            rules.clone(),
            "--config".into(),
            config.display().to_string(),
            "--envelope-sender".into(),
            "ann@customer.test".into(),
            format!("--client-address={client}"),
        ]
    };
    let forged = mail("ann@customer.test", "Pay now", "Urgent");
    let (code, out) = intake(args("203.0.113.9"), forged).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dmarc           fail customer.test policy reject"),
        "{out}"
    );
    assert!(out.contains("aligned_from    false"), "{out}");
    assert!(
        out.contains("result: quarantine by dmarc-fail-enforced"),
        "{out}"
    );

    let signed = sign(&mail("ann@customer.test", "My order", "Where is it?"), &[]).await;
    let (code, out) = intake(args("127.0.0.1"), signed).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dkim            pass d=customer.test s=dev"),
        "{out}"
    );
    assert!(out.contains("aligned_from    true"), "{out}");
    assert!(
        out.contains("key    verified_sender=ann@customer.test\n"),
        "{out}"
    );
    assert!(!out.contains("dmarc-fail-enforced"), "{out}");

    // Without --config nothing is checked, and explain says so.
    let (_, out) = intake(
        vec![
            "rules".into(),
            "explain".into(),
            "--rules".into(),
            rules.clone(),
        ],
        mail("ann@customer.test", "x", "y"),
    )
    .await;
    assert!(out.contains("not checked (give --config"), "{out}");

    // Replay offline reads only the recorded trusted headers.
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(
        archive.join("1.eml"),
        format!(
            "Authentication-Results: mx.shop.test; dmarc=fail policy.dmarc=reject header.from=customer.test\r\n{}",
            mail("ann@customer.test", "Forged", "Pay")
        ),
    )
    .unwrap();
    std::fs::write(
        archive.join("2.eml"),
        format!(
            "Authentication-Results: mx.shop.test; dkim=pass header.d=customer.test; dmarc=pass header.from=customer.test\r\n{}",
            mail("ann@customer.test", "Real", "Hello")
        ),
    )
    .unwrap();
    let (code, out) = intake(
        vec![
            "replay".into(),
            "--rules".into(),
            rules,
            "--config".into(),
            config.display().to_string(),
            "--recorded-auth".into(),
            archive.display().to_string(),
        ],
        String::new(),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dmarc=fail                      1"), "{out}");
    assert!(out.contains("dmarc=pass                      1"), "{out}");
    assert!(out.contains("quarantined           1"), "{out}");
}

#[tokio::test]
async fn checks_that_outlast_the_deadline_are_temperror_and_the_mail_is_stored() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Each query would wait 5 x 200ms; the mail's checks get 300ms.
    let config = auth_config(&silent.local_addr().unwrap().to_string(), "").replace(
        "timeout = \"500ms\"\nattempts = 1",
        "timeout = \"200ms\"\nattempts = 5\ndeadline = \"300ms\"",
    );
    assert!(config.contains("deadline"));
    let gw = Gateway::start_with("auth_deadline", &redis_url(), &config).await;
    let id = post(
        &gw,
        &mail("ann@customer.test", "Slow DNS", "hi"),
        "ann@customer.test",
        Some("127.0.0.1"),
    )
    .await;
    let (stream, envelope) = stored(&gw, &id).await;
    let auth = auth_of(&envelope);
    assert_eq!(auth["spf"]["result"], "temperror", "{auth}");
    assert_eq!(auth["dmarc"]["result"], "temperror");
    assert!(
        auth["notes"].to_string().contains("auth.deadline"),
        "{auth}"
    );
    assert_eq!(stream, "desk");
    drop(silent);
    gw.stop().await;
}
