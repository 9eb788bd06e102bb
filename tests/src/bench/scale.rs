//! Scale curves: cost versus block-list size (hot and random sources) and versus tracked sources
//! (the spoofed-source flood that churns the LRU rate table), plus the glue analysis: what the
//! program costs on that flood next to the sum of the map and helper operations it performs,
//! each measured alone in the same run.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, LpmTrie, lpm_trie::Key};
use common::{RateKey, RateState, addr::v4_mapped};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use voipwall::{
    policy::Capacity,
    sources::{KernelChange, TrieValue},
};

use crate::{
    Harness,
    bench::{Baseline, Settings, Stat, median_spread},
    packet::Packet,
};

pub const HOST: [u8; 4] = [10, 0, 0, 1];

/// A small deterministic generator (xorshift64*), so every run measures the same lists.
pub struct Rng(u64);

impl Rng {
    /// Seeds that differ only in their lowest bit give different streams: the seed is mixed
    /// (SplitMix64's finaliser) before the state's low bit is forced on.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A public-looking IPv4 address outside the test's own ranges.
    pub fn addr(&mut self) -> [u8; 4] {
        loop {
            let a = (self.next_u64() >> 32) as u32;
            let o = a.to_be_bytes();
            if !matches!(o[0], 0 | 10 | 127 | 192 | 198 | 203 | 224..=255) {
                return o;
            }
        }
    }
}

/// `n` distinct CIDRs with the prefix mix of public block feeds: mostly single hosts, many /24s,
/// some /20-/23 and a few /16-/19 (feeds such as Spamhaus DROP or FireHOL level 1 hold almost
/// nothing wider than /16; a few percent of /8s would block the whole address space at 1M).
pub fn block_feed(n: usize, rng: &mut Rng) -> Vec<IpNet> {
    let mut set = std::collections::BTreeSet::new();
    while set.len() < n {
        let r = rng.next_u64() % 100;
        let len = match r {
            0..=59 => 32,
            60..=84 => 24,
            85..=96 => 20 + (rng.next_u64() % 4) as u8,
            _ => 16 + (rng.next_u64() % 4) as u8,
        };
        let net = Ipv4Net::new(Ipv4Addr::from(rng.addr()), len).expect("valid").trunc();
        set.insert(IpNet::V4(net));
    }
    set.into_iter().collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct ScalePoint {
    pub size: u64,
    /// ns per packet, one source over and over (for the block list: in a /16 with no entries).
    pub hot: Stat,
    /// Block list only: a hot source inside a /16 that holds entries (it walks the trie).
    pub hot_dense: Option<Stat>,
    /// Block list only: the bare kernel LPM trie holding the same entries (`bench_lpm`, no gate),
    /// for the same two hot sources, whole-program ns like the figures above.
    pub trie_hot: Option<Stat>,
    pub trie_dense: Option<Stat>,
    pub random: Stat,
    /// Block list only: the share of the random sources whose /16 holds entries longer than /16
    /// (they read the /24 level past the gate), and of those whose /24 holds entries longer than
    /// /24 (they also read a host block).
    pub past_gate: Option<f64>,
    pub to_hosts: Option<f64>,
    pub empty_hot: f64,
    pub empty_random: f64,
}

fn frames_from(sources: &[[u8; 4]], port: u16) -> Vec<Vec<u8>> {
    sources.iter().map(|s| Packet::udp4(*s, 40000, HOST, port).payload(&[0; 64]).bytes()).collect()
}

/// Mean kernel-reported ns over `frames`, one run each (a different packet every run).
fn spread_ns(h: &Harness, frames: &[Vec<u8>]) -> f64 {
    let total: f64 = frames.iter().map(|f| h.dp.test_run(f, 1).expect("test_run").1.as_nanos() as f64).sum();
    total / frames.len() as f64
}

fn spread_empty(b: &Baseline, frames: &[Vec<u8>]) -> f64 {
    frames.iter().map(|f| b.ns(f, 1)).sum::<f64>() / frames.len() as f64
}

fn policy() -> &'static str {
    "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{ pps = 1000000, burst = 100000000, ban = \"1h\" }]\nunknown = \"off\"\n"
}

/// The share of `addrs` for which `f` holds.
fn share(addrs: &[[u8; 4]], f: impl Fn(u32) -> bool) -> f64 {
    addrs.iter().filter(|a| f(u32::from_be_bytes(**a))).count() as f64 / addrs.len().max(1) as f64
}

/// Closed-port traffic (the list lookup without the rate table) against growing block lists.
pub fn block_list(settings: &Settings, b: &mut Baseline) -> (Vec<ScalePoint>, ColdReads) {
    let sizes: &[usize] = match settings.mode {
        super::Mode::Smoke => &[10, 1_000],
        super::Mode::Quick => &[10, 10_000, 100_000],
        super::Mode::Full => &[10, 10_000, 100_000, 1_000_000],
    };
    let mut rng = Rng::new(7);
    let feed = block_feed(*sizes.last().expect("sizes"), &mut rng);
    let samples = if settings.mode == super::Mode::Smoke { 256 } else { 4096 };
    let mut probe_rng = Rng::new(99);
    let random: Vec<[u8; 4]> = (0..samples).map(|_| probe_rng.addr()).collect();
    let random_frames = frames_from(&random, 9999);
    let hot = Packet::udp4([192, 0, 2, 10], 40000, HOST, 9999).payload(&[0; 64]).bytes();
    // A source next to a /32 of the feed: its /16 holds entries, it is on no entry.
    let members: std::collections::HashSet<(u32, u8)> = feed
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some((u32::from(n.network()), n.prefix_len())),
            _ => None,
        })
        .collect();
    let covered = |a: u32| (16..=32u8).any(|len| members.contains(&(a & (u32::MAX << (32 - len as u32)), len)));
    let dense_src = feed
        .iter()
        .take(sizes[0].max(1))
        .chain(feed.iter())
        .find_map(|n| match n {
            IpNet::V4(n) if n.prefix_len() == 32 => {
                let a = u32::from(n.network()) ^ 1;
                (!covered(a)).then_some(a.to_be_bytes())
            }
            _ => None,
        })
        .expect("a dense source");
    let hot_dense = Packet::udp4(dense_src, 40000, HOST, 9999).payload(&[0; 64]).bytes();
    let mut h = Harness::new_with_capacity(policy(), Capacity { block_v4: 1 << 21, ..settings.capacity() });
    let mut loaded = 0;
    let mut out = Vec::new();
    for &size in sizes {
        {
            let mut trie: LpmTrie<_, [u8; 4], u32> =
                LpmTrie::try_from(b.ebpf.map_mut("BENCH_LPM").expect("BENCH_LPM")).expect("LPM");
            for net in &feed[loaded..size] {
                h.sources
                    .write(&KernelChange { net: *net, value: Some(TrieValue::Block), before: None })
                    .expect("block insert");
                if let IpNet::V4(n) = net {
                    trie.insert(&Key::new(u32::from(n.prefix_len()), n.network().octets()), 2, 0).expect("trie insert");
                }
            }
        }
        loaded = size;
        let v4 = || feed[..size].iter().filter_map(|n| if let IpNet::V4(n) = n { Some(*n) } else { None });
        let longer16: std::collections::HashSet<u32> =
            v4().filter(|n| n.prefix_len() > 16).map(|n| u32::from(n.network()) >> 16).collect();
        let longer24: std::collections::HashSet<u32> =
            v4().filter(|n| n.prefix_len() > 24).map(|n| u32::from(n.network()) >> 8).collect();
        let mut hot_ns = Vec::new();
        let mut dense_ns = Vec::new();
        let mut trie_hot = Vec::new();
        let mut trie_dense = Vec::new();
        let mut empty = Vec::new();
        for _ in 0..settings.rounds {
            empty.push(b.ns(&hot, settings.repeat));
            hot_ns.push(h.dp.test_run(&hot, settings.repeat).expect("test_run").1.as_nanos() as f64);
            dense_ns.push(h.dp.test_run(&hot_dense, settings.repeat).expect("test_run").1.as_nanos() as f64);
            trie_hot.push(b.program_ns("bench_lpm", &hot, settings.repeat));
            trie_dense.push(b.program_ns("bench_lpm", &hot_dense, settings.repeat));
        }
        let mut rnd = Vec::new();
        let mut rnd_empty = Vec::new();
        for _ in 0..settings.rounds.min(3) {
            rnd_empty.push(spread_empty(b, &random_frames));
            rnd.push(spread_ns(&h, &random_frames));
        }
        out.push(ScalePoint {
            size: size as u64,
            hot: median_spread(&hot_ns),
            hot_dense: Some(median_spread(&dense_ns)),
            trie_hot: Some(median_spread(&trie_hot)),
            trie_dense: Some(median_spread(&trie_dense)),
            random: median_spread(&rnd),
            past_gate: Some(share(&random, |a| longer16.contains(&(a >> 16)))),
            to_hosts: Some(share(&random, |a| longer24.contains(&(a >> 8)))),
            empty_hot: median_spread(&empty).median,
            empty_random: median_spread(&rnd_empty).median,
        });
    }
    let mut reads = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..settings.rounds.min(3) {
        for (v, p) in reads.iter_mut().zip(["bench_sink", "bench_gate_read", "bench_mid_read"]) {
            v.push(random_frames.iter().map(|f| b.program_ns(p, f, 1)).sum::<f64>() / random_frames.len() as f64);
        }
    }
    let [sink, gate, mid] = reads.map(|v| median_spread(&v));
    (out, ColdReads { sink, gate, mid })
}

/// One read at a random source of each IPv4 level's array, alone (`bench_gate_read`,
/// `bench_mid_read`: same sizes as the real maps), over `bench_sink`; each packet run once, as
/// the random-source figures are.
#[derive(Clone, Debug, Serialize)]
pub struct ColdReads {
    pub sink: Stat,
    pub gate: Stat,
    pub mid: Stat,
}

impl ColdReads {
    /// A gate read's own cost (over `bench_sink`), ns.
    pub fn gate_own(&self) -> f64 {
        self.gate.median - self.sink.median
    }

    /// A read of the /24 level's own cost (over `bench_sink`), ns.
    pub fn mid_own(&self) -> f64 {
        self.mid.median - self.sink.median
    }
}

/// Allowed SIP from tracked sources: known sources at random (cache-cold hits) and new ones
/// (the spoofed-source flood: inserts, and evictions once the table is full).
pub struct Tracked {
    pub known: Vec<ScalePoint>,
    pub new: Vec<ScalePoint>,
    pub glue: Glue,
}

#[derive(Clone, Debug, Serialize)]
pub struct Glue {
    /// ns per packet of the real program on a spoofed flood into a full rate table.
    pub program: f64,
    pub empty: f64,
    /// Extra ns of each operation alone (same frames, same table fill).
    pub ops: Vec<(String, f64)>,
    /// program - empty.
    pub program_extra: f64,
    pub ops_sum: f64,
    /// program_extra / ops_sum.
    pub ratio: f64,
}

pub fn tracked(settings: &Settings, b: &mut Baseline) -> Tracked {
    let sizes: &[usize] = match settings.mode {
        super::Mode::Smoke => &[1, 1_000],
        super::Mode::Quick => &[1, 1_000, 10_000, 100_000],
        super::Mode::Full => &[1, 1_000, 10_000, 100_000, 1_000_000],
    };
    let cap = *sizes.last().expect("sizes") as u32;
    let h = Harness::new_with_capacity(policy(), Capacity { rates: cap.max(1024), ..settings.capacity() });
    let samples = if settings.mode == super::Mode::Smoke { 256 } else { 4096 };
    let mut rng = Rng::new(3);
    let mut tracked: Vec<[u8; 4]> = Vec::new();
    let mut known = Vec::new();
    let mut new = Vec::new();
    let mut last_new_frames = Vec::new();
    for &size in sizes {
        while tracked.len() < size {
            let a = rng.addr();
            tracked.push(a);
            h.dp.test_run(&Packet::udp4(a, 40000, HOST, 5060).payload(&[0; 64]).bytes(), 1).expect("prefill");
        }
        let pick: Vec<[u8; 4]> =
            (0..samples).map(|_| tracked[(rng.next_u64() % tracked.len() as u64) as usize]).collect();
        let known_frames = frames_from(&pick, 5060);
        let mut k = Vec::new();
        let mut ke = Vec::new();
        let mut n = Vec::new();
        let mut ne = Vec::new();
        for _ in 0..settings.rounds.min(3) {
            ke.push(spread_empty(b, &known_frames));
            k.push(spread_ns(&h, &known_frames));
            // Fresh sources each round: a spoofed flood never repeats one.
            let fresh: Vec<[u8; 4]> = (0..samples).map(|_| rng.addr()).collect();
            let new_frames = frames_from(&fresh, 5060);
            ne.push(spread_empty(b, &new_frames));
            n.push(spread_ns(&h, &new_frames));
            last_new_frames = new_frames;
        }
        let hot = Packet::udp4(tracked[0], 40000, HOST, 5060).payload(&[0; 64]).bytes();
        let hot_ns = h.dp.test_run(&hot, settings.repeat).expect("test_run").1.as_nanos() as f64;
        known.push(ScalePoint {
            size: size as u64,
            hot: median_spread(&[hot_ns]),
            hot_dense: None,
            trie_hot: None,
            trie_dense: None,
            random: median_spread(&k),
            past_gate: None,
            to_hosts: None,
            empty_hot: b.ns(&hot, settings.repeat),
            empty_random: median_spread(&ke).median,
        });
        new.push(ScalePoint {
            size: size as u64,
            hot: median_spread(&[hot_ns]),
            hot_dense: None,
            trie_hot: None,
            trie_dense: None,
            random: median_spread(&n),
            past_gate: None,
            to_hosts: None,
            empty_hot: b.ns(&hot, settings.repeat),
            empty_random: median_spread(&ne).median,
        });
    }
    let glue = glue(settings, b, &h, cap, &last_new_frames, &mut rng);
    Tracked { known, new, glue }
}

/// The real program on spoofed sources into a full table, next to each operation it performs
/// measured alone on the same frames with the same table fill.
fn glue(settings: &Settings, b: &mut Baseline, h: &Harness, cap: u32, frames: &[Vec<u8>], rng: &mut Rng) -> Glue {
    // Give the single-operation programs the same table state: a rate table filled to the same
    // size.
    {
        let mut rates: HashMap<_, RateKey, RateState> =
            HashMap::try_from(b.ebpf.map_mut("BENCH_RATES").expect("BENCH_RATES")).expect("hash");
        let mut filled = 0;
        while filled < cap.min(1 << 20) {
            let a = rng.addr();
            if rates.insert(RateKey { addr: v4_mapped(a), class: 1 }, RateState::default(), 0).is_ok() {
                filled += 1;
            }
        }
    }
    let rounds = settings.rounds.min(3);
    let mut prog = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..rounds {
        empty.push(spread_empty(b, frames));
        prog.push(spread_ns(h, frames));
    }
    let empty = median_spread(&empty).median;
    let program = median_spread(&prog).median;
    // What the program does for a new source on an open, limited port (xdp-ebpf/src/main.rs,
    // lists.rs, ports.rs, rate.rs, verdict.rs): parse; six array reads (ACTIVE generation,
    // POLICY, the /16 source gate, ACTIVE bans-present, PORTS, CLASSES); a rate-table miss,
    // insert and lookup; one coarse clock read; three per-CPU counter updates (the rate-bucket
    // occupancy stat, the reason counter, the rule counter). No trie walk (the gate answers for
    // a source in a /16 without list entries) and no ban-table lookup (the table is empty).
    let per_op: &[(&str, &str, f64)] = &[
        ("bench_parse", "parse", 1.0),
        ("bench_array", "array reads (x6)", 6.0),
        ("bench_lru", "rate table miss + insert + lookup", 1.0),
        ("bench_clock", "coarse clock", 1.0),
        ("bench_array", "per-CPU counter updates (x3, as array reads)", 3.0),
    ];
    let mut ops = Vec::new();
    for (p, what, times) in per_op {
        // Each operation over its own baseline program (the same source read and result
        // write, without the operation), so that overhead is not counted once per operation.
        let base = super::ops::baseline_of(p);
        let mut v = Vec::new();
        for _ in 0..rounds {
            let t: f64 = frames.iter().map(|f| b.program_ns(p, f, 1)).sum::<f64>() / frames.len() as f64;
            let t0: f64 = frames.iter().map(|f| b.program_ns(base, f, 1)).sum::<f64>() / frames.len() as f64;
            v.push(t - t0);
        }
        ops.push(((*what).to_string(), median_spread(&v).median.max(0.0) * times));
    }
    let ops_sum: f64 = ops.iter().map(|o| o.1).sum();
    let program_extra = program - empty;
    Glue { program, empty, ops, program_extra, ops_sum, ratio: program_extra / ops_sum.max(0.1) }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn neighbouring_seeds_give_different_streams() {
        let first = |seed| Rng::new(seed).next_u64();
        assert_ne!(first(7000), first(7001));
        assert_ne!(first(0), first(1));
        assert_eq!(first(7000), first(7000));
    }
}
