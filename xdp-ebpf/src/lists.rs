//! Steps 2 and 3 of the decision chain: the allow list, the block list and dynamic bans.
//!
//! Allow and block lists are LPM tries per address family; a hit costs no clock read. Bans are
//! keyed by the rate limiter's source key; only a ban-table hit reads the clock, to treat an
//! expired ban as absent without waiting for the controller's sweeper.

use aya_ebpf::maps::lpm_trie::Key;
use common::SourceKey;

use crate::{
    clock,
    maps::{ALLOW_V4, ALLOW_V6, BANS, BLOCK_V4, BLOCK_V6},
    parse::Packet,
};

/// Step 2: the source is on the allow list.
#[inline(always)]
pub fn allowed(pkt: &Packet) -> bool {
    if pkt.ipv6 {
        ALLOW_V6.get(Key::new(128, pkt.src)).is_some()
    } else {
        ALLOW_V4.get(Key::new(32, pkt.src_v4())).is_some()
    }
}

/// Step 3a: the source is on the static or manual block list.
#[inline(always)]
pub fn blocked(pkt: &Packet) -> bool {
    if pkt.ipv6 {
        BLOCK_V6.get(Key::new(128, pkt.src)).is_some()
    } else {
        BLOCK_V4.get(Key::new(32, pkt.src_v4())).is_some()
    }
}

/// Step 3b: the source (as the rate limiter keys it) is under an unexpired ban.
#[inline(always)]
pub fn banned(source: &SourceKey) -> bool {
    match BANS.get_ptr(source) {
        // SAFETY: map value pointer from a successful lookup; a concurrent update can only
        // replace the whole u64 expiry.
        Some(entry) => (unsafe { (*entry).expires_ns }) > clock::now(),
        None => false,
    }
}
