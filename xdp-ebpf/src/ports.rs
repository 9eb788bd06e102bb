//! Step 6: the port policy. One array slot per (generation, protocol, destination port): O(1)
//! for all 65536 ports, and a reload writes the other generation before flipping `ACTIVE`, so no
//! packet sees a half-written table.

use aya_ebpf::bindings::xdp_md;
use common::{PINHOLE_FULL, PORT_OPEN, PORT_PINHOLE, PORT_PINHOLE_LIMIT, PORT_SIP, PolicyConfig, port_index, reason};

use crate::{flows, maps::PORTS, parse::Packet, pinhole, rate, sets, sip, verdict::Decision};

/// The frame as the SIP check needs it: the program's context (for `bpf_xdp_load_bytes`) and
/// the frame's length.
#[derive(Clone, Copy)]
pub struct Payload {
    pub xdp: *mut xdp_md,
    pub frame_len: u32,
}

/// Decide a TCP or UDP packet (`proto_slot` is `PROTO_SLOT_TCP` or `PROTO_SLOT_UDP`). A closed
/// port is decided here, inline; an open one by [`voipwall_open_port`].
#[inline(always)]
pub fn decide(payload: Payload, pkt: &Packet, generation: u32, cfg: &PolicyConfig, proto_slot: u32) -> Decision {
    let Some(rule) = PORTS.get(port_index(generation, proto_slot, pkt.dport)) else {
        // Unreachable (the index is masked into range); the verifier wants the check.
        return Decision::of(reason::PORT_CLOSED);
    };
    if rule.flags & PORT_OPEN == 0 {
        // Closed: the only way in is as a reply to a flow the host opened (step 4).
        if flows::is_reply(pkt, cfg, proto_slot) {
            return Decision::of(reason::RETURN_TRAFFIC);
        }
        return Decision::of(reason::PORT_CLOSED);
    }
    if rule.flags & PORT_PINHOLE != 0 {
        // Media in pinhole mode: a peer of a live call, or a reply to media the host sent
        // (step 4); while the table is full a rule may fall back to its rate class.
        if pinhole::admits(pkt) {
            return Decision::by_rule(reason::PINHOLE, rule.rule as u32);
        }
        if flows::is_reply(pkt, cfg, proto_slot) {
            return Decision::by_rule(reason::RETURN_TRAFFIC, rule.rule as u32);
        }
        if rule.flags & PORT_PINHOLE_LIMIT == 0 || cfg.pinhole_flags & PINHOLE_FULL == 0 {
            return Decision::by_rule(reason::PINHOLE_CLOSED, rule.rule as u32);
        }
    }
    // A flood from spoofed IPv4 sources ends here, as cheaply as a closed port: certainly not
    // known, in no named set, and the class's budget spent. Anything else takes the full path
    // (which decides the same for such a packet, and charges the budget when it admits).
    if rule.class != 0 && rule.sets == 0 && !pkt.ipv6 && rate::refused_early(pkt, rule.class, generation) {
        return Decision::by_rule(reason::UNKNOWN_OVER_BUDGET, rule.rule as u32);
    }
    let packed = voipwall_open_port(payload.xdp, payload.frame_len, pkt, generation | proto_slot << 1, cfg);
    let (r, rule) = (packed as u32, (packed >> 32) as u32 & 0xffff);
    if packed & INSPECT_SIP != 0 {
        let r = sip::voipwall_sip_check(payload.xdp, payload.frame_len, pkt, generation, cfg);
        if r != sip::CONTINUE {
            return Decision::by_rule(r, rule);
        }
    }
    Decision::by_rule(r, rule)
}

/// [`voipwall_open_port`]'s answer: the SIP checks are still to run (`sip::voipwall_sip_check`,
/// called from the caller so that the two global functions' stacks are not stacked).
const INSPECT_SIP: u64 = 1 << 63;

/// An open port: the sets it is open to, admission to its rate class (known peers and the
/// unknown sources' budget). Returns the reason, the rule above bit 32, and [`INSPECT_SIP`]
/// when the SIP checks are still to run.
///
/// A global BPF function (`no_mangle`, external linkage): the verifier checks it once, on its
/// own, with its arguments unknown, instead of once for every path the parser can take to get
/// here; that keeps the whole program far below the verifier's limits. Its pointers may be null
/// as far as the verifier knows, so they are checked.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn voipwall_open_port(
    xdp: *mut xdp_md,
    frame_len: u32,
    pkt: *const Packet,
    generation_slot: u32,
    cfg: *const PolicyConfig,
) -> u64 {
    // SAFETY: null or pointers to the caller's parsed packet and the policy map value.
    let (Some(pkt), Some(cfg)) = (unsafe { pkt.as_ref() }, unsafe { cfg.as_ref() }) else {
        return reason::PORT_CLOSED as u64;
    };
    let generation = generation_slot & 1;
    let Some(rule) = PORTS.get(port_index(generation, (generation_slot >> 1) & 1, pkt.dport)) else {
        return reason::PORT_CLOSED as u64;
    };
    let rule_id = rule.rule as u64;
    let decided = |r: u32| r as u64 | rule_id << 32;
    if rule.sets != 0 && !sets::member(pkt, generation, rule.sets) {
        return decided(reason::SOURCE_NOT_ALLOWED);
    }
    if rule.class != 0 {
        // On a SIP port, a response to a request the host's SIP server sent proves its sender
        // before the budget of unknown sources could refuse it.
        let sip = rule.flags & PORT_SIP != 0;
        let mut r = rate::admit(pkt, rule.class, generation, cfg, rule.sets != 0, sip);
        if r == Some(rate::NEEDS_LEARN) {
            sip::learn_from_response(xdp, frame_len, pkt, cfg);
            r = rate::admit(pkt, rule.class, generation, cfg, rule.sets != 0, false);
        }
        if let Some(r) = r {
            return decided(r);
        }
    }
    if rule.flags & PORT_SIP != 0 && cfg.sip_window != 0 {
        return decided(reason::PORT_OPEN) | INSPECT_SIP;
    }
    decided(reason::PORT_OPEN)
}
