//! What the kernel refused, with enough context (map, operation, errno) for the operator's
//! message to say which table and why.

use std::path::PathBuf;

use aya::maps::MapError;

/// A BPF map operation that failed: the map, the operation, and the kernel's error.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {op} failed: {}", chain(source))]
pub struct MapOpError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: MapError,
}

impl MapOpError {
    pub fn new(map: &'static str, op: &'static str, source: MapError) -> Self {
        Self { map, op, source }
    }

    /// A `map_err` closure for an operation on `map`.
    pub fn on(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self { map, op, source }
    }

    /// The kernel's errno, when the failure was a syscall.
    pub fn errno(&self) -> Option<i32> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&self.source);
        while let Some(err) = e {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return io.raw_os_error();
            }
            e = err.source();
        }
        None
    }

    /// The map said the key is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self.source, MapError::KeyNotFound)
    }
}

/// An error and its sources, joined with ": ", so "the syscall failed" carries the errno text
/// ("Argument list too long (os error 7)").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the eBPF object is empty: this binary was built with AYA_BUILD_SKIP=1")]
    NotBuilt,
    #[error("loading the eBPF object failed: {}", chain(.0.as_ref()))]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel refused program {name}: {detail}")]
    Program { name: &'static str, detail: String },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error(transparent)]
    Map(#[from] MapOpError),
    #[error(
        "cannot carry pinned map {map} into this version's map layout: {why}. Nothing changed: the attached program keeps enforcing with its maps. Go back to the version that pinned them, or stop voipwall and remove {dir} to start fresh (lists and bans come back from the state folder)"
    )]
    Unmigratable { map: &'static str, dir: PathBuf, why: String },
    #[error("attaching to {iface} failed: {detail}")]
    Attach { iface: String, detail: String },
    #[error("pinning under {path} failed: {detail}")]
    Pin { path: PathBuf, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_errors_name_the_map_the_operation_and_the_errno() {
        let e = MapOpError::new(
            "SOURCES_V4",
            "insert",
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
            }),
        );
        let text = e.to_string();
        assert!(text.starts_with("map SOURCES_V4: insert failed: "), "{text}");
        assert!(text.contains("os error 7"), "the errno reaches the message: {text}");
        assert_eq!(e.errno(), Some(libc::E2BIG));
        assert!(!e.is_not_found());
        assert!(MapOpError::new("BANS", "remove", MapError::KeyNotFound).is_not_found());
    }
}
