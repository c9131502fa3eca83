//! The per-customer limit holds whichever identity is rotated: a fixed
//! envelope sender under a new `From:` each time, a fixed `From:` under a
//! new `Reply-To:`, `From: decoyN@..., ann@...` (with one decoy, and with
//! 40, more than are read), the Unicode and punycode
//! forms of one domain, fullwidth letters, zero-width and soft-hyphen
//! characters, Cyrillic lookalikes. Through `POST /v1/messages` with the
//! shipped rules, each rotation's 20 mails (every text distinct, so the
//! per-sender rule acts, not dedupe) put no more on the desk than a steady
//! sender's 20 do; the rest is collapsed or suppressed, nothing lost. A
//! normal customer from another address is measured beside the attack.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header;
use support::audit::{assert_receipts_stored_once, Receipts, Stored};
use support::bystander::{bystander_address, client_from, loopback, measure, report};
use support::{Gateway, TOKEN};

/// Mails per rotation.
const MAILS: usize = 20;

/// What the shipped `one-customer-mail` rule lets through at once.
const SHIPPED_BURST: usize = 5;

/// The bystander's requests before and during the attack.
const BYSTANDER_MAILS: usize = 10;

/// How long the whole attack may take before the test calls it stuck (a
/// safety net against hangs, not a speed assertion).
const SAFETY_NET: Duration = Duration::from_secs(300);

/// One way of sending 20 mails as one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rotation {
    /// The control: one address, the same every time.
    Steady,
    /// A fixed envelope sender, a new `From:` each time.
    EnvelopeSender,
    /// A fixed `From:`, a new `Reply-To:` each time.
    ReplyTo,
    /// `From: decoyN@..., ann@...`.
    Decoys,
    /// 40 new decoys, then ann: more identities than are read.
    ManyDecoys,
    /// `ann@exämple.com` and `ann@xn--exmple-cua.com` in turn.
    Punycode,
    /// Some letters fullwidth (`ａ` for `a`), a different set each time.
    Fullwidth,
    /// A zero-width or soft-hyphen character somewhere.
    Invisible,
    /// Some letters Cyrillic (`а` for `a`), a different set each time.
    Cyrillic,
}

const ROTATIONS: [Rotation; 9] = [
    Rotation::Steady,
    Rotation::EnvelopeSender,
    Rotation::ReplyTo,
    Rotation::Decoys,
    Rotation::ManyDecoys,
    Rotation::Punycode,
    Rotation::Fullwidth,
    Rotation::Invisible,
    Rotation::Cyrillic,
];

/// Mail `i` of a rotation: its envelope sender, if any, and its headers.
struct Mail {
    envelope_sender: Option<String>,
    headers: String,
}

/// `text` with the letters chosen by the bits of `mask` replaced by
/// `swap` (letters it has no replacement for count as no choice).
fn disguise(text: &str, mask: usize, swap: impl Fn(char) -> Option<char>) -> String {
    let mut bit = 0;
    text.chars()
        .map(|c| match swap(c) {
            Some(other) => {
                let chosen = mask & (1 << bit) != 0;
                bit += 1;
                if chosen {
                    other
                } else {
                    c
                }
            }
            None => c,
        })
        .collect()
}

fn fullwidth(c: char) -> Option<char> {
    c.is_ascii_alphabetic()
        .then(|| char::from_u32(c as u32 - 0x21 + 0xFF01).expect("fullwidth forms"))
}

fn cyrillic(c: char) -> Option<char> {
    Some(match c {
        'a' => '\u{0430}',
        'e' => '\u{0435}',
        'o' => '\u{043E}',
        'p' => '\u{0440}',
        'c' => '\u{0441}',
        'x' => '\u{0445}',
        's' => '\u{0455}',
        _ => return None,
    })
}

impl Rotation {
    fn name(self) -> &'static str {
        match self {
            Rotation::Steady => "steady",
            Rotation::EnvelopeSender => "envelope-sender",
            Rotation::ReplyTo => "reply-to",
            Rotation::Decoys => "decoys",
            Rotation::ManyDecoys => "many-decoys",
            Rotation::Punycode => "punycode",
            Rotation::Fullwidth => "fullwidth",
            Rotation::Invisible => "invisible",
            Rotation::Cyrillic => "cyrillic",
        }
    }

    fn mail(self, i: usize) -> Mail {
        let from = |from: String| Mail {
            envelope_sender: None,
            headers: format!("From: {from}\r\n"),
        };
        match self {
            Rotation::Steady => from("ann@steady.example".into()),
            Rotation::EnvelopeSender => Mail {
                envelope_sender: Some("ann@envelope.example".into()),
                headers: format!("From: new{i}@rotating.example\r\n"),
            },
            Rotation::ReplyTo => Mail {
                envelope_sender: None,
                headers: format!(
                    "From: ann@reply.example\r\nReply-To: reply{i}@rotating.example\r\n"
                ),
            },
            Rotation::Decoys => from(format!(
                "Decoy <decoy{i}@rotating.example>, Ann <ann@decoys.example>"
            )),
            Rotation::ManyDecoys => from(
                (0..40)
                    .map(|k| format!("decoy{i}-{k}@rotating.example"))
                    .chain(["ann@many.example".to_string()])
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Rotation::Punycode => from(if i % 2 == 0 {
                "ann@exämple.com".into()
            } else {
                "ann@xn--exmple-cua.com".into()
            }),
            Rotation::Fullwidth => from(disguise("ann@fullwidth.example", i + 1, fullwidth)),
            Rotation::Invisible => {
                // Five characters at four places: 20 spellings.
                let invisible = ['\u{200B}', '\u{00AD}', '\u{200D}', '\u{FEFF}', '\u{2060}'];
                let mut address: Vec<char> = "ann@invisible.example".chars().collect();
                address.insert([1, 2, 5, 8][i / 5 % 4], invisible[i % 5]);
                from(address.into_iter().collect())
            }
            Rotation::Cyrillic => from(disguise("ann@space.example", i + 1, cyrillic)),
        }
    }
}

/// The raw mail `i` of rotation `r`: its own subject, Message-ID and text
/// (with its own order number, so no two are near duplicates).
fn raw(r: Rotation, i: usize, headers: &str) -> String {
    let n = 100_000 + 1000 * ROTATIONS.iter().position(|x| *x == r).unwrap() + i;
    format!(
        "{headers}To: support@shop.test\r\nSubject: {name} {i}\r\nMessage-ID: <{name}-{i}@rotation.test>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, this is message {i} of mine about order {n}; it differs from every other one.\r\n",
        name = r.name()
    )
}

/// Posts one mail from `client`; returns its receipt.
async fn post(
    client: &reqwest::Client,
    gw: &Gateway,
    envelope_sender: Option<&str>,
    raw: String,
) -> Result<String, String> {
    let mut request = client
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(raw);
    if let Some(sender) = envelope_sender {
        request = request.header("X-Intake-Envelope-Sender", sender);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status != 202 {
        return Err(format!("status {status}"));
    }
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no id in {body}"))
}

/// The bystander: a different new customer per mail, from its own address.
async fn bystander(
    gw: &Gateway,
    phase: &str,
    receipts: &Receipts,
    mine: &Receipts,
) -> support::bystander::Latencies {
    let client = client_from(bystander_address());
    measure(&format!("bystander ({phase})"), BYSTANDER_MAILS, |i| {
        let client = client.clone();
        let (receipts, mine) = (receipts.clone(), mine.clone());
        async move {
            let raw = format!(
                "From: calm{i}-{phase}@customer.example\r\nTo: support@shop.test\r\n\
                 Subject: bystander {phase} {i}\r\nMessage-ID: <calm-{phase}-{i}@customer.example>\r\n\r\n\
                 Good day, a question about my order {}.\r\n",
                900_000 + i
            );
            let id = post(&client, gw, None, raw).await?;
            receipts.add(id.clone());
            mine.add(id);
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn rotating_any_one_identity_gets_no_more_onto_the_desk_than_a_steady_sender() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let gw = Arc::new(
        Gateway::start_with(
            "identity_rotation",
            &support::redis_url(),
            &format!("[rules]\ndir = \"{}\"\n", rules.display()),
        )
        .await,
    );
    let receipts = Receipts::default();
    let calm = Receipts::default();
    let quiet = bystander(&gw, "quiet", &receipts, &calm).await;

    // Every rotation at once, each from a loopback address of its own,
    // each rotation's mails one after another.
    let attack = async {
        let mut tasks = tokio::task::JoinSet::new();
        for (n, rotation) in ROTATIONS.into_iter().enumerate() {
            let gw = gw.clone();
            let receipts = receipts.clone();
            tasks.spawn(async move {
                let client = client_from(loopback(0, n as u8 + 1));
                let mut ids = Vec::with_capacity(MAILS);
                for i in 0..MAILS {
                    let mail = rotation.mail(i);
                    let id = post(
                        &client,
                        &gw,
                        mail.envelope_sender.as_deref(),
                        raw(rotation, i, &mail.headers),
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{} mail {i} was not accepted: {e}", rotation.name())
                    });
                    receipts.add(id.clone());
                    ids.push(id);
                }
                (rotation, ids)
            });
        }
        let mut sent = HashMap::new();
        while let Some(done) = tasks.join_next().await {
            let (rotation, ids) = done.expect("an attacker task");
            sent.insert(rotation, ids);
        }
        sent
    };
    let (sent, attacked) = tokio::time::timeout(SAFETY_NET, async {
        tokio::join!(attack, bystander(&gw, "attacked", &receipts, &calm))
    })
    .await
    .expect("the attack finished within the safety net");
    report("identity_rotation", &quiet, &attacked);

    let stored = Stored::read(&gw.redis_url, &gw.prefix).await;
    let streams_of = |ids: &[String]| -> HashMap<String, usize> {
        let mut by_stream = HashMap::new();
        for id in ids {
            for (stream, _) in stored
                .by_receipt
                .get(id)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                *by_stream.entry(stream.clone()).or_default() += 1;
            }
        }
        by_stream
    };
    let steady = streams_of(&sent[&Rotation::Steady]);
    let steady_desk = steady.get("desk").copied().unwrap_or(0);
    println!("steady sender: {steady:?} of {MAILS}");
    assert!(
        (1..=SHIPPED_BURST).contains(&steady_desk),
        "a steady sender gets the shipped burst of {SHIPPED_BURST} onto the desk, not {steady_desk}"
    );
    // Every rotation's figures first, then one verdict naming each that broke.
    let mut broken = Vec::new();
    for rotation in ROTATIONS.into_iter().skip(1) {
        let by_stream = streams_of(&sent[&rotation]);
        let desk = by_stream.get("desk").copied().unwrap_or(0);
        let suppressed = by_stream.get("suppressed").copied().unwrap_or(0);
        println!(
            "rotation {:<16} desk {desk:>2}  suppressed {suppressed:>2}  of {MAILS}: {by_stream:?}",
            rotation.name()
        );
        if desk > steady_desk {
            broken.push(format!(
                "rotating the {} put {desk} of {MAILS} mails on the desk",
                rotation.name()
            ));
        }
        if desk + suppressed != MAILS {
            broken.push(format!(
                "{} mails are not all on the desk or collapsed/suppressed: {by_stream:?}",
                rotation.name()
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "a steady sender gets {steady_desk} onto the desk; {}",
        broken.join("; ")
    );
    // Mail with more identities than are read says so.
    for entry in gw.entries("desk").await {
        let env = entry.envelope();
        if env["subject"]
            .as_str()
            .unwrap_or_default()
            .starts_with("many-decoys ")
        {
            assert!(
                env["abuse"]["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == "many-identities")),
                "a mail with 41 From addresses is tagged many-identities: {env}"
            );
        }
    }
    let suppressed = gw.entries("suppressed").await;
    let kinds: HashMap<&str, usize> = suppressed.iter().fold(HashMap::new(), |mut k, e| {
        *k.entry(e.field("kind")).or_default() += 1;
        k
    });
    println!("suppressed by kind: {kinds:?}");
    assert!(
        suppressed
            .iter()
            .all(|e| matches!(e.field("kind"), "collapsed" | "rejected")),
        "only the rate rule kept mail off the desk: {kinds:?}"
    );
    // The bystander's customers each wrote once: every mail is on the desk.
    let calm_streams = streams_of(&calm.all());
    assert_eq!(
        calm_streams.get("desk").copied().unwrap_or(0),
        2 * BYSTANDER_MAILS,
        "every bystander mail reaches the desk: {calm_streams:?}"
    );

    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
    println!(
        "receipts {} audited: desk {} suppressed {} quarantine {} events {}",
        receipts.len(),
        stored.count("desk"),
        stored.count("suppressed"),
        stored.count("quarantine"),
        stored.count("events")
    );
    Arc::try_unwrap(gw)
        .unwrap_or_else(|_| panic!("no task holds the gateway"))
        .stop()
        .await;
}

/// Dedupe holds the same way: 20 mails with one text, each with a new
/// first address beside a fixed one (a new `From:` under one envelope
/// sender, a new `Reply-To:` under one `From:`, a new decoy before ann),
/// make one desk item per rotation; the other 19 fold into it, and
/// `events` counts them on it.
#[tokio::test]
async fn rotating_the_first_address_does_not_dodge_dedupe() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("50-dedupe.toml"),
        "[dedupe]\nwindow = \"1h\"\nexact = true\nnear_duplicates = true\n",
    )
    .unwrap();
    let gw = Gateway::start_with(
        "identity_dedupe",
        &support::redis_url(),
        &format!("[rules]\ndir = \"{}\"\n", rules.path().display()),
    )
    .await;
    let receipts = Receipts::default();
    let client = client_from(loopback(0, 20));
    let rotations = [
        Rotation::EnvelopeSender,
        Rotation::ReplyTo,
        Rotation::Decoys,
    ];
    let mut firsts = Vec::new();
    for rotation in rotations {
        for i in 0..MAILS {
            let mail = rotation.mail(i);
            let raw = format!(
                "{}To: support@shop.test\r\nSubject: my refund\r\nMessage-ID: <dd-{}-{i}@rotation.test>\r\n\r\n\
                 I was charged twice for order 4711, please refund one of the payments ({}).\r\n",
                mail.headers,
                rotation.name(),
                rotation.name()
            );
            let id = post(&client, &gw, mail.envelope_sender.as_deref(), raw)
                .await
                .unwrap_or_else(|e| panic!("{} mail {i}: {e}", rotation.name()));
            if i == 0 {
                firsts.push(id.clone());
            }
            receipts.add(id);
        }
    }
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
    println!(
        "dedupe under rotation: desk {} suppressed {} events {}",
        stored.count("desk"),
        stored.count("suppressed"),
        stored.count("events")
    );
    assert_eq!(
        stored.count("desk"),
        rotations.len(),
        "one desk item per rotation"
    );
    for first in &firsts {
        let folded = stored
            .folds
            .iter()
            .filter(|(_, _, into)| into == first)
            .count();
        assert_eq!(folded, MAILS - 1, "the other mails fold into {first}");
    }
    let events = gw.entries("events").await;
    for first in &firsts {
        let latest = events
            .iter()
            .filter(|e| e.field("id") == first)
            .map(|e| e.field("count").parse::<usize>().unwrap())
            .max();
        assert_eq!(
            latest,
            Some(MAILS - 1),
            "events count every fold into {first}"
        );
    }
}
