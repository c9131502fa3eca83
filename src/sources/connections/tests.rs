//! The connection registry's unit tests: caps per client and in all,
//! what is shed for a newcomer and what never is, and waiters served
//! fewest-slots first. A file of their own: they outgrew the module.

use super::*;

const GRACE: Duration = Duration::from_secs(1);

fn registry(max_connections: usize, max_per_client: usize, max_waiting: usize) -> Arc<Registry> {
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
