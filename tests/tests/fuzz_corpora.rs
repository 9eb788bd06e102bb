//! Replays every fuzz corpus and regression input (`fuzz/corpus/TARGET`, `fuzz/regressions/TARGET`)
//! through its target, as `cargo xtask fuzz` runs them: none may panic. New inputs that the
//! fuzzer finds crashing are kept under `fuzz/regressions` once fixed, so they run here for good.

use std::path::Path;

use voipwall::fuzzing::TARGETS;

#[test]
fn every_corpus_and_regression_input_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let mut seen = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if let Err(e) = std::panic::catch_unwind(|| target(&data)) {
                    let what =
                        e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                    panic!("{name}: {} panics: {}", path.display(), what.unwrap_or_default());
                }
                seen += 1;
            }
        }
        assert!(seen > 0, "no inputs for the {name} target");
        replayed += seen;
    }
    println!("replayed {replayed} fuzz inputs");
}
