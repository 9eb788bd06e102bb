//! `cargo xtask bench [--quick]` regenerates BENCHMARKS.md, docs/bench/results.json and the
//! charts; `--smoke` (run by `cargo xtask test`) exercises every section at toy sizes and writes
//! only under target/, so the harness cannot rot.

use std::{path::PathBuf, time::Instant};

use tests::bench::{
    self, Baseline, Mode, Settings, controller, e2e, ops, paths,
    report::{self, Machine, Results},
    scale,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if args.iter().any(|a| a == "--smoke") {
        Mode::Smoke
    } else if args.iter().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    if !tests::bpf_available() {
        std::process::exit(1);
    }
    let started = Instant::now();
    let settings = Settings::new(mode);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpus - 1;
    let pinned = bench::pin_to_cpu(cpu);
    eprintln!(
        "bench: {mode:?} mode, test_run repeat {}, {} rounds, pinned to CPU {cpu}: {pinned}",
        settings.repeat, settings.rounds
    );
    let mut baseline = Baseline::load();
    let step = |what: &str| eprintln!("bench: [{:>5.1}s] {what}", started.elapsed().as_secs_f64());

    step("single operations");
    let op_rows = ops::run(&settings, &mut baseline);
    step("per-path costs");
    let (path_rows, early_untouched, paired) = paths::run(&settings, &baseline);
    step("against xdp-filter");
    let peers = bench::peers::run(&settings);
    step("block-list scale");
    let (block_list, cold_reads) = scale::block_list(&settings, &mut baseline);
    step("tracked-sources scale and glue");
    let tracked = scale::tracked(&settings, &mut baseline);
    step("end to end on a veth pair");
    let (e2e_rows, e2e_paired) = e2e::run(&settings, &mut baseline);
    // The daemons of the last two sections run on every CPU, as deployed.
    let unpinned = bench::Unpinned::new();
    step("controller");
    let ctl = controller::run(&settings);
    step("fleet (CrowdSec LAPI)");
    let fleet = bench::fleet::run(&settings);
    drop(unpinned);

    let mut results = Results {
        machine: Machine::probe(),
        settings,
        ops: op_rows,
        paths: path_rows,
        paired,
        peers,
        early_drops_touch_no_rate_table: early_untouched,
        block_list,
        cold_reads,
        tracked_known: tracked.known,
        tracked_new: tracked.new,
        glue: tracked.glue,
        e2e: e2e_rows,
        e2e_paired,
        controller: ctl,
        fleet,
        targets: Vec::new(),
    };
    results.targets = report::targets(&results);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (md, dir) = if mode == Mode::Smoke {
        let d = root.join("target/bench-smoke");
        (d.join("BENCHMARKS.md"), d.join("bench"))
    } else {
        (root.join("BENCHMARKS.md"), root.join("docs/bench"))
    };
    report::write(&results, &md, &dir).expect("writing the report");
    for t in &results.targets {
        eprintln!("bench: {} {}: {}", if t.met { "MET " } else { "MISS" }, t.target, t.measured);
    }
    step(&format!("wrote {} and {}", md.display(), dir.display()));
    // The harness itself must have measured something on every section.
    assert!(results.paths.iter().all(|p| p.ns.median > 0.0));
    assert!(results.e2e.iter().all(|e| e.handled > 0), "every end-to-end filter handled frames: {:?}", results.e2e);
    assert!(results.controller.bulk.median > 0.0);
}
