//! Rule files: TOML text to a checked rule set (src/guard/rules), then the
//! guard's decision for a mail and a form post under that set.
//!
//! The input is split into up to three files at lines `#--- next file`
//! (a TOML comment, so each seed is itself a valid rule file), to reach
//! the checks across files: unique names, one `[dedupe]` table.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use intake::config::Config;
use intake::envelope::Source;
use intake::guard::facts::{Facts, MAX_IDENTITIES};
use intake::guard::limiter::LimiterClock;
use intake::guard::rules::{Rate, RuleSet};
use intake::guard::Guard;
use intake::parse::{parse, Message, ParseOptions};
use intake::submission::{FormPost, Payload, Submission};
use intake::verdict::GuardVerdict;
use intake_fuzz::block_on;
use libfuzzer_sys::fuzz_target;

const SEPARATOR: &str = "#--- next file\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let texts: Vec<(PathBuf, String)> = text
        .splitn(3, SEPARATOR)
        .enumerate()
        .map(|(i, t)| {
            (
                PathBuf::from(format!("rules/{i}0-fuzz.toml")),
                t.to_string(),
            )
        })
        .collect();
    match RuleSet::from_texts(&texts) {
        Ok(set) => {
            check_set(&set);
            evaluate(set);
        }
        Err(error) => {
            assert!(!error.0.is_empty(), "a refused set names its problems");
            for problem in &error.0 {
                let text = &texts
                    .iter()
                    .find(|(path, _)| *path == problem.file)
                    .expect("a problem names one of the files")
                    .1;
                if let Some(line) = problem.line {
                    assert!(
                        line >= 1 && line <= text.lines().count().max(1) + 1,
                        "line {line} is in the file: {problem}"
                    );
                }
                assert!(
                    !problem.message.is_empty(),
                    "{problem:?} says what is wrong"
                );
            }
            assert!(!error.to_string().is_empty());
        }
    }
});

/// What a set that loaded promises.
fn check_set(set: &RuleSet) {
    for (i, rule) in set.rules.iter().enumerate() {
        assert!(
            !rule.name.is_empty()
                && rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "rule name {:?}",
            rule.name
        );
        assert!(
            set.rules[..i].iter().all(|r| r.name != rule.name),
            "names are unique"
        );
        assert!(rule.max_keys >= 1);
        assert!(rule.ipv4_prefix <= 32 && rule.ipv6_prefix <= 128);
        // A rule counts by a key and a quota, or acts on every item with
        // neither.
        assert_eq!(rule.key.is_empty(), rule.quota.is_none());
        if let Some(quota) = rule.quota {
            assert!(quota.burst >= 1);
            assert!(quota.rate.count >= 1 && !quota.rate.per.is_zero());
            // A rate reads back from how it is shown (`intake rules explain`).
            assert_eq!(Rate::parse(&quota.rate.to_string()), Ok(quota.rate));
        }
        assert!(!rule.quota_text().is_empty());
    }
    for list in set.allow.iter().chain(&set.block) {
        assert!(!(list.senders.is_empty() && list.domains.is_empty() && list.networks.is_empty()));
    }
    assert!((0.5..=1.0).contains(&set.dedupe.similarity));
    assert!(!set.dedupe.window.is_zero());
    assert!(set.dedupe.max_distance <= 64);
}

/// Two items through a guard with this set, twice each (the second time
/// past a burst of 1): the guard decides without error.
fn evaluate(set: RuleSet) {
    let guard = Guard::new(set, None, None, LimiterClock::Live);
    let rules = guard.rules();
    for template in samples() {
        let facts = Facts::of(&template.envelope);
        for rule in &rules.rules {
            let _ = rule.matcher.matches(&facts);
            let keys = rule.keys_of(&facts);
            assert!(
                !keys.is_empty() && keys.len() <= MAX_IDENTITIES + 1,
                "one key per identity, bounded: {keys:?}"
            );
            for key in &keys {
                assert_eq!(key.split('|').count(), rule.key.len(), "{key}");
            }
        }
        for _ in 0..2 {
            let mut message = template.clone();
            let checked =
                block_on(guard.check(&mut message)).expect("an in-memory guard always decides");
            if let GuardVerdict::Reject { retry_after, .. } = checked.verdict {
                assert!(!retry_after.is_zero(), "a refusal says when to retry");
            }
        }
    }
}

/// A customer's mail (with the headers rules look at) and a form post.
fn samples() -> &'static [Message] {
    static SAMPLES: OnceLock<Vec<Message>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let mail = Submission::new(
            Source::Mailgate {
                sender: Some("Ann+orders@Example.com".into()),
                recipients: vec!["support+order-1@shop.example".into()],
                ip: "203.0.113.9".into(),
                client: None,
            },
            Payload::Mail(Bytes::from_static(
                b"From: Ann <ann@example.com>\r\nTo: support@shop.example\r\n\
                  Subject: Where is my parcel?\r\nList-Id: <news.example.com>\r\n\
                  Message-ID: <1@example.com>\r\n\r\nHello, my order 1234 did not come.\r\n",
            )),
        );
        let options = ParseOptions {
            form: None,
            keep_raw: false,
        };
        let mail = parse(mail, options).expect("the sample mail parses");

        let config = Config::from_toml(
            "[redis]\nurl = \"redis://127.0.0.1:1\"\n[[form]]\nid = \"contact\"\n",
        )
        .expect("the sample form config loads");
        let mut post = FormPost::default();
        post.add_field("email".into(), "bob@example.org".into());
        post.add_field("message".into(), "Please call me back.".into());
        let form = Submission::new(
            Source::Form {
                form: "contact".into(),
                ip: "2001:db8::7".into(),
                user_agent: None,
                origin: None,
                referer: None,
                accept_language: None,
            },
            Payload::Form(post),
        );
        let options = ParseOptions {
            form: Some(&config.forms[0].fields()),
            keep_raw: false,
        };
        let form = parse(form, options).expect("the sample post parses");
        vec![mail, form]
    })
}
