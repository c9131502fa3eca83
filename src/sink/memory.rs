//! An in-memory sink for unit tests: records entries, and can be switched
//! to fail like a Redis that went away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{Appended, Entry, Sink, SinkError, SinkFuture};

#[derive(Debug, Default)]
pub struct MemorySink {
    entries: Mutex<Vec<Entry>>,
    down: AtomicBool,
}

impl MemorySink {
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("memory sink lock").clone()
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
                    });
                }
            }
            entries.push(entry.clone());
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
}
