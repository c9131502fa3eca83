//! Fingerprints: what dedupe knows about one item, read from its facts
//! (digests of the customer and other identities, the Message-ID, the
//! normalized text, a SimHash of its word shingles and a digest of its
//! numbers). These values are keys in Redis that outlive a release: how
//! a text becomes them must never change.

use std::borrow::Cow;

use crate::guard::facts::Facts;
use crate::guard::store::short_digest;

/// Fewer words than this and near-duplicate comparison is skipped: short
/// texts ("thanks!") look alike without being the same message.
const MIN_NEAR_TOKENS: usize = 8;

/// What dedupe knows about one item.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    /// Digest of the customer's identity (normalized sender, else IP).
    pub customer: String,
    /// Digests of the item's other identities (every From, Reply-To, the
    /// envelope sender), at most [`OTHER_IDENTITIES`]: a duplicate is
    /// looked up in each one's history and a stored item recorded in each,
    /// so rotating one address does not dodge dedupe.
    pub others: Vec<String>,
    /// Digest of the Message-ID, if any.
    pub message_id: Option<String>,
    /// Digest of the normalized subject and text.
    pub content: String,
    pub simhash: u64,
    /// Digest of the numbers in the text (order numbers, amounts): two
    /// texts about different orders are never near duplicates.
    pub numbers: u32,
    /// Whether the text is long enough for near-duplicate comparison.
    pub comparable: bool,
    /// Digest of the source's idempotency key (IMAP mail): a replica
    /// that died between reserving an item and storing it left its
    /// receipt behind, and the re-read of the same mail must not be
    /// folded into that receipt, which never reached a stream.
    pub attempt: Option<String>,
}

/// Identities besides the primary one whose histories are read and
/// written: rotating the first address is the cheap dodge; an item with
/// more decoys than this still meets the rate limits of every identity.
pub const OTHER_IDENTITIES: usize = 3;

/// Reads a fingerprint from the message; `None` without a customer.
pub fn fingerprint(facts: &Facts<'_>) -> Option<Fingerprint> {
    let customer = facts.customer_key()?;
    let envelope = facts.envelope;
    let subject = envelope
        .subject
        .as_deref()
        .map(strip_reply_prefixes)
        .unwrap_or("");
    let body: Cow<'_, str> = match (&envelope.stripped_text, &envelope.text, &envelope.html) {
        (Some(text), ..) | (None, Some(text), _) => Cow::Borrowed(text),
        (None, None, Some(html)) => Cow::Owned(strip_html(html)),
        (None, None, None) => Cow::Borrowed(""),
    };
    let words = Words::of(subject.lines().chain(body.lines()));
    let others = facts
        .identities
        .iter()
        .skip(1)
        .take(OTHER_IDENTITIES)
        .map(|identity| short_digest(facts.other_key(&identity.key).as_bytes()))
        .collect();
    Some(Fingerprint {
        customer: short_digest(customer.as_bytes()),
        others,
        message_id: envelope
            .message_id
            .as_deref()
            .map(|m| short_digest(m.as_bytes())),
        content: short_digest(words.joined().as_bytes()),
        simhash: simhash(&words),
        numbers: numbers(&words),
        comparable: words.len() >= MIN_NEAR_TOKENS,
        attempt: None,
    })
}

/// Digest of the distinct numbers of three digits or more.
pub(super) fn numbers(words: &Words) -> u32 {
    use sha2::{Digest, Sha256};
    let mut numbers: Vec<&str> = words
        .iter()
        .filter(|t| t.len() >= 3 && t.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let digest = Sha256::digest(numbers.join(" ").as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

pub(super) fn strip_reply_prefixes(mut subject: &str) -> &str {
    loop {
        let trimmed = subject.trim_start();
        let lower = trimmed.to_ascii_lowercase();
        let cut = ["re:", "fw:", "fwd:", "aw:", "wg:", "tr:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => subject = &trimmed[n..],
            None => return trimmed,
        }
    }
}

/// Text of an HTML body: tags dropped, entities left (they do not change
/// a fingerprint's meaning).
pub(super) fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// The lower-cased words of a text (quoted lines dropped; punctuation
/// and whitespace separate words), each followed by one space in a single
/// buffer: `"hello my order "`. One allocation for all the words, not one
/// per word (that showed in the form path's profile), and the buffer is
/// already the normalized text the content digest is taken of.
pub(super) struct Words {
    text: String,
    /// Where each word starts in `text`.
    starts: Vec<usize>,
}

impl Words {
    pub(super) fn of<'a>(lines: impl Iterator<Item = &'a str>) -> Words {
        let mut words = Words {
            text: String::new(),
            starts: Vec::new(),
        };
        for line in lines.filter(|l| !l.trim_start().starts_with('>')) {
            for word in line
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                words.starts.push(words.text.len());
                if !word.is_ascii() {
                    words.text.push_str(&word.to_lowercase());
                } else if word.bytes().any(|b| b.is_ascii_uppercase()) {
                    words.text.push_str(&word.to_ascii_lowercase());
                } else {
                    words.text.push_str(word);
                }
                // No character lower-cases to a space: the separator is
                // unambiguous.
                words.text.push(' ');
            }
        }
        words
    }

    pub(super) fn len(&self) -> usize {
        self.starts.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| {
            let span = self.span(i, i + 1);
            &span[..span.len() - 1]
        })
    }

    /// The words joined by single spaces.
    pub(super) fn joined(&self) -> &str {
        self.text.strip_suffix(' ').unwrap_or_default()
    }

    /// Words `from..to`, each with its trailing space.
    fn span(&self, from: usize, to: usize) -> &str {
        let end = self.starts.get(to).copied().unwrap_or(self.text.len());
        &self.text[self.starts[from]..end]
    }
}

/// 64-bit SimHash over 3-word shingles (single words for shorter texts):
/// bit i is set when more than half the shingles' hashes have it set.
pub(super) fn simhash(words: &Words) -> u64 {
    let width = if words.len() >= 3 { 3 } else { 1 };
    let shingles = (words.len() + 1).saturating_sub(width);
    // Set-bit counts, eight at a time: byte i of `lanes[k]` counts bit
    // 8k+i, so one shingle costs eight additions instead of 64 (this loop
    // was the top of the form path's profile). A byte holds 255 counts;
    // `totals` takes them over before it could overflow.
    let mut totals = [0u32; 64];
    let mut lanes = [0u64; 8];
    for (n, first) in (0..shingles).enumerate() {
        // FNV-1a over the shingle's words, each with its space.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in words.span(first, first + width).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // FNV's low bits mix poorly on short input; spread them.
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane += SPREAD[(h >> (8 * k)) as usize & 0xff];
        }
        if n % 255 == 254 {
            drain_lanes(&mut lanes, &mut totals);
        }
    }
    drain_lanes(&mut lanes, &mut totals);
    let shingles = shingles as u64;
    totals.iter().enumerate().fold(0u64, |acc, (bit, set)| {
        if 2 * u64::from(*set) > shingles {
            acc | 1 << bit
        } else {
            acc
        }
    })
}

/// `SPREAD[b]` has byte i equal to bit i of `b`.
const SPREAD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            table[b] |= ((b as u64 >> i) & 1) << (8 * i);
            i += 1;
        }
        b += 1;
    }
    table
};

fn drain_lanes(lanes: &mut [u64; 8], totals: &mut [u32; 64]) {
    for (k, lane) in lanes.iter_mut().enumerate() {
        for i in 0..8 {
            totals[8 * k + i] += ((*lane >> (8 * i)) & 0xff) as u32;
        }
        *lane = 0;
    }
}
