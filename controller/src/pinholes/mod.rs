//! Media pinholes: the table the data plane enforces for ports in pinhole mode, kept from the
//! calls' signaling ([`calls`], fed by the `SIGNALING` ring buffer) and from `voipwall pinhole
//! add/del`. What is admitted, exactly: UDP to a local port in pinhole mode from an address with
//! a live pinhole on that port (the peer's SDP address, or the address the call's signaling
//! came from, for RTP and for RTCP), from the first source port seen from that address (the
//! data plane latches it); and, as before, replies from exactly the address and port the host
//! sent media to from that port (return traffic).

pub mod calls;
pub mod message;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use common::{
    PINHOLE_CLOSING, PINHOLE_OPEN_MANUAL, PINHOLE_OPEN_SDP, PINHOLE_OPEN_SIGNALING, PINHOLE_RTCP, PORT_PINHOLE,
    PROTO_SLOT_UDP, Pinhole, PinholeKey, SIGNAL_IN, SignalRecord,
};
use serde_json::json;
use tracing::{debug, warn};

use self::calls::{Calls, Cause, Change, Direction, Local};
use crate::{
    dataplane::{Dataplane, monotonic_ns},
    policy::{CompiledPolicy, Policy},
    render::Reply,
};

/// Calls tracked at most (each a handful of strings and pinhole keys).
const MAX_CALLS: usize = 100_000;
/// Calls without pinholes (offers not answered yet) kept at most.
const MAX_WAITING: usize = 20_000;

/// Upper bounds of the set-up time histogram, seconds.
pub const SETUP_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];

/// The pinhole learner and its counts.
pub struct Pinholes {
    calls: Calls,
    /// Pinholes opened: learned from the calls' signaling, and added by `pinhole add`.
    pub opened: u64,
    pub opened_manual: u64,
    pub closed: BTreeMap<Cause, u64>,
    /// Pinholes the table had no room for.
    pub refused: u64,
    /// Learned set-up times: counts per [`SETUP_BUCKETS`] bound (cumulative at render), the
    /// count above the last, their sum in seconds.
    pub setup_counts: [u64; SETUP_BUCKETS.len() + 1],
    pub setup_sum: f64,
    pub setup_max: f64,
    /// The most pinholes a sweep saw in the table.
    pub peak: u64,
    /// Messages read that were not SIP.
    pub unreadable: u64,
    /// Signaling records read.
    pub signals: u64,
    /// Pinholes in the table at the last sweep, and how many of them latched a peer port.
    pub live: u64,
    pub latched: u64,
}

impl Default for Pinholes {
    fn default() -> Self {
        Self::new()
    }
}

/// An address from the data plane's encoding (IPv4-mapped for IPv4).
pub fn addr_of(bytes: [u8; 16], ipv6: bool) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (ipv6, v6.to_ipv4_mapped()) {
        (false, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

/// The peer of a pinhole key (an IPv4-mapped address is IPv4: no IPv6 packet comes from one).
pub fn peer_of(key: &PinholeKey) -> IpAddr {
    addr_of(key.peer, false)
}

/// The data plane's key of (peer, local port).
pub fn key_of(peer: IpAddr, port: u16) -> PinholeKey {
    let peer = match peer {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    PinholeKey { peer, local_port: port, _pad: [0; 6] }
}

pub fn flag_names(flags: u16) -> Vec<&'static str> {
    [
        (PINHOLE_OPEN_SDP, "sdp"),
        (PINHOLE_OPEN_SIGNALING, "signaling"),
        (PINHOLE_OPEN_MANUAL, "manual"),
        (PINHOLE_RTCP, "rtcp"),
        (PINHOLE_CLOSING, "closing"),
    ]
    .into_iter()
    .filter(|(b, _)| flags & b != 0)
    .map(|(_, n)| n)
    .collect()
}

impl Pinholes {
    pub fn new() -> Self {
        Self {
            calls: Calls::new(MAX_CALLS),
            opened: 0,
            opened_manual: 0,
            closed: BTreeMap::new(),
            refused: 0,
            setup_counts: [0; SETUP_BUCKETS.len() + 1],
            setup_sum: 0.0,
            setup_max: 0.0,
            peak: 0,
            unreadable: 0,
            signals: 0,
            live: 0,
            latched: 0,
        }
    }

    /// Calls being followed.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// One signaling record from the data plane.
    pub fn on_signal(&mut self, rec: &SignalRecord, dp: &mut Dataplane, policy: &Policy, compiled: &CompiledPolicy) {
        self.signals += 1;
        let data = &rec.data[..(rec.cap_len as usize).min(rec.data.len())];
        let Some(msg) = message::parse(data) else {
            self.unreadable += 1;
            return;
        };
        let (src, dst) = (addr_of(rec.src, rec.ipv6 != 0), addr_of(rec.dst, rec.ipv6 != 0));
        let dir = if rec.direction == SIGNAL_IN { Direction::In } else { Direction::Out };
        let pinhole_port = |p: u16| compiled.port(PROTO_SLOT_UDP, p).flags & PORT_PINHOLE != 0;
        let local = Local { pinhole_port: &pinhole_port, addresses: &policy.media.addresses };
        let changes = self.calls.observe(dir, src, dst, &msg, &local);
        self.calls.trim_unanswered(MAX_WAITING);
        let now = monotonic_ns();
        let m = &policy.media;
        for change in changes {
            match change {
                Change::Open { key: (peer, port), flags, call, new } => {
                    let key = key_of(peer, port);
                    let idle = m.idle.as_nanos() as u64;
                    let mut value = Pinhole {
                        // The idle check first measures the set-up allowance (see `Pinhole`).
                        seen_ns: now + (m.setup.as_nanos() as u64).saturating_sub(idle),
                        until_ns: 0,
                        idle_ns: idle,
                        peer_port: 0,
                        flags,
                        _pad: 0,
                    };
                    let existing = dp.pinhole_get(&key).ok().flatten();
                    if let Some(old) = existing.filter(|o| o.flags & PINHOLE_CLOSING == 0 && o.live(now)) {
                        // Keep its latch and activity; widen its flags.
                        value.seen_ns = old.seen_ns.max(value.seen_ns);
                        value.peer_port = old.peer_port;
                    }
                    match dp.pinhole_insert(&key, &value) {
                        Ok(()) => {
                            // A pinhole the egress program opened provisionally counts here,
                            // when the controller learns it.
                            if new {
                                self.opened += 1;
                                let setup = now.saturating_sub(rec.ts_ns) as f64 / 1e9;
                                let i = SETUP_BUCKETS.iter().position(|&b| setup <= b).unwrap_or(SETUP_BUCKETS.len());
                                self.setup_counts[i] += 1;
                                self.setup_sum += setup;
                                self.setup_max = self.setup_max.max(setup);
                            }
                            debug!(%peer, port, call, "pinhole open");
                            let _ = dp.set_pinholes_full(false);
                        }
                        Err(e) => {
                            self.refused += 1;
                            warn!(%peer, port, error = %e, "pinhole table full: the call's media has no pinhole");
                            let _ = dp.set_pinholes_full(true);
                        }
                    }
                }
                Change::Close { key: (peer, port), cause } => {
                    let key = key_of(peer, port);
                    if let Ok(Some(mut p)) = dp.pinhole_get(&key) {
                        p.flags |= PINHOLE_CLOSING;
                        p.until_ns = now + m.grace.as_nanos() as u64;
                        let _ = dp.pinhole_insert(&key, &p);
                        *self.closed.entry(cause).or_default() += 1;
                    }
                }
            }
        }
    }

    /// Remove the pinholes the data plane no longer admits through (idle, or past their grace
    /// or TTL); counts the idle ones. Once a second.
    pub fn sweep(&mut self, dp: &mut Dataplane) {
        let now = monotonic_ns();
        let Ok(all) = dp.pinholes() else { return };
        let (mut live, mut latched) = (0, 0);
        for (key, p) in all {
            if p.live(now) {
                live += 1;
                latched += u64::from(p.peer_port != 0);
                continue;
            }
            if dp.pinhole_remove(&key).is_ok() {
                if p.flags & PINHOLE_CLOSING == 0 {
                    *self.closed.entry(Cause::Idle).or_default() += 1;
                }
                self.calls.expired((peer_of(&key), key.local_port));
            }
        }
        (self.live, self.latched) = (live, latched);
        self.peak = self.peak.max(live);
        if live < u64::from(common::capacity::PINHOLES) {
            let _ = dp.set_pinholes_full(false);
        }
    }

    /// `voipwall pinhole add PEER LOCALPORT [--ttl]`.
    pub fn add(&mut self, dp: &mut Dataplane, peer: IpAddr, port: u16, ttl: Option<Duration>) -> Result<Reply, String> {
        if port == 0 {
            return Err("local port 0 is not a port".into());
        }
        let now = monotonic_ns();
        let key = key_of(peer, port);
        let value = Pinhole {
            seen_ns: now,
            until_ns: ttl.map_or(0, |t| now + t.as_nanos() as u64),
            idle_ns: 0,
            peer_port: 0,
            flags: PINHOLE_OPEN_MANUAL,
            _pad: 0,
        };
        let existed = dp.pinhole_get(&key).ok().flatten().is_some();
        dp.pinhole_insert(&key, &value).map_err(|e| {
            self.refused += 1;
            format!("pinhole {peer} -> {port}/udp not added: {e}")
        })?;
        if !existed {
            self.opened_manual += 1;
        }
        let ttl_text = ttl.map_or("until deleted".to_string(), |t| format!("for {}s", t.as_secs()));
        Ok(Reply::new(
            format!("pinhole {peer} -> {port}/udp open {ttl_text}"),
            json!({"peer": peer.to_string(), "local_port": port, "ttl_s": ttl.map(|t| t.as_secs())}),
        ))
    }

    /// `voipwall pinhole del PEER LOCALPORT`.
    pub fn del(&mut self, dp: &mut Dataplane, peer: IpAddr, port: u16) -> Result<Reply, String> {
        let key = key_of(peer, port);
        match dp.pinhole_get(&key) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("no pinhole {peer} -> {port}/udp")),
            Err(e) => return Err(e.to_string()),
        }
        dp.pinhole_remove(&key).map_err(|e| e.to_string())?;
        *self.closed.entry(Cause::Deleted).or_default() += 1;
        self.calls.expired((peer, port));
        Ok(Reply::new(
            format!("pinhole {peer} -> {port}/udp removed"),
            json!({"peer": peer.to_string(), "local_port": port}),
        ))
    }

    /// `voipwall pinhole list [--json]`.
    pub fn list(&self, dp: &Dataplane) -> Result<Reply, String> {
        let now = monotonic_ns();
        let mut rows: Vec<_> = dp.pinholes().map_err(|e| e.to_string())?;
        rows.sort_by_key(|(k, _)| (k.local_port, k.peer));
        let mut text = String::new();
        let mut data = Vec::new();
        for (k, p) in &rows {
            let peer = peer_of(k);
            let state = if !p.live(now) {
                "expired"
            } else if p.flags & PINHOLE_CLOSING != 0 {
                "closing"
            } else if p.peer_port != 0 {
                "active"
            } else {
                "waiting"
            };
            let left = match (p.idle_ns, p.until_ns) {
                (0, 0) => None,
                (idle, 0) => Some((p.seen_ns + idle).saturating_sub(now)),
                (0, until) => Some(until.saturating_sub(now)),
                (idle, until) => Some((p.seen_ns + idle).min(until).saturating_sub(now)),
            };
            let flags = flag_names(p.flags);
            let latched = (p.peer_port != 0).then_some(p.peer_port);
            text.push_str(&format!(
                "{:<40} -> {:>5}/udp  {:<8} {:<24} {}\n",
                match latched {
                    Some(pp) => format!("{peer} (port {pp})"),
                    None => peer.to_string(),
                },
                k.local_port,
                state,
                flags.join(","),
                left.map_or("no expiry".to_string(), |l| format!("{}s left", l / 1_000_000_000)),
            ));
            data.push(json!({
                "peer": peer.to_string(),
                "local_port": k.local_port,
                "peer_port": latched,
                "state": state,
                "opened_by": flags,
                "expires_in_s": left.map(|l| l as f64 / 1e9),
            }));
        }
        if rows.is_empty() {
            text.push_str("no pinholes\n");
        }
        let setups = self.setup_counts.iter().sum::<u64>();
        Ok(Reply::new(
            text,
            json!({
                "pinholes": data,
                "calls": self.calls.len(),
                "opened": self.opened + self.opened_manual,
                "closed": self.closed.iter().map(|(c, n)| (c.as_str(), *n)).collect::<BTreeMap<_, _>>(),
                "refused": self.refused,
                "setup_s": {
                    "count": setups,
                    "mean": if setups == 0 { 0.0 } else { self.setup_sum / setups as f64 },
                    "max": self.setup_max,
                },
                "peak": self.peak,
            }),
        ))
    }

    /// The pinholes of `source` on `port`, for `voipwall explain`.
    pub fn explain(dp: &Dataplane, source: IpAddr, port: u16) -> Option<Pinhole> {
        dp.pinhole_get(&key_of(source, port)).ok().flatten()
    }
}

/// Whether a (generation-independent) UDP port is in pinhole mode in `compiled`.
pub fn in_pinhole_mode(compiled: &CompiledPolicy, port: u16) -> bool {
    compiled.port(PROTO_SLOT_UDP, port).flags & PORT_PINHOLE != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let k = key_of(v4, 12000);
        assert_eq!(addr_of(k.peer, false), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_of(key_of(v6, 1).peer, true), v6);
        assert_eq!(peer_of(&key_of(v6, 1)), v6);
        assert_eq!(peer_of(&key_of(v4, 1)), v4);
    }
}
