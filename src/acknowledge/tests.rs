//! The decisions, the templates and the mail, without Redis or a relay
//! (those are in tests/acknowledge.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::config::AcknowledgeConfig;
use super::decide::{glob, network_of, preferred_language, Decision, Skip};
use super::template::{load_dir, load_language, Escape, Template};
use super::Acknowledger;
use crate::envelope::{Envelope, Source};
use crate::parse::{parse, ParseOptions};
use crate::submission::{Payload, Submission};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/acknowledge")
}

fn config(extra: &str) -> AcknowledgeConfig {
    let text = format!(
        "from = \"Soporte <support@shop.test>\"\ntemplates = \"{}\"\n{extra}\n[relay]\nhost = \"127.0.0.1\"\ntls = \"none\"\n",
        shipped().display()
    );
    toml::from_str(&text).expect("config parses")
}

fn acknowledger(extra: &str, auth: bool) -> Acknowledger {
    Acknowledger::new(&config(extra), auth).expect("shipped templates load")
}

fn mail_from(source: Source, raw: &str) -> Envelope {
    let submission = Submission::new(
        source,
        Payload::Mail(Bytes::from(raw.replace('\n', "\r\n"))),
    );
    parse(
        submission,
        ParseOptions {
            form: None,
            keep_raw: false,
        },
    )
    .expect("mail parses")
    .envelope
}

fn lmtp(sender: &str) -> Source {
    Source::Lmtp {
        sender: sender.into(),
        recipients: vec!["support@support.shop.example".into()],
        ip: "127.0.0.1".into(),
        client: None,
    }
}

fn mail(headers: &str) -> Envelope {
    mail_from(
        lmtp("ann@customer.test"),
        &format!(
            "From: Ann Example <ann@customer.test>\nTo: support@shop.test\nSubject: Pedido 1234 sin llegar\nMessage-ID: <m1@customer.test>\nReferences: <r0@shop.test>\n{headers}\nWhere is my parcel?\n"
        ),
    )
}

fn skip_of(ack: &Acknowledger, envelope: &Envelope) -> Option<Skip> {
    match ack.decide("message", envelope) {
        Decision::Send(_) => None,
        Decision::Skip(skip) => Some(skip),
    }
}

#[test]
fn a_person_s_mail_is_acknowledged_in_the_default_language() {
    let ack = acknowledger("", false);
    let Decision::Send(plan) = ack.decide("message", &mail("")) else {
        panic!("a customer's mail is acknowledged");
    };
    assert_eq!(plan.to, "ann@customer.test");
    assert_eq!(plan.language, "es");
    assert_eq!(plan.network, None);
}

#[test]
fn robots_lists_loops_and_bounces_are_not_answered() {
    let ack = acknowledger("", false);
    let cases: &[(&str, &str)] = &[
        ("Auto-Submitted: auto-replied\n", "auto_submitted"),
        (
            "Auto-Submitted: auto-generated; owner-email=x@y\n",
            "auto_submitted",
        ),
        ("Precedence: bulk\n", "auto_submitted"),
        ("Precedence: junk\n", "auto_submitted"),
        ("List-Id: <news.customer.test>\n", "list"),
        ("List-Unsubscribe: <mailto:u@customer.test>\n", "list"),
        ("X-Auto-Response-Suppress: All\n", "suppress_requested"),
        (
            "X-Auto-Response-Suppress: DR, AutoReply\n",
            "suppress_requested",
        ),
        ("X-Loop: support@shop.test\n", "loop"),
        ("X-Autoreply: yes\n", "auto_submitted"),
    ];
    for (header, reason) in cases {
        let skip = skip_of(&ack, &mail(header)).unwrap_or_else(|| panic!("{header} is answered"));
        assert_eq!(skip.reason(), *reason, "{header}");
    }
    // Auto-Submitted: no is a person.
    assert_eq!(skip_of(&ack, &mail("Auto-Submitted: no\n")), None);
    // A delivery status report, known from its content type at parse.
    let report = mail("Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n--b\nContent-Type: text/plain\n\nundeliverable\n--b--\n");
    assert_eq!(
        skip_of(&ack, &report).map(|s| s.reason()),
        Some("auto_submitted")
    );

    let bounce = mail_from(lmtp(""), "From: ann@customer.test\nSubject: x\n\nbody\n");
    assert_eq!(skip_of(&ack, &bounce), Some(Skip::NullSender));
    for robot in [
        "MAILER-DAEMON",
        "postmaster",
        "noreply",
        "no-reply",
        "shop-noreply",
        "bounces+123",
    ] {
        let envelope = mail_from(
            lmtp(&format!("{robot}@customer.test")),
            &format!("From: {robot}@customer.test\nSubject: x\n\nbody\n"),
        );
        assert_eq!(
            skip_of(&ack, &envelope).map(|s| s.reason()),
            Some("role_address"),
            "{robot}"
        );
    }
    let own = mail_from(
        lmtp("support@shop.test"),
        "From: support@shop.test\nSubject: x\n\nbody\n",
    );
    assert_eq!(skip_of(&ack, &own), Some(Skip::OwnAddress));
    assert_eq!(
        ack.decide("collapsed", &mail("")),
        Decision::Skip(Skip::NotMessage("collapsed".into()))
    );
}

#[test]
fn with_auth_only_aligned_senders_are_answered() {
    let ack = acknowledger("", true);
    assert!(ack.policy.authenticated_only());
    let mut envelope = mail("");
    assert_eq!(skip_of(&ack, &envelope), Some(Skip::Unauthenticated));
    envelope.auth = Some(crate::envelope::Auth {
        aligned_from: true,
        ..Default::default()
    });
    assert_eq!(skip_of(&ack, &envelope), None);
    let off = acknowledger("authenticated_only = false", true);
    assert_eq!(skip_of(&off, &mail("")), None);
}

#[test]
fn doors_are_switched_and_forms_are_off_unless_asked() {
    let form = |accept: Option<&str>| Envelope {
        source: Source::Form {
            form: "contact".into(),
            ip: "203.0.113.9".into(),
            user_agent: None,
            origin: None,
            referer: None,
            accept_language: accept.map(String::from),
        },
        customer: crate::envelope::Customer {
            email: Some("bea@customer.test".into()),
            ..Default::default()
        },
        ..mail("")
    };
    let ack = acknowledger("", false);
    assert_eq!(skip_of(&ack, &form(None)).map(|s| s.reason()), Some("off"));
    let on = acknowledger(
        "[[override]]\nform = \"contact\"\nenabled = true\n[[override]]\nlmtp_domain = \"support.shop.example\"\nenabled = false\n",
        false,
    );
    let Decision::Send(plan) = on.decide("message", &form(Some("fr-CH, en-GB;q=0.8, es;q=0.5")))
    else {
        panic!("the form is on");
    };
    assert_eq!(plan.language, "en", "the first language with a template");
    assert_eq!(plan.network.as_deref(), Some("203.0.113.0/24"));
    assert_eq!(skip_of(&on, &mail("")).map(|s| s.reason()), Some("off"));
}

#[test]
fn a_language_without_a_template_is_refused_at_start() {
    let Err(error) = Acknowledger::new(&config("language = \"pt\""), false) else {
        panic!("pt has no template");
    };
    assert!(error.contains("no template for pt"), "{error}");
    assert!(error.contains("pt.txt"), "{error}");
}

#[test]
fn template_mistakes_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |body: &str| {
        let path = dir.path().join("es.txt");
        std::fs::write(&path, body).unwrap();
        load_language(&path).expect_err("the template is refused")
    };
    let unknown = write("Subject: Re: {{subject}}\n\nHola\n{{nombre}}\n");
    assert_eq!(unknown.line, 4);
    assert!(
        unknown.message.contains("unknown variable `nombre`"),
        "{unknown}"
    );
    assert!(unknown
        .to_string()
        .starts_with(&format!("{}:4:", dir.path().join("es.txt").display())));
    let open = write("Subject: x\n\nline\n{{#ticket}} n.º {{ticket}}\n");
    assert_eq!(open.line, 4);
    assert!(open.message.contains("not closed"), "{open}");
    let crossed = write("Subject: x\n\n{{#ticket}}{{/name}}\n");
    assert!(crossed.message.contains("closes `ticket`"), "{crossed}");
    let no_subject = write("Hola\n\ntext\n");
    assert_eq!(no_subject.line, 1);
    let unclosed = write("Subject: {{subject\n\ntext\n");
    assert_eq!(unclosed.line, 1);
    let empty = write("Subject: x\n\n\n");
    assert!(empty.message.contains("empty"), "{empty}");
}

#[test]
fn sections_and_escaping() {
    let t = Template::parse(
        "Hola{{#name}} {{name}}{{/name}}{{^ticket}}, sin ticket{{/ticket}}",
        Path::new("t"),
        1,
    )
    .unwrap();
    let mut vars = BTreeMap::new();
    assert_eq!(t.render(&vars, Escape::None), "Hola, sin ticket");
    vars.insert("name", "<Ann & Bo>".to_string());
    vars.insert("ticket", "12".to_string());
    assert_eq!(t.render(&vars, Escape::Html), "Hola &lt;Ann &amp; Bo&gt;");
    assert_eq!(t.render(&vars, Escape::None), "Hola <Ann & Bo>");
}

#[test]
fn the_shipped_templates_load() {
    let all = load_dir(&shipped()).expect("shipped templates load");
    assert_eq!(all.keys().cloned().collect::<Vec<_>>(), ["en", "es"]);
    assert!(all.values().all(|t| t.html.is_some()));
}

#[test]
fn the_mail_threads_under_the_customer_s_and_says_it_is_automatic() {
    let ack = acknowledger("", false);
    let envelope = mail("");
    let Decision::Send(plan) = ack.decide("message", &envelope) else {
        panic!("acknowledged");
    };
    let composed = ack.compose(&envelope, &plan, Some("77".into())).unwrap();
    let receipt = envelope.id.to_string();
    assert_eq!(composed.message_id, format!("ack.{receipt}@shop.test"));
    assert_eq!(composed.to, "ann@customer.test");
    let parsed = mail_parser::MessageParser::default()
        .parse(&composed.mail)
        .expect("the acknowledgement parses");
    let header = |name: &str| {
        parsed
            .headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(header("Auto-Submitted"), "auto-replied");
    assert_eq!(header("X-Loop"), "support@shop.test");
    assert_eq!(header("X-Auto-Response-Suppress"), "All");
    assert_eq!(header("In-Reply-To"), "<m1@customer.test>");
    assert_eq!(header("References"), "<r0@shop.test> <m1@customer.test>");
    assert_eq!(header("Message-ID"), format!("<ack.{receipt}@shop.test>"));
    assert_eq!(
        parsed.subject(),
        Some(format!("Re: Pedido 1234 sin llegar [ref. {receipt}]").as_str())
    );
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains(&format!("Su referencia es {receipt} (solicitud n.º 77)")),
        "{text}"
    );
    assert!(parsed.body_html(0).unwrap().contains("<strong>"));
}

#[test]
fn helpers() {
    assert!(glob("*-noreply", "shop-noreply"));
    assert!(glob("noreply-*", "noreply-7"));
    assert!(!glob("noreply", "noreplyx"));
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b*c", "axxc"));
    let languages: BTreeSet<String> = ["en".to_string(), "es".to_string()].into();
    assert_eq!(
        preferred_language("es-ES,es;q=0.9", &languages).as_deref(),
        Some("es")
    );
    assert_eq!(preferred_language("de;q=1, en;q=0", &languages), None);
    assert_eq!(network_of("2001:db8:1:2::7"), "2001:db8:1::/48");
}

#[test]
fn config_mistakes_name_their_key() {
    let bad: AcknowledgeConfig = toml::from_str(
        "from = \"not an address\"\nwindow = \"10s\"\nlanguage = \"es_ES\"\n[relay]\nhost = \"smtp.example.com\"\ntls = \"none\"\nusername = \"u\"\n[[override]]\nform = \"contact\"\nmailgate = true\n",
    )
    .unwrap();
    let problems = crate::validate::problems_of(&bad, "acknowledge").join("\n");
    for key in [
        "acknowledge.from",
        "acknowledge.window",
        "acknowledge.language",
        "acknowledge.relay.tls",
        "acknowledge.relay: username and password",
        "acknowledge.override[0]",
    ] {
        assert!(problems.contains(key), "{key} in:\n{problems}");
    }
    assert!(crate::validate::problems_of(&config(""), "acknowledge").is_empty());
}
