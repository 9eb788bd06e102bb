//! Steps 2 and 3 of the decision chain: the allow list, the block list and dynamic bans.
//!
//! Both lists live in one LPM trie per address family (IPv4 is answered from two arrays and a
//! hash the controller derives from it), so a single lookup answers "allowed, blocked or
//! neither"; the controller writes `SOURCE_ALLOW` for a block entry that a wider allow entry
//! covers, which keeps "allow is checked first" exact under longest-prefix match. A
//! hit costs no clock read. Bans are keyed by the rate limiter's source key; only a ban-table
//! hit reads the clock, to treat an expired ban as absent without waiting for the sweeper.

use aya_ebpf::maps::lpm_trie::Key;
use common::{GATE_MORE, GATE_VALUE, MID_HOSTS, SourceKey, active, host_value, mid_slot, mid_value};

use crate::{
    clock,
    maps::{ACTIVE, BANS, SOURCES_GATE, SOURCES_HOSTS, SOURCES_MID, SOURCES_V6},
    parse::Packet,
};

/// Steps 2 and 3a: `SOURCE_ALLOW`, `SOURCE_BLOCK`, `SOURCE_FLEET`, or 0 for a source on no list.
#[inline(always)]
pub fn source_list(pkt: &Packet) -> u32 {
    source_list_of(&pkt.src, pkt.ipv6)
}

/// [`source_list`] for any address (IPv4-mapped for IPv4): the egress program asks it about
/// the peers it answers.
///
/// IPv4 is answered in at most three reads whatever the list size (DIR-16-8-8): the /16 gate
/// answers for every /16 holding no entry longer than /16; behind it `SOURCES_MID` for every
/// /24 holding no entry longer than /24; behind that the /24's block of 256 host answers. IPv6
/// walks the trie.
#[inline(always)]
pub fn source_list_of(addr: &[u8; 16], ipv6: bool) -> u32 {
    if ipv6 {
        return SOURCES_V6.get(Key::new(128, *addr)).copied().unwrap_or(0);
    }
    let a = u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]);
    match SOURCES_GATE.get(a >> 16) {
        Some(&gate) if gate & GATE_MORE != 0 => mid_answer(a),
        Some(&gate) => gate & GATE_VALUE,
        None => 0,
    }
}

/// The answer of a source inside a /16 whose gate says "more".
#[inline(always)]
fn mid_answer(a: u32) -> u32 {
    let slash24 = a >> 8;
    let Some(&word) = SOURCES_MID.get(mid_slot(slash24).0) else { return 0 };
    let slot = mid_value(word, slash24);
    if slot & MID_HOSTS != 0
        && let Some(block) = SOURCES_HOSTS.get_ptr(&slash24)
    {
        // SAFETY: map value pointer from a successful lookup; the controller replaces a block
        // as a whole (a new element), never in place.
        let host = host_value(unsafe { &*block }, a);
        if host != 0 {
            return host;
        }
    }
    slot & GATE_VALUE
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
