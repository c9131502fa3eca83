//! Sender identity that cannot be dodged cheaply: `Ann+1@Example.com`,
//! `ann+2@example.com` and, at Gmail, `a.n.n@googlemail.com` are one
//! customer, so they share one rate-limit bucket and one dedupe history.

/// Providers that ignore dots in the local part, with the domain they are
/// folded to.
const DOTLESS: &[(&str, &str)] = &[("gmail.com", "gmail.com"), ("googlemail.com", "gmail.com")];

/// The address rules key on: lower case, plus-tag removed, dots removed
/// where the provider ignores them. `None` for text that is not an address.
pub fn address(raw: &str) -> Option<String> {
    let raw = raw.trim().trim_matches(['<', '>']).trim();
    let (local, domain) = raw.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_lowercase();
    let mut local = local.trim().to_lowercase();
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    // Plus addressing: everything from the first `+` is a tag the
    // mailbox owner chose, not a different person.
    if let Some(plus) = local.find('+') {
        if plus > 0 {
            local.truncate(plus);
        }
    }
    let domain = match DOTLESS.iter().find(|(d, _)| *d == domain) {
        Some((_, canonical)) => {
            local.retain(|c| c != '.');
            (*canonical).to_string()
        }
        None => domain,
    };
    Some(format!("{local}@{domain}"))
}

/// The domain of a normalized address.
pub fn domain(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, d)| d)
}

/// Case-insensitive glob: `*` matches any run of characters, `?` one.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, no
    // recursion a hostile input could blow up.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_plus_tags_are_one_sender() {
        assert_eq!(
            address("Ann+Orders@Example.COM").as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(
            address("<ann@example.com>").as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(
            address("ann+x+y@example.com").as_deref(),
            Some("ann@example.com")
        );
    }

    #[test]
    fn gmail_dots_are_ignored_only_at_gmail() {
        assert_eq!(
            address("A.n.N+1@googlemail.com").as_deref(),
            Some("ann@gmail.com")
        );
        assert_eq!(
            address("a.nn@example.com").as_deref(),
            Some("a.nn@example.com")
        );
    }

    #[test]
    fn text_that_is_no_address_is_refused() {
        assert_eq!(address("nobody"), None);
        assert_eq!(address("@example.com"), None);
        assert_eq!(address("ann@"), None);
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("*@shop.example", "Staff@Shop.Example"));
        assert!(glob("*.example.com", "mail.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
    }
}
