//! How a config section checks what serde cannot. Every section has the
//! same signature, so `config.rs` calls them all alike and reports every
//! problem of a file at once.

/// A config section that checks itself.
pub trait Validate {
    /// Pushes one line per problem onto `problems`, each naming its key
    /// under `at`, the section's place in the file (`scan`, `lmtp`,
    /// `imap[0] (support)`, `form[1] (contact)`), so an operator knows
    /// which line to fix.
    fn validate(&self, at: &str, problems: &mut Vec<String>);
}

/// Every problem of one section, for a check of that section alone.
pub fn problems_of(section: &impl Validate, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    section.validate(at, &mut problems);
    problems
}
