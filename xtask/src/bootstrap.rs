//! Make a fresh machine able to build and test voipwall. Each step checks first and only acts
//! when something is missing, so running it again costs a few process spawns.
//!
//! - `rust-src` for the nightly toolchain (`-Z build-std=core` for bpfel-unknown-none);
//! - `bpf-linker`, built against the nightly toolchain's own libLLVM: `LLVM_PREFIX` points at a
//!   folder whose `lib/` holds two symlinks to `libLLVM.so.<ver>-rust-<ver>-nightly`, one named
//!   `libLLVM.so`, one with the library's own (SONAME) name. No other LLVM is needed;
//! - bpffs mounted at /sys/fs/bpf;
//! - the Debian tools the tests drive.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// bpf-linker release known to build against LLVM 22 with the nightly toolchain here.
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Build,
    Run,
    Test,
    Bench,
}

/// Debian packages the tests and benchmarks use: (command that proves it is there, package).
/// The benchmark smoke run (part of the tests) drives nftables and ethtool too.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("promtool", "prometheus"),
    ("nft", "nftables"),
    ("ethtool", "ethtool"),
    // `man -l` renders the generated manual pages in the tests.
    ("man", "man-db"),
    // The package test: Debian's package checker, and the shells the completions are for.
    ("lintian", "lintian"),
    // The capture test decodes the drop samples with Wireshark's command line.
    ("tshark", "tshark"),
    ("zsh", "zsh"),
    ("fish", "fish"),
    // The SIP server and the SIP user agents of the network tests.
    ("kamailio", "kamailio"),
    ("sipp", "sip-tester"),
    // A real softphone for the pinhole tests (headless: a tone source, no sound card).
    ("baresip", "baresip-core"),
    // The filter a user would run instead, measured beside voipwall by the bench (and its smoke
    // run in the tests).
    ("xdp-filter", "xdp-tools"),
    // The random-source flood generator of the flood tests.
    ("trafgen", "netsniff-ng"),
    // The Local API the fleet tests run (offline, their own config and database).
    ("crowdsec", "crowdsec"),
    // Pins a map of a layout voipwall cannot carry, in the upgrade tests.
    ("bpftool", "bpftool"),
];

const BENCH_PACKAGES: &[(&str, &str)] = &[];

pub fn all(need: Need) -> Result<()> {
    prepend_cargo_bin_to_path();
    nightly_rust_src()?;
    if need >= Need::Test {
        lint_tools()?;
    }
    bpf_linker()?;
    if need >= Need::Run {
        require_root(need)?;
        bpffs()?;
    }
    if need >= Need::Test {
        let mut pkgs = TEST_PACKAGES.to_vec();
        if need >= Need::Bench {
            pkgs.extend_from_slice(BENCH_PACKAGES);
        }
        debian_packages(&pkgs)?;
    }
    Ok(())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(|| home().join(".cargo"), PathBuf::from).join("bin")
}

/// aya-build finds `bpf-linker` on PATH; `cargo install` puts it in `$CARGO_HOME/bin`.
fn prepend_cargo_bin_to_path() {
    let bin = cargo_bin();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|p| p == bin) {
        let mut parts = vec![bin];
        parts.extend(std::env::split_paths(&path));
        // SAFETY (edition 2024 requires the block): single-threaded at this point.
        unsafe { std::env::set_var("PATH", std::env::join_paths(parts).expect("valid PATH")) };
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output();
    match out {
        Ok(o) if o.status.success() => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        _ => {
            step("installing the nightly toolchain (minimal profile)");
            run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
            Ok(PathBuf::from(
                output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?.trim(),
            ))
        }
    }
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing (rustup component add rust-src --toolchain nightly)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The lint gates need rustfmt and clippy for the nightly toolchain (formatting and the eBPF
/// crate) and clippy for the stable one (the host crates).
fn lint_tools() -> Result<()> {
    let runs = |toolchain: &str, tool: &str| {
        Command::new("rustup")
            .args(["run", toolchain, tool, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for (toolchain, component, tool) in
        [("nightly", "rustfmt", "rustfmt"), ("nightly", "clippy", "cargo-clippy"), ("stable", "clippy", "cargo-clippy")]
    {
        if runs(toolchain, tool) {
            continue;
        }
        step(&format!("{component} for {toolchain}: installing"));
        run(Command::new("rustup").args(["component", "add", component, "--toolchain", toolchain]))?;
    }
    step("rustfmt and clippy (nightly), clippy (stable): present");
    Ok(())
}

/// The nightly toolchain's libLLVM and its LLVM major version.
fn nightly_libllvm() -> Result<(PathBuf, u32)> {
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let found = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("libLLVM.so.") && n.contains("-rust-")
            })
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    let name = found.file_name().expect("file").to_string_lossy().into_owned();
    let major: u32 = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {name}"))?;
    Ok((found, major))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn bpf_linker() -> Result<()> {
    let (libllvm, major) = nightly_libllvm()?;
    // The prefix is outside the repository so a CI machine keeps it (and bpf-linker's rpath to
    // it) between runs; it is keyed by the library's name, which changes with the nightly.
    let soname = libllvm.file_name().expect("file").to_os_string();
    let prefix = home().join(".cache/voipwall/llvm-prefix").join(soname.to_string_lossy().replace(['.', '-'], "_"));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link).with_context(|| format!("symlinking {}", link.display()))?;
        }
    }
    if bpf_linker_ok() {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
        return Ok(());
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against nightly's {} (LLVM {major}); takes 1-3 minutes once",
        Path::new(&soname).display()
    ));
    run(Command::new(env!("CARGO"))
        .args([
            "install",
            "--force",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run; check that {} is on PATH", cargo_bin().display());
    }
    Ok(())
}

/// cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// `cargo fuzz` (only `cargo xtask fuzz` needs it).
pub fn cargo_fuzz() -> Result<()> {
    let ok = || {
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
    };
    if ok() {
        step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}: present"));
        return Ok(());
    }
    step(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}: installing; takes a few minutes once"));
    run(Command::new(env!("CARGO")).args(["install", "--locked", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")]))?;
    if !ok() {
        bail!("cargo-fuzz was installed but does not run; check that {} is on PATH", cargo_bin().display());
    }
    Ok(())
}

fn require_root(need: Need) -> Result<()> {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        let what = match need {
            Need::Run => "the daemon attaches XDP programs",
            _ => "the tests load BPF programs and create network namespaces",
        };
        bail!("root is needed: {what} (running as uid {uid})");
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf"))
    {
        step("bpffs on /sys/fs/bpf: mounted");
        return Ok(());
    }
    step("bpffs on /sys/fs/bpf: mounting");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn debian_packages(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        step(&format!("Debian tools ({}): present", pkgs.iter().map(|p| p.1).collect::<Vec<_>>().join(", ")));
        return Ok(());
    }
    step(&format!("Debian tools: installing {}", missing.join(" ")));
    // Packages such as prometheus or kamailio would start their services on install; the tests
    // start their own instances. The standard Debian switch (policy-rc.d exiting 101) keeps
    // them down, and is only placed for this transaction if none is there.
    let policy_rc = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy_rc.exists() && std::fs::write(policy_rc, "#!/bin/sh\nexit 101\n").is_ok();
    if placed {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(policy_rc, std::fs::Permissions::from_mode(0o755));
    }
    // crowdsec's postinst registers with the online API unless credentials exist; the tests
    // run it offline, so a placeholder is put there first (only if nothing is there).
    if missing.contains(&"crowdsec") {
        let creds = Path::new("/etc/crowdsec/online_api_credentials.yaml");
        if !creds.exists() {
            std::fs::create_dir_all("/etc/crowdsec").context("creating /etc/crowdsec")?;
            std::fs::write(
                creds,
                "# offline: no online API\nurl: http://127.0.0.1:1/\nlogin: offline\npassword: offline\n",
            )
            .context("writing the offline crowdsec credentials")?;
        }
    }
    let result = run(Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .and_then(|()| {
            run(Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null()))
        });
    if placed {
        let _ = std::fs::remove_file(policy_rc);
    }
    result
}
