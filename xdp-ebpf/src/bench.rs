//! Benchmark programs, built beside the real object (not shipped in the daemon):
//!
//! - `bench_empty`: XDP_PASS and nothing else, the baseline every cost is compared with;
//! - one program per map or helper operation the data plane performs, each alone, so the
//!   benchmark can put the real program's cost next to the sum of the operations it does;
//! - `bench_redirect` / `bench_drop`: a generator that redirects frames into a veth (run with
//!   BPF_F_TEST_XDP_LIVE_FRAMES) and a drop-everything filter, for the end-to-end runs.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: a key lives on this program's stack and the
// helper receives a pointer to it; handing aya-ebpf's `impl Borrow<K>` a value would move 16-40
// byte keys into every call.
#![expect(clippy::needless_borrows_for_generic_args, reason = "map keys stay on the caller's stack")]

#[path = "parse.rs"]
#[expect(dead_code, reason = "shared with the real program; only `parse` is used here")]
mod parse;
#[path = "runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
    helpers::{bpf_redirect, generated::bpf_ktime_get_coarse_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use common::{BanEntry, PortRule, RateKey, RateState, addr::v4_mapped};

#[map]
static BENCH_LPM: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 21, BPF_F_NO_PREALLOC);
#[map]
static BENCH_RATES: LruHashMap<RateKey, RateState> = LruHashMap::with_max_entries(1 << 20, 0);
#[map]
static BENCH_BANS: LruHashMap<[u8; 16], BanEntry> = LruHashMap::with_max_entries(1 << 17, 0);
#[map]
static BENCH_PORTS: Array<PortRule> = Array::with_max_entries(1 << 18, 0);
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);
#[map]
static BENCH_TARGET: Array<u32> = Array::with_max_entries(1, 0);

/// The IPv4 source address at its fixed offset in an untagged frame.
#[inline(always)]
fn src_v4(ctx: &XdpContext) -> Option<[u8; 4]> {
    let p = parse::ptr_at::<[u8; 4]>(&parse::Frame::of_xdp(ctx), 14 + 12).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(unsafe { *p })
}

/// Keep a value alive so the operation producing it is not optimized away.
#[inline(always)]
fn sink(v: u64) {
    if let Some(s) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *s = v };
    }
}

#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// What every single-operation program below does besides its operation: read the source
/// address and write a result to the per-CPU sink. Operation costs are measured over this.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(src[3] as u64);
    }
    xdp_action::XDP_PASS
}

/// Ethernet to transport headers, as the real program parses them.
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    let mut pkt = parse::Packet::empty();
    let f = parse::Frame::of_xdp(&ctx);
    let r = parse::parse(f.start, f.end, &mut pkt);
    sink(r.is_ok() as u64 + pkt.dport as u64);
    xdp_action::XDP_PASS
}

/// One longest-prefix lookup of the source.
#[xdp]
pub fn bench_lpm(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(BENCH_LPM.get(Key::new(32, src)).copied().unwrap_or(0) as u64);
    }
    xdp_action::XDP_PASS
}

/// One hash lookup (a ban check) by the 16-byte source key.
#[xdp]
pub fn bench_hash(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(BENCH_BANS.get_ptr(v4_mapped(src)).is_some() as u64);
    }
    xdp_action::XDP_PASS
}

/// The rate table's access pattern: lookup, and for a new source insert then look up again.
#[xdp]
pub fn bench_lru(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        let key = RateKey { addr: v4_mapped(src), class: 1 };
        let p = match BENCH_RATES.get_ptr_mut(&key) {
            Some(p) => Some(p),
            None => {
                let _ = BENCH_RATES.insert(&key, &RateState::default(), BPF_NOEXIST as u64);
                BENCH_RATES.get_ptr_mut(&key)
            }
        };
        if let Some(p) = p {
            // SAFETY: value pointer from a successful lookup.
            unsafe {
                (*p).window_packets += 1;
                sink((*p).window_packets as u64);
            }
        }
    }
    xdp_action::XDP_PASS
}

/// One array lookup (a port table read).
#[xdp]
pub fn bench_array(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(BENCH_PORTS.get(src[3] as u32).map_or(0, |r| r.flags as u64));
    }
    xdp_action::XDP_PASS
}

/// One coarse clock read.
#[xdp]
pub fn bench_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: the helper takes no arguments.
    sink(unsafe { bpf_ktime_get_coarse_ns() });
    xdp_action::XDP_PASS
}

/// The end-to-end generator: every frame out of the interface in `BENCH_TARGET`.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match BENCH_TARGET.get(0) {
        // SAFETY: plain helper call with an interface index.
        Some(&ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

/// Drops everything: the cheapest possible filter, the upper bound of the end-to-end runs.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

// The IPv4 source levels' two arrays at their real sizes, for a read at a random source (the
// cost a random source pays at each level, caches cold).
#[map]
static BENCH_GATE: Array<u32> = Array::with_max_entries(65536, 0);
#[map]
static BENCH_MID: Array<u64> = Array::with_max_entries(common::MID_WORDS, 0);

/// One read of a 65536-entry u32 array (the /16 gate's size) at the source's /16.
#[xdp]
pub fn bench_gate_read(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(BENCH_GATE.get(u32::from_be_bytes(src) >> 16).copied().unwrap_or(0) as u64);
    }
    xdp_action::XDP_PASS
}

/// One read of the /24 level's 8 MiB u64 array at the source's /24 word.
#[xdp]
pub fn bench_mid_read(ctx: XdpContext) -> u32 {
    if let Some(src) = src_v4(&ctx) {
        sink(BENCH_MID.get(common::mid_slot(u32::from_be_bytes(src) >> 8).0).copied().unwrap_or(0));
    }
    xdp_action::XDP_PASS
}
