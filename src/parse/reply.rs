//! `stripped_text`: the new part of a reply, without the quoted history and
//! the signature, so an agent reads what the customer just wrote.
//!
//! Deliberately conservative: it cuts at the first line that starts a quote
//! or signature in the shapes common mail clients write, and returns the
//! whole text when that would leave nothing.

/// Returns the text above the quoted history and signature.
pub fn strip(text: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if starts_history(trimmed) {
            break;
        }
        // A quote block without an attribution line: skip quoted lines but
        // keep answers interleaved with them.
        if trimmed.starts_with('>') {
            continue;
        }
        kept.push(line);
    }
    let stripped = kept.join("\n").trim().to_string();
    if stripped.is_empty() {
        text.trim().to_string()
    } else {
        stripped
    }
}

fn starts_history(line: &str) -> bool {
    // "-- " is the RFC 3676 signature separator; many clients trim the space.
    line == "--"
        || line == "-- "
        || line == "__"
        || line.starts_with("-----Original Message-----")
        || line.starts_with("-----Ursprüngliche Nachricht-----")
        || line.starts_with("________________________________")
        || (line.starts_with("On ") && line.ends_with("wrote:"))
        || (line.starts_with("Am ") && line.ends_with("schrieb:"))
        || (line.starts_with("Le ") && line.ends_with("a écrit :"))
        || line == "Sent from my iPhone"
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn quoted_history_and_signature_are_removed() {
        let text = "Still nothing arrived.\n\nAnn\n-- \nAnn Example, Berlin\n\nOn Mon, 23 Nov 2026, Shop <s@shop.test> wrote:\n> Your parcel is on its way.";
        assert_eq!(strip(text), "Still nothing arrived.\n\nAnn");
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
}
