//! The stage's decisions without DNS: which verdicts win, alignment,
//! the ARC override, own domains, the header intake writes.

use super::*;
use crate::envelope::{Address, DmarcPolicy, SmtpClient};

fn config(toml_text: &str) -> AuthConfig {
    toml::from_str(toml_text).expect("auth config")
}

fn mail(source: Source, from: &str, headers: &[(&str, &str)]) -> Envelope {
    let mut envelope = crate::guard::tests::form_envelope(from, "198.51.100.7");
    envelope.channel = crate::envelope::Channel::Email;
    envelope.source = source;
    envelope.from = Some(Address {
        email: from.into(),
        name: None,
    });
    envelope.headers = headers
        .iter()
        .map(|(n, v)| Header {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect();
    envelope
}

fn imap() -> Source {
    Source::Imap {
        account: "support@shop.test".into(),
        mailbox: "INBOX".into(),
        uidvalidity: 1,
        uid: 1,
    }
}

#[tokio::test]
async fn header_only_mode_reads_the_topmost_trusted_header_and_ignores_the_rest() {
    let stage = Authenticator::new(config(
        "verify = false\ntrusted_authserv_ids = ['mx.shop.test']",
    ))
    .unwrap();
    let forged = mail(
        imap(),
        "ann@customer.test",
        &[(
            "Authentication-Results",
            "attacker.example; dmarc=pass header.from=customer.test",
        )],
    );
    let auth = stage.check(&forged, b"").await;
    assert!(!auth.aligned_from);
    assert!(auth.dmarc.is_none(), "{auth:?}");

    let genuine = mail(
        imap(),
        "ann@customer.test",
        &[
            (
                "Authentication-Results",
                "mx.shop.test; dkim=pass header.d=customer.test header.s=dev; spf=pass smtp.mailfrom=ann@customer.test; dmarc=pass policy.dmarc=reject header.from=customer.test",
            ),
            (
                "Authentication-Results",
                "mx.shop.test; dmarc=fail header.from=customer.test",
            ),
        ],
    );
    let auth = stage.check(&genuine, b"").await;
    assert_eq!(auth.from, AuthOrigin::TrustedHeader);
    assert_eq!(auth.authserv_id.as_deref(), Some("mx.shop.test"));
    assert!(auth.aligned_from);
    assert_eq!(
        auth.dmarc.as_ref().unwrap().policy,
        Some(DmarcPolicy::Reject)
    );
    assert_eq!(
        auth.spf.as_ref().unwrap().domain.as_deref(),
        Some("customer.test")
    );
    assert_eq!(auth.authenticated_domain.as_deref(), Some("customer.test"));
}

#[tokio::test]
async fn without_dmarc_a_passing_signature_of_a_parent_domain_aligns() {
    let stage = Authenticator::new(config(
        "verify = false\ntrusted_authserv_ids = ['mx.shop.test']",
    ))
    .unwrap();
    let envelope = mail(
        imap(),
        "ann@mail.example.com",
        &[(
            "Authentication-Results",
            "mx.shop.test; dkim=pass header.d=example.com; dmarc=none",
        )],
    );
    assert!(stage.check(&envelope, b"").await.aligned_from);
    let envelope = mail(
        imap(),
        "ann@customer.test",
        &[(
            "Authentication-Results",
            "mx.shop.test; dkim=pass header.d=bulk-sender.example",
        )],
    );
    let auth = stage.check(&envelope, b"").await;
    assert!(!auth.aligned_from);
    assert_eq!(
        auth.authenticated_domain.as_deref(),
        Some("bulk-sender.example")
    );
}

#[test]
fn alignment_never_reaches_a_top_level_domain() {
    assert!(aligns("example.com", "EXAMPLE.com"));
    assert!(aligns("mail.example.com", "example.com"));
    assert!(aligns("example.com", "a.b.example.com"));
    assert!(!aligns("com", "example.com"));
    assert!(!aligns("badexample.com", "example.com"));
    assert!(!aligns("example.com", "example.org"));
}

#[test]
fn a_trusted_arc_sealer_that_saw_dmarc_pass_aligns_a_forwarded_mail() {
    let cfg = config("trusted_arc_sealers = ['forwarder.test']");
    let arc = |sealer: &str, dmarc: AuthResult| Auth {
        dmarc: Some(DmarcCheck {
            result: AuthResult::Fail,
            domain: Some("customer.test".into()),
            policy: Some(DmarcPolicy::Reject),
        }),
        arc: Some(ArcCheck {
            result: AuthResult::Pass,
            sealer: Some(sealer.into()),
            claims: [("dmarc".to_string(), dmarc)].into_iter().collect(),
        }),
        ..Auth::default()
    };
    let mut trusted = arc("forwarder.test", AuthResult::Pass);
    settle(&mut trusted, Some("customer.test"), &cfg);
    assert!(trusted.aligned_from);
    assert!(trusted.notes[0].contains("forwarder.test"));

    let mut unknown = arc("lists.example", AuthResult::Pass);
    settle(&mut unknown, Some("customer.test"), &cfg);
    assert!(!unknown.aligned_from);

    let mut failed_before = arc("forwarder.test", AuthResult::Fail);
    settle(&mut failed_before, Some("customer.test"), &cfg);
    assert!(!failed_before.aligned_from);
}

#[test]
fn own_domains_are_flagged_with_their_subdomains() {
    let cfg = config("own_domains = ['shop.test']");
    for (from, own) in [
        (Some("shop.test"), true),
        (Some("billing.shop.test"), true),
        (Some("shop.test.evil.example"), false),
        (None, false),
    ] {
        let mut auth = Auth::default();
        settle(&mut auth, from, &cfg);
        assert_eq!(auth.own_domain, own, "{from:?}");
    }
}

#[test]
fn the_smtp_client_comes_from_the_source_else_a_trusted_received_header() {
    let cfg = config("trusted_received = ['mx.shop.test']");
    let lmtp = mail(
        Source::Lmtp {
            sender: "ann@customer.test".into(),
            recipients: vec![],
            ip: "127.0.0.1".into(),
            client: Some(SmtpClient {
                address: Some("203.0.113.7".into()),
                helo: Some("mx.customer.test".into()),
            }),
        },
        "ann@customer.test",
        &[("Received", "from x (x [198.51.100.9]) by mx.shop.test")],
    );
    let smtp = smtp_of(&lmtp, &cfg);
    assert_eq!(smtp.client, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(smtp.helo.as_deref(), Some("mx.customer.test"));
    assert_eq!(smtp.mail_from.as_deref(), Some("ann@customer.test"));

    let from_imap = mail(
        imap(),
        "ann@customer.test",
        &[
            ("Return-Path", "<ann@customer.test>"),
            (
                "Received",
                "from mx.customer.test (mx.customer.test [198.51.100.9]) by mx.shop.test (Postfix)",
            ),
        ],
    );
    let smtp = smtp_of(&from_imap, &cfg);
    assert_eq!(smtp.client, Some("198.51.100.9".parse().unwrap()));
    assert_eq!(smtp.mail_from.as_deref(), Some("ann@customer.test"));

    let untrusted = config("");
    assert_eq!(smtp_of(&from_imap, &untrusted).client, None);
}

#[tokio::test]
async fn the_stored_headers_get_intakes_line_on_top_and_lose_forged_ones() {
    let stage = Authenticator::new(config(
        "authserv_id = 'intake.shop.test'\nverify = false\ntrusted_authserv_ids = ['mx.shop.test']",
    ))
    .unwrap();
    let mut envelope = mail(
        imap(),
        "ann@customer.test",
        &[
            ("Subject", "hi"),
            (
                "Authentication-Results",
                "intake.shop.test; dmarc=pass header.from=customer.test",
            ),
        ],
    );
    stage.authenticate(&mut envelope, b"").await;
    let results: Vec<&str> = envelope
        .headers
        .iter()
        .filter(|h| h.name == "Authentication-Results")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].starts_with("intake.shop.test; dkim=none"),
        "{}",
        results[0]
    );
    assert_eq!(envelope.headers[0].name, "Authentication-Results");
    assert!(!envelope.auth.unwrap().aligned_from);
}
