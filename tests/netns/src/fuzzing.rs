//! Helpers for the fuzz targets' unit tests (`fuzz/`, docs/fuzzing.md): the checked-in inputs of
//! a target, the seed corpus writer, and reproducible junk bytes. Shared by every crate whose
//! tests replay the corpora, so each reads them the same way.

use std::path::{Path, PathBuf};

/// The workspace's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`: path and bytes.
pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("read fuzz input {}: {err}", e.path().display()));
            out.push((e.path(), bytes));
        }
    }
    out
}

/// Writes `fuzz/corpus/<target>/seed-<name>` (the seed corpus writers' one step).
pub fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `count` byte strings of lengths 0, 1, .. wrapping below `max_len`, from a xorshift64 generator
/// started at `seed` (the same inputs on every run): quick junk for "never panics" tests.
pub fn junk(seed: u64, count: usize, max_len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x = seed.max(1);
    (0..count).map(move |i| {
        (0..i % max_len.max(1))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_reproducible_and_sized() {
        let a: Vec<Vec<u8>> = junk(7, 20, 6).collect();
        let b: Vec<Vec<u8>> = junk(7, 20, 6).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        assert!(a.iter().enumerate().all(|(i, v)| v.len() == i % 6));
        assert_ne!(a[5], junk(8, 20, 6).nth(5).unwrap());
    }

    #[test]
    fn the_fuzz_dir_is_the_workspace_one() {
        assert!(
            fuzz_dir().join("Cargo.toml").is_file(),
            "{}",
            fuzz_dir().display()
        );
    }
}
