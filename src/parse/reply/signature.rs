//! Where the customer's signature starts in what is left of a reply: the
//! RFC 3676 `-- ` line, a client's sign-off (`Enviado desde mi iPhone`), a
//! signature block the HTML marked, or a name followed by title and contact
//! lines after a closing (`Un saludo,` / `Ana Pérez` / `Jefa de compras` /
//! `Tel. 600 000 000`). The closing stays in `stripped_text`; a name alone
//! under it stays too (it is how the customer signed off).

use super::vocabulary::{CLOSINGS, SENT_VERBS, SIGN_OFFS, SIGN_OFF_APPS};
use super::{Line, Mark};

/// A `-- ` block longer than this is not a signature but text that
/// happens to hold a `--` line.
const MAX_SIGNATURE_LINES: usize = 20;

/// A sign-off is the end of the text: at most this many lines after it
/// (a phone number, a disclaimer line).
const MAX_LINES_AFTER_SIGN_OFF: usize = 4;

/// A title or contact line of a signature block is short.
const MAX_BLOCK_LINE_WORDS: usize = 9;

/// The index of the first signature line in `lines`, if there is one.
pub(super) fn start(lines: &[&Line]) -> Option<usize> {
    // Counted only up to the largest limit: a body of many `--` lines
    // costs each of them a bounded look ahead, not the rest of the body.
    let non_blank_after = |i: usize| {
        lines[i + 1..]
            .iter()
            .filter(|l| !l.text.trim().is_empty())
            .take(MAX_SIGNATURE_LINES + 1)
            .count()
    };
    if let Some(i) = lines.iter().position(|l| l.mark == Mark::Signature) {
        return Some(i);
    }
    for (i, line) in lines.iter().enumerate() {
        let text = line.text.trim_end();
        if (text == "--" || text == "-- " || text == "—")
            && non_blank_after(i) <= MAX_SIGNATURE_LINES
        {
            return Some(i);
        }
        if is_sign_off(text) && non_blank_after(i) <= MAX_LINES_AFTER_SIGN_OFF {
            return Some(i);
        }
    }
    name_and_title_block(lines)
}

/// A client's automatic sign-off line.
pub(super) fn is_sign_off(text: &str) -> bool {
    // Sign-offs are short, and start with one of a few words: other lines
    // are not lower-cased to find out.
    if text.len() > 160 || !starts_like_sign_off(text) {
        return false;
    }
    let lower = text.trim().to_lowercase();
    let words = lower.split_whitespace().count();
    if words > 12 || lower.ends_with('?') {
        return false;
    }
    if words <= 9
        && SIGN_OFFS
            .iter()
            .any(|s| lower.starts_with(s) || lower == s.trim_end())
    {
        return true;
    }
    let first = lower.split_whitespace().next().unwrap_or_default();
    SENT_VERBS.contains(&first) && SIGN_OFF_APPS.iter().any(|app| lower.contains(app))
}

/// Whether the first word of `text` is the first word of a sign-off.
fn starts_like_sign_off(text: &str) -> bool {
    let Some(first) = text.split_whitespace().next() else {
        return false;
    };
    let first = first.to_lowercase();
    SENT_VERBS.contains(&first.as_str())
        || SIGN_OFFS
            .iter()
            .any(|s| s.split_whitespace().next() == Some(first.as_str()))
}

/// After the last closing line near the end: a name with title or contact
/// lines under it is the signature, name included; a name alone under the
/// closing (`Gracias,` / `Ana`) is the customer's sign-off and stays.
fn name_and_title_block(lines: &[&Line]) -> Option<usize> {
    let last = lines.iter().rposition(|l| !l.text.trim().is_empty())?;
    let closing = (last.saturating_sub(8)..=last)
        .rev()
        .find(|&i| is_closing(&lines[i].text))?;
    let name = (closing + 1..=last).find(|&i| !lines[i].text.trim().is_empty())?;
    if !is_name(&lines[name].text) || name == last {
        return None;
    }
    let rest = &lines[name + 1..=last];
    let short = rest.iter().all(|l| {
        l.text.split_whitespace().count() <= MAX_BLOCK_LINE_WORDS && !ends_sentence(&l.text)
    });
    let contact = rest.iter().any(|l| is_contact(&l.text));
    (short && (contact || rest.len() <= 3)).then_some(name)
}

fn is_closing(text: &str) -> bool {
    let lower = text.trim().to_lowercase();
    let bare = lower.trim_end_matches([',', '.', '!', ' ']);
    CLOSINGS.contains(&bare)
}

/// A person's name: a few words, no digits, no sentence punctuation.
fn is_name(text: &str) -> bool {
    let text = text.trim();
    let words = text.split_whitespace().count();
    (1..=4).contains(&words)
        && !text
            .chars()
            .any(|c| c.is_ascii_digit() || "@:?!;".contains(c))
        && !ends_sentence(text)
}

fn ends_sentence(text: &str) -> bool {
    let t = text.trim_end();
    t.ends_with('.')
        && !t.ends_with("S.L.")
        && !t.ends_with("S.A.")
        && t.split_whitespace().count() > 3
        || t.ends_with('?')
        || t.ends_with('!')
}

/// A phone number, an address, a web site or a `|`-separated line.
fn is_contact(text: &str) -> bool {
    let lower = text.to_lowercase();
    let digits = lower.chars().filter(char::is_ascii_digit).count();
    digits >= 6
        || lower.contains('@')
        || lower.contains("www.")
        || lower.contains("http")
        || lower.contains('|')
        || ["tel", "tlf", "móvil", "movil", "phone", "fax", "mob"]
            .iter()
            .any(|w| lower.starts_with(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Option<usize> {
        let lines: Vec<Line> = text
            .lines()
            .map(|l| Line {
                text: l.to_string(),
                depth: 0,
                mark: Mark::Text,
            })
            .collect();
        start(&lines.iter().collect::<Vec<_>>())
    }

    #[test]
    fn sign_offs_and_dash_blocks() {
        assert_eq!(at("Hola\n\nEnviado desde mi iPhone"), Some(2));
        assert_eq!(at("Hallo\nVon meinem iPhone gesendet"), Some(1));
        assert_eq!(at("Hi\n-- \nAnn\nShop"), Some(1));
        assert_eq!(at("Get Outlook for Android"), Some(0));
    }

    #[test]
    fn a_name_and_title_after_a_closing() {
        let text = "Necesito la factura.\n\nUn saludo,\nAna Pérez\nJefa de compras | Muebles Sol S.L.\nTel. +34 600 000 000";
        assert_eq!(at(text), Some(3));
    }

    #[test]
    fn a_sentence_that_starts_like_a_sign_off_stays() {
        assert_eq!(
            at("Enviado desde mi casa el paquete, ¿lo recibieron?\nGracias"),
            None
        );
        assert_eq!(at("Gracias,\nAna"), None);
    }
}
