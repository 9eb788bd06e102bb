//! The single exit of the XDP program: turn a decision into an XDP action and count it per CPU by
//! verdict and reason (and by policy rule when a rule decided), like xdp-tools' `xdpfilt_prog.h`.

use aya_ebpf::{bindings::xdp_action, maps::PerCpuArray, programs::XdpContext};
use common::{Counter, POLICY_DRY_RUN, PolicyConfig, counter_index, reason, rule_counter_index, verdict};

use crate::{
    capture,
    maps::{COUNTERS, RULE_COUNTERS},
};

/// Why a packet gets its verdict: a reason code (which implies pass or drop) and the policy rule
/// that decided, if any (0 = none).
#[derive(Clone, Copy)]
pub struct Decision {
    pub reason: u32,
    pub rule: u32,
}

impl Decision {
    #[inline(always)]
    pub const fn of(reason: u32) -> Self {
        Self { reason, rule: 0 }
    }

    #[inline(always)]
    pub const fn by_rule(reason: u32, rule: u32) -> Self {
        Self { reason, rule }
    }
}

/// Count the decision (and sample a drop for `[capture]`) and return the XDP action. In dry run
/// a drop passes and is counted as `would_drop`.
#[inline(always)]
pub fn finish(ctx: &XdpContext, decision: Decision, cfg: &PolicyConfig) -> u32 {
    let (verdict, action) = if !reason::is_drop(decision.reason) {
        (verdict::PASS, xdp_action::XDP_PASS)
    } else if cfg.flags & POLICY_DRY_RUN != 0 {
        capture::dropped(ctx, decision.reason, cfg);
        (verdict::WOULD_DROP, xdp_action::XDP_PASS)
    } else {
        capture::dropped(ctx, decision.reason, cfg);
        (verdict::DROP, xdp_action::XDP_DROP)
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    count(&COUNTERS, counter_index(verdict, decision.reason), bytes);
    if decision.rule != 0 {
        count(&RULE_COUNTERS, rule_counter_index(decision.rule, verdict), bytes);
    }
    action
}

#[inline(always)]
fn count(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}
