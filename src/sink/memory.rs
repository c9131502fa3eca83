//! An in-memory sink for unit tests: records entries, and can be switched
//! to fail like a Redis that went away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{Appended, Entry, Seen, Sink, SinkError, SinkFuture, StoredEntry};
use crate::route::Stream;

#[derive(Debug, Default)]
pub struct MemorySink {
    entries: Mutex<Vec<Entry>>,
    /// Entry ids (`N-0`, N the 1-based position) removed with `remove`.
    removed: Mutex<std::collections::HashSet<String>>,
    down: AtomicBool,
}

impl MemorySink {
    /// Every entry written and not removed, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        let removed = self.removed.lock().expect("memory sink lock");
        self.entries
            .lock()
            .expect("memory sink lock")
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed.contains(&format!("{}-0", i + 1)))
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn check(&self) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            Err(SinkError::Timeout(Duration::ZERO))
        } else {
            Ok(())
        }
    }

    /// Makes every following write fail (or succeed again).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Sink for MemorySink {
    fn append<'a>(&'a self, entry: &'a Entry) -> SinkFuture<'a, Appended> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError::Timeout(Duration::ZERO));
            }
            let mut entries = self.entries.lock().expect("memory sink lock");
            if let Some(key) = &entry.idempotency_key {
                let earlier = entries.iter().position(|e| {
                    e.stream == entry.stream && e.idempotency_key.as_ref() == Some(key)
                });
                if let Some(index) = earlier {
                    return Ok(Appended::AlreadyStored {
                        receipt: entries[index].id.to_string(),
                        entry_id: format!("{}-0", index + 1),
                        digest: entries[index].key_digest.clone(),
                    });
                }
            }
            // Kept encoded, as a stream holds it.
            let json = entry.envelope.to_json().map_err(|e| {
                SinkError::Refused(::redis::RedisError::from((
                    ::redis::ErrorKind::Client,
                    "the envelope could not be encoded",
                    e.to_string(),
                )))
            })?;
            let mut stored = entry.clone();
            stored.envelope = json.into_owned().into();
            entries.push(stored);
            Ok(Appended::Written {
                entry_id: format!("{}-0", entries.len()),
            })
        })
    }

    fn ping(&self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                Err(SinkError::Timeout(Duration::ZERO))
            } else {
                Ok(())
            }
        })
    }

    fn read<'a>(
        &'a self,
        stream: Stream,
        after: Option<&'a str>,
        count: usize,
    ) -> SinkFuture<'a, Vec<StoredEntry>> {
        Box::pin(async move {
            self.check()?;
            let after: usize = after
                .and_then(|a| a.split('-').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let removed = self.removed.lock().expect("memory sink lock");
            let entries = self.entries.lock().expect("memory sink lock");
            Ok(entries
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("{}-0", i + 1), i + 1, e))
                .filter(|(id, n, e)| e.stream == stream && *n > after && !removed.contains(id))
                .take(count)
                .map(|(entry_id, _, e)| {
                    let mut fields = std::collections::HashMap::new();
                    fields.insert("id".to_string(), e.id.to_string());
                    fields.insert("kind".to_string(), e.kind.to_string());
                    let json = e.envelope.to_json().map(|j| j.into_owned());
                    fields.insert("envelope".to_string(), json.unwrap_or_default());
                    if let Some(reason) = &e.reason {
                        fields.insert("reason".to_string(), reason.clone());
                    }
                    if let Some(key) = &e.idempotency_key {
                        fields.insert("idempotency_key".to_string(), key.clone());
                    }
                    if let Some(digest) = &e.key_digest {
                        fields.insert("idempotency_digest".to_string(), digest.clone());
                    }
                    StoredEntry { entry_id, fields }
                })
                .collect())
        })
    }

    fn get<'a>(&'a self, stream: Stream, entry_id: &'a str) -> SinkFuture<'a, Option<StoredEntry>> {
        Box::pin(async move {
            let Some(n) = entry_id
                .strip_suffix("-0")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
            else {
                return Ok(None);
            };
            let before = format!("{}-0", n - 1);
            let mut found = self.read(stream, Some(&before), 1).await?;
            found.retain(|e| e.entry_id == entry_id);
            Ok(found.pop())
        })
    }

    fn remove<'a>(&'a self, _stream: Stream, entry_id: &'a str) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            self.check()?;
            self.removed
                .lock()
                .expect("memory sink lock")
                .insert(entry_id.to_string());
            Ok(())
        })
    }

    fn seen<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Seen>> {
        Box::pin(async move {
            self.check()?;
            let entries = self.entries.lock().expect("memory sink lock");
            Ok(entries.iter().enumerate().find_map(|(i, e)| {
                (e.idempotency_key.as_deref() == Some(key)).then(|| Seen {
                    stream: e.stream,
                    receipt: e.id.to_string(),
                    entry_id: format!("{}-0", i + 1),
                    digest: e.key_digest.clone(),
                })
            }))
        })
    }

    fn len(&self, stream: Stream) -> SinkFuture<'_, u64> {
        Box::pin(async move {
            self.check()?;
            Ok(self.entries().iter().filter(|e| e.stream == stream).count() as u64)
        })
    }
}
