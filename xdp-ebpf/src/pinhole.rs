//! Media in pinhole mode (`media = "pinhole"`): a packet to such a port passes only from a peer
//! with a live pinhole on it, one hash lookup keyed by (source address, destination port). The
//! controller opens pinholes from the calls' SDP (see `signaling`) or from `voipwall pinhole
//! add`; this program keeps them alive while media flows and latches the peer's source port on
//! its first packet (symmetric RTP): later packets from the same address but another port do
//! not pass.

use common::{PinholeKey, stat};

use crate::{
    clock,
    maps::{PINHOLES, bump},
    parse::Packet,
};

/// Whether a live pinhole admits `pkt`. Own stack frame (BPF-to-BPF call), so that its key does
/// not add to the caller's frame on the deepest call chain.
#[inline(never)]
pub fn admits(pkt: &Packet) -> bool {
    let key = PinholeKey { peer: pkt.src, local_port: pkt.dport, _pad: [0; 6] };
    let Some(p) = PINHOLES.get_ptr_mut(&key) else {
        return false;
    };
    let now = clock::now();
    // SAFETY: value pointer from a successful lookup; the controller writes whole values with
    // update (a new value), so a torn read can at worst see the old or the new state.
    unsafe {
        if !(*p).live(now) {
            return false;
        }
        match (*p).peer_port {
            0 => {
                (*p).peer_port = pkt.sport;
                bump(stat::PINHOLES_LATCHED);
            }
            port if port != pkt.sport => return false,
            _ => {}
        }
        if (*p).seen_ns < now {
            (*p).seen_ns = now;
        }
    }
    true
}
