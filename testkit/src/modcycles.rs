//! Import circles between the top-level modules of one crate's source folder: the check
//! CI runs on every crate (`testkit/tests/import_circles.rs`), so that layers keep
//! pointing one way.
//!
//! It reads every `.rs` file under the folder, maps each to its module (`a/b/mod.rs` and
//! `a/b.rs` are both `a::b`; `lib.rs` and `main.rs` are the crate root), collects every
//! `crate::…` path the file names (in `use` trees, expanded, and inline), keeps the first
//! segment of both ends, and reports each strongly connected component of more than one
//! module with the imports that make it. Comments and string literals are skipped.
//! Test files (`tests.rs`, `*_tests.rs`, anything under a `tests/` folder) are left out:
//! a test may reach across layers. It follows the same rules as
//! `shared/tools/modcycles.py`, so both agree on what a circle is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One circle: its modules, and for each import inside it, a file that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    /// The modules, sorted.
    pub modules: Vec<String>,
    /// `(from, to, file)`: `file` (relative to the source folder) in `from` names `to`.
    pub imports: Vec<(String, String, String)>,
}

impl std::fmt::Display for Circle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "circle: {}", self.modules.join(" "))?;
        for (from, to, file) in &self.imports {
            writeln!(f, "  {from} -> {to}   ({file})")?;
        }
        Ok(())
    }
}

/// The import circles among the top-level modules of the crate whose sources are in
/// `src`.
pub fn circles(src: &Path) -> std::io::Result<Vec<Circle>> {
    let mut files = Vec::new();
    collect(src, &mut files)?;
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // from -> to -> the first file seen making that import
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in &files {
        let me = module_of(src, file);
        let Some(me) = me.first() else { continue };
        let text = std::fs::read_to_string(file)?;
        for path in crate_paths(&strip(&text)) {
            // The longest prefix of the path that is a module of this crate.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|k| &path[..k])
                .find(|p| modules.contains(*p))
            else {
                continue;
            };
            let target = &target[0];
            if target != me {
                let rel = file.strip_prefix(src).unwrap_or(file).display().to_string();
                graph
                    .entry(me.clone())
                    .or_default()
                    .entry(target.clone())
                    .or_insert(rel);
            }
        }
    }
    Ok(components(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut imports = Vec::new();
            for from in &c {
                for (to, file) in graph.get(from).into_iter().flatten() {
                    if c.contains(to) {
                        imports.push((from.clone(), to.clone(), file.clone()));
                    }
                }
            }
            Circle {
                modules: c.into_iter().collect(),
                imports,
            }
        })
        .collect())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                collect(&path, out)?;
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `a/b/mod.rs` and `a/b.rs` are `["a", "b"]`; `lib.rs` and `main.rs` are `[]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source with comments and the contents of string and char literals blanked out,
/// so that neither a URL in a string nor a path in a comment counts as an import.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"..." or r#"..."#: skip to the closing quote and as many hashes.
            i += 2 + hashes;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && is_char_literal(&src[i..]) {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The number of `#` of a raw string starting here (`r"`, `r#"`, `br"` …), if one does.
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let rest = rest.strip_prefix(b"b").unwrap_or(rest);
    let after_r = rest.strip_prefix(b"r")?;
    let hashes = after_r.iter().take_while(|&&c| c == b'#').count();
    (after_r.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// Whether the `'` at the start of `rest` opens a char literal (`'a'`, `'\n'`) rather
/// than a lifetime (`'a`).
fn is_char_literal(rest: &str) -> bool {
    let mut chars = rest.chars().skip(1);
    match chars.next() {
        Some('\\') => true,
        Some(_) => chars.next() == Some('\''),
        None => false,
    }
}

/// Every module path named after `crate::`: `use crate::…;` trees expanded, and inline
/// paths such as `crate::a::b(…)`.
fn crate_paths(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("use crate::") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let tree_start = at + "use crate::".len();
        let Some(end) = rest[tree_start..].find(';') else {
            break;
        };
        if !preceded_by_word {
            expand(&rest[tree_start..tree_start + end], &[], &mut out);
        }
        rest = &rest[tree_start + end..];
    }
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(at) = src[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':') {
            continue;
        }
        // Identifiers joined by `::`, up to the first thing that is neither.
        let mut path = Vec::new();
        let mut pos = from;
        loop {
            let ident: String = src[pos..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if ident.is_empty() {
                break;
            }
            pos += ident.len();
            path.push(ident);
            if !src[pos..].starts_with("::") {
                break;
            }
            pos += 2;
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, self}}`) into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let mut path = prefix.to_vec();
        path.extend(
            tree.split("::")
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                .filter(|s| !s.is_empty() && s != "self" && s != "*"),
        );
        out.push(path);
        return;
    };
    let mut head = prefix.to_vec();
    head.extend(
        tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut depth, mut start, mut any) = (0, 0, false);
    for (i, ch) in body.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                if !body[start..i].trim().is_empty() {
                    expand(&body[start..i], &head, out);
                    any = true;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if !body[start..].trim().is_empty() {
        expand(&body[start..], &head, out);
        any = true;
    }
    if !any {
        out.push(head);
    }
}

/// Strongly connected components (Tarjan), each as a sorted set.
fn components(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(comp);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn finds_a_circle_and_names_the_files_that_make_it() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("lib.rs", "mod a; mod b; mod c;"),
                ("a.rs", "use crate::b::{self, X};"),
                ("b/mod.rs", "mod inner;"),
                ("b/inner.rs", "fn f() { crate::a::g() }"),
                ("c.rs", "use crate::a::Y;"),
            ],
        );
        let found = circles(dir.path()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].modules, vec!["a", "b"]);
        assert_eq!(
            found[0].imports,
            vec![
                ("a".into(), "b".into(), "a.rs".into()),
                ("b".into(), "a".into(), "b/inner.rs".into()),
            ]
        );
        assert!(found[0].to_string().contains("b -> a   (b/inner.rs)"));
    }

    #[test]
    fn comments_strings_and_test_files_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[
                ("lib.rs", "mod a; mod b;"),
                (
                    "a.rs",
                    "use crate::b::X; // crate::a\nconst U: &str = \"tcp://x\"; fn f<'a>(c: char) -> bool { c == '\"' }",
                ),
                (
                    "b.rs",
                    "/* crate::a::Z */ const S: &str = \"crate::a\"; const R: &str = r#\"crate::a\"#;",
                ),
                ("b/tests.rs", "use crate::a::T;"),
                ("tests/x.rs", "use crate::a::T;"),
            ],
        );
        assert_eq!(circles(dir.path()).unwrap(), vec![]);
    }

    #[test]
    fn use_trees_expand_into_every_module_they_name() {
        let mut out = Vec::new();
        expand("a::{b, c::{d, self}, e as f}", &[], &mut out);
        assert_eq!(
            out,
            vec![
                vec!["a", "b"],
                vec!["a", "c", "d"],
                vec!["a", "c"],
                vec!["a", "e"],
            ]
        );
    }
}
