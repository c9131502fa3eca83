//! The exit codes of every `intake` command, defined here and nowhere else.
//!
//! A command returns an [`Exit`]; `main.rs` turns it into the process's
//! exit code. The numbers are those of sysexits.h (BSD's, which mail servers
//! and init systems know), plus 0 and 1 from C's `EXIT_SUCCESS` and
//! `EXIT_FAILURE`. Only the codes a command actually returns are listed.
//!
//! Mail servers read them from `intake mailgate` (and from a usage error
//! of it): Postfix's and Exim's pipe transports keep the mail and retry
//! later on 75 (EX_TEMPFAIL), and return the mail to its sender on any other
//! non-zero code. So mailgate exits 75 for everything a retry could fix,
//! its own misconfiguration included, and a permanent code only for a
//! verdict that will not change. The systemd unit
//! (deploy/systemd/intake.service) restarts `intake serve` on a failure but
//! not on 78: a bad config stays bad until someone edits it.
//!
//! | code | name | returned by | when |
//! | --- | --- | --- | --- |
//! | 0 | `Ok` | every command | done; for mailgate: stored by the gateway |
//! | 1 | `Failure` | `rules`, `replay`, `serve`, `parse`, `deliver` | the rules are invalid; the daemon could not start its runtime or stopped on an error |
//! | 64 | `Usage` | every command (bad arguments), `desk tail` | the command line cannot work |
//! | 65 | `DataErr` | `mailgate`, `parse` | the message was rejected for good (the mail server bounces it); for `parse`: it is empty |
//! | 66 | `NoInput` | `rules explain`, `replay`, `parse` | the archive or message cannot be read |
//! | 69 | `Unavailable` | `rules explain --redis`, `desk tail` | Redis was asked for and did not answer |
//! | 74 | `IoErr` | `desk tail` | an item could not be written out, so it was not acknowledged |
//! | 75 | `TempFail` | `mailgate` | no verdict yet: the mail server keeps the mail and retries |
//! | 77 | `NoPerm` | `mailgate` | refused by policy, blocked sender or virus (the mail server bounces it) |
//! | 78 | `Config` | `serve`, `deliver`, `desk tail`, `parse --config` | the config file does not load, or its rules do not; for `deliver`: it has no `[[delivery]]` |

use std::process::ExitCode;

/// How a command ends; the discriminant is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done. For mailgate: the gateway answered 2xx, the message is stored.
    Ok = 0,
    /// EXIT_FAILURE: the rules are invalid (`rules`, `replay`), or the
    /// daemon could not start or stopped on an error (`serve`).
    Failure = 1,
    /// EX_USAGE: bad arguments, or arguments that contradict each other. A
    /// mail server treats it as permanent: a command line that cannot work
    /// will not start working on a retry.
    Usage = 64,
    /// EX_DATAERR: the gateway rejected the message for good (malformed,
    /// too big); the mail server returns it to its sender. `parse`: the
    /// message is empty.
    DataErr = 65,
    /// EX_NOINPUT: the archive or message to read is missing or unreadable.
    NoInput = 66,
    /// EX_UNAVAILABLE: Redis was asked for and did not answer.
    Unavailable = 69,
    /// EX_IOERR: the output could not be written; nothing was acknowledged.
    IoErr = 74,
    /// EX_TEMPFAIL: no verdict could be had yet (gateway down, timeout,
    /// 5xx, 429, our own misconfiguration); the mail server keeps the mail
    /// and retries later.
    TempFail = 75,
    /// EX_NOPERM: refused by policy (blocked sender, virus); the mail
    /// server returns the mail to its sender.
    NoPerm = 77,
    /// EX_CONFIG: the config file, or the rules it names, do not load.
    Config = 78,
}

impl Exit {
    /// The numeric exit code.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_sysexits_numbers() {
        for (exit, code) in [
            (Exit::Ok, 0),
            (Exit::Failure, 1),
            (Exit::Usage, 64),
            (Exit::DataErr, 65),
            (Exit::NoInput, 66),
            (Exit::Unavailable, 69),
            (Exit::IoErr, 74),
            (Exit::TempFail, 75),
            (Exit::NoPerm, 77),
            (Exit::Config, 78),
        ] {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }
}
