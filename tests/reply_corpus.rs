//! The reply corpus (`tests/corpus/replies/`, see its README): every case is a
//! whole raw mail and the text an agent should read as `stripped_text`. Each
//! mail goes through the real parse path and its `stripped_text` is compared
//! with the case's `.expected`, whitespace normalised (each line trimmed,
//! runs of spaces collapsed, blank lines dropped). No services needed.
//!
//! It asserts a total match rate of at least 95 %, that no case loses a line
//! the customer wrote (every expected line appears, in order, in what the
//! parser kept), and, for the cases with a `.signature`, that at least 90 %
//! of them get that signature as `stripped_signature`. The rates per
//! language and per client and a short diff of each miss are printed
//! (`--nocapture`) and put in the failure message.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use intake::envelope::Source;
use intake::parse::{parse, ParseOptions};
use intake::submission::{Payload, Submission};

const MIN_CASES: usize = 150;
const MIN_SPANISH: usize = 40;
/// Each of these languages has at least this many cases.
const LANGUAGES: [&str; 9] = ["es", "en", "pt", "fr", "de", "it", "nl", "pl", "ru"];
const MIN_PER_LANGUAGE: usize = 8;
const MIN_MATCH_RATE: f64 = 0.95;
const MIN_SIGNATURE_RATE: f64 = 0.90;
/// Diff lines shown per miss.
const DIFF_LINES: usize = 14;

struct Case {
    name: String,
    client: String,
    language: String,
    mail: Vec<u8>,
    expected: String,
    signature: Option<String>,
}

/// What the parser made of one case.
struct Outcome {
    stripped_text: Option<String>,
    stripped_signature: Option<String>,
    error: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/replies")
}

/// `client-lang-nn-rest`: the language is the first two-letter segment that
/// is followed by a two-digit one; the client is everything before it.
fn client_and_language(name: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = name.split('-').collect();
    (1..parts.len().saturating_sub(1)).find_map(|i| {
        let (language, number) = (parts[i], parts[i + 1]);
        let is_language = language.len() == 2 && language.bytes().all(|b| b.is_ascii_lowercase());
        let is_number = number.len() == 2 && number.bytes().all(|b| b.is_ascii_digit());
        (is_language && is_number).then(|| (parts[..i].join("-"), language.to_string()))
    })
}

/// Reads every case; a file without its partner or a name outside the
/// naming rule is a problem, not a silent skip.
fn load_cases(problems: &mut Vec<String>) -> Vec<Case> {
    let dir = corpus_dir();
    let mut names: Vec<String> = Vec::new();
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for file in &files {
        if file == "README.md" {
            continue;
        }
        let Some((stem, extension)) = file.rsplit_once('.') else {
            problems.push(format!(
                "{file}: not NAME.eml, NAME.expected or NAME.signature"
            ));
            continue;
        };
        match extension {
            "eml" => names.push(stem.to_string()),
            "expected" | "signature" => {
                if !files.contains(&format!("{stem}.eml")) {
                    problems.push(format!("{file}: no {stem}.eml beside it"));
                }
            }
            _ => problems.push(format!(
                "{file}: not NAME.eml, NAME.expected or NAME.signature"
            )),
        }
    }
    let mut cases = Vec::new();
    for name in names {
        let Some((client, language)) = client_and_language(&name) else {
            problems.push(format!("{name}: the name is not client-lang-nn-..."));
            continue;
        };
        let read_text = |extension: &str| -> Option<String> {
            let path = dir.join(format!("{name}.{extension}"));
            path.exists().then(|| {
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
        };
        let Some(expected) = read_text("expected") else {
            problems.push(format!("{name}.eml: no {name}.expected beside it"));
            continue;
        };
        cases.push(Case {
            mail: fs::read(dir.join(format!("{name}.eml"))).unwrap(),
            signature: read_text("signature"),
            name,
            client,
            language,
            expected,
        });
    }
    cases
}

/// The real parse path, as the pipeline runs it for a piped mail.
fn run(case: &Case) -> Outcome {
    let source = Source::Mailgate {
        sender: Some("customer@example.com".into()),
        recipients: vec!["support@shop.test".into()],
        ip: "127.0.0.1".into(),
        client: None,
    };
    let submission = Submission::new(source, Payload::Mail(Bytes::from(case.mail.clone())));
    let options = ParseOptions {
        form: None,
        keep_raw: false,
    };
    match parse(submission, options) {
        Ok(message) => {
            // `stripped_signature` is read from the JSON: the envelope gets
            // that field with the new extractor.
            let value = serde_json::to_value(&message.envelope).unwrap();
            Outcome {
                stripped_signature: value["stripped_signature"].as_str().map(str::to_string),
                stripped_text: message.envelope.stripped_text,
                error: None,
            }
        }
        Err(e) => Outcome {
            stripped_text: None,
            stripped_signature: None,
            error: Some(e.to_string()),
        },
    }
}

/// Lines trimmed, inner runs of whitespace collapsed, blank lines dropped.
fn normalise(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect()
}

/// A signature compared without its `-- ` separator line.
fn normalise_signature(text: &str) -> Vec<String> {
    let mut lines = normalise(text);
    if lines.first().is_some_and(|l| l == "--") {
        lines.remove(0);
    }
    lines
}

/// The expected lines that do not appear, in order, among the lines got.
fn dropped_lines<'a>(expected: &'a [String], got: &[String]) -> Vec<&'a str> {
    let mut position = 0;
    let mut dropped = Vec::new();
    for line in expected {
        match got[position..].iter().position(|g| g == line) {
            Some(i) => position += i + 1,
            None => dropped.push(line.as_str()),
        }
    }
    dropped
}

/// A line diff (longest common subsequence): `-` expected only, `+` got
/// only, `=` both; at most `DIFF_LINES` lines, long lines cut.
fn line_diff(expected: &[String], got: &[String]) -> String {
    let (n, m) = (expected.len(), got.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == got[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let cut = |line: &str| -> String {
        let mut short: String = line.chars().take(100).collect();
        if short.len() < line.len() {
            short.push('…');
        }
        short
    };
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == got[j] {
            out.push(format!("      = {}", cut(&expected[i])));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("      + {}", cut(&got[j])));
            j += 1;
        } else {
            out.push(format!("      - {}", cut(&expected[i])));
            i += 1;
        }
    }
    let total = out.len();
    if total > DIFF_LINES {
        out.truncate(DIFF_LINES);
        out.push(format!("      … {} more diff lines", total - DIFF_LINES));
    }
    out.join("\n")
}

/// Matched and total, per key.
#[derive(Default)]
struct Tally(BTreeMap<String, (usize, usize)>);

impl Tally {
    fn add(&mut self, key: &str, matched: bool) {
        let entry = self.0.entry(key.to_string()).or_default();
        entry.0 += usize::from(matched);
        entry.1 += 1;
    }

    fn write(&self, title: &str, out: &mut String) {
        writeln!(out, "by {title}:").unwrap();
        for (key, (matched, total)) in &self.0 {
            writeln!(
                out,
                "  {key:<24} {matched:>3}/{total:<3} {:>5.1} %",
                percent(*matched, *total)
            )
            .unwrap();
        }
    }
}

fn percent(part: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

#[test]
fn stripped_text_matches_the_reply_corpus() {
    let mut problems = Vec::new();
    let cases = load_cases(&mut problems);

    let spanish = cases.iter().filter(|c| c.language == "es").count();
    if cases.len() < MIN_CASES {
        problems.push(format!(
            "the corpus has {} cases, fewer than {MIN_CASES}",
            cases.len()
        ));
    }
    if spanish < MIN_SPANISH {
        problems.push(format!(
            "the corpus has {spanish} Spanish cases, fewer than {MIN_SPANISH}"
        ));
    }
    for language in LANGUAGES {
        let count = cases.iter().filter(|c| c.language == language).count();
        if count < MIN_PER_LANGUAGE {
            problems.push(format!(
                "the corpus has {count} cases in {language}, fewer than {MIN_PER_LANGUAGE}"
            ));
        }
    }

    let mut by_language = Tally::default();
    let mut by_client = Tally::default();
    let mut matched = 0;
    let mut misses = String::new();
    let mut dropping = Vec::new();
    let mut signatures = (0, 0);
    let mut signature_misses = String::new();
    for case in &cases {
        let outcome = run(case);
        let expected = normalise(&case.expected);
        let got = normalise(outcome.stripped_text.as_deref().unwrap_or_default());
        let is_match = outcome.error.is_none() && expected == got;
        matched += usize::from(is_match);
        by_language.add(&case.language, is_match);
        by_client.add(&case.client, is_match);
        let dropped = dropped_lines(&expected, &got);
        if !is_match {
            let mut note = String::new();
            if let Some(error) = &outcome.error {
                note = format!(" (parse error: {error})");
            } else if outcome.stripped_text.is_none() {
                note = " (no stripped_text)".to_string();
            }
            if !dropped.is_empty() {
                write!(note, " [{} customer lines dropped]", dropped.len()).unwrap();
            }
            writeln!(misses, "  {}{note}", case.name).unwrap();
            writeln!(misses, "{}", line_diff(&expected, &got)).unwrap();
        }
        if !dropped.is_empty() {
            dropping.push(format!("{}: dropped {:?}", case.name, dropped));
        }
        if let Some(signature) = &case.signature {
            let expected = normalise_signature(signature);
            let got = outcome
                .stripped_signature
                .as_deref()
                .map(normalise_signature);
            signatures.1 += 1;
            if got.as_ref() == Some(&expected) {
                signatures.0 += 1;
            } else {
                let shown = got.map_or("(none)".to_string(), |g| format!("{g:?}"));
                writeln!(
                    signature_misses,
                    "  {}: expected {expected:?}, got {shown}",
                    case.name
                )
                .unwrap();
            }
        }
    }

    let mut report = String::new();
    writeln!(
        report,
        "reply corpus: {matched}/{} cases match ({:.1} %), {spanish} in Spanish",
        cases.len(),
        percent(matched, cases.len())
    )
    .unwrap();
    by_language.write("language", &mut report);
    by_client.write("client", &mut report);
    writeln!(
        report,
        "signatures: {}/{} match ({:.1} %)",
        signatures.0,
        signatures.1,
        percent(signatures.0, signatures.1)
    )
    .unwrap();
    writeln!(report, "cases that lose customer lines: {}", dropping.len()).unwrap();
    if !misses.is_empty() {
        writeln!(
            report,
            "misses (- expected only, + got only, = both):\n{misses}"
        )
        .unwrap();
    }
    if !signature_misses.is_empty() {
        writeln!(report, "signature misses:\n{signature_misses}").unwrap();
    }
    eprintln!("{report}");

    let rate = matched as f64 / cases.len().max(1) as f64;
    if rate < MIN_MATCH_RATE {
        problems.push(format!(
            "match rate {:.1} % is below {:.0} %",
            100.0 * rate,
            100.0 * MIN_MATCH_RATE
        ));
    }
    for case in dropping {
        problems.push(format!("a customer line lost: {case}"));
    }
    let signature_rate = signatures.0 as f64 / signatures.1.max(1) as f64;
    if signatures.1 > 0 && signature_rate < MIN_SIGNATURE_RATE {
        problems.push(format!(
            "signature match rate {:.1} % is below {:.0} %",
            100.0 * signature_rate,
            100.0 * MIN_SIGNATURE_RATE
        ));
    }
    assert!(
        problems.is_empty(),
        "{report}\nproblems:\n  {}",
        problems.join("\n  ")
    );
}

/// The harness's own helpers, on small inputs.
#[test]
fn the_harness_normalises_names_lines_and_diffs() {
    assert_eq!(
        client_and_language("outlook-desktop-de-02-header-block"),
        Some(("outlook-desktop".into(), "de".into()))
    );
    assert_eq!(
        client_and_language("gmail-es-01-top-posted"),
        Some(("gmail".into(), "es".into()))
    );
    assert_eq!(client_and_language("gmail-top-posted"), None);
    assert_eq!(
        normalise("  Hola,\r\n\r\n  me   llegó\trota. \n\u{a0}\n"),
        ["Hola,", "me llegó rota."]
    );
    assert_eq!(normalise_signature("-- \nAna\n"), ["Ana"]);
    let lines = |s: &str| normalise(s);
    assert!(dropped_lines(&lines("a\nb"), &lines("x\na\ny\nb")).is_empty());
    assert_eq!(dropped_lines(&lines("a\nb"), &lines("b\na")), ["b"]);
    assert_eq!(
        line_diff(&lines("a\nb"), &lines("a\nc")),
        "      = a\n      + c\n      - b"
    );
}
