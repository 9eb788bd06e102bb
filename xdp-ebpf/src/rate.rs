//! Step 7: admission to a rate class. A known peer (see [`crate::known`]) is charged to its own
//! per-source levels, kept in its `KNOWN` entry; an unknown source first draws from the class's
//! budget shared by all unknown sources ([`crate::budget`]), which refuses a spoofed flood
//! without creating any state, and then to per-source levels in `RATES`. Up to two levels per
//! source (GCRA arithmetic in `common::rate`); exceeding a level with a ban time inserts a
//! dynamic ban and emits one event; a level with ban time 0 only drops the excess. In dry run
//! nothing is inserted and the would-be ban is reported once per ban period.

use aya_ebpf::bindings::BPF_NOEXIST;
use common::{
    KnownPeer, PolicyConfig, RateClass, RateKey, RateState, SourceKey, class_index,
    known::PROOF_SET,
    rate::{RateDecision, charge, observe, observed_pps},
    reason, stat,
};

use crate::{
    ban::{self, Trigger},
    budget, clock, known,
    maps::{CLASSES, RATES, bump, zero},
    parse::Packet,
    sets,
};

/// What [`admit_call`] returns for a packet that may go on: the first value that is not a
/// reason code (see `sip::CONTINUE` for why not `u32::MAX`).
const CONTINUE: u32 = common::MAX_REASONS;

/// Admit one packet of `pkt`'s source to rate class `class`: `None` to let it go on, or the
/// drop reason (`rate_limited`, `unknown_over_budget`). `member`: the caller already found the
/// source in a named set (which makes it known). `sip`: the port carries SIP; a source that is
/// not known but may prove itself by a response (the host's SIP server has requests out to
/// it) is then answered [`NEEDS_LEARN`] before it draws from the budget.
#[inline(always)]
pub fn admit(pkt: &Packet, class: u8, generation: u32, cfg: &PolicyConfig, member: bool, sip: bool) -> Option<u32> {
    let r = admit_call(pkt, class as u32 | (member as u32) << 8 | (sip as u32) << 9, generation, cfg);
    if r == CONTINUE { None } else { Some(r) }
}

/// What [`admit`] answers for a source that should first be offered to
/// `sip::learn_from_response` (then admitted again without `sip`).
pub const NEEDS_LEARN: u32 = CONTINUE + 1;

/// [`admit`] as a BPF-to-BPF call: its own stack frame keeps the program under the verifier's
/// 512-byte combined stack limit (and BPF calls take at most five arguments: the class and the
/// flags share one).
#[inline(never)]
fn admit_call(pkt: &Packet, packed: u32, generation: u32, cfg: &PolicyConfig) -> u32 {
    let class = packed as u8;
    let member = packed & 1 << 8 != 0;
    let sip = packed & 1 << 9 != 0;
    let Some(limits) = CLASSES.get(class_index(generation, class as u32)) else {
        return CONTINUE;
    };
    let source = crate::source_key(pkt, cfg);
    let now = clock::now();
    let ttl = cfg.known_ttl_ns;
    let peer = match known::find(&source, now, ttl) {
        Some(p) => Some(p),
        None if member || sets::member(pkt, generation, u64::MAX) => known::learn(&source, PROOF_SET, now, ttl),
        None if sip && known::maybe(&source) => return NEEDS_LEARN,
        None => None,
    };
    let state = match peer {
        Some(p) => {
            p.seen_ns = now;
            match own_slot(p, class) {
                Some(s) => s,
                None => match shared_state(&source, class) {
                    Some(s) => s,
                    None => return CONTINUE,
                },
            }
        }
        None => {
            if budget::refuse(class, &limits.unknown, now) {
                return reason::UNKNOWN_OVER_BUDGET;
            }
            match shared_state(&source, class) {
                Some(s) => s,
                // Insert failed (out of memory): fail open rather than drop a legitimate source.
                None => return CONTINUE,
            }
        }
    };
    if over(state, &source, class, limits, now, cfg, pkt.ipv6) { reason::RATE_LIMITED } else { CONTINUE }
}

/// An IPv4 packet that [`admit`] would certainly refuse, found without charging anything: its
/// source is certainly not known (its filter slot is clear, so it has no `KNOWN` entry and no
/// SIP request of the host outstanding), its /16 holds no named-set entry, and the class's
/// budget is spent. Counted as a budget drop.
#[inline(always)]
pub fn refused_early(pkt: &Packet, class: u8, generation: u32) -> bool {
    if known::maybe(&pkt.src) || sets::gate_v4(pkt, generation) {
        return false;
    }
    let Some(limits) = CLASSES.get(class_index(generation, class as u32)) else {
        return false;
    };
    budget::spent(class, &limits.unknown, clock::now())
}

/// Charge one packet from `source` to rate class `class` in `RATES`, with no budget and no known
/// peers' own state: the per-method classes of SIP requests, after the port's class admitted
/// the packet. True when it must be dropped.
#[inline(never)]
pub fn over_limit(source: &SourceKey, class: u8, generation: u32, cfg: &PolicyConfig, ipv6: bool) -> bool {
    let Some(limits) = CLASSES.get(class_index(generation, class as u32)) else {
        return false;
    };
    let Some(state) = shared_state(source, class) else {
        // Insert failed (out of memory): fail open rather than drop a legitimate source.
        return false;
    };
    over(state, source, class, limits, clock::now(), cfg, ipv6)
}

/// The known peer's own rate state for `class`: its slot for the class, or a free slot it
/// takes; `None` when both slots hold other classes.
#[inline(always)]
fn own_slot(p: &'static mut KnownPeer, class: u8) -> Option<&'static mut RateState> {
    if p.classes[0] == class {
        return Some(&mut p.rates[0]);
    }
    if p.classes[1] == class {
        return Some(&mut p.rates[1]);
    }
    let i = if p.classes[0] == 0 {
        0
    } else if p.classes[1] == 0 {
        1
    } else {
        return None;
    };
    p.classes[i] = class;
    p.rates[i] =
        RateState { tat: [0; 2], window_start_ns: 0, window_packets: 0, last_window_pps: 0, quiet_until_ns: 0 };
    Some(&mut p.rates[i])
}

/// `source`'s state for `class` in `RATES`, created if new (LRU insertion evicts the least
/// recently seen source when full; only sources the budget let through, or known peers' third
/// classes, get here).
#[inline(always)]
fn shared_state(source: &SourceKey, class: u8) -> Option<&'static mut RateState> {
    let key = RateKey { addr: *source, class: class as u32 };
    if let Some(s) = RATES.get_ptr_mut(&key) {
        // SAFETY: value pointer from a successful lookup.
        return Some(unsafe { &mut *s });
    }
    if RATES.insert(&key, zero::<RateState>()?, BPF_NOEXIST as u64).is_ok() {
        bump(stat::RATES_CREATED);
    }
    // SAFETY: as above.
    RATES.get_ptr_mut(&key).map(|s| unsafe { &mut *s })
}

/// Charge one packet to `state` under `limits`: true when it must be dropped. Concurrent CPUs
/// may race on one source's state; the worst case is a few packets of slack, as with any
/// lockless per-source limiter.
#[inline(always)]
fn over(
    state: &mut RateState,
    source: &SourceKey,
    class: u8,
    limits: &RateClass,
    now: u64,
    cfg: &PolicyConfig,
    ipv6: bool,
) -> bool {
    observe(state, now);
    match charge(state, limits, now) {
        RateDecision::Pass => false,
        RateDecision::Police => true,
        RateDecision::Ban { level, ban_ns } => {
            let trigger = Trigger { class, level, observed: observed_pps(state, now) };
            ban::insert(source, trigger, ban_ns, now, cfg, ipv6, &mut state.quiet_until_ns);
            true
        }
    }
}
