//! The crate's shape, checked from its source with no service running
//! (issue 16), so that CI keeps it without any file from outside the
//! repository:
//!
//! - imports between the files of src/ run one way: no circle of files
//!   that reach each other (`no_import_circles`);
//! - no Rust file in src/ is over 700 lines, inline tests included;
//! - only the top of the crate (config.rs, serve.rs, admin.rs, cli/) reads
//!   the aggregate `crate::config`; every other module takes its own
//!   section's config;
//! - only the pipeline and the sink build the sink's `Entry`.
//!
//! Imports are counted by the rules of the issue's `module-cycles` tool, so
//! that the two find the same circles, but read with a tokenizer rather
//! than regular expressions: comments and string, char and raw string
//! literals can neither hide code nor fake a path. Where the tool's
//! expressions misread the source (a `'"'` char literal that shifts its
//! string matching and with it the end of the code, `pub(crate) mod tests`,
//! a nested group, `super::` inside an inline module), this reads it as the
//! compiler does. The rules:
//!
//! - every `crate::`, `super::` or `self::` path in a file's code is an
//!   import: in `use` declarations, grouped ones (`use crate::{a, b::{c,
//!   d}}`) and globs (`use super::*`) included, and inline
//!   (`crate::guard::Guard::new(..)`). It imports the file that defines
//!   the longest module prefix of the path (`crate::guard::Guard` is
//!   src/guard/mod.rs); the name that ties the pair is the item right after
//!   that prefix (`Guard`), or the module itself when the path ends there
//!   (`use crate::parse::{self, ..}`);
//! - `mod child;` and bare relative paths (`child::X`) are not imports: a
//!   module owning its children is not a dependency on them. A `crate::` or
//!   `self::` path from a parent into its child is, like any other path;
//! - code under `#[cfg(test)]` does not count (tests may reach anywhere),
//!   nor does a file declared with `#[cfg(test)] mod name;`;
//! - `super::` inside an inline `mod name { .. }` is relative to that
//!   module;
//! - src/main.rs is the binary's own crate root: it reaches the library as
//!   `intake::`, from above everything, so it cannot close a circle.
//!
//! `MODULE_CYCLES_EDGES=1 cargo test --test module_cycles -- --nocapture`
//! also prints every file -> file edge, as `module-cycles --edges` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Lines a file in src/ may have, its inline tests included.
const MAX_LINES: usize = 700;

/// The modules (and their children) that may read the aggregate
/// `crate::config`: the top of the crate.
const CONFIG_READERS: [&str; 4] = ["config", "serve", "admin", "cli"];

/// The modules (and their children) that may build a `crate::sink::Entry`.
const ENTRY_BUILDERS: [&str; 2] = ["pipeline", "sink"];

// ---------------------------------------------------------------------------
// Tokens.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ident,
    Punct,
    Lifetime,
    /// A string, char, byte or number literal: never part of a path.
    Literal,
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    text: String,
    line: usize,
}

/// Punctuation read as one token, longest first. `::` matters for paths;
/// the rest so that `Entry { .. } == x` is not read as `Entry { .. } = x`.
const PUNCTS: [&str; 12] = [
    "..=", "...", "::", "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "..",
];

fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let start = i;
        let start_line = line;
        let kind;
        if ch == '\n' {
            line += 1;
            i += 1;
            continue;
        } else if ch.is_whitespace() {
            i += 1;
            continue;
        } else if ch == '/' && next == Some('/') {
            // Line comments, doc comments included: `/// [crate::x]` is a
            // link in the docs, not an import.
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        } else if ch == '/' && next == Some('*') {
            // Block comments nest in Rust.
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
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        } else if ch.is_alphabetic() || ch == '_' {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let after = c.get(i).copied();
            match (word.as_str(), after) {
                ("b" | "c", Some('"')) => {
                    i = string_end(&c, i, &mut line);
                    kind = Kind::Literal;
                }
                ("b", Some('\'')) => {
                    i = char_end(&c, i).unwrap_or(i + 1);
                    kind = Kind::Literal;
                }
                ("r" | "br" | "cr", Some('"' | '#')) if raw_string_end(&c, i).is_some() => {
                    let end = raw_string_end(&c, i).unwrap();
                    line += c[i..end].iter().filter(|&&x| x == '\n').count();
                    i = end;
                    kind = Kind::Literal;
                }
                ("r", Some('#')) => {
                    // A raw identifier, r#type, is the identifier.
                    let s = i + 1;
                    i = s;
                    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                        i += 1;
                    }
                    out.push(Tok {
                        kind: Kind::Ident,
                        text: c[s..i].iter().collect(),
                        line,
                    });
                    continue;
                }
                _ => kind = Kind::Ident,
            }
        } else if ch.is_ascii_digit() {
            // 1_000u64, 0x1F, 1.5e3; `1..2` keeps its range.
            loop {
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                if c.get(i) == Some(&'.') && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                } else {
                    break;
                }
            }
            kind = Kind::Literal;
        } else if ch == '"' {
            i = string_end(&c, i, &mut line);
            kind = Kind::Literal;
        } else if ch == '\'' {
            // A char literal ('x', '"', '\'', '\u{1F600}') or a lifetime or
            // label ('a, 'static, 'outer:).
            match char_end(&c, i) {
                Some(end) => {
                    i = end;
                    kind = Kind::Literal;
                }
                None => {
                    i += 1;
                    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                        i += 1;
                    }
                    kind = Kind::Lifetime;
                }
            }
        } else {
            let rest: String = c[i..(i + 3).min(c.len())].iter().collect();
            let len = PUNCTS
                .iter()
                .find(|p| rest.starts_with(*p))
                .map_or(1, |p| p.len());
            i += len;
            kind = Kind::Punct;
        }
        out.push(Tok {
            kind,
            text: if kind == Kind::Literal {
                String::new()
            } else {
                c[start..i].iter().collect()
            },
            line: start_line,
        });
    }
    out
}

/// The index just past the string literal whose opening `"` is at `i`.
fn string_end(c: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            ch => {
                if ch == '\n' {
                    *line += 1;
                }
                i += 1;
            }
        }
    }
    c.len()
}

/// The index just past the char literal whose `'` is at `i`, or None
/// when that `'` starts a lifetime or a label.
fn char_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        // Skip the escaped char (so '\'' and '\\' end where they should),
        // then whatever else the escape holds (\x41, \u{..}).
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' && c[j] != '\n' {
            j += 1;
        }
        Some(j + 1)
    } else if c.get(i + 1).is_some() && c.get(i + 2) == Some(&'\'') {
        Some(i + 3)
    } else {
        None
    }
}

/// The index just past a raw string (`r"..."`, `r#"..."#`) whose hashes
/// or opening quote are at `i` (just after the `r`, `br` or `cr`).
fn raw_string_end(c: &[char], mut i: usize) -> Option<usize> {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if c.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(c.len())
}

/// The text of token `i`, or "" past the end (and for literals).
fn at(toks: &[Tok], i: usize) -> &str {
    toks.get(i).map_or("", |t| t.text.as_str())
}

fn is_ident(toks: &[Tok], i: usize) -> bool {
    toks.get(i).is_some_and(|t| t.kind == Kind::Ident)
}

/// The index just past the group opened at `open` (`(`, `[`, `{`).
fn group_end(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

// ---------------------------------------------------------------------------
// A file's production code: `#[cfg(test)]` items dropped, inline modules
// known.
// ---------------------------------------------------------------------------

/// A file's tokens outside `#[cfg(test)]`.
#[derive(Debug, Default)]
struct Code {
    toks: Vec<Tok>,
    /// For each token, the index in `scopes` of the inline modules it is
    /// in (relative to the file's module; `scopes[0]` is the file itself).
    scope: Vec<usize>,
    scopes: Vec<Vec<String>>,
    /// Child modules declared `#[cfg(test)] mod name;` (relative to the
    /// file's module): files of their own that only tests compile.
    test_children: Vec<Vec<String>>,
    /// `#![cfg(test)]` at the top: the whole file is test code.
    test_only: bool,
}

/// Keywords that start an item: a `#[cfg(test)]` item ends at its `;` or
/// its closing `}`. Anything else under the attribute (a field, a match
/// arm, a statement) may also end at a `,`.
const ITEM_KEYWORDS: [&str; 15] = [
    "fn",
    "mod",
    "impl",
    "struct",
    "enum",
    "trait",
    "use",
    "const",
    "static",
    "type",
    "union",
    "extern",
    "macro_rules",
    "async",
    "unsafe",
];

/// The index just past the item (or field, arm, statement) that starts at
/// `i`, under a `#[cfg(test)]` just before it.
fn item_end(toks: &[Tok], i: usize) -> usize {
    let mut k = i;
    if at(toks, k) == "pub" {
        k += 1;
        if at(toks, k) == "(" {
            k = group_end(toks, k);
        }
    }
    let item = ITEM_KEYWORDS.contains(&at(toks, k));
    let mut depth = 0i32;
    for (j, t) in toks.iter().enumerate().skip(i) {
        if t.kind != Kind::Punct {
            continue;
        }
        match t.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth < 0 {
                    // The enclosing block ends: it was the last thing in it.
                    return j;
                }
                if depth == 0 && t.text == "}" {
                    return j + 1;
                }
            }
            ";" if depth == 0 => return j + 1,
            "," if depth == 0 && !item => return j + 1,
            _ => {}
        }
    }
    toks.len()
}

/// `#[cfg(test)]` (or `#![cfg(test)]`) at `i`: the index just past it and
/// whether it is the inner form.
fn cfg_test_at(toks: &[Tok], i: usize) -> Option<(usize, bool)> {
    if at(toks, i) != "#" {
        return None;
    }
    let inner = at(toks, i + 1) == "!";
    let open = if inner { i + 2 } else { i + 1 };
    if at(toks, open) != "[" {
        return None;
    }
    let end = group_end(toks, open);
    let words: Vec<&str> = (open + 1..end - 1).map(|k| at(toks, k)).collect();
    (words == ["cfg", "(", "test", ")"]).then_some((end, inner))
}

fn production_code(toks: Vec<Tok>) -> Code {
    let mut code = Code {
        scopes: vec![Vec::new()],
        ..Code::default()
    };
    // Inline modules we are in: their scope and the brace depth inside
    // their `{`.
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let current = stack.last().map_or(0, |&(s, _)| s);
        if let Some((end, inner)) = cfg_test_at(&toks, i) {
            if inner {
                if depth == 0 {
                    code.test_only = true;
                    code.toks.clear();
                    code.scope.clear();
                    return code;
                }
                // `#![cfg(test)]` inside a block: the rest of that block.
                i = item_end(&toks, end);
                continue;
            }
            let mut k = end;
            while at(&toks, k) == "#" {
                k = group_end(&toks, k + 1);
            }
            let mut m = k;
            if at(&toks, m) == "pub" {
                m += 1;
                if at(&toks, m) == "(" {
                    m = group_end(&toks, m);
                }
            }
            if at(&toks, m) == "mod" && is_ident(&toks, m + 1) && at(&toks, m + 2) == ";" {
                let mut child = code.scopes[current].clone();
                child.push(toks[m + 1].text.clone());
                code.test_children.push(child);
            }
            i = item_end(&toks, k);
            continue;
        }
        let t = &toks[i];
        if t.kind == Kind::Punct && t.text == "{" {
            depth += 1;
            let named = i >= 2 && at(&toks, i - 2) == "mod" && is_ident(&toks, i - 1);
            if named {
                let mut inner = code.scopes[current].clone();
                inner.push(toks[i - 1].text.clone());
                code.scopes.push(inner);
                stack.push((code.scopes.len() - 1, depth));
            }
        }
        code.toks.push(t.clone());
        code.scope.push(stack.last().map_or(0, |&(s, _)| s));
        if t.kind == Kind::Punct && t.text == "}" {
            if stack.last().is_some_and(|&(_, d)| d == depth) {
                stack.pop();
            }
            depth = depth.saturating_sub(1);
        }
        i += 1;
    }
    code
}

// ---------------------------------------------------------------------------
// Paths.
// ---------------------------------------------------------------------------

/// One path as written: `crate::a::B`, or one leaf of a grouped `use`
/// (`use super::{x, y::Z as W}` has two).
#[derive(Debug, Clone, PartialEq)]
struct Leaf {
    /// Segments as written, from `crate`, `super` or `self` on.
    segs: Vec<String>,
    /// Ends in `::*`.
    glob: bool,
    alias: Option<String>,
}

/// Reads the use tree at `i` (a `{..}` group, a `*`, or segments with an
/// optional group, glob or `as` at the end) under `prefix`, pushing its
/// leaves; returns the index just past it.
fn use_tree(toks: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<Leaf>) -> usize {
    match at(toks, i) {
        "{" => {
            i += 1;
            loop {
                if at(toks, i) == "}" {
                    return i + 1;
                }
                let before = i;
                i = use_tree(toks, i, prefix, out);
                match at(toks, i) {
                    "," => i += 1,
                    "}" => return i + 1,
                    _ => return i.max(before + 1),
                }
            }
        }
        "*" => {
            out.push(Leaf {
                segs: prefix.to_vec(),
                glob: true,
                alias: None,
            });
            return i + 1;
        }
        _ => {}
    }
    let mut segs = prefix.to_vec();
    while is_ident(toks, i) {
        segs.push(toks[i].text.clone());
        i += 1;
        if at(toks, i) != "::" {
            break;
        }
        match at(toks, i + 1) {
            "{" | "*" => return use_tree(toks, i + 1, &segs, out),
            _ if is_ident(toks, i + 1) => i += 1,
            // `::<T>`: a turbofish ends the path.
            _ => break,
        }
    }
    let mut alias = None;
    if at(toks, i) == "as" && is_ident(toks, i + 1) {
        alias = Some(toks[i + 1].text.clone());
        i += 2;
    }
    out.push(Leaf {
        segs,
        glob: false,
        alias,
    });
    i
}

/// A path of a file's production code, resolved.
#[derive(Debug, Clone)]
struct PathRef {
    /// As written (one leaf of a group carries the group's prefix).
    written: String,
    /// The module path it names, from the crate root (`self` dropped).
    abs: Vec<String>,
    /// The file that defines the longest module prefix of `abs`.
    target: String,
    /// The name that ties the file to `target`.
    name: String,
    /// In a `use` declaration, and the name it binds there (None for a
    /// glob).
    in_use: bool,
    binding: Option<String>,
    line: usize,
    /// Token indices of the path's first token and just past it (for an
    /// inline path: `{` there may open a struct literal).
    start: usize,
    end: usize,
}

/// `segs` (from `crate`, `super` or `self`) as a module path from the root,
/// seen from module `here`; None for a `super` above the crate.
fn absolute(segs: &[String], here: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = match segs.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => here.to_vec(),
        Some("super") => here.split_last()?.1.to_vec(),
        _ => return None,
    };
    let mut rest = &segs[1..];
    while rest.first().map(String::as_str) == Some("super") {
        base.pop()?;
        rest = &rest[1..];
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// The file of the longest prefix of `abs` that is a module with a file of
/// its own, and that prefix's length.
fn resolve<'a>(
    abs: &[String],
    mods: &'a BTreeMap<Vec<String>, String>,
) -> Option<(&'a str, usize)> {
    (0..=abs.len())
        .rev()
        .find_map(|n| mods.get(&abs[..n]).map(|f| (f.as_str(), n)))
}

/// Every `crate::`, `super::` and `self::` path of `code`, in file
/// `module`, resolved against the crate's `mods`.
fn paths(code: &Code, module: &[String], mods: &BTreeMap<Vec<String>, String>) -> Vec<PathRef> {
    let toks = &code.toks;
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let head = is_ident(toks, i)
            && matches!(toks[i].text.as_str(), "crate" | "super" | "self")
            && at(toks, i + 1) == "::"
            && (i == 0 || at(toks, i - 1) != "::");
        if !head {
            i += 1;
            continue;
        }
        let in_use = i > 0 && at(toks, i - 1) == "use";
        let mut here = module.to_vec();
        here.extend(code.scopes[code.scope[i]].iter().cloned());
        let mut leaves = Vec::new();
        let end = use_tree(toks, i, &[], &mut leaves);
        for leaf in leaves {
            let Some(abs) = absolute(&leaf.segs, &here) else {
                continue;
            };
            let Some((target, n)) = resolve(&abs, mods) else {
                continue;
            };
            let binding = if leaf.glob {
                None
            } else {
                leaf.alias.clone().or_else(|| {
                    let last = leaf.segs.iter().rev().find(|s| *s != "self");
                    last.cloned()
                })
            };
            let name = match abs.get(n) {
                Some(item) => item.clone(),
                None if leaf.glob => "*".to_string(),
                None => abs.last().cloned().unwrap_or_else(|| "crate".to_string()),
            };
            out.push(PathRef {
                written: leaf.segs.join("::") + if leaf.glob { "::*" } else { "" },
                abs,
                target: target.to_string(),
                name,
                in_use,
                binding,
                line: toks[i].line,
                start: i,
                end,
            });
        }
        i = end.max(i + 1);
    }
    out
}

// ---------------------------------------------------------------------------
// The crate.
// ---------------------------------------------------------------------------

/// A file of src/, relative to the crate (`src/a/b.rs`), and its text.
type Source = (String, String);

/// The module path of `rel`: src/lib.rs is the crate, src/a.rs and
/// src/a/mod.rs are `a`, src/a/b.rs is `a::b`. None for the binary's crate
/// roots (src/main.rs, src/bin/), which are crates of their own.
fn module_of(rel: &str) -> Option<Vec<String>> {
    let inner = rel.strip_prefix("src/")?.strip_suffix(".rs")?;
    let mut parts: Vec<String> = inner.split('/').map(str::to_string).collect();
    if parts == ["main"] || parts[0] == "bin" {
        return None;
    }
    if parts == ["lib"] || parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

struct FileInfo {
    module: Vec<String>,
    code: Code,
    refs: Vec<PathRef>,
}

struct Crate {
    /// The production files of the library, by their path.
    files: BTreeMap<String, FileInfo>,
}

type Edges = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

impl Crate {
    fn read(sources: &[Source]) -> Crate {
        let mut mods = BTreeMap::new();
        let mut codes = BTreeMap::new();
        for (rel, text) in sources {
            if let Some(module) = module_of(rel) {
                mods.insert(module.clone(), rel.clone());
                codes.insert(rel.clone(), (module, production_code(tokenize(text))));
            }
        }
        // Files only tests compile: declared `#[cfg(test)] mod x;`, or
        // under such a module, or `#![cfg(test)]` themselves.
        let mut test_mods: Vec<Vec<String>> = Vec::new();
        for (module, code) in codes.values() {
            for child in &code.test_children {
                let mut m = module.clone();
                m.extend(child.iter().cloned());
                test_mods.push(m);
            }
        }
        let mut files = BTreeMap::new();
        for (rel, (module, code)) in codes {
            let under_test = test_mods.iter().any(|t| module.starts_with(t));
            if code.test_only || under_test {
                continue;
            }
            let refs = paths(&code, &module, &mods);
            files.insert(rel, FileInfo { module, code, refs });
        }
        Crate { files }
    }

    /// file -> file -> the names that tie them.
    fn edges(&self) -> Edges {
        let mut edges = Edges::new();
        for (rel, info) in &self.files {
            for r in &info.refs {
                if r.target != *rel && self.files.contains_key(&r.target) {
                    edges
                        .entry(rel.clone())
                        .or_default()
                        .entry(r.target.clone())
                        .or_default()
                        .insert(r.name.clone());
                }
            }
        }
        edges
    }
}

/// Strongly connected components of more than one file (Tarjan), each
/// sorted, largest first.
fn circles(edges: &Edges) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        on_stack: BTreeSet<&'a str>,
        stack: Vec<&'a str>,
        comps: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        if let Some(out) = edges.get(v) {
            for w in out.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.comps.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        comps: Vec::new(),
    };
    let nodes: BTreeSet<&str> = edges
        .iter()
        .flat_map(|(a, out)| std::iter::once(a.as_str()).chain(out.keys().map(String::as_str)))
        .collect();
    for v in nodes {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    let mut comps = s.comps;
    comps.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    comps
}

/// The circles as `module-cycles` prints them: each circle's files, then
/// each edge inside it with the names that tie the pair.
fn circles_report(edges: &Edges, comps: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (k, comp) in comps.iter().enumerate() {
        out += &format!(
            "circle {}: {} files: {}\n",
            k + 1,
            comp.len(),
            comp.join(", ")
        );
        for a in comp {
            for (b, names) in edges.get(a).into_iter().flatten() {
                if comp.contains(b) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    out += &format!("  {a} -> {b}: {}\n", names.join(", "));
                }
            }
        }
    }
    let files: usize = comps.iter().map(Vec::len).sum();
    out += &format!("{} circle(s), {files} files in them\n", comps.len());
    out
}

/// `module` is `top` or inside it, for any `top` of `tops`.
fn under(module: &[String], tops: &[&str]) -> bool {
    module.first().is_some_and(|m| tops.contains(&m.as_str()))
}

/// Every read of `crate::config` outside its readers, as `file:line: path`.
fn config_reads(krate: &Crate) -> Vec<String> {
    let mut found = Vec::new();
    for (rel, info) in &krate.files {
        if under(&info.module, &CONFIG_READERS) {
            continue;
        }
        for r in &info.refs {
            if r.abs.first().is_some_and(|m| m == "config") {
                found.push(format!("{rel}:{}: {}", r.line, r.written));
            }
        }
    }
    found
}

/// The token at `open` (`{`) opens a struct literal of the path that
/// starts at `start`, not a pattern (`Entry { id, .. } =>`), a body
/// (`-> Entry {`) or a definition (`impl Entry {`).
fn struct_literal(toks: &[Tok], start: usize, open: usize) -> bool {
    if at(toks, open) != "{" {
        return false;
    }
    let before = if start == 0 { "" } else { at(toks, start - 1) };
    let not_an_expression = [
        "->", "impl", "for", "struct", "enum", "union", "trait", "type", "let", "dyn", "mod", "fn",
    ];
    if not_an_expression.contains(&before) {
        return false;
    }
    // After the braces (and any brackets the pattern sits in, as in
    // `Some(Entry { .. }) =>`), a pattern goes on with one of these.
    let mut k = group_end(toks, open);
    while matches!(at(toks, k), ")" | "]") {
        k += 1;
    }
    !matches!(at(toks, k), "=>" | "=" | "if" | "in" | "|" | ":")
}

/// Every struct literal of `crate::sink::Entry` outside its builders, as
/// `file:line: text`: `Entry { .. }` (or its alias) in a file that imports
/// the sink's Entry, `sink::Entry { .. }` where `sink` is imported, and
/// `crate::sink::Entry { .. }` anywhere.
fn entry_literals(krate: &Crate) -> Vec<String> {
    let entry = ["sink".to_string(), "Entry".to_string()];
    let mut found = Vec::new();
    for (rel, info) in &krate.files {
        if under(&info.module, &ENTRY_BUILDERS) {
            continue;
        }
        let toks = &info.code.toks;
        let mut entry_names = BTreeSet::new();
        let mut sink_names = BTreeSet::new();
        let mut hits = BTreeSet::new();
        for r in &info.refs {
            if r.in_use && r.abs == entry {
                entry_names.extend(r.binding.clone());
            } else if r.in_use && r.abs == entry[..1] {
                sink_names.extend(r.binding.clone());
            } else if !r.in_use && r.abs == entry && struct_literal(toks, r.start, r.end) {
                hits.insert((r.line, format!("{} {{ .. }}", r.written)));
            }
        }
        for (i, t) in toks.iter().enumerate() {
            if t.kind != Kind::Ident || (i > 0 && at(toks, i - 1) == "::") {
                continue;
            }
            if entry_names.contains(&t.text) && struct_literal(toks, i, i + 1) {
                hits.insert((t.line, format!("{} {{ .. }}", t.text)));
            }
            if sink_names.contains(&t.text)
                && at(toks, i + 1) == "::"
                && at(toks, i + 2) == "Entry"
                && struct_literal(toks, i, i + 3)
            {
                hits.insert((t.line, format!("{}::Entry {{ .. }}", t.text)));
            }
        }
        found.extend(
            hits.into_iter()
                .map(|(line, text)| format!("{rel}:{line}: {text}")),
        );
    }
    found
}

/// Files of `sources` over `MAX_LINES`, as `file: N lines`.
fn long_files(sources: &[Source]) -> Vec<String> {
    sources
        .iter()
        .filter(|(_, text)| text.lines().count() > MAX_LINES)
        .map(|(rel, text)| format!("{rel}: {} lines", text.lines().count()))
        .collect()
}

// ---------------------------------------------------------------------------
// The checks on the crate.
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the repository, sorted.
fn rust_files(dir: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(repo()).unwrap();
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((rel.join("/"), text));
        }
    }
}

fn sources() -> Vec<Source> {
    let mut out = Vec::new();
    rust_files(&repo().join("src"), &mut out);
    assert!(out.len() > 10, "src/ read as {} files", out.len());
    out
}

#[test]
fn no_import_circles() {
    let krate = Crate::read(&sources());
    let edges = krate.edges();
    if std::env::var_os("MODULE_CYCLES_EDGES").is_some() {
        for (a, out) in &edges {
            for (b, names) in out {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                println!("{a} -> {b}: {}", names.join(", "));
            }
        }
    }
    let comps = circles(&edges);
    assert!(
        comps.is_empty(),
        "the files of src/ import each other in circles:\n\n{}\n\
         Imports must run one way, down the layers: shared vocabulary \
         (units, secret, envelope, ...) at the bottom, then submission and \
         verdict, the stages (parse, guard, scan, route, sink), pipeline, \
         the sources, and config.rs, serve.rs, admin.rs and cli/ at the top. \
         In each circle, find the edge that points up or sideways and move \
         the shared type (or function) it names to a lower layer: into the \
         lower of the two files, or into a small module of its own below \
         both; or have the caller pass the value in. Paths under \
         #[cfg(test)] do not count.",
        circles_report(&edges, &comps)
    );
}

#[test]
fn no_file_in_src_over_700_lines() {
    let long = long_files(&sources());
    assert!(
        long.is_empty(),
        "files in src/ over {MAX_LINES} lines (inline tests count):\n  {}\n\n\
         Split each into small modules with one job each (a sibling file \
         per job, with a //! doc comment saying what it does and why). A \
         big #[cfg(test)] mod tests {{ .. }} may move to a sibling tests.rs \
         declared with #[cfg(test)] mod tests;, keeping every test.",
        long.join("\n  ")
    );
}

#[test]
fn only_the_top_reads_the_aggregate_config() {
    let reads = config_reads(&Crate::read(&sources()));
    assert!(
        reads.is_empty(),
        "crate::config read below the top of the crate:\n  {}\n\n\
         Only src/config.rs, src/serve.rs, src/admin.rs and src/cli/ read \
         the aggregate config (tests may too). A module below them takes \
         its own section's config type, owned by that module (as \
         src/sources/http/config.rs owns the HTTP source's), and serve.rs \
         hands it down; move the section's type there and import it from \
         its owner.",
        reads.join("\n  ")
    );
}

#[test]
fn only_the_pipeline_and_the_sink_build_entries() {
    let built = entry_literals(&Crate::read(&sources()));
    assert!(
        built.is_empty(),
        "the sink's Entry is built outside src/pipeline and src/sink:\n  {}\n\n\
         An Entry is what the pipeline hands the sink: the shape of a \
         stream item has one owner. Build it in the pipeline (or with a \
         constructor in src/sink/) and call that from here. Tests \
         (#[cfg(test)]) may build entries.",
        built.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The reader itself, on made-up sources.
// ---------------------------------------------------------------------------

mod reader {
    use super::*;

    fn krate(files: &[(&str, &str)]) -> Crate {
        let sources: Vec<Source> = files
            .iter()
            .map(|(rel, text)| (rel.to_string(), text.to_string()))
            .collect();
        Crate::read(&sources)
    }

    /// `a -> b: names` for every edge.
    fn edge_lines(krate: &Crate) -> Vec<String> {
        let mut out = Vec::new();
        for (a, to) in krate.edges() {
            for (b, names) in to {
                let names: Vec<String> = names.into_iter().collect();
                out.push(format!("{a} -> {b}: {}", names.join(", ")));
            }
        }
        out
    }

    fn texts(toks: &[Tok]) -> Vec<&str> {
        toks.iter()
            .map(|t| {
                if t.kind == Kind::Literal {
                    "<lit>"
                } else {
                    t.text.as_str()
                }
            })
            .collect()
    }

    #[test]
    fn comments_strings_chars_and_raw_strings_are_not_code() {
        let src = r####"
            // crate::a::X in a comment
            /// [crate::a::X] in a doc link
            /* crate::a::X /* nested */ crate::a::X */
            let s = "crate::a::X \" crate::a::X";
            let r = r#"crate::a::X " still raw"#;
            let b = br##"crate::a::X "# still raw"##;
            let q = '"'; let e = '\''; let bs = '\\'; let u = '\u{22}'; let bq = b'"';
            fn f<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer; } x }
            let url = "https://example.com/*";
            let n = 1.5e3 + 0x1F + 1_000u64;
            crate::b::Y
        "####;
        let toks = tokenize(src);
        let heads: Vec<usize> = toks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.text == "crate")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(heads.len(), 1, "{:?}", texts(&toks));
        assert_eq!(at(&toks, heads[0] + 2), "b");
        assert_eq!(toks[heads[0]].line, 12);
        let lifetimes: Vec<&str> = toks
            .iter()
            .filter(|t| t.kind == Kind::Lifetime)
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(lifetimes, ["'a", "'a", "'a", "'outer", "'outer"]);
        assert_eq!(
            texts(&tokenize("a::b..=c -> d")),
            ["a", "::", "b", "..=", "c", "->", "d"]
        );
        assert_eq!(texts(&tokenize("r#type r\"x\"")), ["type", "<lit>"]);
    }

    #[test]
    fn grouped_imports_super_self_and_inline_paths() {
        let k = krate(&[
            ("src/lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;"),
            (
                "src/a/mod.rs",
                "mod inner; use crate::{b, c::{Cee, deep::{Deeper as D}}, d::*};\n\
                 fn f() { let g = crate::b::Guard::new(); }\n\
                 use self::inner::Thing;",
            ),
            (
                "src/a/inner.rs",
                "use super::super::b::Bee; use super::{self as up, Ay};",
            ),
            ("src/b.rs", "use crate::c::{self, Cee as C};"),
            (
                "src/c.rs",
                "pub mod deep { pub struct Deeper; } pub struct Cee;",
            ),
            ("src/d.rs", ""),
        ]);
        assert_eq!(
            edge_lines(&k),
            [
                "src/a/inner.rs -> src/a/mod.rs: Ay, a",
                "src/a/inner.rs -> src/b.rs: Bee",
                "src/a/mod.rs -> src/a/inner.rs: Thing",
                "src/a/mod.rs -> src/b.rs: Guard, b",
                "src/a/mod.rs -> src/c.rs: Cee, deep",
                "src/a/mod.rs -> src/d.rs: *",
                "src/b.rs -> src/c.rs: Cee, c",
            ]
        );
        let binds: Vec<String> = k.files["src/a/inner.rs"]
            .refs
            .iter()
            .map(|r| {
                format!(
                    "{} as {}",
                    r.abs.join("::"),
                    r.binding.clone().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(binds, ["b::Bee as Bee", "a as up", "a::Ay as Ay"]);
    }

    #[test]
    fn paths_in_comments_and_strings_are_not_imports() {
        let k = krate(&[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            (
                "src/a.rs",
                "//! See [crate::b::B].\n\
                 /// Calls crate::b::f.\n\
                 fn f() { let _ = \"crate::b::B\"; let _ = r#\"crate::b::B\"#; let q = '\"'; }\n\
                 /* crate::b::B */",
            ),
            ("src/b.rs", "use crate::a::A;"),
        ]);
        assert_eq!(edge_lines(&k), ["src/b.rs -> src/a.rs: A"]);
        assert!(circles(&k.edges()).is_empty());
    }

    #[test]
    fn test_code_and_inline_modules() {
        let k = krate(&[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            (
                "src/a.rs",
                "use crate::b::B;\n\
                 mod inner { use super::A; pub fn g() { crate::b::h(); } }\n\
                 #[cfg(test)]\nmod tests { use crate::b::T; }\n\
                 #[cfg(test)]\n#[allow(dead_code)]\npub(crate) fn helper() { crate::b::U; }\n\
                 #[cfg(test)]\nmod more;\n\
                 pub struct A { #[cfg(test)] t: crate::b::V, a: u8 }\n\
                 fn after() { crate::b::W; }",
            ),
            ("src/a/more.rs", "use crate::b::X;"),
            ("src/b.rs", "#[cfg(test)] use crate::a::A;"),
        ]);
        assert_eq!(edge_lines(&k), ["src/a.rs -> src/b.rs: B, W, h"]);
        assert!(!k.files.contains_key("src/a/more.rs"));
        // `super` in the inline module is src/a.rs itself, not the crate.
        let inner: Vec<&PathRef> = k.files["src/a.rs"]
            .refs
            .iter()
            .filter(|r| r.line == 2)
            .collect();
        assert_eq!(inner[0].abs, ["a", "A"]);
        assert_eq!(inner[0].target, "src/a.rs");
    }

    #[test]
    fn a_circle_of_three_files_is_found() {
        let k = krate(&[
            (
                "src/lib.rs",
                "pub mod a; pub mod b; pub mod c; pub mod d; mod main_only;",
            ),
            ("src/main.rs", "use crate::d::D;"),
            ("src/a.rs", "use crate::b::B;"),
            ("src/b.rs", "pub fn f() -> crate::c::C { todo!() }"),
            ("src/c.rs", "use super::a::{A, Other};"),
            ("src/d.rs", "use crate::a::A;"),
        ]);
        let edges = k.edges();
        let comps = circles(&edges);
        assert_eq!(comps, [["src/a.rs", "src/b.rs", "src/c.rs"]]);
        assert_eq!(
            circles_report(&edges, &comps),
            "circle 1: 3 files: src/a.rs, src/b.rs, src/c.rs\n\
             \x20 src/a.rs -> src/b.rs: B\n\
             \x20 src/b.rs -> src/c.rs: C\n\
             \x20 src/c.rs -> src/a.rs: A, Other\n\
             1 circle(s), 3 files in them\n"
        );
    }

    #[test]
    fn no_false_circle() {
        // A parent owns its children (`mod`, bare `child::` paths) and a
        // child reaches up with `super::`: one way. A chain is no circle.
        let k = krate(&[
            ("src/lib.rs", "pub mod p; pub mod x; pub mod y;"),
            (
                "src/p/mod.rs",
                "mod child; pub use child::Kid; fn f() { child::g(); }",
            ),
            ("src/p/child.rs", "use super::Parent; pub struct Kid;"),
            ("src/x.rs", "use crate::y::Y; use crate::p::Kid;"),
            ("src/y.rs", "use crate::p::{self, Parent};"),
        ]);
        let edges = k.edges();
        assert_eq!(edges.len(), 3, "{edges:?}");
        assert!(circles(&edges).is_empty(), "{edges:?}");
        // A parent naming its child by a `crate::` path does import it, as
        // in module-cycles: with the child's `super::`, that is a circle.
        let k = krate(&[
            ("src/lib.rs", "pub mod p;"),
            ("src/p/mod.rs", "mod child; pub use crate::p::child::Kid;"),
            ("src/p/child.rs", "use super::Parent;"),
        ]);
        assert_eq!(circles(&k.edges()), [["src/p/child.rs", "src/p/mod.rs"]]);
    }

    #[test]
    fn config_reads_below_the_top_are_found() {
        let k = krate(&[
            ("src/lib.rs", "pub mod config; pub mod serve; pub mod cli; pub mod guard; pub mod sources;"),
            ("src/config.rs", "pub struct Config; use crate::config::Config as Same;"),
            ("src/serve.rs", "use crate::config::Config;"),
            ("src/cli/mod.rs", "mod rules;"),
            ("src/cli/rules.rs", "use crate::{config::Config};"),
            ("src/guard/mod.rs", "pub mod config;\nfn f(c: &crate::config::Config) {}\nuse config::GuardConfig;"),
            ("src/guard/config.rs", "pub struct GuardConfig;"),
            ("src/sources/mod.rs", "pub mod imap;\nuse super::config;"),
            ("src/sources/imap.rs", "use super::super::config::Config;\nuse crate::guard::config::GuardConfig;\n#[cfg(test)] mod tests { use crate::config::Config; }"),
        ]);
        assert_eq!(
            config_reads(&k),
            [
                "src/guard/mod.rs:2: crate::config::Config",
                "src/sources/imap.rs:1: super::super::config::Config",
                "src/sources/mod.rs:2: super::config",
            ]
        );
    }

    #[test]
    fn entry_literals_outside_pipeline_and_sink_are_found() {
        let k = krate(&[
            ("src/lib.rs", "pub mod sink; pub mod pipeline; pub mod held; pub mod other; pub mod third; pub mod zip;"),
            ("src/sink/mod.rs", "pub struct Entry { pub id: u8 } impl Entry { fn new() -> Entry { Entry { id: 0 } } }"),
            ("src/pipeline.rs", "use crate::sink::Entry; fn f() { let e = Entry { id: 1 }; }"),
            (
                "src/held.rs",
                "use crate::sink::{Entry, Sink};\n\
                 fn f() -> Entry {\n\
                 let e = Entry { id: 1 };\n\
                 match e { Entry { id, .. } => {} }\n\
                 if let Some(Entry { id, .. }) = g() {}\n\
                 let Entry { id } = e;\n\
                 sink.append(&Entry { id: 2 });\n\
                 assert!(Entry { id: 3 } == e);\n\
                 Entry { id: 4 }\n\
                 }\n\
                 #[cfg(test)] mod tests { fn t() { let e = Entry { id: 9 }; } }",
            ),
            ("src/other.rs", "use crate::sink::{self, Entry as E};\nfn f() { sink::Entry { id: 1 }; E { id: 2 }; }"),
            ("src/third.rs", "fn f() { let e = crate::sink::Entry { id: 1 }; }"),
            ("src/zip.rs", "struct Entry { n: u8 } fn f() { Entry { n: 1 }; }"),
        ]);
        assert_eq!(
            entry_literals(&k),
            [
                "src/held.rs:3: Entry { .. }",
                "src/held.rs:7: Entry { .. }",
                "src/held.rs:8: Entry { .. }",
                "src/held.rs:9: Entry { .. }",
                "src/other.rs:2: E { .. }",
                "src/other.rs:2: sink::Entry { .. }",
                "src/third.rs:1: crate::sink::Entry { .. }",
            ]
        );
    }

    #[test]
    fn long_files_are_found() {
        let long = "x\n".repeat(MAX_LINES + 1);
        let ok = "x\n".repeat(MAX_LINES);
        let sources = vec![
            ("src/long.rs".to_string(), long),
            ("src/ok.rs".to_string(), ok),
        ];
        assert_eq!(long_files(&sources), ["src/long.rs: 701 lines"]);
    }
}
