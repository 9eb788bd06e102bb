//! `cargo xtask package`: the Debian package, built with Debian's own `dpkg-deb` from a staged
//! tree (no debhelper source package: the binary is built by cargo, the rest is a handful of
//! files). Man pages and completions come from the release binary itself (`voipwall manpages`,
//! `voipwall completions`), so they always match its CLI.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::step;

/// What the unit, the scripts and the tests agree on.
const BIN: &str = "usr/sbin/voipwall";
const UNIT: &str = "lib/systemd/system/voipwall@.service";
const POLICY: &str = "etc/voipwall/default.toml";

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n`: no name or timestamp in the header, so the package is reproducible.
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))?;
    Ok(())
}

/// The newest glibc symbol version the binary needs (`objdump -T`), for `Depends: libc6`.
fn glibc_needed(bin: &Path) -> Result<String> {
    let out = String::from_utf8(run(Command::new("objdump").arg("-T").arg(bin))?)?;
    let mut best = (2u32, 17u32);
    for v in out.split("GLIBC_").skip(1) {
        let v: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        let mut parts = v.split('.').filter_map(|p| p.parse::<u32>().ok());
        if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
            best = best.max((a, b));
        }
    }
    Ok(format!("{}.{}", best.0, best.1))
}

/// Build `target/debian/voipwall_VERSION_ARCH.deb` and return its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture"))?)?.trim().to_string();
    let stage = root.join("target/debian/stage");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(&stage)?;

    // The binary, stripped (debug info does not belong in the package).
    let built = root.join("target/release/voipwall");
    let bin = stage.join(BIN);
    fs::create_dir_all(bin.parent().expect("sbin"))?;
    fs::copy(&built, &bin).context("copying the release binary (built by `cargo build --release`)")?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"])
        .arg(&bin))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;

    // The unit and the default policy.
    write(&stage.join(UNIT), &fs::read(root.join("contrib/voipwall@.service"))?, 0o644)?;
    write(&stage.join(POLICY), &fs::read(root.join("packaging/default.toml"))?, 0o644)?;

    // Man pages and completions from the binary's own CLI definitions.
    let man = stage.join("usr/share/man/man8");
    fs::create_dir_all(&man)?;
    run(Command::new(&built).arg("manpages").arg(&man))?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
        gzip(&page)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/voipwall"),
        ("zsh", "usr/share/zsh/vendor-completions/_voipwall"),
        ("fish", "usr/share/fish/vendor_completions.d/voipwall.fish"),
    ] {
        let script = run(Command::new(&built).args(["completions", shell]))?;
        write(&stage.join(path), &script, 0o644)?;
    }

    // Documentation Debian requires: copyright and a changelog (a native package's).
    let doc = stage.join("usr/share/doc/voipwall");
    write(
        &doc.join("copyright"),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: voipwall\n\n\
          Files: *\n\
          Copyright: 2026 voipwall developers\n\
          License: MIT or Apache-2.0\n \
          voipwall is dual-licensed under the MIT license and the Apache License 2.0; on Debian\n \
          systems the full text of the Apache License 2.0 is in\n \
          /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;
    let date = String::from_utf8(run(Command::new("date").args(["-R", "-u", "-d", "@0"]).env("LC_ALL", "C"))?)?;
    write(
        &doc.join("changelog"),
        format!(
            "voipwall ({version}) unstable; urgency=medium\n\n  * Package built by `cargo xtask package`.\n\n -- voipwall developers <voipwall@example.org>  {}\n",
            date.trim()
        )
        .as_bytes(),
        0o644,
    )?;
    gzip(&doc.join("changelog"))?;

    // Control files.
    let debian = stage.join("DEBIAN");
    let size_kib = String::from_utf8(run(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(&stage))?)?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    let libc = glibc_needed(&bin)?;
    write(
        &debian.join("control"),
        format!(
            "Package: voipwall\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: voipwall developers <voipwall@example.org>\n\
             Installed-Size: {size_kib}\n\
             Depends: libc6 (>= {libc}), libgcc-s1\n\
             Section: net\n\
             Priority: optional\n\
             Description: line-rate XDP firewall for VoIP servers\n \
             voipwall filters a VoIP server's public interface in XDP, before the kernel's\n \
             network stack: it drops what the host's role does not need, polices packet\n \
             rates per source, bans floods and SIP scanners, reads SIP requests in the\n \
             kernel and can share bans across a fleet through CrowdSec.\n \
             .\n \
             This package holds the voipwall daemon and CLI, a systemd unit per interface\n \
             (voipwall@IFACE), a commented default policy, manual pages and shell\n \
             completions.\n"
        )
        .as_bytes(),
        0o644,
    )?;
    write(&debian.join("conffiles"), format!("/{POLICY}\n").as_bytes(), 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        write(&debian.join(script), &fs::read(root.join("packaging/debian").join(script))?, 0o755)?;
    }
    let mut sums = String::new();
    let mut files = Vec::new();
    collect(&stage, &mut files)?;
    files.sort();
    for f in files.iter().filter(|f| !f.starts_with(&debian)) {
        let out = String::from_utf8(run(Command::new("md5sum").arg(f))?)?;
        let sum = out.split_whitespace().next().unwrap_or_default();
        sums.push_str(&format!("{sum}  {}\n", f.strip_prefix(&stage)?.display()));
    }
    write(&debian.join("md5sums"), sums.as_bytes(), 0o644)?;

    let deb = root.join(format!("target/debian/voipwall_{version}_{arch}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() { collect(&p, out)? } else { out.push(p) }
    }
    Ok(())
}
