//! The node's layers: which top-level modules of `crates/pace-node/src`
//! import which (`crate::x` paths; comments and test code left out), with
//! no cycle among them and every import pointing down [`LAYERS`].
//!
//! The layer order, top to bottom (a module imports only modules of its
//! own layer or below; docs/architecture.md says the same):
//!
//! 1. `server`: the accept loop and drain.
//! 2. `app`: the composition root: builds every part from the config.
//! 3. `http`: the HTTP layer on axum.
//! 4. What the HTTP layer is built on: the route table (`routes`), the
//!    pages' rendering (`web`), the state handle it serves (`node`).
//! 5. The domain: `ws` (handshake, session, resume, hub, admin feed),
//!    `rooms`, `rooms_api`, `admission`, `accounts`, `devices`, `audit`,
//!    `auth`, `origins`, `pow`. Each takes its dependencies explicitly;
//!    none sees the `Node` handle.
//! 6. The stores: `queue`, `store`.
//! 7. Leaves: `config`, `metrics`, `error`, `names`, `key_alg`, `limits`,
//!    `pending`, `token_time`, `systemd`.
//!
//! Test code (`#[cfg(test)]` items and the files of `#[cfg(test)]`
//! modules) is left out: a test may assemble several layers (the cluster
//! conformance run builds every store; a session test builds the fan-out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it imports.
pub type Edges = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules by layer, top to bottom (see the module docs).
pub const LAYERS: &[&[&str]] = &[
    &["server"],
    &["app"],
    &["http"],
    &["routes", "web", "node"],
    &[
        "ws",
        "rooms",
        "rooms_api",
        "admission",
        "accounts",
        "devices",
        "audit",
        "auth",
        "origins",
        "pow",
    ],
    &["queue", "store"],
    &[
        "config",
        "metrics",
        "error",
        "names",
        "key_alg",
        "limits",
        "pending",
        "token_time",
        "systemd",
    ],
];

/// The import edges between the top-level modules under `src` (`x.rs` or
/// `x/`; `lib.rs` and `main.rs` are the crate itself, not modules).
pub fn module_edges(src: &Path) -> Edges {
    let mut edges = Edges::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if path.is_dir() => n.to_owned(),
            Some(n) if n.ends_with(".rs") => n.trim_end_matches(".rs").to_owned(),
            _ => continue,
        };
        if name == "lib" || name == "main" {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        let test_files: BTreeSet<PathBuf> = files
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                let dir = f.parent().unwrap().to_owned();
                test_modules(&strip_comments(&text))
                    .into_iter()
                    .map(move |m| dir.join(format!("{m}.rs")))
            })
            .collect();
        let used = edges.entry(name.clone()).or_default();
        for file in files.iter().filter(|f| !test_files.contains(*f)) {
            let text = std::fs::read_to_string(file).unwrap();
            for m in crate_paths(&strip_test_code(&strip_comments(&text))) {
                if m != name {
                    used.insert(m);
                }
            }
        }
    }
    edges
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

/// The text without `//` comments (doc comments included: an intra-doc
/// link is no import).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Not inside a string literal on that line (an URL, say).
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const CFG_TEST: &str = "#[cfg(test)]";

/// The names of the `#[cfg(test)] mod x;` declarations (files of test
/// code) in `text`.
fn test_modules(text: &str) -> Vec<String> {
    text.match_indices(CFG_TEST)
        .filter_map(|(i, _)| {
            let item = text[i + CFG_TEST.len()..].trim_start();
            let item = item
                .strip_prefix("pub(crate) ")
                .or_else(|| item.strip_prefix("pub "))
                .unwrap_or(item);
            let rest = item.strip_prefix("mod ")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest[name.len()..]
                .trim_start()
                .starts_with(';')
                .then_some(name)
        })
        .collect()
}

/// The text without its `#[cfg(test)]` items: each attribute with the
/// item after it, up to its `;` or its closing brace (string and char
/// literals skipped while counting braces).
fn strip_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(CFG_TEST) {
        out.push_str(&rest[..i]);
        let item = &rest[i + CFG_TEST.len()..];
        let end = item_end(item);
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Where the item at the start of `text` ends: after its `;` if that
/// comes before any `{`, else after the brace closing its first `{`.
fn item_end(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A char literal of one (possibly escaped) character; a
            // lifetime's quote is left alone.
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') => i += 3,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The first segment after every `crate::`, including each top-level
/// name of a `crate::{a, b::c}` group.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        // `pace_crate::`, `$crate::`: not this crate's path.
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut at_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_start = true,
                    c if c.is_whitespace() => {}
                    _ if depth == 1 && at_start => {
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            found.insert(name);
                        }
                        at_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every cycle of `edges`: its strongly connected sets of more than one
/// module (Tarjan), each sorted, in name order.
pub fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        w.on_stack.insert(v);
        for u in w.edges.get(v).into_iter().flatten() {
            let u = u.as_str();
            if !w.edges.contains_key(u) {
                continue;
            }
            if !w.index.contains_key(u) {
                visit(w, u);
                let low = w.low[v].min(w.low[u]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(u) {
                let low = w.low[v].min(w.index[u]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut set = Vec::new();
            while let Some(u) = w.stack.pop() {
                w.on_stack.remove(u);
                set.push(u.to_owned());
                if u == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                w.found.push(set);
            }
        }
    }
    let mut w = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found.sort();
    w.found
}

fn node_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layer of each module in [`LAYERS`] (0 is the top).
fn layer_of() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect()
}

/// The imports that point up the layer order (or name a module missing
/// from [`LAYERS`]), as `a -> b` lines.
fn upward(edges: &Edges) -> Vec<String> {
    let layer = layer_of();
    let mut found = Vec::new();
    for (m, used) in edges {
        let Some(&own) = layer.get(m.as_str()) else {
            found.push(format!("{m}: not placed in LAYERS"));
            continue;
        };
        for u in used.iter().filter(|u| edges.contains_key(*u)) {
            match layer.get(u.as_str()) {
                Some(&l) if l >= own => {}
                _ => found.push(format!("{m} -> {u}")),
            }
        }
    }
    found
}

#[test]
fn the_node_has_no_import_cycle() {
    let edges = module_edges(&node_src());
    assert!(edges.contains_key("http"), "no http module: {edges:?}");
    assert_eq!(
        cycles(&edges),
        Vec::<Vec<String>>::new(),
        "top-level modules import each other in a cycle"
    );
}

#[test]
fn every_import_points_down_the_layers() {
    let edges = module_edges(&node_src());
    assert_eq!(upward(&edges), Vec::<String>::new());
    // Every module of LAYERS exists (a renamed module is renamed here too).
    for m in layer_of().keys() {
        assert!(edges.contains_key(*m), "LAYERS names no module {m}");
    }
}

#[test]
fn an_upward_import_is_named() {
    let mut edges = Edges::new();
    for (a, b) in [("http", "store"), ("store", "http"), ("config", "metrics")] {
        edges.entry(a.into()).or_default().insert(b.into());
    }
    edges.entry("metrics".into()).or_default();
    edges.entry("mystery".into()).or_default();
    assert_eq!(
        upward(&edges),
        ["mystery: not placed in LAYERS", "store -> http"]
    );
}

#[test]
fn cycles_are_found_and_named() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut e = Edges::new();
        for (a, b) in pairs {
            e.entry(a.to_string()).or_default().insert(b.to_string());
            e.entry(b.to_string()).or_default();
        }
        e
    };
    // A layered graph has none.
    assert!(
        cycles(&edges(&[
            ("http", "rooms"),
            ("rooms", "store"),
            ("http", "store")
        ]))
        .is_empty()
    );
    // A store reaching up closes one; an unrelated pair makes another.
    let found = cycles(&edges(&[
        ("http", "rooms"),
        ("rooms", "store"),
        ("store", "rooms"),
        ("a", "b"),
        ("b", "a"),
        ("metrics", "metrics"),
    ]));
    assert_eq!(found, [vec!["a", "b"], vec!["rooms", "store"]]);
}

#[test]
fn imports_are_read_from_paths_and_groups_not_comments() {
    let text = "use crate::auth::Principal;\n\
                use crate::{\n    error::{ApiError, json_response},\n    node::NodeRef, self,\n};\n\
                /// See [`crate::server`].\n\
                let x = crate::metrics::render(); // crate::web\n\
                pace_crate::nope; let s = \"https://x\"; crate::pow::issue();";
    let got: Vec<String> = crate_paths(&strip_comments(text)).into_iter().collect();
    assert_eq!(got, ["auth", "error", "metrics", "node", "pow"]);
}

#[test]
fn test_code_is_left_out() {
    let text = "use crate::error::ApiError;\n\
                #[cfg(test)]\nmod tests {\n    use crate::accounts::X;\n    \
                fn f() { let s = \"}\"; let c = '{'; let l: &'static str = \"\"; }\n    \
                use crate::node::Y;\n}\n\
                #[cfg(test)]\nuse crate::server::Z;\n\
                #[cfg(test)]\npub(crate) mod test_redis;\n\
                fn g() { crate::metrics::render(); }";
    let got: Vec<String> = crate_paths(&strip_test_code(text)).into_iter().collect();
    assert_eq!(got, ["error", "metrics"]);
    assert_eq!(test_modules(text), ["test_redis"]);
}
