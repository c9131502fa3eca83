//! Safe file names for mail attachments and form uploads. A name as sent can
//! hide its real extension (`invoice\u{202E}fdp.exe` shows as
//! `invoiceexe.pdf`), carry line breaks or point elsewhere (`../../etc/passwd`,
//! `C:\x\y.pdf`). [`FileName::from_sent`] gives the name the desk shows, saves
//! under and the scanner reports: no control, bidi or invisible characters,
//! no path parts, no leading dot, at most [`MAX_BYTES`] bytes with its
//! extension kept, never empty. The name as sent is kept beside it when the
//! two differ, so nothing is lost.

/// The longest safe name, in UTF-8 bytes: what ext4, XFS and APFS allow
/// for one name (NTFS allows 255 UTF-16 units, which this never exceeds).
pub const MAX_BYTES: usize = 255;

/// The safe name of a file whose sent name has nothing left once cleaned
/// (`../..`, a name made only of control characters).
pub const FALLBACK: &str = "attachment";

/// An extension longer than this (dot included) is not an extension worth
/// keeping when a long name is shortened; the name is cut as a whole.
const MAX_EXTENSION_BYTES: usize = 16;

/// An attachment's names, as the envelope carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileName {
    /// The safe name; `None` only when the sender gave no name at all.
    pub filename: Option<String>,
    /// The name exactly as sent, present only when it differs from
    /// `filename`.
    pub original: Option<String>,
}

impl FileName {
    /// The names of a file sent as `sent` (`None` or empty: no name).
    pub fn from_sent(sent: Option<&str>) -> FileName {
        let Some(sent) = sent.filter(|s| !s.is_empty()) else {
            return FileName::default();
        };
        let safe = safe_filename(sent);
        let original = (safe != sent).then(|| sent.to_string());
        FileName {
            filename: Some(safe),
            original,
        }
    }
}

/// `sent` made safe to show and to save: see the module's description.
pub fn safe_filename(sent: &str) -> String {
    let cleaned = clean_characters(sent);
    // A full path (old browsers send `C:\Users\ann\invoice.pdf`) names the
    // file by its last part; a trailing separator or `..` names nothing.
    let last = cleaned
        .split('/')
        .map(trim_dots_and_spaces)
        .rfind(|part| !part.is_empty())
        .unwrap_or_default();
    let without_drive = strip_drive(last);
    // What is left of a colon is a Windows stream name (`a.pdf:x.exe`) or
    // an old Mac path separator: not part of a name.
    let name = trim_dots_and_spaces(without_drive).replace(':', "_");
    let name = shorten(&name);
    if name.is_empty() {
        FALLBACK.to_string()
    } else {
        name
    }
}

/// Drops invisible characters, turns each run of control characters and
/// whitespace into one space (so `invoice.pdf      .exe` cannot push the
/// real extension out of sight), and writes every path separator as `/`.
fn clean_characters(sent: &str) -> String {
    let mut out = String::with_capacity(sent.len());
    let mut in_space = false;
    for c in sent.chars() {
        if is_invisible(c) {
            continue;
        }
        if c.is_control() || c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        out.push(if is_separator(c) { '/' } else { c });
    }
    out
}

/// `/` and `\`, and their full-width forms, which Windows' best-fit
/// conversion to a code page turns into the real ones.
fn is_separator(c: char) -> bool {
    matches!(c, '/' | '\\' | '\u{FF0F}' | '\u{FF3C}')
}

/// Characters that show nothing themselves but change what is shown
/// around them: bidi controls (U+202E turns `fdp.exe` into `exe.pdf`),
/// zero-width characters and other invisible format characters. Removing
/// a zero-width joiner can split an emoji sequence or change a Persian
/// word's shape; the name as sent keeps them.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                // combining grapheme joiner
            | '\u{061C}'                // Arabic letter mark
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'   // Khmer inherent vowels
            | '\u{180B}'..='\u{180F}'   // Mongolian selectors, vowel separator
            | '\u{200B}'..='\u{200F}'   // zero-width space, (non-)joiner, LRM, RLM
            | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
            // Word joiner, invisible operators, bidi isolates, deprecated
            // format controls (and U+2065, reserved for more of them).
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'                // zero-width no-break space (BOM)
            | '\u{FFF9}'..='\u{FFFB}'   // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tag characters
    )
}

/// Leading dots hide a file (`.htaccess`) or climb (`..`); trailing dots
/// and spaces are dropped by Windows (`a.exe.` is `a.exe`), so they would
/// only disguise the extension.
fn trim_dots_and_spaces(part: &str) -> &str {
    part.trim_matches(['.', ' '])
}

/// `C:y.pdf` is `y.pdf` on drive C.
fn strip_drive(name: &str) -> &str {
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        &name[2..]
    } else {
        name
    }
}

/// `name` cut to [`MAX_BYTES`], keeping a short extension whole.
fn shorten(name: &str) -> String {
    if name.len() <= MAX_BYTES {
        return name.to_string();
    }
    let extension = name
        .rfind('.')
        .filter(|&dot| dot > 0 && name.len() - dot <= MAX_EXTENSION_BYTES)
        .map_or("", |dot| &name[dot..]);
    let stem = &name[..name.len() - extension.len()];
    let stem = prefix_within(stem, MAX_BYTES - extension.len());
    let stem = stem.trim_end_matches(['.', ' ']);
    format!("{stem}{extension}")
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn prefix_within(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_name_is_kept_and_has_no_original() {
        let names = FileName::from_sent(Some("Rechnung Müller 2026.pdf"));
        assert_eq!(names.filename.as_deref(), Some("Rechnung Müller 2026.pdf"));
        assert_eq!(names.original, None, "nothing changed, nothing kept twice");
        assert_eq!(FileName::from_sent(None), FileName::default());
        assert_eq!(
            FileName::from_sent(Some("")),
            FileName::default(),
            "an empty name is no name"
        );
    }

    #[test]
    fn a_right_to_left_override_cannot_disguise_the_extension() {
        let names = FileName::from_sent(Some("invoice\u{202E}fdp.exe"));
        assert_eq!(names.filename.as_deref(), Some("invoicefdp.exe"));
        assert_eq!(names.original.as_deref(), Some("invoice\u{202E}fdp.exe"));
        for invisible in [
            '\u{200B}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{2066}',
            '\u{2069}',
            '\u{061C}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            let sent = format!("a{invisible}b.pdf");
            assert_eq!(safe_filename(&sent), "ab.pdf", "U+{:04X}", invisible as u32);
        }
    }

    #[test]
    fn control_characters_and_space_runs_become_one_space() {
        assert_eq!(safe_filename("in\r\nvoice.pdf"), "in voice.pdf");
        assert_eq!(safe_filename("a\u{0}\u{7}\tb.pdf"), "a b.pdf");
        assert_eq!(safe_filename("a\u{85}b\u{2028}c.pdf"), "a b c.pdf");
        assert_eq!(
            safe_filename("invoice.pdf                         .exe"),
            "invoice.pdf .exe",
            "the real extension stays in sight"
        );
        assert_eq!(safe_filename("  report.pdf \r\n"), "report.pdf");
    }

    #[test]
    fn path_parts_and_drive_letters_are_dropped() {
        assert_eq!(safe_filename("../../etc/passwd"), "passwd");
        assert_eq!(safe_filename("C:\\x\\y.pdf"), "y.pdf");
        assert_eq!(safe_filename("C:y.pdf"), "y.pdf");
        assert_eq!(safe_filename("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_filename("docs/report.pdf/"), "report.pdf");
        assert_eq!(safe_filename("a\u{FF0F}..\u{FF3C}b.txt"), "b.txt");
        assert_eq!(safe_filename("a.pdf:evil.exe"), "a.pdf_evil.exe");
        assert_eq!(safe_filename("/"), FALLBACK);
        assert_eq!(safe_filename("../.."), FALLBACK);
    }

    #[test]
    fn leading_dots_and_trailing_dots_are_dropped() {
        assert_eq!(safe_filename(".htaccess"), "htaccess");
        assert_eq!(safe_filename("...hidden.txt"), "hidden.txt");
        assert_eq!(safe_filename("run.exe."), "run.exe");
        assert_eq!(safe_filename("v1.2 notes.txt"), "v1.2 notes.txt");
    }

    #[test]
    fn nothing_left_gives_the_fallback() {
        for sent in [" ", "\r\n", "\u{202E}", ".", "..", "C:", "\u{200B}\u{200B}"] {
            assert_eq!(safe_filename(sent), FALLBACK, "{sent:?}");
        }
        let names = FileName::from_sent(Some("\u{202E}"));
        assert_eq!(names.filename.as_deref(), Some(FALLBACK));
        assert_eq!(names.original.as_deref(), Some("\u{202E}"));
    }

    #[test]
    fn a_long_name_is_cut_keeping_its_extension() {
        let sent = format!("{}.pdf", "a".repeat(2_000));
        let safe = safe_filename(&sent);
        assert_eq!(safe.len(), MAX_BYTES);
        assert!(safe.ends_with("a.pdf"), "{safe}");

        // Multi-byte characters are never cut in half.
        let sent = format!("{}.pdf", "ü".repeat(300));
        let safe = safe_filename(&sent);
        assert!(safe.len() <= MAX_BYTES && safe.ends_with("ü.pdf"), "{safe}");

        // A "extension" longer than an extension is cut like the rest.
        let sent = format!("x.{}", "b".repeat(400));
        assert_eq!(safe_filename(&sent).len(), MAX_BYTES);

        // A stem cut at a space or dot does not leave it before the dot.
        let sent = format!("{} tail.pdf", "a".repeat(250));
        assert_eq!(safe_filename(&sent), format!("{}.pdf", "a".repeat(250)));
    }
}
