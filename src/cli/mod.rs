//! Commands beside the daemon: `intake mailgate` (the client a mail
//! server's pipe transport runs), `intake rules check|explain`,
//! `intake replay` and `intake parse` (offline, for sysadmins), `intake
//! deliver` (the delivery workers alone) and
//! `intake desk tail` (the
//! reference desk consumer). Every command ends in an [`exit::Exit`], the
//! one set of exit codes (and of what a mail server does with each).

pub mod deliver;
pub mod desk;
pub mod exit;
pub mod mailgate;
pub mod parse;
pub mod replay;
pub mod rules;

use exit::Exit;

/// Says why on stderr and ends the command with `exit`.
fn fail(exit: Exit, message: impl std::fmt::Display) -> Exit {
    eprintln!("intake: {message}");
    exit
}
