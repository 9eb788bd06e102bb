//! `[capture]`: samples of dropped packets, written as pcapng files and/or sent as HEP3 to a
//! collector (HOMER, or `sngrep -L`), each with the reason it dropped.

use std::{net::SocketAddr, path::PathBuf};

use serde::Serialize;

/// `[capture]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capture {
    /// Samples per second and per reason, at most.
    pub pps: u32,
    /// Reason codes sampled (every drop reason when the policy names none).
    pub reasons: Vec<u32>,
    /// Folder of the pcapng files (`IFACE.pcapng`, rotated to `IFACE.pcapng.1` ...).
    pub pcap: Option<PathBuf>,
    /// A file is rotated when it reaches this size.
    pub rotate_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
    /// HEP3 collector (UDP).
    pub hep: Option<SocketAddr>,
    /// HEP capture agent id.
    pub hep_id: u32,
}

impl Capture {
    /// `PolicyConfig::capture_mask`.
    pub fn mask(&self) -> u32 {
        self.reasons.iter().fold(0, |m, r| m | 1 << r)
    }
}
