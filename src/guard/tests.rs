//! The guard's unit tests, and `form_envelope`, the envelope the other
//! guard modules' tests build their items from. A file of their own: they
//! outgrew the module.

use super::*;
use crate::envelope::{AbuseReport, Channel, Customer, Envelope, ScanReport, Source};
use crate::parse::Message;
use std::path::PathBuf;

pub fn form_envelope(email: &str, ip: &str) -> Envelope {
    Envelope {
        version: 1,
        id: ReceiptId::new(),
        received_at: time::OffsetDateTime::now_utc(),
        channel: Channel::Form,
        source: Source::Form {
            form: "contact".into(),
            ip: ip.into(),
            user_agent: None,
            origin: None,
            referer: None,
            accept_language: None,
        },
        customer: Customer {
            email: Some(email.into()),
            ..Default::default()
        },
        from: None,
        to: vec![],
        cc: vec![],
        reply_to: vec![],
        subject: Some("Contact form".into()),
        date: None,
        message_id: None,
        in_reply_to: vec![],
        references: vec![],
        headers: vec![],
        text: Some("hello".into()),
        html: None,
        stripped_text: Some("hello".into()),
        stripped_signature: None,
        fields: Default::default(),
        attachments: vec![],
        scan: ScanReport::unscanned(),
        auth: None,
        abuse: AbuseReport::default(),
        raw: None,
    }
}

fn message(email: &str, text: &str) -> Message {
    let mut envelope = form_envelope(email, "198.51.100.7");
    envelope.text = Some(text.into());
    envelope.stripped_text = Some(text.into());
    Message {
        envelope,
        scan_targets: vec![],
        trap: None,
        mime: Default::default(),
        idempotency_key: None,
    }
}

fn guard(text: &str) -> Guard {
    let set = RuleSet::from_texts(&[(PathBuf::from("t.toml"), text.into())]).expect("valid rules");
    Guard::new(set, None, None, LimiterClock::Fake(Default::default()))
}

const TWO_PER_HOUR: &str = "[[rule]]\nname = \"per-sender\"\nkey = [\"sender\"]\nrate = \"2/h\"\nburst = 2\naction = \"ACTION\"\n";

#[tokio::test]
async fn strongest_action_wins_and_matches_are_recorded() {
    let rules = format!(
        "{}{}",
        TWO_PER_HOUR.replace("ACTION", "tag"),
        TWO_PER_HOUR
            .replace("ACTION", "reject")
            .replace("per-sender", "per-sender-hard")
    );
    let g = guard(&rules);
    for i in 0..2 {
        let mut m = message("ann@example.com", &format!("message number {i}"));
        assert_eq!(
            g.check(&mut m).await.unwrap().verdict,
            GuardVerdict::Pass,
            "within burst"
        );
    }
    let mut m = message("ANN+x@example.com", "a third, different message");
    let verdict = g.check(&mut m).await.unwrap().verdict;
    assert!(
        matches!(verdict, GuardVerdict::Reject { .. }),
        "reject beats tag: {verdict:?}"
    );
    assert_eq!(
        m.envelope.abuse.matched_rules,
        ["per-sender", "per-sender-hard"]
    );
    assert!(
        m.envelope.abuse.tags.contains(&"per-sender".to_string()),
        "the tag rule fired too"
    );
}

#[tokio::test]
async fn exact_duplicate_collapses_into_the_first_item() {
    let g = guard("");
    let mut first = message("ann@example.com", "Where is my parcel?");
    let mut checked = g.check(&mut first).await.unwrap();
    assert_eq!(checked.verdict, GuardVerdict::Pass);
    // Stored: reserved before its write, confirmed after.
    let receipt = first.envelope.id;
    assert_eq!(g.reserve(&mut checked.ticket, receipt).await.unwrap(), None);
    g.confirm(&checked.ticket, receipt).await;
    let mut again = message("ann@example.com", "Where is my parcel?");
    let checked = g.check(&mut again).await.unwrap();
    assert_eq!(
        checked.verdict,
        GuardVerdict::Collapse {
            into: first.envelope.id,
            rule: "dedupe-exact".into()
        }
    );
    let event = g
        .stored(&checked.ticket, again.envelope.id)
        .await
        .unwrap()
        .expect("an event");
    assert_eq!((event.into, event.count), (first.envelope.id, 1));
}

#[tokio::test]
async fn with_dedupe_off_and_no_collapse_rule_nothing_is_fingerprinted_or_folded() {
    let g = guard("[dedupe]\nexact = false\nnear_duplicates = false\n");
    for _ in 0..2 {
        let mut m = message("ann@example.com", "Where is my parcel?");
        let checked = g.check(&mut m).await.unwrap();
        assert_eq!(
            checked.verdict,
            GuardVerdict::Pass,
            "the same text twice passes"
        );
        assert!(
            checked.ticket.fingerprint.is_none() && !checked.ticket.remember,
            "nothing would read a fingerprint or reservation: {:?}",
            checked.ticket
        );
    }
    // A collapse rule still needs the customer's latest item, so that
    // is still recorded, with its fingerprint.
    let g = guard(&format!(
        "[dedupe]\nexact = false\nnear_duplicates = false\n{}",
        TWO_PER_HOUR.replace("ACTION", "collapse")
    ));
    let mut m = message("ann@example.com", "Where is my parcel?");
    let checked = g.check(&mut m).await.unwrap();
    assert!(checked.ticket.fingerprint.is_some() && checked.ticket.remember);
}

#[tokio::test]
async fn nothing_is_folded_into_an_item_that_was_reserved_but_never_stored() {
    let g = guard("");
    let mut first = message("ann@example.com", "Where is my parcel?");
    let mut checked = g.check(&mut first).await.unwrap();
    // Reserved, then the gateway died before the write: no confirm.
    g.reserve(&mut checked.ticket, first.envelope.id)
        .await
        .unwrap();
    let mut again = message("ann@example.com", "Where is my parcel?");
    let checked = g.check(&mut again).await.unwrap();
    assert_eq!(
        checked.verdict,
        GuardVerdict::Pass,
        "an unstored item is no fold target"
    );
}

#[tokio::test]
async fn shadow_rule_counts_without_acting() {
    let g = guard(&format!(
        "{}shadow = true\n",
        TWO_PER_HOUR.replace("ACTION", "reject")
    ));
    for i in 0..5 {
        let mut m = message("ann@example.com", &format!("text {i} differs"));
        assert_eq!(
            g.check(&mut m).await.unwrap().verdict,
            GuardVerdict::Pass,
            "shadow never acts"
        );
    }
}
