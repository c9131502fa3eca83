//! The acknowledgement templates: `<language>.txt` (a `Subject:` line, a
//! blank line, the text) and an optional `<language>.html` beside it, in
//! the folder `acknowledge.templates` names. All are read and checked at
//! start; a mistake stops the gateway with the file and line.
//!
//! The syntax is the least a help-desk template needs:
//! - `{{name}}` is a variable ([`VARIABLES`]); in the HTML part it is
//!   escaped.
//! - `{{#name}}...{{/name}}` is kept only when `name` has a value (the
//!   desk's ticket number is known only once its delivery made the
//!   ticket), `{{^name}}...{{/name}}` only when it has none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The variables a template may use, and what each holds.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "receipt",
        "the receipt id (the reference the customer quotes)",
    ),
    (
        "subject",
        "the customer's subject (a form's `subject` field), empty when none",
    ),
    ("name", "the customer's name, empty when unknown"),
    (
        "email",
        "the customer's address (where the acknowledgement goes)",
    ),
    (
        "ticket",
        "the desk's ticket number, when a delivery already made it",
    ),
    (
        "received_at",
        "when intake took the message (RFC 3339, UTC)",
    ),
    ("form", "the form id, for a form post"),
];

/// A template that does not load: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct TemplateError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Var(String),
    Section {
        name: String,
        inverted: bool,
        body: Vec<Node>,
    },
}

/// One parsed template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Node>);

/// How a variable's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is (text, headers).
    None,
    /// `&`, `<`, `>`, `"`, `'` as entities.
    Html,
}

impl Template {
    /// Parses `text`; lines are counted from `first_line` for errors.
    pub fn parse(text: &str, file: &Path, first_line: usize) -> Result<Template, TemplateError> {
        let error = |offset: usize, message: String| TemplateError {
            file: file.to_owned(),
            line: first_line + text[..offset].matches('\n').count(),
            message,
        };
        // Open sections: (name, inverted, the nodes before it, its offset).
        let mut stack: Vec<(String, bool, Vec<Node>, usize)> = Vec::new();
        let mut nodes = Vec::new();
        let mut rest = 0;
        while let Some(found) = text[rest..].find("{{") {
            let open = rest + found;
            if open > rest {
                nodes.push(Node::Text(text[rest..open].to_string()));
            }
            let Some(len) = text[open + 2..].find("}}") else {
                return Err(error(open, "`{{` is not closed by `}}`".into()));
            };
            let tag = text[open + 2..open + 2 + len].trim();
            rest = open + 2 + len + 2;
            let (sigil, name) = match tag.chars().next() {
                Some(c @ ('#' | '^' | '/')) => (Some(c), tag[1..].trim()),
                _ => (None, tag),
            };
            if !VARIABLES.iter().any(|(known, _)| *known == name) {
                let known: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
                return Err(error(
                    open,
                    format!(
                        "unknown variable `{name}` in `{{{{{tag}}}}}`; the variables are {}",
                        known.join(", ")
                    ),
                ));
            }
            match sigil {
                None => nodes.push(Node::Var(name.to_string())),
                Some(c @ ('#' | '^')) => {
                    let before = std::mem::take(&mut nodes);
                    stack.push((name.to_string(), c == '^', before, open));
                }
                Some(_) => {
                    let Some((open_name, inverted, before, _)) = stack.pop() else {
                        return Err(error(open, format!("`{{{{/{name}}}}}` closes no section")));
                    };
                    if open_name != name {
                        return Err(error(
                            open,
                            format!("`{{{{/{name}}}}}` closes `{open_name}`; close it with `{{{{/{open_name}}}}}`"),
                        ));
                    }
                    let body = std::mem::replace(&mut nodes, before);
                    nodes.push(Node::Section {
                        name: open_name,
                        inverted,
                        body,
                    });
                }
            }
        }
        if let Some((name, _, _, offset)) = stack.pop() {
            return Err(error(
                offset,
                format!("section `{name}` is not closed; end it with `{{{{/{name}}}}}`"),
            ));
        }
        if rest < text.len() {
            nodes.push(Node::Text(text[rest..].to_string()));
        }
        Ok(Template(nodes))
    }

    pub fn render(&self, vars: &BTreeMap<&str, String>, escape: Escape) -> String {
        let mut out = String::new();
        render(&self.0, vars, escape, &mut out);
        out
    }
}

fn render(nodes: &[Node], vars: &BTreeMap<&str, String>, escape: Escape, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Var(name) => {
                let value = vars.get(name.as_str()).map_or("", String::as_str);
                match escape {
                    Escape::None => out.push_str(value),
                    Escape::Html => html_escape(value, out),
                }
            }
            Node::Section {
                name,
                inverted,
                body,
            } => {
                let set = vars.get(name.as_str()).is_some_and(|v| !v.is_empty());
                if set != *inverted {
                    render(body, vars, escape, out);
                }
            }
        }
    }
}

fn html_escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// One language's templates.
#[derive(Debug, Clone)]
pub struct Templates {
    pub subject: Template,
    pub text: Template,
    pub html: Option<Template>,
}

/// Every language found in `dir`, by tag (`es`, `en`).
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Templates>, TemplateError> {
    let at_dir = |message: String| TemplateError {
        file: dir.to_owned(),
        line: 0,
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        at_dir(format!(
            "cannot read the templates folder ({e}); set acknowledge.templates to a folder holding es.txt and en.txt"
        ))
    })?;
    let mut languages = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| at_dir(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let Some(tag) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !super::config::is_language(tag) {
            continue;
        }
        languages.insert(tag.to_ascii_lowercase(), load_language(&path)?);
    }
    Ok(languages)
}

/// `<tag>.txt` and, when present, `<tag>.html`.
pub fn load_language(txt: &Path) -> Result<Templates, TemplateError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| TemplateError {
            file: path.to_owned(),
            line: 0,
            message: format!("cannot read: {e}"),
        })
    };
    let text = read(txt)?;
    let text = text.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let mut subject = None;
    for (i, line) in head.lines().enumerate() {
        match line.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("subject") => {
                subject = Some(Template::parse(value.trim(), txt, i + 1)?);
            }
            _ => {
                return Err(TemplateError {
                    file: txt.to_owned(),
                    line: i + 1,
                    message: format!(
                        "`{line}`: the file starts with a `Subject:` line, then a blank line, then the text"
                    ),
                })
            }
        }
    }
    let Some(subject) = subject else {
        return Err(TemplateError {
            file: txt.to_owned(),
            line: 1,
            message: "no `Subject:` line; start the file with one, then a blank line".into(),
        });
    };
    if body.trim().is_empty() {
        return Err(TemplateError {
            file: txt.to_owned(),
            line: head.lines().count() + 2,
            message: "the text after the blank line is empty".into(),
        });
    }
    let body_line = head.lines().count() + 2;
    let text_template = Template::parse(body, txt, body_line)?;
    let html_path = txt.with_extension("html");
    let html = if html_path.exists() {
        let html = read(&html_path)?;
        Some(Template::parse(&html, &html_path, 1)?)
    } else {
        None
    };
    Ok(Templates {
        subject,
        text: text_template,
        html,
    })
}
