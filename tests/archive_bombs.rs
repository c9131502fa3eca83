//! Archive bombs against the dev stack: a zip of one 1 GiB file of zeros
//! (about 1 MB on the wire) and a 42.zip-style nest declaring 64 TiB, each
//! posted as a form upload and mailed, while a normal client is measured
//! beside them. They land in `quarantine` as `unscannable` with a reason,
//! never `clean` on the desk; normal zips still scan clean and a zipped
//! virus is still found. What clamd itself answers for such archives is
//! shown by asking it directly. Last, `/readyz` names states only, and the
//! admin `GET /status` gives the details behind its token.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use support::audit::{assert_receipts_stored_once, Receipts};
use support::bystander::{self, bystander_address, client_from, loopback};
use support::clamd::{dev_clamd, eicar, PrivateClamd, EICAR_SIGNATURE};
use support::{client, free_port, Gateway, PrivateRedis, TOKEN};

/// Building the bombs at run time, never holding what they expand to.
mod bombs {
    use std::io::Write as _;

    use flate2::write::DeflateEncoder;
    use flate2::{Compression, Crc};

    const MIB: usize = 1 << 20;

    /// A raw deflate stream of `mib` MiB of zeros and their CRC-32, made
    /// without 1 GiB in memory: the encoder is flushed after every MiB, and
    /// once it is in its steady state every further MiB comes out as the
    /// same bytes, which are repeated.
    pub fn zeros(mib: usize) -> (Vec<u8>, u32, u64) {
        assert!(mib >= 3, "the steady state needs three pieces to be seen");
        let block = vec![0u8; MIB];
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
        let mut pieces = Vec::new();
        for _ in 0..3 {
            let before = encoder.get_ref().len();
            encoder.write_all(&block).unwrap();
            encoder.flush().unwrap();
            pieces.push(encoder.get_ref()[before..].to_vec());
        }
        assert_eq!(pieces[1], pieces[2], "the encoder reached its steady state");
        let before = encoder.get_ref().len();
        let all = encoder.finish().unwrap();
        let trailer = all[before..].to_vec();
        let mut stream = pieces[0].clone();
        for _ in 1..mib {
            stream.extend_from_slice(&pieces[1]);
        }
        stream.extend_from_slice(&trailer);
        let mut one = Crc::new();
        one.update(&block);
        let mut crc = Crc::new();
        for _ in 0..mib {
            crc.combine(&one);
        }
        (stream, crc.sum(), (mib * MIB) as u64)
    }

    /// One zip entry: already deflated data, its CRC and uncompressed size.
    pub struct Entry<'a> {
        pub name: String,
        pub packed: &'a [u8],
        pub crc: u32,
        pub size: u64,
    }

    /// A plain zip (no zip64: every size below 4 GiB) of deflated entries.
    pub fn zip(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for e in entries {
            let offset = out.len() as u32;
            let size = u32::try_from(e.size).expect("below 4 GiB");
            let common = |v: &mut Vec<u8>| {
                v.extend_from_slice(&20u16.to_le_bytes()); // version needed
                v.extend_from_slice(&0u16.to_le_bytes()); // flags
                v.extend_from_slice(&8u16.to_le_bytes()); // deflate
                v.extend_from_slice(&0x2100u16.to_le_bytes()); // time
                v.extend_from_slice(&0x5821u16.to_le_bytes()); // date
                v.extend_from_slice(&e.crc.to_le_bytes());
                v.extend_from_slice(&(e.packed.len() as u32).to_le_bytes());
                v.extend_from_slice(&size.to_le_bytes());
                v.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
                v.extend_from_slice(&0u16.to_le_bytes()); // extra
            };
            out.extend_from_slice(b"PK\x03\x04");
            common(&mut out);
            out.extend_from_slice(e.name.as_bytes());
            out.extend_from_slice(e.packed);
            directory.extend_from_slice(b"PK\x01\x02");
            directory.extend_from_slice(&20u16.to_le_bytes()); // made by
            common(&mut directory);
            directory.extend_from_slice(&[0; 10]); // comment, disk, attributes
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(e.name.as_bytes());
        }
        let start = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(b"PK\x05\x06");
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn crc(data: &[u8]) -> u32 {
        let mut crc = Crc::new();
        crc.update(data);
        crc.sum()
    }

    /// A zip holding one file of 1 GiB of zeros.
    pub fn gigabyte_of_zeros() -> Vec<u8> {
        let (packed, crc, size) = zeros(1024);
        zip(&[Entry {
            name: "zeros.bin".into(),
            packed: &packed,
            crc,
            size,
        }])
    }

    /// 42.zip's shape: 16 zips of 16 zips of 16 zips, each of the last
    /// holding 16 files of 1 GiB of zeros: 16^4 GiB = 64 TiB declared.
    pub fn nest() -> Vec<u8> {
        let (leaf, leaf_crc, leaf_size) = zeros(1024);
        let mut layer = zip(&(0..16)
            .map(|i| Entry {
                name: format!("{i:x}.bin"),
                packed: &leaf,
                crc: leaf_crc,
                size: leaf_size,
            })
            .collect::<Vec<_>>());
        for _ in 0..3 {
            let packed = deflate(&layer);
            let (inner_crc, inner_size) = (crc(&layer), layer.len() as u64);
            layer = zip(&(0..16)
                .map(|i| Entry {
                    name: format!("lib{i:x}.zip"),
                    packed: &packed,
                    crc: inner_crc,
                    size: inner_size,
                })
                .collect::<Vec<_>>());
        }
        layer
    }

    /// A zip made by Python's zipfile (deflated), as real tools make them.
    pub fn python_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        let out = Command::new("python3")
            .args([
                "-c",
                "import io,sys,zipfile\nb=io.BytesIO()\nz=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED)\n\
                 for n in sys.argv[1:]: z.write(n)\nz.close()\nsys.stdout.buffer.write(b.getvalue())",
            ])
            .args(&names)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .output()
            .expect("python3 is installed");
        assert!(out.status.success(), "python3 zipfile failed");
        out.stdout
    }
}

/// A gateway against the dev Redis and clamd, with the default archive
/// limits; `admin_port` opens the admin listener.
async fn gateway(test: &str, clamd: &str, redis_url: &str, admin_port: Option<u16>) -> Gateway {
    let redis_url = redis_url.to_string();
    Gateway::start_custom(test, &redis_url.clone(), |prefix, token| {
        let admin = admin_port
            .map(|port| {
                format!(
                    "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
                    token.display()
                )
            })
            .unwrap_or_default();
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
request_timeout = "60s"

{admin}
[redis]
url = "{redis_url}"
prefix = "{prefix}"
timeout = "1s"

[messages]
token = {{ file = "{token}" }}
max_size = "5MB"

[[form]]
id = "contact"
required = ["email"]
max_size = "3MB"
max_files = 2

[scan]
clamd = "{clamd}"
timeout = "20s"
redrive_interval = "100ms"
redrive_max_backoff = "400ms"
"#,
            token = token.display(),
        )
    })
    .await
}

fn dev_gateway_clamd() -> String {
    format!("tcp://{}", dev_clamd())
}

fn mail_with(subject: &str, name: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: Mallory <mallory@example.com>\r\nTo: support@shop.test\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThe photos of my order.\r\n\
         --b1\r\nContent-Type: {content_type}; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

async fn post_mail(http: &reqwest::Client, gw: &Gateway, raw: Vec<u8>) -> reqwest::Response {
    http.post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(raw)
        .send()
        .await
        .expect("the gateway answers the mail")
}

async fn post_upload(
    http: &reqwest::Client,
    gw: &Gateway,
    name: &str,
    data: Vec<u8>,
) -> reqwest::Response {
    let file = reqwest::multipart::Part::bytes(data)
        .file_name(name.to_string())
        .mime_str("application/zip")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("email", "mallory@example.com")
        .text("message", "the photos of my order")
        .part("upload", file);
    http.post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .expect("the gateway answers the upload")
}

/// The receipt of a 202, or a failure naming `what`.
async fn receipt(response: reqwest::Response, what: &str) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status, 202,
        "{what}: accepted (stored for an operator): {body}"
    );
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: a receipt id in {body}"))
        .to_string()
}

/// A normal customer's form post, from the bystander's own address.
async fn normal_post(
    http: &reqwest::Client,
    gw: &Gateway,
    n: usize,
    receipts: &Receipts,
) -> Result<(), String> {
    let response = http
        .post(gw.form_url("contact"))
        .form(&[
            ("email", format!("ann{n}@example.com")),
            ("message", format!("Where is order {n}?")),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 202 {
        return Err(format!("status {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    receipts.add(body["id"].as_str().unwrap_or_default());
    Ok(())
}

/// Posts `bomb` `rounds` times as an upload and as a mail attachment from
/// attacker addresses while the bystander is measured, then checks where
/// every item went and the one rule over every receipt.
async fn attack_with(test: &str, name: &str, bomb: Vec<u8>, rounds: usize) {
    let gw = gateway(test, &dev_gateway_clamd(), &support::redis_url(), None).await;
    let receipts = Receipts::default();
    let normal = client_from(bystander_address());
    let quiet = bystander::measure(&format!("{test} quiet"), 10, |n| {
        normal_post(&normal, &gw, n, &receipts)
    })
    .await;

    let started = Instant::now();
    let attack = async {
        let mut attack_receipts = Vec::new();
        for round in 0..rounds {
            let attacker = client_from(loopback(0, 10 + round as u8));
            let upload = post_upload(&attacker, &gw, name, bomb.clone());
            let mail = post_mail(
                &attacker,
                &gw,
                mail_with(&format!("photos {round}"), name, "application/zip", &bomb),
            );
            let (upload, mail) = tokio::join!(upload, mail);
            attack_receipts.push(receipt(upload, "the bomb as a form upload").await);
            attack_receipts.push(receipt(mail, "the bomb as a mail attachment").await);
        }
        attack_receipts
    };
    let attacked_label = format!("{test} attacked");
    let measured = bystander::measure(&attacked_label, 10, |n| {
        normal_post(&normal, &gw, 100 + n, &receipts)
    });
    let (attack_receipts, attacked) = tokio::time::timeout(Duration::from_secs(180), async {
        tokio::join!(attack, measured)
    })
    .await
    .expect("the attack is answered within 3 minutes");
    let took = started.elapsed();
    bystander::report(test, &quiet, &attacked);
    println!(
        "{test}: {} bombs of {} bytes answered in {took:?}",
        attack_receipts.len(),
        bomb.len()
    );

    let quarantine = gw.entries("quarantine").await;
    for id in &attack_receipts {
        let entry = quarantine
            .iter()
            .find(|e| e.field("id") == id)
            .unwrap_or_else(|| panic!("bomb {id} is in quarantine"));
        assert_eq!(entry.field("kind"), "unscannable", "bomb {id}: kind");
        let reason = entry.field("reason");
        assert!(
            reason.contains(name) && reason.contains("scan.archive_max_"),
            "bomb {id}: the reason names the archive and the limit: {reason}"
        );
        assert_eq!(
            entry.envelope()["scan"]["status"],
            "unscanned",
            "bomb {id}: never called clean"
        );
    }
    println!("{test}: reason: {}", quarantine[0].field("reason"));
    let desk = gw.entries("desk").await;
    assert!(
        desk.iter()
            .all(|e| !attack_receipts.iter().any(|id| e.field("id") == id)),
        "no bomb reached the desk"
    );
    assert_eq!(desk.len(), 20, "every normal post is on the desk");
    for entry in &desk {
        assert_eq!(
            entry.envelope()["scan"]["status"],
            "clean",
            "normal posts scanned"
        );
    }
    let mut all = receipts.all();
    all.extend(attack_receipts);
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &all).await;
    println!(
        "{test}: desk {} quarantine {} held {}",
        stored.count("desk"),
        stored.count("quarantine"),
        stored.count("held")
    );
    // Megabytes of base64 in the shared Redis: clean up.
    let mut conn = support::test_connection(&gw.redis_url).await;
    for stream in ["desk", "quarantine", "suppressed", "held", "events"] {
        let _: () = redis::cmd("DEL")
            .arg(format!("{}:{stream}", gw.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_of_zeros_zipped_is_quarantined_as_unscannable_from_a_form_and_a_mail() {
    let bomb = bombs::gigabyte_of_zeros();
    println!("1 GiB of zeros zipped: {} bytes", bomb.len());
    attack_with("archive_gigabyte", "zeros.zip", bomb, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_42_zip_style_nest_is_quarantined_as_unscannable_from_a_form_and_a_mail() {
    let bomb = bombs::nest();
    println!("nest declaring 64 TiB: {} bytes", bomb.len());
    attack_with("archive_nest", "nest.zip", bomb, 3).await;
}

#[tokio::test]
async fn normal_zips_still_scan_clean_and_a_zipped_virus_is_still_found() {
    let gw = gateway(
        "archive_normal",
        &dev_gateway_clamd(),
        &support::redis_url(),
        None,
    )
    .await;
    let http = client();
    let photos = bombs::python_zip(&[
        (
            "order-1234.txt",
            b"Order 1234: two mugs, one teapot.\n".repeat(30).as_slice(),
        ),
        (
            "invoice.pdf",
            b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
        ),
        (
            "photo.png",
            [
                &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a][..],
                &[7u8; 3000],
            ]
            .concat()
            .as_slice(),
        ),
    ]);
    let nested = bombs::python_zip(&[("photos.zip", &photos), ("notes.txt", b"see the photos")]);
    let mut ids = Vec::new();
    for (what, data) in [("photos.zip", photos.clone()), ("folder.zip", nested)] {
        ids.push(receipt(post_upload(&http, &gw, what, data.clone()).await, what).await);
        let raw = mail_with("my order", what, "application/zip", &data);
        ids.push(receipt(post_mail(&http, &gw, raw).await, what).await);
    }
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 4, "the normal zips reach the desk");
    for entry in &desk {
        let env = entry.envelope();
        assert_eq!(
            env["scan"]["status"], "clean",
            "scanned clean: {}",
            env["scan"]
        );
    }
    assert!(
        gw.entries("quarantine").await.is_empty(),
        "nothing quarantined"
    );

    let infected = bombs::python_zip(&[("readme.txt", &eicar())]);
    let response = post_mail(
        &http,
        &gw,
        mail_with("readme", "readme.zip", "application/zip", &infected),
    )
    .await;
    assert_eq!(response.status(), 422, "a zipped virus is still refused");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains(EICAR_SIGNATURE),
        "clamd found it inside the zip: {body}"
    );
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0].field("kind"), "infected");
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &ids).await;
}

#[tokio::test]
async fn what_the_dev_clamd_itself_answers_for_files_over_its_max_file_size() {
    use intake::scan::clamd::{Clamd, Reply};
    // The dev clamd: MaxFileSize 100M, MaxScanSize 400M, AlertExceedsMax
    // and HeuristicAlerts on (deploy/dev/services).
    let clamd = Clamd::new(dev_clamd_address(), Duration::from_secs(120));
    let ask = |what: &'static str, data: Vec<u8>| {
        let clamd = clamd.clone();
        async move {
            let started = Instant::now();
            let reply = clamd
                .scan(&bytes::Bytes::from(data))
                .await
                .expect("clamd answers");
            println!("dev clamd, {what}: {reply:?} in {:?}", started.elapsed());
            reply
        }
    };
    // A file over MaxFileSize on its own (here a gzip's content, so that
    // the stream stays below StreamMaxLength): clamd reports the limit.
    let gzip = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![0u8; 1 << 20];
        for _ in 0..150 {
            encoder.write_all(&block).unwrap();
        }
        encoder.finish().unwrap()
    };
    assert_eq!(
        ask("a gzip of 150 MiB of zeros", gzip).await,
        Reply::LimitExceeded("Heuristics.Limits.Exceeded.MaxFileSize".into()),
        "clamd reports a file over MaxFileSize"
    );
    // The same inside a zip: clamd cuts the entry to MaxFileSize, scans
    // that much and answers OK. This is why the gateway reads archives
    // before clamd: OK here means "the first 100M were clean".
    assert_eq!(
        ask(
            "a zip of one 1 GiB file of zeros",
            bombs::gigabyte_of_zeros()
        )
        .await,
        Reply::Clean,
        "clamd answers OK for a zip entry over MaxFileSize (if this changes, \
         deploy/README.md, \"Virus scanning\", says otherwise)"
    );
    let nest = ask("the 42.zip-style nest (64 TiB)", bombs::nest()).await;
    assert!(
        !matches!(nest, Reply::Found(_)),
        "a bomb is no virus signature: {nest:?}"
    );
}

fn dev_clamd_address() -> intake::scan::clamd::ClamdAddress {
    dev_gateway_clamd()
        .parse()
        .expect("the dev clamd's address")
}

/// Polls `/readyz` until `check` holds, within 20 s.
async fn readyz_until(
    gw: &Gateway,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> (u16, Value, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client()
            .get(format!("{}/readyz", gw.url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        if check(&body) {
            return (status, body, text);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still says {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readyz_names_states_only_and_the_admin_status_has_the_details() {
    let mut redis = PrivateRedis::start();
    let mut clamd = PrivateClamd::start("");
    let admin_port = free_port();
    let gw = gateway(
        "archive_readyz",
        &clamd.url(),
        &redis.url(),
        Some(admin_port),
    )
    .await;
    let status_url = format!("http://127.0.0.1:{admin_port}/status");

    let (code, body, _) = readyz_until(&gw, "all up", |b| b["scanner"] == "up").await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"status": "ready", "redis": "up", "rules": "loaded", "scanner": "up"})
    );
    let admin: Value = client()
        .get(&status_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        admin["scanner"]["clamd"],
        clamd.url(),
        "the admin sees clamd's address: {admin}"
    );
    assert!(
        admin["scanner"]["engine"]
            .as_str()
            .is_some_and(|e| e.starts_with("ClamAV ")),
        "and its engine: {admin}"
    );

    clamd.stop();
    redis.stop();
    let (code, body, text) = readyz_until(&gw, "both down", |b| {
        b["scanner"] == "down" && b["redis"] == "down"
    })
    .await;
    assert_eq!(code, 503, "not ready without Redis");
    assert_eq!(
        body,
        json!({"status": "not_ready", "redis": "down", "rules": "loaded", "scanner": "down"}),
        "names and states only"
    );
    for internal in [
        "127.0.0.1",
        &clamd.port.to_string(),
        &redis.port.to_string(),
        "tcp",
        "ClamAV",
        "refused",
        "connect",
    ] {
        assert!(
            !text.contains(internal),
            "/readyz leaks `{internal}`: {text}"
        );
    }

    for token in [None, Some("wrong-token")] {
        let mut request = client().get(&status_url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            401,
            "no status without the admin token ({token:?})"
        );
    }
    let response = client()
        .get(&status_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "the admin status is not ready either"
    );
    let admin: Value = response.json().await.unwrap();
    println!("admin status with Redis and clamd down: {admin}");
    assert_eq!(admin["redis"]["state"], "down");
    assert!(
        admin["redis"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "why Redis is down: {admin}"
    );
    assert_eq!(admin["scanner"]["state"], "down");
    assert!(
        admin["scanner"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "why clamd is down: {admin}"
    );
    assert_eq!(admin["scanner"]["clamd"], clamd.url());
    assert_eq!(admin["rules"]["state"], "loaded");
    assert_eq!(admin["rules"]["loaded"], 0);
}
