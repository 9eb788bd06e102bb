//! voipwall's data plane.
//!
//! `voipwall_xdp` runs on the public interface and walks the decision chain, first match
//! deciding: parse -> allow list -> block list and bans -> (fragments) -> return traffic, ICMP,
//! port policy -> rate limit -> pass. Each step is one small function in the file named after
//! it; [`verdict::finish`] is the single exit that counts every outcome.
//!
//! `voipwall_tc` runs on the same interface's egress and records the flows the host opens.
#![no_std]
#![no_main]
// `asm!` on the BPF target: the atomic add of the unknown sources' budget (see `budget`).
#![feature(asm_experimental_arch)]
// Map keys are passed by reference on purpose: a key lives on this program's stack and the
// helper receives a pointer to it; handing aya-ebpf's `impl Borrow<K>` a value would move 16-40
// byte keys into every call.
#![expect(clippy::needless_borrows_for_generic_args, reason = "map keys stay on the caller's stack")]

mod ban;
mod budget;
mod capture;
mod clock;
mod egress;
mod flows;
mod fragments;
mod icmp;
mod known;
mod lists;
mod maps;
mod parse;
mod pinhole;
mod ports;
mod rate;
mod runtime;
mod sets;
mod signaling;
mod sip;
mod verdict;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use common::{
    PINHOLE_LEARN, PORT_SIP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, PolicyConfig, SOURCE_ALLOW, SOURCE_BLOCK, SOURCE_FLEET,
    SourceKey, active, addr::mask_prefix, port_index, reason,
};

use crate::{
    maps::{ACTIVE, POLICY, PORTS},
    parse::{FRAG_FIRST, FRAG_LATER, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    verdict::Decision,
};

#[xdp]
pub fn voipwall_xdp(ctx: XdpContext) -> u32 {
    try_voipwall_xdp(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[classifier]
pub fn voipwall_tc(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

/// `Err` only if the policy arrays were unreadable, which cannot happen for in-range array
/// indices; the verifier still wants the branch. Failing open there keeps the host reachable.
#[inline(always)]
fn try_voipwall_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let generation = ACTIVE.get(active::GENERATION).copied().ok_or(())? & 1;
    let cfg = POLICY.get(generation).ok_or(())?;
    let decision = decide(ctx, generation, cfg);
    Ok(verdict::finish(ctx, decision, cfg))
}

/// The decision chain, first match decides.
#[inline(always)]
fn decide(ctx: &XdpContext, generation: u32, cfg: &PolicyConfig) -> Decision {
    let mut pkt = parse::Packet::empty();
    let frame = parse::Frame::of_xdp(ctx);
    let parsed = match parse::plain_ipv4(frame.start, frame.end, &mut pkt) {
        Some(ipv4) => ipv4.map(|()| parse::Parsed::Ip),
        None => parse::parse(frame.start, frame.end, &mut pkt),
    };
    match parsed {
        Ok(parse::Parsed::Ip) => {}
        Ok(parse::Parsed::NonIp) => return Decision::of(reason::NON_IP),
        Err(()) => return Decision::of(reason::MALFORMED),
    }
    let payload = ports::Payload { xdp: ctx.ctx, frame_len: (frame.end - frame.start) as u32 };
    match lists::source_list(&pkt) {
        SOURCE_ALLOW => {
            signaling(payload, &pkt, generation, cfg);
            return Decision::of(reason::ALLOW_LIST);
        }
        SOURCE_BLOCK => return Decision::of(reason::BLOCK_LIST),
        SOURCE_FLEET => return Decision::of(reason::FLEET_BLOCK),
        _ => {}
    }
    let source = source_key(&pkt, cfg);
    if lists::banned(&source) {
        return Decision::of(reason::BANNED);
    }
    if pkt.frag == FRAG_LATER {
        return fragments::inherit(&pkt, cfg);
    }
    let decision = transport(payload, &pkt, generation, cfg);
    if pkt.frag == FRAG_FIRST {
        fragments::remember(&pkt, decision);
    }
    if !reason::is_drop(decision.reason) {
        signaling(payload, &pkt, generation, cfg);
    }
    decision
}

/// A SIP message over UDP that the host lets in on a SIP port goes to the pinhole learner while
/// a rule is in pinhole mode (see `signaling`).
#[inline(always)]
fn signaling(payload: ports::Payload, pkt: &parse::Packet, generation: u32, cfg: &PolicyConfig) {
    if cfg.pinhole_flags & PINHOLE_LEARN == 0 || pkt.proto != IPPROTO_UDP || pkt.frag == FRAG_LATER {
        return;
    }
    if let Some(rule) = PORTS.get(port_index(generation, PROTO_SLOT_UDP, pkt.dport))
        && rule.flags & PORT_SIP != 0
    {
        signaling::voipwall_signal_in(payload.xdp, payload.frame_len, pkt);
    }
}

/// Steps 4 to 8 for a packet that has its transport header.
#[inline(always)]
fn transport(payload: ports::Payload, pkt: &parse::Packet, generation: u32, cfg: &PolicyConfig) -> Decision {
    match pkt.proto {
        IPPROTO_TCP => ports::decide(payload, pkt, generation, cfg, PROTO_SLOT_TCP),
        IPPROTO_UDP => ports::decide(payload, pkt, generation, cfg, PROTO_SLOT_UDP),
        IPPROTO_ICMP if !pkt.ipv6 => icmp::decide(pkt, generation, cfg),
        IPPROTO_ICMPV6 if pkt.ipv6 => icmp::decide(pkt, generation, cfg),
        _ => Decision::of(reason::PROTOCOL_CLOSED),
    }
}

/// The source as rate limits and bans see it: the IPv4 address, or the IPv6 address cut to the
/// configured prefix (one attacker owns a whole /64).
#[inline(always)]
pub fn source_key(pkt: &parse::Packet, cfg: &PolicyConfig) -> SourceKey {
    if pkt.ipv6 { mask_prefix(pkt.src, cfg.ipv6_prefix) } else { pkt.src }
}
