//! Named source sets (`[sets]`): which of them hold a source. One LPM lookup returns the bitmask
//! of every set containing the source (the controller folds covering prefixes into each entry's
//! mask). For IPv4, `SETS_GATE` first says whether this generation's sets touch the source's /16
//! at all, so an unknown source elsewhere (a spoofed one) costs an array read, not a trie walk.

use aya_ebpf::maps::lpm_trie::Key;
use common::{SET_KEY_GENERATION_BITS, set_key_v4, set_key_v6};

use crate::{
    maps::{SETS_GATE, SETS_V4, SETS_V6},
    parse::Packet,
};

/// The source is in one of the sets of `mask` (one bit per set) in `generation`. The IPv4 gate
/// is read inline, so a source whose /16 holds no set entry (a spoofed one, most of the time)
/// costs one array read and no call.
#[inline(always)]
pub fn member(pkt: &Packet, generation: u32, mask: u64) -> bool {
    if !pkt.ipv6 && !gate_v4(pkt, generation) {
        return false;
    }
    lookup(pkt, generation, mask)
}

/// The IPv4 source's /16 holds an entry of some set in `generation` (it may be a member).
#[inline(always)]
pub fn gate_v4(pkt: &Packet, generation: u32) -> bool {
    let s = pkt.src_v4();
    let slash16 = (s[0] as u32) << 8 | s[1] as u32;
    SETS_GATE.get(slash16).is_some_and(|g| g & (1 << (generation & 1)) != 0)
}

/// The trie lookup of [`member`].
// Own stack frame (BPF-to-BPF call): see `rate::admit`.
#[inline(never)]
fn lookup(pkt: &Packet, generation: u32, mask: u64) -> bool {
    let bits = SET_KEY_GENERATION_BITS;
    let found = if pkt.ipv6 {
        SETS_V6.get(Key::new(bits + 128, set_key_v6(generation, pkt.src))).copied()
    } else {
        SETS_V4.get(Key::new(bits + 32, set_key_v4(generation, pkt.src_v4()))).copied()
    };
    found.is_some_and(|m| m & mask != 0)
}
