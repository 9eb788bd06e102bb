//! Drop samples (`[capture]`): up to the policy's rate per drop reason, the dropped frame is
//! copied into the `CAPTURE` ring buffer with its reason, for the controller to write as pcapng
//! and send as HEP. With capture off the drop path pays one bit test of `capture_mask`.

use aya_ebpf::{helpers::generated::bpf_xdp_load_bytes, programs::XdpContext};
use common::{CAPTURE_SNAP, CaptureRecord, PolicyConfig, stat};

use crate::{
    budget, clock,
    maps::{CAPTURE, CAPTURE_BUDGETS, STATS},
};

/// Sample the frame of `ctx`, dropped for `reason`, if its reason is captured and its
/// per-second budget allows.
#[inline(always)]
pub fn dropped(ctx: &XdpContext, reason: u32, cfg: &PolicyConfig) {
    if cfg.capture_mask & (1 << (reason & 31)) != 0 {
        sample(ctx, reason, cfg);
    }
}

#[inline(never)]
fn sample(ctx: &XdpContext, reason: u32, cfg: &PolicyConfig) {
    let Some(b) = CAPTURE_BUDGETS.get_ptr_mut(reason) else { return };
    let now = clock::now();
    // SAFETY: array value pointer; the u64 is 8-byte aligned and only accessed as a whole.
    if unsafe { budget::take(&mut (*b).tat_ns, &cfg.capture, now) } {
        return;
    }
    let Some(mut entry) = CAPTURE.reserve::<CaptureRecord>(0) else {
        bump(stat::CAPTURE_LOST);
        return;
    };
    let rec = entry.as_mut_ptr();
    let len = (ctx.data_end() - ctx.data()) as u32;
    let n = if len as usize > CAPTURE_SNAP { CAPTURE_SNAP as u32 } else { len };
    if n == 0 {
        entry.discard(0);
        return;
    }
    // SAFETY: `rec` is the reserved record; `n` is within 1..=CAPTURE_SNAP, inside `data`.
    let r = unsafe {
        (*rec).ts_ns = now;
        (*rec).reason = reason;
        (*rec).len = len;
        (*rec).cap_len = n;
        (*rec)._pad = 0;
        bpf_xdp_load_bytes(ctx.ctx, 0, (*rec).data.as_mut_ptr() as *mut _, n)
    };
    if r != 0 {
        entry.discard(0);
        return;
    }
    entry.submit(0);
    bump(stat::CAPTURED);
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, written only by this CPU while the program runs.
        unsafe { *v += 1 };
    }
}
