//! A cap on the requests one client IP has in flight at once, so a single
//! address cannot hold every worker (slow uploads, parallel floods) while
//! other clients wait.
//!
//! The map holds only addresses with a request in flight: an entry is
//! removed when its count drops to zero, so its size is bounded by the
//! open connections, never by the addresses ever seen.
//!
//! An IPv6 client counts by its /64 (the same key as the connection cap's,
//! [`crate::sources::connections::client_key`]): one host usually holds a
//! whole /64 and could otherwise take a fresh address per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// In-flight requests per client IP, with a cap.
#[derive(Debug)]
pub struct PerIpLimit {
    max: usize,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted request; dropping it frees its place.
#[derive(Debug)]
pub struct InFlight {
    ip: IpAddr,
    in_flight: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpLimit {
    pub fn new(max: usize) -> Self {
        PerIpLimit {
            max: max.max(1),
            in_flight: Arc::default(),
        }
    }

    /// Admits one more request from `ip`, or `None` when it already has
    /// the maximum in flight.
    pub fn admit(&self, ip: IpAddr) -> Option<InFlight> {
        let ip = crate::sources::connections::client_key(ip);
        // The lock is held for a map lookup only, never across an await.
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InFlight {
            ip,
            in_flight: self.in_flight.clone(),
        })
    }

    /// Addresses with a request in flight now.
    pub fn tracked(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn refuses_past_the_cap_and_admits_again_when_one_finishes() {
        let limit = PerIpLimit::new(2);
        let first = limit.admit(ip(1)).expect("first admitted");
        let _second = limit.admit(ip(1)).expect("second admitted");
        assert!(limit.admit(ip(1)).is_none(), "third must be refused");
        assert!(
            limit.admit(ip(2)).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(limit.admit(ip(1)).is_some(), "a freed place is given again");
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let limit = PerIpLimit::new(1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = limit.admit(a).expect("first admitted");
        assert!(limit.admit(b).is_none(), "same /64 shares the cap");
        assert!(limit.admit(other).is_some(), "another /64 does not");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _v4 = limit.admit(ip(1)).expect("v4 admitted");
        assert!(
            limit.admit(mapped).is_none(),
            "a v4-mapped address is its v4"
        );
    }

    #[test]
    fn forgets_an_address_when_its_last_request_ends() {
        let limit = PerIpLimit::new(4);
        let a = limit.admit(ip(1)).unwrap();
        let b = limit.admit(ip(1)).unwrap();
        let c = limit.admit(ip(2)).unwrap();
        assert_eq!(limit.tracked(), 2);
        drop(a);
        assert_eq!(limit.tracked(), 2, "ip 1 still has one in flight");
        drop(b);
        drop(c);
        assert_eq!(limit.tracked(), 0, "the map must not keep idle addresses");
    }
}
