//! A 202 means stored, and a retry means the same item: an
//! `Idempotency-Key` stands for the payload it was first sent with (the
//! same key with another payload is 422, never someone else's receipt), a
//! form posted again without a key (a double click, a resend) gets its
//! first receipt, and a write that timed out in the gateway but landed in
//! Redis is found by the client's resend instead of being stored again.
//! Attacks are bounded, a bystander is measured beside them, and every
//! receipt handed out is checked to be stored exactly once.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::audit::{assert_receipts_stored_once, Receipts};
use support::bystander::{self, bystander_address, client_from, loopback, measure};
use support::redis_proxy::{RedisProxy, Rule};
use support::{redis_url, Gateway, TOKEN};

/// A plain post of the contact form from `client`, as JSON, with `key`.
async fn post(
    client: &reqwest::Client,
    gw: &Gateway,
    key: Option<&str>,
    email: &str,
    message: &str,
) -> (u16, Value) {
    let mut request = client
        .post(gw.form_url("contact"))
        .json(&serde_json::json!({ "email": email, "message": message }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The bystander: a customer posting its own forms, one after another.
async fn bystander_posts(
    gw: &Gateway,
    what: &str,
    n: usize,
    receipts: &Receipts,
) -> bystander::Latencies {
    let client = client_from(bystander_address());
    measure(what, n, |i| {
        let client = client.clone();
        let receipts = receipts.clone();
        async move {
            let (status, body) = post(
                &client,
                gw,
                None,
                &format!("bystander{i}@example.net"),
                &format!("{what}: a question about order {i}"),
            )
            .await;
            if status != 202 {
                return Err(format!("{status} {body}"));
            }
            receipts.add(body["id"].as_str().unwrap_or_default());
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_reused_with_another_payload_is_refused_422_never_answered_with_the_first_receipt() {
    let gw = Gateway::start("idem_reused").await;
    let receipts = Receipts::default();
    let quiet = bystander_posts(&gw, "quiet", 20, &receipts).await;

    let attacker = client_from(loopback(0, 2));
    let elsewhere = client_from(loopback(0, 3));
    let attack = async {
        let mut refused = 0;
        for round in 0..10 {
            let key = format!("attack-{round}");
            let (status, first) =
                post(&attacker, &gw, Some(&key), "ann@example.com", "first").await;
            assert_eq!(status, 202, "the first post with a key is stored: {first}");
            let receipt = first["id"].as_str().unwrap().to_string();
            receipts.add(receipt.as_str());
            // Another email, another message, another client address:
            // each is another request, and the key cannot stand for it.
            for (client, email, message) in [
                (&attacker, "bob@example.com", "first"),
                (&attacker, "ann@example.com", "second"),
                (&elsewhere, "ann@example.com", "first"),
            ] {
                let (status, body) = post(client, &gw, Some(&key), email, message).await;
                assert_eq!(status, 422, "a reused key with another payload: {body}");
                assert_eq!(body["error"], "idempotency_key_reused", "{body}");
                assert!(body.get("id").is_none(), "no receipt for a refusal: {body}");
                refused += 1;
            }
            // The same request again is a retry: the first receipt.
            let (status, again) =
                post(&attacker, &gw, Some(&key), "ann@example.com", "first").await;
            assert_eq!(status, 202);
            assert_eq!(
                again["id"].as_str(),
                Some(receipt.as_str()),
                "a retry gets the first receipt"
            );
        }
        refused
    };
    let (refused, attacked) = tokio::join!(attack, bystander_posts(&gw, "attacked", 20, &receipts));
    bystander::report("idempotency key reuse", &quiet, &attacked);
    assert_eq!(refused, 30);

    // Racing: two payloads with one key at the same moment. One is stored,
    // the other is refused or (the same payload) answered with its receipt.
    for round in 0..10 {
        let key = format!("race-{round}");
        let (a, b) = tokio::join!(
            post(&attacker, &gw, Some(&key), "ann@example.com", "race A"),
            post(&attacker, &gw, Some(&key), "ann@example.com", "race B"),
        );
        let statuses = [a.0, b.0];
        assert!(
            statuses.contains(&202) && statuses.contains(&422),
            "one of two racing payloads is stored, the other refused: {statuses:?} {} {}",
            a.1,
            b.1
        );
        for (status, body) in [a, b] {
            if status == 202 {
                receipts.add(body["id"].as_str().unwrap());
            }
        }
    }
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
    assert_eq!(
        stored.count("desk"),
        20 + 20 + 10 + 10,
        "the bystander's posts, one per attack round and one per race, nothing else"
    );
}

#[tokio::test]
async fn a_reused_key_on_raw_mail_is_refused_422_too() {
    let gw = Gateway::start("idem_reused_mail").await;
    let client = support::client();
    let send = |body: &'static str| {
        client
            .post(format!("{}/v1/messages", gw.url))
            .bearer_auth(TOKEN)
            .header("content-type", "message/rfc822")
            .header("idempotency-key", "mail-key-1")
            .body(body)
            .send()
    };
    let first = send("From: a@example.com\r\nSubject: one\r\n\r\nfirst\r\n")
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let other = send("From: a@example.com\r\nSubject: two\r\n\r\nanother mail\r\n")
        .await
        .unwrap();
    assert_eq!(other.status(), 422, "another message under the same key");
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"], "idempotency_key_reused");
    let again: Value = send("From: a@example.com\r\nSubject: one\r\n\r\nfirst\r\n")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the same message again is a retry"
    );
    let receipts = vec![first["id"].as_str().unwrap().to_string()];
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts).await;
    assert_eq!(stored.count("desk"), 1, "one mail stored");
}

#[tokio::test]
async fn a_form_posted_again_without_a_key_gets_its_first_receipt() {
    let gw = Gateway::start("idem_resend").await;
    let browser = client_from(loopback(0, 4));
    let submit = |client: reqwest::Client, message: &'static str| {
        let url = gw.form_url("contact");
        async move {
            let response = client
                .post(url)
                .header("accept", "text/html")
                .form(&[("email", "ann@example.com"), ("message", message)])
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                303,
                "a browser is sent to the thank-you page"
            );
            let location = response.headers()["location"].to_str().unwrap().to_string();
            location
                .split("receipt=")
                .nth(1)
                .expect("the receipt is in the redirect")
                .to_string()
        }
    };
    // A double click: two posts at the same moment, then a resend.
    let (a, b) = tokio::join!(
        submit(browser.clone(), "Where is my parcel?"),
        submit(browser.clone(), "Where is my parcel?")
    );
    let c = submit(browser.clone(), "Where is my parcel?").await;
    assert_eq!(a, b, "a double click is one item");
    assert_eq!(a, c, "a resend gets the first receipt");
    // Another text is another item; the same text from another network too.
    let other = submit(browser.clone(), "And my second parcel?").await;
    assert_ne!(other, a);
    let far = submit(client_from(loopback(9, 4)), "Where is my parcel?").await;
    assert_ne!(far, a, "another client network is another customer's post");
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &[a, other, far]).await;
    assert_eq!(stored.count("desk"), 3);
    assert_eq!(
        stored.count("suppressed"),
        0,
        "a resend leaves no copy anywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_time_out_but_land_are_found_by_the_resend_not_stored_again() {
    // Every write to the desk reaches Redis 1.5 s late, well past the
    // gateway's 300 ms timeout: the gateway cannot know it landed, answers
    // 503 "may have been stored", and the client's resend finds it.
    let gw_redis = redis_url();
    let proxy = RedisProxy::start(gw_redis.trim_start_matches("redis://")).await;
    let gw = Gateway::start_edited("idem_late_write", &proxy.url(), "", |text| {
        text.replace("timeout = \"1s\"", "timeout = \"300ms\"")
    })
    .await;
    let read_url = gw_redis.clone();
    let receipts = Receipts::default();
    // One post before the delay, so Redis knows the write script: a
    // script call that times out never falls back to loading it.
    let (status, body) = post(&support::client(), &gw, None, "warm@example.com", "warm up").await;
    assert_eq!(status, 202, "{body}");
    receipts.add(body["id"].as_str().unwrap());
    let desk_key = format!("\r\n{}:desk\r\n", gw.prefix);
    proxy.set(Rule::Delay {
        pattern: vec![b"EVALSHA".to_vec(), desk_key.as_bytes().to_vec()],
        by: Duration::from_millis(1500),
    });

    let mut answered_maybe_stored = 0;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..12 {
        let url = gw.form_url("contact");
        tasks.spawn(async move {
            // A plain HTML form: no key, retried by the person as the page says.
            let client = client_from(loopback(1, n + 1));
            let mut maybe = 0;
            for attempt in 0..20 {
                let response = client
                    .post(&url)
                    .form(&[
                        ("email", format!("late{n}@example.com")),
                        ("message", format!("late write {n}")),
                    ])
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                match status {
                    202 => return (body["id"].as_str().unwrap().to_string(), maybe),
                    503 => {
                        // A write that timed out may have landed; a look-up
                        // stuck behind it is only "retry later".
                        if body["maybe_stored"] == true {
                            maybe += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(300 + 100 * attempt)).await;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            panic!("post {n} never acknowledged");
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (receipt, maybe) = done.unwrap();
        receipts.add(receipt);
        answered_maybe_stored += maybe;
    }
    assert!(
        answered_maybe_stored > 0,
        "writes timed out in the gateway and were answered 503 maybe_stored"
    );
    // Let any write still in flight land before counting.
    proxy.set(Rule::Pass);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = assert_receipts_stored_once(&read_url, &gw.prefix, &receipts.all()).await;
    println!(
        "late writes: 12 posts, {answered_maybe_stored} answered 503 maybe_stored, {} on the desk",
        stored.count("desk")
    );
    assert_eq!(
        stored.count("desk"),
        13,
        "each post once (and the warm-up), however many times it was resent"
    );
}
