//! Rebuild the eBPF object when `bpf-linker` changes (the linker is an undeclared dependency of
//! the bin targets, as in aya-template), and pass it our code generation choices.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask test` to bootstrap it"),
    }
    // bpf-linker asks LLVM to expand memcpy "in order" by default, which also sets the BPF
    // backend's inline budgets for memset and memmove to zero: every struct zeroing and 16-byte
    // address copy became a call to a byte-by-byte loop (most of the parser's cost). Without it,
    // LLVM expands them into plain loads and stores.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    // 32-bit sub-registers (ALU32, every kernel since 5.1) spare the zero-extension shifts
    // around u32 and u16 arithmetic. (rustc already passes `--cpu generic` from the target
    // spec, and aya-build owns RUSTFLAGS, so the feature is the knob available here.)
    // `allows-misaligned-mem-access` was tried: it makes LLVM use wide stores at odd stack
    // offsets, which the verifier refuses ("misaligned stack access").
    println!("cargo:rustc-link-arg-bins=--cpu-features=+alu32");
}
