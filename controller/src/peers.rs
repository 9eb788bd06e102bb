//! The controller's side of known peers and the unknown sources' budgets: the known-peer table
//! survives a reboot in the state folder (the pinned map survives a daemon restart or kill -9
//! by itself), and each class's budget is watched so that going over it and recovering are
//! logged once each, never per packet.

use std::{collections::BTreeMap, path::Path};

use common::{KnownPeer, known};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    bans::{key_of, mono_to_unix, source_of, unix_to_mono},
    dataplane::{Dataplane, DataplaneError, monotonic_ns},
    state::{self, StateError},
};

/// The file known peers are kept in.
pub const FILE: &str = "known.json";

/// Seconds between snapshots of the known-peer table (a walk of the table).
pub const SNAPSHOT_EVERY: u64 = 10;

/// One known peer as the state file and `voipwall list known` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownRecord {
    /// An IPv4 /32 or the IPv6 aggregation prefix.
    pub source: IpNet,
    /// How it proved its address: "set", "tcp", "sip-digest", "sip-response".
    pub proof: String,
    /// Unix seconds of its first proof.
    pub since: u64,
    /// Unix seconds of its last packet or proof.
    pub seen: u64,
}

/// The name of a proof code.
pub fn proof_name(proof: u8) -> &'static str {
    known::PROOF_NAMES.get((proof as usize).wrapping_sub(1)).copied().unwrap_or("unknown")
}

fn proof_code(name: &str) -> Option<u8> {
    known::PROOF_NAMES.iter().position(|n| *n == name).map(|i| i as u8 + 1)
}

/// The live known peers of the kernel's table (seen within `ttl_secs`), oldest proof first.
pub fn live(dp: &Dataplane, ipv6_prefix: u8, ttl_secs: u64) -> Result<Vec<KnownRecord>, DataplaneError> {
    let (now_mono, now) = (monotonic_ns(), state::unix_now());
    let mut out: Vec<KnownRecord> = dp
        .known_peers()?
        .into_iter()
        .filter(|(_, p)| now_mono.saturating_sub(p.seen_ns) <= ttl_secs * 1_000_000_000)
        .map(|(k, p)| KnownRecord {
            source: source_of(&k, ipv6_prefix),
            proof: proof_name(p.proof).to_string(),
            since: mono_to_unix(p.since_ns, now_mono, now),
            seen: mono_to_unix(p.seen_ns, now_mono, now),
        })
        .collect();
    out.sort_by(|a, b| a.since.cmp(&b.since).then(a.source.cmp(&b.source)));
    Ok(out)
}

/// Put the known peers of the state file back into a freshly created table (after a reboot):
/// those still within `ttl_secs` of their last packet. Returns how many.
/// `recover`: an unreadable file is moved aside (no peer is restored) instead of an error.
pub fn restore(dp: &mut Dataplane, dir: &Path, ttl_secs: u64, recover: bool) -> Result<usize, RestoreError> {
    let path = dir.join(FILE);
    let records: Vec<KnownRecord> =
        state::read_state("reading the known peers", &path, recover)?.into_value().unwrap_or_default();
    let (now_mono, now) = (monotonic_ns(), state::unix_now());
    let mut n = 0;
    for r in records.iter().filter(|r| now.saturating_sub(r.seen) <= ttl_secs) {
        let Some(proof) = proof_code(&r.proof) else {
            warn!(source = %r.source, proof = %r.proof, "skipping a known peer with an unknown proof");
            continue;
        };
        let peer = KnownPeer {
            seen_ns: unix_to_mono(r.seen, now_mono, now),
            since_ns: unix_to_mono(r.since, now_mono, now),
            proof,
            ..KnownPeer::default()
        };
        dp.known_insert(&key_of(&r.source), &peer)?;
        n += 1;
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What the sweeper knows of the known peers and the budgets between walks.
#[derive(Debug, Default)]
pub struct Watch {
    /// Known peers by proof name, as of the last walk.
    pub by_proof: BTreeMap<&'static str, u64>,
    /// Packets refused per class (by class id) as of the last look.
    drops: Vec<u64>,
    /// Classes over their budget now (refused packets in the last second), by name.
    pub over: BTreeMap<String, u64>,
    last_snapshot: u64,
}

impl Watch {
    /// Every second: compare each class's refused packets with a second ago; log a class going
    /// over its budget and coming back, once each.
    pub fn budgets(&mut self, drops: Vec<u64>, class_name: impl Fn(u8) -> String) {
        for (id, &now) in drops.iter().enumerate() {
            let before = self.drops.get(id).copied().unwrap_or(now);
            let name = class_name(id as u8);
            let refused = now.saturating_sub(before);
            match (refused > 0, self.over.contains_key(&name)) {
                (true, false) => {
                    warn!(target: "voipwall::budget", class = %name, refused_per_s = refused, "unknown sources over their budget: refusing the excess; known peers are unaffected");
                    self.over.insert(name, refused);
                }
                (true, true) => {
                    self.over.insert(name, refused);
                }
                (false, true) => {
                    info!(target: "voipwall::budget", class = %name, "unknown sources back within their budget");
                    self.over.remove(&name);
                }
                (false, false) => {}
            }
        }
        self.drops = drops;
    }

    /// A snapshot is due (every [`SNAPSHOT_EVERY`] seconds).
    pub fn snapshot_due(&self, now: u64) -> bool {
        now >= self.last_snapshot + SNAPSHOT_EVERY
    }

    /// Write the live known peers to the state folder and count them by proof.
    pub fn snapshot(&mut self, dir: &Path, live: &[KnownRecord], now: u64) -> Result<(), StateError> {
        self.last_snapshot = now;
        self.by_proof = known::PROOF_NAMES.iter().map(|n| (*n, 0)).collect();
        for r in live {
            if let Some(c) = self.by_proof.iter_mut().find(|(n, _)| **n == r.proof) {
                *c.1 += 1;
            }
        }
        let path = dir.join(FILE);
        state::write_json_compact(&path, &live).map_err(StateError::at("writing the known peers", &path))
    }

    /// Known peers as of the last walk.
    pub fn total(&self) -> u64 {
        self.by_proof.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_names_round_trip() {
        for code in 1..=4u8 {
            assert_eq!(proof_code(proof_name(code)), Some(code));
        }
        assert_eq!(proof_name(9), "unknown");
    }

    #[test]
    fn budget_transitions_are_logged_once_and_tracked() {
        let name = |id: u8| ["none", "echo", "signaling"][id as usize].to_string();
        let mut w = Watch::default();
        w.budgets(vec![0, 0, 10], name);
        assert!(w.over.is_empty(), "the first look only sets the baseline");
        w.budgets(vec![0, 0, 510], name);
        assert_eq!(w.over.get("signaling"), Some(&500));
        w.budgets(vec![0, 0, 700], name);
        assert_eq!(w.over.get("signaling"), Some(&190));
        w.budgets(vec![0, 0, 700], name);
        assert!(w.over.is_empty(), "recovered");
    }
}
