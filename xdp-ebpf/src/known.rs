//! Known peers: sources that proved their address with something a spoofer cannot forge (see
//! `common::known`). Their packets skip the unknown sources' shared budget and keep their own
//! rate state inside their `KNOWN` entry, which spoofed sources never create and so cannot
//! evict.
//!
//! `KNOWN_FILTER` answers "certainly not known" with one array read: a source whose slot is
//! clear (almost every spoofed source) costs no hash lookup. Slots are set with plain byte
//! stores (two CPUs setting slots of one word touch different bytes) and never cleared.

use aya_ebpf::bindings::BPF_NOEXIST;
use common::{KnownPeer, SourceKey, known, stat};

use crate::maps::{KNOWN, KNOWN_FILTER, bump, zero};

/// The filter slot of `source` is set: it may be known (or have requests from the host's SIP
/// server outstanding).
#[inline(always)]
pub fn maybe(source: &SourceKey) -> bool {
    let (word, byte) = known::filter_slot(source);
    match KNOWN_FILTER.get(word) {
        Some(w) => (w >> (byte * 8)) & 0xff != 0,
        None => false,
    }
}

/// Set the filter slot of `source`.
#[inline(always)]
pub fn mark(source: &SourceKey) {
    let (word, byte) = known::filter_slot(source);
    if let Some(w) = KNOWN_FILTER.get_ptr_mut(word) {
        // SAFETY: array value pointer; one byte of the 8-byte value.
        unsafe { core::ptr::write_volatile((w as *mut u8).add((byte & 7) as usize), 1) };
    }
}

/// The known peer `source`, if it is one and was seen within `ttl_ns` of `now`.
#[inline(always)]
pub fn find(source: &SourceKey, now: u64, ttl_ns: u64) -> Option<&'static mut KnownPeer> {
    if !maybe(source) {
        return None;
    }
    let p = KNOWN.get_ptr_mut(source)?;
    // SAFETY: value pointer from a successful lookup.
    let p = unsafe { &mut *p };
    if now.saturating_sub(p.seen_ns) > ttl_ns {
        return None;
    }
    Some(p)
}

/// `source` proved itself by `proof` at `now`: refresh its entry, or create one (and set its
/// filter slot). A new entry, or one that had expired (`ttl_ns`), counts as learned by `proof`.
/// Returns the entry.
// Own stack frame (BPF-to-BPF call): see `rate::admit`.
#[inline(never)]
pub fn learn(source: &SourceKey, proof: u8, now: u64, ttl_ns: u64) -> Option<&'static mut KnownPeer> {
    let slot = stat::KNOWN_LEARNED + (proof.wrapping_sub(1) & 3) as u32;
    if let Some(p) = KNOWN.get_ptr_mut(source) {
        // SAFETY: value pointer from a successful lookup.
        let p = unsafe { &mut *p };
        if now.saturating_sub(p.seen_ns) > ttl_ns {
            bump(slot);
            p.since_ns = now;
        }
        p.seen_ns = now;
        p.proof = proof;
        return Some(p);
    }
    let zero = zero::<KnownPeer>()?;
    if KNOWN.insert(source, zero, BPF_NOEXIST as u64).is_ok() {
        bump(stat::KNOWN_CREATED);
        bump(slot);
    }
    // SAFETY: as above.
    let p = unsafe { &mut *KNOWN.get_ptr_mut(source)? };
    p.seen_ns = now;
    p.since_ns = now;
    p.proof = proof;
    // The slot after the entry: a reader that sees the slot finds the entry.
    mark(source);
    Some(p)
}
