//! Dedupe's unit tests: fingerprints stable across releases, near
//! duplicates close and others far, and reservations that a crash, a
//! re-read or a release leaves behind. A file of their own: they outgrew
//! the module.

use super::fingerprint::{numbers, simhash, strip_html, strip_reply_prefixes, Words};
use super::*;
use crate::guard::rules::Dedupe;
use crate::guard::store::short_digest;
use crate::submission::ReceiptId;

fn words(text: &str) -> Words {
    Words::of(text.lines())
}

/// Fingerprints are keys in Redis that outlive a release: these
/// values were taken from the first implementation (one `String` per
/// word), so an upgrade keeps folding duplicates across it.
#[test]
fn fingerprints_are_stable_across_releases() {
    #[rustfmt::skip]
        let cases: [(&str, &str, &str, u64, u32, usize); 6] = [
            ("Re: Order 12345", "Hello, my order 12345 has not arrived yet.\r\nWhere is it? I paid 49.99 two weeks ago.\r\n> quoted 777 line\r\nThanks", "8614450f0ff09e3c", 0x69d6c0142040157d, 0x5994471a, 22),
            ("", "thanks!", "a6a2729cbf6bcadc", 0x62be8d2f431c3e38, 0xe3b0c442, 1),
            ("Ünïcödé SUBJECT", "ΟΔΟΣ Σίγμα ΑΣ'Β straße İstanbul 0042 0042 123\n\n  > x\nMIXED Case wOrDs", "47221500da5960a9", 0x52135c69a51df9d6, 0x8bb3c1ad, 14),
            ("subj\r", "\nbody starts after newline 987654", "b096c5c357d5bfb0", 0x040917823e5aea51, 0x2a8610ae, 6),
            ("only subject", "", "01a0178a7e425b49", 0x0560088da800da9b, 0xe3b0c442, 2),
            ("a\nb", "c d e f g h i j k l", "3208653009db03a7", 0x8842d17ece116757, 0xe3b0c442, 12),
        ];
    for (subject, body, content, hash, digits, count) in cases {
        // As `fingerprint` reads them: the subject's lines, then the body's.
        let words = Words::of(subject.lines().chain(body.lines()));
        assert_eq!(words.len(), count, "{subject:?}");
        assert_eq!(
            short_digest(words.joined().as_bytes()),
            content,
            "{subject:?}"
        );
        assert_eq!(simhash(&words), hash, "{subject:?}");
        assert_eq!(numbers(&words), digits, "{subject:?}");
    }
    // Long enough (698 shingles) that the bit counters are drained
    // mid-way; the value is from the same first implementation.
    let vocabulary = [
        "order", "parcel", "refund", "where", "is", "my", "delivery", "late", "again", "please",
        "help", "thanks",
    ];
    let long: Vec<String> = (0..700)
        .map(|i| {
            let word = vocabulary[(i * 7 + i / 5) % vocabulary.len()];
            match i % 50 {
                0 => format!("{word}{}", 1000 + i),
                _ => word.to_string(),
            }
        })
        .collect();
    let words = Words::of(std::iter::once(long.join(" ").as_str()));
    assert_eq!(words.len(), 700);
    assert_eq!(simhash(&words), 0xb64a_f3ed_42d4_bbee);
    assert_eq!(short_digest(words.joined().as_bytes()), "0bd97c70d35a1d69");
}

#[test]
fn near_duplicate_texts_have_close_simhashes() {
    let a = simhash(&words("Hello, my order 12345 has not arrived yet. Where is it? I paid two weeks ago and nobody answers."));
    let b = simhash(&words("Hello my order 12345 has not arrived yet!!! Where is it? I paid two weeks ago and nobody answers"));
    let c = simhash(&words("Please cancel my subscription to the newsletter and delete my account, thank you very much."));
    assert_eq!(
        (a ^ b).count_ones(),
        0,
        "punctuation and case do not matter"
    );
    let d = simhash(&words("Hello, my order 12345 has not arrived yet. Where is it? I paid two weeks ago and still nobody answers."));
    assert!(
        (a ^ d).count_ones() <= 12,
        "one word more stays close: {}",
        (a ^ d).count_ones()
    );
    assert!(
        (a ^ c).count_ones() > 12,
        "different texts are far apart: {}",
        (a ^ c).count_ones()
    );
}

#[test]
fn quoted_lines_and_reply_prefixes_are_ignored() {
    assert_eq!(strip_reply_prefixes("Re: AW: Fwd: order"), "order");
    let kept = words("new text\n> old quoted text");
    assert_eq!(kept.iter().collect::<Vec<_>>(), ["new", "text"]);
    assert_eq!(kept.joined(), "new text");
    assert_eq!(
        strip_html("<p>Hi <b>there</b></p>")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["Hi", "there"]
    );
}

fn fp(attempt: Option<&str>) -> Fingerprint {
    Fingerprint {
        customer: "c".into(),
        others: vec![],
        message_id: Some("m".into()),
        content: "t".into(),
        simhash: 7,
        numbers: 0,
        comparable: true,
        attempt: attempt.map(str::to_string),
    }
}

#[tokio::test]
async fn a_re_read_of_the_same_mail_is_not_folded_into_its_own_unstored_attempt() {
    let store = DedupeStore::memory();
    let settings = Dedupe::default();
    let first = ReceiptId::new();
    // A replica reserved the mail, then died before its write.
    let dead = fp(Some("imap-key"));
    assert_eq!(
        store
            .reserve("c", Some(&dead), &settings, first, 1000, 5000)
            .await
            .unwrap(),
        Reserve::Reserved
    );
    // Nothing is folded into it: it may never be stored.
    let other = fp(Some("another-key"));
    assert_eq!(store.lookup(&other, &settings, 2000).await.unwrap(), None);
    assert_eq!(store.last("c", 2000).await.unwrap(), None);
    // Another mail with the same text waits for it rather than fold.
    assert_eq!(
        store
            .reserve("c", Some(&other), &settings, ReceiptId::new(), 2000, 5000)
            .await
            .unwrap(),
        Reserve::Pending
    );
    // The survivor re-reads the same mail (same idempotency key): it
    // takes the reservation over at once and stores it.
    let again = fp(Some("imap-key"));
    let second = ReceiptId::new();
    assert_eq!(
        store
            .reserve("c", Some(&again), &settings, second, 2000, 5000)
            .await
            .unwrap(),
        Reserve::Reserved,
        "its own earlier attempt does not hold it up"
    );
    store
        .confirm("c", Some(&again), &settings, second, 2100)
        .await
        .unwrap();
    // Real duplicates (another mail with that Message-ID) now fold into
    // the stored item.
    assert_eq!(
        store.lookup(&other, &settings, 3000).await.unwrap(),
        Some((second, Kind::Exact))
    );
    assert_eq!(
        store.lookup(&fp(None), &settings, 3000).await.unwrap(),
        Some((second, Kind::Exact))
    );
    assert_eq!(
        store
            .reserve("c", Some(&other), &settings, ReceiptId::new(), 3000, 5000)
            .await
            .unwrap(),
        Reserve::Folded(second)
    );
    assert_eq!(store.last("c", 3000).await.unwrap(), Some(second));
}

#[tokio::test]
async fn a_reservation_left_by_a_crash_expires_and_is_never_folded_into() {
    let store = DedupeStore::memory();
    let settings = Dedupe::default();
    let dead = ReceiptId::new();
    store
        .reserve("c", Some(&fp(Some("a"))), &settings, dead, 1000, 5000)
        .await
        .unwrap();
    let next = fp(Some("b"));
    assert_eq!(
        store
            .reserve("c", Some(&next), &settings, ReceiptId::new(), 3000, 5000)
            .await
            .unwrap(),
        Reserve::Pending,
        "within its lifetime the reservation holds"
    );
    let later = ReceiptId::new();
    assert_eq!(
        store
            .reserve("c", Some(&next), &settings, later, 6001, 5000)
            .await
            .unwrap(),
        Reserve::Reserved,
        "once expired it is taken over"
    );
    store
        .confirm("c", Some(&next), &settings, later, 6002)
        .await
        .unwrap();
    assert_eq!(
        store.lookup(&fp(Some("c")), &settings, 7000).await.unwrap(),
        Some((later, Kind::Exact)),
        "folds go to the stored item, never the dead one"
    );
}

#[tokio::test]
async fn a_released_reservation_lets_the_next_item_through() {
    let store = DedupeStore::memory();
    let settings = Dedupe::default();
    let failed = ReceiptId::new();
    let first = fp(Some("a"));
    store
        .reserve("c", Some(&first), &settings, failed, 1000, 5000)
        .await
        .unwrap();
    store.release("c", Some(&first), failed).await.unwrap();
    assert_eq!(
        store
            .reserve(
                "c",
                Some(&fp(Some("b"))),
                &settings,
                ReceiptId::new(),
                1001,
                5000
            )
            .await
            .unwrap(),
        Reserve::Reserved
    );
}
