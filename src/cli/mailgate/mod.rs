//! `intake mailgate`: the client a mail server's pipe transport (Postfix
//! `pipe`, Exim `pipe`, procmail) runs once per mail. It reads one raw
//! RFC 5322 message on stdin and POSTs it to a running gateway's
//! `/v1/messages`.
//!
//! The guarantee is the one rule of the project seen from the mail server's
//! side: exit 0 only after the gateway answered 2xx (the message is stored);
//! every failure that a retry could fix, including our own misconfiguration,
//! exits 75 (EX_TEMPFAIL) so the mail server keeps the mail. Only a verdict
//! of the gateway that will not change (malformed, too big, refused by
//! policy) or a command line that cannot work exits with a permanent code.
//! Every run prints an RFC 3463 enhanced status line first on stdout (Postfix
//! puts it in its log and in any bounce) and, unless the mail was stored, one
//! plain line on stderr saying why. The token never appears in either.
//! The codes are those of [`Exit`], which says what a mail server does with
//! each.
//!
//! | outcome | exit | status |
//! | --- | --- | --- |
//! | 2xx | 0 | `2.0.0 stored as <id>` |
//! | 5xx, 408, 425, 429, 401, 404, 405, 407, 421, 1xx/3xx, no answer, garbled answer, timeout, TLS failure, missing or empty token, unreadable `--ca-file`, unreadable stdin | 75 EX_TEMPFAIL | `4.x.x ...` |
//! | 400, 413, 415, other 4xx, stdin over `--max-size` | 65 EX_DATAERR | `5.6.0`, `5.3.4`, `5.6.1` |
//! | 403, 422 (infected) | 77 EX_NOPERM | `5.7.1 refused by policy: ...` |
//! | bad arguments, including a `--url` that is not http(s) | 64 EX_USAGE | (clap's message, from `main.rs`) |
//!
//! A Postfix `master.cf` entry (the `=` form keeps an empty bounce sender
//! and an empty client, and makes Postfix repeat `--recipient=` once per
//! recipient):
//!
//! ```text
//! intake  unix  -  n  n  -  10  pipe
//!   user=intake argv=/usr/bin/intake mailgate --url http://127.0.0.1:8080
//!   --token-file /etc/intake/mailgate.token --sender=${sender} --recipient=${recipient}
//!   --client-address=${client_address} --helo=${client_helo}
//! ```
//!
//! `--client-address` and `--helo` (the SMTP client, for SPF) never fail a
//! run: a value that cannot be sent is left out with a warning (`client`).
//!
//! Exim's `pipe` transport: the sender from its `SENDER` variable (on the
//! command line it is tainted), `$pipe_addresses` after `--` gives the
//! recipients, one argument each, and `message_prefix =` keeps Exim's mbox
//! `From ` line off (mailgate drops one anyway, as it does procmail's):
//!
//! ```text
//! command = /usr/bin/intake mailgate --url http://127.0.0.1:8080 \
//!   --token-file /etc/intake/mailgate.token --sender-env SENDER -- $pipe_addresses
//! ```
//!
//! The work is split by step: `args` (the command line), `client` (the
//! SMTP client flags as headers), `stdin` (the
//! message, within `--max-size`, without an mbox `From ` line), `token`
//! (the credential), `exchange` (the one HTTP request, bounded by
//! `--timeout`), `answer` (what the
//! gateway said), `error` (why no answer came) and `disposition` (the
//! one mapping from all of that to exit code and status line).

mod answer;
mod args;
mod client;
mod disposition;
mod error;
mod exchange;
mod stdin;
mod token;

use std::io::{self, Write};

use tokio::time::Instant;

pub use answer::GatewayAnswer;
pub use args::{GatewayScheme, GatewayUrl, MailgateArgs, TOKEN_ENV};
pub use disposition::{Disposition, Outcome};
pub use error::MailgateError;

use crate::cli::exit::Exit;
use client::ClientHeaders;
use disposition::consequence;
use exchange::{build_request, deliver, tls_connector};
use stdin::{read_message, without_mbox_from_line, Message};
use token::load_token;

/// Runs `intake mailgate` and turns its outcome into the process exit code,
/// after printing the status line (stdout) and the reason (stderr).
pub fn main(args: MailgateArgs) -> Exit {
    let client = args.client_headers();
    let outcome = run(&args, &client);
    let disposition = outcome.disposition();
    // A closed stdout or stderr must not change the exit code: the mail
    // server decides on the code, the lines only explain it.
    let _ = writeln!(io::stdout().lock(), "{}", disposition.status_line());
    if disposition.exit != Exit::Ok {
        let _ = writeln!(
            io::stderr().lock(),
            "intake mailgate: {}; {} (exit {})",
            disposition.reason,
            consequence(disposition.exit),
            disposition.exit.code()
        );
    }
    // After the status line, never before: Postfix's pipe reads stdout and
    // stderr as one stream and takes the status from its first line.
    for warning in &client.warnings {
        let _ = writeln!(io::stderr().lock(), "intake mailgate: warning: {warning}");
    }
    disposition.exit
}

/// Does the work in a fixed order; each step can end the run early with
/// its outcome.
fn run(args: &MailgateArgs, client: &ClientHeaders) -> Outcome {
    // 1. Take the whole message off stdin first, whatever happens next: a
    //    mail server whose write fails with a broken pipe may log a
    //    misleading error, and the size verdict must not need the network.
    //    A leading mbox `From ` line (Exim, procmail) is not the mail's.
    let message = match read_message(&mut io::stdin().lock(), args.max_size.bytes()) {
        Ok(Message::Complete(body)) => without_mbox_from_line(body),
        Ok(Message::TooBig { size }) => {
            return Outcome::TooBig {
                limit: args.max_size,
                size,
            }
        }
        Err(err) => return Outcome::Failed(err),
    };

    // 2. Local configuration: the token, and for https the trusted roots.
    //    All failures here are ours to fix, so they keep the mail (75).
    let token = match load_token(args.token_file.as_ref()) {
        Ok(token) => token,
        Err(err) => return Outcome::Failed(err),
    };
    let tls = match args.url.scheme {
        GatewayScheme::Http => None,
        GatewayScheme::Https => match tls_connector(args.ca_file.as_ref()) {
            Ok(tls) => Some(tls),
            Err(err) => return Outcome::Failed(err),
        },
    };
    let request = build_request(args, client, &token, message);

    // 3. The exchange, bounded as a whole by --timeout. A single-threaded
    //    runtime is plenty for one request and starts fast.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Outcome::Failed(MailgateError::Runtime(err)),
    };
    let deadline = Instant::now() + args.timeout;
    match runtime.block_on(deliver(&args.url, tls, request, deadline, args.timeout)) {
        Ok(answer) => Outcome::Answered(answer),
        Err(err) => Outcome::Failed(err),
    }
}
