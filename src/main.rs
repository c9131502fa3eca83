//! The `intake` command line: the daemon (`serve`), the mail server's
//! pipe client (`mailgate`), the rule tools (`rules`, `replay`), the
//! offline parse (`parse`) and the
//! reference desk consumer (`desk`). Every command ends in an [`Exit`],
//! the one set of exit codes (src/cli/exit.rs); this is the only place that
//! hands one to the process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use intake::cli::exit::Exit;

/// mimalloc, not the C library's allocator: every item allocates many
/// small, short-lived buffers on several threads, and glibc's malloc, free
/// and consolidation took about a third of the gateway's CPU in the IMAP
/// backlog benchmark (perf, deploy/bench/imap).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's own collection (in the library the `mimalloc` crate links;
    /// libmimalloc-sys declares it only behind a feature that adds a crate):
    /// with `force`, frees what the calling thread caches and purges freed
    /// memory at once instead of at its next collection.
    fn mi_collect(force: bool);
}

/// Hands memory freed by a large item back to the system now: mimalloc
/// purges freed memory only when it next collects, and an idle gateway
/// kept a round of big mails' peak (hundreds of MB) until traffic resumed.
fn return_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time.
    unsafe { mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "intake",
    version,
    about = "Hardened ingestion gateway for a help desk"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Serve {
        /// The configuration file (TOML).
        #[arg(
            long,
            short,
            default_value = "/etc/intake/intake.toml",
            env = "INTAKE_CONFIG"
        )]
        config: PathBuf,
    },
    /// Read one message on stdin and hand it to a running gateway
    /// (for a mail server's pipe transport). Exit codes follow sysexits.h.
    Mailgate(Box<intake::cli::mailgate::MailgateArgs>),
    /// Check rule files, or explain what they do to an item.
    #[command(subcommand)]
    Rules(intake::cli::rules::RulesCommand),
    /// Run rules and dedupe over archived mail (Maildir or mbox), offline,
    /// and report what each rule would have done.
    Replay(intake::cli::replay::ReplayArgs),
    /// Print the envelope a raw mail (FILE, or stdin) would become, as
    /// JSON, offline: the parse stage only, not scanned.
    Parse(intake::cli::parse::ParseArgs),
    /// Run only the delivery workers (`[[delivery]]`), without listeners.
    Deliver(intake::cli::deliver::DeliverArgs),
    /// The desk side: a reference consumer of the streams.
    #[command(subcommand)]
    Desk(intake::cli::desk::DeskCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Usage errors exit 64 (EX_USAGE), which a mail server treats as
            // permanent; --help and --version are not errors.
            let exit = if err.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            // A mail server's pipe reads an RFC 3463 status first on stdout.
            if exit == Exit::Usage && std::env::args().nth(1).as_deref() == Some("mailgate") {
                println!("5.3.5 intake mailgate: bad usage (see stderr)");
            }
            let _ = err.print();
            return exit.into();
        }
    };
    let exit = match cli.command {
        Command::Serve { config } => {
            intake::budget::set_memory_return(return_memory);
            intake::serve::main(&config)
        }
        Command::Mailgate(args) => intake::cli::mailgate::main(*args),
        Command::Rules(command) => intake::cli::rules::main(command),
        Command::Replay(args) => intake::cli::replay::main(args),
        Command::Parse(args) => intake::cli::parse::main(args),
        Command::Deliver(args) => intake::cli::deliver::main(args),
        Command::Desk(command) => intake::cli::desk::main(command),
    };
    exit.into()
}
