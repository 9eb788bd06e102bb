//! voipwall controller library: policy (parse, validate, compile to map contents) -> data plane
//! handle (load, pin, adopt, write maps) -> core (state and operations) -> services (control
//! socket, metrics, ban events, sweeper) -> CLI. `main.rs` is a thin dispatcher over this.

pub mod bans;
pub mod cli;
pub mod control;
pub mod core;
pub mod daemon;
pub mod dataplane;
pub mod lists;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod state;
pub mod system;
