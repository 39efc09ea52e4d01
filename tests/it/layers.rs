//! The library's dependency rules (ARCHITECTURE.md), checked on the source: top-level modules
//! form no import cycle, the cluster adapters never import the domain above them, and the
//! bottom layers import nothing above them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The top-level module a file under `src/` belongs to.
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
    first.unwrap_or_default().trim_end_matches(".rs").to_owned()
}

/// Top-level modules named by `crate::…` paths in `code` (comments and unit tests excluded).
fn imports(code: &str) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in code.lines().map(|l| l.split("//").next().unwrap_or_default()) {
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    // `use crate::{a::…, b, c::{…}}` across lines: names at the first brace depth.
    for (i, _) in code.match_indices("use crate::{") {
        let mut depth = 0;
        let mut word = String::new();
        let mut at_start = true;
        for c in code[i + "use crate::{".len()..].chars() {
            let ident = c.is_alphanumeric() || c == '_';
            if depth == 0 && at_start && ident {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                out.insert(std::mem::take(&mut word));
                at_start = false;
            }
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => at_start = true,
                _ => {}
            }
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("src readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let module = module_of(path.strip_prefix(&src).expect("under src"));
                let code = fs::read_to_string(&path).expect("readable");
                let deps = graph.entry(module.clone()).or_default();
                deps.extend(imports(&code).into_iter().filter(|d| *d != module));
            }
        }
    }
    graph
}

fn reaches(graph: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn top_level_modules_form_no_import_cycle() {
    let graph = graph();
    assert!(graph.contains_key("cluster") && graph.contains_key("node"), "{graph:?}");
    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(m, deps)| deps.iter().map(move |d| (m, d)))
        .filter(|(m, d)| reaches(&graph, d, m))
        .map(|(m, d)| format!("{m} -> {d}"))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn lower_layers_import_nothing_above_them() {
    let graph = graph();
    let allowed: &[(&str, &[&str])] = &[
        ("grpc", &[]),
        ("protocol", &[]),
        ("push", &["protocol"]),
        ("config", &["grpc", "protocol"]),
        ("cluster", &["auth", "config", "grpc", "links", "protocol", "push", "telemetry"]),
    ];
    for (module, may) in allowed {
        let deps = graph.get(*module).cloned().unwrap_or_default();
        let extra: Vec<&String> = deps.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(extra.is_empty(), "{module} imports {extra:?}, above it");
    }
}

#[test]
fn the_import_scanner_sees_every_form() {
    let code = "use crate::{\n    a::X,\n    b,\n    c::{d, e},\n};\nfn f() { crate::g::h(); } // crate::comment\n#[cfg(test)]\nuse crate::t;";
    let found: Vec<String> = imports(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "g"]);
}
