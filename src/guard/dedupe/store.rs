//! Where the history is kept: in Redis (keys hash-tagged per customer,
//! so it holds across replicas and restarts) or in memory (`intake replay`
//! and unit tests). Every operation has both arms side by side, so they
//! stay alike.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::fingerprint::Fingerprint;
use super::history::{
    earlier, exact, member, near, own_suffix, pending, value, History, Kind, PENDING,
};
use super::scripts::{CONFIRM, RELEASE, RESERVE};
use crate::guard::error::GuardError;
use crate::guard::rules::Dedupe;
use crate::guard::store::RedisStore;
use crate::submission::ReceiptId;

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
