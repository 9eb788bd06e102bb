//! Step 6: the port policy. One array slot per (generation, protocol, destination port): O(1)
//! for all 65536 ports, and a reload writes the other generation before flipping `ACTIVE`, so no
//! packet sees a half-written table.

use aya_ebpf::{bindings::xdp_md, maps::lpm_trie::Key};
use common::{PORT_OPEN, PORT_SIP, PolicyConfig, SourceKey, port_index, reason};

use crate::{
    flows,
    maps::{PORTS, SETS_V4, SETS_V6},
    parse::Packet,
    rate, sip,
    verdict::Decision,
};

/// The frame as the SIP check needs it: the program's context (for `bpf_xdp_load_bytes`) and
/// the frame's length.
#[derive(Clone, Copy)]
pub struct Payload {
    pub xdp: *mut xdp_md,
    pub frame_len: u32,
}

/// Decide a TCP or UDP packet (`proto_slot` is `PROTO_SLOT_TCP` or `PROTO_SLOT_UDP`).
#[inline(always)]
pub fn decide(
    payload: Payload,
    pkt: &Packet,
    source: &SourceKey,
    generation: u32,
    cfg: &PolicyConfig,
    proto_slot: u32,
) -> Decision {
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
    let rule_id = rule.rule as u32;
    if rule.sets != 0 && !in_sets(pkt, generation, rule.sets) {
        return Decision::by_rule(reason::SOURCE_NOT_ALLOWED, rule_id);
    }
    if rule.class != 0 && rate::over_limit(source, rule.class, generation, cfg, pkt.ipv6) {
        return Decision::by_rule(reason::RATE_LIMITED, rule_id);
    }
    if rule.flags & PORT_SIP != 0 && cfg.sip_window != 0 {
        let r = sip::inspect(payload.xdp, payload.frame_len, pkt, generation, cfg);
        if r != 0 {
            return Decision::by_rule(r, rule_id);
        }
    }
    Decision::by_rule(reason::PORT_OPEN, rule_id)
}

/// The source belongs to one of the source sets in `sets` (a bitmask) of this generation. One LPM
/// lookup returns the bitmask of every set containing the source (the controller folds covering
/// prefixes into each entry's mask).
// Own stack frame (BPF-to-BPF call): see `rate::over_limit`.
#[inline(never)]
fn in_sets(pkt: &Packet, generation: u32, sets: u64) -> bool {
    let gen_be = generation.to_be_bytes();
    let mask = if pkt.ipv6 {
        let s = pkt.src;
        let data = [
            gen_be[0], gen_be[1], gen_be[2], gen_be[3], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
            s[10], s[11], s[12], s[13], s[14], s[15],
        ];
        SETS_V6.get(Key::new(32 + 128, data)).copied()
    } else {
        let s = pkt.src_v4();
        let data = [gen_be[0], gen_be[1], gen_be[2], gen_be[3], s[0], s[1], s[2], s[3]];
        SETS_V4.get(Key::new(32 + 32, data)).copied()
    };
    match mask {
        Some(mask) => mask & sets != 0,
        None => false,
    }
}
