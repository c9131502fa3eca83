//! The docs stay in step with the code and with each other, without any
//! service running:
//!
//! - the configuration reference in deploy/README.md lists exactly the keys
//!   the config structs accept, found by reading the structs' source under
//!   src/ (wherever they live), so a new key without a row, or a row for a
//!   key that was renamed or removed, breaks this test;
//! - every relative link in the repository's Markdown files leads to a file
//!   that exists and, with an `#anchor`, to a heading of that file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` relative to the repository, with `/` separators, for messages.
fn shown(path: &Path) -> String {
    let rel = path.strip_prefix(repo()).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file under `dir` whose name ends in `ext`, skipping `.git` and
/// build output (any folder named `target`: the crate's and the fuzz
/// workspace's).
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != ".git" && name != "target" {
                files(&path, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------
// The config structs, read from their source.
// ---------------------------------------------------------------------------

/// A token of Rust source: enough of the language to find items, their
/// attributes and their fields. Comments are dropped; strings are kept so
/// that `rename = "form"` can be read and a `{` inside a string does not
/// count as a brace.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            let mut s = String::new();
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() {
                    s.push(c[i]);
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if (ch == 'r' || ch == 'b')
            && matches!(next, Some('#') | Some('"') | Some('r'))
            && raw_string_at(&c, i).is_some()
        {
            let (s, end) = raw_string_at(&c, i).unwrap();
            out.push(Tok::Str(s));
            i = end;
        } else if ch == '\'' {
            // A char literal ('x', '\n', '{') or a lifetime ('a, 'static).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // A raw identifier, r#type, is the identifier.
            if word == "r" && c.get(i) == Some(&'#') {
                continue;
            }
            out.push(Tok::Ident(word));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// A raw string (`r"..."`, `r#"..."#`, `br"..."`) starting at `i`: its
/// content and the index just past it.
fn raw_string_at(c: &[char], mut i: usize) -> Option<(String, usize)> {
    if c.get(i) == Some(&'b') {
        i += 1;
    }
    if c.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if c.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    let start = i;
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return Some((c[start..i].iter().collect(), i + 1 + hashes));
        }
        i += 1;
    }
    None
}

/// The index just past the group opened at `open` (`(`, `[`, `{`).
fn group_end(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// Splits `toks` at commas outside any brackets (`<>` included).
fn split_commas(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < toks.len() {
        parts.push(&toks[start..]);
    }
    parts
}

/// One `#[...]` attribute's tokens, without `#[` and `]`.
type Attr = Vec<Tok>;

/// The items inside `#[serde(...)]` attributes, each as its tokens:
/// `deny_unknown_fields`, `rename = "form"`, `default = "f"`, ...
fn serde_items(attrs: &[Attr]) -> Vec<Vec<Tok>> {
    let mut items = Vec::new();
    for attr in attrs {
        if attr.first() == Some(&Tok::Ident("serde".into()))
            && attr.get(1) == Some(&Tok::Punct('('))
        {
            let inner = &attr[2..attr.len() - 1];
            items.extend(split_commas(inner).into_iter().map(|p| p.to_vec()));
        }
    }
    items
}

fn item_name(item: &[Tok]) -> &str {
    match item.first() {
        Some(Tok::Ident(s)) => s,
        _ => "",
    }
}

/// The string of `name = "value"`, or of `name(deserialize = "value")`.
fn item_value(item: &[Tok]) -> Option<String> {
    match item {
        [Tok::Ident(_), Tok::Punct('='), Tok::Str(s)] => Some(s.clone()),
        [Tok::Ident(_), Tok::Punct('('), inner @ .., Tok::Punct(')')] => split_commas(inner)
            .into_iter()
            .find(|p| item_name(p) == "deserialize")
            .and_then(item_value),
        _ => None,
    }
}

fn derives_deserialize(attrs: &[Attr]) -> bool {
    attrs.iter().any(|a| {
        a.first() == Some(&Tok::Ident("derive".into()))
            && a.contains(&Tok::Ident("Deserialize".into()))
    })
}

#[derive(Debug)]
struct Field {
    ident: String,
    attrs: Vec<Attr>,
    ty: String,
}

#[derive(Debug)]
enum Shape {
    /// `struct Name { fields }`
    Fields(Vec<Field>),
    /// A tuple or unit struct: one value, not a table.
    Value,
    /// An enum; `true` when a variant carries data.
    Enum(bool),
}

#[derive(Debug)]
struct Item {
    file: PathBuf,
    attrs: Vec<Attr>,
    shape: Shape,
}

/// Every struct and enum that derives `Deserialize` in `src`, by name.
/// Several of one name are kept apart; a name the walk meets twice is an
/// error then, not a guess.
fn deserialize_items(src: &str, file: &Path, out: &mut BTreeMap<String, Vec<Item>>) {
    let toks = tokenize(src);
    let mut attrs: Vec<Attr> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('#') => {
                let mut j = i + 1;
                if toks.get(j) == Some(&Tok::Punct('!')) {
                    j += 1;
                }
                if toks.get(j) == Some(&Tok::Punct('[')) {
                    let end = group_end(&toks, j);
                    if j == i + 1 {
                        attrs.push(toks[j + 1..end - 1].to_vec());
                    }
                    i = end;
                    continue;
                }
                attrs.clear();
                i += 1;
            }
            Tok::Ident(w) if w == "pub" => {
                i += 1;
                if toks.get(i) == Some(&Tok::Punct('(')) {
                    i = group_end(&toks, i);
                }
            }
            Tok::Ident(w) if w == "struct" || w == "enum" => {
                let is_enum = w == "enum";
                let Some(Tok::Ident(name)) = toks.get(i + 1).cloned() else {
                    attrs.clear();
                    i += 1;
                    continue;
                };
                // Skip generics and where clauses up to the body.
                let mut j = i + 2;
                while j < toks.len() && !matches!(toks[j], Tok::Punct('{' | '(' | ';')) {
                    j += 1;
                }
                let shape = match toks.get(j) {
                    Some(Tok::Punct('{')) => {
                        let end = group_end(&toks, j);
                        let body = &toks[j + 1..end - 1];
                        if is_enum {
                            let data = split_commas(body).iter().any(|v| {
                                let v = strip_attrs(v).0;
                                v.iter().any(|t| matches!(t, Tok::Punct('(' | '{')))
                            });
                            Shape::Enum(data)
                        } else {
                            Shape::Fields(fields(body))
                        }
                    }
                    _ => Shape::Value,
                };
                if derives_deserialize(&attrs) {
                    out.entry(name).or_default().push(Item {
                        file: file.to_path_buf(),
                        attrs: std::mem::take(&mut attrs),
                        shape,
                    });
                }
                attrs.clear();
                // Items nested in the body (none in a struct) are not read;
                // the scan goes on after the name, so items later in the
                // file are.
                i += 2;
            }
            _ => {
                attrs.clear();
                i += 1;
            }
        }
    }
}

/// Leading `#[...]` attributes of a field or variant, and the rest.
fn strip_attrs(toks: &[Tok]) -> (&[Tok], Vec<Attr>) {
    let mut attrs = Vec::new();
    let mut i = 0;
    while toks.get(i) == Some(&Tok::Punct('#')) && toks.get(i + 1) == Some(&Tok::Punct('[')) {
        let end = group_end(toks, i + 1);
        attrs.push(toks[i + 2..end - 1].to_vec());
        i = end;
    }
    (&toks[i..], attrs)
}

fn fields(body: &[Tok]) -> Vec<Field> {
    let mut out = Vec::new();
    for part in split_commas(body) {
        let (mut rest, attrs) = strip_attrs(part);
        if rest.first() == Some(&Tok::Ident("pub".into())) {
            rest = &rest[1..];
            if rest.first() == Some(&Tok::Punct('(')) {
                rest = &rest[group_end(rest, 0)..];
            }
        }
        let [Tok::Ident(ident), Tok::Punct(':'), ty @ ..] = rest else {
            continue;
        };
        let ty: String = ty
            .iter()
            .map(|t| match t {
                Tok::Ident(s) => s.clone(),
                Tok::Punct(c) => c.to_string(),
                Tok::Str(s) => format!("{s:?}"),
            })
            .collect();
        out.push(Field {
            ident: ident.clone(),
            attrs,
            ty,
        });
    }
    out
}

/// A field's type with `Option<>`, `Box<>` and `Vec<>` taken off and path
/// prefixes dropped: `Option<crate::scan::ScanConfig>` is `ScanConfig`,
/// `Vec<FormConfig>` is `FormConfig` in a list.
fn unwrap_type(ty: &str) -> (String, bool) {
    let mut ty = ty.to_string();
    let mut list = false;
    loop {
        let (head, inner) = match ty.find('<') {
            Some(open) if ty.ends_with('>') => (&ty[..open], Some(&ty[open + 1..ty.len() - 1])),
            _ => (ty.as_str(), None),
        };
        let last = head.rsplit("::").next().unwrap().to_string();
        match (last.as_str(), inner) {
            ("Option" | "Box", Some(inner)) => ty = inner.to_string(),
            ("Vec", Some(inner)) => {
                list = true;
                ty = inner.to_string();
            }
            _ => return (last, list),
        }
    }
}

/// Structs that are one value in the file, not a table of their own. A
/// `Secret` is written `{ env = "NAME" }` or `{ file = "path" }` wherever
/// a secret goes; the reference says so once, in its opening lines, and
/// lists each secret as one key.
const VALUE_STRUCTS: &[&str] = &["Secret"];

fn rename_all(rule: &str, ident: &str) -> String {
    match rule {
        "snake_case" => ident.to_string(),
        "kebab-case" => ident.replace('_', "-"),
        "lowercase" => ident.to_lowercase(),
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => ident.to_uppercase(),
        "SCREAMING-KEBAB-CASE" => ident.to_uppercase().replace('_', "-"),
        other => panic!("rename_all = {other:?} on a config struct: teach tests/docs.rs this rule"),
    }
}

/// The keys the struct `name` accepts under `prefix`, into `out` (key ->
/// the struct and file that accept it). Fields whose type is another
/// derived struct are tables and are walked; anything else is one key.
fn walk(
    items: &BTreeMap<String, Vec<Item>>,
    name: &str,
    prefix: &str,
    stack: &mut Vec<String>,
    out: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    let item = &items[name][0];
    let Shape::Fields(fields) = &item.shape else {
        unreachable!("walk is only called for structs with fields")
    };
    let where_ = format!("{name} in {}", shown(&item.file));
    let container = serde_items(&item.attrs);
    if !container
        .iter()
        .any(|i| item_name(i) == "deny_unknown_fields")
    {
        problems.push(format!(
            "{where_} lacks #[serde(deny_unknown_fields)]: it would ignore unknown keys, \
             so the keys it \"accepts\" are not a closed set"
        ));
    }
    for i in &container {
        if matches!(
            item_name(i),
            "from" | "try_from" | "transparent" | "untagged" | "tag" | "remote"
        ) {
            problems.push(format!(
                "{where_} has #[serde({})]: its keys are not its fields; teach tests/docs.rs",
                item_name(i)
            ));
        }
    }
    let rule = container
        .iter()
        .find(|i| item_name(i) == "rename_all")
        .and_then(|i| item_value(i));
    stack.push(name.to_string());
    for field in fields {
        let attrs = serde_items(&field.attrs);
        let has = |n: &str| attrs.iter().any(|i| item_name(i) == n);
        if has("skip") || has("skip_deserializing") {
            continue;
        }
        let (ty, list) = unwrap_type(&field.ty);
        let target = items.get(&ty);
        if let Some(found) = target {
            if found.len() > 1 {
                let files: Vec<_> = found.iter().map(|i| shown(&i.file)).collect();
                problems.push(format!(
                    "{where_}: field `{}` has type {ty}, and a struct or enum of that name \
                     derives Deserialize in several files ({}); give them distinct names",
                    field.ident,
                    files.join(", ")
                ));
                continue;
            }
        }
        let table = match target.map(|v| &v[0].shape) {
            Some(Shape::Fields(_)) if !VALUE_STRUCTS.contains(&ty.as_str()) => true,
            Some(Shape::Enum(true)) => {
                problems.push(format!(
                    "{where_}: field `{}` is the enum {ty}, whose variants carry data; \
                     the keys it accepts are not enumerated by tests/docs.rs",
                    field.ident
                ));
                continue;
            }
            _ => false,
        };
        if has("flatten") {
            if table && !stack.contains(&ty) {
                walk(items, &ty, prefix, stack, out, problems);
            } else {
                problems.push(format!(
                    "{where_}: field `{}` is #[serde(flatten)] over {ty}, which is not a \
                     struct with fields; its keys cannot be listed",
                    field.ident
                ));
            }
            continue;
        }
        let main = attrs
            .iter()
            .find(|i| item_name(i) == "rename")
            .and_then(|i| item_value(i))
            .unwrap_or_else(|| match &rule {
                Some(rule) => rename_all(rule, &field.ident),
                None => field.ident.clone(),
            });
        let aliases = attrs
            .iter()
            .filter(|i| item_name(i) == "alias")
            .filter_map(|i| item_value(i));
        for key_name in std::iter::once(main).chain(aliases) {
            let key = format!("{prefix}{key_name}");
            if table {
                if stack.contains(&ty) {
                    problems.push(format!("{where_}: `{key}` nests {ty} in itself"));
                    continue;
                }
                let sub = if list {
                    format!("{key}[].")
                } else {
                    format!("{key}.")
                };
                walk(items, &ty, &sub, stack, out, problems);
            } else {
                out.insert(key, where_.clone());
            }
        }
    }
    stack.pop();
}

/// The keys the config file accepts, found from `Config` through the
/// source of every file under src/.
fn accepted_keys() -> BTreeMap<String, String> {
    let mut sources = Vec::new();
    files(&repo().join("src"), ".rs", &mut sources);
    let mut items = BTreeMap::new();
    for file in &sources {
        let text = fs::read_to_string(file).unwrap();
        deserialize_items(&text, file, &mut items);
    }
    for name in VALUE_STRUCTS {
        assert!(
            items.contains_key(*name),
            "tests/docs.rs treats the struct {name} as one value, but no struct of that \
             name derives Deserialize under src/ any more: update VALUE_STRUCTS"
        );
    }
    let roots: Vec<_> = items
        .get("Config")
        .map(|v| v.iter().map(|i| shown(&i.file)).collect())
        .unwrap_or_default();
    assert_eq!(
        roots.len(),
        1,
        "one struct named Config derives Deserialize under src/ (found in: {roots:?})"
    );
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    walk(
        &items,
        "Config",
        "",
        &mut Vec::new(),
        &mut out,
        &mut problems,
    );
    assert!(
        problems.is_empty(),
        "the config structs cannot be read:\n  {}",
        problems.join("\n  ")
    );
    out
}

// ---------------------------------------------------------------------------
// Markdown.
// ---------------------------------------------------------------------------

/// The lines of a Markdown file outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        let is_fence =
            marker.len() >= 3 && marker.chars().all(|c| c == marker.chars().next().unwrap());
        match &fence {
            Some(open) => {
                if is_fence
                    && marker.starts_with(open.as_str())
                    && trimmed[marker.len()..].trim().is_empty()
                {
                    fence = None;
                }
            }
            None if is_fence => fence = Some(marker),
            None => out.push((n + 1, line)),
        }
    }
    out
}

/// `line` with inline code spans blanked out (links inside them are text).
fn without_code_spans(line: &str) -> String {
    let c: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        if c[i] == '`' {
            let run = c[i..].iter().take_while(|ch| **ch == '`').count();
            // The closing run of the same length.
            let mut j = i + run;
            let mut close = None;
            while j < c.len() {
                if c[j] == '`' {
                    let r = c[j..].iter().take_while(|ch| **ch == '`').count();
                    if r == run {
                        close = Some(j);
                        break;
                    }
                    j += r;
                } else {
                    j += 1;
                }
            }
            match close {
                Some(j) => {
                    out.push_str(&" ".repeat(j + run - i));
                    i = j + run;
                }
                None => {
                    out.extend(&c[i..i + run]);
                    i += run;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The ATX headings of a Markdown file, as GitHub makes their anchors:
/// the text as shown (code spans and links as their text), lower case,
/// punctuation dropped except `-` and `_`, each space a `-`; a repeated
/// anchor gets `-1`, `-2`, ... HTML `id` and `name` anchors count too.
fn anchors(text: &str) -> BTreeSet<String> {
    headings(text).0
}

/// The anchors of a file (see [`anchors`]), and those that several
/// headings share before GitHub numbers them: a link to one of these
/// reaches the first heading, which may not be the one meant.
fn headings(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        for key in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(key) {
                let rest = &line[at + key.len()..];
                if let Some(end) = rest.find('"') {
                    if line[..at].contains('<') {
                        out.insert(rest[..end].to_string());
                    }
                }
            }
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || line.len() > hashes && !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let shown = link_texts(title);
        let slug: String = shown
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    let shared = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(slug, _)| slug)
        .collect();
    (out, shared)
}

/// `[text](target)` as `text`.
fn link_texts(s: &str) -> String {
    let mut out = s.to_string();
    while let Some((start, text, end)) = next_link(&out, 0).map(|l| (l.start, l.text, l.end)) {
        out.replace_range(start..end, &text);
    }
    out
}

struct Link {
    start: usize,
    end: usize,
    text: String,
    target: String,
}

/// The first inline link `[text](target)` (or image) in `s` at or after
/// byte `from`.
fn next_link(s: &str, from: usize) -> Option<Link> {
    let b = s.as_bytes();
    let mut i = from;
    while let Some(off) = s[i..].find("](") {
        let close = i + off;
        // The `[` that opens this text, brackets balanced.
        let mut depth = 0;
        let mut open = None;
        for k in (from..close).rev() {
            match b[k] {
                b']' => depth += 1,
                b'[' if depth == 0 => {
                    open = Some(k);
                    break;
                }
                b'[' => depth -= 1,
                _ => {}
            }
        }
        // The `)` that ends the target, parentheses balanced.
        let mut depth = 0;
        let mut end = None;
        for (k, ch) in s[close + 2..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(close + 2 + k);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        match (open, end) {
            (Some(open), Some(end)) => {
                let start = if open > 0 && b[open - 1] == b'!' {
                    open - 1
                } else {
                    open
                };
                let mut target = s[close + 2..end].trim();
                // An optional title: [text](path "title").
                if let Some(sp) = target.find(" \"") {
                    target = target[..sp].trim();
                }
                let target = target.trim_start_matches('<').trim_end_matches('>');
                return Some(Link {
                    start,
                    end: end + 1,
                    text: s[open + 1..close].to_string(),
                    target: target.to_string(),
                });
            }
            _ => i = close + 2,
        }
    }
    None
}

/// Every link target in a Markdown file, with its line: inline links and
/// images outside code, and reference definitions (`[name]: target`).
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[') {
            if let Some(close) = rest.find("]:") {
                if !rest[..close].contains('[') {
                    let target = rest[close + 2..].split_whitespace().next().unwrap_or("");
                    out.push((n, target.trim_matches(&['<', '>'][..]).to_string()));
                    continue;
                }
            }
        }
        let mut from = 0;
        while let Some(link) = next_link(&line, from) {
            out.push((n, link.target));
            from = link.end;
        }
    }
    out
}

fn is_external(target: &str) -> bool {
    // A scheme: letters, digits, `+`, `.`, `-` before a `:`, as in
    // `https:`, `mailto:`.
    match target.find(':') {
        Some(colon) => {
            let scheme = &target[..colon];
            !scheme.is_empty()
                && scheme.chars().next().unwrap().is_ascii_alphabetic()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        }
        None => false,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with `.` and `..` resolved, or None when it climbs out of the
/// repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let root = repo();
    let rel = path.strip_prefix(&root).ok()?;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(p) => parts.push(p),
            _ => return None,
        }
    }
    Some(parts.iter().fold(root, |p, part| p.join(part)))
}

/// One problem with one link, or None when it leads where it says.
fn check_link(file: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let path = percent_decode(path);
    let dest = if path.is_empty() {
        file.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        repo().join(from_root)
    } else {
        file.parent().unwrap().join(&path)
    };
    let Some(dest) = normalize(&dest) else {
        return Some("leads outside the repository".into());
    };
    if !dest.exists() {
        return Some(format!("{} does not exist", shown(&dest)));
    }
    let anchor = anchor?;
    if anchor.is_empty() {
        return Some("has an empty #anchor".into());
    }
    if dest.is_dir() {
        return Some(format!(
            "{} is a folder: link its README.md for #{anchor}",
            shown(&dest)
        ));
    }
    if dest.extension().and_then(|e| e.to_str()) != Some("md") {
        // GitHub's line anchors on source files: #L10, #L10-L20.
        let line = |s: &str| {
            s.strip_prefix('L')
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        };
        let ok = match anchor.split_once('-') {
            Some((a, b)) => line(a) && line(b),
            None => line(anchor),
        };
        return (!ok).then(|| {
            format!(
                "#{anchor}: {} is not Markdown, and only line anchors (#L10, #L10-L20) \
                 lead into it",
                shown(&dest)
            )
        });
    }
    let text = fs::read_to_string(&dest).unwrap();
    let (found, shared) = headings(&text);
    let anchor = percent_decode(anchor);
    if !found.contains(&anchor) {
        return Some(format!(
            "no heading in {} has the anchor #{anchor} (its anchors: {})",
            shown(&dest),
            found.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    shared.contains(&anchor).then(|| {
        format!(
            "several headings in {} make the anchor #{anchor} (GitHub numbers the \
             others #{anchor}-1, ...); the link reaches the first: give the headings \
             distinct names",
            shown(&dest)
        )
    })
}

/// The configuration reference: the tables under `## Configuration` in
/// deploy/README.md whose first column is headed `key`. Each row's first
/// cell is one key in backticks, spelled in full
/// (`form[].retry_window`, `http.tls.cert`); the key -> its line.
fn documented_keys() -> (BTreeMap<String, usize>, Vec<String>) {
    let path = "deploy/README.md";
    let text = fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines = prose_lines(&text);
    let start = lines
        .iter()
        .position(|(_, l)| l.trim_end() == "## Configuration")
        .unwrap_or_else(|| panic!("{path} has no `## Configuration` section"));
    let mut keys = BTreeMap::new();
    let mut problems = Vec::new();
    let mut in_table = false;
    let mut header_seen = false;
    for (n, line) in &lines[start + 1..] {
        if line.starts_with("# ") || line.starts_with("## ") {
            break;
        }
        if !line.starts_with('|') {
            in_table = false;
            header_seen = false;
            continue;
        }
        let first = line[1..].split('|').next().unwrap_or("").trim();
        if !header_seen {
            header_seen = true;
            in_table = first == "key";
            continue;
        }
        if !in_table || first.chars().all(|c| c == '-' || c == ':') {
            continue;
        }
        let key = first
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .filter(|k| !k.is_empty() && !k.contains('`') && !k.contains(' '));
        match key {
            Some(key) => {
                if let Some(before) = keys.insert(key.to_string(), *n) {
                    problems.push(format!(
                        "{path}:{n}: `{key}` has a row already, at line {before}"
                    ));
                }
            }
            None => problems.push(format!(
                "{path}:{n}: the first cell must be one key in backticks, spelled in full \
                 (`http.listen`, `form[].id`); it is {first:?}"
            )),
        }
    }
    (keys, problems)
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// Every key a config struct accepts has a row in the reference, and every
/// row names a key the structs accept. The structs are found by reading
/// every file under src/: from `Config`, each field is a key (its
/// `#[serde(rename)]` name, and its aliases), and a field whose type (with
/// Option, Vec and Box taken off) is another struct deriving Deserialize
/// is a table whose fields are keys under it (`http.tls.cert`; a list of
/// tables is `form[].id`). Other types (strings, numbers, durations, byte
/// sizes, lists of values, maps, plain enums, and a `Secret`) are one key.
#[test]
fn config_reference_lists_every_key_the_config_accepts() {
    let accepted = accepted_keys();
    assert!(
        accepted.len() > 50,
        "the walk from Config found only {} keys: {:?}",
        accepted.len(),
        accepted.keys().collect::<Vec<_>>()
    );
    let (documented, mut problems) = documented_keys();
    for (key, owner) in &accepted {
        if !documented.contains_key(key) {
            problems.push(format!(
                "deploy/README.md: no row for `{key}` (accepted by {owner}) in the \
                 Configuration tables"
            ));
        }
    }
    for (key, line) in &documented {
        if !accepted.contains_key(key) {
            problems.push(format!(
                "deploy/README.md:{line}: `{key}` is not a key the config accepts \
                 (renamed or removed? no config struct under src/ has it)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the configuration reference is out of step with the config structs:\n  {}",
        problems.join("\n  ")
    );
}

/// Every relative link in every Markdown file of the repository (build
/// output aside) leads to a file or folder that exists, inside the
/// repository, and a link with `#anchor` to a heading of that file (as
/// GitHub makes anchors). http:, https:, mailto: and other schemes are not
/// followed.
#[test]
fn markdown_links_lead_to_files_and_headings_that_exist() {
    let mut docs = Vec::new();
    files(&repo(), ".md", &mut docs);
    for expected in [
        "README.md",
        "deploy/README.md",
        "deploy/bench/README.md",
        "rules/README.md",
        "tests/README.md",
    ] {
        assert!(
            docs.contains(&repo().join(expected)),
            "{expected} is missing"
        );
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in &docs {
        let text = fs::read_to_string(file).unwrap();
        for (line, target) in link_targets(&text) {
            if is_external(&target) {
                continue;
            }
            checked += 1;
            if target.is_empty() {
                problems.push(format!("{}:{line}: a link with no target", shown(file)));
            } else if let Some(problem) = check_link(file, &target) {
                problems.push(format!(
                    "{}:{line}: link `{target}`: {problem}",
                    shown(file)
                ));
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found");
    assert!(
        problems.is_empty(),
        "broken links in the Markdown files:\n  {}",
        problems.join("\n  ")
    );
}

/// The Markdown helpers themselves, on the cases the docs use.
#[test]
fn markdown_helpers_read_links_and_anchors_as_github_does() {
    let text = "# intake\n\n## Identities: who an item is from\n\n```\n## not a heading\n```\n\
                ### `[http]`: the public listener\n## Tests\n## Tests\n";
    let found = anchors(text);
    for a in [
        "intake",
        "identities-who-an-item-is-from",
        "http-the-public-listener",
        "tests",
        "tests-1",
    ] {
        assert!(found.contains(a), "{a} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
    let links = link_targets(
        "See [A](deploy/README.md#imap), `[not](a-link)`, ![img](x.png) and \
         [B (b)](tests/README.md).\n[ref]: rules/README.md\n```\n[c](nowhere)\n```\n",
    );
    let targets: Vec<_> = links.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        targets,
        [
            "deploy/README.md#imap",
            "x.png",
            "tests/README.md",
            "rules/README.md"
        ]
    );
    assert!(is_external("https://example.com/x"));
    assert!(is_external("mailto:a@b"));
    assert!(!is_external("deploy/README.md#a:b"));
    assert_eq!(
        unwrap_type("Option<Vec<crate::sources::imap::ImapConfig>>"),
        ("ImapConfig".to_string(), true)
    );
    assert_eq!(
        unwrap_type("HashMap<String,String>"),
        ("HashMap".to_string(), false)
    );
}

/// The struct reader on a made-up config: renames, aliases, flatten,
/// wrappers and paths, a value struct, a table nested in a list, a
/// derive on a struct of another file, and what it refuses to guess.
#[test]
fn config_walk_reads_structs_as_serde_does() {
    let root = r#"
        use serde::Deserialize;
        /// The whole configuration.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Config {
            #[serde(default)]
            pub http: HttpConfig,
            #[serde(default, rename = "form")]
            pub forms: Vec<FormConfig>,
            #[serde(default)]
            pub scan: Option<crate::scan::ScanConfig>,
            pub(crate) token: Option<Secret>,
            #[serde(skip)]
            pub loaded_from: String,
        }
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct HttpConfig {
            /// Address; "{" in a comment is no brace.
            #[serde(default = "default_listen")]
            pub listen: std::net::SocketAddr,
            pub tls: Option<Box<TlsConfig>>,
            #[serde(alias = "header_limit")]
            pub max_headers: usize,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TlsConfig { cert: PathBuf, key: PathBuf }
        #[derive(Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Secret { env: Option<String>, file: Option<PathBuf> }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FormConfig {
            pub id: String,
            pub fields: HashMap<String, Vec<String>>,
            pub mode: Mode,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Mode { Off, On }
        fn default_listen() -> SocketAddr { "127.0.0.1:8080".parse().unwrap() }
    "#;
    let scan = r#"
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct ScanConfig {
            pub max_size: ByteSize,
            #[serde(flatten)]
            pub limits: ArchiveLimits,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ArchiveLimits { pub max_depth: u8, pub ratio: u64 }
        pub struct ByteSize(pub u64);
    "#;
    let mut items = BTreeMap::new();
    deserialize_items(root, &repo().join("src/config.rs"), &mut items);
    deserialize_items(scan, &repo().join("src/scan/config.rs"), &mut items);
    let mut keys = BTreeMap::new();
    let mut problems = Vec::new();
    walk(
        &items,
        "Config",
        "",
        &mut Vec::new(),
        &mut keys,
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        keys.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "form[].fields",
            "form[].id",
            "form[].mode",
            "http.header_limit",
            "http.listen",
            "http.max_headers",
            "http.tls.cert",
            "http.tls.key",
            "scan.max-size",
            "scan.max_depth",
            "scan.ratio",
            "token",
        ]
    );
    assert_eq!(keys["http.tls.cert"], "TlsConfig in src/config.rs");

    // What it does not guess: a table without deny_unknown_fields, an
    // enum whose variants carry data.
    let odd = r#"
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Config { pub a: Loose, pub b: Choice }
        #[derive(Deserialize)]
        pub struct Loose { pub x: u8 }
        #[derive(Deserialize)]
        pub enum Choice { Tcp { host: String }, Unix(PathBuf) }
    "#;
    let mut items = BTreeMap::new();
    deserialize_items(odd, &repo().join("src/config.rs"), &mut items);
    let mut problems = Vec::new();
    walk(
        &items,
        "Config",
        "",
        &mut Vec::new(),
        &mut BTreeMap::new(),
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("Loose") && problems[0].contains("deny_unknown_fields"));
    assert!(problems[1].contains("Choice") && problems[1].contains("carry data"));
}
