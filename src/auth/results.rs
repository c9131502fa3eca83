//! `Authentication-Results` headers (RFC 8601): reading the one a trusted
//! host added, and writing intake's own.
//!
//! Anyone can write such a header into a mail, so which one counts is
//! decided here: only the topmost header whose authserv-id the config
//! trusts. A trusted MX adds its header on top of whatever the mail
//! brought; a forged header claiming the same id further down sits below
//! the genuine one and is never read.

use crate::envelope::{Auth, AuthResult};

/// One parsed header: who wrote it and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsHeader {
    pub authserv_id: String,
    pub methods: Vec<MethodResult>,
}

/// `dkim=pass header.d=example.com header.s=s1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodResult {
    /// Lowercase, without a version (`dkim`, `spf`, `dmarc`, `arc`).
    pub method: String,
    pub result: AuthResult,
    /// `ptype.property` (lowercase) and value, e.g. (`header.d`, `example.com`).
    pub properties: Vec<(String, String)>,
}

impl MethodResult {
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl ResultsHeader {
    /// The first result of one method.
    pub fn first(&self, method: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.method == method)
    }

    /// Every result of one method, in order.
    pub fn of<'a>(&'a self, method: &'a str) -> impl Iterator<Item = &'a MethodResult> + 'a {
        self.methods.iter().filter(move |m| m.method == method)
    }
}

/// The topmost header (in `values`' order, top first) whose authserv-id
/// is in `trusted`, parsed.
pub fn topmost_trusted<'a>(
    values: impl IntoIterator<Item = &'a str>,
    trusted: &[String],
) -> Option<ResultsHeader> {
    values.into_iter().filter_map(parse).find(|h| {
        trusted
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&h.authserv_id))
    })
}

/// Parses a header value; `None` when it names no authserv-id. Results
/// this parser does not know (`x-foo=bar`) are skipped, not errors:
/// hosts add methods of their own.
pub fn parse(value: &str) -> Option<ResultsHeader> {
    let text = strip_comments(value);
    let mut parts = split_outside_quotes(&text, ';').into_iter();
    let authserv_id = parts.next()?.split_whitespace().next()?.to_string();
    let methods = parts.filter_map(|part| method(&part)).collect();
    Some(ResultsHeader {
        authserv_id,
        methods,
    })
}

/// An `ARC-Authentication-Results` value: `i=1; ` and then a header.
pub fn parse_arc(value: &str) -> Option<ResultsHeader> {
    let rest = value.trim_start();
    let rest = match rest.get(..2) {
        Some(i) if i.eq_ignore_ascii_case("i=") => rest.split_once(';')?.1,
        _ => rest,
    };
    parse(rest)
}

fn method(part: &str) -> Option<MethodResult> {
    let mut words = split_outside_quotes(part, ' ').into_iter();
    let first = words.next()?;
    let (name, result) = first.split_once('=')?;
    let method = name.split('/').next()?.trim().to_ascii_lowercase();
    let result = AuthResult::parse(result.trim())?;
    let properties = words
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), unquote(v.trim())))
        })
        .collect();
    Some(MethodResult {
        method,
        result,
        properties,
    })
}

/// The value of intake's own header: one line, every check.
pub fn write(authserv_id: &str, auth: &Auth) -> String {
    let mut out = String::from(authserv_id);
    if auth.dkim.is_empty() {
        out.push_str("; dkim=none");
    }
    for dkim in &auth.dkim {
        out.push_str("; dkim=");
        out.push_str(dkim.result.name());
        push_property(&mut out, "header.d", dkim.domain.as_deref());
        push_property(&mut out, "header.s", dkim.selector.as_deref());
    }
    if let Some(spf) = &auth.spf {
        out.push_str("; spf=");
        out.push_str(spf.result.name());
        push_property(&mut out, "smtp.mailfrom", spf.domain.as_deref());
        push_property(&mut out, "smtp.helo", spf.helo.as_deref());
    }
    if let Some(dmarc) = &auth.dmarc {
        out.push_str("; dmarc=");
        out.push_str(dmarc.result.name());
        push_property(&mut out, "policy.dmarc", dmarc.policy.map(|p| p.name()));
        push_property(&mut out, "header.from", dmarc.domain.as_deref());
    }
    if let Some(arc) = &auth.arc {
        out.push_str("; arc=");
        out.push_str(arc.result.name());
        push_property(&mut out, "header.d", arc.sealer.as_deref());
    }
    out
}

fn push_property(out: &mut String, name: &str, value: Option<&str>) {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return;
    };
    out.push(' ');
    out.push_str(name);
    out.push('=');
    // A token (RFC 2045) as it is; anything else quoted, so a hostile
    // HELO name cannot add a result of its own.
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._@+".contains(&b))
    {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars().filter(|c| !c.is_control()) {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

/// Drops `(comments)`, nested, outside quoted strings.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Splits on `sep` outside quoted strings, dropping empty pieces.
fn split_outside_quotes(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            current.push(c);
            continue;
        }
        match c {
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == sep && !quoted => {
                if !current.trim().is_empty() {
                    parts.push(current.trim().to_string());
                }
                current.clear();
            }
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_string());
    }
    parts
}

fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{AuthOrigin, DkimCheck, DmarcCheck, DmarcPolicy, SpfCheck};

    #[test]
    fn reads_an_rspamd_style_header_with_comments_and_folding() {
        let h = parse(
            "mx.shop.test;\r\n\tdkim=pass header.d=customer.test header.s=dev header.b=AbCd;\r\n\tspf=pass (mx.shop.test: domain of ann@customer.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=ann@customer.test;\r\n\tdmarc=pass (policy=reject) header.from=customer.test",
        )
        .unwrap();
        assert_eq!(h.authserv_id, "mx.shop.test");
        let dkim = h.of("dkim").next().unwrap();
        assert_eq!(dkim.result, AuthResult::Pass);
        assert_eq!(dkim.property("header.d"), Some("customer.test"));
        let spf = h.of("spf").next().unwrap();
        assert_eq!(spf.property("smtp.mailfrom"), Some("ann@customer.test"));
        assert_eq!(h.of("dmarc").next().unwrap().result, AuthResult::Pass);
    }

    #[test]
    fn gmail_style_versioned_methods_and_quoted_values() {
        let h = parse(
            "mx.google.com; dkim=pass header.i=@example.com header.s=s1 header.b=\"a;b\"; spf/1=softfail smtp.mailfrom=x@example.com; dmarc=fail (p=REJECT sp=REJECT dis=NONE) header.from=example.com",
        )
        .unwrap();
        assert_eq!(
            h.of("dkim").next().unwrap().property("header.b"),
            Some("a;b")
        );
        assert_eq!(h.of("spf").next().unwrap().result, AuthResult::Softfail);
        assert_eq!(h.of("dmarc").next().unwrap().result, AuthResult::Fail);
    }

    #[test]
    fn none_and_unknown_methods_are_skipped() {
        let h = parse("mx.shop.test 1; none").unwrap();
        assert_eq!(h.authserv_id, "mx.shop.test");
        assert!(h.methods.is_empty());
        let h = parse("mx.shop.test; x-custom=whatever; dkim=pass").unwrap();
        assert_eq!(h.methods.len(), 1);
        assert!(parse("  ").is_none());
    }

    #[test]
    fn only_the_topmost_trusted_header_counts() {
        let trusted = vec!["mx.shop.test".to_string()];
        let headers = [
            "attacker.example; dmarc=pass header.from=shop.test",
            "mx.shop.test; dmarc=fail header.from=customer.test",
            "mx.shop.test; dmarc=pass header.from=customer.test",
        ];
        let h = topmost_trusted(headers, &trusted).unwrap();
        assert_eq!(h.of("dmarc").next().unwrap().result, AuthResult::Fail);
        assert!(topmost_trusted(["attacker.example; dmarc=pass"], &trusted).is_none());
    }

    #[test]
    fn an_arc_results_value_starts_with_its_instance() {
        let h =
            parse_arc("i=1; forwarder.test; dkim=pass header.d=customer.test; dmarc=pass").unwrap();
        assert_eq!(h.authserv_id, "forwarder.test");
        assert_eq!(h.methods.len(), 2);
    }

    #[test]
    fn writes_one_line_that_reads_back() {
        let auth = Auth {
            dkim: vec![DkimCheck {
                result: AuthResult::Pass,
                domain: Some("customer.test".into()),
                selector: Some("dev".into()),
            }],
            spf: Some(SpfCheck {
                result: AuthResult::Fail,
                domain: Some("customer.test".into()),
                client_address: Some("203.0.113.7".into()),
                helo: Some("evil; dkim=pass".into()),
            }),
            dmarc: Some(DmarcCheck {
                result: AuthResult::Pass,
                domain: Some("customer.test".into()),
                policy: Some(DmarcPolicy::Reject),
            }),
            arc: None,
            from: AuthOrigin::Verified,
            authserv_id: None,
            aligned_from: true,
            authenticated_domain: Some("customer.test".into()),
            own_domain: false,
            notes: vec![],
        };
        let line = write("intake.shop.test", &auth);
        assert!(!line.contains('\n'));
        let back = parse(&line).unwrap();
        assert_eq!(back.authserv_id, "intake.shop.test");
        assert_eq!(back.of("dkim").count(), 1, "{line}");
        assert_eq!(
            back.of("spf").next().unwrap().property("smtp.helo"),
            Some("evil; dkim=pass")
        );
        assert_eq!(
            back.of("dmarc").next().unwrap().property("policy.dmarc"),
            Some("reject")
        );
    }
}
