//! A client as the slots count it: its key (IPv4 as is, IPv6 by its /64)
//! and what it holds (connections open, newcomers waiting). Below both the
//! registry and its connections, which share one count per client.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// What one client holds. Shared by its connections and waiters so that a
/// scan needs no lookup; changed only under the registry's lock.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(super) open: AtomicUsize,
    pub(super) waiting: AtomicUsize,
}

impl Held {
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}
