//! The cluster rules' buckets of one item, counted together: every
//! matching rule and every identity in one script call on a single Redis,
//! one call per slot on a Redis Cluster. Against the dev Redis and a
//! private three-node cluster, through the guard's own limiters: each
//! bucket is charged on its own, a rotated identity never spares the fixed
//! one, a bucket named twice in one call is counted twice, and the buckets
//! land where their keys say.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use intake::guard::limiter::{Decision, LimiterClock, Limiters};
use intake::guard::rules::RuleSet;
use intake::guard::store::RedisStore;
use intake::redis_connection::{RedisConfig, RedisConnection};
use intake::units::HumanDuration;
use support::cluster::PrivateCluster;

const RULES: &str = r#"
[[rule]]
name = "per-sender"
key = ["sender"]
rate = "1/h"
burst = 2
action = "collapse"
scope = "cluster"

[[rule]]
name = "per-network"
key = ["ip_prefix"]
rate = "1/h"
burst = 3
action = "reject"
scope = "cluster"

[[rule]]
name = "valve"
key = ["global"]
rate = "1/h"
burst = 1
action = "quarantine"
shadow = true
scope = "cluster"
"#;

fn limiters(url: &str, more: &[String], prefix: &str) -> Limiters {
    let config = RedisConfig {
        url: url.to_string(),
        password: None,
        prefix: prefix.to_string(),
        timeout: HumanDuration(Duration::from_secs(2)),
        cluster: !more.is_empty(),
        cluster_nodes: more.to_vec(),
    };
    let connection = RedisConnection::new(&config, None).expect("a valid Redis config");
    let store = RedisStore::new(connection, prefix, Duration::from_secs(2));
    Limiters::new(LimiterClock::Live, Some(store))
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

fn limited(decision: &Decision) -> bool {
    matches!(decision, Decision::Limited { .. })
}

/// Four items of one customer from one network, the third rotating one of
/// its two addresses; what each rule decides for each.
async fn one_customer_four_items(limiters: &Limiters) {
    let set =
        RuleSet::from_texts(&[(PathBuf::from("t.toml"), RULES.to_string())]).expect("valid rules");
    let [sender, network, valve] = [&set.rules[0], &set.rules[1], &set.rules[2]];
    let net = keys(&["ip_prefix=192.0.2.0/24"]);
    let global = keys(&[""]);
    let mut seen = Vec::new();
    for addresses in [
        &["sender=ann@example.com", "sender=ann@work.example"][..],
        &["sender=ann@example.com", "sender=ann@work.example"][..],
        &["sender=ann@example.com", "sender=new@example.com"][..],
        &["sender=new@example.com"][..],
    ] {
        let senders = keys(addresses);
        let decisions = limiters
            .check_rules(&[(sender, &senders), (network, &net), (valve, &global)])
            .await
            .expect("Redis answers");
        assert_eq!(decisions.len(), 3, "a decision per rule, in order");
        seen.push(decisions.iter().map(limited).collect::<Vec<_>>());
    }
    assert_eq!(
        seen,
        [
            [false, false, false],
            [false, false, true],
            // ann@example.com is past its burst of 2: a fresh second
            // address does not spare it, and was charged all the same.
            [true, false, true],
            // new@example.com has one item left of its 2; the network's
            // burst of 3 is spent.
            [false, true, true],
        ],
        "each bucket counts on its own"
    );
    let state = limiters
        .peek(sender, "sender=new@example.com")
        .await
        .expect("Redis answers")
        .expect("a cluster bucket");
    assert_eq!(state.remaining, 0, "new@example.com was charged twice");
    assert!(state.retry_after.is_some());

    // The same bucket three times in one call: the later ones see the
    // earlier ones.
    let same = keys(&["sender=bob@example.com"; 3]);
    let decisions = limiters
        .check_rules(&[(sender, &same)])
        .await
        .expect("Redis answers");
    assert!(limited(&decisions[0]), "three items on a burst of 2");
    let bob = limiters
        .peek(sender, "sender=bob@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bob.remaining, 0);

    // A cluster rule for which the item has no key limits nothing.
    let decisions = limiters
        .check_rules(&[
            (sender, keys(&[])),
            (network, keys(&["ip_prefix=198.51.100.0/24"])),
        ])
        .await
        .unwrap();
    assert_eq!(decisions, [Decision::Allowed, Decision::Allowed]);
}

#[tokio::test]
async fn one_items_cluster_buckets_are_counted_together_on_one_redis() {
    let prefix = support::unique_prefix("cluster_buckets");
    let limiters = limiters(&support::redis_url(), &[], &prefix);
    one_customer_four_items(&limiters).await;
    let mut redis = redis::Client::open(support::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:rl:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    // ann's two addresses, new and bob; the two networks; the valve.
    assert_eq!(buckets.len(), 7, "{buckets:?}");
    assert!(buckets.iter().all(|b| b.ends_with('}') && b.contains(":{")));
}

#[tokio::test]
async fn one_items_cluster_buckets_are_counted_per_slot_on_a_cluster() {
    let cluster = PrivateCluster::start();
    let urls = cluster.urls();
    let prefix = support::unique_prefix("cluster_buckets");
    let limiters = limiters(&urls[0], &urls[1..], &prefix);
    one_customer_four_items(&limiters).await;
    let buckets = cluster.keys_matching(&format!("{prefix}:rl:*"));
    assert_eq!(buckets.len(), 7, "{buckets:?}");
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "one item's buckets span nodes: {spread:?}"
    );
}
