//! What each map or helper operation costs alone (the single-operation programs of
//! `xdp-ebpf/src/bench.rs`), as extra ns over the empty program in the same round.

use aya::maps::{LpmTrie, lpm_trie::Key};
use serde::Serialize;

use crate::{
    bench::{Baseline, Settings, Stat, median_spread},
    packet::Packet,
};

#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub op: String,
    /// ns per run of the program doing only this operation.
    pub ns: Stat,
    /// The same minus the empty program: the operation's own cost.
    pub extra_ns: f64,
}

pub const OPS: &[(&str, &str)] = &[
    ("bench_parse", "parse Ethernet..UDP"),
    ("bench_lpm", "LPM trie lookup (1000 entries)"),
    ("bench_hash", "hash lookup, miss (ban check)"),
    ("bench_lru", "LRU rate bucket lookup, hit"),
    ("bench_array", "array lookup (port table)"),
    ("bench_clock", "bpf_ktime_get_coarse_ns"),
];

pub fn run(settings: &Settings, b: &mut Baseline) -> Vec<OpRow> {
    {
        let mut lpm: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(b.ebpf.map_mut("BENCH_LPM").expect("BENCH_LPM")).expect("LPM");
        for i in 0..1000u32 {
            let a = (0x0a00_0000u32 + (i << 12)).to_be_bytes();
            lpm.insert(&Key::new(20, a), 2, 0).expect("insert");
        }
    }
    let frame = Packet::udp4([192, 0, 2, 10], 5060, [10, 0, 0, 1], 5060).payload(&[b'x'; 400]).bytes();
    let mut rows = Vec::new();
    for (prog, what) in OPS {
        let mut ours = Vec::new();
        let mut empty = Vec::new();
        for _ in 0..settings.rounds {
            empty.push(b.ns(&frame, settings.repeat));
            ours.push(b.program_ns(prog, &frame, settings.repeat));
        }
        let ns = median_spread(&ours);
        let e = median_spread(&empty).median;
        rows.push(OpRow { op: (*what).to_string(), ns, extra_ns: ns.median - e });
    }
    rows
}
