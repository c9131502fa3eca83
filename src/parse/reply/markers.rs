//! Where the history starts, read from the text: attribution lines (wrapped
//! over up to three lines), quoted header blocks, dashed separators and
//! forward heads, in the languages of [`super::vocabulary`].
//!
//! Each detector errs towards "not history": a customer line taken for an
//! attribution is a lost word, a missed attribution only a kept quote line.

use super::vocabulary::{Field, FORWARD_HEADS, LABELS, OPENERS, SEPARATOR_WORDS, WEEKDAYS, WROTE};
use super::Line;

/// The longest attribution, joined: Gmail's with two long names and
/// addresses stays well inside; a paragraph does not.
const MAX_ATTRIBUTION_CHARS: usize = 320;

/// How many lines an attribution may be wrapped over: Gmail wraps a long
/// department name and address over four.
const MAX_ATTRIBUTION_LINES: usize = 4;

/// The lines `start..=end` when they are an attribution (`On ... wrote:`),
/// as `start`. `end` is the line that ends with the colon.
pub(super) fn attribution_ending_at(lines: &[Line], end: usize) -> Option<usize> {
    let last = &lines[end];
    if last.depth > 0 || !last.text.trim_end().ends_with(':') {
        return None;
    }
    let mut first_loose = None;
    let mut joined = String::new();
    for size in 1..=MAX_ATTRIBUTION_LINES.min(end + 1) {
        let start = end + 1 - size;
        let line = &lines[start];
        if line.depth > 0 || line.text.trim().is_empty() || line.mark != super::Mark::Text {
            break;
        }
        // Joined front to back: the line above goes first.
        joined = if size == 1 {
            line.text.trim().to_string()
        } else {
            format!("{} {}", line.text.trim(), joined)
        };
        if joined.chars().count() > MAX_ATTRIBUTION_CHARS {
            break;
        }
        match attribution_kind(&joined) {
            Some(Kind::Opened) => return Some(start),
            Some(Kind::Loose) if first_loose.is_none() => first_loose = Some(start),
            _ => {}
        }
    }
    first_loose
}

enum Kind {
    /// Starts the way clients start one (`On`, `El`, a weekday, a date).
    Opened,
    /// Has the parts (an address and a date, a "wrote") but not the
    /// opening: taken only when no wrapped reading opens properly.
    Loose,
}

fn attribution_kind(text: &str) -> Option<Kind> {
    let lower = strip_emphasis(text).to_lowercase();
    let body = lower.trim_end().strip_suffix(':')?.trim_end();
    let has_digit = body.chars().any(|c| c.is_ascii_digit());
    let has_address = contains_address(body);
    let verb = WROTE.iter().any(|verb| has_word(body, verb));
    // `... Ana <ana@x.es>:` (Gmail in Russian, Yandex, mail.ru) has no verb;
    // the address in angle brackets right before the colon stands for it,
    // as does mutt's `* Ann <a@x> [2026-11-17 17:42 +0100]:`.
    let addressed = (body.ends_with('>') || body.ends_with(']')) && has_address;
    let parts = (verb && (has_digit || has_address)) || (addressed && has_digit);
    if !parts {
        return None;
    }
    if opens_like_attribution(body) {
        Some(Kind::Opened)
    } else if has_address {
        Some(Kind::Loose)
    } else {
        None
    }
}

fn opens_like_attribution(lower: &str) -> bool {
    if lower.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    let first = lower
        .split(|c: char| c.is_whitespace() || c == ',' || c == '.')
        .next()
        .unwrap_or_default();
    OPENERS.contains(&first) || WEEKDAYS.contains(&first)
}

/// A line that on its own starts forwarded or original history: a dashed
/// separator with a history word, or a forward head.
pub(super) fn is_separator(text: &str) -> bool {
    let line = strip_emphasis(text.trim());
    // Every body line comes here: only short or dashed ones are worth
    // lower-casing.
    if line.len() > 120 && !line.starts_with("--") {
        return false;
    }
    let lower = line.to_lowercase();
    let head = lower.trim_end_matches([':', ' ', '\u{a0}']);
    if FORWARD_HEADS.contains(&head) {
        return true;
    }
    let dashed = line.starts_with("--") && line.trim_end().ends_with("--");
    if !dashed {
        return false;
    }
    let inner = lower.trim_matches(|c: char| c == '-' || c.is_whitespace());
    !inner.is_empty()
        && inner.chars().count() <= 60
        && inner
            .split(|c: char| !c.is_alphanumeric())
            .any(|word| SEPARATOR_WORDS.contains(&word))
}

/// A line of underscores or dashes only, which Outlook writes above its
/// header block; history only when a header block follows.
pub(super) fn is_rule(text: &str) -> bool {
    let t = text.trim();
    t.chars().count() >= 10 && t.chars().all(|c| c == '_' || c == '-')
}

/// Whether `lines[start..]` begins with a quoted header block: at least
/// three different fields, one of them the sender, on consecutive lines (a
/// wrapped recipient list may continue over two lines).
pub(super) fn header_block_at(lines: &[Line], start: usize) -> bool {
    let Some(first) = header_field(&lines[start].text) else {
        return false;
    };
    let mut fields = vec![first];
    let mut continuation = 0;
    for line in lines.iter().skip(start + 1).take(12) {
        if line.text.trim().is_empty() || line.depth != lines[start].depth {
            break;
        }
        match header_field(&line.text) {
            Some(field) => {
                continuation = 0;
                if !fields.contains(&field) {
                    fields.push(field);
                }
            }
            None => {
                continuation += 1;
                if continuation > 2 {
                    break;
                }
            }
        }
    }
    fields.contains(&Field::From) && fields.len() >= 3
}

/// One line holding the whole block (`De: Ana <a@x> Enviado: martes ...
/// Para: ... Asunto: ...`), as some clients write it when their HTML
/// loses its line breaks.
pub(super) fn header_line(text: &str) -> bool {
    if header_field(text) != Some(Field::From) {
        return false;
    }
    let lower = text.to_lowercase();
    let others = [Field::Sent, Field::To, Field::Subject]
        .iter()
        .filter(|field| {
            LABELS.iter().any(|(label, f)| {
                f == *field
                    && label.chars().count() > 2
                    && (lower.contains(&format!(" {label}: "))
                        || lower.contains(&format!(" {label} : ")))
            })
        })
        .count();
    others >= 2
}

/// The field a line labels (`From:`, `*De:*`, `À :`), if it is one.
fn header_field(text: &str) -> Option<Field> {
    let line = strip_emphasis(text.trim());
    let (label, _) = line.split_once(':')?;
    let label = label
        .trim_end_matches(['*', ' ', '\u{a0}', '\u{202f}'])
        .to_lowercase();
    if label.chars().count() > 14 {
        return None;
    }
    LABELS
        .iter()
        .find(|(name, _)| *name == label)
        .map(|(_, field)| *field)
}

/// Markdown-ish emphasis some clients put around labels (`*From:*`,
/// `**De:**`), removed at the front.
fn strip_emphasis(text: &str) -> &str {
    text.trim_start_matches(['*', '_', ' ', '\u{a0}'])
}

/// `word` as a whole word of `text` (both lower case).
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Something shaped like a mail address: `x@y.z`.
fn contains_address(text: &str) -> bool {
    text.match_indices('@').any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let domain: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        before.is_some_and(|c| c.is_alphanumeric() || "._-+".contains(c))
            && domain.contains('.')
            && !domain.ends_with('.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::reply::{Line, Mark};

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .map(|l| Line {
                text: l.to_string(),
                depth: 0,
                mark: Mark::Text,
            })
            .collect()
    }

    #[test]
    fn attributions_in_the_desk_languages_are_found() {
        for line in [
            "On Tue, Dec 1, 2026 at 10:15 AM Ann Example <ann@example.com> wrote:",
            "El mar, 1 dic 2026 a las 10:15, Ana Pérez (<ana@correo.example>) escribió:",
            "El 03/12/26 a las 10:15, Ana escribió:",
            "Em ter., 1 de dez. de 2026 às 10:15, Ana <ana@x.example> escreveu:",
            "Le mar. 1 déc. 2026 à 10:15, Anne <anne@x.example> a écrit :",
            "Am Di., 1. Dez. 2026 um 10:15 Uhr schrieb Anna <anna@x.example>:",
            "Il giorno mar 1 dic 2026 alle ore 10:15 Anna <anna@x.example> ha scritto:",
            "Op di 1 dec 2026 om 10:15 schreef Anna <anna@x.example>:",
            "wt., 1 gru 2026 o 10:15 Anna <anna@x.example> napisał(a):",
            "вт, 1 дек. 2026 г. в 10:15, Анна <anna@x.example>:",
            "01.12.2026, 10:15, \"Анна\" <anna@ya.example>:",
            "Вторник, 1 декабря 2026, 10:15 +03:00 от Анна <anna@mail.example>:",
            "En martes, 1 de diciembre de 2026, 10:15:03 CET, Ana <ana@yahoo.example> escribió:",
        ] {
            let l = lines(line);
            assert_eq!(attribution_ending_at(&l, 0), Some(0), "{line}");
        }
    }

    #[test]
    fn a_wrapped_attribution_is_taken_whole() {
        let l = lines("Gracias.\nEl mar, 1 dic 2026 a las 10:15, Ana Pérez (<\nana@correo.example>) escribió:");
        assert_eq!(attribution_ending_at(&l, 2), Some(1));
        let l = lines("On Tue, Dec 1, 2026 at 10:15 AM Ann Example\n<ann@example.com> wrote:");
        assert_eq!(attribution_ending_at(&l, 1), Some(0));
    }

    #[test]
    fn the_customers_own_sentences_are_not_attributions() {
        for line in [
            "On Monday I wrote to you:",
            "Ana escribió:",
            "Le escribí el 3/12 a ventas@shop.test y me contestaron:",
            "Estos son los datos:",
        ] {
            assert_eq!(attribution_ending_at(&lines(line), 0), None, "{line}");
        }
    }

    #[test]
    fn separators_and_header_blocks() {
        assert!(is_separator("-----Original Message-----"));
        assert!(is_separator("-----Mensaje original-----"));
        assert!(is_separator("---------- Forwarded message ---------"));
        assert!(is_separator("-------- Пересылаемое сообщение --------"));
        assert!(is_separator("Inicio del mensaje reenviado:"));
        assert!(!is_separator("-- "));
        assert!(!is_separator("----- ¡oferta! -----"));
        let block = lines("De: Ana <ana@x.example>\nEnviado: martes, 1 de diciembre de 2026 10:15\nPara: soporte@shop.test\nAsunto: RE: Pedido 1234");
        assert!(header_block_at(&block, 0));
        let block = lines("Gesendet: Dienstag, 01. Dezember 2026 um 10:15 Uhr\nVon: \"Anna\" <anna@web.example>\nAn: service@shop.test\nBetreff: Bestellung");
        assert!(header_block_at(&block, 0));
        assert!(!header_block_at(
            &lines("De: mi parte, gracias\nPara: mañana"),
            0
        ));
        assert!(header_line(
            "From: Ann <a@x.example> Sent: Tuesday, December 1, 2026 To: shop Subject: RE: order"
        ));
    }
}
