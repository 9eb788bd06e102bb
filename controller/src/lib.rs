//! voipwall controller library: policy (parse, validate, compile to map contents) -> data plane
//! handle (load, pin, adopt, flip generations, attach) and the source lists (model, kernel
//! tries, journal) -> the firewall (state and operations) -> services (control socket, metrics,
//! ban events, sweeper) -> CLI. `main.rs` is a thin dispatcher over this.

pub mod bans;
pub mod capture;
pub mod cli;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod detach;
pub mod error;
pub mod explain;
pub mod firewall;
pub mod fleet;
pub mod fuzzing;
pub mod metrics;
pub mod paths;
pub mod peers;
pub mod pinholes;
pub mod policy;
pub mod ratelog;
pub mod render;
pub mod sources;
pub mod state;
pub mod system;
