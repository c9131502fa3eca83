//! The public listener under abuse, against a real gateway and the dev
//! Redis: slow-loris clients are cut off, oversized declarations and heads
//! are refused before anything is read, one address cannot hold every
//! worker, and form fields cannot inject mail headers.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{client, redis_url, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with a short header timeout and a small per-IP cap.
async fn strict_gateway(test: &str) -> Gateway {
    Gateway::start_edited(test, &redis_url(), "", |text| {
        text.replace(
            "header_timeout = \"5s\"",
            "header_timeout = \"2s\"\nmax_requests_per_ip = 2",
        )
    })
    .await
}

/// Reads what the server sends until it closes or `wait` passes.
async fn read_answer(stream: &mut TcpStream, wait: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_loris_client_is_cut_off_while_others_are_served() {
    let gw = strict_gateway("limits_slow_loris").await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\nX-Slow: ")
        .await
        .unwrap();

    // One header byte every 500 ms, never finishing the head; the server
    // must close the connection at its 2 s header timeout. 40 bytes (20 s)
    // is far past it: reaching the end means the client was never cut off.
    let mut cut_off = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if slow.write_all(b"a").await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            // hyper may answer 408 before closing: that is a cut-off too.
            Ok(Ok(_)) => {
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
        // Meanwhile a well-behaved client is answered at once.
        let health = client()
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .expect("a normal client is served while the slow one trickles");
        assert_eq!(health.status(), 200, "the slow client stalled others");
    }
    assert!(
        cut_off,
        "a client trickling its headers was never disconnected"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_5gb_declared_body_is_refused_413_without_reading_it() {
    let gw = Gateway::start("limits_5gb").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Headers only: if the server waited for the body, no answer would come.
    stream
        .write_all(
            b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 5000000000\r\n\r\nemail=a",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a 5 GB declaration must be answered 413 at once, got: {answer:?}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
    gw.stop().await;
}

#[tokio::test]
async fn ten_thousand_form_fields_are_refused_413() {
    let gw = Gateway::start("limits_fields").await;
    let mut body = String::from("email=ann%40example.com");
    for i in 0..10_000 {
        body.push_str(&format!("&f{i}=x"));
    }
    let response = client()
        .post(gw.form_url("contact"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "max_fields must refuse the post");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "too_many_parts");
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_or_overcrowded_heads_get_431() {
    let gw = Gateway::start("limits_headers").await;
    // Default http.max_header_bytes is 32KiB.
    let big = client()
        .get(format!("{}/healthz", gw.url))
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431, "a 40 KiB header must be refused");

    // Default http.max_headers is 64.
    let mut crowded = client().get(format!("{}/healthz", gw.url));
    for i in 0..80 {
        crowded = crowded.header(format!("x-h{i}"), "1");
    }
    let crowded = crowded.send().await.unwrap();
    assert_eq!(crowded.status(), 431, "80 header fields must be refused");

    let normal = client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(normal.status(), 200, "a normal request still passes");
    gw.stop().await;
}

#[tokio::test]
async fn one_address_over_its_in_flight_cap_gets_429_then_is_served_again() {
    let gw = strict_gateway("limits_per_ip").await;
    // Two uploads that never finish their body hold both places of
    // 127.0.0.1 (max_requests_per_ip = 2).
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(
                b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\n\
                  Content-Length: 1000\r\n\r\nemail=",
            )
            .await
            .unwrap();
        holders.push(stream);
    }
    let health = format!("{}/healthz", gw.url);
    let mut refused = None;
    for _ in 0..50 {
        let response = client().get(&health).send().await.unwrap();
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("a third request in flight from one address must get 429");
    assert_eq!(refused.headers()["retry-after"], "1");
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"], "too_many_requests");

    // Mail from `intake mailgate` (valid bearer token) is not capped: a
    // mail server delivers in parallel from one address.
    let mail = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(support::TOKEN)
        .header("content-type", "message/rfc822")
        .body("From: ann@example.com\r\nSubject: hi\r\n\r\nHello\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(
        mail.status(),
        202,
        "authenticated mail passes the per-IP cap"
    );
    let forged = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth("wrong-token")
        .header("content-type", "message/rfc822")
        .body("Subject: x\r\n\r\nx\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 429, "a wrong token is capped like anyone");

    // Closing the uploads frees the places.
    drop(holders);
    let mut served = false;
    for _ in 0..50 {
        if client().get(&health).send().await.unwrap().status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the address is served again once its requests end");
    gw.stop().await;
}

#[tokio::test]
async fn line_breaks_in_subject_and_name_cannot_inject_headers() {
    let gw = Gateway::start("limits_crlf").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "ann@example.com"),
            ("name", "Ann\r\nBcc: victim@example.com"),
            ("_subject", "Order\r\nBcc: victim@example.com\r\n\r\nbody"),
            ("message", "Line one\r\nLine two"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "the post itself is accepted");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1);
    let env = desk[0].envelope();
    assert_eq!(env["subject"], "Order Bcc: victim@example.com body");
    assert_eq!(env["customer"]["name"], "Ann Bcc: victim@example.com");
    assert_eq!(env["from"]["name"], "Ann Bcc: victim@example.com");
    assert_eq!(
        env["text"], "Line one\r\nLine two",
        "the message body keeps its lines"
    );

    // An address with a line break is refused outright.
    let bad = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com\r\nBcc: victim@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "an address with CR/LF must be refused");
    assert_eq!(gw.entries("desk").await.len(), 1, "nothing more stored");
    gw.stop().await;
}

#[tokio::test]
async fn each_limit_breach_is_counted_by_its_limit() {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "admin-secret-1\n").unwrap();
    let port = support::free_port();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
        token.path().display()
    );
    let gw = Gateway::start_edited("limits_metrics", &redis_url(), &extra, |text| {
        text.replace(
            "header_timeout = \"5s\"",
            "header_timeout = \"1s\"\nmax_requests_per_ip = 1",
        )
    })
    .await;

    // headers: a 40 KiB header.
    let big = client()
        .get(format!("{}/healthz", gw.url))
        .header("x-big", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);

    // header_timeout: a head never finished, cut off after 1 s.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an unfinished head must be cut off");

    // requests_per_ip: one upload holds the only place of 127.0.0.1.
    let mut holder = TcpStream::connect(gw.addr).await.unwrap();
    holder
        .write_all(
            b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 100\r\n\r\nemail=",
        )
        .await
        .unwrap();
    let mut saw_429 = false;
    for _ in 0..50 {
        let status = client()
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status();
        if status == 429 {
            saw_429 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_429, "a second request in flight must get 429");
    drop(holder);

    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth("admin-secret-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for limit in ["headers", "header_timeout", "requests_per_ip"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("intake_http_limit_refusals_total{")
                    && l.contains(&format!("limit=\"{limit}\""))),
            "no refusal counted for {limit}:\n{text}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_broken_chunked_body_gets_a_fixed_sentence_not_the_parsers_words() {
    let gw = Gateway::start("limits_chunked").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // "zz" is no chunk size: hyper's body fails with its own error text,
    // which must stay in the gateway's debug log.
    stream
        .write_all(
            b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Transfer-Encoding: chunked\r\n\r\n5\r\nemail\r\nzz\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "a 400: {answer:?}");
    let body = &answer[answer.find("\r\n\r\n").expect("a body") + 4..];
    let json: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(json["error"], "bad_request");
    assert_eq!(
        json["message"], "the body cannot be read: it ended early or its framing is broken",
        "a fixed sentence, nothing of hyper's"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
    gw.stop().await;
}

#[tokio::test]
async fn a_body_below_the_minimum_rate_gets_408_and_the_connection_closes() {
    let gw = Gateway::start_edited("limits_min_rate", &redis_url(), "", |text| {
        text.replace(
            "header_timeout = \"5s\"",
            "header_timeout = \"5s\"\nmin_body_rate = 1000\nbody_rate_grace = \"500ms\"",
        )
    })
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/forms/contact HTTP/1.1\r\nHost: shop.test\r\n\
          Content-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 100000\r\n\r\nemail=ann%40example.com",
    )
    .await
    .unwrap();
    // 23 bytes earn 23 ms past the 500 ms grace; then nothing comes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body below http.min_body_rate is answered 408: {answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "and the connection is closed: {answer:?}"
    );
    assert!(read.is_ok(), "the gateway closed the connection");

    // A body that keeps the rate is taken.
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "bob@example.com"), ("message", "hello")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    gw.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    let gw = Gateway::start_edited("limits_conn_per_ip", &redis_url(), "", |text| {
        text.replace(
            "header_timeout = \"5s\"",
            "header_timeout = \"5s\"\nmax_connections_per_ip = 2",
        )
    })
    .await;
    let source = support::bystander::loopback(0, 77);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            support::bystander::connect_from(source, gw.addr)
                .await
                .unwrap(),
        );
    }
    let mut third = support::bystander::connect_from(source, gw.addr)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a third connection from one address is closed without an answer: {read:?}"
    );
    // The held ones are served, and so is another address.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut held[0], Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let other = client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    gw.stop().await;
}
