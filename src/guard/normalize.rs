//! Sender identity that cannot be dodged cheaply: `Ann+1@Example.com`,
//! `ann+2@example.com` and, at Gmail, `a.n.n@googlemail.com` are one
//! customer; so are `ann@exämple.com` and `ann@xn--exmple-cua.com`,
//! fullwidth `ａｎｎ@example.com`, `a<U+200B>nn@example.com` with a
//! zero-width space, and `аnn@example.com` with a Cyrillic `а`. They share
//! one rate-limit bucket and one dedupe history.
//!
//! [`identity`] gives two forms of an address: the `address` (for display
//! and for allow lists, which must not open to a lookalike) and the `key`
//! (its confusable skeleton, for buckets and block lists). List and match
//! patterns go through the same steps ([`Pattern`]), so a pattern and an
//! address that read alike compare alike.

use std::sync::LazyLock;

use icu_properties::props::DefaultIgnorableCodePoint;
use icu_properties::{CodePointSetData, CodePointSetDataBorrowed};
use unicode_normalization::UnicodeNormalization;

/// Providers that ignore dots in the local part, with the domain they are
/// folded to.
const DOTLESS: &[(&str, &str)] = &[("gmail.com", "gmail.com"), ("googlemail.com", "gmail.com")];

/// [`DOTLESS`] in key form: a lookalike of `gmail.com` ignores dots too,
/// or `a.nn@gmаil.com` (Cyrillic `а`) would rotate through fresh keys.
static DOTLESS_KEYS: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    DOTLESS
        .iter()
        .map(|(domain, canonical)| (skeleton(domain), skeleton(canonical)))
        .collect()
});

/// Zero-width space and joiners, soft hyphen, BOM, bidi controls, variation
/// selectors, tag characters: invisible, so never part of who is writing.
const IGNORABLE: CodePointSetDataBorrowed<'static> =
    CodePointSetData::new::<DefaultIgnorableCodePoint>();

/// One address in its two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Invisible characters removed, NFKC, lower case, plus tag removed,
    /// dots removed at Gmail, the domain in its IDNA Unicode form:
    /// `ann@exämple.com`. What people read and allow lists match.
    pub address: String,
    /// The address's UTS #39 confusable skeleton, local part and domain
    /// each (see [`skeleton`]): lookalikes share it. What buckets key on.
    pub key: String,
}

/// The address rules key on, in both forms; `None` for text that is not
/// an address.
pub fn identity(raw: &str) -> Option<Normalized> {
    let text = clean(raw);
    let text = text.trim().trim_matches(['<', '>']).trim();
    let (local, domain) = text.rsplit_once('@')?;
    let local = local.trim();
    let domain = domain.trim().trim_end_matches('.');
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    let domain = idna_domain(domain);
    // Plus addressing: everything from the first `+` is a tag the
    // mailbox owner chose, not a different person.
    let mut local = match local.find('+') {
        Some(plus) if plus > 0 => local[..plus].to_string(),
        _ => local.to_string(),
    };
    let domain = match DOTLESS.iter().find(|(d, _)| *d == domain) {
        Some((_, canonical)) => {
            local.retain(|c| c != '.');
            (*canonical).to_string()
        }
        None => domain,
    };
    let key = key_of(&local, &domain);
    Some(Normalized {
        address: format!("{local}@{domain}"),
        key,
    })
}

/// The display form of an address (see [`identity`]).
pub fn address(raw: &str) -> Option<String> {
    identity(raw).map(|n| n.address)
}

/// The domain of a normalized address or key.
pub fn domain(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, d)| d)
}

/// Invisible characters removed, NFKC (fullwidth `ａ` is `a`, `＠` is
/// `@`), lower case. ASCII text only needs the lower case.
fn clean(raw: &str) -> String {
    if raw.is_ascii() {
        return raw.to_ascii_lowercase();
    }
    let visible: String = raw
        .chars()
        .filter(|c| !IGNORABLE.contains(*c))
        .nfkc()
        .collect();
    visible.to_lowercase()
}

/// The domain in its IDNA (UTS #46) Unicode form, so `xn--exmple-cua.com`
/// and `exämple.com` are one. A domain that is not valid IDNA (bad
/// punycode, a disallowed character) keeps the form it has: stable, and
/// no worse a key than any other made-up domain.
fn idna_domain(domain: &str) -> String {
    match idna::domain_to_unicode(domain) {
        (unicode, Ok(())) if !unicode.is_empty() => unicode,
        _ => domain.to_string(),
    }
}

/// The key of a normalized address: the skeleton of its local part and of
/// its domain, with Gmail's dots ignored at any lookalike of Gmail.
fn key_of(local: &str, domain: &str) -> String {
    let mut local_key = skeleton(local);
    let mut domain_key = skeleton(domain);
    if let Some((_, canonical)) = DOTLESS_KEYS.iter().find(|(d, _)| *d == domain_key) {
        local_key.retain(|c| c != '.');
        domain_key.clone_from(canonical);
    }
    format!("{local_key}@{domain_key}")
}

/// The UTS #39 confusable skeleton of `text` (unicode-security), folded
/// to lower case (the prototype of `0` is `O`, which a lower-case address
/// never holds otherwise) and made readable: composed again (NFC), and
/// `rn` written `m` (the prototype of `m` is `rn`), so `example.com` stays
/// `example.com` instead of `exarnple.corn`. Texts that share a skeleton
/// share this key; the folds only join a few more (`0` and `o`).
pub fn skeleton(text: &str) -> String {
    let folded = if text.is_ascii() {
        // Most addresses: one lookup per character instead of two
        // decompositions and a composition.
        let keys = &*ASCII_KEYS;
        text.bytes()
            .map(|b| keys[usize::from(b)].as_str())
            .collect()
    } else {
        folded_skeleton(text)
    };
    if folded.contains("rn") {
        folded.replace("rn", "m")
    } else {
        folded
    }
}

/// The skeleton, composed and in lower case (before `rn` is written `m`).
fn folded_skeleton(text: &str) -> String {
    let skeleton: String = unicode_security::skeleton(text).collect();
    skeleton.nfc().collect::<String>().to_lowercase()
}

/// [`folded_skeleton`] of each ASCII character, from the crate's own data.
/// ASCII text is keyed character by character: no ASCII prototype holds a
/// combining mark, so nothing reorders or composes across characters
/// (the `ascii_text_is_keyed_as_the_full_algorithm_keys_it` test checks).
static ASCII_KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0u8..128)
        .map(|b| folded_skeleton(char::from(b).encode_utf8(&mut [0; 4])))
        .collect()
});

/// A sender or domain pattern of a list or a rule's `match`, normalized as
/// addresses are (glob characters kept): `text` is compared with an
/// identity's `address`, `key` with its `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub key: String,
}

impl Pattern {
    /// `*@shop.example`, `ann@exämple.com`: the domain after the last `@`
    /// is read as [`Pattern::domain`]. Plus tags are not removed: write
    /// the address without one, as it is normalized.
    pub fn sender(pattern: &str) -> Pattern {
        let text = clean(pattern);
        let text = text.trim();
        match text.rsplit_once('@') {
            Some((local, domain)) => {
                let domain = domain_pattern(domain);
                Pattern {
                    key: key_of(local, &domain),
                    text: format!("{local}@{domain}"),
                }
            }
            None => Pattern {
                key: skeleton(text),
                text: text.to_string(),
            },
        }
    }

    /// `*.example.com`, `exämple.com`, `xn--exmple-cua.com`.
    pub fn domain(pattern: &str) -> Pattern {
        let text = domain_pattern(clean(pattern).trim());
        Pattern {
            key: skeleton(&text),
            text,
        }
    }
}

/// A domain pattern with each label that holds no glob character in its
/// IDNA Unicode form (labels are converted one by one: `*` is no label).
fn domain_pattern(pattern: &str) -> String {
    pattern
        .trim_end_matches('.')
        .split('.')
        .map(|label| {
            if label.contains(['*', '?']) || label.is_empty() {
                label.to_string()
            } else {
                idna_domain(label)
            }
        })
        .collect::<Vec<_>>()
        .join(".")
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

    fn both(raw: &str) -> (String, String) {
        let n = identity(raw).unwrap_or_else(|| panic!("{raw:?} is an address"));
        (n.address, n.key)
    }

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
        assert_eq!(address("ann@."), None);
        assert_eq!(address("\u{200B}@example.com"), None, "only invisible");
    }

    #[test]
    fn an_ascii_address_is_its_own_key() {
        assert_eq!(
            both("ann@example.com"),
            ("ann@example.com".into(), "ann@example.com".into())
        );
    }

    #[test]
    fn zero_width_soft_hyphen_bom_and_bidi_controls_are_removed() {
        for raw in [
            "a\u{200B}nn@example.com",         // zero-width space
            "an\u{200C}n@exa\u{200D}mple.com", // zero-width non-joiner, joiner
            "an\u{00AD}n@exam\u{00AD}ple.com", // soft hyphen
            "\u{FEFF}ann@example.com",         // byte order mark
            "ann\u{2060}@example.com",         // word joiner
            "\u{202E}ann@example.com\u{202C}", // right-to-left override, pop
            "ann@example\u{200F}.com",         // right-to-left mark
        ] {
            assert_eq!(
                both(raw),
                ("ann@example.com".into(), "ann@example.com".into()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn fullwidth_and_other_compatibility_forms_are_folded_by_nfkc() {
        assert_eq!(
            address("ａｎｎ@example.com").as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(
            address("ＡＮＮ＠ＥＸＡＭＰＬＥ．ＣＯＭ").as_deref(),
            Some("ann@example.com"),
            "fullwidth capitals, at sign and full stop"
        );
        assert_eq!(
            address("ann＋shoes@example.com").as_deref(),
            Some("ann@example.com"),
            "a fullwidth plus is a plus tag"
        );
        assert_eq!(
            address("ﬁona@example.com").as_deref(),
            Some("fiona@example.com")
        );
    }

    #[test]
    fn unicode_and_punycode_domains_are_one() {
        let unicode = both("ann@exämple.com");
        assert_eq!(unicode.0, "ann@exämple.com");
        assert_eq!(both("ann@xn--exmple-cua.com"), unicode);
        assert_eq!(both("Ann@XN--EXMPLE-CUA.COM"), unicode);
        assert_eq!(both("ann@EXÄMPLE.com"), unicode, "upper case is mapped too");
        assert_eq!(
            both("ann@exa\u{0308}mple.com"),
            unicode,
            "a decomposed ä is the same"
        );
        assert_eq!(
            both("ann@exämple。com"),
            unicode,
            "an ideographic full stop separates labels"
        );
        assert_ne!(
            unicode.1, "ann@example.com",
            "ä and a are different letters"
        );
    }

    #[test]
    fn a_domain_that_is_not_valid_idna_keeps_a_stable_key() {
        // `xn--a` is not valid punycode.
        let one = both("ann@xn--a.example");
        assert_eq!(one.0, "ann@xn--a.example");
        assert_eq!(both("ANN@XN--A.EXAMPLE"), one, "the same every time");
        assert_ne!(one, both("ann@a.example"));
    }

    #[test]
    fn cyrillic_and_greek_lookalikes_share_the_latin_key() {
        let latin = both("ann@example.com");
        // Cyrillic а (U+0430), е (U+0435), о (U+043E), р (U+0440), с (U+0441).
        for raw in [
            "\u{0430}nn@example.com",
            "ann@\u{0435}xample.com",
            "ann@ex\u{0430}m\u{0440}le.c\u{043E}m",
            "\u{0430}nn@\u{0435}x\u{0430}mple.\u{0441}om",
            "ann@examp\u{04CF}e.com", // Cyrillic palochka for l
        ] {
            let (address, key) = both(raw);
            assert_eq!(key, latin.1, "{raw:?} ({address}) keys as ann@example.com");
            assert_ne!(address, latin.0, "{raw:?} is shown as written");
        }
        assert_eq!(
            both("ann@\u{03BF}\u{03BF}.example").1,
            both("ann@oo.example").1,
            "Greek omicron is o"
        );
    }

    #[test]
    fn ascii_lookalikes_share_a_key_too() {
        // The skeleton folds `rn` and `m`, `1`, `|` and `l`, `0` and `o`.
        assert_eq!(
            both("ann@exarnple.com").1,
            "ann@example.com",
            "rn reads as m"
        );
        assert_eq!(both("ann@examp1e.com").1, "ann@example.com");
        assert_eq!(both("b0b@example.com").1, "bob@example.com");
        assert_eq!(both("ann@examp|e.com").1, "ann@example.com");
    }

    #[test]
    fn ascii_text_is_keyed_as_the_full_algorithm_keys_it() {
        let slow = |text: &str| folded_skeleton(text).replace("rn", "m");
        let printable: Vec<char> = (0x20u8..0x7F).map(char::from).collect();
        for a in &printable {
            for b in &printable {
                let text = format!("{a}{b}");
                assert_eq!(skeleton(&text), slow(&text), "{text:?}");
            }
        }
        for text in ["ann@example.com", "b0b.1|x`y\"z%q@corn.example", "m.rn-mm"] {
            assert_eq!(skeleton(text), slow(text), "{text:?}");
        }
    }

    #[test]
    fn gmail_lookalikes_ignore_dots_too() {
        let gmail = both("ann@gmail.com");
        assert_eq!(gmail, ("ann@gmail.com".into(), "ann@gmail.com".into()));
        let lookalike = both("a.nn@gm\u{0430}il.com");
        assert_eq!(lookalike.0, "a.nn@gm\u{0430}il.com", "shown as written");
        assert_eq!(lookalike.1, gmail.1, "keyed as the Gmail address");
    }

    #[test]
    fn a_normalized_address_normalizes_to_itself() {
        // Facts skips normalizing an address it already holds in this form.
        for raw in [
            "Ann+Orders@Example.COM",
            "A.n.N+1@googlemail.com",
            "+ann@example.com",
            "ａｎｎ@ＥＸÄＭＰＬＥ．com",
            "a\u{200B}nn@xn--exmple-cua.com",
            "\u{0430}nn@\u{0435}xample.com",
            "ann@xn--a.example",
            "ann@examp|e.com",
            "\"ann smith\"@example.com",
        ] {
            let once = identity(raw).unwrap();
            assert_eq!(identity(&once.address), Some(once.clone()), "{raw:?}");
        }
    }

    #[test]
    fn patterns_are_normalized_like_addresses() {
        let p = Pattern::sender("*@XN--EXMPLE-CUA.com");
        assert_eq!(p.text, "*@exämple.com");
        assert!(glob(&p.text, &both("ann@exämple.com").0));
        let p = Pattern::sender("*@shop.example");
        assert_eq!(
            (p.text.as_str(), p.key.as_str()),
            ("*@shop.example", "*@shop.example")
        );
        assert!(glob(&p.key, &both("staff@sh\u{043E}p.example").1));
        assert!(!glob(&p.text, &both("staff@sh\u{043E}p.example").0));
        let d = Pattern::domain("*.ＥＸÄＭＰＬＥ.com");
        assert_eq!(d.text, "*.exämple.com");
        let d = Pattern::domain("*.xn--exmple-cua.com.");
        assert_eq!(d.text, "*.exämple.com");
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
