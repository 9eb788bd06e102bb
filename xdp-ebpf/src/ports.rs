//! Step 6: the port policy. One array slot per (generation, protocol, destination port): O(1)
//! for all 65536 ports, and a reload writes the other generation before flipping `ACTIVE`, so no
//! packet sees a half-written table.

use aya_ebpf::{bindings::xdp_md, maps::lpm_trie::Key};
use common::{
    PORT_OPEN, PORT_SIP, PolicyConfig, SET_KEY_GENERATION_BITS, SourceKey, port_index, reason, set_key_v4, set_key_v6,
};

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
    if rule.flags & PORT_SIP != 0
        && cfg.sip_window != 0
        && let Some(r) = sip::inspect(payload.xdp, payload.frame_len, pkt, generation, cfg)
    {
        return Decision::by_rule(r, rule_id);
    }
    Decision::by_rule(reason::PORT_OPEN, rule_id)
}

/// The source belongs to one of the source sets in `sets` (a bitmask) of this generation. One LPM
/// lookup returns the bitmask of every set containing the source (the controller folds covering
/// prefixes into each entry's mask).
// Own stack frame (BPF-to-BPF call): see `rate::over_limit`.
#[inline(never)]
fn in_sets(pkt: &Packet, generation: u32, sets: u64) -> bool {
    let bits = SET_KEY_GENERATION_BITS;
    let mask = if pkt.ipv6 {
        SETS_V6.get(Key::new(bits + 128, set_key_v6(generation, pkt.src))).copied()
    } else {
        SETS_V4.get(Key::new(bits + 32, set_key_v4(generation, pkt.src_v4()))).copied()
    };
    mask.is_some_and(|mask| mask & sets != 0)
}
