//! Steps 2 and 3 of the decision chain: the allow list, the block list and dynamic bans.
//!
//! Both lists live in one LPM trie per address family, so a single lookup answers "allowed,
//! blocked or neither"; the controller writes `SOURCE_ALLOW` for a block entry that a wider
//! allow entry covers, which keeps "allow is checked first" exact under longest-prefix match. A
//! hit costs no clock read. Bans are keyed by the rate limiter's source key; only a ban-table
//! hit reads the clock, to treat an expired ban as absent without waiting for the sweeper.

use aya_ebpf::maps::lpm_trie::Key;
use common::SourceKey;

use crate::{
    clock,
    maps::{BANS, SOURCES_V4, SOURCES_V6},
    parse::Packet,
};

/// Steps 2 and 3a: `SOURCE_ALLOW`, `SOURCE_BLOCK`, or 0 for a source on neither list.
#[inline(always)]
pub fn source_list(pkt: &Packet) -> u32 {
    let hit = if pkt.ipv6 {
        SOURCES_V6.get(Key::new(128, pkt.src))
    } else {
        SOURCES_V4.get(Key::new(32, pkt.src_v4()))
    };
    hit.copied().unwrap_or(0)
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
