//! Fragments. Non-first fragments carry no transport header, so they inherit the verdict (and
//! reason, and rule) of their first fragment, keyed like reassembly (RFC 791: source,
//! destination, protocol, identification; RFC 8200 section 4.5 likewise). A non-first fragment
//! without a remembered first fragment, or past the per-datagram bound, is an orphan and drops.

use common::{FragKey, FragState, MAX_FRAGMENTS_PER_DATAGRAM, PolicyConfig, reason, stat};

use crate::{
    clock,
    maps::{FRAGS, bump},
    parse::Packet,
    verdict::Decision,
};

#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    FragKey { src: pkt.src, dst: pkt.dst, id: pkt.frag_id, proto: pkt.proto, _pad: [0; 3] }
}

/// Remember what the first fragment got.
// Own stack frame (BPF-to-BPF call): see `rate::over_limit`.
#[inline(never)]
pub fn remember(pkt: &Packet, decision: Decision) {
    let state = FragState {
        seen_ns: clock::now(),
        reason: decision.reason as u8,
        _pad: 0,
        fragments: 0,
        rule: decision.rule as u16,
        _pad2: 0,
    };
    // LRU: a flood of first fragments evicts the oldest datagrams, whose later fragments then
    // drop as orphans, which is the safe side.
    if FRAGS.insert(&key(pkt), &state, 0).is_ok() {
        bump(stat::FRAGS_CREATED);
    }
}

/// The decision for a non-first fragment.
// Own stack frame (BPF-to-BPF call): see `rate::over_limit`.
#[inline(never)]
pub fn inherit(pkt: &Packet, cfg: &PolicyConfig) -> Decision {
    let Some(state) = FRAGS.get_ptr_mut(&key(pkt)) else {
        return Decision::of(reason::FRAGMENT_ORPHAN);
    };
    // SAFETY: value pointer from a successful lookup.
    let state = unsafe { &mut *state };
    if clock::now().saturating_sub(state.seen_ns) > cfg.frag_timeout_ns || state.fragments >= MAX_FRAGMENTS_PER_DATAGRAM
    {
        return Decision::of(reason::FRAGMENT_ORPHAN);
    }
    state.fragments += 1;
    Decision::by_rule(state.reason as u32, state.rule as u32)
}
