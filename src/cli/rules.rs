//! `intake rules check [DIR]` and `intake rules explain`: validate rule
//! files before deploying them, and see what the rules make of a sender,
//! an address, a form or a whole message: every identity it carries, with
//! where it was read and its bucket key, and each rule's bucket per key.

use std::io::Read as _;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Subcommand};

use super::exit::Exit;
use super::fail;
use crate::envelope::Source;
use crate::guard::facts::Facts;
use crate::guard::limiter::LimiterClock;
use crate::guard::rules::RuleSet;
use crate::guard::store::RedisStore;
use crate::guard::Guard;
use crate::parse::{self, Message, ParseOptions};
use crate::sources::http::config::FormConfig;
use crate::submission::{FormPost, Payload, Submission};

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Validate rule files; every problem names file, line and key.
    Check {
        /// The rules folder.
        #[arg(default_value = "/etc/intake/rules")]
        dir: PathBuf,
    },
    /// Which rules an item would match, their keys and buckets, and the
    /// resulting action. Without --sender, --ip or --form, reads a raw
    /// message on stdin.
    Explain(Box<ExplainArgs>),
}

#[derive(Args)]
pub struct ExplainArgs {
    /// The rules folder.
    #[arg(long, default_value = "/etc/intake/rules")]
    rules: PathBuf,
    /// The sender (mail: its From) or the form's email field.
    #[arg(long)]
    sender: Option<String>,
    /// The mail's envelope sender (LMTP MAIL FROM, mailgate -f), for
    /// --sender and for a message on stdin alike.
    #[arg(long)]
    envelope_sender: Option<String>,
    /// The client address.
    #[arg(long)]
    ip: Option<String>,
    /// Explain a post to this form instead of a mail.
    #[arg(long)]
    form: Option<String>,
    /// The receiving mailbox (recipient address).
    #[arg(long)]
    mailbox: Option<String>,
    /// Read the current state of cluster buckets from this Redis.
    #[arg(long, env = "INTAKE_REDIS_URL")]
    redis: Option<String>,
    /// The gateway's `redis.prefix`.
    #[arg(long, default_value = "intake")]
    prefix: String,
    /// The gateway's config file: with an `[auth]` table the mail is
    /// checked (DKIM, SPF, DMARC, ARC, against its DNS) and the rules see
    /// the verdicts, as the gateway's would.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The SMTP client the mail came from, for SPF (what XFORWARD or
    /// mailgate's --client-address would say).
    #[arg(long, value_name = "ADDR")]
    client_address: Option<String>,
    /// That client's HELO name, for SPF.
    #[arg(long, value_name = "NAME")]
    helo: Option<String>,
}

pub fn main(command: RulesCommand) -> Exit {
    match command {
        RulesCommand::Check { dir } => check(&dir),
        RulesCommand::Explain(args) => explain(*args),
    }
}

fn check(dir: &std::path::Path) -> Exit {
    match RuleSet::load_dir(dir) {
        Ok(set) => {
            println!(
                "ok: {} rules, {} allow and {} block lists in {} files ({})",
                set.rules.len(),
                set.allow.len(),
                set.block.len(),
                set.files.len(),
                dir.display()
            );
            for rule in &set.rules {
                println!(
                    "  {:<24} {:<10} {:<18} key {:<24}{}",
                    rule.name,
                    rule.action.name(),
                    rule.quota_text(),
                    rule.key
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join("+"),
                    if rule.shadow { " (shadow)" } else { "" }
                );
            }
            Exit::Ok
        }
        Err(error) => {
            for problem in &error.0 {
                eprintln!("{problem}");
            }
            eprintln!("{} problem(s); nothing was loaded", error.0.len());
            Exit::Failure
        }
    }
}

/// The message `explain` reasons about.
fn message(args: &ExplainArgs) -> Result<Message, String> {
    let ip = args.ip.clone().unwrap_or_default();
    if let Some(form) = &args.form {
        let config: FormConfig =
            toml::from_str(&format!("id = {form:?}")).map_err(|e| e.to_string())?;
        let mut post = FormPost::default();
        if let Some(sender) = &args.sender {
            post.add_field("email".into(), sender.clone());
        }
        post.add_field("message".into(), "(explain)".into());
        let submission = Submission::new(
            Source::Form {
                form: form.clone(),
                ip,
                user_agent: None,
                origin: None,
                referer: None,
                accept_language: None,
            },
            Payload::Form(post),
        );
        return parse::parse(
            submission,
            ParseOptions {
                form: Some(&config.fields()),
                keep_raw: false,
            },
        )
        .map_err(|e| e.to_string());
    }
    let raw = if args.sender.is_some() || args.ip.is_some() {
        let from = args.sender.as_deref().unwrap_or("unknown@invalid");
        format!("From: {from}\r\nSubject: (explain)\r\n\r\n(explain)\r\n").into_bytes()
    } else {
        let mut raw = Vec::new();
        std::io::stdin()
            .read_to_end(&mut raw)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        raw
    };
    let submission = Submission::new(
        Source::Mailgate {
            sender: args.envelope_sender.clone(),
            recipients: args.mailbox.iter().cloned().collect(),
            ip,
            client: (args.client_address.is_some() || args.helo.is_some()).then(|| {
                crate::envelope::SmtpClient {
                    address: args.client_address.clone(),
                    helo: args.helo.clone(),
                }
            }),
        },
        Payload::Mail(Bytes::from(raw)),
    );
    parse::parse(
        submission,
        ParseOptions {
            form: None,
            keep_raw: false,
        },
    )
    .map_err(|e| e.to_string())
}

fn explain(args: ExplainArgs) -> Exit {
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
        Ok(auth) => auth.flatten(),
        Err(e) => return fail(Exit::Config, e),
    };
    let acknowledger = match args
        .config
        .as_deref()
        .map(crate::acknowledge::Acknowledger::from_gateway_config)
        .transpose()
    {
        Ok(a) => a.flatten(),
        Err(e) => return fail(Exit::Config, e),
    };
    let mut message = match message(&args) {
        Ok(m) => m,
        Err(e) => return fail(Exit::NoInput, e),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = match &args.redis {
            Some(url) => match redis::Client::open(url.as_str()) {
                Ok(client) => match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    client.get_connection_manager(),
                )
                .await
                {
                    Ok(Ok(c)) => Some(RedisStore::new(
                        crate::redis_connection::RedisConnection::Single(c),
                        &args.prefix,
                        std::time::Duration::from_secs(2),
                    )),
                    _ => return fail(Exit::Unavailable, format!("Redis at {url} does not answer")),
                },
                Err(e) => return fail(Exit::Unavailable, format!("--redis: {e}")),
            },
            None => None,
        };
        let guard = Guard::new(set.clone(), None, store, LimiterClock::Live);
        if let Some(auth) = &auth {
            auth.authenticate_message(&mut message).await;
        }
        let facts = Facts::of(&message.envelope);
        println!("item:");
        println!("  channel         {:?}", facts.channel);
        println!(
            "  sender          {}",
            facts.primary().map_or("-", |i| i.address.as_str())
        );
        for identity in &facts.identities {
            println!(
                "  identity        {:<32} {:<26} key {}",
                identity.address,
                format!("({})", identity.origins_text()),
                identity.key
            );
        }
        if facts.too_many_identities {
            println!(
                "  identity        (more, not read: tagged {}; keyed rules also charge the bucket {})",
                crate::guard::facts::MANY_IDENTITIES_TAG,
                crate::guard::rules::MANY_IDENTITIES_KEY
            );
        }
        println!(
            "  ip              {}",
            facts.ip.map_or("-".into(), |ip| ip.to_string())
        );
        println!("  form            {}", facts.form.unwrap_or("-"));
        println!(
            "  mailboxes       {}",
            if facts.mailboxes.is_empty() {
                "-".into()
            } else {
                facts.mailboxes.join(", ")
            }
        );
        println!("  auto_submitted  {}", facts.auto_submitted);
        match &message.envelope.auth {
            Some(auth) => {
                println!("\nauthentication:");
                for (what, text) in crate::auth::Authenticator::describe(auth) {
                    println!("  {what:<15} {text}");
                }
            }
            None if message.envelope.channel == crate::envelope::Channel::Email => {
                println!("\nauthentication:  not checked (give --config with an [auth] table)")
            }
            None => {}
        }
        if let Some(list) = set.block.iter().find(|l| l.blocks(&facts)) {
            println!(
                "\nblock list {}: refused (forms 403; mail kept in suppressed)",
                list.name
            );
            acknowledgement(acknowledger.as_ref(), &message.envelope, Some("it is refused"));
            return Exit::Ok;
        }
        if let Some(list) = set.allow.iter().find(|l| l.allows(&facts)) {
            println!(
                "\nallow list {}: no rate limits, no collapse; goes to the desk",
                list.name
            );
            acknowledgement(acknowledger.as_ref(), &message.envelope, None);
            return Exit::Ok;
        }
        println!("\nrules:");
        let mut strongest: Option<&crate::guard::rules::Rule> = None;
        let mut any = false;
        for rule in &set.rules {
            if !rule.matcher.matches(&facts) {
                continue;
            }
            any = true;
            println!(
                "  {} ({}) {}{}\n    quota  {}",
                rule.name,
                rule.origin,
                rule.action.name(),
                if rule.shadow {
                    ", shadow: only counted"
                } else {
                    ""
                },
                rule.quota_text(),
            );
            // A rule without a quota acts on every item it matches.
            let mut over = rule.quota.is_none();
            // One bucket per identity; the rule acts when any is over.
            for key in rule.keys_of(&facts).into_iter().filter(|_| rule.quota.is_some()) {
                let state = match guard.limiters().peek(rule, &key).await {
                    Ok(Some(s)) => match s.retry_after {
                        Some(t) => {
                            over = true;
                            format!("over quota, next item passes in {}s", t.as_secs().max(1))
                        }
                        None => format!("{} more pass now", s.remaining),
                    },
                    Ok(None) if args.redis.is_some() => {
                        "local bucket (in each gateway process; not readable here)".into()
                    }
                    Ok(None) => "unknown (give --redis to read cluster buckets)".into(),
                    Err(e) => return fail(Exit::Unavailable, e),
                };
                println!("    key    {key}\n    bucket {state}");
            }
            if over && !rule.shadow && strongest.is_none_or(|s| rule.action > s.action) {
                strongest = Some(rule);
            }
        }
        if !any {
            println!("  (no rule matches)");
        }
        match strongest {
            Some(rule) => println!(
                "\nresult: {} by {} (the strongest rule over its quota)",
                rule.action.name(),
                rule.name
            ),
            None => println!("\nresult: passes to the desk (unless it duplicates an earlier item)"),
        }
        let off_desk = strongest.and_then(|rule| match rule.action {
            crate::guard::rules::Action::Tag => None,
            crate::guard::rules::Action::Collapse => Some("it is collapsed into an earlier item"),
            crate::guard::rules::Action::Quarantine => Some("it goes to quarantine"),
            crate::guard::rules::Action::Reject => Some("it is refused"),
        });
        acknowledgement(acknowledger.as_ref(), &message.envelope, off_desk);
        Exit::Ok
    })
}

/// What the gateway's `[acknowledge]` would do with this item once on the
/// desk; `off_desk`: why it would not reach the desk at all.
fn acknowledgement(
    acknowledger: Option<&crate::acknowledge::Acknowledger>,
    envelope: &crate::envelope::Envelope,
    off_desk: Option<&str>,
) {
    let Some(acknowledger) = acknowledger else {
        println!("\nacknowledgement: not configured (give --config with an [acknowledge] table)");
        return;
    };
    if let Some(why) = off_desk {
        println!("\nacknowledgement: would not acknowledge, because {why}");
        return;
    }
    match acknowledger.decide("message", envelope) {
        crate::acknowledge::Decision::Send(plan) => println!(
            "\nacknowledgement: would acknowledge in {} to {} (unless it had one within acknowledge.window, which only the gateway's Redis knows{})",
            plan.language,
            plan.to,
            if plan.network.is_some() { ", or its network's forms had theirs" } else { "" }
        ),
        crate::acknowledge::Decision::Skip(skip) => println!(
            "\nacknowledgement: would not acknowledge, because {} ({})",
            skip.because(),
            skip.reason()
        ),
    }
}
