//! Commands beside the daemon: `intake mailgate` (the client a mail
//! server's pipe transport runs), `intake rules check|explain`,
//! `intake replay` (offline, for sysadmins) and `intake desk tail` (the
//! reference desk consumer). Exit codes: 0 ok, 1 the rules are invalid, 64 usage,
//! 66 input missing or unreadable (EX_NOINPUT), 69 Redis unreachable.

pub mod desk;
pub mod mailgate;
pub mod replay;
pub mod rules;

use std::process::ExitCode;

/// The rules are invalid.
pub const EXIT_INVALID: u8 = 1;
/// EX_NOINPUT: the archive or message cannot be read.
pub const EXIT_NOINPUT: u8 = 66;
/// EX_UNAVAILABLE: Redis was asked for and did not answer.
pub const EXIT_UNAVAILABLE: u8 = 69;

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("intake: {message}");
    ExitCode::from(code)
}
