//! Bot checks of web forms against a real gateway and the dev Redis: the
//! signed timestamp token (issued, too fresh, expired, forged, replayed,
//! missing), a configurable honeypot and the links cap. Every bot is
//! answered like a person (202) and its post lands in `suppressed` with
//! the check as reason; only people reach the desk.

mod support;

use intake::sources::http::bots::TokenKey;
use serde_json::Value;
use support::{client, redis_url, Gateway};

const SECRET: &str = "form-secret-for-tests-0123456789";

struct Guarded {
    gw: Gateway,
    key: TokenKey,
    _dir: tempfile::TempDir,
}

async fn guarded(test: &str) -> Guarded {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("form-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let extra = format!(
        r#"
[[form]]
id = "guarded"
token = "required"
token_min_age = "3s"
token_max_age = "1h"
max_links = 2
honeypot = "website"

[[form]]
id = "relaxed"
token = "optional"

[forms_security]
secret = {{ file = "{}" }}
"#,
        secret.display()
    );
    Guarded {
        gw: Gateway::start_with(test, &redis_url(), &extra).await,
        key: TokenKey::new(SECRET.as_bytes()),
        _dir: dir,
    }
}

fn now() -> u64 {
    intake::sources::http::bots::unix_now()
}

/// Posts `fields` to `form` and checks the bot is answered like a person.
async fn post(gw: &Gateway, form: &str, fields: &[(&str, &str)]) {
    let response = client()
        .post(gw.form_url(form))
        .form(fields)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "every post, bot or not, is answered 202"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted", "bots see a receipt like people");
}

/// The reasons of the `suppressed` entries, oldest first.
async fn trapped(gw: &Gateway) -> Vec<String> {
    gw.entries("suppressed")
        .await
        .iter()
        .map(|e| {
            assert_eq!(e.field("kind"), "trapped");
            e.field("reason").to_string()
        })
        .collect()
}

#[tokio::test]
async fn the_token_endpoint_issues_a_token_bound_to_its_form() {
    let g = guarded("bots_endpoint").await;
    let response = client()
        .get(format!("{}/token", g.gw.form_url("guarded")))
        .header("origin", "https://shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["field"], "_token");
    assert_eq!(body["expires_in"], 3600);
    let token = body["token"].as_str().expect("a token");
    assert_eq!(
        g.key.verify(
            "guarded",
            token,
            now() + 5,
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(3600)
        ),
        Ok(()),
        "the issued token is signed with the configured secret for this form"
    );

    // Posted at once: faster than a person could fill the form.
    post(
        &g.gw,
        "guarded",
        &[("email", "bot@example.com"), ("_token", token)],
    )
    .await;
    assert!(
        g.gw.entries("desk").await.is_empty(),
        "a too-fresh post never reaches the desk"
    );
    let reasons = trapped(&g.gw).await;
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("token_too_fresh"),
        "reason: {}",
        reasons[0]
    );

    let off = client()
        .get(format!("{}/token", g.gw.form_url("contact")))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 404, "a form without tokens issues none");
    let body: Value = off.json().await.unwrap();
    assert_eq!(
        body["error"], "not_found",
        "the form exists; it has no token endpoint: {body}"
    );
}

#[tokio::test]
async fn a_person_with_an_aged_token_reaches_the_desk_once_and_a_replay_is_trapped() {
    let g = guarded("bots_replay").await;
    let token = g.key.issue("guarded", now() - 20);
    let fields = [
        ("email", "ann@example.com"),
        (
            "message",
            "Where is my order? See https://shop.test/orders/1",
        ),
        ("_token", token.as_str()),
    ];
    post(&g.gw, "guarded", &fields).await;
    let desk = g.gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "a post with a valid token reaches the desk");
    assert!(
        desk[0].envelope()["fields"].get("_token").is_none(),
        "the token is not kept in the envelope's fields"
    );

    // The same post again (a double click, a resend after a lost answer)
    // is the same request: the first receipt, nothing new stored.
    post(&g.gw, "guarded", &fields).await;
    assert_eq!(
        g.gw.entries("desk").await.len(),
        1,
        "a resend is no new item"
    );
    assert!(trapped(&g.gw).await.is_empty(), "a resend is no bot");

    // The token replayed with another post is a bot's.
    let replay = [
        ("email", "ann@example.com"),
        ("message", "Another text, the same token."),
        ("_token", token.as_str()),
    ];
    post(&g.gw, "guarded", &replay).await;
    assert_eq!(
        g.gw.entries("desk").await.len(),
        1,
        "the replay never reaches the desk"
    );
    let reasons = trapped(&g.gw).await;
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0].contains("token_replayed"),
        "reason: {}",
        reasons[0]
    );
}

#[tokio::test]
async fn missing_expired_forged_and_foreign_tokens_are_trapped() {
    let g = guarded("bots_tokens").await;
    let expired = g.key.issue("guarded", now() - 3601 - 5);
    let foreign = g.key.issue("relaxed", now() - 20);
    let forged = TokenKey::new(b"not the gateway's secret at all!").issue("guarded", now() - 20);
    post(&g.gw, "guarded", &[("email", "a@example.com")]).await;
    post(
        &g.gw,
        "guarded",
        &[("email", "b@example.com"), ("_token", &expired)],
    )
    .await;
    post(
        &g.gw,
        "guarded",
        &[("email", "c@example.com"), ("_token", &foreign)],
    )
    .await;
    post(
        &g.gw,
        "guarded",
        &[("email", "d@example.com"), ("_token", &forged)],
    )
    .await;
    post(
        &g.gw,
        "guarded",
        &[("email", "e@example.com"), ("_token", "garbage")],
    )
    .await;

    assert!(
        g.gw.entries("desk").await.is_empty(),
        "no bot reaches the desk"
    );
    let reasons = trapped(&g.gw).await;
    let expected = [
        "token_missing",
        "token_expired",
        "token_invalid",
        "token_invalid",
        "token_invalid",
    ];
    assert_eq!(reasons.len(), expected.len(), "reasons: {reasons:?}");
    for (reason, check) in reasons.iter().zip(expected) {
        assert!(reason.contains(check), "expected {check}, got {reason}");
    }

    // On an optional form, no token passes; a bad one is still trapped.
    post(&g.gw, "relaxed", &[("email", "f@example.com")]).await;
    post(
        &g.gw,
        "relaxed",
        &[("email", "g@example.com"), ("_token", &expired)],
    )
    .await;
    assert_eq!(
        g.gw.entries("desk").await.len(),
        1,
        "only the tokenless post passes"
    );
    assert_eq!(trapped(&g.gw).await.len(), 6, "the bad token is trapped");
}

#[tokio::test]
async fn the_configured_honeypot_and_the_links_cap_trap_bots() {
    let g = guarded("bots_honeypot_links").await;
    let token = g.key.issue("guarded", now() - 20);
    let token2 = g.key.issue("guarded", now() - 21);
    post(
        &g.gw,
        "guarded",
        &[
            ("email", "bot@example.com"),
            ("website", "http://spam.example"),
            ("_token", &token),
        ],
    )
    .await;
    post(
        &g.gw,
        "guarded",
        &[
            ("email", "bot@example.com"),
            (
                "message",
                "cheap http://a.example https://b.example www.c.example",
            ),
            ("_token", &token2),
        ],
    )
    .await;
    assert!(
        g.gw.entries("desk").await.is_empty(),
        "no bot reaches the desk"
    );
    let reasons = trapped(&g.gw).await;
    assert_eq!(reasons.len(), 2, "reasons: {reasons:?}");
    assert!(reasons[0].contains("honeypot"), "got {}", reasons[0]);
    assert!(reasons[1].contains("too_many_links"), "got {}", reasons[1]);

    // Without a message field, links in every field count.
    let token3 = g.key.issue("guarded", now() - 22);
    post(
        &g.gw,
        "guarded",
        &[
            ("email", "bot@example.com"),
            ("company", "https://a.example"),
            ("notes", "www.b.example http://c.example"),
            ("_token", &token3),
        ],
    )
    .await;
    let reasons = trapped(&g.gw).await;
    assert_eq!(
        reasons.len(),
        3,
        "links spread over fields are counted: {reasons:?}"
    );
    assert!(reasons[2].contains("too_many_links"), "got {}", reasons[2]);
    assert!(
        g.gw.entries("desk").await.is_empty(),
        "no bot reaches the desk"
    );
}

#[tokio::test]
async fn the_metrics_say_which_check_fired() {
    let admin_token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(admin_token.path(), "admin-secret-1\n").unwrap();
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("form-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let extra = format!(
        "[[form]]\nid = \"guarded\"\ntoken = \"required\"\n\n\
         [forms_security]\nsecret = {{ file = \"{}\" }}\n\n\
         [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
        secret.display(),
        admin_token.path().display()
    );
    let gw = Gateway::start_with("bots_metrics", &redis_url(), &extra).await;
    post(&gw, "guarded", &[("email", "bot@example.com")]).await;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .bearer_auth("admin-secret-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("intake_form_bot_checks_total{")
                && l.contains("check=\"token_missing\"")),
        "the missing token is not counted:\n{text}"
    );
}

#[tokio::test]
async fn curl_fetches_a_token_and_posts_it_back_like_a_shop_page() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("form-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let extra = format!(
        "[[form]]\nid = \"slowpage\"\ntoken = \"required\"\ntoken_min_age = \"1s\"\n\n\
         [forms_security]\nsecret = {{ file = \"{}\" }}\n",
        secret.display()
    );
    let gw = Gateway::start_with("bots_curl", &redis_url(), &extra).await;
    let url = gw.form_url("slowpage");
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10"])
                .args(&args)
                .output()
                .expect("curl runs");
            assert!(out.status.success(), "curl failed: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let issued: Value =
        serde_json::from_str(&curl(vec![format!("{url}/token")]).await.unwrap()).unwrap();
    let token = issued["token"].as_str().expect("a token").to_string();
    // A person takes a moment to fill in the form (token_min_age = 1s).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer = curl(vec![
        "-w".into(),
        "\n%{http_code}".into(),
        "--data-urlencode".into(),
        "email=ann@example.com".into(),
        "--data-urlencode".into(),
        "message=Hello from a patient person".into(),
        "--data-urlencode".into(),
        format!("_token={token}"),
        url,
    ])
    .await
    .unwrap();
    assert!(
        answer.ends_with("\n202"),
        "curl's post is accepted: {answer}"
    );
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "the person's post reaches the desk");
    assert_eq!(desk[0].envelope()["text"], "Hello from a patient person");
    assert!(gw.entries("suppressed").await.is_empty(), "nothing trapped");
}
