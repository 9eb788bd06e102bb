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
    /// The same minus its baseline (the program doing everything but the operation): the
    /// operation's own cost.
    pub extra_ns: f64,
    /// `bench_sink`: the source read and result write every single-operation program does, so
    /// every operation is measured over the same baseline and their costs add up.
    pub baseline: String,
}

/// (program, what it measures, the baseline program doing everything else it does).
pub const OPS: &[(&str, &str, &str)] = &[
    ("bench_parse", "parse Ethernet..UDP", "bench_sink"),
    ("bench_lpm", "LPM trie lookup (1000 entries)", "bench_sink"),
    ("bench_hash", "hash lookup, miss (ban check)", "bench_sink"),
    ("bench_lru", "LRU rate bucket lookup, hit", "bench_sink"),
    ("bench_array", "array lookup (port table)", "bench_sink"),
    ("bench_clock", "bpf_ktime_get_coarse_ns", "bench_sink"),
];

/// The baseline program of a single-operation program.
pub fn baseline_of(program: &str) -> &'static str {
    OPS.iter().find(|o| o.0 == program).map_or("bench_empty", |o| o.2)
}

/// The 1000 /20s the trie holds while single operations are measured.
fn trie_keys() -> impl Iterator<Item = Key<[u8; 4]>> {
    (0..1000u32).map(|i| Key::new(20, (0x0a00_0000u32 + (i << 12)).to_be_bytes()))
}

pub fn run(settings: &Settings, b: &mut Baseline) -> Vec<OpRow> {
    {
        let mut lpm: LpmTrie<_, [u8; 4], u32> =
            LpmTrie::try_from(b.ebpf.map_mut("BENCH_LPM").expect("BENCH_LPM")).expect("LPM");
        for key in trie_keys() {
            lpm.insert(&key, 2, 0).expect("insert");
        }
    }
    let frame = Packet::udp4([192, 0, 2, 10], 5060, [10, 0, 0, 1], 5060).payload(&[b'x'; 400]).bytes();
    let mut rows = Vec::new();
    for (prog, what, base) in OPS {
        let mut ours = Vec::new();
        let mut baseline = Vec::new();
        for _ in 0..settings.rounds {
            baseline.push(b.program_ns(base, &frame, settings.repeat));
            ours.push(b.program_ns(prog, &frame, settings.repeat));
        }
        let ns = median_spread(&ours);
        let e = median_spread(&baseline).median;
        rows.push(OpRow { op: (*what).to_string(), ns, extra_ns: ns.median - e, baseline: (*base).to_string() });
    }
    // Leave the trie empty for the scale section, which fills it with the block feed.
    let mut lpm: LpmTrie<_, [u8; 4], u32> =
        LpmTrie::try_from(b.ebpf.map_mut("BENCH_LPM").expect("BENCH_LPM")).expect("LPM");
    for key in trie_keys() {
        lpm.remove(&key).expect("remove");
    }
    rows
}
