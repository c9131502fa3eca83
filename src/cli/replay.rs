//! `intake replay --rules DIR MAILDIR_OR_MBOX`: runs the rules and dedupe
//! over archived mail, offline, on the archive's own clock (each message's
//! `Date:`), and prints what every rule would have done, so a sysadmin can
//! tune a rule against last month's real mail before deploying it.
//!
//! Every rule runs in this process (cluster rules too) and dedupe history
//! is kept in memory: nothing touches Redis or a running gateway.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use governor::clock::FakeRelativeClock;
use time::OffsetDateTime;

use super::exit::Exit;
use super::fail;
use crate::envelope::Source;
use crate::guard::facts::Facts;
use crate::guard::limiter::LimiterClock;
use crate::guard::rules::RuleSet;
use crate::guard::Guard;
use crate::parse::{self, ParseOptions};
use crate::submission::{Payload, Submission};
use crate::verdict::GuardVerdict;

#[derive(Args)]
pub struct ReplayArgs {
    /// The rules folder to try.
    #[arg(long)]
    rules: PathBuf,
    /// A Maildir (with cur/ and new/), a folder of message files, or an
    /// mbox file.
    archive: PathBuf,
    /// How many of the most throttled senders to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// The gateway's config file: with an `[auth]` table each mail is
    /// checked as the gateway would (DKIM, SPF by the trusted `Received:`
    /// header, DMARC, ARC, against its DNS) and the rules see the
    /// verdicts.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// With --config: no DNS; only the trusted `Authentication-Results`
    /// headers the mails carry (`auth.trusted_authserv_ids`), so an
    /// archive replays offline. DKIM keys change and records come and go:
    /// a month-old mail checked today may not verify as it did.
    #[arg(long, requires = "config")]
    recorded_auth: bool,
}

/// Counts per rule.
#[derive(Default)]
struct RuleTally {
    matched: u64,
    over: u64,
    acted: u64,
    shadow: u64,
}

pub fn main(args: ReplayArgs) -> Exit {
    let set = match RuleSet::load_dir(&args.rules) {
        Ok(set) => set,
        Err(e) => return fail(Exit::Failure, format!("the rules do not load:\n{e}")),
    };
    let auth = match args
        .config
        .as_deref()
        .map(crate::auth::Authenticator::from_gateway_config)
        .transpose()
    {
        Ok(auth) => auth.flatten().map(|a| {
            if args.recorded_auth {
                a.recorded_only()
            } else {
                a
            }
        }),
        Err(e) => return fail(Exit::Config, e),
    };
    let messages = match read_archive(&args.archive) {
        Ok(m) => m,
        Err(e) => return fail(Exit::NoInput, format!("{}: {e}", args.archive.display())),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(replay(set, messages, auth));
    print!("{}", report.render(&args.archive, args.top));
    Exit::Ok
}

/// One replay's results.
pub struct Report {
    items: u64,
    unreadable: u64,
    first: Option<OffsetDateTime>,
    last: Option<OffsetDateTime>,
    outcomes: BTreeMap<&'static str, u64>,
    rules: Vec<(String, &'static str, bool, RuleTally)>,
    throttled: HashMap<String, u64>,
    /// Items folded by dedupe, by kind.
    dedupe: BTreeMap<String, u64>,
    /// Authentication verdicts (`dmarc=fail`, `aligned_from=true`), with
    /// --config.
    auth: BTreeMap<String, u64>,
}

async fn replay(
    set: RuleSet,
    raws: Vec<Bytes>,
    auth: Option<crate::auth::Authenticator>,
) -> Report {
    // Parse, then order by the messages' own dates: rates are about time.
    let mut messages = Vec::with_capacity(raws.len());
    let mut unreadable = 0;
    for (i, raw) in raws.into_iter().enumerate() {
        let submission = Submission::new(
            Source::Imap {
                account: "replay".into(),
                mailbox: "archive".into(),
                uidvalidity: 0,
                uid: i as u32,
            },
            Payload::Mail(raw),
        );
        match parse::parse(
            submission,
            ParseOptions {
                form: None,
                keep_raw: false,
            },
        ) {
            Ok(mut m) => {
                if let Some(date) = m.envelope.date.as_deref().and_then(|d| {
                    OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
                }) {
                    m.envelope.received_at = date;
                }
                messages.push(m);
            }
            Err(_) => unreadable += 1,
        }
    }
    messages.sort_by_key(|m| m.envelope.received_at);
    let clock = FakeRelativeClock::default();
    let mut rules: Vec<(String, &'static str, bool, RuleTally)> = set
        .rules
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.action.name(),
                r.shadow,
                RuleTally::default(),
            )
        })
        .collect();
    let guard = Guard::new(set, None, None, LimiterClock::Fake(clock.clone()));
    let mut report = Report {
        items: messages.len() as u64,
        unreadable,
        first: messages.first().map(|m| m.envelope.received_at),
        last: messages.last().map(|m| m.envelope.received_at),
        outcomes: BTreeMap::new(),
        rules: Vec::new(),
        throttled: HashMap::new(),
        dedupe: BTreeMap::new(),
        auth: BTreeMap::new(),
    };
    let mut elapsed = Duration::ZERO;
    let start = report.first;
    for mut message in messages {
        if let Some(start) = start {
            let at: Duration = (message.envelope.received_at - start)
                .try_into()
                .unwrap_or_default();
            if at > elapsed {
                clock.advance(at - elapsed);
                elapsed = at;
            }
        }
        if let Some(auth) = &auth {
            auth.authenticate_message(&mut message).await;
            if let Some(verdicts) = &message.envelope.auth {
                let dmarc = verdicts.dmarc.as_ref().map_or("none", |d| d.result.name());
                for key in [
                    format!("dmarc={dmarc}"),
                    format!("aligned_from={}", verdicts.aligned_from),
                ] {
                    *report.auth.entry(key).or_default() += 1;
                }
            }
        }
        let sender = Facts::of(&message.envelope)
            .primary()
            .map_or_else(|| "-".into(), |i| i.address.clone());
        // Offline, the in-memory store cannot fail.
        let Ok(mut checked) = guard.check(&mut message).await else {
            continue;
        };
        // A desk item is remembered as the gateway does it, reserved and
        // confirmed around its (here imagined) write, so later items can
        // fold into it.
        if let Ok(Some((into, rule))) = guard
            .reserve(&mut checked.ticket, message.envelope.id)
            .await
        {
            checked.verdict = GuardVerdict::Collapse { into, rule };
        }
        guard.confirm(&checked.ticket, message.envelope.id).await;
        let outcome = match &checked.verdict {
            GuardVerdict::Pass | GuardVerdict::Tag { .. } => "desk",
            GuardVerdict::Collapse { .. } => "collapsed",
            GuardVerdict::Quarantine { .. } => "quarantined",
            GuardVerdict::Reject { .. } => "rejected",
            GuardVerdict::Block { .. } => "blocked",
            GuardVerdict::Trap { .. } => "trapped",
        };
        *report.outcomes.entry(outcome).or_default() += 1;
        if outcome != "desk" {
            *report.throttled.entry(sender).or_default() += 1;
        }
        let _ = guard.stored(&checked.ticket, message.envelope.id).await;
        let acting = match &checked.verdict {
            GuardVerdict::Collapse { rule, .. } => Some(rule.clone()),
            _ => None,
        };
        if let Some(rule) = acting.as_ref().filter(|r| r.starts_with("dedupe-")) {
            *report.dedupe.entry(rule.clone()).or_default() += 1;
        }
        for o in &checked.outcomes {
            if let Some((_, _, _, tally)) = rules.iter_mut().find(|(n, ..)| *n == o.rule) {
                tally.matched += 1;
                if o.over {
                    tally.over += 1;
                    if o.shadow {
                        tally.shadow += 1;
                    } else if verdict_is(&checked.verdict, o.action)
                        || acting.as_deref() == Some(o.rule.as_str())
                    {
                        tally.acted += 1;
                    }
                }
            }
        }
    }
    report.rules = rules;
    report
}

/// Whether the final verdict is this rule action's (the strongest won).
fn verdict_is(verdict: &GuardVerdict, action: crate::guard::rules::Action) -> bool {
    use crate::guard::rules::Action;
    matches!(
        (verdict, action),
        (GuardVerdict::Reject { .. }, Action::Reject)
            | (GuardVerdict::Quarantine { .. }, Action::Quarantine)
            | (GuardVerdict::Collapse { .. }, Action::Collapse)
            | (GuardVerdict::Pass | GuardVerdict::Tag { .. }, Action::Tag)
    )
}

impl Report {
    fn render(&self, archive: &Path, top: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => format!(" from {} to {}", a.date(), b.date()),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "replayed {} messages{span} ({})",
            self.items,
            archive.display()
        );
        if self.unreadable > 0 {
            let _ = writeln!(out, "{} files could not be read as mail", self.unreadable);
        }
        let _ = writeln!(out, "\n{:<14} {:>8}", "outcome", "items");
        for name in [
            "desk",
            "collapsed",
            "quarantined",
            "rejected",
            "blocked",
            "trapped",
        ] {
            if let Some(n) = self.outcomes.get(name) {
                let _ = writeln!(out, "{name:<14} {n:>8}");
            }
        }
        let _ = writeln!(
            out,
            "\n{:<24} {:<11} {:>8} {:>8} {:>8} {:>8}",
            "rule", "action", "matched", "over", "acted", "shadow"
        );
        for (name, action, shadow, t) in &self.rules {
            let action = if *shadow {
                format!("{action}*")
            } else {
                action.to_string()
            };
            let _ = writeln!(
                out,
                "{name:<24} {action:<11} {:>8} {:>8} {:>8} {:>8}",
                t.matched, t.over, t.acted, t.shadow
            );
        }
        for (name, n) in &self.dedupe {
            let _ = writeln!(
                out,
                "{name:<24} {:<11} {:>8} {:>8} {n:>8} {:>8}",
                "collapse", "-", "-", "-"
            );
        }
        let _ = writeln!(out, "(* shadow: counted, not done; `over` = past its quota, `acted` = its action was the verdict)");
        if !self.auth.is_empty() {
            let _ = writeln!(out, "\n{:<24} {:>8}", "authentication", "items");
            for (verdict, n) in &self.auth {
                let _ = writeln!(out, "{verdict:<24} {n:>8}");
            }
        }
        let mut throttled: Vec<(&String, &u64)> = self.throttled.iter().collect();
        throttled.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if !throttled.is_empty() {
            let _ = writeln!(out, "\ntop throttled senders (items kept off the desk)");
            for (sender, n) in throttled.into_iter().take(top) {
                let _ = writeln!(out, "{n:>8}  {sender}");
            }
        }
        out
    }
}

/// Every message of a Maildir, a folder of files, or an mbox file.
fn read_archive(path: &Path) -> std::io::Result<Vec<Bytes>> {
    if path.is_file() {
        return Ok(split_mbox(&std::fs::read(path)?));
    }
    let mut dirs = vec![path.to_path_buf()];
    for sub in ["cur", "new"] {
        if path.join(sub).is_dir() {
            dirs.push(path.join(sub));
        }
    }
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).map(Bytes::from))
        .collect()
}

/// Splits an mbox (mboxrd) at its `From ` lines and unescapes `>From `.
fn split_mbox(data: &[u8]) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut started = false;
    let mut previous_blank = true;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if previous_blank && line.starts_with(b"From ") {
            if started && !current.is_empty() {
                messages.push(Bytes::from(std::mem::take(&mut current)));
            }
            started = true;
        } else if started {
            let unescaped = match line.iter().position(|b| *b != b'>') {
                Some(n) if n > 0 && line[n..].starts_with(b"From ") => &line[1..],
                _ => line,
            };
            current.extend_from_slice(unescaped);
        }
        previous_blank = line == b"\n" || line == b"\r\n";
    }
    if started && !current.is_empty() {
        messages.push(Bytes::from(current));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_is_split_at_from_lines_and_unescaped() {
        let mbox = b"From a@x Mon Nov 23 10:00:00 2026\nSubject: one\n\n>From here\n\nFrom b@x Mon Nov 23 10:01:00 2026\nSubject: two\n\nbody\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(&messages[0][..], b"Subject: one\n\nFrom here\n\n");
        assert!(messages[1].starts_with(b"Subject: two"));
    }
}
