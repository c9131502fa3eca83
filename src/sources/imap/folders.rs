//! Folder names as the server spells them. Servers keep a user's folders
//! under a personal namespace (RFC 2342): Dovecot, Gmail and Microsoft 365
//! at the top (`Processed`), Cyrus by default under `INBOX.` (or `INBOX/`
//! with `unixhierarchysep`). A bare configured name is put into that
//! namespace with the server's separator; a name that already starts with
//! a namespace's prefix is taken as is. Optionally, quarantine goes to the
//! folder the server marks `\Junk` (RFC 6154).
//!
//! async-imap has no NAMESPACE parser (its reader would drop the
//! connection on the answer), so the one NAMESPACE command of a session is
//! written and read on the raw stream, between two library commands.

use futures_util::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::Session;
use super::error::ImapError;

/// One namespace of RFC 2342: a prefix and the hierarchy separator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub prefix: String,
    /// `None` for a flat server (no hierarchy).
    pub delimiter: Option<String>,
}

/// What the server said about its namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespaces {
    /// The first personal namespace: where the user's folders live.
    pub personal: Namespace,
    /// Other users' and shared namespaces: a name in one is taken as is.
    pub others: Vec<Namespace>,
}

/// The mailbox and its two destination folders as this server names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folders {
    pub mailbox: String,
    pub processed: String,
    pub quarantine: String,
    /// The personal namespace they were resolved in (for error messages).
    pub personal: Namespace,
}

impl Folders {
    /// The names as configured, before the server was asked.
    pub fn configured(mailbox: &str, processed: &str, quarantine: &str) -> Folders {
        Folders {
            mailbox: mailbox.to_string(),
            processed: processed.to_string(),
            quarantine: quarantine.to_string(),
            personal: Namespace::default(),
        }
    }
}

impl Namespaces {
    /// The name the server knows `configured` by: INBOX and names that
    /// start with a namespace's prefix as they are, anything else under
    /// the personal prefix.
    pub fn resolve(&self, configured: &str) -> String {
        if configured.eq_ignore_ascii_case("INBOX") {
            return configured.to_string();
        }
        let prefix = self.personal.full_prefix();
        let qualified = |ns: &Namespace| {
            let p = ns.full_prefix();
            !p.is_empty() && starts_with_ignore_case(configured, &p)
        };
        if prefix.is_empty() || qualified(&self.personal) || self.others.iter().any(qualified) {
            configured.to_string()
        } else {
            format!("{prefix}{configured}")
        }
    }
}

impl Namespace {
    /// The prefix ending in the separator (RFC 2342 prefixes normally do;
    /// one that does not gets it added).
    fn full_prefix(&self) -> String {
        match &self.delimiter {
            Some(d) if !self.prefix.is_empty() && !self.prefix.ends_with(d.as_str()) => {
                format!("{}{d}", self.prefix)
            }
            _ => self.prefix.clone(),
        }
    }

    /// `prefix "INBOX." and separator "."`, for error messages.
    pub fn describe(&self) -> String {
        format!(
            "prefix \"{}\" and separator \"{}\"",
            self.full_prefix(),
            self.delimiter.as_deref().unwrap_or("")
        )
    }

    /// `name` as a folder of this namespace (for the advice in errors).
    pub fn example(&self, name: &str) -> String {
        format!("{}{name}", self.full_prefix())
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Asks the server for its namespaces: NAMESPACE when it offers it, else
/// only the separator (`LIST "" ""`) with an empty personal prefix.
pub async fn discover(session: &mut Session, has_namespace: bool) -> Result<Namespaces, ImapError> {
    if has_namespace {
        let line = raw_namespace(session).await?;
        if let Some(found) = parse_namespace(&line) {
            return Ok(found);
        }
        tracing::debug!(
            line,
            "NAMESPACE answer not understood; using LIST for the separator"
        );
    }
    let delimiter = {
        let names = session
            .list(Some(""), Some("\"\""))
            .await
            .map_err(ImapError::protocol("LIST"))?;
        let names: Vec<_> = names
            .try_collect()
            .await
            .map_err(ImapError::protocol("LIST"))?;
        names
            .first()
            .and_then(|n| n.delimiter().map(str::to_string))
    };
    Ok(Namespaces {
        personal: Namespace {
            prefix: String::new(),
            delimiter,
        },
        others: Vec::new(),
    })
}

/// Whether `folder` exists (and can hold mail).
pub async fn exists(session: &mut Session, folder: &str) -> Result<bool, ImapError> {
    // Config validation keeps quotes and backslashes out of folder names.
    let names = session
        .list(Some(""), Some(&format!("\"{folder}\"")))
        .await
        .map_err(ImapError::protocol("LIST"))?;
    let names: Vec<_> = names
        .try_collect()
        .await
        .map_err(ImapError::protocol("LIST"))?;
    Ok(names.iter().any(|n| {
        n.name() == folder
            && !n
                .attributes()
                .iter()
                .any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect))
    }))
}

/// The folder the server marks `\Junk` (RFC 6154), if any.
pub async fn junk(session: &mut Session) -> Result<Option<String>, ImapError> {
    let names = session
        .list(Some(""), Some("\"*\""))
        .await
        .map_err(ImapError::protocol("LIST"))?;
    let names: Vec<_> = names
        .try_collect()
        .await
        .map_err(ImapError::protocol("LIST"))?;
    Ok(names
        .iter()
        .find(|n| {
            n.attributes()
                .iter()
                .any(|a| matches!(a, async_imap::types::NameAttribute::Junk))
        })
        .map(|n| n.name().to_string()))
}

/// The tag of our one raw command; the library's own are `A0001`, ....
const TAG: &str = "intake-ns";
/// Bound on the NAMESPACE answer: a few lines on every server.
const MAX_ANSWER: usize = 64 * 1024;

/// Sends NAMESPACE on the raw stream and returns the `* NAMESPACE` line
/// (empty when the server answered none). Only between commands, when the
/// library has nothing buffered.
async fn raw_namespace(session: &mut Session) -> Result<String, ImapError> {
    let io_error = |e: std::io::Error| ImapError::protocol("NAMESPACE")(e.into());
    let stream = session.get_mut();
    stream
        .write_all(format!("{TAG} NAMESPACE\r\n").as_bytes())
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io_error)?;
        if n == 0 {
            return Err(ImapError::protocol("NAMESPACE")(
                async_imap::error::Error::ConnectionLost,
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(done) = text
            .split("\r\n")
            .find(|line| line.starts_with(&format!("{TAG} ")))
        {
            let status = done[TAG.len() + 1..].trim_start();
            if !status
                .get(..2)
                .is_some_and(|s| s.eq_ignore_ascii_case("OK"))
            {
                return Err(ImapError::Refused {
                    step: "NAMESPACE",
                    said: done.to_string(),
                });
            }
            return Ok(text
                .split("\r\n")
                .find(|line| {
                    line.get(..12)
                        .is_some_and(|s| s.eq_ignore_ascii_case("* NAMESPACE "))
                })
                .unwrap_or_default()
                .to_string());
        }
        if answer.len() > MAX_ANSWER {
            return Err(ImapError::Refused {
                step: "NAMESPACE",
                said: "answer too long".into(),
            });
        }
    }
}

/// A token of a NAMESPACE answer.
#[derive(Debug, PartialEq)]
enum Item {
    List(Vec<Item>),
    Text(String),
    Nil,
}

/// Parses `* NAMESPACE (("INBOX." ".")) (("user." ".")) NIL` (personal,
/// other users', shared). `None` when it is not that shape.
pub fn parse_namespace(line: &str) -> Option<Namespaces> {
    let rest = line.get(12..)?;
    if !line[..12].eq_ignore_ascii_case("* NAMESPACE ") {
        return None;
    }
    let mut chars = rest.trim_end().chars().peekable();
    let mut groups = Vec::new();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        groups.push(item(&mut chars)?);
    }
    let namespaces = |group: &Item| -> Option<Vec<Namespace>> {
        match group {
            Item::Nil => Some(Vec::new()),
            Item::List(entries) => entries
                .iter()
                .map(|entry| match entry {
                    Item::List(parts) => match parts.as_slice() {
                        [Item::Text(prefix), delimiter, ..] => Some(Namespace {
                            prefix: prefix.clone(),
                            delimiter: match delimiter {
                                Item::Text(d) => Some(d.clone()),
                                _ => None,
                            },
                        }),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            Item::Text(_) => None,
        }
    };
    let mut all = groups.iter().map(namespaces);
    let personal = all.next()??;
    let mut others = Vec::new();
    for group in all {
        others.extend(group?);
    }
    Some(Namespaces {
        personal: personal.into_iter().next().unwrap_or_default(),
        others,
    })
}

fn item(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<Item> {
    match chars.next()? {
        '(' => {
            let mut items = Vec::new();
            loop {
                while chars.peek() == Some(&' ') {
                    chars.next();
                }
                if chars.peek() == Some(&')') {
                    chars.next();
                    return Some(Item::List(items));
                }
                items.push(item(chars)?);
            }
        }
        '"' => {
            let mut text = String::new();
            loop {
                match chars.next()? {
                    '\\' => text.push(chars.next()?),
                    '"' => return Some(Item::Text(text)),
                    c => text.push(c),
                }
            }
        }
        c => {
            let mut atom = String::from(c);
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '(' || c == ')' {
                    break;
                }
                atom.push(c);
                chars.next();
            }
            if atom.eq_ignore_ascii_case("NIL") {
                Some(Item::Nil)
            } else {
                Some(Item::Text(atom))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(line: &str) -> Namespaces {
        parse_namespace(line).unwrap_or_else(|| panic!("parses: {line}"))
    }

    #[test]
    fn cyrus_standard_namespace_puts_folders_under_inbox() {
        let n = ns(r#"* NAMESPACE (("INBOX." ".")) (("user." ".")) (("" "."))"#);
        assert_eq!(n.personal.prefix, "INBOX.");
        assert_eq!(n.resolve("Processed"), "INBOX.Processed");
        assert_eq!(
            n.resolve("INBOX.Processed"),
            "INBOX.Processed",
            "already qualified"
        );
        assert_eq!(n.resolve("inbox.Processed"), "inbox.Processed");
        assert_eq!(n.resolve("INBOX"), "INBOX");
        assert_eq!(
            n.resolve("user.other.Processed"),
            "user.other.Processed",
            "another namespace is taken as is"
        );
        assert_eq!(
            n.personal.describe(),
            r#"prefix "INBOX." and separator ".""#
        );
    }

    #[test]
    fn unixhierarchysep_uses_the_slash() {
        let n = ns(r#"* NAMESPACE (("INBOX/" "/")) (("user/" "/")) (("" "/"))"#);
        assert_eq!(n.resolve("Processed"), "INBOX/Processed");
        assert_eq!(n.resolve("Archive/Processed"), "INBOX/Archive/Processed");
    }

    #[test]
    fn an_empty_personal_prefix_keeps_names_as_they_are() {
        for line in [
            r#"* NAMESPACE (("" "/")) NIL NIL"#,
            r#"* NAMESPACE (("" ".")) (("Other Users." ".")) (("Shared Folders." "."))"#,
            r#"* NAMESPACE (("" "/" "X-PARAM" ("FLAG1" "FLAG2"))) NIL NIL"#,
        ] {
            let n = ns(line);
            assert_eq!(n.resolve("Processed"), "Processed", "{line}");
            assert_eq!(n.resolve("[Gmail]/Spam"), "[Gmail]/Spam", "{line}");
        }
    }

    #[test]
    fn a_prefix_without_its_separator_gets_it() {
        let n = Namespaces {
            personal: Namespace {
                prefix: "INBOX".into(),
                delimiter: Some(".".into()),
            },
            others: vec![],
        };
        assert_eq!(n.resolve("Processed"), "INBOX.Processed");
        assert_eq!(n.resolve("INBOX.Done"), "INBOX.Done");
    }

    #[test]
    fn nonsense_is_not_a_namespace() {
        assert_eq!(parse_namespace("* OK hello"), None);
        assert_eq!(parse_namespace(r#"* NAMESPACE (("INBOX." "."#), None);
        assert_eq!(parse_namespace("* NAMESPACE \"x\" NIL NIL"), None);
    }

    #[test]
    fn quoted_escapes_are_read() {
        let n = ns(r#"* NAMESPACE (("a\"b." ".")) NIL NIL"#);
        assert_eq!(n.personal.prefix, "a\"b.");
    }
}
