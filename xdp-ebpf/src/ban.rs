//! Dynamic bans issued by the data plane itself: by the rate limiter (step 7), the SIP
//! User-Agent check, and the egress program's authentication counters. One place inserts the
//! ban, raises the "bans may exist" flag and reports the event.

use aya_log_ebpf::warn;
use common::{BAN_DRY_RUN, BAN_IPV6, BanEntry, BanEvent, POLICY_DRY_RUN, PolicyConfig, SourceKey, active, stat};

use crate::maps::{ACTIVE, BANS, EVENTS, bump_count};

/// What fired: the rate class (or a reserved SIP class), its level, and what was observed (a
/// packet rate, or a count for the SIP checks).
#[derive(Clone, Copy)]
pub struct Trigger {
    pub class: u8,
    pub level: u8,
    pub observed: u32,
}

/// Ban `source` for `ban_ns` from `now`. In dry run nothing is inserted and the would-be ban is
/// reported at most once per ban period (`quiet_until_ns` is the caller's per-source memory of
/// that).
#[inline(always)]
pub fn insert(
    source: &SourceKey,
    trigger: Trigger,
    ban_ns: u64,
    now: u64,
    cfg: &PolicyConfig,
    ipv6: bool,
    quiet_until_ns: &mut u64,
) {
    let expires_ns = now.saturating_add(ban_ns);
    let mut flags = if ipv6 { BAN_IPV6 } else { 0 };
    if cfg.flags & POLICY_DRY_RUN != 0 {
        if *quiet_until_ns > now {
            return;
        }
        *quiet_until_ns = expires_ns;
        flags |= BAN_DRY_RUN;
    } else {
        let entry = BanEntry {
            expires_ns,
            rate_pps: trigger.observed,
            class: trigger.class,
            level: trigger.level,
            flags,
            _pad: Default::default(),
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
        // the map and still enforced; only its event is lost. A storm of losses must not become
        // a storm of log records: a line at this CPU's 1st, 2nd, 4th, 8th... loss, with the
        // count (the controller also reports the counter's growth every second).
        let lost = bump_count(stat::EVENTS_LOST);
        if lost & lost.wrapping_sub(1) == 0 {
            // aya-log-ebpf 0.2 ignores its context argument, so none is threaded down to here.
            warn!(&(), "ban events lost: ring buffer full ({} on this CPU so far)", lost);
        }
        return;
    };
    slot.write(BanEvent {
        addr: *source,
        at_ns: now,
        expires_ns,
        rate_pps: trigger.observed,
        class: trigger.class,
        level: trigger.level,
        flags,
        prefix_len: if ipv6 { cfg.ipv6_prefix as u8 } else { 32 },
    });
    slot.submit(0);
}
