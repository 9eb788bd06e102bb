//! The Debian package that `cargo xtask package` builds (`cargo xtask test` builds it first and
//! names it in VOIPWALL_DEB): lintian finds no error, systemd accepts the unit, and installed
//! into a scratch root with dpkg (maintainer scripts run chrootless against that root) it holds
//! the binary, unit, default policy, man pages and completions; removing it takes voipwall off
//! every interface, purging removes pins and state.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tests::{
    bpf_available,
    daemon::{Daemon, Env},
    netns::Pair,
};

fn deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VOIPWALL_DEB") {
        return Some(PathBuf::from(p));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true: VOIPWALL_DEB is not set (`cargo xtask test` builds the package and sets it)");
    }
    eprintln!("SKIPPED: VOIPWALL_DEB is not set (run `cargo xtask test`, which builds the package)");
    None
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vwpkg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn lintian_reports_no_errors() {
    let Some(deb) = deb() else { return };
    let out = run(Command::new("lintian").args(["--tag-display-limit", "0", "--fail-on", "error"]).arg(&deb));
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("lintian:\n{text}");
    assert!(!text.lines().any(|l| l.starts_with("E:")), "{text}");
}

#[test]
fn systemd_accepts_the_unit() {
    let Some(deb) = deb() else { return };
    let dir = scratch("unit");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir));
    // An instance of the template, as `systemctl enable voipwall@eth1` makes it; MANPATH lets
    // systemd check `Documentation=man:voipwall(8)` against the packaged page.
    let unit = dir.join("voipwall@eth1.service");
    std::fs::copy(dir.join("lib/systemd/system/voipwall@.service"), &unit).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&unit).env("MANPATH", dir.join("usr/share/man")));
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.trim().is_empty(), "systemd-analyze verify warns:\n{warnings}");
    let text = std::fs::read_to_string(&unit).unwrap();
    for hardening in [
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "StateDirectory=voipwall",
        "RuntimeDirectory=voipwall",
    ] {
        assert!(text.contains(hardening), "{hardening} in the unit");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

#[test]
#[ignore = "needs root and BPF"]
fn installs_into_a_scratch_root_and_removing_it_detaches() {
    if !bpf_available() {
        return;
    }
    let Some(deb) = deb() else { return };
    // The packaged paths below one temp root, with a bpffs of its own on <root>/sys/fs/bpf.
    let env = Env::debian_layout();
    let root = env.root.clone();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("var/lib/dpkg/available"), "").unwrap();
    dpkg(&root, &["-i", deb.to_str().unwrap()]);

    // Files: the binary runs, the default policy checks, the conffile is registered.
    let bin = root.join("usr/sbin/voipwall");
    run(Command::new(&bin).arg("--version"));
    run(Command::new(&bin).args(["policy", "check"]).arg(root.join("etc/voipwall/default.toml")));
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
        .args(["-W", "-f=${Conffiles}", "voipwall"]));
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/voipwall/default.toml"));
    assert!(root.join("lib/systemd/system/voipwall@.service").exists());

    // Man pages: voipwall(8) and one per verb, each renders.
    let man = root.join("usr/share/man/man8");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    for want in ["voipwall.8.gz", "voipwall-explain.8.gz", "voipwall-detach.8.gz", "voipwall-block.8.gz"] {
        assert!(pages.contains(&man.join(want)), "{want} in {pages:?}");
    }
    for page in &pages {
        let out = run(Command::new("man").arg("-l").arg(page).env("MANWIDTH", "100"));
        assert!(out.stdout.len() > 200, "{} renders", page.display());
    }
    // Completions: each shell parses its script, and it knows the verbs.
    for (shell, path, check) in [
        ("bash", "usr/share/bash-completion/completions/voipwall", vec!["-n"]),
        ("zsh", "usr/share/zsh/vendor-completions/_voipwall", vec!["-n"]),
        ("fish", "usr/share/fish/vendor_completions.d/voipwall.fish", vec!["--no-execute"]),
    ] {
        let file = root.join(path);
        run(Command::new(shell).args(&check).arg(&file));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("explain") && text.contains("detach"), "{shell} completion knows the verbs");
    }

    // A daemon of the packaged layout that stops with its program left attached (what the unit
    // does on every stop), then the package is removed.
    let pair = Pair::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--keep-attached"]);
    d.ok(&["block", "192.0.2.1", "--reason", "kept across remove"]);
    assert!(d.stop().success());
    assert!(Daemon::attached_program_id(&pair).is_some(), "--keep-attached leaves it attached");
    dpkg(&root, &["-r", "voipwall"]);
    assert_eq!(Daemon::attached_program_id(&pair), None, "removing the package detached the interface");
    assert!(!bin.exists());
    let pins = root.join("sys/fs/bpf/voipwall");
    assert!(std::fs::read_dir(&pins).unwrap().next().is_some(), "remove keeps the pinned maps");
    assert!(root.join("var/lib/voipwall").read_dir().unwrap().next().is_some(), "remove keeps the state");
    assert!(root.join("etc/voipwall/default.toml").exists(), "remove keeps the conffile");

    dpkg(&root, &["-P", "voipwall"]);
    assert!(!pins.exists(), "purge removes the pins");
    assert!(!root.join("var/lib/voipwall").exists(), "purge removes the state");
    assert!(!root.join("etc/voipwall/default.toml").exists(), "purge removes the conffile");
}
