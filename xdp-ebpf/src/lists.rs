//! Steps 2 and 3 of the decision chain: the allow list, the block list and dynamic bans.
//!
//! Both lists live in one LPM trie per address family, so a single lookup answers "allowed,
//! blocked or neither"; the controller writes `SOURCE_ALLOW` for a block entry that a wider
//! allow entry covers, which keeps "allow is checked first" exact under longest-prefix match. A
//! hit costs no clock read. Bans are keyed by the rate limiter's source key; only a ban-table
//! hit reads the clock, to treat an expired ban as absent without waiting for the sweeper.

use aya_ebpf::maps::lpm_trie::Key;
use common::{GATE_MORE, GATE_VALUE, SourceKey, active};

use crate::{
    clock,
    maps::{ACTIVE, BANS, SOURCES_GATE, SOURCES_V4, SOURCES_V6},
    parse::Packet,
};

/// Steps 2 and 3a: `SOURCE_ALLOW`, `SOURCE_BLOCK`, `SOURCE_FLEET`, or 0 for a source on no list.
///
/// IPv4 first asks the /16 gate: one array read answers for every /16 holding no entry longer
/// than /16, which is most of the address space even with a large list; only the rest walk the
/// trie. The trie's cost grows with its size; the gate's does not.
#[inline(always)]
pub fn source_list(pkt: &Packet) -> u32 {
    source_list_of(&pkt.src, pkt.ipv6)
}

/// [`source_list`] for any address (IPv4-mapped for IPv4): the egress program asks it about
/// the peers it answers.
#[inline(always)]
pub fn source_list_of(addr: &[u8; 16], ipv6: bool) -> u32 {
    if ipv6 {
        return SOURCES_V6.get(Key::new(128, *addr)).copied().unwrap_or(0);
    }
    let s = [addr[12], addr[13], addr[14], addr[15]];
    let slash16 = ((s[0] as u32) << 8) | s[1] as u32;
    match SOURCES_GATE.get(slash16) {
        Some(&gate) if gate & GATE_MORE == 0 => gate & GATE_VALUE,
        _ => SOURCES_V4.get(Key::new(32, s)).copied().unwrap_or(0),
    }
}

/// Step 3b: the source (as the rate limiter keys it) is under an unexpired ban. While the ban
/// table is known to be empty this is one array read.
#[inline(always)]
pub fn banned(source: &SourceKey) -> bool {
    if ACTIVE.get(active::BANS_PRESENT).is_none_or(|&b| b == 0) {
        return false;
    }
    match BANS.get_ptr(source) {
        // SAFETY: map value pointer from a successful lookup; a concurrent update can only
        // replace the whole u64 expiry.
        Some(entry) => (unsafe { (*entry).expires_ns }) > clock::now(),
        None => false,
    }
}
