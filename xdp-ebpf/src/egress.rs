//! The TC egress program: records the flows the host opens so that step 4 of the ingress chain
//! can let their replies in, reads what the host's SIP server sends ([`sip::egress`]: responses
//! for the authentication counters and the digest proof, its own requests' Call-IDs), and marks
//! the peers of its established TCP connections as known. It never drops or changes a packet.
//!
//! A flow is recorded when the host sends UDP from a local port the policy does not open, or a
//! TCP SYN (without ACK) from such a port; any later egress segment of a recorded flow refreshes
//! it. Only a SYN opens a TCP flow so that the RSTs a host sends from closed ports (in dry run,
//! when scans reach it) do not open doors.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use common::{
    FlowKey, PINHOLE_LEARN, PORT_OPEN, PORT_PINHOLE, PORT_SIP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, PolicyConfig, active,
    addr::mask_prefix, flow_port_bit, known::PROOF_TCP, port_index, stat,
};

use crate::{
    clock, known,
    maps::{ACTIVE, FLOW_PORTS, FLOWS, POLICY, PORTS, bump},
    parse::{FRAG_LATER, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet, Parsed, TCP_ACK, TCP_RST, TCP_SYN, parse},
    signaling, sip,
};

/// Always `TC_ACT_UNSPEC` (`TCX_NEXT`): let the rest of the egress chain decide.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let _ = record(ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn record(ctx: &TcContext) -> Result<(), ()> {
    let mut pkt = Packet::empty();
    let frame = Frame::of_tc(ctx);
    if parse(frame.start, frame.end, &mut pkt)? == Parsed::NonIp {
        return Ok(());
    }
    let proto_slot = match pkt.proto {
        IPPROTO_TCP => PROTO_SLOT_TCP,
        IPPROTO_UDP => PROTO_SLOT_UDP,
        _ => return Ok(()),
    };
    if pkt.frag == FRAG_LATER {
        return Ok(());
    }
    let generation = ACTIVE.get(active::GENERATION).copied().unwrap_or(0) & 1;
    // Media from a port in pinhole mode opens a flow like a closed port's: its replies pass as
    // return traffic.
    if let Some(rule) = PORTS.get(port_index(generation, proto_slot, pkt.sport))
        && rule.flags & (PORT_OPEN | PORT_PINHOLE) == PORT_OPEN
    {
        // A server answering on a listening port: the port policy judges its peer's packets.
        // The host's SIP server's responses feed the authentication counters, and its call
        // signaling the pinhole learner.
        if let Some(cfg) = POLICY.get(generation) {
            if rule.flags & PORT_SIP != 0 {
                sip::egress(ctx, &pkt, cfg);
                if cfg.pinhole_flags & PINHOLE_LEARN != 0 && pkt.proto == IPPROTO_UDP {
                    signaling::out(ctx, &pkt, generation, cfg);
                }
            }
            if pkt.proto == IPPROTO_TCP {
                tcp_peer(&pkt, cfg);
            }
        }
        return Ok(());
    }
    let key = FlowKey {
        remote: pkt.dst,
        local: pkt.src,
        remote_port: pkt.dport,
        local_port: pkt.sport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let now = clock::now();
    if let Some(seen) = FLOWS.get_ptr_mut(&key) {
        // A known flow: refresh it in place (cheaper than an update).
        // SAFETY: value pointer from a successful lookup.
        unsafe { *seen = now };
    } else {
        if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Ok(());
        }
        FLOWS.insert(&key, &now, 0).map_err(|_| ())?;
        bump(stat::FLOWS_CREATED);
    }
    mark_port(proto_slot, pkt.sport);
    Ok(())
}

/// A segment the host sends from a listening TCP port that acknowledges without SYN or RST: the
/// kernel sends those only on a synchronized connection (a SYN-ACK answers any SYN, spoofed ones
/// included; a challenge ACK goes to the real peer of an existing connection), so the peer
/// completed a handshake and proved its address (`known::PROOF_TCP`). Refreshes a known peer.
#[inline(always)]
fn tcp_peer(pkt: &Packet, cfg: &PolicyConfig) {
    if pkt.tcp_flags & (TCP_ACK | TCP_SYN | TCP_RST) != TCP_ACK {
        return;
    }
    let key = if pkt.ipv6 { mask_prefix(pkt.dst, cfg.ipv6_prefix) } else { pkt.dst };
    let now = clock::now();
    match known::find(&key, now, cfg.known_ttl_ns) {
        Some(p) => p.seen_ns = now,
        None => {
            known::learn(&key, PROOF_TCP, now, cfg.known_ttl_ns);
        }
    }
}

/// Tell ingress this local port has flows worth looking up. The BPF target has no atomic
/// read-modify-write in Rust, so two CPUs marking ports of the same 64-port word at the same
/// instant can lose one bit; every egress packet of a flow checks and sets its bit again, so a
/// lost bit comes back with the flow's next packet. Bits are never cleared: a stale one only
/// costs a lookup.
#[inline(always)]
fn mark_port(proto_slot: u32, port: u16) {
    let (word, bit) = flow_port_bit(proto_slot, port);
    if let Some(w) = FLOW_PORTS.get_ptr_mut(word) {
        // SAFETY: array value pointer from a successful lookup.
        unsafe {
            if *w & bit == 0 {
                *w |= bit;
            }
        }
    }
}
