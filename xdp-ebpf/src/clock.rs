//! The one clock of the data plane.
//!
//! `bpf_ktime_get_coarse_ns` is CLOCK_MONOTONIC_COARSE: about a third of the cost of
//! `bpf_ktime_get_ns` and precise to one scheduler tick, which is plenty for token buckets with a
//! burst, ban expiry in seconds and flow timeouts. The controller reads the same clock
//! (`CLOCK_MONOTONIC`) to interpret expiry times. Only paths that need time call it: never a
//! closed port, a block-list hit or an allow-list hit.

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The precise clock (`bpf_ktime_get_ns`), for the few records whose time is a measurement
/// (when a SIP message was seen, for the pinhole set-up time).
#[inline(always)]
pub fn precise() -> u64 {
    // SAFETY: the helper takes no arguments and cannot fail.
    unsafe { bpf_ktime_get_ns() }
}
