//! Call signaling for the pinhole learner: while a rule is in pinhole mode, the UDP SIP messages
//! that can carry or end a media session (INVITE, ACK, PRACK, UPDATE, BYE, CANCEL and every
//! response) are copied into the `SIGNALING` ring buffer: those the host receives on a SIP port
//! and lets in (XDP), and those it sends from one (TC egress). The controller reads their SDP
//! and Call-ID and writes `PINHOLES`. REGISTER, OPTIONS and the other methods are never copied,
//! and a per-second budget bounds what a flood of calls can make the controller read.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_md},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::TcContext,
};
use common::{
    PINHOLE_OPEN_SIGNALING, PINHOLE_RTCP, PORT_PINHOLE, PROTO_SLOT_UDP, Pinhole, PinholeKey, PolicyConfig, SIGNAL_RATE,
    SIGNAL_SNAP, SignalRecord, port_index, stat,
};

use crate::{
    budget, clock,
    maps::{PINHOLES, PORTS, SIGNAL_BUDGET, SIGNALING, bump},
    parse::Packet,
    sip,
};

/// Whether a message starting with `head` (its first 8 bytes, as read) is one the learner
/// needs.
#[inline(always)]
fn wanted(head: &[u8; 8]) -> bool {
    head.starts_with(b"INVITE ")
        || head.starts_with(b"ACK ")
        || head.starts_with(b"BYE ")
        || head.starts_with(b"CANCEL ")
        || head.starts_with(b"UPDATE ")
        || head.starts_with(b"PRACK ")
        || head.starts_with(b"SIP/2.0 ")
}

/// Reserve a record for a message of `len` payload bytes: `None` when over budget or the ring
/// is full (counted as lost).
#[inline(always)]
fn reserve(
    pkt: &Packet,
    direction: u8,
    len: u32,
) -> Option<(aya_ebpf::maps::ring_buf::RingBufEntry<SignalRecord>, u32)> {
    let b = SIGNAL_BUDGET.get_ptr_mut(0)?;
    let now = clock::now();
    // SAFETY: array value pointer; the u64 is 8-byte aligned and only accessed as a whole.
    if unsafe { budget::take(&mut (*b).tat_ns, &SIGNAL_RATE, now) } {
        bump(stat::SIGNALS_LOST);
        return None;
    }
    let Some(mut entry) = SIGNALING.reserve::<SignalRecord>(0) else {
        bump(stat::SIGNALS_LOST);
        return None;
    };
    let n = if len as usize > SIGNAL_SNAP { SIGNAL_SNAP as u32 } else { len };
    if n == 0 || n > SIGNAL_SNAP as u32 {
        // Unreachable (len > 8); the verifier wants the bound next to the copy's length.
        entry.discard(0);
        return None;
    }
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` is the reserved record.
    unsafe {
        (*rec).ts_ns = clock::precise();
        (*rec).src = pkt.src;
        (*rec).dst = pkt.dst;
        (*rec).sport = pkt.sport;
        (*rec).dport = pkt.dport;
        (*rec).direction = direction;
        (*rec).ipv6 = pkt.ipv6 as u8;
        (*rec)._pad = 0;
        (*rec).len = len;
        (*rec).cap_len = n;
    }
    Some((entry, n))
}

/// A message the host receives. `xdp` is the program's context, `frame_len` the frame's
/// length. A global BPF function (see `ports::voipwall_open_port`): verified once on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn voipwall_signal_in(xdp: *mut xdp_md, frame_len: u32, pkt: *const Packet) -> u32 {
    // SAFETY: null or a pointer to the caller's parsed packet.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else { return 0 };
    let off = pkt.payload_off as u32;
    if off == 0 || frame_len <= off + 8 {
        return 0;
    }
    let len = frame_len - off;
    let mut head = [0u8; 8];
    // SAFETY: 8 bytes into a stack array; the helper checks the frame's bounds.
    if unsafe { bpf_xdp_load_bytes(xdp, off, head.as_mut_ptr() as *mut c_void, 8) } != 0 || !wanted(&head) {
        return 0;
    }
    let Some((mut entry, n)) = reserve(pkt, common::SIGNAL_IN, len) else { return 0 };
    let rec = entry.as_mut_ptr();
    if n == 0 || n > SIGNAL_SNAP as u32 {
        entry.discard(0);
        return 0;
    }
    // SAFETY: `n` is within 1..=SIGNAL_SNAP, inside the record's data.
    let r = unsafe { bpf_xdp_load_bytes(xdp, off, (*rec).data.as_mut_ptr() as *mut c_void, n) };
    if r != 0 {
        entry.discard(0);
        return 0;
    }
    entry.submit(0);
    bump(stat::SIGNALS);
    1
}

/// A message the host sends (TC egress).
#[inline(always)]
pub fn out(ctx: &TcContext, pkt: &Packet, generation: u32, cfg: &PolicyConfig) {
    let off = pkt.payload_off as u32;
    let Some(len) = ctx.len().checked_sub(off) else { return };
    if off == 0 || len <= 8 {
        return;
    }
    let Ok(head) = ctx.load::<[u8; 8]>(off as usize) else { return };
    if !wanted(&head) {
        return;
    }
    let Some((mut entry, n)) = reserve(pkt, common::SIGNAL_OUT, len) else { return };
    let rec = entry.as_mut_ptr();
    if n == 0 || n > SIGNAL_SNAP as u32 {
        entry.discard(0);
        return;
    }
    // SAFETY: as in `voipwall_signal_in`.
    let r =
        unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off, (*rec).data.as_mut_ptr() as *mut c_void, n) };
    if r != 0 {
        entry.discard(0);
        return;
    }
    entry.submit(0);
    bump(stat::SIGNALS);
    provisional(ctx, pkt, generation, cfg);
}

/// Before the host's own SDP leaves, open a provisional pinhole for each of its media ports in
/// pinhole mode, to the address the message goes to (RTP and RTCP on the next port): the peer
/// may send media as soon as it reads the answer, sooner than the controller can learn it.
/// The controller then opens the call's pinholes (the SDP addresses too) over these; one it
/// never confirms (SDP the host only relays) expires as idle after `return_timeout`.
#[inline(never)]
fn provisional(ctx: &TcContext, pkt: &Packet, generation: u32, cfg: &PolicyConfig) {
    let Some(found) = sip::media_ports(ctx, pkt.payload_off as u32) else { return };
    let now = clock::now();
    let value = Pinhole {
        seen_ns: now,
        until_ns: 0,
        idle_ns: cfg.return_timeout_ns,
        peer_port: 0,
        flags: PINHOLE_OPEN_SIGNALING,
        _pad: 0,
    };
    for i in 0..4 {
        if i >= found.count {
            break;
        }
        let port = found.ports[(i & 3) as usize];
        let Some(rule) = PORTS.get(port_index(generation, PROTO_SLOT_UDP, port)) else { continue };
        if rule.flags & PORT_PINHOLE == 0 {
            continue;
        }
        for (p, flags) in
            [(port, PINHOLE_OPEN_SIGNALING), (port.wrapping_add(1), PINHOLE_OPEN_SIGNALING | PINHOLE_RTCP)]
        {
            let key = PinholeKey { peer: pkt.dst, local_port: p, _pad: [0; 6] };
            if PINHOLES.get_ptr(&key).is_none()
                && PINHOLES.insert(&key, &Pinhole { flags, ..value }, BPF_NOEXIST as u64).is_ok()
            {
                bump(stat::PINHOLES_EARLY);
            }
        }
    }
}
