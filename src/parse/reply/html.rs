//! HTML bodies as lines of text, with what their markup says about each
//! line: inside a quote (`blockquote type="cite"`, Gmail's quote), an
//! attribution (`gmail_attr`, `moz-cite-prefix`), the start of history that
//! runs to the end (Outlook's `divRplyFwdMsg` and separator border,
//! `yahoo_quoted`, ProtonMail's quote), or a signature block.
//!
//! A small tokenizer, not a DOM: mail HTML is read once, front to back, in
//! linear time and bounded memory whatever its nesting; entities are decoded
//! by mail-parser's own table.

use super::{Line, Mark};

/// Open elements tracked; deeper nesting is read as text of the element
/// at this depth (a hostile mail cannot grow the stack without bound).
const MAX_OPEN: usize = 256;

/// What an open element does to the lines inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    Quote,
    Attribution,
    Signature,
    /// Text that is never shown (`<style>`, `<script>`, `<head>`).
    Hidden,
}

struct Open {
    name: String,
    role: Role,
}

/// The lines of `html` with their quote depth and marks.
pub(super) fn lines(html: &str) -> Vec<Line> {
    let mut reader = Reader::default();
    let bytes = html.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            if html[i..].starts_with("<!--") {
                i = html[i + 4..]
                    .find("-->")
                    .map_or(bytes.len(), |end| i + 4 + end + 3);
                continue;
            }
            let Some(end) = tag_end(bytes, i + 1) else {
                reader.text(&html[i..]);
                break;
            };
            reader.tag(&html[i + 1..end]);
            i = end + 1;
        } else {
            let end = html[i..].find('<').map_or(bytes.len(), |n| i + n);
            reader.text(&html[i..end]);
            i = end;
        }
    }
    reader.finish()
}

/// `html` as readable text: one paragraph per line, quoted lines with `> `
/// per level, as a mail client shows a reply converted to plain text.
pub fn to_text(html: &str) -> String {
    render(&lines(html))
}

/// Read lines as text: quote prefixes, runs of blank lines made one, none
/// at either end.
pub(super) fn render(lines: &[Line]) -> String {
    let last = lines.iter().rposition(|l| !l.text.is_empty());
    let mut out = String::new();
    let mut after_blank = true;
    for line in &lines[..last.map_or(0, |i| i + 1)] {
        let blank = line.text.is_empty();
        if blank && after_blank {
            continue;
        }
        after_blank = blank;
        for _ in 0..line.depth {
            out.push_str("> ");
        }
        out.push_str(&line.text);
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// The index of the `>` that closes the tag starting after `<` at `from`,
/// quotes in attribute values respected.
fn tag_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut quote = None;
    for (offset, &b) in bytes[from..].iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(from + offset),
            _ => {}
        }
    }
    None
}

#[derive(Default)]
struct Reader {
    lines: Vec<Line>,
    /// The line being read.
    current: String,
    open: Vec<Open>,
    /// A history container started: every line from here on is history.
    history_from: Option<usize>,
    /// Whitespace was seen since the last word.
    pending_space: bool,
}

impl Reader {
    fn depth(&self) -> u8 {
        let quotes = self.open.iter().filter(|o| o.role == Role::Quote).count();
        u8::try_from(quotes).unwrap_or(u8::MAX)
    }

    fn mark(&self) -> Mark {
        match self
            .open
            .iter()
            .rev()
            .find(|o| matches!(o.role, Role::Attribution | Role::Signature))
        {
            Some(Open {
                role: Role::Attribution,
                ..
            }) => Mark::Attribution,
            Some(_) => Mark::Signature,
            None => Mark::Text,
        }
    }

    fn hidden(&self) -> bool {
        self.open.iter().any(|o| o.role == Role::Hidden)
    }

    fn text(&mut self, raw: &str) {
        if self.hidden() {
            return;
        }
        for (n, word) in raw.split(|c: char| c.is_ascii_whitespace()).enumerate() {
            if n > 0 {
                self.pending_space = true;
            }
            if word.is_empty() {
                continue;
            }
            if self.pending_space && !self.current.is_empty() {
                self.current.push(' ');
            }
            self.pending_space = false;
            decode_entities(word, &mut self.current);
        }
    }

    /// Ends the current line; `force` ends it even when empty (`<br>`).
    fn break_line(&mut self, force: bool) {
        self.pending_space = false;
        if self.current.is_empty() && !force {
            return;
        }
        let text = std::mem::take(&mut self.current).replace(['\u{a0}', '\u{202f}'], " ");
        let text = text.trim().to_string();
        let mark = if self.history_from == Some(self.lines.len()) {
            Mark::History
        } else {
            self.mark()
        };
        self.lines.push(Line {
            text,
            depth: self.depth(),
            mark,
        });
    }

    fn tag(&mut self, inside: &str) {
        let closing = inside.starts_with('/');
        let inside = inside.trim_start_matches('/');
        let name_end = inside
            .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
            .unwrap_or(inside.len());
        let name = inside[..name_end].to_ascii_lowercase();
        if name.is_empty() || name.starts_with('!') || name.starts_with('?') {
            return;
        }
        let attributes = &inside[name_end..];
        let block = is_block(&name);
        if block || name == "br" {
            self.break_line(name == "br");
        } else if name == "td" || name == "th" {
            self.pending_space = true;
        }
        if closing {
            if let Some(at) = self.open.iter().rposition(|o| o.name == name) {
                self.open.truncate(at);
            }
            return;
        }
        if is_void(&name) || attributes.trim_end().ends_with('/') {
            if name == "hr" && attribute(attributes, "id").is_some_and(|id| id == "stopSpelling") {
                self.start_history();
            }
            return;
        }
        let role = role_of(&name, attributes);
        if role_starts_history(&name, attributes) {
            self.start_history();
        }
        if self.open.len() < MAX_OPEN {
            self.open.push(Open { name, role });
        }
    }

    fn start_history(&mut self) {
        self.break_line(false);
        if self.history_from.is_none() {
            self.history_from = Some(self.lines.len());
        }
    }

    fn finish(mut self) -> Vec<Line> {
        self.break_line(false);
        self.lines
    }
}

fn role_of(name: &str, attributes: &str) -> Role {
    if matches!(name, "style" | "script" | "head" | "title" | "template") {
        return Role::Hidden;
    }
    let class = attribute(attributes, "class")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let id = attribute(attributes, "id")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if name == "blockquote" {
        let cite = attribute(attributes, "type").is_some_and(|t| t.eq_ignore_ascii_case("cite"));
        return if cite || class.contains("quote") || class.contains("cite") {
            Role::Quote
        } else {
            Role::Plain
        };
    }
    let classes = || class.split_whitespace();
    if classes().any(|c| c == "gmail_attr" || c == "moz-cite-prefix") {
        return Role::Attribution;
    }
    if classes().any(|c| matches!(c, "gmail_signature" | "moz-signature" | "signature"))
        || attribute(attributes, "data-smartmail").is_some_and(|v| v == "gmail_signature")
        || matches!(
            id.as_str(),
            "signature"
                | "applemailsignature"
                | "ms-outlook-mobile-signature"
                | "ms-outlook-ios-signature"
        )
    {
        return Role::Signature;
    }
    Role::Plain
}

/// Markup after which everything is quoted history: Outlook's reply header
/// (`divRplyFwdMsg`, `appendonsend`, the `border-top` separator of Word
/// HTML), Yahoo's and ProtonMail's quote containers.
fn role_starts_history(name: &str, attributes: &str) -> bool {
    let class = attribute(attributes, "class")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let id = attribute(attributes, "id")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if id.ends_with("divrplyfwdmsg")
        || id == "appendonsend"
        || id == "mail-editor-reference-message-container"
    {
        return true;
    }
    if class.split_whitespace().any(|c| {
        matches!(
            c,
            "yahoo_quoted" | "protonmail_quote" | "outlookmessageheader" | "zmail_extra"
        )
    }) {
        return true;
    }
    if name == "div" {
        let style = attribute(attributes, "style")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let style: String = style.chars().filter(|c| !c.is_whitespace()).collect();
        return style.contains("border-top:solid")
            && (style.contains("#e1e1e1")
                || style.contains("#b5c4df")
                || style.contains("padding:3"));
    }
    false
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "li"
            | "ul"
            | "ol"
            | "tr"
            | "table"
            | "blockquote"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "hr"
            | "pre"
            | "section"
            | "article"
            | "header"
            | "footer"
            | "dl"
            | "dt"
            | "dd"
            | "center"
            | "address"
            | "body"
    )
}

fn is_void(name: &str) -> bool {
    matches!(
        name,
        "br" | "img"
            | "hr"
            | "meta"
            | "link"
            | "input"
            | "wbr"
            | "col"
            | "area"
            | "base"
            | "source"
            | "embed"
            | "param"
            | "track"
    )
}

/// The value of attribute `wanted` in a tag's attribute text.
fn attribute<'a>(attributes: &'a str, wanted: &str) -> Option<&'a str> {
    let mut rest = attributes;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        if rest.is_empty() {
            return None;
        }
        let name_end = rest
            .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        rest = rest[name_end..].trim_start();
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (value, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or_default())
                }
                _ => {
                    let end = after
                        .find(|c: char| c.is_ascii_whitespace())
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            rest = tail;
            value
        } else {
            ""
        };
        if name.eq_ignore_ascii_case(wanted) {
            return Some(value);
        }
        if name.is_empty() {
            return None;
        }
    }
}

/// Appends `word` with its character references decoded.
fn decode_entities(word: &str, out: &mut String) {
    let mut rest = word;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        match after[1..].find(';').filter(|&n| n > 0 && n <= 32) {
            Some(n) => {
                let reference = &after[..n + 2];
                let before = out.len();
                mail_parser::decoders::html::add_html_token(out, reference.as_bytes(), false);
                // An unknown name comes back as written; that is fine.
                debug_assert!(out.len() >= before);
                rest = &after[n + 2..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_breaks_and_entities() {
        let html = "<html><head><style>p{}</style></head><body><div>Hola,</div><div><br></div><div>el pedido n&ordm; 1234 no lleg&oacute;&nbsp;a&uacute;n.</div><p>Gracias</p></body></html>";
        assert_eq!(
            to_text(html),
            "Hola,\n\nel pedido nº 1234 no llegó aún.\nGracias"
        );
    }

    #[test]
    fn quotes_attributions_and_history_are_marked() {
        let html = r#"<div dir="ltr">Sí, la talla M.</div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">El mar, 1 dic 2026 a las 10:15, Tienda &lt;t@shop.test&gt; escribió:<br></div><blockquote class="gmail_quote" style="margin:0">¿Qué talla?</blockquote></div>"#;
        let read = lines(html);
        let marks: Vec<(&str, u8, Mark)> = read
            .iter()
            .map(|l| (l.text.as_str(), l.depth, l.mark))
            .collect();
        assert_eq!(
            marks,
            vec![
                ("Sí, la talla M.", 0, Mark::Text),
                ("", 0, Mark::Text),
                (
                    "El mar, 1 dic 2026 a las 10:15, Tienda <t@shop.test> escribió:",
                    0,
                    Mark::Attribution
                ),
                ("¿Qué talla?", 1, Mark::Text),
            ]
        );
        let outlook = r#"<p class=MsoNormal>Adjunto la foto.</p><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm"><p class=MsoNormal><b>De:</b> Tienda</p></div><p>viejo</p>"#;
        let read = lines(outlook);
        assert_eq!(read[0].mark, Mark::Text);
        assert_eq!(read[1].mark, Mark::History);
        assert_eq!(read[1].text, "De: Tienda");
    }

    #[test]
    fn an_unclosed_tag_and_deep_nesting_are_read() {
        assert_eq!(to_text("text <b"), "text <b");
        let deep = "<div>".repeat(10_000) + "x";
        assert_eq!(to_text(&deep), "x");
    }
}
