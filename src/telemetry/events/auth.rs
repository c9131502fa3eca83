//! Events of sender authentication (src/auth): each check's verdict, and
//! DNS that did not answer.

use std::fmt::Display;

use super::{log_now, Event};

/// One check's verdict for one mail (`dkim` once per signature).
pub struct AuthChecked {
    /// `dkim`, `spf`, `dmarc`, `arc`.
    pub check: &'static str,
    /// `pass`, `fail`, `temperror`, ...
    pub result: &'static str,
    /// `verified` or `trusted-header`.
    pub from: &'static str,
}

impl Event for AuthChecked {
    fn emit(self) {
        metrics::counter!(
            "intake_auth_results_total",
            "check" => self.check,
            "result" => self.result,
            "from" => self.from
        )
        .increment(1);
    }
}

/// A mail whose checks could not finish (DNS down or slow): verdicts
/// `temperror`, the mail goes on, tagged `auth-temperror`.
pub struct AuthTempError<'a> {
    pub id: &'a dyn Display,
    pub checks: &'a str,
}

impl Event for AuthTempError<'_> {
    fn emit(self) {
        if let Some(suppressed) = log_now("auth-temperror") {
            tracing::warn!(id = %self.id, checks = %self.checks, suppressed, "sender authentication incomplete: DNS did not answer (temperror); the mail goes on; check auth.nameservers");
        }
    }
}
