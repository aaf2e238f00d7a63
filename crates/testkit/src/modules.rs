//! A crate's module import graph, checked for import circles and for imports that climb a
//! declared layering.
//!
//! Layers only hold if something fails when they break: a `use crate::cli::Remote` added to a
//! module below `cli` compiles fine and quietly closes a circle (issue 17 found one of nine CLI
//! modules). A unit test that calls [`check`] on its crate's `src/` makes that a test failure
//! naming the edge.
//!
//! The graph follows `shared/tools/modgraph.py`, so the two agree:
//!
//! - A module is a file under `src/`: `lib.rs` and `main.rs` are `crate`, `a/mod.rs` and `a.rs`
//!   are `a`, `a/b.rs` is `a::b`.
//! - Module M imports module T when M's text holds a path `crate::x::y::...` (in a `use` line,
//!   an expression, or a comment) and T is the longest prefix of that path that is a module.
//!   `use crate::{a::X, b::Y}` groups count each path. A path into M itself or one of M's
//!   ancestors is no edge: a child may use what its parent declares.
//! - Test code is left out: files named `tests.rs`, directories named `tests`, the body of a
//!   `#[cfg(test)] mod NAME { ... }` and the file of a `#[cfg(test)] mod NAME;`. (The script
//!   skips only inline modules named `tests`; a test-only `mod proptests;` is test code too.)
//! - `super::x` in module `a::b` is the path `crate::a::x` (the script does not follow it, and
//!   misses circles between siblings that name each other so); `self::` paths stay inside the
//!   module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Checks the crate whose sources are under `src_dir` and returns its problems as readable
/// lines, none when it is clean:
///
/// - every import circle (a strongly connected component of more than one module), with the
///   edges that close it;
/// - with `layers` given, every edge from a module into a higher layer. `layers` lists the
///   layers from the bottom up, each as module-name prefixes (`"api"` covers `api` and
///   `api::jobs`; the longest matching prefix decides). A module may import modules of its own
///   layer and of the layers before it. A module that no prefix covers is reported, so that a
///   new module cannot slip past the layering, and so is a prefix that covers no module, so
///   that a renamed one cannot either. An empty `layers` checks circles only.
///
/// A `src_dir` that cannot be read, or holds no `.rs` file, is reported as a problem too.
pub fn check(src_dir: &Path, layers: &[&[&str]]) -> Vec<String> {
    let modules = match read_modules(src_dir) {
        Ok(modules) => modules,
        Err(problem) => return vec![problem],
    };
    let graph = import_graph(&modules);
    let mut problems: Vec<String> = circles(&graph).iter().map(|circle| describe_circle(&graph, circle)).collect();
    problems.extend(layering_problems(&graph, layers));
    problems
}

/// Module name to the module's imports (module names too).
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every non-test module's name and text, its test-only inline modules cut out.
fn read_modules(src_dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut files = Vec::new();
    collect_files(src_dir, &mut Vec::new(), &mut files)?;
    if files.is_empty() {
        return Err(format!("no .rs file under {}", src_dir.display()));
    }
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    let mut test_only = Vec::new();
    for (components, path) in files {
        let name = module_name(&components);
        let text =
            std::fs::read_to_string(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let (text, test_children) = without_test_modules(&text);
        test_only.extend(test_children.into_iter().map(|child| child_name(&name, &child)));
        // `lib.rs` and `main.rs` are both `crate`; keeping both texts keeps both files' edges.
        modules.entry(name).or_default().push_str(&text);
    }
    modules.retain(|name, _| !test_only.iter().any(|test_module| within(name, test_module)));
    Ok(modules)
}

/// The `.rs` files under `dir`, each with its path relative to the walk's root, in name order
/// so that problems come out in the same order on every machine.
fn collect_files(
    dir: &Path,
    relative: &mut Vec<String>,
    files: &mut Vec<(Vec<String>, std::path::PathBuf)>,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    let mut entries: Vec<_> =
        entries.collect::<Result<_, _>>().map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "tests" {
                relative.push(name);
                collect_files(&path, relative, files)?;
                relative.pop();
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "tests" {
                let mut components = relative.clone();
                components.push(stem.to_string());
                files.push((components, path));
            }
        }
    }
    Ok(())
}

/// `["lib"]` is `crate`, `["a", "mod"]` is `a`, `["a", "b"]` is `a::b`.
fn module_name(components: &[String]) -> String {
    let mut components = components.to_vec();
    if components.last().is_some_and(|last| last == "mod") {
        components.pop();
    }
    if components.len() == 1 && (components[0] == "lib" || components[0] == "main") {
        components.clear();
    }
    if components.is_empty() {
        "crate".to_string()
    } else {
        components.join("::")
    }
}

fn child_name(parent: &str, child: &str) -> String {
    if parent == "crate" {
        child.to_string()
    } else {
        format!("{parent}::{child}")
    }
}

/// `module` is `prefix` or lies inside it.
fn within(module: &str, prefix: &str) -> bool {
    module.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The text without the bodies of its `#[cfg(test)] mod NAME { ... }`, and the names of the
/// test-only modules it declares in files (`#[cfg(test)] mod NAME;`).
fn without_test_modules(text: &str) -> (String, Vec<String>) {
    const ATTRIBUTE: &str = "#[cfg(test)]";
    let mut kept = String::new();
    let mut file_modules = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(ATTRIBUTE) {
        let after = &rest[at + ATTRIBUTE.len()..];
        let Some((name, declaration_end)) = test_module_declaration(after) else {
            kept.push_str(&rest[..at + ATTRIBUTE.len()]);
            rest = after;
            continue;
        };
        kept.push_str(&rest[..at]);
        let declaration = &after[declaration_end..];
        if let Some(body) = declaration.strip_prefix(';') {
            file_modules.push(name);
            rest = body;
        } else {
            // An unclosed body runs to the end of the file, as the script assumes of every body.
            rest = match matching_brace(declaration) {
                Some(close) => &declaration[close + 1..],
                None => "",
            };
        }
    }
    kept.push_str(rest);
    (kept, file_modules)
}

/// After `#[cfg(test)]`: further attributes, an optional `pub(...)`, `mod NAME`; returns NAME
/// and where the `{` or `;` that follows it starts.
fn test_module_declaration(text: &str) -> Option<(String, usize)> {
    let mut rest = text.trim_start();
    while rest.starts_with("#[") {
        let close = rest.find(']')?;
        rest = rest[close + 1..].trim_start();
    }
    if let Some(after_pub) = rest.strip_prefix("pub") {
        rest = after_pub.trim_start();
        if rest.starts_with('(') {
            rest = rest[rest.find(')')? + 1..].trim_start();
        }
    }
    rest = rest.strip_prefix("mod")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    rest = rest.trim_start();
    let name_length = rest.find(|c: char| !is_identifier_char(c)).unwrap_or(rest.len());
    let name = &rest[..name_length];
    let after_name = rest[name_length..].trim_start();
    if name.is_empty() || !(after_name.starts_with('{') || after_name.starts_with(';')) {
        return None;
    }
    Some((name.to_string(), text.len() - after_name.len()))
}

/// Where the `}` that closes the `{` at the start of `text` is, skipping braces inside
/// comments, strings and character literals.
fn matching_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            b'/' if bytes.get(at + 1) == Some(&b'/') => {
                at += text[at..].find('\n').unwrap_or(text.len() - at);
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => at = block_comment_end(bytes, at),
            b'"' => at = string_end(bytes, at + 1, None),
            b'r' if at == 0 || !is_identifier_byte(bytes[at - 1]) || bytes[at - 1] == b'b' => {
                let hashes = bytes[at + 1..].iter().take_while(|&&b| b == b'#').count();
                if bytes.get(at + 1 + hashes) == Some(&b'"') {
                    at = string_end(bytes, at + 2 + hashes, Some(hashes));
                }
            }
            b'\'' => at = character_end(text, at),
            _ => {}
        }
        at += 1;
    }
    None
}

/// The index of the last byte of the (nested) block comment opening at `start`.
fn block_comment_end(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut at = start;
    while at + 1 < bytes.len() {
        match (bytes[at], bytes[at + 1]) {
            (b'/', b'*') => {
                depth += 1;
                at += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                at += 2;
                if depth == 0 {
                    return at - 1;
                }
            }
            _ => at += 1,
        }
    }
    bytes.len()
}

/// The index of the last byte of a string whose contents start at `start`. A raw string
/// (`raw_hashes` is its number of `#`) ends at `"` and that many `#`, and its backslashes
/// escape nothing.
fn string_end(bytes: &[u8], start: usize, raw_hashes: Option<usize>) -> usize {
    let hashes = raw_hashes.unwrap_or(0);
    let mut at = start;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if raw_hashes.is_none() => at += 1,
            b'"' if bytes[at + 1..].iter().take(hashes).filter(|&&b| b == b'#').count() == hashes => {
                return at + hashes;
            }
            _ => {}
        }
        at += 1;
    }
    bytes.len()
}

/// The index of the closing quote of a character literal at `start`, or `start` itself for a
/// lifetime (`'a`), which has none.
fn character_end(text: &str, start: usize) -> usize {
    let rest = &text[start + 1..];
    if rest.starts_with('\\') {
        return rest[2.min(rest.len())..].find('\'').map_or(text.len(), |close| start + 3 + close);
    }
    match rest.chars().next() {
        Some(character) if rest[character.len_utf8()..].starts_with('\'') => start + 1 + character.len_utf8(),
        _ => start,
    }
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Each module's imports: the longest module prefix of every `crate::` path in its text.
fn import_graph(modules: &BTreeMap<String, String>) -> Graph {
    let mut graph = Graph::new();
    for (module, text) in modules {
        let imports = graph.entry(module.clone()).or_default();
        let parent: Vec<String> = module.split("::").filter(|s| *s != "crate").map(str::to_string).collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        // `super::x` in module `a::b` names `a::x`, as `crate::a::x` would.
        let relative = paths_after(text, "super::").into_iter().map(|path| [parent, &path[..]].concat());
        for path in crate_paths(text).into_iter().chain(relative) {
            let target =
                (1..=path.len()).rev().map(|length| path[..length].join("::")).find(|p| modules.contains_key(p));
            if let Some(target) = target {
                if !within(module, &target) {
                    imports.insert(target);
                }
            }
        }
    }
    graph
}

/// The segments of every path that starts `crate::`, with `{a::X, b::{c, D}}` groups expanded.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    paths_after(text, "crate::")
}

/// The segments after `root` (`crate::` or `super::`) of every path that starts with it.
fn paths_after(text: &str, root: &str) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let mut paths = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(root) {
        let at = from + found;
        from = at + root.len();
        // `my_crate::x` names another crate; `$crate::x` (in a macro) is this one.
        if at > 0 && is_identifier_byte(bytes[at - 1]) {
            continue;
        }
        let mut cursor = from;
        use_tree(bytes, &mut cursor, Vec::new(), &mut paths);
    }
    paths
}

/// Reads one path (or group of paths) at `cursor`, after `prefix`.
fn use_tree(bytes: &[u8], cursor: &mut usize, prefix: Vec<String>, paths: &mut Vec<Vec<String>>) {
    let prefix_length = prefix.len();
    let mut path = prefix;
    loop {
        skip_whitespace(bytes, cursor);
        if bytes.get(*cursor) == Some(&b'{') {
            *cursor += 1;
            use_group(bytes, cursor, &path, paths);
            return;
        }
        let start = *cursor;
        while *cursor < bytes.len() && is_identifier_byte(bytes[*cursor]) {
            *cursor += 1;
        }
        // A macro (`crate::log!`) is an item of its module, not a module.
        if start == *cursor || bytes.get(*cursor) == Some(&b'!') {
            break;
        }
        path.push(String::from_utf8_lossy(&bytes[start..*cursor]).into_owned());
        if bytes[*cursor..].starts_with(b"::") {
            *cursor += 2;
        } else {
            break;
        }
    }
    // Nothing after the prefix (`{a, b,}` ends in an empty item) names nothing.
    if path.len() > prefix_length {
        paths.push(path);
    }
}

/// The items of a `{ ... }` group, the cursor just past its `{`.
fn use_group(bytes: &[u8], cursor: &mut usize, prefix: &[String], paths: &mut Vec<Vec<String>>) {
    loop {
        use_tree(bytes, cursor, prefix.to_vec(), paths);
        // Past what the item may add (`as name`) to the `,` or `}` that ends it.
        let mut depth = 0;
        while *cursor < bytes.len() {
            match bytes[*cursor] {
                b'{' => depth += 1,
                b'}' if depth == 0 => {
                    *cursor += 1;
                    return;
                }
                b'}' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            *cursor += 1;
        }
        if *cursor >= bytes.len() {
            return;
        }
        *cursor += 1;
    }
}

fn skip_whitespace(bytes: &[u8], cursor: &mut usize) {
    while *cursor < bytes.len() && bytes[*cursor].is_ascii_whitespace() {
        *cursor += 1;
    }
}

/// The strongly connected components of more than one module (Tarjan's algorithm), each
/// sorted by name.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct Search<'a> {
        graph: &'a Graph,
        next_index: usize,
        index: BTreeMap<&'a str, usize>,
        lowest: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, module: &'a str) {
            self.index.insert(module, self.next_index);
            self.lowest.insert(module, self.next_index);
            self.next_index += 1;
            self.stack.push(module);
            self.on_stack.insert(module);
            for target in self.graph.get(module).into_iter().flatten() {
                let target = target.as_str();
                if !self.index.contains_key(target) {
                    self.visit(target);
                    let lowest = self.lowest[module].min(self.lowest[target]);
                    self.lowest.insert(module, lowest);
                } else if self.on_stack.contains(target) {
                    let lowest = self.lowest[module].min(self.index[target]);
                    self.lowest.insert(module, lowest);
                }
            }
            if self.lowest[module] == self.index[module] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.to_string());
                    if member == module {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.components.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        next_index: 0,
        index: BTreeMap::new(),
        lowest: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for module in graph.keys() {
        if !search.index.contains_key(module.as_str()) {
            search.visit(module);
        }
    }
    search.components.sort();
    search.components
}

fn describe_circle(graph: &Graph, circle: &[String]) -> String {
    let edges: Vec<String> = circle
        .iter()
        .flat_map(|from| graph[from].iter().filter(|to| circle.contains(to)).map(move |to| format!("{from} -> {to}")))
        .collect();
    format!("import circle of {} modules: {} (edges: {})", circle.len(), circle.join(", "), edges.join(", "))
}

fn layering_problems(graph: &Graph, layers: &[&[&str]]) -> Vec<String> {
    if layers.is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for prefix in layers.iter().flat_map(|layer| layer.iter()) {
        if !graph.keys().any(|module| within(module, prefix)) {
            problems.push(format!("layer prefix `{prefix}` covers no module"));
        }
    }
    // The layer of the longest prefix that covers the module.
    let layer_of = |module: &str| {
        let covering = layers.iter().enumerate().flat_map(|(layer, prefixes)| {
            prefixes.iter().filter(|prefix| within(module, prefix)).map(move |prefix| (prefix.len(), layer))
        });
        covering.max().map(|(_, layer)| layer)
    };
    for module in graph.keys() {
        if layer_of(module).is_none() {
            problems.push(format!("module `{module}` is in no layer"));
        }
    }
    for (from, imports) in graph {
        for to in imports {
            if let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) {
                if from_layer < to_layer {
                    problems.push(format!(
                        "upward import {from} -> {to}: layer {from_layer} ({}) imports layer {to_layer} ({})",
                        layers[from_layer].join(", "),
                        layers[to_layer].join(", ")
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate's `src/` in a temporary directory, from `(path, text)` pairs.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("a fixture directory");
            std::fs::write(path, text).expect("a fixture file");
        }
        dir
    }

    const LAYERED: &[&[&str]] = &[&["args"], &["client"], &["commands"], &["crate"]];

    /// A layered crate: `main` -> `commands::*` -> `client` -> `args`.
    fn clean_files() -> Vec<(&'static str, &'static str)> {
        vec![
            ("main.rs", "mod args;\nmod client;\nmod commands;\nfn main() { crate::commands::chat::run(); }\n"),
            ("args.rs", "pub struct Remote;\n"),
            ("client.rs", "use crate::args::Remote;\npub fn call(_: &Remote) {}\n"),
            ("commands/mod.rs", "pub mod chat;\npub mod models;\n"),
            ("commands/chat.rs", "use crate::{args::Remote, client::call};\npub fn run() { call(&Remote) }\n"),
            ("commands/models.rs", "use crate::client;\nuse crate::commands::chat;\n"),
        ]
    }

    #[test]
    fn a_clean_layered_tree_has_no_problem() {
        let dir = tree(&clean_files());
        assert_eq!(check(dir.path(), LAYERED), Vec::<String>::new());
    }

    #[test]
    fn a_circle_is_reported_with_its_edges() {
        let mut files = clean_files();
        files.push((
            "client.rs",
            "use crate::args::Remote;\npub fn call(_: &Remote) { crate::commands::chat::run() }\n",
        ));
        let dir = tree(&files);
        let problems = check(dir.path(), &[]);
        assert_eq!(
            problems,
            ["import circle of 2 modules: client, commands::chat (edges: client -> commands::chat, commands::chat -> client)"]
        );
    }

    #[test]
    fn a_circle_through_super_paths_is_reported() {
        let mut files = clean_files();
        files.push(("commands/chat.rs", "use super::models::list;\npub fn run() {}\n"));
        files.push(("commands/models.rs", "use super::chat;\npub fn list() { chat::run() }\n"));
        let dir = tree(&files);
        let problems = check(dir.path(), &[]);
        assert_eq!(
            problems,
            ["import circle of 2 modules: commands::chat, commands::models (edges: commands::chat -> commands::models, commands::models -> commands::chat)"]
        );
    }

    #[test]
    fn an_import_into_a_higher_layer_is_reported() {
        let mut files = clean_files();
        // Even a doc link is an import (as in the script): it names what the module knows.
        files.push((
            "client.rs",
            "use crate::args::Remote;\n/// Used by [`crate::commands`].\npub fn call(_: &Remote) {}\n",
        ));
        let dir = tree(&files);
        assert_eq!(
            check(dir.path(), LAYERED),
            ["upward import client -> commands: layer 1 (client) imports layer 2 (commands)"]
        );
    }

    #[test]
    fn grouped_and_nested_imports_are_edges() {
        let mut files = clean_files();
        files.push(("args.rs", "use crate::{\n    commands::{chat::run as go, models},\n    client as c,\n};\n"));
        let dir = tree(&files);
        let problems = check(dir.path(), LAYERED);
        assert!(problems.contains(&"upward import args -> client: layer 0 (args) imports layer 1 (client)".to_string()));
        assert!(problems.iter().any(|p| p.starts_with("upward import args -> commands::chat:")), "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("upward import args -> commands::models:")), "{problems:?}");
    }

    #[test]
    fn test_code_is_no_edge() {
        let mut files = clean_files();
        files.push((
            "args.rs",
            "pub struct Remote;\n\
             #[cfg(test)]\n#[allow(unused)]\nmod tests {\n    fn f() { let _ = \"}\"; let _ = '}'; crate::client::call(); }\n}\n\
             #[cfg(test)]\nmod proptests;\n\
             pub fn after_the_tests() {}\n",
        ));
        files.push(("args/proptests.rs", "use crate::commands::chat;\n"));
        files.push(("tests.rs", "use crate::commands::chat;\n"));
        files.push(("commands/tests/helpers.rs", "use crate::commands::chat;\n"));
        let dir = tree(&files);
        assert_eq!(check(dir.path(), LAYERED), Vec::<String>::new());
    }

    #[test]
    fn code_after_a_test_module_still_counts() {
        let mut files = clean_files();
        files.push((
            "client.rs",
            "use crate::args::Remote;\npub fn call(_: &Remote) {}\n\
             #[cfg(test)]\nmod tests {\n    /* { */ fn f<'a>(_: &'a str) { let _ = r#\"{\"#; let _ = '{'; }\n}\n\
             pub fn later() -> crate::commands::Thing { todo!() }\n",
        ));
        let dir = tree(&files);
        assert_eq!(
            check(dir.path(), LAYERED),
            ["upward import client -> commands: layer 1 (client) imports layer 2 (commands)"]
        );
    }

    #[test]
    fn a_child_using_its_parent_is_no_edge() {
        let mut files = clean_files();
        files.push(("commands/mod.rs", "pub mod chat;\npub mod models;\npub struct Shared;\n"));
        files.push(("commands/chat.rs", "use crate::commands::Shared;\npub fn run() {}\n"));
        let dir = tree(&files);
        assert_eq!(check(dir.path(), LAYERED), Vec::<String>::new());
    }

    #[test]
    fn modules_outside_the_layers_and_stale_prefixes_are_reported() {
        let dir = tree(&clean_files());
        let problems = check(dir.path(), &[&["args", "gone"], &["client"], &["crate"]]);
        assert_eq!(
            problems,
            [
                "layer prefix `gone` covers no module",
                "module `commands` is in no layer",
                "module `commands::chat` is in no layer",
                "module `commands::models` is in no layer",
            ]
        );
    }

    #[test]
    fn the_longest_prefix_decides_the_layer() {
        let mut files = clean_files();
        // `models` may use `chat` only while it sits in the same layer or above it.
        let layers: &[&[&str]] = &[&["args"], &["client"], &["commands"], &["commands::models"], &["crate"]];
        let dir = tree(&files);
        assert_eq!(check(dir.path(), layers), Vec::<String>::new());
        files.push(("commands/chat.rs", "use crate::commands::models;\npub fn run() {}\n"));
        files.push(("commands/models.rs", "use crate::client;\n"));
        let dir = tree(&files);
        assert_eq!(
            check(dir.path(), layers),
            ["upward import commands::chat -> commands::models: layer 2 (commands) imports layer 3 (commands::models)"]
        );
    }

    #[test]
    fn a_missing_or_empty_directory_is_a_problem() {
        let dir = tree(&[]);
        assert_eq!(check(dir.path(), &[]), [format!("no .rs file under {}", dir.path().display())]);
        let missing = dir.path().join("absent");
        assert!(check(&missing, &[])[0].starts_with(&format!("cannot read {}", missing.display())));
    }
}
