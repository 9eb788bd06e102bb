//! `cargo xtask bench [--quick]` (and `--smoke` from `cargo xtask test`): see `tests::bench`.

use std::fmt::Write as _;

use tests::bench::{self, Baseline, Mode, Settings, ops, paths};

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
    let settings = Settings::new(mode);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpus - 1;
    let pinned = bench::pin_to_cpu(cpu);
    eprintln!("bench: mode {mode:?}, repeat {}, rounds {}, pinned to CPU {cpu}: {pinned}", settings.repeat, settings.rounds);
    let mut baseline = Baseline::load();
    let op_rows = ops::run(&settings, &mut baseline);
    for r in &op_rows {
        println!("| {} | {:.1} | +{:.1} |", r.op, r.ns.median, r.extra_ns);
    }
    let rows = paths::run(&settings, &baseline);
    let mut table = String::from("| path | reason | ns/packet (median) | spread | empty program ns | ratio to empty |\n| --- | --- | ---: | ---: | ---: | ---: |\n");
    for r in &rows {
        let _ = writeln!(table, "| {} | {} | {:.1} | {:.0}% | {:.1} | {:.2}x |", r.path, r.reason, r.ns.median, r.ns.spread * 100.0, r.empty_ns.median, r.ratio);
    }
    println!("{table}");
    for r in &rows {
        assert!(r.ns.median > 0.0 && r.empty_ns.median > 0.0, "{}: no measurement", r.path);
    }
}
