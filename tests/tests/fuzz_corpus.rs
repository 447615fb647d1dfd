//! Replays the committed fuzz corpora on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/seeds/<target>/` goes through the same checks as the cargo-fuzz target of that name
//! (`imgfetch_tests::fuzzing`). A missing or empty corpus directory is a failure, so that a
//! corpus cannot silently disappear. See docs/FUZZING.md.

use std::path::{Path, PathBuf};

use imgfetch_tests::fuzzing::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    files
}

fn replay(kind: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind);
    for (target, check) in TARGETS {
        let dir = root.join(target);
        let files = files(&dir);
        for file in &files {
            let data = std::fs::read(file).expect("readable corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its checks; reproduce with \
                 `cargo +nightly fuzz run {target} {}` in fuzz/",
                file.display(),
                file.display()
            );
        }
        eprintln!("{target}: {} {kind} files pass", files.len());
    }
}

#[test]
fn every_corpus_file_passes_its_target_checks() {
    replay("corpus");
}

#[test]
fn every_seed_passes_its_target_checks() {
    replay("seeds");
}
