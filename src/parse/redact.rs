//! Card-number redaction (PCI DSS): payment card numbers a customer typed
//! into a message or form are masked before anything is stored, so the
//! desk, its database and its backups never hold them.
//!
//! A card number is a run of 13 to 19 ASCII digits, written whole or in
//! groups joined by single spaces or dashes, that passes the Luhn check.
//! It is masked in place, keeping its shape and its last four digits:
//! `4111 1111 1111 1111` becomes `**** **** **** 1111`, `4111111111111111`
//! becomes `************1111`. A digit run longer than 19 digits, or one
//! glued to further digits, is left whole: masking a piece of it would
//! mangle an order or tracking number and hide nothing.
//!
//! Redaction runs at the end of the parse stage, so every later stage (the
//! duplicate checks, the scanner's report, the sink) sees only masked text.
//! When it fired, the envelope's `raw` copy of the original message (which
//! still holds the number) is dropped and the item is tagged
//! [`TAG_REDACTED`] and, when `raw` went, [`TAG_RAW_DROPPED`].

use serde::Deserialize;

use crate::envelope::{Envelope, FieldValue};

/// The abuse tag of an item in which a card number was masked.
pub const TAG_REDACTED: &str = "card-redacted";
/// The abuse tag of an item whose `raw` copy was dropped because it held a
/// card number.
pub const TAG_RAW_DROPPED: &str = "raw-dropped";

/// The `[privacy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Mask payment card numbers (Luhn-valid 13-19 digit runs) in the
    /// subject, text, HTML and form fields before the item is stored, and
    /// drop its `raw` copy. On by default; turn off only where the desk is
    /// itself in PCI DSS scope.
    #[serde(default = "default_true")]
    pub redact_cards: bool,
}

fn default_true() -> bool {
    true
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig { redact_cards: true }
    }
}

/// Masks every card number in the envelope's customer-written text, tags
/// the item, and drops `raw` when anything was masked. Returns how many
/// numbers were masked.
pub fn redact_envelope(envelope: &mut Envelope, config: &PrivacyConfig) -> usize {
    if !config.redact_cards {
        return 0;
    }
    let mut masked = 0;
    let mut one = |text: &mut String| masked += mask_cards(text);
    if let Some(subject) = envelope.subject.as_mut() {
        one(subject);
    }
    for header in &mut envelope.headers {
        // Only the Subject is customer prose; ids and dates stay intact
        // (a Message-ID that happens to pass Luhn must still thread).
        if header.name.eq_ignore_ascii_case("subject") {
            one(&mut header.value);
        }
    }
    for text in [
        envelope.text.as_mut(),
        envelope.html.as_mut(),
        envelope.stripped_text.as_mut(),
        envelope.stripped_signature.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        one(text);
    }
    for value in envelope.fields.values_mut() {
        match value {
            FieldValue::One(v) => one(v),
            FieldValue::Many(vs) => vs.iter_mut().for_each(&mut one),
        }
    }
    if let Some(name) = envelope.customer.name.as_mut() {
        one(name);
    }
    // The same name is copied into the addresses (a form's name field
    // becomes `from` and `reply_to`), and file names are typed by people.
    let addresses = envelope
        .from
        .iter_mut()
        .chain(envelope.reply_to.iter_mut())
        .chain(envelope.to.iter_mut())
        .chain(envelope.cc.iter_mut());
    for name in addresses.filter_map(|a| a.name.as_mut()) {
        one(name);
    }
    for filename in envelope
        .attachments
        .iter_mut()
        .flat_map(|a| a.filename.iter_mut().chain(a.original_filename.iter_mut()))
    {
        one(filename);
    }
    if masked > 0 {
        crate::telemetry::events::emit(crate::telemetry::events::pipeline::CardsRedacted {
            count: masked,
        });
        push_tag(envelope, TAG_REDACTED);
        if envelope.raw.take().is_some() {
            push_tag(envelope, TAG_RAW_DROPPED);
        }
    }
    masked
}

fn push_tag(envelope: &mut Envelope, tag: &str) {
    if !envelope.abuse.tags.iter().any(|t| t == tag) {
        envelope.abuse.tags.push(tag.to_string());
    }
}

/// Masks the card numbers in `text` in place; returns how many.
pub fn mask_cards(text: &mut String) -> usize {
    // Cheap exit for the common case: no run of 13 digits can exist.
    if !has_digits(text.as_bytes(), 13) {
        return 0;
    }
    let mut bytes = std::mem::take(text).into_bytes();
    let mut masked = 0;
    let mut at = 0;
    while at < bytes.len() {
        if !bytes[at].is_ascii_digit() {
            at += 1;
            continue;
        }
        let run = digit_run(&bytes, at);
        masked += mask_run(&mut bytes, &run);
        at = run.last().map_or(at + 1, |g| g.1);
    }
    // Only ASCII digits were replaced by ASCII `*`: still valid UTF-8.
    *text = String::from_utf8(bytes).expect("masking keeps UTF-8 intact");
    masked
}

/// Whether `bytes` holds at least `n` ASCII digits. Counted 64 bytes at a
/// time into a `u8`, which the compiler turns into vector instructions (a
/// byte-by-byte count was 4% of a form post's CPU time), and stops as soon
/// as there are enough.
fn has_digits(bytes: &[u8], n: usize) -> bool {
    let mut count = 0;
    for chunk in bytes.chunks(64) {
        let digits: u8 = chunk
            .iter()
            .map(|b| u8::from(b.wrapping_sub(b'0') < 10))
            .sum();
        count += usize::from(digits);
        if count >= n {
            return true;
        }
    }
    count >= n
}

/// The digit groups (start, end) of the run beginning at `start`: groups of
/// digits joined by exactly one space or dash.
fn digit_run(bytes: &[u8], start: usize) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    let mut at = start;
    loop {
        let begin = at;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            at += 1;
        }
        groups.push((begin, at));
        let joined = at + 1 < bytes.len()
            && matches!(bytes[at], b' ' | b'-')
            && bytes[at + 1].is_ascii_digit();
        if !joined {
            return groups;
        }
        at += 1;
    }
}

/// Masks the card numbers inside one run. A run that is itself 13-19
/// digits is a candidate as a whole; otherwise (a longer grouped run such as
/// `qty 2 4111 1111 1111 1111`) whole groups are tried, longest first, so a
/// number is never cut inside a group of digits.
///
/// Linear in the run: from each group at most 19 groups are looked at (each
/// has a digit), so a hostile `1 1 1 1 ...` costs no more than its length.
fn mask_run(bytes: &mut [u8], groups: &[(usize, usize)]) -> usize {
    let mut masked = 0;
    let mut from = 0;
    while from < groups.len() {
        let mut digits = 0;
        let mut longest = None;
        for to in from + 1..=groups.len() {
            digits += groups[to - 1].1 - groups[to - 1].0;
            if digits > 19 {
                break;
            }
            if digits >= 13 && is_card(bytes, &groups[from..to]) {
                longest = Some(to);
            }
        }
        match longest {
            Some(to) => {
                mask(bytes, &groups[from..to]);
                masked += 1;
                from = to;
            }
            None => from += 1,
        }
    }
    masked
}

fn candidate_digits<'a>(
    bytes: &'a [u8],
    groups: &'a [(usize, usize)],
) -> impl DoubleEndedIterator<Item = u8> + 'a {
    groups
        .iter()
        .flat_map(move |&(b, e)| bytes[b..e].iter().map(|d| d - b'0'))
}

/// Luhn-valid, and not a filler such as all zeros.
fn is_card(bytes: &[u8], groups: &[(usize, usize)]) -> bool {
    let mut all_same = true;
    let mut first = None;
    let mut sum = 0u32;
    for (i, d) in candidate_digits(bytes, groups).rev().enumerate() {
        let first = *first.get_or_insert(d);
        all_same &= d == first;
        let d = u32::from(d);
        sum += if i % 2 == 1 {
            let twice = d * 2;
            if twice > 9 {
                twice - 9
            } else {
                twice
            }
        } else {
            d
        };
    }
    sum % 10 == 0 && !all_same
}

/// Replaces every digit but the last four with `*`, keeping separators.
fn mask(bytes: &mut [u8], groups: &[(usize, usize)]) {
    let total: usize = groups.iter().map(|(b, e)| e - b).sum();
    let mut seen = 0;
    for &(b, e) in groups {
        for byte in &mut bytes[b..e] {
            if seen < total - 4 {
                *byte = b'*';
            }
            seen += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(input: &str) -> (String, usize) {
        let mut s = input.to_string();
        let n = mask_cards(&mut s);
        (s, n)
    }

    #[test]
    fn masks_a_card_written_whole_with_spaces_or_dashes() {
        assert_eq!(
            masked("card 4111111111111111 thanks"),
            ("card ************1111 thanks".into(), 1)
        );
        assert_eq!(
            masked("4111 1111 1111 1111"),
            ("**** **** **** 1111".into(), 1)
        );
        assert_eq!(
            masked("Amex 3782-822463-10005."),
            ("Amex ****-******-*0005.".into(), 1)
        );
    }

    #[test]
    fn leaves_numbers_that_fail_luhn() {
        // An order number of 16 digits that is not a card.
        assert_eq!(masked("order 1234567890123456").1, 0);
        assert_eq!(masked("order 4111 1111 1111 1112").1, 0);
        assert_eq!(masked("zeros 0000000000000000").1, 0);
    }

    #[test]
    fn never_masks_part_of_a_longer_digit_run() {
        // A valid card number glued inside a 24-digit tracking number.
        let tracking = "12344111111111111111";
        let input = format!("tracking {tracking}5678");
        assert_eq!(masked(&input), (input.clone(), 0), "no partial masking");
        // A 20-digit run is too long to be a card, whatever its Luhn sum.
        let mut long = "4111111111111111".to_string();
        long.push_str("0000");
        assert_eq!(masked(&long).1, 0);
    }

    #[test]
    fn finds_a_grouped_card_after_a_small_number() {
        assert_eq!(
            masked("qty 2 4111 1111 1111 1111 please"),
            ("qty 2 **** **** **** 1111 please".into(), 1)
        );
    }

    #[test]
    fn masks_several_cards_and_keeps_non_ascii_text() {
        assert_eq!(
            masked("Karte: 5555555555554444 – oder 4012-8888-8888-1881 ✓"),
            (
                "Karte: ************4444 – oder ****-****-****-1881 ✓".into(),
                2
            )
        );
    }

    #[test]
    fn a_hostile_run_of_single_digits_costs_linear_time() {
        // 50,000 groups joined by spaces: the old quadratic search took
        // minutes here; the linear one is done at once.
        let mut text = "1 ".repeat(50_000);
        text.push('1');
        let before = text.clone();
        let n = mask_cards(&mut text);
        // Runs of one repeated digit are fillers, never cards.
        assert_eq!(n, 0);
        assert_eq!(text, before);
    }

    #[test]
    fn digits_are_counted_across_chunks_and_stop_at_enough() {
        assert!(!has_digits(b"", 1));
        assert!(has_digits(b"", 0));
        // 12 digits spread over three 64-byte chunks: not enough.
        let mut text = vec![b'x'; 200];
        for i in 0..12 {
            text[i * 16 + 3] = b'7';
        }
        assert!(!has_digits(&text, 13));
        assert!(has_digits(&text, 12));
        // One more, in the last chunk.
        text[199] = b'0';
        assert!(has_digits(&text, 13));
        // Only 0-9 count: the bytes beside them do not.
        assert!(!has_digits(b"/:`~\xff", 1));
        assert!(has_digits(&[b'9'; 300], 300));
    }

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(
            masked("call 555-1234 re order 42"),
            ("call 555-1234 re order 42".into(), 0)
        );
    }

    fn mail(raw: &str) -> Envelope {
        use crate::submission::{Payload, Submission};
        let submission = Submission::new(
            crate::envelope::Source::Mailgate {
                sender: None,
                recipients: vec![],
                ip: "127.0.0.1".into(),
                client: None,
            },
            Payload::Mail(bytes::Bytes::from(raw.to_string())),
        );
        let options = crate::parse::ParseOptions {
            form: None,
            keep_raw: true,
        };
        crate::parse::parse(submission, options).unwrap().envelope
    }

    #[test]
    fn masks_subject_header_and_bodies_tags_and_drops_raw() {
        let mut envelope = mail(
            "From: a@example.com\r\nSubject: card 4111-1111-1111-1111\r\n\r\nnumber 4111111111111111\r\n",
        );
        assert!(envelope.raw.is_some(), "keep_raw = true keeps raw first");
        let n = redact_envelope(&mut envelope, &PrivacyConfig::default());
        assert_eq!(n, 4, "subject, Subject header, text and stripped text");
        let json = serde_json::to_string(&envelope).unwrap();
        assert!(!json.contains("4111111111111111") && !json.contains("4111-1111-1111-1111"));
        assert_eq!(
            envelope.subject.as_deref(),
            Some("card ****-****-****-1111")
        );
        assert!(envelope.raw.is_none(), "raw held the number: dropped");
        assert_eq!(envelope.abuse.tags, vec![TAG_REDACTED, TAG_RAW_DROPPED]);
    }

    #[test]
    fn switched_off_or_nothing_found_leaves_the_envelope_alone() {
        let raw = "From: a@example.com\r\nSubject: card 4111111111111111\r\n\r\nhi\r\n";
        let mut envelope = mail(raw);
        let before = envelope.clone();
        let off = PrivacyConfig {
            redact_cards: false,
        };
        assert_eq!(redact_envelope(&mut envelope, &off), 0);
        assert_eq!(envelope, before, "redact_cards = false changes nothing");

        let mut plain =
            mail("From: a@example.com\r\nSubject: order 1234567890123456\r\n\r\nhi\r\n");
        let before = plain.clone();
        assert_eq!(redact_envelope(&mut plain, &PrivacyConfig::default()), 0);
        assert_eq!(plain, before, "no card: raw kept, no tag");
    }
}
