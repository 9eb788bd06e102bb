//! Step 7: per-source rate limits with up to two levels (GCRA arithmetic in `common::rate`).
//! Exceeding a level with a ban time inserts a dynamic ban and emits one event; a level with ban
//! time 0 only drops the excess. In dry run nothing is inserted and the would-be ban is reported
//! once per ban period.

use aya_ebpf::bindings::BPF_NOEXIST;
use common::{
    PolicyConfig, RateKey, RateState, SourceKey, class_index,
    rate::{RateDecision, charge, observe, observed_pps},
    stat,
};

use crate::{
    ban::{self, Trigger},
    clock,
    maps::{CLASSES, RATES, bump},
};

/// Charge one packet from `source` to rate class `class`; true when it must be dropped.
///
/// Not inlined: a BPF-to-BPF call gives the rate path its own stack frame, which keeps the
/// program under the verifier's 512-byte combined stack limit.
#[inline(never)]
pub fn over_limit(source: &SourceKey, class: u8, generation: u32, cfg: &PolicyConfig, ipv6: bool) -> bool {
    let Some(limits) = CLASSES.get(class_index(generation, class as u32)) else {
        return false;
    };
    let key = RateKey { addr: *source, class: class as u32 };
    let state = match RATES.get_ptr_mut(&key) {
        Some(state) => state,
        None => {
            // A new source. LRU insertion evicts the least recently seen source when full.
            if RATES.insert(&key, &RateState::default(), BPF_NOEXIST as u64).is_ok() {
                bump(stat::RATES_CREATED);
            }
            match RATES.get_ptr_mut(&key) {
                Some(state) => state,
                // Insert failed (out of memory): fail open rather than drop a legitimate source.
                None => return false,
            }
        }
    };
    // SAFETY: value pointer from a successful lookup. Concurrent CPUs may race on the same
    // source; the worst case is a few packets of slack, as with any lockless per-source limiter.
    let state = unsafe { &mut *state };
    let now = clock::now();
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
