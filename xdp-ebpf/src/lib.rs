//! Empty library target: it lets `controller` list `xdp-ebpf` as a build-dependency, so cargo
//! rebuilds the embedded object when this crate changes. The programs are in `main.rs`.
#![no_std]
