//! `intake parse [FILE]`: the envelope a raw mail would become, printed as
//! pretty JSON, offline (no Redis, no clamd, no running gateway), so a
//! sysadmin can see why a ticket looks the way it does.
//!
//! It runs the parse stage, then the `[privacy]` redaction and the `[mime]`
//! limit check exactly as the pipeline does after parsing (the config's
//! sections with `--config`, their defaults without). Nothing is scanned
//! (`scan.status` stays `unscanned`) and no abuse rule runs; what the
//! gateway would do beyond parsing is said on stderr.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;

use super::exit::Exit;
use super::fail;
use crate::config::Config;
use crate::envelope::Source;
use crate::parse::limits::MimeConfig;
use crate::parse::redact::{redact_envelope, PrivacyConfig};
use crate::parse::{self, ParseError, ParseOptions};
use crate::submission::{Payload, Submission};

#[derive(Args)]
pub struct ParseArgs {
    /// The raw message (RFC 5322); read from stdin without it.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Include the raw message, base64, as the envelope's `raw` (dropped
    /// again when a card number was masked, as the gateway does).
    #[arg(long)]
    raw: bool,
    /// The gateway's config file, for its `[privacy]` and `[mime]`
    /// sections; without it their defaults apply.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The envelope sender, as `intake mailgate --sender` gives it (an
    /// empty one is a bounce).
    #[arg(long, value_name = "ADDR")]
    sender: Option<String>,
    /// An envelope recipient (repeatable), as `intake mailgate --recipient`
    /// gives it; the plus token of the first is the `mailbox_hash`.
    #[arg(long, value_name = "ADDR")]
    recipient: Vec<String>,
}

pub fn main(args: ParseArgs) -> Exit {
    let (privacy, mime) = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => (config.privacy, config.mime),
            Err(e) => return fail(Exit::Config, e),
        },
        None => (PrivacyConfig::default(), MimeConfig::default()),
    };
    let raw = match read_message(args.file.as_deref()) {
        Ok(raw) => raw,
        Err(e) => return fail(Exit::NoInput, e),
    };
    let submission = Submission::new(
        Source::Mailgate {
            sender: args.sender,
            recipients: args.recipient,
            // What mailgate on the gateway's own machine posts from.
            ip: "127.0.0.1".into(),
            client: None,
        },
        Payload::Mail(Bytes::from(raw)),
    );
    let options = ParseOptions {
        form: None,
        keep_raw: args.raw,
    };
    let mut message = match parse::parse(submission, options) {
        Ok(message) => message,
        Err(e @ ParseError::Empty) => {
            return fail(Exit::DataErr, format!("{e}: the gateway refuses it"))
        }
        Err(e) => return fail(Exit::Failure, e),
    };
    // The pipeline's step 1, after the parse: redaction, then the limits.
    let masked = redact_envelope(&mut message.envelope, &privacy);
    let json = match serde_json::to_string_pretty(&message.envelope) {
        Ok(json) => json,
        Err(e) => return fail(Exit::Failure, format!("cannot write the envelope: {e}")),
    };
    println!("{json}");
    if masked > 0 {
        eprintln!("intake: {masked} card number(s) masked ([privacy] redact_cards)");
    }
    if let Some(reason) = mime.exceeded(&message.mime) {
        eprintln!("intake: {reason}: the gateway would quarantine it (kind mime-limit) unscanned");
    }
    eprintln!("intake: not scanned, and no abuse rule ran: this is the parse stage only");
    Exit::Ok
}

/// The message from `file`, or stdin without one.
fn read_message(file: Option<&Path>) -> Result<Vec<u8>, String> {
    match file {
        Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let mut raw = Vec::new();
            std::io::stdin()
                .read_to_end(&mut raw)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(raw)
        }
    }
}
