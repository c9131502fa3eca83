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

mod conn;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use conn::Progress;
pub use conn::{rate_deadline, Conn, Counted, Phase};

/// The address a connection counts against: IPv4 as is (also when mapped
/// into IPv6), IPv6 by its /64, since one host usually holds a whole /64
/// and could otherwise take a fresh address per connection.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

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

/// What one client holds. Shared by its connections and waiters so that a
/// scan needs no lookup; changed only under the registry's lock.
#[derive(Debug, Default)]
pub(crate) struct Held {
    open: AtomicUsize,
    waiting: AtomicUsize,
}

impl Held {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
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

    /// The connection to close for a newcomer whose client holds
    /// `newcomer_open` slots, if any may be.
    fn pick_victim(&self, inner: &mut Inner, newcomer_open: usize, now: Instant) -> Option<u64> {
        let state = (inner.generation, self.epoch.load(Ordering::SeqCst));
        if inner
            .no_victim
            .is_some_and(|n| n.state == state && newcomer_open >= n.newcomer_open && now < n.until)
        {
            return None;
        }
        let mut best: Option<(VictimKey, u64)> = None;
        // Without a victim: when the first connection passes its grace.
        let mut until: Option<Instant> = None;
        for conn in inner.open.values() {
            let p = conn.snapshot();
            if p.phase == Phase::Working {
                continue;
            }
            let age = now.saturating_duration_since(p.since);
            let holder_open = conn.holder.open();
            let unfair = holder_open >= newcomer_open + 2;
            if age < self.limits.grace && !unfair {
                let safe_until = p.since + self.limits.grace;
                until = Some(until.map_or(safe_until, |u| u.min(safe_until)));
                continue;
            }
            let key = VictimKey::new(&p, conn.bytes(), age, holder_open);
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, conn.id));
            }
        }
        if best.is_none() {
            // The same answer holds for this newcomer and any whose client
            // holds more, until a connection opens or closes, one leaves
            // `Working`, or `until`; a full pool under a flood of
            // newcomers is not scanned again for each.
            let newcomer_open = match inner.no_victim {
                Some(n) if n.state == state && now < n.until => n.newcomer_open.min(newcomer_open),
                _ => newcomer_open,
            };
            inner.no_victim = Some(NoVictim {
                state,
                newcomer_open,
                until: until.unwrap_or(now + Duration::from_secs(3600)),
            });
        }
        best.map(|(_, id)| id)
    }

    fn shed(&self, inner: &mut Inner, id: u64, now: Instant) {
        let Some(conn) = inner.remove_open(id) else {
            return;
        };
        let p = conn.snapshot();
        conn.shed.cancel();
        metrics::counter!(
            "intake_connections_shed_total",
            "listener" => self.listener,
            "phase" => p.phase.label()
        )
        .increment(1);
        tracing::debug!(
            listener = self.listener,
            client = %conn.client,
            phase = p.phase.label(),
            age = ?now.saturating_duration_since(p.since),
            bytes = conn.bytes().saturating_sub(p.bytes_at),
            "connection shed to make room"
        );
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

/// Orders shedding candidates, least worth keeping first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VictimKey {
    phase: Phase,
    /// Idle: the longest idle first; head and body: bytes per second in
    /// the phase, the slowest first.
    score: u64,
    /// Then the client holding the most slots.
    holder: std::cmp::Reverse<usize>,
}

impl VictimKey {
    fn new(p: &Progress, bytes: u64, age: Duration, holder_open: usize) -> VictimKey {
        let millis = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let score = match p.phase {
            Phase::Idle => u64::MAX - millis,
            _ => bytes.saturating_sub(p.bytes_at).saturating_mul(1000) / millis.max(1),
        };
        VictimKey {
            phase: p.phase,
            score,
            holder: std::cmp::Reverse(holder_open),
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

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn registry(
        max_connections: usize,
        max_per_client: usize,
        max_waiting: usize,
    ) -> Arc<Registry> {
        Registry::new(
            "test",
            Limits {
                max_connections,
                max_per_client,
                grace: GRACE,
                max_waiting,
            },
        )
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn admitted(admission: Admission, what: &str) -> Slot {
        match admission {
            Admission::Admitted(slot) => slot,
            Admission::Queued(_) => panic!("{what}: queued, expected a slot"),
            Admission::Refused(why) => panic!("{what}: refused ({why:?}), expected a slot"),
        }
    }

    fn queued(admission: Admission, what: &str) -> Queued {
        match admission {
            Admission::Queued(queued) => queued,
            Admission::Admitted(_) => panic!("{what}: admitted, expected to wait"),
            Admission::Refused(why) => panic!("{what}: refused ({why:?}), expected to wait"),
        }
    }

    #[test]
    fn a_client_over_its_cap_is_refused_and_others_are_not() {
        let r = registry(10, 2, 0);
        let _a = admitted(r.admit(ip(1)), "first");
        let b = admitted(r.admit(ip(1)), "second");
        assert!(matches!(
            r.admit(ip(1)),
            Admission::Refused(Refusal::PerClient)
        ));
        let _other = admitted(r.admit(ip(2)), "another address");
        drop(b);
        let _again = admitted(r.admit(ip(1)), "a freed place is given again");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_a_mapped_v4_as_its_v4() {
        let r = registry(10, 1, 0);
        let _a = admitted(r.admit("2001:db8:1:2::1".parse().unwrap()), "v6");
        assert!(matches!(
            r.admit("2001:db8:1:2:ffff::9".parse().unwrap()),
            Admission::Refused(Refusal::PerClient)
        ));
        let _other = admitted(r.admit("2001:db8:1:3::1".parse().unwrap()), "other /64");
        let _v4 = admitted(r.admit(ip(7)), "v4");
        assert!(matches!(
            r.admit("::ffff:192.0.2.7".parse().unwrap()),
            Admission::Refused(Refusal::PerClient)
        ));
    }

    #[test]
    fn when_full_an_idle_connection_past_its_grace_is_shed_for_a_newcomer() {
        let r = registry(2, 10, 0);
        let t0 = Instant::now();
        let a = admitted(r.admit_at(ip(1), t0), "a");
        let b = admitted(r.admit_at(ip(2), t0), "b");
        // A newcomer within the grace finds nothing to shed.
        assert!(matches!(
            r.admit_at(ip(3), t0),
            Admission::Refused(Refusal::Full)
        ));
        let c = admitted(r.admit_at(ip(3), t0 + GRACE * 2), "past the grace");
        assert!(
            a.conn().is_shed() ^ b.conn().is_shed(),
            "exactly one idle connection was shed"
        );
        assert!(!c.conn().is_shed());
        assert_eq!(r.open(), 2, "the shed one's slot went to the newcomer");
        // Its task drops the slot later: nothing is freed twice.
        drop(a);
        drop(b);
        assert_eq!(r.open(), 1);
    }

    #[test]
    fn idle_goes_first_then_the_slowest_head_then_the_slowest_body() {
        let r = registry(4, 10, 0);
        let t0 = Instant::now();
        let fast_body = admitted(r.admit_at(ip(1), t0), "fast body");
        fast_body.conn().request_started();
        fast_body.conn().add_bytes(1_000_000);
        let slow_body = admitted(r.admit_at(ip(2), t0), "slow body");
        slow_body.conn().request_started();
        slow_body.conn().add_bytes(10);
        let head = admitted(r.admit_at(ip(3), t0), "head");
        head.conn().add_bytes(5_000);
        assert_eq!(head.conn().phase(), Phase::Head, "bytes start a head");
        let idle = admitted(r.admit_at(ip(4), t0), "idle");
        let later = t0 + Duration::from_secs(5);
        let mut newcomers = Vec::new();
        for (i, expected) in [&idle, &head, &slow_body, &fast_body].iter().enumerate() {
            newcomers.push(admitted(r.admit_at(ip(10 + i as u8), later), "newcomer"));
            assert!(
                expected.conn().is_shed(),
                "shed #{i} should be the {:?} connection",
                expected.conn().phase()
            );
        }
    }

    #[test]
    fn a_connection_whose_item_is_being_stored_is_never_shed() {
        let r = registry(1, 10, 0);
        let t0 = Instant::now();
        let working = admitted(r.admit_at(ip(1), t0), "working");
        working.conn().request_started();
        working.conn().body_finished();
        assert_eq!(working.conn().phase(), Phase::Working);
        assert!(matches!(
            r.admit_at(ip(2), t0 + Duration::from_secs(3600)),
            Admission::Refused(Refusal::Full)
        ));
        assert!(!working.conn().is_shed());
        working.conn().request_finished(true);
        assert_eq!(working.conn().phase(), Phase::Idle, "answered: idle again");
    }

    #[test]
    fn a_client_with_many_slots_yields_to_a_lone_newcomer_even_inside_the_grace() {
        let r = registry(3, 10, 0);
        let t0 = Instant::now();
        let flood: Vec<Slot> = (0..3)
            .map(|_| admitted(r.admit_at(ip(1), t0), "flood"))
            .collect();
        // The flooder's own newcomer cannot take its young connections'
        // places, nor can a client holding one slot short of fair.
        assert!(matches!(
            r.admit_at(ip(1), t0),
            Admission::Refused(Refusal::Full)
        ));
        let lone = admitted(r.admit_at(ip(2), t0), "a lone client");
        assert_eq!(flood.iter().filter(|s| s.conn().is_shed()).count(), 1);
        // Now 2 against 1: shedding one more would not be fairer.
        assert!(matches!(
            r.admit_at(ip(2), t0),
            Admission::Refused(Refusal::Full)
        ));
        drop(lone);
    }

    #[tokio::test]
    async fn a_waiter_gets_a_freed_slot_fewest_slots_first() {
        let r = registry(2, 10, 4);
        let t0 = Instant::now();
        let a = admitted(r.admit_at(ip(1), t0), "a");
        let b = admitted(r.admit_at(ip(2), t0), "b");
        let heavy = queued(r.admit_at(ip(1), t0), "a second from a");
        let light = queued(r.admit_at(ip(3), t0), "a first from c");
        drop(b);
        let slot = light
            .slot()
            .await
            .expect("the lighter client is served first");
        assert!(!slot.conn().is_shed());
        drop(a);
        let _slot = heavy.slot().await.expect("then the other waiter");
        assert_eq!(r.open(), 2);
    }

    #[tokio::test]
    async fn a_waiter_is_served_by_shedding_once_a_connection_passes_its_grace() {
        let r = registry(1, 10, 4);
        let t0 = Instant::now();
        let idle = admitted(r.admit_at(ip(1), t0), "idle");
        let waiter = queued(r.admit_at(ip(2), t0), "newcomer");
        {
            let mut inner = r.lock();
            r.rebalance_locked(&mut inner, t0 + GRACE * 2);
        }
        assert!(idle.conn().is_shed(), "the idle one made room");
        let slot = waiter.slot().await.expect("served");
        assert!(!slot.conn().is_shed());
    }

    #[test]
    fn a_waiter_that_gives_up_or_a_closed_registry_leaves_no_trace() {
        let r = registry(1, 10, 4);
        let held = admitted(r.admit(ip(1)), "held");
        let waiter = queued(r.admit(ip(2)), "waiter");
        assert_eq!(r.clients(), 2);
        drop(waiter);
        assert_eq!(r.clients(), 1, "the waiter's client is forgotten");
        drop(held);
        assert_eq!((r.open(), r.clients()), (0, 0), "nothing kept");
        let held = admitted(r.admit(ip(1)), "held");
        let _waiter = queued(r.admit(ip(2)), "waiter");
        r.close();
        assert!(matches!(r.admit(ip(3)), Admission::Refused(Refusal::Full)));
        drop(held);
        assert_eq!((r.open(), r.clients()), (0, 0));
    }

    #[test]
    fn the_rate_deadline_is_the_grace_plus_a_second_per_rate_bytes() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        assert_eq!(rate_deadline(t0, grace, 0, 500), t0 + grace);
        assert_eq!(
            rate_deadline(t0, grace, 1500, 500),
            t0 + grace + Duration::from_secs(3)
        );
    }
}
