//! The module layering docs/ARCHITECTURE.md states ("Layers"), checked on the sources: the
//! checksum imports nothing of the crate, the batch format only the checksum, and the storage
//! engine only the batch format, the checksum and the metrics cells. A
//! `use crate::handlers::...` slipped into `storage` fails here with the file and line, instead
//! of growing a cycle nobody sees.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Test-only files may reach further (a storage test builds producer state with the shard's
/// table); they are not part of the layer.
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs") || name == "testutil.rs"
}

/// Every `crate::<module>` a module's non-test sources name outside `#[cfg(test)]` modules,
/// with where, except the module itself and the `allowed` ones.
fn foreign_imports(module: &str, allowed: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let dir = root.join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    } else {
        files.push(root.join(format!("{module}.rs")));
    }
    let mut found = Vec::new();
    for file in files.iter().filter(|f| !is_test_file(f)) {
        let text = fs::read_to_string(file).expect("readable source");
        let mut after_cfg_test = false;
        let mut in_test_module = false;
        for (number, line) in text.lines().enumerate() {
            // A `#[cfg(test)] mod tests { ... }` block is skipped to its closing brace at the
            // start of a line; other test-only items are checked like the rest.
            if in_test_module {
                in_test_module = line != "}";
                continue;
            }
            let trimmed = line.trim_start();
            if after_cfg_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
                in_test_module = true;
                continue;
            }
            after_cfg_test = trimmed.starts_with("#[cfg(test)]");
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if name != module && !allowed.contains(&name.as_str()) {
                    found.push(format!(
                        "{}:{}: crate::{name}",
                        file.strip_prefix(&root).unwrap_or(file).display(),
                        number + 1
                    ));
                }
                rest = after;
            }
        }
    }
    assert!(!files.is_empty(), "no sources found for {module}");
    found
}

#[test]
fn the_checksum_imports_nothing_of_the_crate() {
    let found = foreign_imports("checksum", &[]);
    assert!(found.is_empty(), "checksum must stay a leaf: {found:#?}");
}

#[test]
fn the_batch_format_imports_only_the_checksum() {
    let found = foreign_imports("record_batch", &["checksum"]);
    assert!(
        found.is_empty(),
        "record_batch must stay the bottom layer: {found:#?}"
    );
}

#[test]
fn storage_imports_only_the_batch_format_the_checksum_and_metrics() {
    let found = foreign_imports("storage", &["record_batch", "checksum", "metrics"]);
    assert!(
        found.is_empty(),
        "storage must not depend on the wire, shards or transactions: {found:#?}"
    );
}
