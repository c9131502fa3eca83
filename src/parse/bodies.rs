//! Which parts of a mail are its text and HTML bodies and which are
//! attachments, decided again over mail-parser's part tree: mail-parser
//! 0.11 decides part by part as it parses, and for `multipart/related`
//! (Apple Mail, Outlook with inline images) and nested alternatives it can
//! join alternatives, keep a related image as an attachment without its
//! inline disposition, or list a body as an attachment.
//!
//! The rules (RFC 2046, RFC 2387): of a `multipart/alternative`, the last
//! alternative that has a plain text is the text and the last that has an
//! HTML is the HTML (an HTML-only alternative stands in for the text, to be
//! converted as before); of a `multipart/related`, the root (first part) is
//! the body and every other part a resource of it, inline; of any other
//! multipart, every child's bodies in order. A text/plain or text/html
//! part is a body unless it is disposed as an attachment, has a file name
//! or is a related resource; every other leaf part is an attachment.

use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

/// What a part gives as bodies.
#[derive(Default)]
struct Bodies {
    /// Parts that give the text: text/plain parts, or HTML parts standing
    /// in for a missing text.
    text: Vec<u32>,
    /// text/html parts.
    html: Vec<u32>,
    /// Whether `text` holds a real text/plain part.
    has_plain: bool,
}

/// Where a part sits, as its parents decide.
#[derive(Clone, Copy, Default)]
struct Place {
    /// A part of a `multipart/related` other than its root.
    related_resource: bool,
}

/// What the reclassification found beyond the three lists.
pub(super) struct Classes {
    /// By part id: a part inside a `multipart/related` that is not its
    /// root, inline unless disposed as an attachment.
    related_resource: Vec<bool>,
}

impl Classes {
    pub(super) fn is_related_resource(&self, id: u32) -> bool {
        self.related_resource
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// Sets the message's `text_body`, `html_body` and `attachments` by the
/// rules of this module, and says which parts are related resources.
pub(super) fn reclassify(message: &mut Message<'_>) -> Classes {
    let count = message.parts.len();
    // Parents come before their children in `parts` (the order parsed):
    // places flow forwards, bodies backwards, with no recursion a hostile
    // nesting could overflow.
    let mut places = vec![Place::default(); count];
    for (id, part) in message.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            let related = is_multipart(part, "related");
            for (i, &child) in children.iter().enumerate() {
                if let Some(place) = places
                    .get_mut(child as usize)
                    .filter(|_| child as usize > id)
                {
                    place.related_resource = related && i > 0;
                }
            }
        }
    }
    let mut bodies: Vec<Bodies> = (0..count).map(|_| Bodies::default()).collect();
    let mut attachments = Vec::new();
    for id in (0..count).rev() {
        let part = &message.parts[id];
        let mine = match &part.body {
            PartType::Multipart(children) => {
                let children: Vec<Bodies> = children
                    .iter()
                    .filter(|&&c| c as usize > id && (c as usize) < count)
                    .map(|&c| std::mem::take(&mut bodies[c as usize]))
                    .collect();
                combine(part, children)
            }
            _ if places[id].related_resource || !is_body_candidate(part) => {
                attachments.push(id as u32);
                Bodies::default()
            }
            PartType::Html(_) => Bodies {
                text: vec![id as u32],
                html: vec![id as u32],
                has_plain: false,
            },
            _ => Bodies {
                text: vec![id as u32],
                html: Vec::new(),
                has_plain: true,
            },
        };
        bodies[id] = mine;
    }
    attachments.reverse();
    let top = bodies.into_iter().next().unwrap_or_default();
    message.text_body = top.text;
    message.html_body = top.html;
    message.attachments = attachments;
    Classes {
        related_resource: places.iter().map(|p| p.related_resource).collect(),
    }
}

/// A multipart's bodies from its children's, in order.
fn combine(part: &MessagePart<'_>, children: Vec<Bodies>) -> Bodies {
    if is_multipart(part, "alternative") {
        let text_from = children
            .iter()
            .rposition(|c| c.has_plain)
            .or_else(|| children.iter().rposition(|c| !c.text.is_empty()));
        let html_from = children.iter().rposition(|c| !c.html.is_empty());
        let mut children = children;
        let html = html_from
            .map(|i| std::mem::take(&mut children[i].html))
            .unwrap_or_default();
        let (text, has_plain) = text_from
            .map(|i| (std::mem::take(&mut children[i].text), children[i].has_plain))
            .unwrap_or_default();
        return Bodies {
            text,
            html,
            has_plain,
        };
    }
    if is_multipart(part, "related") {
        // The root; the other children are resources, found as attachments.
        return children.into_iter().next().unwrap_or_default();
    }
    let mut out = Bodies::default();
    for child in children {
        out.text.extend(child.text);
        out.html.extend(child.html);
        out.has_plain |= child.has_plain;
    }
    out
}

fn is_multipart(part: &MessagePart<'_>, subtype: &str) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
    })
}

/// A text/plain or text/html leaf (untyped: text/plain) that is not an
/// attachment by its disposition or its name.
fn is_body_candidate(part: &MessagePart<'_>) -> bool {
    let typed_as_body = match part.content_type() {
        None => true,
        Some(ct) => {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct.subtype().is_none_or(|s| {
                    s.eq_ignore_ascii_case("plain") || s.eq_ignore_ascii_case("html")
                })
        }
    };
    let is_text = matches!(part.body, PartType::Text(_) | PartType::Html(_));
    let attachment = part
        .content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
    typed_as_body && is_text && !attachment && part.attachment_name().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    /// (text parts' texts, html parts' texts, attachments' content types)
    fn classify(raw: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut message = MessageParser::default().parse(raw.as_bytes()).unwrap();
        reclassify(&mut message);
        let body = |id: &u32| match &message.parts[*id as usize].body {
            PartType::Text(t) | PartType::Html(t) => t.trim().to_string(),
            _ => "?".into(),
        };
        let kind = |id: &u32| {
            let ct = message.parts[*id as usize].content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
        };
        (
            message.text_body.iter().map(body).collect(),
            message.html_body.iter().map(body).collect(),
            message.attachments.iter().map(kind).collect(),
        )
    }

    const IMAGE: &str = "Content-Type: image/png\r\nContent-ID: <logo@x>\r\n\
        Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n";

    #[test]
    fn apple_mail_alternative_around_related_html() {
        let raw = format!(
            "Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n\
             Content-Type: text/plain\r\n\r\nplain\r\n--a\r\n\
             Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\n\
             Content-Type: text/html\r\n\r\n<p>html</p>\r\n--r\r\n{IMAGE}--r--\r\n--a--\r\n"
        );
        assert_eq!(
            classify(&raw),
            (
                vec!["plain".into()],
                vec!["<p>html</p>".into()],
                vec!["image/png".into()]
            )
        );
    }

    #[test]
    fn outlook_related_around_alternative() {
        let raw = format!(
            "Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\n\
             Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n\
             Content-Type: text/plain\r\n\r\nplain\r\n--a\r\n\
             Content-Type: text/html\r\n\r\n<p>html</p>\r\n--a--\r\n--r\r\n{IMAGE}--r--\r\n"
        );
        assert_eq!(
            classify(&raw),
            (
                vec!["plain".into()],
                vec!["<p>html</p>".into()],
                vec!["image/png".into()]
            )
        );
    }

    #[test]
    fn nested_alternatives_give_the_last_of_each() {
        let raw = "Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n\
             Content-Type: text/plain\r\n\r\nouter plain\r\n--a\r\n\
             Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
             Content-Type: text/plain\r\n\r\ninner plain\r\n--b\r\n\
             Content-Type: text/html\r\n\r\n<p>inner</p>\r\n--b--\r\n--a--\r\n";
        assert_eq!(
            classify(raw),
            (
                vec!["inner plain".into()],
                vec!["<p>inner</p>".into()],
                vec![]
            ),
            "one text, not both alternatives joined; no alternative as an attachment"
        );
    }

    #[test]
    fn related_html_only_keeps_the_html_for_the_text_too() {
        let raw = format!(
            "Content-Type: multipart/related; boundary=r\r\n\r\n--r\r\n\
             Content-Type: text/html\r\n\r\n<p>html</p>\r\n--r\r\n{IMAGE}--r--\r\n"
        );
        assert_eq!(
            classify(&raw),
            (
                vec!["<p>html</p>".into()],
                vec!["<p>html</p>".into()],
                vec!["image/png".into()]
            )
        );
    }

    #[test]
    fn mixed_keeps_every_body_in_order_and_named_texts_are_attachments() {
        let raw = "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n\
             Content-Type: text/plain\r\n\r\nfirst\r\n--m\r\n\
             Content-Type: text/plain; name=\"notes.txt\"\r\n\r\nfile\r\n--m\r\n\
             Content-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<p>f</p>\r\n--m\r\n\
             Content-Type: text/plain\r\n\r\nfooter\r\n--m--\r\n";
        assert_eq!(
            classify(raw),
            (
                vec!["first".into(), "footer".into()],
                vec![],
                vec!["text/plain".into(), "text/html".into()]
            )
        );
    }
}
