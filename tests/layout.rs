//! The layering of the source, checked instead of hoped for (docs/DESIGN.md "Layers"):
//!
//! - the model core (`src/mf/`) names no MPI, async runtime, CLI or storage, and reaches none of
//!   them through the modules it uses;
//! - `comm` (the MPI layer) and `store` (the storage layer) are leaves: they use only the
//!   error type and the collective trait;
//! - no two top-level modules use each other, directly or round a longer circle;
//! - no function outside the tests is longer than 80 lines unless a `// Long:` comment right
//!   above it says why.
//!
//! It reads the source as text (`crate::x`, `super::x` and `use crate::{..}` lines): a broken
//! rule fails a test that names the file and the line. Each rule is also run on a small made-up
//! tree that breaks it, so none of them passes by not looking.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules the model core must not reach, and external crates it must not name.
const NOT_IN_CORE: &[&str] = &[
    "comm", "exchange", "store", "cli", "cmd", "pipeline", "ingest", "train", "model_io",
];
const CRATES_NOT_IN_CORE: &[&str] = &["mpi", "tokio", "clap", "object_store", "futures"];
/// What each leaf may use of the crate.
const LEAVES: &[(&str, &[&str])] = &[
    ("comm", &["collective", "error"]),
    ("store", &["error"]),
    ("collective", &["error"]),
    ("error", &[]),
];
const MAX_FN_LINES: usize = 80;

struct Source {
    /// Relative to `src/`, e.g. `mf/kernel.rs`.
    path: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| Source {
            path: p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            text: std::fs::read_to_string(&p).unwrap(),
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`mf/kernel.rs` -> `mf`); None for the crate root
/// and the binary.
fn top_module(path: &str) -> Option<&str> {
    let first = path.split('/').next()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.strip_suffix(".rs").unwrap_or(f)),
    }
}

/// The numbered lines of a file outside its `#[cfg(test)]` module (which rustfmt ends with a
/// `}` alone at the start of a line).
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut in_tests = false;
    for (n, &line) in lines.iter().enumerate() {
        let next = lines.get(n + 1).copied().unwrap_or("");
        if line.trim() == "#[cfg(test)]" && next.starts_with("mod ") {
            in_tests = true;
        }
        if in_tests {
            in_tests = line != "}";
            continue;
        }
        out.push((n + 1, line));
    }
    out
}

/// The line without its `//` comment (strings holding `//` are rare enough in `use` lines).
fn without_comment(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
}

/// Top-level modules of the crate a file names (`crate::x`, `crate::{x, y}` over one or more
/// lines), with the first line naming each.
fn crate_uses(file: &Source, modules: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut uses = BTreeMap::new();
    let own = top_module(&file.path);
    let mut in_group = false;
    for (n, line) in code_lines(&file.text) {
        let line = without_comment(line);
        let mut names: Vec<&str> = Vec::new();
        if in_group {
            names.extend(words(line));
            in_group = !line.contains('}');
        }
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    names.extend(words(group.split('}').next().unwrap_or("")));
                    in_group = !group.contains('}');
                }
                None => names.extend(words(rest).next()),
            }
        }
        for name in names {
            if modules.contains(name) && Some(name) != own {
                uses.entry(name.to_string()).or_insert(n);
            }
        }
    }
    uses
}

/// The first line where a file names crate `krate` at the start of a path (`mpi::`).
fn names_crate(file: &Source, krate: &str) -> Option<usize> {
    let needle = format!("{krate}::");
    code_lines(&file.text).into_iter().find_map(|(n, line)| {
        let line = without_comment(line);
        line.match_indices(&needle)
            .any(|(at, _)| {
                let before = line[..at].chars().last();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            })
            .then_some(n)
    })
}

/// The top-level module graph: module -> (used module -> where, `src/file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn graph(files: &[Source]) -> Graph {
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| top_module(&f.path).map(String::from))
        .collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in files {
        let Some(module) = top_module(&file.path) else {
            continue;
        };
        for (used, line) in crate_uses(file, &modules) {
            graph
                .get_mut(module)
                .unwrap()
                .entry(used)
                .or_insert(format!("src/{}:{line}", file.path));
        }
    }
    graph
}

/// Every module `from` reaches, with a path that reaches it.
fn reach(graph: &Graph, from: &str) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut todo = vec![vec![from.to_string()]];
    while let Some(path) = todo.pop() {
        for next in graph[path.last().unwrap()].keys() {
            if !seen.contains_key(next) {
                let mut longer = path.clone();
                longer.push(next.clone());
                seen.insert(next.clone(), longer.clone());
                todo.push(longer);
            }
        }
    }
    seen
}

/// Breaches of the model core's isolation.
fn core_breaches(files: &[Source]) -> Vec<String> {
    let g = graph(files);
    if !g.contains_key("mf") {
        return vec!["no src/mf".into()];
    }
    let reached = reach(&g, "mf");
    let mut broken: Vec<String> = reached
        .iter()
        .filter(|(module, _)| NOT_IN_CORE.contains(&module.as_str()))
        .map(|(module, path)| format!("mf reaches {module}: {}", path.join(" -> ")))
        .collect();
    let core: BTreeSet<&str> = reached.keys().map(String::as_str).chain(["mf"]).collect();
    for file in files {
        if !top_module(&file.path).is_some_and(|m| core.contains(m)) {
            continue;
        }
        for krate in CRATES_NOT_IN_CORE {
            if let Some(line) = names_crate(file, krate) {
                broken.push(format!("src/{}:{line} names {krate}", file.path));
            }
        }
    }
    broken
}

/// Uses of the crate by a leaf beyond what it may use.
fn leaf_breaches(files: &[Source]) -> Vec<String> {
    let g = graph(files);
    let mut broken = Vec::new();
    for (leaf, allowed) in LEAVES {
        for (used, at) in g.get(*leaf).into_iter().flatten() {
            if !allowed.contains(&used.as_str()) {
                broken.push(format!("{at}: {leaf} uses {used}"));
            }
        }
    }
    broken
}

/// Circles of top-level modules, each as the uses that make it.
fn circles(files: &[Source]) -> Vec<String> {
    let g = graph(files);
    g.keys()
        .filter_map(|module| {
            let path = reach(&g, module).remove(module)?;
            let steps: Vec<String> = path
                .windows(2)
                .map(|w| format!("{} -> {} ({})", w[0], w[1], g[&w[0]][&w[1]]))
                .collect();
            Some(steps.join(", "))
        })
        .collect()
}

/// Functions over `MAX_FN_LINES` lines without a `// Long:` reason above them.
fn long_functions(files: &[Source]) -> Vec<String> {
    const STARTS: &[&str] = &["fn ", "async fn ", "unsafe fn ", "const fn "];
    let mut long = Vec::new();
    for file in files {
        let lines = code_lines(&file.text);
        for (k, &(n, line)) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let bare = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|p| trimmed.strip_prefix(p))
                .unwrap_or(trimmed);
            if !STARTS.iter().any(|s| bare.starts_with(s)) {
                continue;
            }
            // The signature ends at the first `{` (a body) or `;` (a declaration).
            let Some(open) = lines[k..]
                .iter()
                .position(|&(_, l)| l.contains('{') || l.trim_end().ends_with(';'))
            else {
                continue;
            };
            if !lines[k + open].1.contains('{') {
                continue;
            }
            let close = format!("{}}}", &line[..line.len() - trimmed.len()]);
            let Some(end) = lines[k..].iter().position(|&(_, l)| l == close) else {
                continue;
            };
            let reason = lines[..k]
                .iter()
                .rev()
                .take_while(|(_, l)| {
                    let t = l.trim_start();
                    t.starts_with("//") || t.starts_with("#[")
                })
                .any(|(_, l)| l.contains("// Long:"));
            if end + 1 > MAX_FN_LINES && !reason {
                long.push(format!(
                    "src/{}:{n}: {} lines: {trimmed}",
                    file.path,
                    end + 1
                ));
            }
        }
    }
    long
}

#[test]
fn the_model_core_needs_no_mpi_runtime_cli_or_storage() {
    let broken = core_breaches(&sources());
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_mpi_and_storage_layers_are_leaves() {
    let broken = leaf_breaches(&sources());
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_two_modules_use_each_other_round_a_circle() {
    let found = circles(&sources());
    assert!(found.is_empty(), "circles:\n{}", found.join("\n"));
}

#[test]
fn functions_are_short_or_say_why_not() {
    let long = long_functions(&sources());
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines without a `// Long:` reason:\n{}",
        long.join("\n")
    );
}

/// A made-up tree of `(path, text)` files.
fn tree(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(path, text)| Source {
            path: path.to_string(),
            text: text.to_string(),
        })
        .collect()
}

#[test]
fn each_rule_catches_a_tree_that_breaks_it() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let long_fn = format!("fn f() {{\n{body}}}\n");
    let reasoned = format!("// Long: one table, read top to bottom.\n{long_fn}");
    let files = tree(&[
        ("lib.rs", "pub mod mf;"),
        ("mf/mod.rs", "pub mod kernel;\nuse crate::input::X;\n"),
        (
            "mf/kernel.rs",
            "use crate::{\n    ids::Id,\n    store,\n};\nfn g() { mpi::x(); }\n",
        ),
        (
            "input.rs",
            "use crate::comm::Comm; // through a module the core uses\n",
        ),
        ("ids.rs", "use crate::input::Y;\n"),
        ("comm.rs", "use crate::mf::Rows;\n"),
        ("store.rs", "use crate::ids::Id;\n"),
        ("error.rs", ""),
        ("collective.rs", ""),
        ("plan.rs", &long_fn),
        ("metrics.rs", &reasoned),
        (
            "fault.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::comm::Comm;\n}\n",
        ),
    ]);
    let core = core_breaches(&files).join("\n");
    for needle in [
        "mf reaches store",
        "mf reaches comm: mf -> input -> comm",
        "src/mf/kernel.rs:5 names mpi",
    ] {
        assert!(core.contains(needle), "{needle}:\n{core}");
    }
    let leaves = leaf_breaches(&files).join("\n");
    assert!(leaves.contains("src/comm.rs:1: comm uses mf"), "{leaves}");
    assert!(
        leaves.contains("src/store.rs:1: store uses ids"),
        "{leaves}"
    );
    let found = circles(&files).join("\n");
    assert!(found.contains("comm -> mf (src/comm.rs:1)"), "{found}");
    assert!(
        !found.contains("fault"),
        "test modules are not uses: {found}"
    );
    let long = long_functions(&files);
    assert_eq!(long.len(), 1, "{long:?}");
    assert!(long[0].starts_with("src/plan.rs:1: 82 lines"), "{long:?}");
}
