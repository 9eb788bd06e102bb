//! `cargo xtask fuzz dataplane --minutes N`: generated policies and frames through the kernel
//! program (BPF_PROG_TEST_RUN) and through the model in `tests::model`, until the time is up
//! or the first difference, which is shrunk and written to `tests/regressions/dataplane/`
//! (the test suite replays every case there). `--seed S` starts elsewhere; `--frames N` sets
//! the frames per policy.

use std::time::{Duration, Instant};

use tests::differential::{Totals, run_policy};

fn arg(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| v.parse().expect("a number"))
}

fn main() {
    assert!(tests::bpf_available(), "the differential run needs root and BPF");
    let minutes = arg("--minutes").unwrap_or(10);
    let per_policy = arg("--frames").unwrap_or(20_000) as usize;
    let seed = arg("--seed")
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut last_report = Instant::now();
    let mut i = 0u64;
    println!("differential run: seed {seed}, {per_policy} frames per policy, {minutes} min");
    while Instant::now() < deadline {
        let policy_seed = seed.wrapping_mul(1_000_003).wrapping_add(i);
        if let Err(case) = run_policy(policy_seed, per_policy, None, &mut totals) {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/dataplane");
            std::fs::create_dir_all(&dir).expect("regressions folder");
            let path = dir.join(format!("found-{policy_seed}.json"));
            std::fs::write(&path, serde_json::to_string_pretty(&case).unwrap()).expect("write case");
            println!(
                "DIFFERENCE after {} frames over {} policies: {}\n  case ({} frame(s)) written to {}\n  name it after the bug once fixed; the test suite replays it",
                totals.frames,
                totals.policies,
                case.found,
                case.frames.len(),
                path.display()
            );
            std::process::exit(1);
        }
        i += 1;
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "  {:.0} s: {} frames, {} policies, {:.0} frames/s",
                started.elapsed().as_secs_f64(),
                totals.frames,
                totals.policies,
                totals.frames as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "no difference: {} frames over {} generated policies in {:.0} s",
        totals.frames,
        totals.policies,
        started.elapsed().as_secs_f64()
    );
    println!("  later fragments that inherited their first fragment's outcome: {}", totals.inherited);
    println!("  frames the host sent (egress program): {}", totals.egress);
    println!(
        "  tight-limit policies: {} ({} frames); bans the program raised: {}; known peers learned: {}",
        totals.tight, totals.tight_frames, totals.bans_raised, totals.learned
    );
    for (r, n) in &totals.by_reason {
        println!("  {r:<24} {n}");
    }
}
