//! Step 4: replies to flows the host itself opened (DNS, NTP, HTTPS to licence and update
//! servers, registrations to a carrier) pass even when their destination port is closed.
//!
//! The TC egress program ([`crate::egress`]) records a flow when the host sends from a local
//! port that the policy does not open: UDP from such a port, or a TCP SYN. Server replies from an
//! open port are never recorded, so an attacker cannot turn one answered request into a pass
//! that skips the rate limiter. For the same reason ingress only consults this table for closed
//! ports: an open port never has a recorded flow.

use common::{FlowKey, PolicyConfig, flow_port_bit};

use crate::{
    clock,
    maps::{FLOW_PORTS, FLOWS},
    parse::Packet,
};

/// The flow key as the egress program recorded it, from an ingress packet.
#[inline(always)]
fn reversed(pkt: &Packet) -> FlowKey {
    FlowKey {
        remote: pkt.src,
        local: pkt.dst,
        remote_port: pkt.sport,
        local_port: pkt.dport,
        proto: pkt.proto,
        _pad: [0; 3],
    }
}

/// The packet answers a flow the host opened less than `return_timeout_ns` ago.
///
/// A port bitmap filled by the egress program is checked first: a scan of closed ports the host
/// never sent from costs one array read, not a 40-byte-key hash lookup.
#[inline(always)]
pub fn is_reply(pkt: &Packet, cfg: &PolicyConfig, proto_slot: u32) -> bool {
    let (word, bit) = flow_port_bit(proto_slot, pkt.dport);
    match FLOW_PORTS.get(word) {
        Some(w) if w & bit != 0 => lookup(pkt, cfg),
        _ => false,
    }
}

// Own stack frame (BPF-to-BPF call): see `rate::over_limit`.
#[inline(never)]
fn lookup(pkt: &Packet, cfg: &PolicyConfig) -> bool {
    match FLOWS.get_ptr(&reversed(pkt)) {
        // SAFETY: map value pointer from a successful lookup.
        Some(seen) => clock::now().saturating_sub(unsafe { *seen }) <= cfg.return_timeout_ns,
        None => false,
    }
}
