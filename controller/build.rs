//! Build the eBPF object (`xdp-ebpf`, bin target) with the nightly toolchain and bpf-linker, into
//! `OUT_DIR/xdp-ebpf`, where `src/dataplane.rs` embeds it. `cargo xtask` bootstraps the
//! toolchain pieces this needs on a fresh machine.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("controller has no parent directory"))?
        .join("xdp-ebpf");
    let root_dir = root.to_str().context("non UTF-8 path to xdp-ebpf")?;
    let skipped = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skipped {
        // Host-only builds (fast unit tests): embed an empty object; loading it fails with a
        // clear error instead of the build failing.
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        for name in ["xdp-ebpf", "xdp-bench"] {
            let obj = out.join(name);
            if !obj.exists() {
                std::fs::write(&obj, []).context("writing the placeholder object")?;
            }
        }
    }
    // The layout-canary feature reaches the eBPF object too: both sides must agree on it.
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_LAYOUT_CANARY").is_some() { &["layout-canary"] } else { &[] };
    aya_build::build_ebpf(
        [Package { name: "xdp-ebpf", root_dir, features, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF object failed; `cargo xtask test` bootstraps rust-src and bpf-linker")
}
