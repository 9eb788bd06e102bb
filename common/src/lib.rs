//! Everything the voipwall eBPF programs and the controller must agree on: map and program names,
//! default capacities, flag bits, reason codes, counter indices and every `#[repr(C)]` type that
//! crosses the kernel/user boundary.
//!
//! Rules for this crate:
//! - every boundary type is `#[repr(C)]`, `Copy`, has no implicit padding (explicit `_pad`
//!   fields) and uses integer flags instead of `bool`;
//! - every key field documents its byte order;
//! - the pure arithmetic used on the packet path (token buckets, IPv6 prefix masks, index
//!   computations) lives here so that it is unit tested on the host and used unchanged by the
//!   eBPF program.
#![no_std]

pub mod addr;
pub mod icmp;
pub mod rate;

/// Names of the eBPF programs in the object file.
pub mod programs {
    /// XDP program on the public interface: the whole ingress decision chain.
    pub const INGRESS: &str = "voipwall_xdp";
    /// TC egress classifier: records flows the host opens, so their replies pass.
    pub const EGRESS: &str = "voipwall_tc";
    /// Every program name, in load order.
    pub const ALL: [&str; 2] = [INGRESS, EGRESS];
}

/// Names of the maps in the object file. bpffs refuses dots in pin names; none of these has one.
pub mod maps {
    /// `Array<u32>`, indexed by [`crate::active`]: the active policy generation and the
    /// "bans may exist" flag.
    pub const ACTIVE: &str = "ACTIVE";
    /// `Array<PolicyConfig>`, indexed by generation.
    pub const POLICY: &str = "POLICY";
    /// `Array<PortRule>`, indexed by [`crate::port_index`].
    pub const PORTS: &str = "PORTS";
    /// `Array<RateClass>`, indexed by [`crate::class_index`].
    pub const CLASSES: &str = "CLASSES";
    /// `LpmTrie<[u8; 8], u64>`: generation (u32, big endian) then IPv4 address -> set bitmask.
    pub const SETS_V4: &str = "SETS_V4";
    /// `LpmTrie<[u8; 20], u64>`: generation (u32, big endian) then IPv6 address -> set bitmask.
    pub const SETS_V6: &str = "SETS_V6";
    /// `LpmTrie<[u8; 4], u32>`: the allow and block lists in one trie, IPv4; values
    /// [`crate::SOURCE_ALLOW`], [`crate::SOURCE_BLOCK`] or [`crate::SOURCE_FLEET`]. The record the
    /// controller reads back; packets are answered by `SOURCES_GATE`, `SOURCES_MID` and
    /// `SOURCES_HOSTS`, which the controller derives from it.
    pub const SOURCES_V4: &str = "SOURCES_V4";
    /// `LpmTrie<[u8; 16], u32>`: the same for IPv6.
    pub const SOURCES_V6: &str = "SOURCES_V6";
    /// `Array<u32>`, 65536 entries, one per IPv4 /16: the answer of `SOURCES_V4` for the whole
    /// /16 when no entry longer than /16 lies inside it ([`crate::GATE_MORE`] clear), so most
    /// sources are answered by one array read (DIR-16).
    pub const SOURCES_GATE: &str = "SOURCES_GATE";
    /// `Array<u64>`, [`crate::MID_WORDS`] words of 4-bit slots, one per IPv4 /24 (see
    /// [`crate::mid_slot`]): the /24's answer where the gate says "more" (DIR-24 behind the
    /// gate). Kept exact only for /16s whose gate slot has [`crate::GATE_MORE`].
    pub const SOURCES_MID: &str = "SOURCES_MID";
    /// `HashMap<u32, HostBlock>`: /24 number -> the answers of its 256 addresses from entries
    /// longer than /24, for the /24s whose `SOURCES_MID` slot has [`crate::MID_HOSTS`]. With
    /// the gate and `SOURCES_MID` every IPv4 source is answered in at most three reads.
    pub const SOURCES_HOSTS: &str = "SOURCES_HOSTS";
    /// `Array<u64>`, [`crate::FLOW_PORT_WORDS`] words: one bit per (protocol slot, local port)
    /// the host has opened a flow from, so a closed port skips the flow table otherwise.
    pub const FLOW_PORTS: &str = "FLOW_PORTS";
    /// `LruHashMap<SourceKey, BanEntry>`: dynamic bans with an expiry.
    pub const BANS: &str = "BANS";
    /// `LruHashMap<RateKey, RateState>`: per-source token buckets.
    pub const RATES: &str = "RATES";
    /// `LruHashMap<FlowKey, u64>`: flows the host opened -> last egress packet time.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<FragKey, FragState>`: verdicts of first fragments.
    pub const FRAGS: &str = "FRAGS";
    /// `RingBuf` of [`crate::BanEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// `RingBuf` of [`crate::CaptureRecord`]: samples of dropped packets (`[capture]`).
    pub const CAPTURE: &str = "CAPTURE";
    /// `Array<Budget>`, indexed by reason: the per-second sample budget of each drop reason.
    pub const CAPTURE_BUDGETS: &str = "CAPTURE_BUDGETS";
    /// `PerCpuArray<Counter>`, indexed by [`crate::counter_index`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<Counter>`, indexed by [`crate::rule_counter_index`].
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
    /// `PerCpuArray<u64>`, indexed by [`crate::stat`]: entries the program created, events lost.
    pub const STATS: &str = "STATS";
    /// `Array<UaMatcher>`, indexed by generation: the User-Agent block list compiled to a DFA.
    pub const SIP_UA: &str = "SIP_UA";
    /// `PerCpuArray<SipScratch>`, one entry: the SIP payload window copied out of the packet.
    pub const SIP_SCRATCH: &str = "SIP_SCRATCH";
    /// `LruHashMap<SourceKey, SipPeer>`: per-source authentication counters.
    pub const SIP_PEERS: &str = "SIP_PEERS";
    /// `LruHashMap<SourceKey, KnownPeer>`: sources that proved their address (see
    /// [`crate::known`]), with their own rate state.
    pub const KNOWN: &str = "KNOWN";
    /// `Array<u64>`, [`crate::known::FILTER_WORDS`] words of 8 one-byte slots: a slot is non-zero
    /// when a known peer hashes to it ([`crate::known::filter_slot`]), so an unknown source is
    /// told apart with one array read. Slots are only ever set.
    pub const KNOWN_FILTER: &str = "KNOWN_FILTER";
    /// `Array<Budget>`, indexed by rate class: the shared budget of unknown sources per class.
    pub const BUDGETS: &str = "BUDGETS";
    /// `PerCpuArray<u64>`, indexed by rate class: packets the class's unknown budget refused.
    pub const BUDGET_DROPS: &str = "BUDGET_DROPS";
    /// `Array<u32>`, 65536 entries, one per IPv4 /16: bit `g` set when generation `g`'s source
    /// sets hold an entry overlapping that /16, so unknown sources elsewhere skip the set trie.
    pub const SETS_GATE: &str = "SETS_GATE";
    /// `LruHashMap<SourceKey, SipCalls>`: Call-IDs of requests the host's SIP server sent to a
    /// peer, whose responses prove the peer's address.
    pub const SIP_CALLS: &str = "SIP_CALLS";
    /// `Array<[u64; 16]>`, one entry of zeros the programs insert new entries from.
    pub const ZERO: &str = "ZERO";
    /// `HashMap<PinholeKey, Pinhole>`: media pinholes, (peer address, local port) -> state
    /// (see [`crate::Pinhole`]). Written by the controller, refreshed and latched by the program.
    pub const PINHOLES: &str = "PINHOLES";
    /// `RingBuf` of [`crate::SignalRecord`]: call signaling on the SIP ports (both directions)
    /// for the controller to learn pinholes from, while a rule is in pinhole mode.
    pub const SIGNALING: &str = "SIGNALING";
    /// `Array<Budget>`, one entry: the per-second budget of `SIGNALING` records.
    pub const SIGNAL_BUDGET: &str = "SIGNAL_BUDGET";

    /// Every map name.
    pub const ALL: [&str; 35] = [
        ACTIVE,
        POLICY,
        PORTS,
        CLASSES,
        SETS_V4,
        SETS_V6,
        SOURCES_V4,
        SOURCES_V6,
        SOURCES_GATE,
        SOURCES_MID,
        SOURCES_HOSTS,
        FLOW_PORTS,
        BANS,
        RATES,
        FLOWS,
        FRAGS,
        EVENTS,
        CAPTURE,
        CAPTURE_BUDGETS,
        COUNTERS,
        RULE_COUNTERS,
        STATS,
        SIP_UA,
        SIP_SCRATCH,
        SIP_PEERS,
        KNOWN,
        KNOWN_FILTER,
        BUDGETS,
        BUDGET_DROPS,
        SETS_GATE,
        SIP_CALLS,
        ZERO,
        PINHOLES,
        SIGNALING,
        SIGNAL_BUDGET,
    ];
}

/// Indices of `STATS`: what the program itself adds to its tables, so the controller can report
/// their occupancy without walking them (the LRU tables only fill up: their entries are
/// min(created, capacity)).
pub mod stat {
    /// New (source, class) rate buckets.
    pub const RATES_CREATED: u32 = 0;
    /// New flows recorded by the egress program.
    pub const FLOWS_CREATED: u32 = 1;
    /// First fragments remembered.
    pub const FRAGS_CREATED: u32 = 2;
    /// Ban events that found the ring buffer full.
    pub const EVENTS_LOST: u32 = 3;
    /// SIP 401/407 responses the host sent to a request without credentials (challenges).
    pub const SIP_CHALLENGES: u32 = 4;
    /// Failed SIP authentications: a 401/407 answering a request that carried credentials, or
    /// a 403.
    pub const SIP_AUTH_FAILURES: u32 = 5;
    /// SIP requests that carried Authorization / Proxy-Authorization (answers to challenges).
    pub const SIP_AUTH_ANSWERS: u32 = 6;
    /// New `SIP_PEERS` entries.
    pub const SIP_PEERS_CREATED: u32 = 7;
    /// SIP requests inspected only in part: their first line or headers ran past the inspected
    /// bytes before a User-Agent header turned up (or its value did), and they passed.
    pub const SIP_INCOMPLETE: u32 = 8;
    /// Sources that became known, by proof (`known::PROOF_*` - 1 + this slot).
    pub const KNOWN_LEARNED: u32 = 9;
    /// New `KNOWN` entries.
    pub const KNOWN_CREATED: u32 = 13;
    /// New `SIP_CALLS` entries.
    pub const SIP_CALLS_CREATED: u32 = 14;
    /// Drop samples (`[capture]`) that found the capture ring buffer full.
    pub const CAPTURE_LOST: u32 = 15;
    /// Drop samples written to the capture ring buffer.
    pub const CAPTURED: u32 = 16;
    /// Signaling records (`SIGNALING`) written for the pinhole learner.
    pub const SIGNALS: u32 = 17;
    /// Signaling records lost: the ring buffer was full or the per-second budget spent.
    pub const SIGNALS_LOST: u32 = 18;
    /// Source ports latched by pinholes (the first media packet from a peer).
    pub const PINHOLES_LATCHED: u32 = 19;
    /// Provisional pinholes the egress program opened from the host's own SDP.
    pub const PINHOLES_EARLY: u32 = 20;
    /// Slots of the array.
    pub const COUNT: u32 = 21;
}

/// Slots of `ACTIVE`.
pub mod active {
    /// The active policy generation (0 or 1).
    pub const GENERATION: u32 = 0;
    /// Non-zero while the ban table may hold entries. The program sets it after inserting a ban;
    /// the controller clears it only when its sweep leaves the table empty (and sets it again if
    /// a ban raced in), so with no bans every packet skips the ban-table hash lookup.
    pub const BANS_PRESENT: u32 = 1;
    /// [`crate::LAYOUT_VERSION`] of the controller that last took the pinned maps over (0 in
    /// maps pinned before the layout was versioned).
    pub const LAYOUT: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Version of the pinned map layout: what every map holds and how it is keyed. A controller
/// whose maps differ in shape (key size, value size, or the entries of a fixed-size map) from
/// the pinned ones migrates them (see the controller's `dataplane::migrate`). Rules for
/// changing a map, so that migration stays correct:
/// - a value may grow by fields appended at its end, where zero means "absent" (an older
///   entry is carried over zero-extended; a newer one back only if those bytes are zero);
/// - an array may gain or lose trailing entries;
/// - any other change of meaning (a key, an index formula, a field reordered) gives the map a
///   new name, and this number goes up.
#[cfg(not(feature = "layout-canary"))]
pub const LAYOUT_VERSION: u32 = 2;
/// A build with a changed layout (`BanEntry` grows by 8 bytes, `COUNTERS` by a row) for the
/// upgrade tests.
#[cfg(feature = "layout-canary")]
pub const LAYOUT_VERSION: u32 = 3;

/// The tail of [`BanEntry`]: one byte, or eight more in the layout-canary test build.
#[cfg(not(feature = "layout-canary"))]
pub type BanPad = u8;
#[cfg(feature = "layout-canary")]
pub type BanPad = [u8; 9];

/// Fixed sizes: these shape indices, so they are compile-time constants on both sides.
pub const GENERATIONS: u32 = 2;
/// Rate classes per generation (class 0 means "no limit").
pub const MAX_CLASSES: u32 = 64;
/// Source sets per generation; a set is one bit of a `u64` mask.
pub const MAX_SETS: u32 = 64;
/// Policy rules that get their own counters (rule 0 means "no rule").
pub const MAX_RULES: u32 = 1024;
/// Reason slots reserved in the counter array (see [`reason`]).
pub const MAX_REASONS: u32 = 32;
/// Protocol slots of the port table.
pub const PORT_PROTOS: u32 = 2;
/// Port table slot for TCP.
pub const PROTO_SLOT_TCP: u32 = 0;
/// Port table slot for UDP.
pub const PROTO_SLOT_UDP: u32 = 1;
/// Entries of the port table: generation x protocol x 65536 ports.
pub const PORTS_ENTRIES: u32 = GENERATIONS * PORT_PROTOS * 65536;
/// Entries of the class table.
pub const CLASSES_ENTRIES: u32 = GENERATIONS * MAX_CLASSES;
/// Entries of the counter array.
#[cfg(not(feature = "layout-canary"))]
pub const COUNTERS_ENTRIES: u32 = verdict::COUNT * MAX_REASONS;
/// The layout-canary build has one spare row of counters (a changed fixed-size array).
#[cfg(feature = "layout-canary")]
pub const COUNTERS_ENTRIES: u32 = (verdict::COUNT + 1) * MAX_REASONS;
/// Entries of the per-rule counter array.
pub const RULE_COUNTERS_ENTRIES: u32 = verdict::COUNT * MAX_RULES;
/// Most VLAN tags parsed (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers skipped before the program gives up with `malformed`.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Most non-first fragments accepted for one datagram: 65535 bytes in fragments of at least
/// 1280 - 48 bytes (IPv6 minimum MTU) is 54, IPv4 paths are in practice no smaller.
pub const MAX_FRAGMENTS_PER_DATAGRAM: u16 = 64;

/// Value of a `SOURCES_*` entry: the source is allowed. The controller writes this also for a
/// block entry that a wider allow entry covers, because the allow list is checked first.
pub const SOURCE_ALLOW: u32 = 1;
/// Value of a `SOURCES_*` entry: the source is blocked.
pub const SOURCE_BLOCK: u32 = 2;
/// Value of a `SOURCES_*` entry: the source is blocked by a fleet decision only (not by the
/// policy or the operator's block list).
pub const SOURCE_FLEET: u32 = 3;

/// `SOURCES_GATE` value bits 0-1: the /16's answer (0, [`SOURCE_ALLOW`], [`SOURCE_BLOCK`] or
/// [`SOURCE_FLEET`]);
/// this bit: entries longer than /16 exist inside it, so `SOURCES_MID` must be asked.
pub const GATE_MORE: u32 = 4;
/// Mask of the answer bits of a `SOURCES_GATE` value.
pub const GATE_VALUE: u32 = 3;

/// Words of `SOURCES_MID`: one 4-bit slot per IPv4 /24, 16 slots per word.
pub const MID_WORDS: u32 = 1 << 20;
/// `SOURCES_MID` slot bits 0-1: the /24's answer from entries of /24 or wider ([`GATE_VALUE`]);
/// this bit: entries longer than /24 lie inside it, so `SOURCES_HOSTS` must be asked.
pub const MID_HOSTS: u32 = 4;

/// Word index and bit shift of /24 number `slash24` (the address shifted right by 8) in
/// `SOURCES_MID`.
#[inline(always)]
pub const fn mid_slot(slash24: u32) -> (u32, u32) {
    (slash24 >> 4, (slash24 & 15) * 4)
}

/// One `SOURCES_HOSTS` value: the answers (2 bits each, 0 for "no entry longer than /24
/// covers it") of the 256 addresses of a /24.
pub type HostBlock = [u64; 8];

/// Word index and bit shift of an IPv4 address (as a host-order u32) in its [`HostBlock`].
#[inline(always)]
pub const fn host_slot(addr: u32) -> (usize, u32) {
    (((addr >> 5) & 7) as usize, (addr & 31) * 2)
}

/// The 4-bit `SOURCES_MID` slot of /24 number `slash24` in its word.
#[inline(always)]
pub const fn mid_value(word: u64, slash24: u32) -> u32 {
    (word >> mid_slot(slash24).1) as u32 & 0xf
}

/// The answer (0 for none) of IPv4 address `addr` in its /24's [`HostBlock`].
#[inline(always)]
pub const fn host_value(block: &HostBlock, addr: u32) -> u32 {
    let (word, shift) = host_slot(addr);
    (block[word] >> shift) as u32 & GATE_VALUE
}

/// Words of `FLOW_PORTS`: 2 protocol slots x 65536 ports / 64 bits.
pub const FLOW_PORT_WORDS: u32 = PORT_PROTOS * 65536 / 64;

/// Word and bit of a (protocol slot, local port) in `FLOW_PORTS`.
#[inline(always)]
pub const fn flow_port_bit(proto_slot: u32, port: u16) -> (u32, u64) {
    let i = port_slot(proto_slot, port) as u32;
    (i / 64, 1u64 << (i % 64))
}

/// Default capacities; the controller sets the real ones at load time (`[capacity]` in the
/// policy) with `EbpfLoader::map_max_entries`. They take effect when a map is created, not when
/// a pinned map is adopted.
pub mod capacity {
    /// Allow list entries per family.
    pub const ALLOW: u32 = 65_536;
    /// Block list entries, IPv4 (sized for the 1M-CIDR feeds operators import).
    pub const BLOCK_V4: u32 = 2_097_152;
    /// Block list entries, IPv6.
    pub const BLOCK_V6: u32 = 262_144;
    /// Source set entries per family, both generations together.
    pub const SETS: u32 = 65_536;
    /// Dynamic bans.
    pub const BANS: u32 = 131_072;
    /// Tracked (source, class) rate buckets.
    pub const RATES: u32 = 262_144;
    /// Flows the host opened.
    pub const FLOWS: u32 = 65_536;
    /// Fragmented datagrams in flight.
    pub const FRAGS: u32 = 8_192;
    /// Sources with SIP authentication counters.
    pub const SIP_PEERS: u32 = 65_536;
    /// Known peers (phones, trunks, admins that proved their address).
    pub const KNOWN: u32 = 131_072;
    /// Peers the host's SIP server sent requests to, awaiting responses.
    pub const SIP_CALLS: u32 = 16_384;
    /// Ring buffer bytes for ban events (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// Ring buffer bytes for drop samples: about 650 full-size samples.
    pub const CAPTURE_BYTES: u32 = 1024 * 1024;
    /// Media pinholes: (peer, local port) pairs. A call with one audio stream and RTCP on its
    /// own port needs 4 (two ports, each to the SDP address and the signaling address).
    pub const PINHOLES: u32 = 65_536;
    /// Ring buffer bytes for call signaling records: about 1300 full-size messages.
    pub const SIGNALING_BYTES: u32 = 2 * 1024 * 1024;
}

/// Verdicts, the first dimension of the counter array.
pub mod verdict {
    pub const PASS: u32 = 0;
    pub const DROP: u32 = 1;
    /// A drop that dry-run mode turned into a pass.
    pub const WOULD_DROP: u32 = 2;
    pub const COUNT: u32 = 3;
    /// Metric label values, indexed by verdict.
    pub const NAMES: [&str; COUNT as usize] = ["pass", "drop", "would_drop"];
}

/// Reason codes: why a packet got its verdict. Each outcome of the decision chain has exactly one.
pub mod reason {
    /// Not IPv4/IPv6 (ARP, LLDP...): passes untouched.
    pub const NON_IP: u32 = 0;
    /// Source on the allow list: no further checks.
    pub const ALLOW_LIST: u32 = 1;
    /// Reply to a flow the host opened.
    pub const RETURN_TRAFFIC: u32 = 2;
    /// ICMP/ICMPv6 of a class that passes (errors, ND, echo reply, echo request within limit).
    pub const ICMP: u32 = 3;
    /// Destination port open to this source and within its rate class.
    pub const PORT_OPEN: u32 = 4;
    /// A header cut short or inconsistent.
    pub const MALFORMED: u32 = 5;
    /// Source on the static/manual block list.
    pub const BLOCK_LIST: u32 = 6;
    /// Source under an unexpired dynamic ban.
    pub const BANNED: u32 = 7;
    /// ICMP type not needed by a VoIP host.
    pub const ICMP_DENIED: u32 = 8;
    /// ICMP echo request above its per-source limit.
    pub const ICMP_RATE_LIMITED: u32 = 9;
    /// Destination port closed for this protocol.
    pub const PORT_CLOSED: u32 = 10;
    /// Port open only to source sets this source is not in.
    pub const SOURCE_NOT_ALLOWED: u32 = 11;
    /// Above a rate level (police-only levels, and the packet that triggers a ban).
    pub const RATE_LIMITED: u32 = 12;
    /// Non-first fragment without a known first fragment (or too many of them).
    pub const FRAGMENT_ORPHAN: u32 = 13;
    /// IP protocol other than TCP, UDP, ICMP, ICMPv6.
    pub const PROTOCOL_CLOSED: u32 = 14;
    /// A SIP request whose User-Agent matches the block list.
    pub const SIP_USER_AGENT: u32 = 15;
    /// A SIP request above its method's per-source rate (`[sip.methods]`).
    pub const SIP_METHOD_RATE_LIMITED: u32 = 16;
    /// A SIP request written so that it cannot be inspected within the program's bounds: more
    /// than `sip::BLANKS_MAX` blanks before a header's colon or after the request line, or a
    /// User-Agent value longer than `sip::UA_VALUE_MAX` bytes that the block list did not match.
    pub const SIP_EVASION: u32 = 17;
    /// An unknown source (one that never proved its address) above its rate class's shared
    /// budget for unknown sources.
    pub const UNKNOWN_OVER_BUDGET: u32 = 18;
    /// Source blocked by a fleet decision (a CrowdSec decision pulled from the Local API).
    pub const FLEET_BLOCK: u32 = 19;
    /// Media to a port in pinhole mode from a peer of a live call (a pass).
    pub const PINHOLE: u32 = 20;
    /// Media to a port in pinhole mode with no live pinhole for its source.
    pub const PINHOLE_CLOSED: u32 = 21;

    /// Number of reasons in use (the rest of [`crate::MAX_REASONS`] is reserved).
    pub const COUNT: u32 = 22;
    const _: () = assert!(COUNT <= crate::MAX_REASONS);

    /// Metric label values, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "non_ip",
        "allow_list",
        "return_traffic",
        "icmp",
        "port_open",
        "malformed",
        "block_list",
        "banned",
        "icmp_denied",
        "icmp_rate_limited",
        "port_closed",
        "source_not_allowed",
        "rate_limited",
        "fragment_orphan",
        "protocol_closed",
        "sip_user_agent",
        "sip_method_rate_limited",
        "sip_evasion",
        "unknown_over_budget",
        "fleet_block",
        "pinhole",
        "pinhole_closed",
    ];

    /// Reasons that pass, one bit each.
    const PASSING: u32 =
        1 << NON_IP | 1 << ALLOW_LIST | 1 << RETURN_TRAFFIC | 1 << ICMP | 1 << PORT_OPEN | 1 << PINHOLE;

    /// The verdict a reason stands for when enforcing (dry run turns drops into would-drops).
    pub const fn is_drop(reason: u32) -> bool {
        reason >= 32 || PASSING & (1 << reason) == 0
    }

    /// Reason code from its label, for tests and tools.
    pub fn from_name(name: &str) -> Option<u32> {
        let mut i = 0;
        while i < NAMES.len() {
            if str_eq(NAMES[i], name) {
                return Some(i as u32);
            }
            i += 1;
        }
        None
    }

    fn str_eq(a: &str, b: &str) -> bool {
        a.len() == b.len() && a.as_bytes() == b.as_bytes()
    }
}

/// Index into `COUNTERS` for a verdict and a reason.
#[inline(always)]
pub const fn counter_index(verdict: u32, reason: u32) -> u32 {
    verdict * MAX_REASONS + reason
}

/// Index into `RULE_COUNTERS` for a rule and a verdict.
#[inline(always)]
pub const fn rule_counter_index(rule: u32, verdict: u32) -> u32 {
    rule * verdict::COUNT + verdict
}

/// (Protocol slot, port) slots of one generation of `PORTS`.
pub const PORT_SLOTS: usize = (PORT_PROTOS as usize) << 16;

/// Index of a (protocol slot, destination port) within one generation of the port table: the
/// layout of `PORTS` per generation, of `FLOW_PORTS` and of the controller's compiled table.
#[inline(always)]
pub const fn port_slot(proto_slot: u32, port: u16) -> usize {
    (((proto_slot & 1) << 16) | port as u32) as usize
}

/// Index into `PORTS`: generation, protocol slot, destination port (host byte order).
#[inline(always)]
pub const fn port_index(generation: u32, proto_slot: u32, port: u16) -> u32 {
    ((generation & 1) << 17) | port_slot(proto_slot, port) as u32
}

/// Leading key bits of `SETS_V4`/`SETS_V6` that hold the generation: a set entry for a /N
/// network has prefix length `SET_KEY_GENERATION_BITS + N`, and a lookup asks for the full key.
pub const SET_KEY_GENERATION_BITS: u32 = 32;

/// Key data of `SETS_V4`: the generation (u32, big endian) then the IPv4 address (network
/// byte order).
#[inline(always)]
pub const fn set_key_v4(generation: u32, addr: [u8; 4]) -> [u8; 8] {
    let g = generation.to_be_bytes();
    [g[0], g[1], g[2], g[3], addr[0], addr[1], addr[2], addr[3]]
}

/// Key data of `SETS_V6`: the generation (u32, big endian) then the IPv6 address (network
/// byte order).
#[inline(always)]
pub const fn set_key_v6(generation: u32, addr: [u8; 16]) -> [u8; 20] {
    let g = generation.to_be_bytes();
    let a = addr;
    [
        g[0], g[1], g[2], g[3], a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13],
        a[14], a[15],
    ]
}

/// Index into `CLASSES`.
#[inline(always)]
pub const fn class_index(generation: u32, class: u32) -> u32 {
    (generation & 1) * MAX_CLASSES + (class % MAX_CLASSES)
}

/// `PolicyConfig::flags`: every drop becomes a pass counted as `would_drop`.
pub const POLICY_DRY_RUN: u32 = 1;

/// Per-generation settings of the data plane (value of `POLICY`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `POLICY_*` bits.
    pub flags: u32,
    /// IPv6 sources are rate limited and banned per prefix of this length (1..=128).
    pub ipv6_prefix: u32,
    /// A flow the host opened accepts replies for this long after its last egress packet.
    pub return_timeout_ns: u64,
    /// A first fragment's verdict is remembered this long.
    pub frag_timeout_ns: u64,
    /// Rate class of ICMP/ICMPv6 echo requests (0 = no limit).
    pub echo_class: u32,
    /// Bytes of a SIP message's payload inspected ([`sip::WINDOW_MAX`] at most; 0 = none).
    pub sip_window: u32,
    /// `SIP_*` bits.
    pub sip_flags: u32,
    /// Rate class per request method ([`sip::METHOD_REGISTER`]...; 0 = no limit).
    pub sip_method_class: [u8; 4],
    /// Failed authentications within `sip_period_ns` that ban (0 = off).
    pub sip_failed_auth: u32,
    /// Unanswered challenges within `sip_period_ns` that ban (0 = off).
    pub sip_unanswered: u32,
    /// Ban time of a User-Agent match (0 = drop the message only).
    pub sip_ua_ban_ns: u64,
    /// Detection period of the authentication counters.
    pub sip_period_ns: u64,
    pub sip_failed_auth_ban_ns: u64,
    pub sip_unanswered_ban_ns: u64,
    /// A known peer stays known this long after its last packet (`options.known_ttl`).
    pub known_ttl_ns: u64,
    /// Drop reasons sampled into `CAPTURE`, one bit per reason (0: capture off).
    pub capture_mask: u32,
    /// `PINHOLE_*` bits.
    pub pinhole_flags: u32,
    /// Samples per second of each reason (a shared budget per reason, `CAPTURE_BUDGETS`).
    pub capture: RateLevel,
}

/// Bytes of a dropped frame a sample keeps (a full Ethernet frame at a 1500-byte MTU, with
/// room for two VLAN tags).
pub const CAPTURE_SNAP: usize = 1528;

/// One record of `CAPTURE`: a sample of a dropped frame and why it dropped.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    /// When it dropped (coarse monotonic clock, ns).
    pub ts_ns: u64,
    pub reason: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// Bytes of it in `data`.
    pub cap_len: u32,
    pub _pad: u32,
    pub data: [u8; CAPTURE_SNAP],
}

/// `PolicyConfig::sip_flags`: the User-Agent block list is not empty.
pub const SIP_UA_BLOCK: u32 = 1;
/// `PolicyConfig::sip_flags`: count authentications (failed-auth or unanswered-challenge bans).
pub const SIP_AUTH_WATCH: u32 = 2;

/// `PolicyConfig::pinhole_flags`: a port is in pinhole mode: the programs copy call signaling
/// into `SIGNALING` for the controller to learn pinholes from.
pub const PINHOLE_LEARN: u32 = 1;
/// `PolicyConfig::pinhole_flags`: the pinhole table is full (the controller could not add a
/// pinhole): ports with [`PORT_PINHOLE_LIMIT`] admit media by their rate class meanwhile.
pub const PINHOLE_FULL: u32 = 2;

/// `PortRule::flags`: the port is open (to the sets in `sets`, or to any source when `sets` is 0).
pub const PORT_OPEN: u8 = 1;
/// `PortRule::flags`: the port carries plaintext SIP (`[sip] ports`): requests to it are
/// inspected, responses from it are read by the egress program.
pub const PORT_SIP: u8 = 2;
/// `PortRule::flags`: media in pinhole mode: a packet passes only from a peer with a live
/// pinhole on this port (or as a reply to a flow the host opened from it).
pub const PORT_PINHOLE: u8 = 4;
/// `PortRule::flags`, with [`PORT_PINHOLE`]: while the pinhole table is full, admit media by
/// the rule's rate class instead of dropping it (`pinhole_full = "limit"`).
pub const PORT_PINHOLE_LIMIT: u8 = 8;

/// Value of `PORTS`: what one destination port of one protocol does in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    /// Policy rule that opened the port, for per-rule counters (0 = none).
    pub rule: u16,
    /// `PORT_*` bits; 0 means closed.
    pub flags: u8,
    /// Rate class (0 = no per-source limit).
    pub class: u8,
    pub _pad: u32,
    /// Source sets allowed, one bit per set (bit n = set id n + 1); 0 = any source.
    pub sets: u64,
}

/// One level of a rate class, in the generic cell rate algorithm's terms (RFC 2697's token
/// bucket expressed as a theoretical arrival time): `emission_ns` = 1e9 / pps, `tolerance_ns` =
/// (burst - 1) * `emission_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLevel {
    /// Nanoseconds of credit one packet costs; 0 disables the level.
    pub emission_ns: u64,
    /// How far ahead of `now` the theoretical arrival time may run (the burst).
    pub tolerance_ns: u64,
    /// Ban time when the level is exceeded; 0 = police only (drop the excess).
    pub ban_ns: u64,
}

/// Value of `CLASSES`: up to two per-source levels (index 0 is "level 1"), and the budget that
/// unknown sources share (`emission_ns` 0: none; its `ban_ns` is unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateClass {
    pub levels: [RateLevel; 2],
    pub unknown: RateLevel,
}

/// Value of `BUDGETS`: the theoretical arrival time of the class's unknown budget (GCRA, as a
/// rate level), shared by every CPU and moved with atomic adds. Padded to a cache line so
/// classes do not share one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    pub tat_ns: u64,
    pub _pad: [u64; 7],
}

/// Value of `KNOWN`: a source that proved its address, and its per-source rate state for up to
/// two rate classes (other classes keep theirs in `RATES`). Spoofed sources never create one,
/// so they cannot evict it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownPeer {
    /// Last packet from the peer, or its last proof (coarse monotonic clock, ns).
    pub seen_ns: u64,
    /// Its first proof.
    pub since_ns: u64,
    /// `known::PROOF_*` of its latest proof.
    pub proof: u8,
    /// Rate classes of `rates` (0: a free slot).
    pub classes: [u8; 2],
    pub _pad: [u8; 5],
    pub rates: [RateState; 2],
}

/// Value of `SIP_CALLS`: hashes of the Call-IDs of the last requests the host's SIP server sent
/// to a peer ([`known::call_id_hash`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipCalls {
    /// When the last one was sent (coarse monotonic clock, ns).
    pub sent_ns: u64,
    pub hashes: [u64; 4],
    /// The slot the next one takes.
    pub next: u32,
    pub _pad: u32,
}

/// Known peers: who counts as known, how the fast filter indexes them, and the Call-ID hash both
/// programs compute.
pub mod known {
    /// In a named source set (`[sets]`): the operator vouches for it.
    pub const PROOF_SET: u8 = 1;
    /// Completed a TCP handshake to an open port: the host sent it an acknowledgement that is
    /// not a SYN-ACK or RST, which the kernel does only on a synchronized connection.
    pub const PROOF_TCP: u8 = 2;
    /// Answered the host's digest challenge and was let in: a 2xx to its REGISTER while it had a
    /// request with credentials outstanding (the nonce went only to its address).
    pub const PROOF_SIP_DIGEST: u8 = 3;
    /// Answered a request the host's SIP server sent: its response carries that request's
    /// Call-ID, which went only to its address.
    pub const PROOF_SIP_RESPONSE: u8 = 4;
    /// Metric and log names, indexed by proof - 1.
    pub const PROOF_NAMES: [&str; 4] = ["set", "tcp", "sip-digest", "sip-response"];

    /// Words of `KNOWN_FILTER` (8 one-byte slots each): 2^22 slots, 4 MiB. With 100 000 known
    /// peers about 2.4% of unknown sources hit a set slot and pay one hash lookup more.
    pub const FILTER_WORDS: u32 = 1 << 19;

    /// Word and byte of a source key in `KNOWN_FILTER`.
    #[inline(always)]
    pub const fn filter_slot(key: &[u8; 16]) -> (u32, u32) {
        let a = u64::from_le_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]]);
        let b = u64::from_le_bytes([key[8], key[9], key[10], key[11], key[12], key[13], key[14], key[15]]);
        let h = (a ^ b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (h >> 42) as u32; // 22 bits
        (slot >> 3, slot & 7)
    }

    /// One step of the Call-ID hash: fold in 8 bytes of the value (little-endian, the last word
    /// zero-padded). The programs hash the value's words in order, starting from
    /// [`CALL_ID_SEED`].
    #[inline(always)]
    pub const fn call_id_step(h: u64, word: u64) -> u64 {
        (h ^ word).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23)
    }

    pub const CALL_ID_SEED: u64 = 0xcbf2_9ce4_8422_2325;
    /// Bytes of a Call-ID value hashed (longer ones are hashed up to here).
    pub const CALL_ID_MAX: u32 = 128;

    /// The hash of a whole Call-ID value (the reference for the programs).
    pub fn call_id_hash(value: &[u8]) -> u64 {
        let v = if value.len() > CALL_ID_MAX as usize { &value[..CALL_ID_MAX as usize] } else { value };
        let mut h = CALL_ID_SEED;
        let mut i = 0;
        while i < v.len() {
            let mut w = [0u8; 8];
            let n = if v.len() - i < 8 { v.len() - i } else { 8 };
            let mut k = 0;
            while k < n {
                w[k] = v[i + k];
                k += 1;
            }
            h = call_id_step(h, u64::from_le_bytes(w));
            i += 8;
        }
        h
    }
}

/// Key of `RATES`: a source (IPv4-mapped, or IPv6 masked to the configured prefix) and a class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// Network byte order, see [`addr`].
    pub addr: [u8; 16],
    /// Rate class, host byte order.
    pub class: u32,
}

/// Value of `RATES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Theoretical arrival time per level (monotonic coarse clock, ns).
    pub tat: [u64; 2],
    /// Start of the current one-second observation window.
    pub window_start_ns: u64,
    /// Packets seen in the current window.
    pub window_packets: u32,
    /// Packets per second measured over the previous window.
    pub last_window_pps: u32,
    /// Dry run: no further would-be-ban event for this source until then.
    pub quiet_until_ns: u64,
}

/// Value of `SIP_UA`: the User-Agent block list as a case-insensitive Aho-Corasick automaton.
/// `next[state * UA_CLASSES + class]` is the next state, with [`sip::UA_MATCH`] set on states that
/// complete a pattern; state 0 is the start, class 0 stands for every byte no pattern holds and
/// class [`sip::UA_BEGIN`] is fed once before the value (so `^`-anchored patterns match only at
/// its start).
///
/// `pairs` is the automaton's prefilter: bit `b` of `pairs[a]` is set when the class pair
/// `(a, b)` is the key pair of some pattern (one pair of consecutive classes every match of the
/// pattern holds, [`sip::UA_BEGIN`] standing before the value's first byte). A value in which no
/// consecutive pair has its bit set matches no pattern, so the program reads such a value with
/// independent loads per byte and runs the automaton (one dependent load per byte) only on a hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UaMatcher {
    /// Byte -> class.
    pub class: [u8; 256],
    pub next: [u16; (sip::UA_STATES * sip::UA_CLASSES) as usize],
    pub pairs: [u64; sip::UA_CLASSES as usize],
}

/// Value of `SIP_SCRATCH`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SipScratch {
    /// The scan's loop state ([`sip::scan`] slots). Kept in map memory, which the verifier does
    /// not track, so every loop iteration starts from the same verifier state and the paths
    /// through one iteration do not multiply across iterations.
    pub scan: [u64; 8],
    /// The payload window, then slack so word loads near its end stay inside the value.
    pub bytes: [u8; sip::SCRATCH_BYTES as usize],
}

/// Value of `SIP_PEERS`: what the host's SIP server told one source (per source key, like bans)
/// within the current detection period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipPeer {
    /// Start of the current detection period (monotonic coarse clock, ns).
    pub period_start_ns: u64,
    /// Dry run: no further would-be-ban event for this source until then.
    pub quiet_until_ns: u64,
    /// Failed authentications this period.
    pub failures: u32,
    /// Challenges (401/407 to a request without credentials) this period.
    pub challenges: u32,
    /// Requests with credentials this period.
    pub answers: u32,
    /// Requests with credentials still waiting for their final response.
    pub pending: u32,
}

/// SIP constants shared by the programs and the controller, and the pure parsing steps the
/// programs use (unit tested here on the host).
pub mod sip {
    pub mod grammar;

    /// Request methods with their own rate class (`PolicyConfig::sip_method_class`).
    pub const METHOD_REGISTER: usize = 0;
    pub const METHOD_INVITE: usize = 1;
    pub const METHOD_OPTIONS: usize = 2;
    /// Every other request method (ACK, BYE, CANCEL, SUBSCRIBE, ...).
    pub const METHOD_OTHER: usize = 3;
    /// `policy [sip.methods]` keys, indexed by method.
    pub const METHOD_NAMES: [&str; 4] = ["REGISTER", "INVITE", "OPTIONS", "other"];

    /// Most payload bytes inspected per message (a full 1500-byte MTU and then some; larger
    /// messages are inspected up to here).
    pub const WINDOW_MAX: u32 = 4096;
    /// Default window: a whole UDP payload at a 1500-byte MTU.
    pub const WINDOW_DEFAULT: u32 = 1472;
    /// Words the request walk searches per loop step (from one base, at constant offsets).
    pub const SCAN_WORDS: u32 = 32;
    /// `SipScratch` size: the window plus slack for 8-byte loads, including the request walk's
    /// search from the window's last word.
    pub const SCRATCH_BYTES: u32 = WINDOW_MAX + 8 * (SCAN_WORDS + 8);
    /// Lines the scan may walk: more than fit in the window (every line is at least two bytes
    /// long, or it is the empty line that ends the headers), so the window, not this, bounds it.
    pub const MAX_LINES: u32 = WINDOW_MAX / 2 + 1;
    /// Bytes of a User-Agent value (as written, folds included) fed to the matcher.
    pub const UA_VALUE_MAX: u32 = grammar::UA_VALUE_MAX as u32;
    /// Blanks accepted before a header's colon and at the end of the request line.
    pub const BLANKS_MAX: u32 = grammar::BLANKS_MAX as u32;
    /// Bytes of the request line looked at.
    pub const REQUEST_LINE_MAX: u32 = grammar::REQUEST_LINE_MAX as u32;
    /// Bytes of the SIP-Version field.
    pub const VERSION_MAX: u32 = grammar::VERSION_MAX as u32;

    /// Automaton states (patterns of up to about this many bytes in total).
    pub const UA_STATES: u32 = 512;
    /// Byte classes: 0 for bytes in no pattern, [`UA_BEGIN`], then one per distinct
    /// (case-folded) pattern byte.
    pub const UA_CLASSES: u32 = 64;
    /// The class fed before the value's first byte.
    pub const UA_BEGIN: u8 = 1;
    /// State bit: a pattern ends here.
    pub const UA_MATCH: u16 = 0x8000;
    /// Mask of the state number.
    pub const UA_STATE_MASK: u16 = (UA_STATES - 1) as u16;

    /// Rate-class ids reserved for the bans the SIP checks issue, so ban events and metrics say
    /// which check fired. Policy classes use the ids below these.
    pub const CLASS_USER_AGENT: u8 = (crate::MAX_CLASSES - 1) as u8;
    pub const CLASS_FAILED_AUTH: u8 = (crate::MAX_CLASSES - 2) as u8;
    pub const CLASS_UNANSWERED: u8 = (crate::MAX_CLASSES - 3) as u8;
    /// Class names of those ids (metric and log labels).
    pub const CLASS_NAMES: [(u8, &str); 3] = [
        (CLASS_USER_AGENT, "sip-user-agent"),
        (CLASS_FAILED_AUTH, "sip-failed-auth"),
        (CLASS_UNANSWERED, "sip-unanswered-challenges"),
    ];
    /// Policy classes get ids below this.
    pub const FIRST_RESERVED_CLASS: u32 = crate::MAX_CLASSES - 3;

    /// Case-fold ASCII letters in 8 bytes at once (other bytes may change too: callers compare
    /// with folded lowercase constants made only of letters and `-`, which fold to themselves;
    /// a byte that folds onto one of those is CR, outside any header name).
    #[inline(always)]
    pub const fn fold8(w: u64) -> u64 {
        w | 0x2020_2020_2020_2020
    }

    /// Lower-case the ASCII letters of 8 bytes at once, leaving every other byte as it is (so a
    /// CR cannot pass for a `-` the way it does under [`fold8`]). For bytes below 0x80,
    /// `b + (0x80 - 'A')` has its top bit set exactly when `b >= 'A'`, and `b + (0x80 - 'Z' - 1)`
    /// exactly when `b > 'Z'`; neither sum carries into the next byte.
    #[inline(always)]
    pub const fn lower8(w: u64) -> u64 {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let h = w & LOW7;
        let ge_a = h + ONES * (0x80 - b'A' as u64);
        let gt_z = h + ONES * (0x80 - b'Z' as u64 - 1);
        let upper = (ge_a ^ gt_z) & !w & (ONES * 0x80);
        w | (upper >> 2)
    }

    /// An 8-byte little-endian word of a literal, folded.
    pub const fn word(s: &[u8; 8]) -> u64 {
        fold8(u64::from_le_bytes(*s))
    }

    pub const W_USER_AGE: u64 = word(b"user-age");
    pub const W_AUTHORIZ: u64 = word(b"authoriz");
    pub const W_PROXY_AU: u64 = word(b"proxy-au");
    pub const W_THORIZAT: u64 = word(b"thorizat");

    /// Bytes of `w` (little-endian) that are `\n`: bit 7 of exactly those bytes set (the
    /// carry-free form of the zero-byte test, so no byte after a newline is flagged by mistake).
    #[inline(always)]
    pub const fn newline_mask(w: u64) -> u64 {
        zero_bytes(w ^ 0x0a0a_0a0a_0a0a_0a0a)
    }

    /// Slots of `SipScratch::scan`.
    pub mod scan {
        /// Index of the aligned 8-byte word being searched.
        pub const WORD: usize = 0;
        /// Newlines of that word not yet handled ([`super::newline_mask`] bits).
        pub const PENDING: usize = 1;
        /// Start of the current line.
        pub const LINE: usize = 2;
        /// Lines finished.
        pub const LINES: usize = 3;
        /// Offset just past the User-Agent header's colon (0 = none seen).
        pub const UA: usize = 4;
        /// `FLAG_*` bits.
        pub const FLAGS: usize = 5;
        /// `FLAGS`: a request carrying credentials (`Authorization`, `Proxy-Authorization`).
        pub const FLAG_CREDENTIALS: u64 = 1;
        /// `FLAGS`: the empty line that ends the headers was seen.
        pub const FLAG_ENDED: u64 = 2;
        /// `FLAGS`: a header the checks read has more blanks before its colon than
        /// [`super::BLANKS_MAX`].
        pub const FLAG_EVASION: u64 = 4;
        /// Matcher position and state.
        pub const AT: usize = 6;
        pub const STATE: usize = 7;
    }

    /// Bytes of `w` that are not SP or HTAB: bit 7 of exactly those bytes set (the carry-free
    /// zero-byte test of [`newline_mask`], for two values).
    #[inline(always)]
    pub const fn non_blank_mask(w: u64) -> u64 {
        const HIGH: u64 = 0x8080_8080_8080_8080;
        !(zero_bytes(w ^ 0x2020_2020_2020_2020) | zero_bytes(w ^ 0x0909_0909_0909_0909)) & HIGH
    }

    /// Bytes of `x` that are 0: bit 7 of exactly those bytes set.
    #[inline(always)]
    pub const fn zero_bytes(x: u64) -> u64 {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
    }

    /// 1 + the index of the lowest byte flagged in a non-zero [`newline_mask`] (the distance
    /// from the word's start to just past the first newline), without a count-trailing-zeros
    /// instruction (BPF has none).
    #[inline(always)]
    pub const fn past_first(mask: u64) -> u64 {
        let low = mask & mask.wrapping_neg();
        (low >> 7).wrapping_mul(0x0102_0304_0506_0708) >> 56
    }

    /// The method class of a request line from its first 9 bytes (little-endian word, then the
    /// ninth byte): the method token compared without case (see [`grammar::method_class`]),
    /// followed by a blank.
    #[inline(always)]
    pub const fn method(first8: u64, ninth: u8) -> usize {
        const SEVEN: u64 = 0x00ff_ffff_ffff_ffff;
        let w = fold8(first8);
        use grammar::is_blank as blank;
        let b7 = (first8 >> 56) as u8;
        if w == word(b"register") && blank(ninth) {
            METHOD_REGISTER
        } else if w & 0x0000_ffff_ffff_ffff == word(b"invite\0\0") & 0x0000_ffff_ffff_ffff
            && blank((first8 >> 48) as u8)
        {
            METHOD_INVITE
        } else if w & SEVEN == word(b"options\0") & SEVEN && blank(b7) {
            METHOD_OPTIONS
        } else {
            METHOD_OTHER
        }
    }

    /// `SIP/` in any case, as a folded little-endian word of 4 bytes.
    pub const W_SIP_SLASH: u32 = u32::from_le_bytes(*b"sip/");

    /// A response status line's first 16 bytes -> the status code: `SIP/` in any case, a
    /// `1*DIGIT "." 1*DIGIT` version, SP, three digits, then SP, CR or LF (RFC 3261 25.1).
    /// Agrees with [`grammar::status_code`] on any 16 bytes.
    #[inline(always)]
    pub const fn status_code(head: &[u8; 16]) -> Option<u16> {
        if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) | 0x0020_2020 != W_SIP_SLASH {
            return None;
        }
        let mut i = 4;
        while i < 16 && head[i].is_ascii_digit() {
            i += 1;
        }
        if i == 4 || i >= 16 || head[i] != b'.' {
            return None;
        }
        i += 1;
        let minor = i;
        while i < 16 && head[i].is_ascii_digit() {
            i += 1;
        }
        if i == minor || i + 4 >= 16 || head[i] != b' ' {
            return None;
        }
        let (a, b, c, after) = (head[i + 1], head[i + 2], head[i + 3], head[i + 4]);
        if !(a >= b'1' && a <= b'6' && b.is_ascii_digit() && c.is_ascii_digit()) {
            return None;
        }
        if !(after == b' ' || after == b'\r' || after == b'\n') {
            return None;
        }
        Some((a - b'0') as u16 * 100 + (b - b'0') as u16 * 10 + (c - b'0') as u16)
    }
}

/// Key of `BANS`: the source as the rate limiter sees it. Network byte order, see [`addr`].
pub type SourceKey = [u8; 16];

/// Value of `BANS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// Monotonic clock (`CLOCK_MONOTONIC`, ns) after which the ban is void.
    pub expires_ns: u64,
    /// Observed packet rate that triggered the ban.
    pub rate_pps: u32,
    /// Rate class that fired.
    pub class: u8,
    /// Level that fired (1 or 2); 0 for bans restored or added by the controller.
    pub level: u8,
    /// `BAN_*` bits.
    pub flags: u8,
    pub _pad: BanPad,
}

/// `BanEntry::flags` / `BanEvent::flags`: the source is IPv6 (key masked to `prefix_len`).
pub const BAN_IPV6: u8 = 1;
/// `BanEvent::flags`: dry run, nothing was inserted.
pub const BAN_DRY_RUN: u8 = 2;

/// One record of the `EVENTS` ring buffer: a source crossed a level with a ban time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEvent {
    /// The ban key, network byte order (IPv4-mapped or masked IPv6).
    pub addr: [u8; 16],
    /// Monotonic clock when the ban was decided.
    pub at_ns: u64,
    /// Monotonic clock when it expires.
    pub expires_ns: u64,
    /// Observed packets per second.
    pub rate_pps: u32,
    pub class: u8,
    /// 1 or 2.
    pub level: u8,
    /// `BAN_*` bits.
    pub flags: u8,
    /// Prefix length of `addr` (32 for IPv4 sources, the IPv6 aggregation prefix otherwise).
    pub prefix_len: u8,
}

/// Key of `FLOWS`: a flow the host opened, seen from the host. Ports in host byte order,
/// addresses in network byte order (IPv4-mapped for IPv4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Key of `PINHOLES`: a peer address (network byte order, IPv4-mapped for IPv4) and a local
/// UDP port (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PinholeKey {
    pub peer: [u8; 16],
    pub local_port: u16,
    pub _pad: [u8; 6],
}

/// Value of `PINHOLES`. Times on the data plane's clock (CLOCK_MONOTONIC, ns). A pinhole is
/// live at `now` while `now <= seen_ns + idle_ns` (when `idle_ns` is not 0) and `now <=
/// until_ns` (when `until_ns` is not 0). The controller opens a learned pinhole with `seen_ns`
/// in the future so that the idle check first measures the set-up allowance (a phone may ring
/// for minutes before media); each admitted packet moves `seen_ns` to `now`. Closing (BYE,
/// CANCEL, a failure) sets `until_ns` to the end of the grace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pinhole {
    pub seen_ns: u64,
    pub until_ns: u64,
    pub idle_ns: u64,
    /// The peer's source port, latched by its first admitted packet (0: not yet).
    pub peer_port: u16,
    /// `PINHOLE_OPEN_*`: how it was opened.
    pub flags: u16,
    pub _pad: u32,
}

impl Pinhole {
    /// Whether the pinhole admits at `now`.
    #[inline(always)]
    pub const fn live(&self, now: u64) -> bool {
        (self.idle_ns == 0 || now <= self.seen_ns.saturating_add(self.idle_ns))
            && (self.until_ns == 0 || now <= self.until_ns)
    }
}

/// `Pinhole::flags`: learned from SDP (the peer's media address).
pub const PINHOLE_OPEN_SDP: u16 = 1;
/// `Pinhole::flags`: learned from the signaling source (the NAT's public address).
pub const PINHOLE_OPEN_SIGNALING: u16 = 2;
/// `Pinhole::flags`: added by `voipwall pinhole add`.
pub const PINHOLE_OPEN_MANUAL: u16 = 4;
/// `Pinhole::flags`: an RTCP port.
pub const PINHOLE_RTCP: u16 = 8;
/// `Pinhole::flags`: closing (its `until_ns` is the end of the grace).
pub const PINHOLE_CLOSING: u16 = 16;

/// The per-second budget of `SIGNALING` records (20 000 a second, bursts of 4000): far above
/// any real call rate (a call is a handful of messages), low enough that a flood of INVITEs
/// cannot make the controller read more than about 30 MB a second.
pub const SIGNAL_RATE: RateLevel = RateLevel { emission_ns: 50_000, tolerance_ns: 3_999 * 50_000, ban_ns: 0 };

/// Bytes of a SIP message a signaling record keeps (a full UDP payload at a 1500-byte MTU).
pub const SIGNAL_SNAP: usize = 1472;

/// `SignalRecord::direction`: a message the host received (XDP).
pub const SIGNAL_IN: u8 = 0;
/// `SignalRecord::direction`: a message the host sent (TC egress).
pub const SIGNAL_OUT: u8 = 1;

/// One record of `SIGNALING`: a SIP message over UDP on a SIP port, with its addresses.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalRecord {
    /// When the program saw it (the data plane's clock, ns).
    pub ts_ns: u64,
    /// Addresses in network byte order (IPv4-mapped for IPv4), ports in host byte order.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// `SIGNAL_IN` or `SIGNAL_OUT`.
    pub direction: u8,
    pub ipv6: u8,
    pub _pad: u16,
    /// The UDP payload's length.
    pub len: u32,
    /// Bytes of it in `data`.
    pub cap_len: u32,
    pub data: [u8; SIGNAL_SNAP],
}

/// Key of `FRAGS`: RFC 791 / RFC 8200 reassembly key. Addresses network byte order, `id` host
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `FRAGS`: what the first fragment got.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragState {
    /// When the first fragment was seen (monotonic coarse clock, ns).
    pub seen_ns: u64,
    /// Reason of the first fragment (which implies its verdict, before dry run); non-first
    /// fragments are counted under it.
    pub reason: u8,
    pub _pad: u8,
    /// Non-first fragments seen so far.
    pub fragments: u16,
    /// Rule of the first fragment.
    pub rule: u16,
    pub _pad2: u16,
}

/// Value of `COUNTERS` and `RULE_COUNTERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type here is `#[repr(C)]`, `Copy`, made only of integers and integer arrays,
    // and has no implicit padding (checked by `no_implicit_padding` below).
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for RateLevel {}
    unsafe impl aya::Pod for RateClass {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for BanEntry {}
    unsafe impl aya::Pod for BanEvent {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragState {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for UaMatcher {}
    unsafe impl aya::Pod for SipScratch {}
    unsafe impl aya::Pod for SipPeer {}
    unsafe impl aya::Pod for Budget {}
    unsafe impl aya::Pod for KnownPeer {}
    unsafe impl aya::Pod for SipCalls {}
    unsafe impl aya::Pod for PinholeKey {}
    unsafe impl aya::Pod for Pinhole {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn mid_and_host_slots_cover_every_bit_once() {
        let mut words = [0u64; 2];
        for slash24 in 0..32u32 {
            let (w, shift) = mid_slot(slash24);
            words[w as usize] |= 0xf << shift;
            assert_eq!(mid_value(0x5 << shift, slash24), 5);
        }
        assert_eq!(words, [u64::MAX; 2]);
        let mut block: HostBlock = [0; 8];
        for addr in 0x0a00_0100..0x0a00_0200u32 {
            let (w, shift) = host_slot(addr);
            assert_eq!(block[w] >> shift & 3, 0, "{addr:#x} shares bits");
            block[w] |= 3 << shift;
            assert_eq!(host_value(&block, addr), 3);
        }
        assert_eq!(block, [u64::MAX; 8]);
    }

    #[test]
    fn no_implicit_padding() {
        // Sum of field sizes == struct size means the compiler inserted no padding.
        assert_eq!(size_of::<PolicyConfig>(), 4 + 4 + 8 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + 5 * 8 + 4 + 4 + 24);
        assert_eq!(size_of::<CaptureRecord>(), 24 + CAPTURE_SNAP);
        assert_eq!(
            size_of::<UaMatcher>(),
            256 + 2 * (sip::UA_STATES * sip::UA_CLASSES) as usize + 8 * sip::UA_CLASSES as usize
        );
        assert_eq!(size_of::<SipScratch>(), 64 + sip::SCRATCH_BYTES as usize);
        assert_eq!(size_of::<SipPeer>(), 8 + 8 + 4 * 4);
        assert_eq!(size_of::<PortRule>(), 2 + 1 + 1 + 4 + 8);
        assert_eq!(size_of::<RateLevel>(), 24);
        assert_eq!(size_of::<RateClass>(), 72);
        assert_eq!(size_of::<Budget>(), 64);
        assert_eq!(size_of::<KnownPeer>(), 8 + 8 + 1 + 2 + 5 + 2 * size_of::<RateState>());
        assert_eq!(size_of::<SipCalls>(), 8 + 32 + 4 + 4);
        assert_eq!(size_of::<RateKey>(), 16 + 4);
        assert_eq!(size_of::<RateState>(), 16 + 8 + 4 + 4 + 8);
        assert_eq!(size_of::<BanEntry>(), 8 + 4 + 3 + size_of::<BanPad>());
        assert_eq!(size_of::<BanEvent>(), 16 + 8 + 8 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<FragKey>(), 16 + 16 + 4 + 1 + 3);
        assert_eq!(size_of::<PinholeKey>(), 16 + 2 + 6);
        assert_eq!(size_of::<Pinhole>(), 8 + 8 + 8 + 2 + 2 + 4);
        assert_eq!(size_of::<SignalRecord>(), 8 + 16 + 16 + 2 + 2 + 1 + 1 + 2 + 4 + 4 + SIGNAL_SNAP);
        assert_eq!(size_of::<FragState>(), 8 + 1 + 1 + 2 + 2 + 2);
        assert_eq!(size_of::<Counter>(), 16);
    }

    #[test]
    fn newline_search_finds_the_first_newline_of_a_word() {
        for len in 1..=8usize {
            for at in 0..len {
                let mut b = [b'x'; 8];
                b[at] = b'\n';
                // Bytes 0x0b (the borrowing zero-byte test's false positive) after it.
                for later in b.iter_mut().skip(at + 1) {
                    *later = 0x0b;
                }
                let m = sip::newline_mask(u64::from_le_bytes(b));
                assert_eq!(m, 0x80 << (8 * at), "exactly one byte flagged: {b:?}");
                assert_eq!(sip::past_first(m), at as u64 + 1, "{b:?}");
            }
        }
        assert_eq!(sip::newline_mask(u64::from_le_bytes(*b"User-Age")), 0);
        assert_eq!(sip::newline_mask(u64::from_le_bytes([0x0b; 8])), 0);
        let all = sip::newline_mask(u64::from_le_bytes([b'\n'; 8]));
        assert_eq!(all, 0x8080_8080_8080_8080);
        assert_eq!(sip::past_first(all), 1);
        // Every byte value: flagged exactly when it is a newline.
        for v in 0..=255u8 {
            let m = sip::newline_mask(u64::from_le_bytes([v, b'\n', v, v, 0x0b, v, 0, v]));
            let want = if v == b'\n' { 0x8080_8080_8080_8080 & !(0x80 << 32) & !(0x80 << 48) } else { 0x80 << 8 };
            assert_eq!(m, want, "byte {v:#x}");
        }
    }

    #[test]
    fn lower8_lowers_letters_and_nothing_else() {
        for v in 0..=255u8 {
            for at in 0..8 {
                let mut bytes = *b"Ab-Z\r9z~";
                let bytes = {
                    let mut b8 = [0u8; 8];
                    b8.copy_from_slice(&bytes[..8]);
                    b8[at] = v;
                    bytes[..8].copy_from_slice(&b8);
                    b8
                };
                let got = sip::lower8(u64::from_le_bytes(bytes)).to_le_bytes();
                let want = bytes.map(|b| b.to_ascii_lowercase());
                assert_eq!(got, want, "byte {v:#x} at {at}");
            }
        }
        assert_ne!(sip::lower8(u64::from_le_bytes(*b"User\rAge")), sip::W_USER_AGE, "CR is not a dash");
        assert_eq!(sip::lower8(u64::from_le_bytes(*b"USER-AGE")), sip::W_USER_AGE);
    }

    #[test]
    fn non_blank_mask_flags_exactly_the_other_bytes() {
        for v in 0..=255u8 {
            for at in 0..8 {
                let mut b = [b' ', b'\t', b' ', b' ', b'\t', b' ', b' ', b' '];
                b[at] = v;
                let m = sip::non_blank_mask(u64::from_le_bytes(b));
                let want = if v == b' ' || v == b'\t' { 0 } else { 0x80u64 << (8 * at) };
                assert_eq!(m, want, "byte {v:#x} at {at}");
            }
        }
    }

    #[test]
    fn header_words_fold_case() {
        let w = |s: &[u8; 8]| sip::fold8(u64::from_le_bytes(*s));
        assert_eq!(w(b"User-Age"), sip::W_USER_AGE);
        assert_eq!(w(b"USER-AGE"), sip::W_USER_AGE);
        assert_eq!(w(b"user-age"), sip::W_USER_AGE);
        assert_eq!(w(b"Authoriz"), sip::W_AUTHORIZ);
        assert_eq!(w(b"PROXY-AU"), sip::W_PROXY_AU);
        assert_ne!(w(b"User-Ag:"), sip::W_USER_AGE);
        assert_ne!(w(b"f: sip:x"), sip::W_USER_AGE);
    }

    #[test]
    fn methods_and_status_codes() {
        let m = |s: &[u8; 9]| sip::method(u64::from_le_bytes(s[..8].try_into().unwrap()), s[8]);
        assert_eq!(m(b"REGISTER "), sip::METHOD_REGISTER);
        assert_eq!(m(b"register\t"), sip::METHOD_REGISTER, "compared without case");
        assert_eq!(m(b"INVITE sx"), sip::METHOD_INVITE);
        assert_eq!(m(b"Invite\tsx"), sip::METHOD_INVITE);
        assert_eq!(m(b"OPTIONS s"), sip::METHOD_OPTIONS);
        assert_eq!(m(b"BYE sip:x"), sip::METHOD_OTHER);
        assert_eq!(m(b"INVITEX s"), sip::METHOD_OTHER);
        assert_eq!(m(b"REGISTERX"), sip::METHOD_OTHER);
        for line in
            [&b"REGISTER "[..], b"register\t", b"INVITE sx", b"OPTIONS s", b"BYE sip:x", b"INVITEX s", b"REGISTERX"]
        {
            let mut nine = [0u8; 9];
            nine.copy_from_slice(line);
            assert_eq!(m(&nine), sip::grammar::method_class(line), "{line:?}: the word form agrees with the grammar");
        }
        let code = |s: &str| {
            let mut h = [0u8; 16];
            let b = s.as_bytes();
            h[..b.len().min(16)].copy_from_slice(&b[..b.len().min(16)]);
            let fast = sip::status_code(&h);
            assert_eq!(fast, sip::grammar::status_code(&h), "{s:?}: the 16-byte form agrees with the grammar");
            fast
        };
        assert_eq!(code("SIP/2.0 401 Unauthorized"), Some(401));
        assert_eq!(code("SIP/2.0 200 OK\r\n\r\n"), Some(200));
        assert_eq!(code("sip/2.0 407 Proxy"), Some(407), "SIP-Version is case-insensitive");
        assert_eq!(code("SIP/3.0 403 Forbidden"), Some(403), "any version");
        assert_eq!(code("SIP/2.0 401\r\n"), Some(401), "an empty reason phrase");
        assert_eq!(code("SIP/2.0 4O7 Proxy Auth"), None);
        assert_eq!(code("SIP/2.0 999 Nope......"), None);
        assert_eq!(code("HTTP/1.1 200 OK......"), None);
        assert_eq!(code("SIP/2.0 4011 Unauthor"), None);
        assert_eq!(code("SIP/2 401 x"), None);
        assert_eq!(code("SIP/123456.789 200 "), None, "past 16 bytes");
    }

    #[test]
    fn reason_names_are_unique_and_round_trip() {
        for (i, name) in reason::NAMES.iter().enumerate() {
            assert_eq!(reason::from_name(name), Some(i as u32), "{name}");
        }
        assert_eq!(reason::from_name("nope"), None);
    }

    #[test]
    fn drop_reasons_are_exactly_the_drop_half() {
        for r in 0..reason::COUNT {
            let name = reason::NAMES[r as usize];
            let pass = matches!(name, "non_ip" | "allow_list" | "return_traffic" | "icmp" | "port_open" | "pinhole");
            assert_eq!(reason::is_drop(r), !pass, "{name}");
        }
    }

    #[test]
    fn indices_stay_in_bounds() {
        assert_eq!(port_index(1, PROTO_SLOT_UDP, u16::MAX), PORTS_ENTRIES - 1);
        assert_eq!(port_index(0, PROTO_SLOT_TCP, 0), 0);
        assert_eq!(port_index(1, PROTO_SLOT_TCP, 5060), 2 * 65536 + 5060);
        assert_eq!(port_slot(PROTO_SLOT_UDP, u16::MAX), PORT_SLOTS - 1);
        assert_eq!(port_index(1, PROTO_SLOT_UDP, 7) as usize, PORT_SLOTS + port_slot(PROTO_SLOT_UDP, 7));
        assert_eq!(flow_port_bit(PROTO_SLOT_UDP, 65), ((65536 + 64) / 64, 2));
        assert_eq!(class_index(1, MAX_CLASSES - 1), CLASSES_ENTRIES - 1);
        assert!(counter_index(verdict::WOULD_DROP, MAX_REASONS - 1) < COUNTERS_ENTRIES);
        assert_eq!(rule_counter_index(MAX_RULES - 1, verdict::WOULD_DROP), RULE_COUNTERS_ENTRIES - 1);
    }

    #[test]
    fn set_keys_put_the_generation_first_in_network_order() {
        assert_eq!(set_key_v4(1, [192, 0, 2, 7]), [0, 0, 0, 1, 192, 0, 2, 7]);
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[15] = 9;
        let k = set_key_v6(0x0102_0304, a);
        assert_eq!(&k[..4], &[1, 2, 3, 4]);
        assert_eq!(&k[4..], &a);
    }

    #[test]
    fn map_names_fit_the_kernel_and_bpffs() {
        for name in maps::ALL.iter().chain(programs::ALL.iter()) {
            // BPF_OBJ_NAME_LEN is 16 including the terminating NUL.
            assert!(name.len() < 16, "{name} is too long for the kernel");
            assert!(!name.contains('.'), "{name}: bpffs refuses dots");
        }
    }
}
