//! The connection slots of one listener (HTTP or LMTP) and how far each
//! connection has got. At accept: a cap per client (IPv4 as is, IPv6 by
//! its /64) and a cap on all open connections. When every slot is taken,
//! the connection with the least progress is closed to make room for the
//! newcomer: idle ones first, then the slowest head, then the slowest body
//! or DATA; never one whose item is in the pipeline (`Working`). Only when
//! nothing can be shed does a newcomer wait (HTTP, bounded) or get refused.
//!
//! A connection is safe for `grace` after it entered its phase, so a
//! newcomer cannot shed another newcomer before it had a chance to speak,
//! unless its client holds at least two more slots than the newcomer's
//! client: then a fair share of the pool outweighs that head start, and a
//! client with many connections cannot keep a lone one out by reconnecting
//! as fast as it is shed. Waiting newcomers are served fewest-slots first.
//!
//! The files: `client.rs` (a client's key and counts), `conn.rs` (one
//! connection's progress), this one (the registry: admission, waiting,
//! slots) and `shedding.rs` (which connection gives way).

mod client;
mod conn;
mod shedding;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

pub use client::client_key;
use client::Held;
pub use conn::{rate_deadline, Conn, Counted, Phase};

/// The caps of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open (or waiting) from one client.
    pub max_per_client: usize,
    /// How long a connection is safe in a new phase (see the module doc).
    pub grace: Duration,
    /// Newcomers that may wait for a slot when none can be shed; 0 refuses
    /// them at once.
    pub max_waiting: usize,
}

/// Why a newcomer was not given a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its client holds `max_per_client` connections already.
    PerClient,
    /// Every slot is taken, none can be shed, and no more may wait.
    Full,
}

/// The answer to a newcomer.
pub enum Admission {
    Admitted(Slot),
    /// Waits for a slot: [`Queued::slot`].
    Queued(Queued),
    Refused(Refusal),
}

/// The slots of one listener; shared by its accept loop and connections.
pub struct Registry {
    /// `http` or `lmtp`, for metrics and logs.
    listener: &'static str,
    limits: Limits,
    inner: Mutex<Inner>,
    /// Signalled when the last connection closes (the drain waits for it).
    emptied: Notify,
    /// Changes whenever a connection leaves `Working` (outside the lock):
    /// it may be shed again.
    epoch: Arc<AtomicU64>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    /// Only clients with a connection open or waiting: bounded by the
    /// slots, never by the addresses ever seen.
    clients: HashMap<IpAddr, Arc<Held>>,
    /// In arrival order.
    waiting: VecDeque<Waiter>,
    closed: bool,
    /// Changes whenever a connection opens or closes.
    generation: u64,
    /// The last scan that found nothing to shed (see `pick_victim`).
    no_victim: Option<NoVictim>,
}

#[derive(Debug, Clone, Copy)]
struct NoVictim {
    /// `Inner::generation` and `Registry::epoch` at the scan.
    state: (u64, u64),
    newcomer_open: usize,
    until: Instant,
}

struct Waiter {
    id: u64,
    client: IpAddr,
    holder: Arc<Held>,
    tx: oneshot::Sender<Slot>,
}

/// A connection's place; dropping it frees the slot.
pub struct Slot {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
    /// False for a slot that was never handed out (a waiter gone).
    armed: bool,
}

/// A newcomer waiting for a slot; dropping it leaves the queue.
pub struct Queued {
    // Dropped first: a slot granted but not taken is released before the
    // ticket looks for its place in the queue.
    rx: oneshot::Receiver<Slot>,
    _ticket: WaitTicket,
}

struct WaitTicket {
    registry: Arc<Registry>,
    id: u64,
}

impl Registry {
    pub fn new(listener: &'static str, limits: Limits) -> Arc<Registry> {
        Arc::new(Registry {
            listener,
            limits: Limits {
                max_connections: limits.max_connections.max(1),
                max_per_client: limits.max_per_client.max(1),
                ..limits
            },
            inner: Mutex::default(),
            emptied: Notify::new(),
            epoch: Arc::default(),
        })
    }

    /// Decides about a newcomer from `ip`. Never waits: a queued newcomer
    /// awaits [`Queued::slot`] (bounded by the caller).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Admission {
        let client = client_key(ip);
        let mut inner = self.lock();
        if inner.closed {
            return Admission::Refused(Refusal::Full);
        }
        let (open, waiting) = inner
            .clients
            .get(&client)
            .map_or((0, 0), |h| (h.open(), h.waiting()));
        if open + waiting >= self.limits.max_per_client {
            return Admission::Refused(Refusal::PerClient);
        }
        // Waiters first: those that can be served now are.
        // A waiter left now cannot be served; a newcomer whose client holds
        // as many slots or more could not be either, and queues behind it.
        let queued_ahead = !inner.waiting.is_empty()
            && self
                .rebalance_locked(&mut inner, now)
                .is_some_and(|best| best <= open);
        if inner.open.len() < self.limits.max_connections {
            return Admission::Admitted(self.open_slot(&mut inner, client, now));
        }
        if !queued_ahead {
            if let Some(victim) = self.pick_victim(&mut inner, open, now) {
                self.shed(&mut inner, victim, now);
                return Admission::Admitted(self.open_slot(&mut inner, client, now));
            }
        }
        if inner.waiting.len() < self.limits.max_waiting {
            let (tx, rx) = oneshot::channel();
            inner.next_id += 1;
            let id = inner.next_id;
            let holder = inner.holder(client);
            holder.waiting.fetch_add(1, Ordering::Relaxed);
            inner.waiting.push_back(Waiter {
                id,
                client,
                holder,
                tx,
            });
            return Admission::Queued(Queued {
                rx,
                _ticket: WaitTicket {
                    registry: self.clone(),
                    id,
                },
            });
        }
        Admission::Refused(Refusal::Full)
    }

    /// Serves waiters a slot can be made for now (a connection passed its
    /// grace, say). The accept loop calls it on a short tick.
    pub fn rebalance(self: &Arc<Self>) {
        let mut inner = self.lock();
        if !inner.waiting.is_empty() {
            self.rebalance_locked(&mut inner, Instant::now());
        }
    }

    /// Stops admitting (shutdown); waiters are told no.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        let waiters: Vec<Waiter> = inner.waiting.drain(..).collect();
        for waiter in &waiters {
            inner.forget_waiting(waiter);
        }
    }

    /// Completes once no connection is open.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().open.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Clients with a connection open or waiting.
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Held for map work only, never across an await.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_slot(self: &Arc<Self>, inner: &mut Inner, client: IpAddr, now: Instant) -> Slot {
        inner.next_id += 1;
        let holder = inner.holder(client);
        holder.open.fetch_add(1, Ordering::Relaxed);
        inner.generation += 1;
        let conn = Arc::new(Conn::new(
            inner.next_id,
            client,
            holder,
            self.epoch.clone(),
            now,
        ));
        inner.open.insert(conn.id, conn.clone());
        Slot {
            registry: self.clone(),
            conn,
            armed: true,
        }
    }

    /// The waiter to serve first: its client holds the fewest slots, then
    /// it came first. With that client's slot count.
    fn best_waiter(&self, inner: &Inner) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        // A waiter that gave up leaves the queue itself (`WaitTicket`); one
        // caught in between is skipped when its slot cannot be sent.
        for (index, waiter) in inner.waiting.iter().enumerate() {
            let open = waiter.holder.open();
            if best.is_none_or(|(_, best_open)| open < best_open) {
                best = Some((index, open));
            }
        }
        best
    }

    /// Hands free slots to waiters, then sheds for the best waiter while a
    /// victim can be found for it (if none can be for the best, none can
    /// be for the others: their clients hold as many slots or more).
    /// Returns the slots the client of the best waiter left holds.
    fn rebalance_locked(self: &Arc<Self>, inner: &mut Inner, now: Instant) -> Option<usize> {
        loop {
            self.serve_queue(inner, now);
            let (_, open) = self.best_waiter(inner)?;
            if inner.open.len() < self.limits.max_connections {
                // Only waiters that gave up are left.
                return None;
            }
            match self.pick_victim(inner, open, now) {
                Some(victim) => self.shed(inner, victim, now),
                None => return Some(open),
            }
        }
    }

    fn serve_queue(self: &Arc<Self>, inner: &mut Inner, now: Instant) {
        while inner.open.len() < self.limits.max_connections {
            let Some((index, _)) = self.best_waiter(inner) else {
                return;
            };
            let Some(waiter) = inner.waiting.remove(index) else {
                return;
            };
            inner.forget_waiting(&waiter);
            let slot = self.open_slot(inner, waiter.client, now);
            if let Err(mut slot) = waiter.tx.send(slot) {
                // Gave up a moment ago: undo without taking the lock again.
                slot.armed = false;
                inner.remove_open(slot.conn.id);
            }
        }
    }

    fn release(self: &Arc<Self>, id: u64) {
        let mut inner = self.lock();
        inner.remove_open(id);
        // The slot is free (or was given away when it was shed): the best
        // waiter takes it.
        self.serve_queue(&mut inner, Instant::now());
        if inner.open.is_empty() {
            self.emptied.notify_waiters();
        }
    }
}

impl Inner {
    /// The counts of `client`, made when it has none.
    fn holder(&mut self, client: IpAddr) -> Arc<Held> {
        self.clients.entry(client).or_default().clone()
    }

    fn remove_open(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.open.remove(&id)?;
        self.generation += 1;
        conn.holder.open.fetch_sub(1, Ordering::Relaxed);
        self.forget_if_empty(conn.client, &conn.holder);
        Some(conn)
    }

    fn forget_waiting(&mut self, waiter: &Waiter) {
        waiter.holder.waiting.fetch_sub(1, Ordering::Relaxed);
        self.forget_if_empty(waiter.client, &waiter.holder);
    }

    fn forget_if_empty(&mut self, client: IpAddr, holder: &Held) {
        if holder.open() == 0 && holder.waiting() == 0 {
            self.clients.remove(&client);
        }
    }
}

impl Slot {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.registry.release(self.conn.id);
        }
    }
}

impl Queued {
    /// The slot once one is free, `None` when the registry closed.
    pub async fn slot(mut self) -> Option<Slot> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(index) = inner.waiting.iter().position(|w| w.id == self.id) {
            if let Some(waiter) = inner.waiting.remove(index) {
                inner.forget_waiting(&waiter);
            }
        }
    }
}
