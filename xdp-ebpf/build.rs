//! Rebuild the eBPF object when `bpf-linker` changes: the linker is an undeclared dependency of
//! the bin target (aya-template does the same).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask test` to bootstrap it"),
    }
}
