//! Every map of the data plane. Names, capacities and value types come from `common`; the
//! controller overrides capacities at load time.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use common::{
    BanEntry, Budget, CLASSES_ENTRIES, COUNTERS_ENTRIES, Counter, FLOW_PORT_WORDS, FlowKey, FragKey, FragState,
    GENERATIONS, HostBlock, KnownPeer, MAX_CLASSES, MAX_REASONS, MID_WORDS, PORTS_ENTRIES, Pinhole, PinholeKey,
    PolicyConfig, PortRule, RULE_COUNTERS_ENTRIES, RateClass, RateKey, RateState, SipCalls, SipPeer, SipScratch,
    SourceKey, UaMatcher, active, capacity, known, stat,
};

#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(active::COUNT, 0);

#[map]
pub static POLICY: Array<PolicyConfig> = Array::with_max_entries(GENERATIONS, 0);

#[map]
pub static PORTS: Array<PortRule> = Array::with_max_entries(PORTS_ENTRIES, 0);

#[map]
pub static CLASSES: Array<RateClass> = Array::with_max_entries(CLASSES_ENTRIES, 0);

// LPM tries must be created with BPF_F_NO_PREALLOC (kernel requirement), so their capacity costs
// nothing until entries exist.
#[map]
pub static SETS_V4: LpmTrie<[u8; 8], u64> = LpmTrie::with_max_entries(capacity::SETS, BPF_F_NO_PREALLOC);

#[map]
pub static SETS_V6: LpmTrie<[u8; 20], u64> = LpmTrie::with_max_entries(capacity::SETS, BPF_F_NO_PREALLOC);

// One trie per family for both lists: one lookup answers "allowed, blocked or neither". IPv4
// packets are answered by the gate, SOURCES_MID and SOURCES_HOSTS derived from SOURCES_V4.
#[map]
pub static SOURCES_V4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(capacity::ALLOW + capacity::BLOCK_V4, BPF_F_NO_PREALLOC);

#[map]
pub static SOURCES_V6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(capacity::ALLOW + capacity::BLOCK_V6, BPF_F_NO_PREALLOC);

#[map]
pub static SOURCES_GATE: Array<u32> = Array::with_max_entries(65536, 0);

#[map]
pub static SOURCES_MID: Array<u64> = Array::with_max_entries(MID_WORDS, 0);

// Allocated per /24 that holds entries longer than /24 (the controller sizes it like the block
// list); only the bucket array is allocated up front.
#[map]
pub static SOURCES_HOSTS: HashMap<u32, HostBlock> = HashMap::with_max_entries(capacity::BLOCK_V4, BPF_F_NO_PREALLOC);

#[map]
pub static FLOW_PORTS: Array<u64> = Array::with_max_entries(FLOW_PORT_WORDS, 0);

// The kernel-written tables are LRU: when a spoofed-source flood fills them, the least recently
// seen entries go first, which for bans means attackers that stopped.
#[map]
pub static BANS: LruHashMap<SourceKey, BanEntry> = LruHashMap::with_max_entries(capacity::BANS, 0);

#[map]
pub static RATES: LruHashMap<RateKey, RateState> = LruHashMap::with_max_entries(capacity::RATES, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(capacity::FLOWS, 0);

#[map]
pub static FRAGS: LruHashMap<FragKey, FragState> = LruHashMap::with_max_entries(capacity::FRAGS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
pub static CAPTURE: RingBuf = RingBuf::with_byte_size(capacity::CAPTURE_BYTES, 0);

#[map]
pub static CAPTURE_BUDGETS: Array<Budget> = Array::with_max_entries(MAX_REASONS, 0);

#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_ENTRIES, 0);

#[map]
pub static RULE_COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RULE_COUNTERS_ENTRIES, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[map]
pub static SIP_UA: Array<UaMatcher> = Array::with_max_entries(GENERATIONS, 0);

/// Index 0 for the XDP program, 1 for the TC program.
#[map]
pub static SIP_SCRATCH: PerCpuArray<SipScratch> = PerCpuArray::with_max_entries(2, 0);

#[map]
pub static SIP_PEERS: LruHashMap<SourceKey, SipPeer> = LruHashMap::with_max_entries(capacity::SIP_PEERS, 0);

#[map]
pub static KNOWN: LruHashMap<SourceKey, KnownPeer> = LruHashMap::with_max_entries(capacity::KNOWN, 0);

#[map]
pub static KNOWN_FILTER: Array<u64> = Array::with_max_entries(known::FILTER_WORDS, 0);

#[map]
pub static BUDGETS: Array<Budget> = Array::with_max_entries(MAX_CLASSES, 0);

#[map]
pub static BUDGET_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CLASSES, 0);

#[map]
pub static SETS_GATE: Array<u32> = Array::with_max_entries(65536, 0);

#[map]
pub static SIP_CALLS: LruHashMap<SourceKey, SipCalls> = LruHashMap::with_max_entries(capacity::SIP_CALLS, 0);

#[map]
pub static PINHOLES: HashMap<PinholeKey, Pinhole> = HashMap::with_max_entries(capacity::PINHOLES, BPF_F_NO_PREALLOC);

#[map]
pub static SIGNALING: RingBuf = RingBuf::with_byte_size(capacity::SIGNALING_BYTES, 0);

#[map]
pub static SIGNAL_BUDGET: Array<Budget> = Array::with_max_entries(1, 0);

/// One value of zeros (never written), large enough for any table's value: new entries are
/// inserted from it rather than from a zeroed value on the stack, which the 512-byte stack
/// cannot spare in the deeper calls.
#[map]
pub static ZERO: Array<[u64; 16]> = Array::with_max_entries(1, 0);

/// A zeroed `V` to insert (see [`ZERO`]).
#[inline(always)]
pub fn zero<V>() -> Option<&'static V> {
    const { assert!(core::mem::size_of::<V>() <= 128) };
    // SAFETY: a 128-byte map value of zeros, valid as any plain-old-data `V` of at most that
    // size (every boundary type is `#[repr(C)]` integers).
    ZERO.get(0).map(|z| unsafe { &*(z as *const [u64; 16] as *const V) })
}

/// Add one to a `STATS` slot (per CPU, so no atomics).
#[inline(always)]
pub fn bump(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, written only by this CPU while the program runs.
        unsafe { *v += 1 };
    }
}

/// [`bump`], returning this CPU's count after it (0 if the slot is missing).
#[inline(always)]
pub fn bump_count(slot: u32) -> u64 {
    match STATS.get_ptr_mut(slot) {
        // SAFETY: as in `bump`.
        Some(v) => unsafe {
            *v += 1;
            *v
        },
        None => 0,
    }
}
