//! `stripped_text` and `stripped_signature`: the new part of a reply, so an
//! agent reads what the customer just wrote, and the customer's signature
//! beside it.
//!
//! A body is read as [`Line`]s, from the text part (a `>` prefix is a quote
//! level) or, when the mail has no text part, from its HTML (see [`html`]:
//! the markup says what is quoted). Then, front to back:
//!
//! 1. History that runs to the end is cut: a dashed separator or forward
//!    head, a quoted header block (`From: / Sent: / To: / Subject:` in the
//!    desk's languages), an attribution (`On ... wrote:`, wrapped over up to
//!    three lines) that no quote follows, or the markup of Outlook, Yahoo
//!    and ProtonMail history. See [`markers`].
//! 2. Quoted lines go, with the attribution above them; the customer's lines
//!    between and after them stay, so interleaved and bottom-posted replies
//!    keep every answer.
//! 3. The signature is split off ([`signature`]).
//!
//! When in doubt it keeps: a kept quote line costs an agent a glance, a
//! dropped customer word costs a ticket. When nothing new is left (a bare
//! forward), the whole text is the reply.

pub mod html;
mod markers;
mod signature;
mod vocabulary;

/// What an agent reads first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The customer's new words.
    pub text: String,
    /// Their signature or their client's sign-off, when there is one.
    pub signature: Option<String>,
}

/// One line of a body, with what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The line without its quote prefix.
    text: String,
    /// Quote level: `>` prefixes, or quote containers in HTML.
    depth: u8,
    mark: Mark,
}

/// What the markup (HTML) or a detector says a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Text,
    /// Part of an attribution (`On ... wrote:`).
    Attribution,
    /// The first line of history that runs to the end.
    History,
    /// Inside a signature block the HTML marked.
    Signature,
}

/// The reply in a plain text body.
pub fn from_text(text: &str) -> Reply {
    extract(text_lines(text), text)
}

/// The reply in an HTML body, for mail without a text part, and the body
/// as readable text (see [`html::to_text`]), which is also the fallback
/// when nothing new is found. The HTML is read once for both.
pub fn from_html(html: &str) -> (String, Reply) {
    let lines = html::lines(html);
    let readable = html::render(&lines);
    let reply = extract(lines, &readable);
    (readable, reply)
}

fn text_lines(text: &str) -> Vec<Line> {
    text.lines()
        .map(|raw| {
            let (depth, rest) = quote_prefix(raw.trim_end_matches('\r'));
            Line {
                text: rest.to_string(),
                depth,
                mark: Mark::Text,
            }
        })
        .collect()
}

/// The quote level of a text line and the line without its prefix. `>>>
/// Urgente <<<` is a decoration, not three levels of quote.
fn quote_prefix(line: &str) -> (u8, &str) {
    let mut depth = 0u8;
    let mut rest = line;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let Some(after) = trimmed.strip_prefix('>') else {
            break;
        };
        depth = depth.saturating_add(1);
        rest = after;
    }
    if depth > 0 && line.trim_end().ends_with('<') {
        return (0, line);
    }
    let rest = if depth > 0 {
        rest.strip_prefix(' ').unwrap_or(rest)
    } else {
        rest
    };
    (depth, rest)
}

fn extract(mut lines: Vec<Line>, whole: &str) -> Reply {
    mark_history(&mut lines);
    let history = lines
        .iter()
        .position(|l| l.mark == Mark::History)
        .unwrap_or(lines.len());
    lines.truncate(history);

    // A quoted block is the sender's history when an attribution or
    // another quoted line shows this is a reply; one `>` line in a mail
    // that quotes nothing else is the customer's.
    let quoted = lines.iter().filter(|l| l.depth > 0).count();
    let attributed = lines.iter().any(|l| l.mark == Mark::Attribution);
    let drop_quotes = quoted >= 2 || attributed;

    let kept: Vec<&Line> = lines
        .iter()
        .filter(|l| l.mark != Mark::Attribution && !(drop_quotes && l.depth > 0))
        .collect();
    let kept = collapse_blank_lines(kept);
    let (body, signature) = match signature::start(&kept) {
        Some(at) => (&kept[..at], Some(&kept[at..])),
        None => (&kept[..], None),
    };
    let text = join(body);
    if text.is_empty() {
        return Reply {
            text: whole.trim().to_string(),
            signature: None,
        };
    }
    Reply {
        text,
        signature: signature.map(join).filter(|s| !s.is_empty()),
    }
}

/// Marks where history starts: the first separator, header block or
/// unquoted-after attribution gets [`Mark::History`]; attributions that a
/// quote follows get [`Mark::Attribution`].
fn mark_history(lines: &mut [Line]) {
    for i in 0..lines.len() {
        if lines[i].mark == Mark::History {
            return;
        }
        if lines[i].depth > 0 {
            continue;
        }
        let text = &lines[i].text;
        if markers::is_separator(text) || markers::header_line(text) {
            lines[i].mark = Mark::History;
            return;
        }
        if markers::header_block_at(lines, i) {
            // Outlook's rule line above its block belongs to the history.
            let start = match previous_non_blank(lines, i) {
                Some(p) if markers::is_rule(&lines[p].text) => p,
                _ => i,
            };
            lines[start].mark = Mark::History;
            return;
        }
        let attribution = if lines[i].mark == Mark::Attribution {
            Some(i)
        } else {
            markers::attribution_ending_at(lines, i)
        };
        if let Some(start) = attribution {
            let quote_follows = lines[i + 1..]
                .iter()
                .find(|l| !l.text.trim().is_empty())
                .is_some_and(|l| l.depth > 0 || l.mark == Mark::Attribution);
            if quote_follows {
                for line in &mut lines[start..=i] {
                    line.mark = Mark::Attribution;
                }
            } else {
                lines[start].mark = Mark::History;
                return;
            }
        }
    }
}

fn previous_non_blank(lines: &[Line], i: usize) -> Option<usize> {
    (0..i).rev().find(|&p| !lines[p].text.trim().is_empty())
}

/// Blank lines trimmed at both ends and runs of them made one, as they are
/// left where quotes were removed.
fn collapse_blank_lines(lines: Vec<&Line>) -> Vec<&Line> {
    let mut out: Vec<&Line> = Vec::with_capacity(lines.len());
    for line in lines {
        let blank = line.text.trim().is_empty();
        if blank && out.last().is_none_or(|l| l.text.trim().is_empty()) {
            continue;
        }
        out.push(line);
    }
    while out.last().is_some_and(|l| l.text.trim().is_empty()) {
        out.pop();
    }
    out
}

fn join(lines: &[&Line]) -> String {
    let mut out = String::new();
    for line in lines {
        // A quote line kept (the customer's own `>`) keeps its prefix.
        for _ in 0..line.depth {
            out.push_str("> ");
        }
        out.push_str(line.text.trim_end());
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(text: &str) -> String {
        from_text(text).text
    }

    #[test]
    fn quoted_history_and_signature_are_removed() {
        let text = "Still nothing arrived.\n\nAnn\n-- \nAnn Example, Berlin\n\nOn Mon, 23 Nov 2026, Shop <s@shop.test> wrote:\n> Your parcel is on its way.";
        let reply = from_text(text);
        assert_eq!(reply.text, "Still nothing arrived.\n\nAnn");
        assert_eq!(reply.signature.as_deref(), Some("--\nAnn Example, Berlin"));
    }

    #[test]
    fn interleaved_answers_are_kept() {
        let text = "> Which size?\nM please\n> Which colour?\nblue";
        assert_eq!(strip(text), "M please\nblue");
    }

    #[test]
    fn text_that_is_only_a_quote_is_kept_whole() {
        assert_eq!(strip("> forwarded"), "> forwarded");
    }

    #[test]
    fn a_bottom_posted_reply_keeps_the_answer_and_the_sign_off() {
        let text = "El mar, 1 dic 2026 a las 10:15, Tienda <t@shop.test> escribió:\n> ¿Qué talla?\n> ¿Y el color?\n\nLa M, en azul.\n\nGracias,\nAna";
        assert_eq!(strip(text), "La M, en azul.\n\nGracias,\nAna");
    }

    #[test]
    fn an_outlook_header_block_cuts_in_spanish() {
        let text = "Adjunto la factura.\r\n\r\n________________________________\r\nDe: Tienda <t@shop.test>\r\nEnviado: martes, 1 de diciembre de 2026 10:15\r\nPara: Ana <ana@correo.example>\r\nAsunto: Pedido 1234\r\n\r\nHola Ana, ...";
        assert_eq!(strip(text), "Adjunto la factura.");
    }

    #[test]
    fn a_forward_with_a_question_keeps_the_question() {
        let text = "¿Esto es vuestro?\n\n---------- Forwarded message ---------\nDe: Banco <b@bank.example>\nDate: mar, 1 dic 2026\nSubject: Cargo\n\nCargo de 20 €";
        assert_eq!(strip(text), "¿Esto es vuestro?");
        let bare =
            "---------- Forwarded message ---------\nDe: Banco <b@bank.example>\n\nCargo de 20 €";
        assert_eq!(strip(bare), bare);
    }

    #[test]
    fn the_customers_arrows_and_own_sentences_stay() {
        let text = "Ruta: Inicio >>> Pedidos >>> Devolver\n>>> IMPORTANTE <<<\nOn Monday I wrote to you:\nthe parcel is late.";
        assert_eq!(strip(text), text);
    }

    #[test]
    fn a_mobile_sign_off_is_the_signature() {
        let reply = from_text("Ya lo recibí, gracias.\n\nEnviado desde mi iPhone\n\n> El 1 dic 2026, a las 10:15, Tienda <t@shop.test> escribió:\n> Hola");
        assert_eq!(reply.text, "Ya lo recibí, gracias.");
        assert_eq!(reply.signature.as_deref(), Some("Enviado desde mi iPhone"));
    }

    #[test]
    fn many_separator_and_sign_off_lines_cost_a_bounded_look_ahead_each() {
        // Quadratic look-aheads would not finish here; linear ones do.
        let hostile = "--\nSent from my iPhone\n> q\n\n".repeat(50_000);
        let reply = from_text(&hostile);
        assert!(!reply.text.is_empty());
        let html = "<blockquote type=cite><div class=gmail_quote>x".repeat(50_000);
        assert!(!html::to_text(&html).is_empty());
    }

    #[test]
    fn an_html_only_gmail_reply() {
        let html = r#"<div dir="ltr">No me llegó.<div><br></div><div>Ana</div></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">El mar, 1 dic 2026 a las 10:15, Tienda &lt;t@shop.test&gt; escribió:<br></div><blockquote class="gmail_quote">Enviado.</blockquote></div>"#;
        let (_, reply) = from_html(html);
        assert_eq!(reply.text, "No me llegó.\n\nAna");
    }
}
