//! The Redis sink on the dev Redis: entries carry the contract's fields,
//! and an idempotency key makes a repeated write return the first receipt.

mod support;

use intake::config::Config;
use intake::route::Stream;
use intake::sink::redis::RedisSink;
use intake::sink::{Appended, Entry, Sink};
use intake::submission::ReceiptId;
use support::{read_stream, redis_url, unique_prefix};

fn sink(prefix: &str) -> RedisSink {
    let config = Config::from_toml(&format!(
        "[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n",
        redis_url()
    ))
    .unwrap();
    RedisSink::new(&config.redis, None).unwrap()
}

fn entry(key: Option<&str>) -> Entry {
    Entry {
        stream: Stream::Desk,
        id: ReceiptId::new(),
        kind: "message",
        envelope: "{}".into(),
        reason: None,
        duplicate_of: None,
        count: None,
        idempotency_key: key.map(str::to_string),
        key_digest: None,
        key_ttl: None,
    }
}

#[tokio::test]
async fn repeated_idempotency_key_returns_the_first_receipt() {
    let prefix = unique_prefix("sink_idem");
    let sink = sink(&prefix);
    let first = entry(Some("imap:support:7:101:<a@b>"));
    let second = entry(Some("imap:support:7:101:<a@b>"));
    let written = sink.append(&first).await.unwrap();
    let Appended::Written { entry_id } = written else {
        panic!("first write must be written: {written:?}")
    };
    let again = sink.append(&second).await.unwrap();
    assert_eq!(
        again,
        Appended::AlreadyStored {
            receipt: first.id.to_string(),
            entry_id: entry_id.clone(),
            digest: None,
        },
        "the re-read is recognised and answered with the first receipt"
    );
    let entries = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(entries.len(), 1, "one entry for two writes");
    assert_eq!(entries[0].field("id"), first.id.to_string());
    assert_eq!(entries[0].entry_id, entry_id);
}

#[tokio::test]
async fn entries_without_a_key_are_always_written() {
    let prefix = unique_prefix("sink_plain");
    let sink = sink(&prefix);
    for _ in 0..3 {
        assert!(matches!(
            sink.append(&entry(None)).await.unwrap(),
            Appended::Written { .. }
        ));
    }
    let entries = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].field("kind"), "message");
    assert_eq!(entries[0].field("envelope"), "{}");
}

#[tokio::test]
async fn held_entries_read_back_in_order_after_a_cursor_and_delete() {
    // What the re-drive of held items relies on.
    let prefix = unique_prefix("sink_read");
    let sink = sink(&prefix);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut e = entry(None);
        e.stream = Stream::Held;
        e.kind = "held";
        e.reason = Some("waiting for the virus scanner".into());
        sink.append(&e).await.unwrap();
        ids.push(e.id.to_string());
    }
    assert_eq!(sink.len(Stream::Held).await.unwrap(), 3);
    let first_two = sink.read(Stream::Held, None, 2).await.unwrap();
    assert_eq!(first_two.len(), 2, "count is honoured");
    assert_eq!(first_two[0].fields["id"], ids[0], "oldest first");
    assert_eq!(first_two[0].fields["kind"], "held");
    let rest = sink
        .read(Stream::Held, Some(&first_two[1].entry_id), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1, "the cursor is exclusive");
    assert_eq!(rest[0].fields["id"], ids[2]);
    sink.remove(Stream::Held, &first_two[0].entry_id)
        .await
        .unwrap();
    assert_eq!(sink.len(Stream::Held).await.unwrap(), 2, "one deleted");
    let left = sink.read(Stream::Held, None, 10).await.unwrap();
    assert_eq!(left[0].fields["id"], ids[1], "the deleted one is gone");
}

#[tokio::test]
async fn large_entry_with_a_key_is_written_once_too() {
    // Over the size where the sink uses WATCH/MULTI instead of its script.
    let prefix = unique_prefix("sink_idem_large");
    let sink = sink(&prefix);
    let envelope = format!("{{\"text\":\"{}\"}}", "x".repeat(3 << 20));
    let mut first = entry(Some("mailgate:large"));
    first.envelope = envelope.clone().into();
    let mut second = entry(Some("mailgate:large"));
    second.envelope = envelope.into();
    let written = sink.append(&first).await.unwrap();
    let Appended::Written { entry_id } = written else {
        panic!("first write must be written: {written:?}")
    };
    // Two writers at once with the same key: one entry in the end.
    let (a, b) = tokio::join!(sink.append(&second), sink.append(&second));
    for again in [a.unwrap(), b.unwrap()] {
        assert_eq!(
            again,
            Appended::AlreadyStored {
                receipt: first.id.to_string(),
                entry_id: entry_id.clone(),
                digest: None,
            },
            "the retry is answered with the first receipt and entry"
        );
    }
    let entries = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(entries.len(), 1, "one entry for three writes");
    assert_eq!(entries[0].field("idempotency_key"), "mailgate:large");
}

#[tokio::test]
async fn large_entries_racing_with_one_key_make_one_entry() {
    let prefix = unique_prefix("sink_idem_race");
    let sink = sink(&prefix);
    let envelope = format!("{{\"text\":\"{}\"}}", "y".repeat(2 << 20));
    let entries: Vec<Entry> = (0..4)
        .map(|_| {
            let mut e = entry(Some("mailgate:race"));
            e.envelope = envelope.clone().into();
            e
        })
        .collect();
    let results = futures_util::future::join_all(entries.iter().map(|e| sink.append(e))).await;
    let written = results
        .iter()
        .filter(|r| matches!(r, Ok(Appended::Written { .. })))
        .count();
    assert_eq!(written, 1, "exactly one writer wins: {results:?}");
    let stored = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(stored.len(), 1, "one entry for four racing writes");
}

#[tokio::test]
async fn a_key_remembers_the_digest_it_was_first_written_with() {
    // Small entries go through the script, large ones through WATCH/MULTI:
    // both keep the digest beside the receipt, and a look-up returns it.
    for (name, size) in [("small", 10), ("large", 2 << 20)] {
        let prefix = unique_prefix(&format!("sink_digest_{name}"));
        let sink = sink(&prefix);
        let envelope = format!("{{\"text\":\"{}\"}}", "z".repeat(size));
        let mut first = entry(Some("http:form:contact:abc"));
        first.envelope = envelope.clone().into();
        first.key_digest = Some("d1".into());
        first.key_ttl = Some(std::time::Duration::from_secs(600));
        let Appended::Written { entry_id } = sink.append(&first).await.unwrap() else {
            panic!("{name}: the first write is written");
        };
        let mut other = entry(Some("http:form:contact:abc"));
        other.envelope = envelope.into();
        other.key_digest = Some("d2".into());
        assert_eq!(
            sink.append(&other).await.unwrap(),
            Appended::AlreadyStored {
                receipt: first.id.to_string(),
                entry_id: entry_id.clone(),
                digest: Some("d1".into()),
            },
            "{name}: the second write learns which payload the key stands for"
        );
        let seen = sink
            .seen("http:form:contact:abc")
            .await
            .unwrap()
            .expect("the key is seen");
        assert_eq!(seen.digest.as_deref(), Some("d1"), "{name}");
        assert_eq!(seen.entry_id, entry_id, "{name}");
        let mut conn = support::test_connection(&redis_url()).await;
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{{{prefix}:desk}}:seen:http:form:contact:abc"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (1..=600).contains(&ttl),
            "{name}: the key lives as long as the entry said, not 30 days: {ttl}"
        );
    }
}

/// A parsed mail of about `size` bytes, most of it an attachment, its raw
/// message kept: the envelope a big mail makes.
fn big_envelope(size: usize) -> intake::envelope::Envelope {
    use base64::Engine as _;
    let data: Vec<u8> = (0..size * 3 / 4).map(|i| (i * 31 % 251) as u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut mail = b"From: ann@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
        Content-Type: text/plain\r\n\r\n\"Quoted\" text.\r\n--b\r\n\
        Content-Type: application/octet-stream\r\n\
        Content-Disposition: attachment; filename=big.bin\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    for line in encoded.as_bytes().chunks(76) {
        mail.extend_from_slice(line);
        mail.extend_from_slice(b"\r\n");
    }
    mail.extend_from_slice(b"--b--\r\n");
    let source = intake::envelope::Source::Mailgate {
        sender: None,
        recipients: vec![],
        ip: "127.0.0.1".into(),
        client: None,
    };
    let submission =
        intake::submission::Submission::new(source, intake::submission::Payload::Mail(mail.into()));
    let options = intake::parse::ParseOptions {
        form: None,
        keep_raw: true,
    };
    intake::parse::parse(submission, options).unwrap().envelope
}

#[tokio::test]
async fn a_large_envelope_encoded_on_the_way_reads_back_as_the_same_json() {
    let prefix = unique_prefix("sink_streamed");
    let sink = sink(&prefix);
    let envelope = big_envelope(4 << 20);
    let expected = serde_json::to_string(&envelope).unwrap();
    assert!(expected.len() > 4 << 20, "large enough for the large path");
    // With a key (mailgate, forms) and without (LMTP): both paths stream.
    let mut keyed = entry(Some("mailgate:streamed"));
    keyed.id = envelope.id;
    keyed.envelope = envelope.clone().into();
    keyed.reason = Some("a reason after the envelope".into());
    let mut unkeyed = entry(None);
    unkeyed.envelope = envelope.into();
    assert!(matches!(
        sink.append(&keyed).await.unwrap(),
        Appended::Written { .. }
    ));
    assert!(matches!(
        sink.append(&keyed).await.unwrap(),
        Appended::AlreadyStored { .. }
    ));
    assert!(matches!(
        sink.append(&unkeyed).await.unwrap(),
        Appended::Written { .. }
    ));
    let entries = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(entries.len(), 2, "the keyed entry once, the other once");
    for stored in &entries {
        assert!(
            stored.field("envelope") == expected,
            "the envelope reads back byte for byte ({} bytes stored, {} expected)",
            stored.field("envelope").len(),
            expected.len()
        );
    }
    assert_eq!(entries[0].field("id"), keyed.id.to_string());
    assert_eq!(entries[0].field("reason"), "a reason after the envelope");
    assert_eq!(entries[0].field("idempotency_key"), "mailgate:streamed");
}

#[tokio::test]
async fn large_envelopes_racing_with_one_key_make_one_entry() {
    let prefix = unique_prefix("sink_streamed_race");
    let sink = sink(&prefix);
    let envelope = big_envelope(2 << 20);
    let entries: Vec<Entry> = (0..4)
        .map(|_| {
            let mut e = entry(Some("mailgate:streamed-race"));
            e.envelope = envelope.clone().into();
            e
        })
        .collect();
    let results = futures_util::future::join_all(entries.iter().map(|e| sink.append(e))).await;
    let written = results
        .iter()
        .filter(|r| matches!(r, Ok(Appended::Written { .. })))
        .count();
    assert_eq!(written, 1, "exactly one writer wins: {results:?}");
    let stored = read_stream(&redis_url(), &format!("{prefix}:desk")).await;
    assert_eq!(stored.len(), 1, "one entry for four racing writes");
}

#[tokio::test]
async fn a_large_envelope_on_a_cluster_is_encoded_whole_and_written_once() {
    use redis::AsyncCommands;
    let cluster = support::cluster::PrivateCluster::start();
    let urls = cluster.urls();
    let more = urls[1..]
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = Config::from_toml(&format!(
        "[redis]\nurl = \"{}\"\nprefix = \"big\"\ntimeout = \"5s\"\ncluster = true\ncluster_nodes = [{more}]\n",
        urls[0]
    ))
    .unwrap();
    let sink = RedisSink::new(&config.redis, None).unwrap();
    let envelope = big_envelope(2 << 20);
    let expected = serde_json::to_string(&envelope).unwrap();
    let mut keyed = entry(Some("mailgate:cluster-large"));
    keyed.envelope = envelope.into();
    assert!(matches!(
        sink.append(&keyed).await.unwrap(),
        Appended::Written { .. }
    ));
    assert!(matches!(
        sink.append(&keyed).await.unwrap(),
        Appended::AlreadyStored { .. }
    ));
    let mut conn = cluster.connection().await;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all("big:desk").await.unwrap();
    assert_eq!(reply.ids.len(), 1, "written once on the cluster");
    let stored: String = reply.ids[0].get("envelope").unwrap();
    assert!(stored == expected, "the envelope reads back whole");
}
