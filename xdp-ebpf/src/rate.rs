//! Step 7: per-source rate limits with up to two levels (GCRA arithmetic in `common::rate`).
//! Exceeding a level with a ban time inserts a dynamic ban and emits one event; a level with ban
//! time 0 only drops the excess. In dry run nothing is inserted and the would-be ban is reported
//! once per ban period.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_log_ebpf::warn;
use common::{
    BAN_DRY_RUN, BAN_IPV6, BanEntry, BanEvent, POLICY_DRY_RUN, PolicyConfig, RateKey, RateState,
    SourceKey, active, class_index, stat,
    rate::{RateDecision, charge, observe, observed_pps},
};

use crate::{
    clock,
    maps::{ACTIVE, BANS, CLASSES, EVENTS, RATES, bump},
};

/// Charge one packet from `source` to rate class `class`; true when it must be dropped.
///
/// Not inlined: a BPF-to-BPF call gives the rate path its own stack frame, which keeps the
/// program under the verifier's 512-byte combined stack limit.
#[inline(never)]
pub fn over_limit(
    source: &SourceKey,
    class: u8,
    generation: u32,
    cfg: &PolicyConfig,
    ipv6: bool,
) -> bool {
    let Some(limits) = CLASSES.get(class_index(generation, class as u32)) else {
        return false;
    };
    let key = RateKey {
        addr: *source,
        class: class as u32,
    };
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
            ban(source, state, class, level, ban_ns, now, cfg, ipv6);
            true
        }
    }
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "flat scalars keep the verifier's job simple")]
fn ban(
    source: &SourceKey,
    state: &mut RateState,
    class: u8,
    level: u8,
    ban_ns: u64,
    now: u64,
    cfg: &PolicyConfig,
    ipv6: bool,
) {
    let expires_ns = now.saturating_add(ban_ns);
    let rate_pps = observed_pps(state, now);
    let mut flags = if ipv6 { BAN_IPV6 } else { 0 };
    if cfg.flags & POLICY_DRY_RUN != 0 {
        if state.quiet_until_ns > now {
            return;
        }
        state.quiet_until_ns = expires_ns;
        flags |= BAN_DRY_RUN;
    } else {
        let entry = BanEntry {
            expires_ns,
            rate_pps,
            class,
            level,
            flags,
            _pad: 0,
        };
        if BANS.insert(source, &entry, 0).is_err() {
            // No event for a ban that did not happen.
            return;
        }
        // After the insert: a reader that sees the flag finds the ban.
        if let Some(flag) = ACTIVE.get_ptr_mut(active::BANS_PRESENT) {
            // SAFETY: array value pointer; every writer stores the same 1.
            unsafe { *flag = 1 };
        }
    }
    // Written straight into ring buffer memory: no 48-byte copy on the stack.
    let Some(mut slot) = EVENTS.reserve::<BanEvent>(0) else {
        // The controller is not draining events (stopped, or overwhelmed). The ban itself is in
        // the map and still enforced; only its log line is lost.
        // aya-log-ebpf 0.2 ignores its context argument, so none is threaded down to here.
        warn!(&(), "ban event lost: ring buffer full");
        bump(stat::EVENTS_LOST);
        return;
    };
    slot.write(BanEvent {
        addr: *source,
        at_ns: now,
        expires_ns,
        rate_pps,
        class,
        level,
        flags,
        prefix_len: if ipv6 { cfg.ipv6_prefix as u8 } else { 32 },
    });
    slot.submit(0);
}
