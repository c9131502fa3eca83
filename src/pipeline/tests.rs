//! The pipeline's order and its acknowledgement rules, on in-memory doubles.

use super::*;
use crate::envelope::Source;
use crate::sink::memory::MemorySink;
use crate::submission::Payload;
use bytes::Bytes;

fn pipeline(sink: Arc<MemorySink>) -> Pipeline {
    Pipeline::new(Guard::without_rules(), Scanner::disabled(), sink)
}

fn mail() -> Submission {
    mail_saying("hello")
}

fn mail_saying(text: &str) -> Submission {
    let raw = format!("From: a@example.com\r\nSubject: hi\r\n\r\n{text}\r\n");
    Submission::new(
        Source::Mailgate {
            sender: None,
            recipients: vec![],
            ip: "127.0.0.1".into(),
            client: None,
        },
        Payload::Mail(Bytes::from(raw)),
    )
}

const OPTS: ParseOptions<'static> = ParseOptions {
    form: None,
    keep_raw: false,
};

#[tokio::test]
async fn clean_mail_lands_on_the_desk_with_its_receipt() {
    let sink = Arc::new(MemorySink::default());
    let submission = mail();
    let id = submission.id;
    let stored = pipeline(sink.clone())
        .process(submission, OPTS)
        .await
        .unwrap();
    assert_eq!(stored.id, id, "receipt id is the submission's");
    assert_eq!(stored.stream, Stream::Desk);
    let entries = sink.entries();
    assert_eq!(entries.len(), 1, "exactly one entry written");
    assert_eq!(entries[0].kind, "message");
    let envelope: serde_json::Value =
        serde_json::from_str(&entries[0].envelope.to_json().unwrap()).unwrap();
    assert_eq!(envelope["id"], id.to_string());
    assert_eq!(envelope["subject"], "hi");
}

#[tokio::test]
async fn same_idempotency_key_is_stored_once() {
    let sink = Arc::new(MemorySink::default());
    let pipeline = pipeline(sink.clone());
    let mut first = mail();
    first.idempotency_key = Some(IdempotencyKey::named("acct:1:42"));
    let mut again = mail();
    again.idempotency_key = Some(IdempotencyKey::named("acct:1:42"));
    let a = pipeline.process(first, OPTS).await.unwrap();
    let b = pipeline.process(again, OPTS).await.unwrap();
    assert!(
        !a.already_stored && b.already_stored,
        "second read is recognised"
    );
    assert_eq!(a.id, b.id, "the re-read gets the first receipt");
    assert_eq!(sink.entries().len(), 1, "one entry, not two");
}

#[tokio::test]
async fn a_batch_is_recognised_in_order_and_checked_keys_are_not_asked_again() {
    let sink = Arc::new(MemorySink::default());
    let pipeline = pipeline(sink.clone());
    let mut first = mail();
    first.idempotency_key = Some(IdempotencyKey::named("acct:1:1"));
    let stored = pipeline.process(first, OPTS).await.unwrap();
    let keys = ["acct:1:2".to_string(), "acct:1:1".to_string()];
    let known = pipeline.recognise(&keys).await.unwrap();
    assert!(known[0].is_none(), "a new key is not recognised");
    let again = known[1].as_ref().expect("the stored key is recognised");
    assert!(again.already_stored);
    assert_eq!(again.id, stored.id, "with its first receipt");

    // A source that has just looked the key up hands the item in as
    // checked: it is not looked up again, and the sink's write-once
    // still stores it only once.
    let mut checked = mail();
    checked.idempotency_key = Some(IdempotencyKey::named("acct:1:1"));
    checked.idempotency_checked = true;
    let written = pipeline.process(checked, OPTS).await.unwrap();
    assert!(written.already_stored, "the write-once key still holds");
    assert_eq!(sink.entries().len(), 1, "one entry, not two");
}

#[tokio::test]
async fn a_retried_refusal_is_judged_again_and_audited_once() {
    use crate::guard::limiter::LimiterClock;
    use crate::guard::rules::RuleSet;
    let rules = "[[rule]]\nname = \"per-sender\"\nkey = [\"sender\"]\n\
                 rate = \"1/h\"\nburst = 1\naction = \"reject\"\n";
    let set = RuleSet::from_texts(&[("t.toml".into(), rules.into())]).expect("valid rules");
    let clock = governor::clock::FakeRelativeClock::default();
    let guard = Guard::new(set, None, None, LimiterClock::Fake(clock.clone()));
    let sink = Arc::new(MemorySink::default());
    let pipeline = Pipeline::new(guard, Scanner::disabled(), sink.clone());
    let contact: crate::sources::http::config::FormConfig =
        toml::from_str("id = \"contact\"").unwrap();
    let form = ParseOptions {
        form: Some(&contact.fields()),
        keep_raw: false,
    };
    // A form post, as the HTTP source hands it in: a refusal is a 429.
    let post = |text: &str| {
        let mut fields = crate::submission::FormPost::default();
        fields.add_field("email".into(), "ann@example.com".into());
        fields.add_field("message".into(), text.into());
        let source = Source::Form {
            form: "contact".into(),
            ip: "198.51.100.7".into(),
            user_agent: None,
            origin: None,
            referer: None,
            accept_language: None,
        };
        let mut submission = Submission::new(source, Payload::Form(fields));
        submission.idempotency_key = Some(IdempotencyKey::named(format!("form:contact:{text}")));
        submission.refusal_judged_again = true;
        submission
    };
    let first = pipeline.process(post("first"), form).await.unwrap();
    assert_eq!(first.answer, Answer::Accepted);

    // Over the limit: refused, and its retry (a client whose answer
    // was lost) is refused again without a second audit entry.
    let refused = pipeline.process(post("second"), form).await.unwrap();
    assert!(matches!(refused.answer, Answer::Refused(_)), "{refused:?}");
    assert_eq!(refused.stream, Stream::Suppressed);
    let again = pipeline.process(post("second"), form).await.unwrap();
    assert!(matches!(again.answer, Answer::Refused(_)), "still refused");
    assert!(again.already_stored, "the refusal is not written twice");
    let in_stream = |stream| sink.entries().iter().filter(|e| e.stream == stream).count();
    assert_eq!(in_stream(Stream::Suppressed), 1, "one audit entry");

    // Once the limit allows it, the same retry is accepted: the
    // refusal's key does not answer it.
    clock.advance(std::time::Duration::from_secs(3600));
    let later = pipeline.process(post("second"), form).await.unwrap();
    assert_eq!(later.answer, Answer::Accepted);
    assert!(!later.already_stored);
    assert_eq!(later.stream, Stream::Desk);
    assert_eq!(in_stream(Stream::Desk), 2, "both posts on the desk");
    assert_eq!(in_stream(Stream::Suppressed), 1);
}

#[tokio::test]
async fn failed_write_is_an_error_not_an_ack() {
    let sink = Arc::new(MemorySink::default());
    sink.set_down(true);
    let result = pipeline(sink.clone()).process(mail(), OPTS).await;
    assert!(
        matches!(result, Err(PipelineError::Sink(_))),
        "a failed write must surface as an error: {result:?}"
    );
    assert!(sink.entries().is_empty());
}
