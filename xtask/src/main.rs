//! `cargo xtask`: build, run, test and bench voipwall. Every command first bootstraps what a
//! fresh machine lacks (nightly rust-src, bpf-linker built against the nightly toolchain's own
//! libLLVM, bpffs, the Debian tools the tests drive), idempotently, announcing each step.

mod bootstrap;
mod package;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (also done by every other command).
    Bootstrap,
    /// Build everything (release).
    Build,
    /// Build and run the daemon with the embedded default policy.
    Run {
        #[arg(long)]
        iface: String,
        /// Extra arguments for `voipwall run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, BPF_PROG_TEST_RUN verdicts, network-namespace tests, the
    /// benchmark smoke run.
    Test {
        /// Only tests whose binary or name contains this.
        filter: Option<String>,
    },
    /// Build the Debian package (target/debian/voipwall_VERSION_ARCH.deb).
    Package,
    /// Fuzz the parsers that take outside input (cargo-fuzz, libFuzzer): every target, or one.
    /// New inputs go to target/fuzz-corpus; `--save` merges them, minimised, into fuzz/corpus.
    /// A crash stops the run and names its input (fuzz/artifacts/TARGET): once fixed, move it
    /// to fuzz/regressions/TARGET, where the test suite replays it.
    Fuzz {
        /// One of: policy, request, cidr_file, state, lapi, sip, sdp; or `dataplane`: generated
        /// policies and frames through the kernel program and its model, stopping at the first
        /// difference, shrunk and written to tests/regressions/dataplane (never part of a plain
        /// `fuzz` run: it needs root and BPF).
        target: Option<String>,
        /// Minutes per target (at least 1).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
        /// Merge the new inputs into the checked-in corpus afterwards.
        #[arg(long)]
        save: bool,
    },
    /// Soak the release daemon: one fleet host under mixed legitimate and attack traffic in
    /// test namespaces, reloads every 10 s, CLI changes, the LAPI flapping; reports RSS, FDs,
    /// map fills and lost events, and checks the packet accounting. Not part of `test`.
    Soak {
        /// Minutes to run (at least 1).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
    /// Run the benchmarks and regenerate BENCHMARKS.md, results JSON and charts.
    Bench {
        /// A short run (under two minutes).
        #[arg(long)]
        quick: bool,
        /// Extra arguments for the bench binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root).context("cd to the workspace")?;
    match cli.command {
        Cmd::Bootstrap => bootstrap::all(bootstrap::Need::Test),
        Cmd::Build => {
            bootstrap::all(bootstrap::Need::Build)?;
            cargo(&["build", "--release", "-p", "controller"])
        }
        Cmd::Run { iface, args } => {
            bootstrap::all(bootstrap::Need::Run)?;
            cargo(&["build", "--release", "-p", "controller"])?;
            let bin = root.join("target/release/voipwall");
            step(&format!("running {} --iface {iface} run {}", bin.display(), args.join(" ")));
            let status = Command::new(&bin)
                .args(["--iface", &iface, "run"])
                .args(&args)
                .status()
                .context("starting voipwall")?;
            if !status.success() {
                bail!("voipwall exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { filter } => test(filter.as_deref()),
        Cmd::Package => {
            bootstrap::all(bootstrap::Need::Build)?;
            let deb = build_package(&root)?;
            step(&format!("built {}", deb.display()));
            Ok(())
        }
        Cmd::Fuzz { target, minutes, save } => fuzz(&root, target.as_deref(), minutes, save),
        Cmd::Soak { minutes } => {
            bootstrap::all(bootstrap::Need::Test)?;
            cargo(&["build", "--release", "-p", "controller", "--bin", "voipwall"])?;
            // SAFETY (edition 2024 requires the block): no other thread runs yet.
            unsafe { std::env::set_var("VOIPWALL_BIN", root.join("target/release/voipwall")) };
            cargo(&["run", "--release", "-p", "tests", "--bin", "soak", "--", "--minutes", &minutes.to_string()])
        }
        Cmd::Bench { quick, args } => {
            bootstrap::all(bootstrap::Need::Bench)?;
            // The controller benchmarks time the release daemon.
            cargo(&["build", "--release", "-p", "controller", "--bin", "voipwall"])?;
            // SAFETY (edition 2024 requires the block): no other thread runs yet.
            unsafe { std::env::set_var("VOIPWALL_BIN", root.join("target/release/voipwall")) };
            let mut a = vec!["run", "--release", "-p", "tests", "--bin", "bench", "--"];
            if quick {
                a.push("--quick");
            }
            let extra: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(extra);
            cargo(&a)
        }
    }
}

/// The fuzz targets, as named in `fuzz/Cargo.toml` and `voipwall::fuzzing::TARGETS`.
const FUZZ_TARGETS: &[&str] = &["policy", "request", "cidr_file", "state", "lapi", "sip", "sdp"];

fn fuzz(root: &Path, only: Option<&str>, minutes: u64, save: bool) -> Result<()> {
    if only == Some("dataplane") {
        // The differential run of the kernel program against the model (root and BPF).
        bootstrap::all(bootstrap::Need::Test)?;
        step(&format!("differential run of the data plane against its model for {minutes} min"));
        return cargo(&[
            "run",
            "--release",
            "-p",
            "tests",
            "--bin",
            "dataplane_fuzz",
            "--",
            "--minutes",
            &minutes.to_string(),
        ]);
    }
    bootstrap::all(bootstrap::Need::Build)?;
    bootstrap::cargo_fuzz()?;
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; the targets are {}, and dataplane", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    for t in targets {
        let fresh = root.join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&fresh).with_context(|| format!("creating {}", fresh.display()))?;
        let seeds = root.join("fuzz/corpus").join(t);
        let regressions = root.join("fuzz/regressions").join(t);
        step(&format!("fuzzing {t} for {minutes} min (new inputs in {})", fresh.display()));
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root.join("fuzz"))
            // The data plane object is not needed: the targets are the controller's parsers.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run", t])
            .arg(&fresh)
            .arg(&seeds);
        if regressions.is_dir() {
            cmd.arg(&regressions);
        }
        cmd.args(["--", &format!("-max_total_time={}", minutes * 60), "-timeout=10", "-rss_limit_mb=2048"]);
        let status = cmd.status().context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {t} failed ({status}): its input is under fuzz/artifacts/{t}; replay it with `cargo +nightly fuzz run {t} FILE` in fuzz/, and once fixed move it to fuzz/regressions/{t}"
            );
        }
        if save {
            save_corpus(root, t, &seeds, &fresh)?;
        }
    }
    step("fuzzing finished without a crash");
    Ok(())
}

/// Replace the checked-in corpus of `t` with the smallest set of its inputs and the new ones
/// that covers every edge they cover (libFuzzer's `-set_cover_merge`), so the repository keeps
/// a few hundred inputs rather than every one that added a feature.
fn save_corpus(root: &Path, t: &str, seeds: &Path, fresh: &Path) -> Result<()> {
    let merged = root.join("target/fuzz-merge").join(t);
    let _ = std::fs::remove_dir_all(&merged);
    std::fs::create_dir_all(&merged).with_context(|| format!("creating {}", merged.display()))?;
    step(&format!("merging the {t} inputs into {} (set cover)", seeds.display()));
    let status = Command::new("cargo")
        .current_dir(root.join("fuzz"))
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz", "run", t])
        .arg(&merged)
        .arg(seeds)
        .arg(fresh)
        .args(["--", "-set_cover_merge=1", "-use_counters=0"])
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("merging the {t} corpus failed ({status})");
    }
    let kept = std::fs::read_dir(&merged)?.count();
    if kept == 0 {
        bail!("the {t} merge kept no input; {} is left as it was", seeds.display());
    }
    std::fs::remove_dir_all(seeds).with_context(|| format!("clearing {}", seeds.display()))?;
    std::fs::rename(&merged, seeds).or_else(|_| {
        // Another file system: copy.
        std::fs::create_dir_all(seeds)?;
        for e in std::fs::read_dir(&merged)? {
            let e = e?;
            std::fs::copy(e.path(), seeds.join(e.file_name()))?;
        }
        std::io::Result::Ok(())
    })?;
    step(&format!("{} keeps {kept} {t} inputs", seeds.display()));
    Ok(())
}

/// The release binary, then the package around it.
fn build_package(root: &Path) -> Result<PathBuf> {
    cargo(&["build", "--release", "-p", "controller", "--bin", "voipwall"])?;
    package::build(root)
}

/// Announce a step.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

fn cargo(args: &[&str]) -> Result<()> {
    step(&format!("cargo {}", args.join(" ")));
    let status = Command::new(env!("CARGO")).args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The lint gates: formatting with the nightly rustfmt (`rustfmt.toml` uses its options), clippy
/// with warnings as errors on the host crates (stable) and on the eBPF crate (nightly, for the
/// BPF target).
fn lint(root: &Path) -> Result<()> {
    let nightly = |args: &[&str], dir: &Path| -> Result<()> {
        step(&format!("cargo +nightly {} (in {})", args.join(" "), dir.display()));
        let status = Command::new("cargo")
            .arg("+nightly")
            .args(args)
            .current_dir(dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .context("running cargo +nightly")?;
        if !status.success() {
            bail!("cargo +nightly {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    nightly(&["fmt", "--all", "--", "--check"], root).context("formatting differs: run `cargo +nightly fmt --all`")?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "xdp-ebpf",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    nightly(
        &[
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
        &root.join("xdp-ebpf"),
    )
}

/// Test binaries that create network namespaces or start daemons run one test at a time.
fn is_serial(name: &str) -> bool {
    name.starts_with("netns_") || name.starts_with("e2e_") || name.starts_with("daemon_")
}

fn test(filter: Option<&str>) -> Result<()> {
    bootstrap::all(bootstrap::Need::Test)?;
    let started = Instant::now();
    let root = workspace_root();
    let mut parallel = Vec::new();
    let mut serial = Vec::new();
    for entry in std::fs::read_dir(root.join("tests/tests")).context("listing tests/tests")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().expect("file").to_string_lossy().into_owned();
            if is_serial(&name) { serial.push(name) } else { parallel.push(name) }
        }
    }
    parallel.sort();
    serial.sort();
    let matches = |name: &str| filter.is_none_or(|f| name.contains(f));

    // The upgrade tests take a running daemon over with the same binary built with another map
    // layout (and back): built first, set aside, then the normal build takes its place.
    if matches("daemon_upgrade") {
        cargo(&["build", "-p", "controller", "--bin", "voipwall", "--features", "layout-canary"])?;
        let canary = root.join("target/debug/voipwall-layout-canary");
        std::fs::copy(root.join("target/debug/voipwall"), &canary).context("setting the layout-canary build aside")?;
        // SAFETY (edition 2024 requires the block): no other thread runs yet.
        unsafe { std::env::set_var("VOIPWALL_CANARY_BIN", canary) };
    }
    // The daemon tests drive the real `voipwall` binary.
    cargo(&["build", "-p", "controller", "--bin", "voipwall"])?;
    // SAFETY (edition 2024 requires the block): no other thread runs yet.
    unsafe { std::env::set_var("VOIPWALL_BIN", root.join("target/debug/voipwall")) };

    // 0. Formatting and lints gate everything else.
    if filter.is_none() {
        lint(&root)?;
    }
    // 1. Host unit tests of every crate (no root needed) and the test-helper crate's own tests.
    if filter.is_none() {
        cargo(&["test", "--workspace", "--exclude", "xdp-ebpf", "--lib", "--bins", "--no-fail-fast"])?;
    }
    // The package test (in step 2) checks the .deb built here.
    if filter.is_none_or(|f| "package".contains(f)) {
        let deb = build_package(&root)?;
        // SAFETY (edition 2024 requires the block): no other thread runs yet.
        unsafe { std::env::set_var("VOIPWALL_DEB", deb) };
    }
    // 2. BPF_PROG_TEST_RUN suites and other root tests that isolate themselves.
    let mut args: Vec<String> = vec!["test".into(), "-p".into(), "tests".into(), "--no-fail-fast".into()];
    let selected: Vec<&String> = parallel.iter().filter(|n| matches(n)).collect();
    if !selected.is_empty() {
        for n in &selected {
            args.push("--test".into());
            args.push((*n).clone());
        }
        // Root-only tests are `#[ignore]`d so a plain `cargo test` shows them as such; here they
        // run (and under CI=true fail without root or BPF).
        args.extend(["--".into(), "--include-ignored".into()]);
        cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    // 3. Network namespace and daemon tests, one at a time (timing-sensitive traffic).
    let selected: Vec<&String> = serial.iter().filter(|n| matches(n)).collect();
    if !selected.is_empty() {
        let mut args: Vec<String> = vec!["test".into(), "-p".into(), "tests".into(), "--no-fail-fast".into()];
        for n in &selected {
            args.push("--test".into());
            args.push((*n).clone());
        }
        // --nocapture: the end-to-end tests print their measured figures ("figure: ...").
        args.extend(["--".into(), "--include-ignored".into(), "--test-threads=1".into(), "--nocapture".into()]);
        cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    // 4. The benchmark harness in smoke mode, so it cannot rot.
    if filter.is_none_or(|f| "bench".contains(f)) && root.join("tests/src/bin/bench.rs").exists() {
        cargo(&["run", "--release", "-p", "tests", "--bin", "bench", "--", "--smoke"])?;
    }
    step(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}
