//! Flood collapse: exact duplicates (same Message-ID, or the same
//! normalized text from the same customer) and near duplicates (SimHash
//! over word shingles, compared with the customer's recent items) are
//! folded into the first item instead of becoming desk items.
//!
//! The history lives in Redis (keys hash-tagged per customer), so it holds
//! across replicas and restarts; `intake replay` runs the same logic on an
//! in-memory store.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::error::GuardError;
use super::facts::Facts;
use super::rules::Dedupe;
use super::store::{short_digest, RedisStore};
use crate::submission::ReceiptId;

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

/// What a reservation holds: the receipt, tagged with the item's attempt
/// digest when it has one (`RECEIPT~DIGEST`).
fn value(fp: Option<&Fingerprint>, receipt: ReceiptId) -> String {
    match fp.and_then(|f| f.attempt.as_deref()) {
        Some(attempt) => format!("{receipt}~{attempt}"),
        None => receipt.to_string(),
    }
}

/// The earlier receipt a stored value names; `None` when it is this very
/// item's own earlier attempt (same idempotency key), or a reservation
/// whose write has not returned (nothing is folded into an item that may
/// never be stored).
fn earlier(stored: &str, fp: Option<&Fingerprint>) -> Option<ReceiptId> {
    if stored.starts_with(PENDING) {
        return None;
    }
    let (receipt, attempt) = match stored.split_once('~') {
        Some((receipt, attempt)) => (receipt, Some(attempt)),
        None => (stored, None),
    };
    let own = fp.and_then(|f| f.attempt.as_deref());
    if own.is_some() && attempt == own {
        return None;
    }
    receipt.parse().ok()
}

/// What a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// The keys are this item's until it is confirmed or released.
    Reserved,
    /// An earlier stored item has the same Message-ID or text: fold into it.
    Folded(ReceiptId),
    /// Another item with the same Message-ID or text is being written right
    /// now; ask again once it is confirmed, released or expired.
    Pending,
}

/// The suffix that marks values of this item's own attempts (same
/// idempotency key): `"~DIGEST"`, or `""` without a key.
fn own_suffix(fp: Option<&Fingerprint>) -> String {
    fp.and_then(|f| f.attempt.as_deref())
        .map(|a| format!("~{a}"))
        .unwrap_or_default()
}

/// How an item duplicates an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exact,
    Near,
}

impl Kind {
    pub fn rule(self) -> &'static str {
        match self {
            Kind::Exact => "dedupe-exact",
            Kind::Near => "dedupe-near",
        }
    }
}

/// Identities besides the primary one whose histories are read and
/// written: rotating the first address is the cheap dodge; an item with
/// more decoys than this still meets the rate limits of every identity.
pub const OTHER_IDENTITIES: usize = 3;

/// Reads a fingerprint from the message; `None` without a customer.
pub fn fingerprint(facts: &Facts<'_>) -> Option<Fingerprint> {
    let customer = match (&facts.sender, facts.ip) {
        (Some(sender), _) => format!("s:{sender}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => return None,
    };
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
        .map(|identity| short_digest(format!("s:{}", identity.key).as_bytes()))
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
fn numbers(words: &Words) -> u32 {
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

fn strip_reply_prefixes(mut subject: &str) -> &str {
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
fn strip_html(html: &str) -> String {
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
struct Words {
    text: String,
    /// Where each word starts in `text`.
    starts: Vec<usize>,
}

impl Words {
    fn of<'a>(lines: impl Iterator<Item = &'a str>) -> Words {
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

    fn len(&self) -> usize {
        self.starts.len()
    }

    fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| {
            let span = self.span(i, i + 1);
            &span[..span.len() - 1]
        })
    }

    /// The words joined by single spaces.
    fn joined(&self) -> &str {
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
fn simhash(words: &Words) -> u64 {
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

/// Where the history is kept.
pub enum DedupeStore {
    Redis(RedisStore),
    /// For `intake replay` and unit tests; times are the items' own.
    Memory(Mutex<Memory>),
}

#[derive(Default)]
pub struct Memory {
    /// key to (value, expiry in ms).
    values: HashMap<String, (String, u64)>,
    /// customer to recent (ms, simhash, receipt).
    recent: HashMap<String, Vec<(u64, u64, u32, String)>>,
    counts: HashMap<String, u64>,
}

/// What a pending reservation's value starts with: the item's write is in
/// flight, nothing may be folded into it yet.
const PENDING: char = '?';

/// The value of a reservation whose write has not returned yet.
fn pending(fp: Option<&Fingerprint>, receipt: ReceiptId) -> String {
    format!("{PENDING}{}", value(fp, receipt))
}

/// Lookup (before the scan): GET Message-ID key, GET content key, recent
/// SimHashes; pending values are skipped (nothing is folded into an item
/// that is not stored yet).
///
/// Reserve (atomic, just before the write): if either exact key names an
/// earlier stored item, returns it ({'folded', value}); if it names
/// another item whose write is in flight, returns {'pending', value} (the
/// caller waits for it to be confirmed, released or expired); else takes
/// both keys with a pending value that expires on its own, so a gateway
/// killed between reservation and write leaves nothing to fold into.
/// KEYS mid, content; ARGV pending value, pending lifetime ms, use mid,
/// use content, own attempt suffix ("~DIGEST", or "" for none: a value with
/// it is this item's own earlier attempt, taken over, never returned).
const RESERVE: &str = r#"
local function own(v)
  return ARGV[5] ~= '' and string.sub(v, -string.len(ARGV[5])) == ARGV[5]
end
for i = 1, 2 do
  if ARGV[2 + i] == '1' then
    local v = redis.call('GET', KEYS[i])
    if v and not own(v) then
      if string.sub(v, 1, 1) == '?' then return {'pending', v} end
      return {'folded', v}
    end
  end
end
for i = 1, 2 do
  if ARGV[2 + i] == '1' then redis.call('SET', KEYS[i], ARGV[1], 'PX', tonumber(ARGV[2])) end
end
return {'reserved', ''}
"#;

/// Confirm (once the write returned): the pending exact keys become the
/// stored item's (a key another item took meanwhile is left to it), the
/// item joins the customer's recent near-duplicate candidates (the own
/// earlier attempt's members dropped) and becomes the customer's latest.
/// KEYS mid, content, recent, last; ARGV pending value, stored value,
/// window ms, now ms, member ("" for none), recent cap, use mid, use
/// content, own attempt suffix.
const CONFIRM: &str = r#"
for i = 1, 2 do
  if ARGV[6 + i] == '1' then
    local v = redis.call('GET', KEYS[i])
    if (not v) or v == ARGV[1] then redis.call('SET', KEYS[i], ARGV[2], 'PX', tonumber(ARGV[3])) end
  end
end
local window = tonumber(ARGV[3])
if ARGV[9] ~= '' then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if string.sub(m, -string.len(ARGV[9])) == ARGV[9] then redis.call('ZREM', KEYS[3], m) end
  end
end
if ARGV[5] ~= '' then
  local now = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], now, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[6]) + 1))
  redis.call('PEXPIRE', KEYS[3], window)
end
redis.call('SET', KEYS[4], ARGV[2], 'PX', math.max(window, 86400000))
return 1
"#;

/// Undoes a reservation whose item was not stored, so a retry is not kept
/// waiting for it. KEYS mid, content; ARGV pending value.
const RELEASE: &str = r#"
for i = 1, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"#;

/// A recent item in the per-customer set: `simhash:numbers:value`.
fn member(fp: &Fingerprint, receipt: ReceiptId) -> String {
    format!(
        "{:016x}:{:08x}:{}",
        fp.simhash,
        fp.numbers,
        value(Some(fp), receipt)
    )
}

struct Keys {
    mid: String,
    content: String,
    recent: String,
    last: String,
}

impl DedupeStore {
    pub fn memory() -> Self {
        DedupeStore::Memory(Mutex::new(Memory::default()))
    }

    fn keys(prefix: &str, customer: &str, fp: Option<&Fingerprint>) -> Keys {
        let base = format!("{prefix}:dd:{{{customer}}}");
        Keys {
            mid: format!(
                "{base}:mid:{}",
                fp.and_then(|f| f.message_id.as_deref()).unwrap_or("-")
            ),
            content: format!("{base}:h:{}", fp.map_or("-", |f| f.content.as_str())),
            recent: format!("{base}:recent"),
            last: format!("{base}:last"),
        }
    }

    /// The earlier item this one duplicates, if any, in the history of
    /// any of its identities.
    pub async fn lookup(
        &self,
        fp: &Fingerprint,
        settings: &Dedupe,
        now_ms: u64,
    ) -> Result<Option<(ReceiptId, Kind)>, GuardError> {
        let customers: Vec<&str> = std::iter::once(fp.customer.as_str())
            .chain(fp.others.iter().map(String::as_str))
            .collect();
        let histories = match self {
            DedupeStore::Redis(store) => {
                let asks = customers
                    .iter()
                    .map(|customer| self.history(store, customer, fp, settings, now_ms));
                futures_util::future::try_join_all(asks).await?
            }
            DedupeStore::Memory(memory) => {
                let memory = memory.lock().expect("dedupe lock");
                customers
                    .iter()
                    .map(|customer| memory_history(&memory, customer, fp, settings, now_ms))
                    .collect()
            }
        };
        // Exact before near, in every history: an exact match anywhere is
        // the better answer.
        for (mid, content, _) in &histories {
            if let Some(found) = exact(settings, fp, mid.as_deref(), content.as_deref()) {
                return Ok(Some(found));
            }
        }
        for (_, _, recent) in histories {
            if let Some(found) = near(settings, fp, recent) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// One customer's history in Redis: the Message-ID and text keys, and
    /// the recent near-duplicate candidates (one pipeline, one slot).
    async fn history(
        &self,
        store: &RedisStore,
        customer: &str,
        fp: &Fingerprint,
        settings: &Dedupe,
        now_ms: u64,
    ) -> Result<History, GuardError> {
        let window = settings.window.as_millis() as u64;
        let keys = Self::keys(store.prefix(), customer, Some(fp));
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&keys.mid);
        pipe.cmd("GET").arg(&keys.content);
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&keys.recent)
            .arg(now_ms.saturating_sub(window))
            .arg("+inf");
        let mut connection = store.connection();
        let (mid, content, members): (Option<String>, Option<String>, Vec<String>) =
            store.bounded(pipe.query_async(&mut connection)).await?;
        let recent = members
            .iter()
            .filter_map(|m| {
                let mut parts = m.splitn(3, ':');
                let hash = u64::from_str_radix(parts.next()?, 16).ok()?;
                let numbers = u32::from_str_radix(parts.next()?, 16).ok()?;
                Some((earlier(parts.next()?, Some(fp))?, hash, numbers))
            })
            .collect();
        Ok((mid, content, recent))
    }
}

/// One customer's history: Message-ID key, text key, recent candidates.
type History = (Option<String>, Option<String>, Vec<(ReceiptId, u64, u32)>);

fn memory_history(
    memory: &Memory,
    customer: &str,
    fp: &Fingerprint,
    settings: &Dedupe,
    now_ms: u64,
) -> History {
    let window = settings.window.as_millis() as u64;
    let keys = DedupeStore::keys("", customer, Some(fp));
    let get = |k: &str| {
        memory
            .values
            .get(k)
            .filter(|(_, exp)| *exp > now_ms)
            .map(|(v, _)| v.clone())
    };
    let recent = memory
        .recent
        .get(customer)
        .map(|items| {
            items
                .iter()
                .filter(|(at, ..)| at + window > now_ms)
                .filter_map(|(_, h, n, r)| Some((earlier(r, Some(fp))?, *h, *n)))
                .collect()
        })
        .unwrap_or_default();
    (get(&keys.mid), get(&keys.content), recent)
}

/// An exact duplicate: the same Message-ID, else the same text.
fn exact(
    settings: &Dedupe,
    fp: &Fingerprint,
    mid: Option<&str>,
    content: Option<&str>,
) -> Option<(ReceiptId, Kind)> {
    if !settings.exact {
        return None;
    }
    if fp.message_id.is_some() {
        if let Some(r) = mid.and_then(|r| earlier(r, Some(fp))) {
            return Some((r, Kind::Exact));
        }
    }
    content
        .and_then(|r| earlier(r, Some(fp)))
        .map(|r| (r, Kind::Exact))
}

/// The nearest near duplicate among the recent candidates, if close enough.
fn near(
    settings: &Dedupe,
    fp: &Fingerprint,
    recent: Vec<(ReceiptId, u64, u32)>,
) -> Option<(ReceiptId, Kind)> {
    if !(settings.near_duplicates && fp.comparable) {
        return None;
    }
    recent
        .into_iter()
        .filter(|(_, _, n)| *n == fp.numbers)
        .map(|(r, h, _)| (r, (h ^ fp.simhash).count_ones()))
        .filter(|(_, d)| *d <= settings.max_distance)
        .min_by_key(|(_, d)| *d)
        .map(|(r, _)| (r, Kind::Near))
}

impl DedupeStore {
    /// Reserves an item's exact keys just before its write, so a duplicate
    /// arriving at the same moment (another request, another replica)
    /// folds into it instead of becoming a second desk item. See
    /// [`RESERVE`] for the answers.
    pub async fn reserve(
        &self,
        customer: &str,
        fp: Option<&Fingerprint>,
        settings: &Dedupe,
        receipt: ReceiptId,
        now_ms: u64,
        pending_ms: u64,
    ) -> Result<Reserve, GuardError> {
        let use_mid = settings.exact && fp.is_some_and(|f| f.message_id.is_some());
        let use_content = settings.exact && fp.is_some();
        if !use_mid && !use_content {
            return Ok(Reserve::Reserved);
        }
        let mine = pending(fp, receipt);
        let own = own_suffix(fp);
        match self {
            DedupeStore::Redis(store) => {
                let keys = Self::keys(store.prefix(), customer, fp);
                static SCRIPT: LazyLock<redis::Script> =
                    LazyLock::new(|| redis::Script::new(RESERVE));
                let mut invocation = SCRIPT.prepare_invoke();
                invocation
                    .key(&keys.mid)
                    .key(&keys.content)
                    .arg(&mine)
                    .arg(pending_ms.max(1))
                    .arg(if use_mid { "1" } else { "0" })
                    .arg(if use_content { "1" } else { "0" })
                    .arg(&own);
                let mut connection = store.connection();
                let (state, value): (String, String) = store
                    .bounded(invocation.invoke_async(&mut connection))
                    .await?;
                Ok(match state.as_str() {
                    "folded" => match earlier(&value, None) {
                        Some(into) => Reserve::Folded(into),
                        None => Reserve::Reserved,
                    },
                    "pending" => Reserve::Pending,
                    _ => Reserve::Reserved,
                })
            }
            DedupeStore::Memory(memory) => {
                let mut memory = memory.lock().expect("dedupe lock");
                let keys = Self::keys("", customer, fp);
                for (used, key) in [(use_mid, &keys.mid), (use_content, &keys.content)] {
                    let Some((v, exp)) = memory.values.get(key) else {
                        continue;
                    };
                    if !used || *exp <= now_ms || (!own.is_empty() && v.ends_with(&own)) {
                        continue;
                    }
                    if v.starts_with(PENDING) {
                        return Ok(Reserve::Pending);
                    }
                    if let Some(into) = earlier(v, None) {
                        return Ok(Reserve::Folded(into));
                    }
                }
                for (used, key) in [(use_mid, &keys.mid), (use_content, &keys.content)] {
                    if used {
                        memory
                            .values
                            .insert(key.clone(), (mine.clone(), now_ms + pending_ms.max(1)));
                    }
                }
                Ok(Reserve::Reserved)
            }
        }
    }

    /// Records a stored item (its write returned): its reservation becomes
    /// the stored item's, it joins the customer's near-duplicate
    /// candidates and becomes the customer's latest, the item a
    /// rate-limited one is folded into. See [`CONFIRM`].
    pub async fn confirm(
        &self,
        customer: &str,
        fp: Option<&Fingerprint>,
        settings: &Dedupe,
        receipt: ReceiptId,
        now_ms: u64,
    ) -> Result<(), GuardError> {
        let window = settings.window.as_millis() as u64;
        let use_mid = settings.exact && fp.is_some_and(|f| f.message_id.is_some());
        let use_content = settings.exact && fp.is_some();
        let member = fp
            .filter(|f| f.comparable && settings.near_duplicates)
            .map(|f| member(f, receipt));
        let mine = pending(fp, receipt);
        let stored = value(fp, receipt);
        let own = own_suffix(fp);
        match self {
            DedupeStore::Redis(store) => {
                let keys = Self::keys(store.prefix(), customer, fp);
                static SCRIPT: LazyLock<redis::Script> =
                    LazyLock::new(|| redis::Script::new(CONFIRM));
                let mut invocation = SCRIPT.prepare_invoke();
                invocation
                    .key(&keys.mid)
                    .key(&keys.content)
                    .key(&keys.recent)
                    .key(&keys.last)
                    .arg(&mine)
                    .arg(&stored)
                    .arg(window)
                    .arg(now_ms)
                    .arg(member.as_deref().unwrap_or(""))
                    .arg(settings.recent)
                    .arg(if use_mid { "1" } else { "0" })
                    .arg(if use_content { "1" } else { "0" })
                    .arg(&own);
                let mut connection = store.connection();
                store
                    .bounded(invocation.invoke_async::<i64>(&mut connection))
                    .await
                    .map(drop)
            }
            DedupeStore::Memory(memory) => {
                let mut memory = memory.lock().expect("dedupe lock");
                let keys = Self::keys("", customer, fp);
                for (used, key) in [(use_mid, &keys.mid), (use_content, &keys.content)] {
                    let free = memory
                        .values
                        .get(key)
                        .is_none_or(|(v, exp)| *v == mine || *exp <= now_ms);
                    if used && free {
                        memory
                            .values
                            .insert(key.clone(), (stored.clone(), now_ms + window));
                    }
                }
                if !own.is_empty() {
                    if let Some(items) = memory.recent.get_mut(customer) {
                        items.retain(|(.., r)| !r.ends_with(&own));
                    }
                }
                if let (Some(fp), Some(_)) = (fp, &member) {
                    let items = memory.recent.entry(customer.to_string()).or_default();
                    items.push((now_ms, fp.simhash, fp.numbers, stored.clone()));
                    items.retain(|(at, ..)| at + window > now_ms);
                    let excess = items.len().saturating_sub(settings.recent);
                    items.drain(..excess);
                }
                memory
                    .values
                    .insert(keys.last, (stored, now_ms + window.max(86_400_000)));
                Ok(())
            }
        }
    }

    /// The customer's latest desk item, to fold a rate-limited item into.
    pub async fn last(&self, customer: &str, now_ms: u64) -> Result<Option<ReceiptId>, GuardError> {
        match self {
            DedupeStore::Redis(store) => {
                let keys = Self::keys(store.prefix(), customer, None);
                let mut connection = store.connection();
                let last: Option<String> = store
                    .bounded(
                        redis::cmd("GET")
                            .arg(&keys.last)
                            .query_async(&mut connection),
                    )
                    .await?;
                Ok(last.and_then(|r| earlier(&r, None)))
            }
            DedupeStore::Memory(memory) => {
                let keys = Self::keys("", customer, None);
                Ok(memory
                    .lock()
                    .expect("dedupe lock")
                    .values
                    .get(&keys.last)
                    .filter(|(_, exp)| *exp > now_ms)
                    .and_then(|(v, _)| earlier(v, None)))
            }
        }
    }

    /// Undoes [`DedupeStore::reserve`] for an item that was not stored.
    pub async fn release(
        &self,
        customer: &str,
        fp: Option<&Fingerprint>,
        receipt: ReceiptId,
    ) -> Result<(), GuardError> {
        let mine = pending(fp, receipt);
        match self {
            DedupeStore::Redis(store) => {
                let keys = Self::keys(store.prefix(), customer, fp);
                static SCRIPT: LazyLock<redis::Script> =
                    LazyLock::new(|| redis::Script::new(RELEASE));
                let mut invocation = SCRIPT.prepare_invoke();
                invocation.key(&keys.mid).key(&keys.content).arg(&mine);
                let mut connection = store.connection();
                store
                    .bounded(invocation.invoke_async::<i64>(&mut connection))
                    .await
                    .map(drop)
            }
            DedupeStore::Memory(memory) => {
                let mut memory = memory.lock().expect("dedupe lock");
                let keys = Self::keys("", customer, fp);
                for key in [keys.mid, keys.content] {
                    if memory.values.get(&key).is_some_and(|(v, _)| *v == mine) {
                        memory.values.remove(&key);
                    }
                }
                Ok(())
            }
        }
    }

    /// Counts one more item folded into `into`; returns the total. Counted
    /// by the desk item, not by who sent the fold: items from several of a
    /// customer's identities fold into one desk item and one count.
    pub async fn count_fold(&self, into: ReceiptId, settings: &Dedupe) -> Result<u64, GuardError> {
        match self {
            DedupeStore::Redis(store) => {
                let key = format!("{}:dd:{{{into}}}:folds", store.prefix());
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(settings.window.as_millis().max(86_400_000) as u64)
                    .ignore();
                let mut connection = store.connection();
                let (count,): (u64,) = store.bounded(pipe.query_async(&mut connection)).await?;
                Ok(count)
            }
            DedupeStore::Memory(memory) => {
                let mut memory = memory.lock().expect("dedupe lock");
                let count = memory.counts.entry(into.to_string()).or_insert(0);
                *count += 1;
                Ok(*count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "order", "parcel", "refund", "where", "is", "my", "delivery", "late", "again",
            "please", "help", "thanks",
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
}
