//! The rules' unit tests: loading (the shipped set, problems named by
//! file, line and key), keys, and allow, block and match lists over
//! several identities. A file of their own: they outgrew the module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::guard::facts::Facts;

fn load(text: &str) -> Result<RuleSet, LoadError> {
    RuleSet::from_texts(&[(PathBuf::from("rules/10-test.toml"), text.to_string())])
}

#[test]
fn the_shipped_rules_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = RuleSet::load_dir(&dir).unwrap_or_else(|e| panic!("shipped rules invalid:\n{e}"));
    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    for expected in [
        "one-customer-mail",
        "form-per-network",
        "auto-replies",
        "global-valve",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} is shipped: {names:?}"
        );
    }
    assert!(
        set.rules
            .iter()
            .find(|r| r.name == "global-valve")
            .unwrap()
            .shadow,
        "the valve ships in shadow"
    );
}

#[test]
fn a_burst_the_limiter_cannot_hold_is_a_problem_not_a_panic() {
    // Found by the `rules` fuzz target: this set loaded, and the
    // limiter then overflowed its nanoseconds on the first item.
    let err = load(
            "[[rule]]\nname = \"slow\"\nkey = [\"global\"]\nrate = \"1/365d\"\nburst = 4294967295\naction = \"reject\"\n",
        )
        .unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].key.as_deref(), Some("rule[0] (slow).burst"));
    assert!(err.0[0].message.contains("10 years"), "{err}");

    // The slowest set that loads counts items without overflowing.
    let set = load(
            "[[rule]]\nname = \"slow\"\nkey = [\"global\"]\nrate = \"1/365d\"\nburst = 10\naction = \"reject\"\n",
        )
        .expect("ten years to refill is allowed");
    let rule = &set.rules[0];
    let limiter = crate::guard::limiter::LocalLimiter::new(
        &rule.name,
        rule.quota.unwrap().rate,
        rule.quota.unwrap().burst,
        rule.max_keys,
        &crate::guard::limiter::LimiterClock::Live,
    );
    for _ in 0..10 {
        assert_eq!(limiter.check("k"), crate::guard::limiter::Decision::Allowed);
    }
    assert!(matches!(
        limiter.check("k"),
        crate::guard::limiter::Decision::Limited { .. }
    ));
}

#[test]
fn a_rule_file_compiles() {
    let set = load(
        r#"
[[rule]]
name = "one-customer-mail"
match = { channel = "email" }
key = ["sender"]
rate = "6/h"
burst = 5
action = "collapse"
scope = "cluster"

[[allow]]
name = "staff"
senders = ["*@shop.example"]
networks = ["10.0.0.0/8"]

[dedupe]
window = "12h"
similarity = 0.8
"#,
    )
    .expect("valid");
    assert_eq!(set.rules.len(), 1);
    assert_eq!(set.rules[0].quota.unwrap().burst, 5);
    assert_eq!(set.rules[0].scope, Scope::Cluster);
    assert_eq!(set.rules[0].origin, "rules/10-test.toml:3");
    assert_eq!(set.allow.len(), 1);
    assert_eq!(set.dedupe.window, Duration::from_secs(12 * 3600));
    assert_eq!(set.dedupe.max_distance, 12);
}

#[test]
fn a_bad_value_names_file_line_and_key() {
    let err =
        load("[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"10/x\"\naction = \"reject\"\n")
            .expect_err("bad rate");
    let text = err.to_string();
    assert!(
        text.starts_with("rules/10-test.toml:4:"),
        "file and line: {text}"
    );
    assert!(text.contains("rule[0].rate"), "key: {text}");
    assert!(text.contains("10/h"), "how to write it: {text}");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let err = load("[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"tag\"\nshadoww = true\n")
            .expect_err("typo");
    let text = err.to_string();
    assert!(text.contains(":6:") && text.contains("shadoww"), "{text}");
}

#[test]
fn every_semantic_problem_is_reported_at_once() {
    let err = load(
        r#"
[[rule]]
name = "dup"
key = []
rate = "1/h"
burst = 0
action = "reject"
[[rule]]
name = "dup"
key = ["ip"]
rate = "1/h"
action = "reject"
ipv4_prefix = 40
"#,
    )
    .expect_err("invalid");
    assert_eq!(err.0.len(), 4, "key, burst, duplicate name, prefix: {err}");
    assert!(err.0.iter().all(|p| p.line.is_some()), "lines given: {err}");
}

#[test]
fn keys_combine_parts_and_networks() {
    let set = load("[[rule]]\nname = \"n\"\nkey = [\"ip_prefix\", \"form\"]\nrate = \"1/h\"\naction = \"reject\"\n").unwrap();
    let mut env = crate::guard::tests::form_envelope("ann@example.com", "203.0.113.77");
    env.customer.email = Some("Ann+x@Example.com".into());
    let facts = Facts::of(&env);
    assert_eq!(
        set.rules[0].keys_of(&facts),
        ["ip_prefix=203.0.113.0/24|form=contact"]
    );
}

/// A form-channel envelope from `customer`, with more `From:` addresses.
fn with_from(customer: &str, from: &[&str]) -> crate::envelope::Envelope {
    let mut env = crate::guard::tests::form_envelope(customer, "203.0.113.77");
    env.headers.push(crate::envelope::Header {
        name: "From".into(),
        value: from.join(", "),
    });
    env
}

#[test]
fn a_sender_key_has_one_key_per_identity_and_the_other_parts_stay() {
    let set = load(
            "[[rule]]\nname = \"n\"\nkey = [\"sender\", \"form\"]\nrate = \"1/h\"\naction = \"reject\"\n\
             [[rule]]\nname = \"d\"\nkey = [\"sender_domain\"]\nrate = \"1/h\"\naction = \"reject\"\n\
             [[rule]]\nname = \"g\"\nkey = [\"global\"]\nrate = \"1/h\"\naction = \"reject\"\n",
        )
        .unwrap();
    let env = with_from(
        "Ann+1@Example.com",
        &["decoy@x.example", "\u{0430}nn@example.com", "bob@x.example"],
    );
    let facts = Facts::of(&env);
    assert_eq!(
        set.rules[0].keys_of(&facts),
        [
            "sender=ann@example.com|form=contact",
            "sender=decoy@x.example|form=contact",
            "sender=bob@x.example|form=contact",
        ],
        "the Cyrillic lookalike of ann is ann's key, counted once"
    );
    assert_eq!(
        set.rules[1].keys_of(&facts),
        ["sender_domain=example.com", "sender_domain=x.example"],
        "one key per distinct domain"
    );
    assert_eq!(set.rules[2].keys_of(&facts), ["global=*"]);
}

#[test]
fn an_item_with_too_many_identities_also_charges_one_shared_bucket() {
    let set =
        load("[[rule]]\nname = \"n\"\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"reject\"\n")
            .unwrap();
    let decoys: Vec<String> = (0..40).map(|i| format!("decoy{i}@x.example")).collect();
    let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
    let env = with_from("ann@example.com", &decoys);
    let facts = Facts::of(&env);
    let keys = set.rules[0].keys_of(&facts);
    assert_eq!(keys.len(), crate::guard::facts::MAX_IDENTITIES + 1);
    assert_eq!(keys[0], "sender=ann@example.com");
    assert_eq!(keys.last().unwrap(), "sender=many-identities");
}

#[test]
fn an_item_without_a_sender_keys_on_a_dash() {
    let set = load(
        "[[rule]]\nname = \"n\"\nkey = [\"sender\", \"ip\"]\nrate = \"1/h\"\naction = \"reject\"\n",
    )
    .unwrap();
    let mut env = crate::guard::tests::form_envelope("ann@example.com", "203.0.113.77");
    env.customer.email = None;
    assert_eq!(
        set.rules[0].keys_of(&Facts::of(&env)),
        ["sender=-|ip=203.0.113.77"]
    );
}

const LISTS: &str = "[[allow]]\nname = \"staff\"\nsenders = [\"*@shop.example\"]\n\
        [[block]]\nname = \"spam\"\ndomains = [\"*.spam.example\", \"spam.example\"]\n\
        [[allow]]\nname = \"office\"\nnetworks = [\"203.0.113.0/24\"]\n";

#[test]
fn an_allow_list_needs_every_identity_listed_exactly() {
    let set = load(LISTS).unwrap();
    let staff = &set.allow[0];
    let env = with_from("anna@shop.example", &["Anna <anna@Shop.Example>"]);
    assert!(staff.allows(&Facts::of(&env)), "staff alone is allowed");
    let env = with_from(
        "ann@example.com",
        &["staff@shop.example", "ann@example.com"],
    );
    assert!(
        !staff.allows(&Facts::of(&env)),
        "a forged extra From: staff@shop.example opens nothing"
    );
    let env = with_from("staff@sh\u{043E}p.example", &[]);
    assert!(
        !staff.allows(&Facts::of(&env)),
        "a lookalike of the staff domain is not staff"
    );
    let mut env = with_from("x@example.com", &[]);
    env.customer.email = None;
    assert!(
        !staff.allows(&Facts::of(&env)),
        "no identity is not every identity"
    );
    let decoys: Vec<String> = (0..20).map(|i| format!("s{i}@shop.example")).collect();
    let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
    let env = with_from("anna@shop.example", &decoys);
    assert!(
        !staff.allows(&Facts::of(&env)),
        "identities left unread may be anyone's"
    );
    let env = with_from("ann@example.com", &[]);
    assert!(
        set.allow[1].allows(&Facts::of(&env)),
        "a listed network allows whatever the addresses"
    );
}

#[test]
fn a_block_list_holds_when_any_identity_or_its_lookalike_is_listed() {
    let set = load(LISTS).unwrap();
    let spam = &set.block[0];
    let env = with_from("ann@example.com", &["x@mail.spam.example"]);
    assert!(spam.blocks(&Facts::of(&env)), "a second From is enough");
    let env = with_from("x@sp\u{0430}m.example", &[]);
    assert!(
        spam.blocks(&Facts::of(&env)),
        "a Cyrillic lookalike is blocked"
    );
    let env = with_from("ann@example.com", &["bob@example.org"]);
    assert!(!spam.blocks(&Facts::of(&env)));
}

#[test]
fn a_match_holds_when_any_identity_matches() {
    let set = load(
            "[[rule]]\nname = \"n\"\nmatch = { senders = [\"*@watch.example\"] }\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"reject\"\n",
        )
        .unwrap();
    let rule = &set.rules[0];
    let env = with_from("ann@example.com", &["x@w\u{0430}tch.example"]);
    assert!(
        rule.matcher.matches(&Facts::of(&env)),
        "the lookalike in From"
    );
    let env = with_from("ann@example.com", &["x@elsewhere.example"]);
    assert!(!rule.matcher.matches(&Facts::of(&env)));
}
