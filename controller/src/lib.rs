//! voipwall controller library: policy (parse, validate, compile to map contents) -> data plane
//! handle (load, pin, adopt, write maps) -> services (control socket, metrics, ban events,
//! sweeper) -> CLI. `main.rs` is a thin dispatcher over this library.

pub mod policy;

pub mod dataplane;
pub mod paths;
