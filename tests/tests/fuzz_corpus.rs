//! Replays the committed fuzz corpora on stable: every file under `fuzz/corpus/<target>/` and
//! `fuzz/seeds/<target>/` goes through the same checks as the cargo-fuzz target of that name
//! (`imgfetch_tests::fuzzing`). A missing or empty corpus directory is a failure, so that a
//! corpus cannot silently disappear, and so is a target in `fuzz/fuzz_targets/` that this
//! replay does not know. See docs/FUZZING.md.

use std::path::{Path, PathBuf};

use imgfetch_tests::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

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

/// Replays every file of every target, then fails naming each file that failed (the panic
/// messages above say why).
fn replay(kind: &str) {
    let root = fuzz_dir().join(kind);
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let dir = root.join(target);
        let files = files(&dir);
        for file in &files {
            let data = std::fs::read(file).expect("readable corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(format!(
                    "{target}: {} fails its checks; reproduce with \
                     `cargo +nightly fuzz run {target} {}` in fuzz/",
                    file.display(),
                    file.display()
                ));
            }
        }
        eprintln!("{target}: {} {kind} files replayed", files.len());
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn every_corpus_file_passes_its_target_checks() {
    replay("corpus");
}

#[test]
fn every_seed_passes_its_target_checks() {
    replay("seeds");
}

/// Each `fuzz/fuzz_targets/<name>.rs` is in `TARGETS` and the other way round, so that a new
/// target's corpus is replayed here from the start.
#[test]
fn every_fuzz_target_is_replayed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut known: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    known.sort();
    assert_eq!(
        on_disk, known,
        "fuzz/fuzz_targets and imgfetch_tests::fuzzing::TARGETS differ"
    );
}
