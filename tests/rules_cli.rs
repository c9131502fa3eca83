//! `intake rules check`, `intake rules explain` and `intake replay` as a
//! sysadmin runs them: exit codes, problems named by file, line and key,
//! and the per-rule table of a replay over a generated Maildir.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn intake(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("intake runs")
}

fn shipped() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules")
        .display()
        .to_string()
}

#[test]
fn check_accepts_the_shipped_rules() {
    let out = intake(&["rules", "check", &shipped()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "valid: {stdout}");
    assert!(
        stdout.contains("one-customer-mail") && stdout.contains("(shadow)"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_key_of_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("10-a.toml"),
        "[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"5/hr\"\naction = \"reject\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("20-b.toml"),
        "[[rule]]\nname = \"b\"\nkey = [\"sender\"]\nrate = \"5/h\"\naction = \"drop\"\n",
    )
    .unwrap();
    let out = intake(&["rules", "check", &dir.path().display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "invalid rules exit 1: {stderr}");
    assert!(
        stderr.contains("10-a.toml:4:") && stderr.contains("rule[0].rate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("20-b.toml:5:") && stderr.contains("rule[0].action"),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

#[test]
fn usage_errors_exit_64() {
    assert_eq!(
        intake(&["rules", "explain", "--bogus"]).status.code(),
        Some(64)
    );
    assert_eq!(intake(&["replay"]).status.code(), Some(64));
}

#[test]
fn explain_shows_matching_rules_keys_and_the_normalized_sender() {
    let out = intake(&[
        "rules",
        "explain",
        "--rules",
        &shipped(),
        "--sender",
        "Ann+Shoes@Example.COM",
        "--ip",
        "203.0.113.9",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("sender          ann@example.com"),
        "normalized: {stdout}"
    );
    assert!(
        stdout.contains("one-customer-mail")
            && stdout.contains("key    verified_sender=ann@example.com"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("form-per-network"),
        "form rules do not match mail: {stdout}"
    );
    let out = intake(&[
        "rules",
        "explain",
        "--rules",
        &shipped(),
        "--form",
        "contact",
        "--ip",
        "203.0.113.9",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("key    ip_prefix=203.0.113.0/24"),
        "the /24 network: {stdout}"
    );
}

#[tokio::test]
async fn explain_reads_the_cluster_bucket_state_from_redis() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("r.toml"), "[[rule]]\nname = \"m\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\nrate = \"1/h\"\nburst = 1\naction = \"reject\"\nscope = \"cluster\"\n").unwrap();
    let gw = support::Gateway::start_with(
        "explain",
        &support::redis_url(),
        &format!("[rules]\ndir = \"{}\"\n", rules.path().display()),
    )
    .await;
    let dir = rules.path().display().to_string();
    let args = [
        "rules",
        "explain",
        "--rules",
        dir.as_str(),
        "--sender",
        "gus@example.com",
        "--redis",
        &gw.redis_url,
        "--prefix",
        &gw.prefix,
    ];
    let before = String::from_utf8_lossy(&intake(&args).stdout).to_string();
    assert!(
        before.contains("1 more pass now") && before.contains("result: passes"),
        "{before}"
    );
    let response = support::client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(support::TOKEN)
        .header("content-type", "message/rfc822")
        .body("From: gus@example.com\r\nSubject: x\r\n\r\nhello\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let after = String::from_utf8_lossy(&intake(&args).stdout).to_string();
    assert!(
        after.contains("over quota") && after.contains("result: reject by m"),
        "{after}"
    );
}

#[test]
fn replay_prints_a_per_rule_table_for_a_maildir() {
    let maildir = tempfile::tempdir().unwrap();
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/bench/gen-maildir");
    let status = Command::new(gen)
        .arg(maildir.path())
        .arg("600")
        .stdout(Stdio::null())
        .status()
        .expect("generator runs");
    assert!(status.success());
    let out = intake(&[
        "replay",
        "--rules",
        &shipped(),
        &maildir.path().display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("replayed 600 messages"), "{stdout}");
    let row = |name: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // The generator's auto-responder sends 30 auto-replies (5 %): the
    // shipped rule lets 2 through and quarantines the rest.
    assert_eq!(
        row("auto-replies")[1..],
        ["quarantine", "30", "28", "28", "0"],
        "{stdout}"
    );
    // The flooder's 180 mails (30 %) repeat 5 texts: dedupe folds them.
    let collapsed: u64 = row("collapsed")[1].parse().unwrap();
    assert!(collapsed >= 175, "the flood is collapsed: {stdout}");
    assert!(
        stdout.contains("angry@example.org"),
        "the flooder leads the throttled senders: {stdout}"
    );
    let top = stdout
        .lines()
        .skip_while(|l| !l.starts_with("top throttled"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        top.ends_with("angry@example.org"),
        "first throttled sender: {top}"
    );
}

#[test]
fn serve_refuses_to_start_with_rules_that_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("10-a.toml"),
        "[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"5/h\"\naction = \"rejekt\"\n",
    )
    .unwrap();
    let config = dir.path().join("intake.toml");
    std::fs::write(
        &config,
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[rules]\ndir = \"rules\"\n",
    )
    .unwrap();
    let out = intake(&["serve", "--config", &config.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {stderr}");
    assert!(
        stderr.contains("10-a.toml:5:") && stderr.contains("rule[0].action"),
        "{stderr}"
    );
}

#[test]
fn explain_lists_every_identity_with_its_origins_and_key_and_a_bucket_per_key() {
    use std::io::Write as _;
    // Fullwidth letters and the punycode form of one domain are one
    // identity; a Cyrillic е (U+0435) in the decoy keys as the Latin e.
    let message =
        "From: \u{FF41}\u{FF4E}\u{FF4E}@ex\u{E4}mple.com, Decoy <d\u{0435}coy@x.example>\r\n\
                   Reply-To: ann+desk@xn--exmple-cua.com\r\nSubject: s\r\n\r\nhello\r\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args([
            "rules",
            "explain",
            "--rules",
            &shipped(),
            "--envelope-sender",
            "Bounce+7@Mailer.example",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("intake runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let identities: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  identity "))
        .collect();
    assert_eq!(identities.len(), 3, "three identities: {stdout}");
    assert!(
        identities[0].contains("ann@ex\u{E4}mple.com")
            && identities[0].contains("(customer, from, reply-to)"),
        "the customer first, read in three places: {stdout}"
    );
    assert!(
        identities[1].contains("d\u{0435}coy@x.example")
            && identities[1].contains("(from)")
            && identities[1].ends_with("key decoy@x.example"),
        "the lookalike is shown as written, keyed as the Latin address: {stdout}"
    );
    assert!(
        identities[2].contains("bounce@mailer.example")
            && identities[2].contains("(envelope-sender)"),
        "{stdout}"
    );
    let rule = stdout
        .split("  one-customer-mail ")
        .nth(1)
        .and_then(|rest| rest.split("\n  domain-flood ").next())
        .unwrap_or_else(|| panic!("one-customer-mail is explained: {stdout}"));
    for key in [
        "verified_sender=decoy@x.example",
        "verified_sender=bounce@mailer.example",
    ] {
        assert!(
            rule.contains(&format!("    key    {key}\n    bucket ")),
            "a key and a bucket for each identity ({key}): {stdout}"
        );
    }
    assert_eq!(
        rule.matches("    key    ").count(),
        3,
        "one key per identity: {rule}"
    );
}

/// A gateway config with `[acknowledge]` (relay never contacted here) and
/// the shipped templates.
fn acknowledge_config(dir: &Path, templates: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("intake.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:1\"\n[acknowledge]\nfrom = \"Soporte <support@shop.test>\"\ntemplates = \"{}\"\n{extra}\n[acknowledge.relay]\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n",
            templates.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn serve_refuses_a_bad_acknowledgement_template_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("acknowledge");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(
        templates.join("es.txt"),
        "Subject: Re: {{subject}}\n\nHola {{nombre}}:\nSu referencia es {{receipt}}.\n",
    )
    .unwrap();
    let config = acknowledge_config(dir.path(), &templates, "");
    let out = intake(&["serve", "--config", &config.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {stderr}");
    assert!(
        stderr.contains("es.txt:3:") && stderr.contains("unknown variable `nombre`"),
        "{stderr}"
    );
}

#[test]
fn explain_says_whether_a_mail_would_be_acknowledged_and_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let shipped_templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/acknowledge");
    let config = acknowledge_config(dir.path(), &shipped_templates, "");
    let explain = |mail: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(["rules", "explain", "--rules", &shipped(), "--config"])
            .arg(&config)
            .arg("--envelope-sender=ann@customer.test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(mail.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let person = explain("From: Ann <ann@customer.test>\r\nSubject: Hola\r\nMessage-ID: <p1@customer.test>\r\n\r\nHola\r\n");
    assert!(
        person.contains("acknowledgement: would acknowledge in es to ann@customer.test"),
        "{person}"
    );
    let list = explain("From: Ann <ann@customer.test>\r\nSubject: Boletin\r\nList-Id: <news.customer.test>\r\nMessage-ID: <p2@customer.test>\r\n\r\nOfertas\r\n");
    assert!(
        list.contains("acknowledgement: would not acknowledge, because it is mailing-list mail (List-Id) (list)"),
        "{list}"
    );
    let robot = explain("From: noreply@customer.test\r\nSubject: Aviso\r\nMessage-ID: <p3@customer.test>\r\n\r\nx\r\n");
    assert!(robot.contains("(role_address)"), "{robot}");
}
