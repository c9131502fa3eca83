//! Which ticket a mail answers, from what the mail itself says: a
//! Message-ID in its `In-Reply-To` / `References` that this delivery
//! delivered (looked up in Redis by the caller), a Message-ID RT made for
//! its own mail about a ticket, or RT's subject tag `[<rtname> #N]`. Any of
//! these can be written by anyone, as with RT's own mail gateway; the
//! caller checks that the ticket exists.

/// The Message-IDs a reply names, the one it answers first.
pub fn named_ids<'a>(in_reply_to: &'a [String], references: &'a [String]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = Vec::new();
    for id in in_reply_to.iter().chain(references.iter().rev()) {
        let id = id.trim().trim_matches(['<', '>']);
        if !id.is_empty() && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The ticket of a Message-ID RT made: `rt-<version>-<pid>-<time>-<random>.
/// <ticket>-<scrip>-<sent>@<organization>` (RT 4 and 5). Ticket 0 is
/// mail about no ticket.
pub fn ticket_of_rt_message_id(id: &str) -> Option<u64> {
    let (local, _organization) = id.rsplit_once('@')?;
    let rest = local.strip_prefix("rt-")?;
    let (head, tail) = rest.rsplit_once('.')?;
    // head: <version>-<pid>-<time>-<random>; the version has dots itself,
    // so only its dash-separated numbers after it are checked.
    let numbers: Vec<&str> = head.rsplitn(4, '-').collect();
    if numbers.len() != 4 || !numbers[..3].iter().all(|n| is_number(n)) {
        return None;
    }
    let mut parts = tail.split('-');
    let ticket = parts.next()?;
    let (scrip, sent) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_number(ticket) || !is_number(scrip) || !is_number(sent) {
        return None;
    }
    ticket.parse().ok().filter(|&n| n > 0)
}

/// The ticket named by RT's subject tag `[<rtname> #N]`, anywhere in the
/// subject (`Re: [shop #12] Where is my order?`).
pub fn ticket_of_subject(subject: &str, rtname: &str) -> Option<u64> {
    let open = format!("[{rtname} #");
    let mut rest = subject;
    while let Some(at) = find_ignoring_case(rest, &open) {
        let after = &rest[at + open.len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && after[digits.len()..].starts_with(']') {
            if let Ok(n) = digits.parse::<u64>() {
                if n > 0 {
                    return Some(n);
                }
            }
        }
        rest = &rest[at + open.len()..];
    }
    None
}

fn find_ignoring_case(haystack: &str, needle: &str) -> Option<usize> {
    let lower = haystack.to_ascii_lowercase();
    lower.find(&needle.to_ascii_lowercase())
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_subject_tag_names_the_ticket_wherever_it_stands() {
        assert_eq!(
            ticket_of_subject("Re: [intake-dev #12] Where is my order?", "intake-dev"),
            Some(12)
        );
        assert_eq!(
            ticket_of_subject("RE: AW: [INTAKE-DEV #7]", "intake-dev"),
            Some(7)
        );
        // Another system's tag, a tag without a number, a number without
        // its bracket: none is a ticket.
        assert_eq!(
            ticket_of_subject("Re: [Order #123] late", "intake-dev"),
            None
        );
        assert_eq!(ticket_of_subject("[intake-dev #] x", "intake-dev"), None);
        assert_eq!(ticket_of_subject("[intake-dev #12 x", "intake-dev"), None);
        assert_eq!(ticket_of_subject("[intake-dev #0]", "intake-dev"), None);
        assert_eq!(
            ticket_of_subject("[intake-dev #x] [intake-dev #9]", "intake-dev"),
            Some(9)
        );
    }

    #[test]
    fn rt_own_message_ids_name_their_ticket() {
        assert_eq!(
            ticket_of_rt_message_id("rt-5.0.3-31415-1764672000-1733.42-3-0@shop.test"),
            Some(42)
        );
        assert_eq!(
            ticket_of_rt_message_id("rt-4.4.4-1-2-3.7-0-0@example.com"),
            Some(7)
        );
        assert_eq!(ticket_of_rt_message_id("rt-5.0.3-1-2-3.0-0-0@x"), None);
        assert_eq!(
            ticket_of_rt_message_id("CAF=abc.42-3-0@mail.gmail.com"),
            None
        );
        assert_eq!(ticket_of_rt_message_id("rt-5.0.3-x-2-3.42-3-0@x"), None);
    }

    #[test]
    fn rt_reply_names_its_parent_first_then_the_newest_reference() {
        let in_reply_to = vec!["<c@x>".to_string()];
        let references = vec!["a@x".to_string(), "b@x".to_string(), "c@x".to_string()];
        assert_eq!(
            named_ids(&in_reply_to, &references),
            vec!["c@x", "b@x", "a@x"]
        );
    }
}
