//! The shared budget of unknown sources per rate class: one token bucket (GCRA) for all of
//! them, on every CPU together, so a flood from random spoofed addresses gets at most the
//! budget's rate through, whatever the number of addresses.
//!
//! Its theoretical arrival time is moved with atomic adds (BPF_XADD, which every kernel and the
//! generic BPF CPU have), and a packet passes only if the time after its own add still conforms,
//! so concurrent CPUs can never pass more than the budget allows. A refused packet only reads
//! the shared value, so a flood keeps the cache line shared rather than bouncing it. The one
//! race: when the budget has been idle, each CPU that sees it idle brings it up to now with a
//! plain store, which can lose another CPU's add in the same instant (at most one packet per
//! CPU, once per idle-to-busy change).

use common::RateLevel;

use crate::maps::{BUDGET_DROPS, BUDGETS};

/// Charge one packet of an unknown source to class `class`'s budget `level` at `now`: true when
/// it must be refused (and then counted).
#[inline(always)]
pub fn refuse(class: u8, level: &RateLevel, now: u64) -> bool {
    let Some(b) = BUDGETS.get_ptr_mut(class as u32) else {
        return false;
    };
    // SAFETY: array value pointer; the u64 is 8-byte aligned and only ever accessed as a whole.
    let refused = unsafe { take(&mut (*b).tat_ns, level, now) };
    if refused {
        count(class);
    }
    refused
}

/// Charge one packet to the shared bucket whose theoretical arrival time is `*tat`: true when it
/// does not conform. A disabled level (`emission_ns == 0`) always conforms.
///
/// # Safety
/// `tat` points to an 8-byte aligned u64 in map memory, only ever accessed as a whole.
#[inline(always)]
pub unsafe fn take(tat: *mut u64, level: &RateLevel, now: u64) -> bool {
    if level.emission_ns == 0 {
        return false;
    }
    // SAFETY: the caller's contract.
    let seen = unsafe { core::ptr::read_volatile(tat) };
    if seen > now && seen - now > level.tolerance_ns {
        return true;
    }
    if seen < now {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(tat, now) };
    }
    // SAFETY: as above.
    unsafe { atomic_add(tat, level.emission_ns) };
    let after = unsafe { core::ptr::read_volatile(tat) };
    after > now && after - now > level.tolerance_ns + level.emission_ns
}

#[inline(always)]
pub fn spent(class: u8, level: &RateLevel, now: u64) -> bool {
    if level.emission_ns == 0 {
        return false;
    }
    let Some(b) = BUDGETS.get(class as u32) else {
        return false;
    };
    // SAFETY: array value pointer; the u64 is 8-byte aligned and only ever accessed as a whole.
    let seen = unsafe { core::ptr::read_volatile(&b.tat_ns) };
    if seen > now && seen - now > level.tolerance_ns {
        count(class);
        return true;
    }
    false
}

/// `*p += v` as one atomic instruction (BPF_ATOMIC BPF_ADD, "XADD", which the generic BPF CPU
/// and every kernel since 3.18 have). Rust's atomics offer no read-modify-write on the BPF
/// target, hence the instruction by hand.
///
/// # Safety
/// `p` points to 8 bytes of map memory, 8-byte aligned.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's contract; the instruction reads and writes only `*p`.
    unsafe { core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v, options(nostack)) };
}

#[inline(always)]
fn count(class: u8) {
    if let Some(v) = BUDGET_DROPS.get_ptr_mut(class as u32) {
        // SAFETY: per-CPU value, written only by this CPU while the program runs.
        unsafe { *v += 1 };
    }
}
