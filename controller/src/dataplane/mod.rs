//! The data plane handle: load the embedded eBPF object, pin and adopt its maps, flip policy
//! generations, and read and write the kernel tables other than the source lists (which
//! [`crate::sources`] owns once [`Dataplane::take_source_maps`] hands them over). Attaching lives
//! in [`attach`]; test and benchmark hooks behind the `test-hooks` feature in `testing`.
//!
//! Policy generations: `PORTS`, `CLASSES`, `POLICY`, `SIP_UA` and the source-set tries hold two
//! generations. [`Dataplane::apply_policy`] writes the inactive one completely, then flips
//! `ACTIVE` with a single 4-byte store, so no packet ever sees a half-written table; on any error
//! before the flip the running generation is untouched.

mod attach;
mod error;
pub mod migrate;
#[cfg(feature = "test-hooks")]
mod testing;

use std::{
    collections::HashMap as StdHashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{SchedClassifier, Xdp},
};
use common::{
    BanEntry, Budget, COUNTERS_ENTRIES, Counter, FlowKey, FragKey, FragState, GENERATIONS, KnownPeer, MAX_CLASSES,
    PINHOLE_FULL, PORT_PROTOS, PORT_SLOTS, Pinhole, PinholeKey, PolicyConfig, PortRule, RULE_COUNTERS_ENTRIES,
    RateClass, RateKey, RateState, SET_KEY_GENERATION_BITS, SipCalls, SipPeer, SipScratch, SourceKey, UaMatcher,
    active, class_index, counter_index, known, maps, port_index, port_slot, programs, reason, rule_counter_index,
    set_key_v4, set_key_v6, stat, verdict,
};

#[cfg(feature = "test-hooks")]
pub use self::testing::BENCH_OBJECT;
pub use self::{
    attach::{AttachedMode, Attachment, XdpModeChoice},
    error::{DataplaneError, MapOpError, chain},
};
use crate::policy::{Capacity, CompiledPolicy};

/// The eBPF object built by `build.rs`, embedded: one file to deploy.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

const _: () = assert!(COUNTERS_ENTRIES >= verdict::COUNT * reason::COUNT);

/// A reload waits at least this long after the previous flip before writing into the
/// generation that flip retired, so no packet still running against it sees a partial write.
const GENERATION_GRACE: Duration = Duration::from_millis(50);

/// The aya-log ring buffer in the object; pinned with the rest so an adopted program's log lines
/// still reach the new daemon.
const AYA_LOGS: &str = "AYA_LOGS";

type Result<T> = std::result::Result<T, DataplaneError>;

/// Sums of the per-CPU counters: `[verdict][reason]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub by_verdict: [[Counter; reason::COUNT as usize]; verdict::COUNT as usize],
}

impl Counters {
    pub fn get(&self, verdict: u32, reason: u32) -> Counter {
        self.by_verdict[verdict as usize][reason as usize]
    }
}

/// Options for [`Dataplane::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Pin (or adopt) every map under this folder; `None` for throwaway instances (tests).
    pub pin_dir: Option<PathBuf>,
    pub capacity: Capacity,
}

/// The maps of the allow and block lists, handed to [`crate::sources`] which writes them.
pub struct SourceMaps {
    pub v4: LpmTrie<MapData, [u8; 4], u32>,
    pub v6: LpmTrie<MapData, [u8; 16], u32>,
    pub gate: Array<MapData, u32>,
    pub mid: Array<MapData, u64>,
    pub hosts: HashMap<MapData, u32, common::HostBlock>,
}

/// Keys written into `SETS_V4` and `SETS_V6` for one generation.
type SetKeys = (Vec<Key<[u8; 8]>>, Vec<Key<[u8; 20]>>);

/// Everything the controller keeps of the loaded object.
pub struct Dataplane {
    ebpf: Ebpf,
    active: Array<MapData, u32>,
    policy: Array<MapData, PolicyConfig>,
    ports: Array<MapData, PortRule>,
    classes: Array<MapData, RateClass>,
    sets_v4: LpmTrie<MapData, [u8; 8], u64>,
    sets_v6: LpmTrie<MapData, [u8; 20], u64>,
    sources: Option<SourceMaps>,
    bans: HashMap<MapData, SourceKey, BanEntry>,
    rates: HashMap<MapData, RateKey, RateState>,
    flows: HashMap<MapData, FlowKey, u64>,
    #[cfg(feature = "test-hooks")]
    flow_ports: Array<MapData, u64>,
    frags: HashMap<MapData, FragKey, FragState>,
    counters: PerCpuArray<MapData, Counter>,
    rule_counters: PerCpuArray<MapData, Counter>,
    stats: PerCpuArray<MapData, u64>,
    sip_ua: Array<MapData, UaMatcher>,
    sip_peers: HashMap<MapData, SourceKey, SipPeer>,
    known: HashMap<MapData, SourceKey, KnownPeer>,
    known_filter: Array<MapData, u64>,
    budget_drops: PerCpuArray<MapData, u64>,
    budgets: Array<MapData, Budget>,
    sets_gate: Array<MapData, u32>,
    /// What `SETS_GATE` holds.
    sets_gate_mirror: Vec<u32>,
    events: Option<RingBuf<MapData>>,
    capture: Option<RingBuf<MapData>>,
    signaling: Option<RingBuf<MapData>>,
    pinholes: HashMap<MapData, PinholeKey, Pinhole>,
    /// `PINHOLE_FULL` as the controller last wrote it into both generations' config.
    pinholes_full: bool,
    /// What each generation of `PORTS` holds, so a reload writes only what changed.
    shadow_ports: [Vec<PortRule>; GENERATIONS as usize],
    /// Set-trie keys written per generation, to delete them before the generation is reused.
    shadow_sets: [SetKeys; GENERATIONS as usize],
    generation: u32,
    last_flip: Option<Instant>,
    pin_dir: Option<PathBuf>,
    /// True when the maps existed (pinned) before this load.
    pub adopted_maps: bool,
    /// Pinned maps of another layout being taken over: staged and filled, waiting for the
    /// program swap in [`Dataplane::attach`].
    migration: Option<migrate::Migration>,
    /// Names of the maps in the loaded object.
    #[cfg(feature = "test-hooks")]
    map_names: Vec<String>,
}

/// This build's (key, value) sizes of every pinned map: a pinned map of other sizes is migrated.
fn expected_layout() -> StdHashMap<&'static str, (u32, u32)> {
    use std::mem::size_of as s;
    let u = |k: usize, v: usize| (k as u32, v as u32);
    StdHashMap::from([
        (maps::ACTIVE, u(4, s::<u32>())),
        (maps::POLICY, u(4, s::<PolicyConfig>())),
        (maps::PORTS, u(4, s::<PortRule>())),
        (maps::CLASSES, u(4, s::<RateClass>())),
        (maps::SETS_V4, u(4 + 8, 8)),
        (maps::SETS_V6, u(4 + 20, 8)),
        (maps::SOURCES_V4, u(4 + 4, 4)),
        (maps::SOURCES_V6, u(4 + 16, 4)),
        (maps::SOURCES_GATE, u(4, 4)),
        (maps::SOURCES_MID, u(4, 8)),
        (maps::SOURCES_HOSTS, u(4, s::<common::HostBlock>())),
        (maps::FLOW_PORTS, u(4, 8)),
        (maps::BANS, u(16, s::<BanEntry>())),
        (maps::RATES, u(s::<RateKey>(), s::<RateState>())),
        (maps::FLOWS, u(s::<FlowKey>(), 8)),
        (maps::FRAGS, u(s::<FragKey>(), s::<FragState>())),
        (maps::EVENTS, u(0, 0)),
        (maps::CAPTURE, u(0, 0)),
        (maps::CAPTURE_BUDGETS, u(4, s::<Budget>())),
        (maps::COUNTERS, u(4, s::<Counter>())),
        (maps::RULE_COUNTERS, u(4, s::<Counter>())),
        (maps::STATS, u(4, 8)),
        (maps::SIP_UA, u(4, s::<UaMatcher>())),
        (maps::SIP_SCRATCH, u(4, s::<SipScratch>())),
        (maps::SIP_PEERS, u(16, s::<SipPeer>())),
        (maps::KNOWN, u(16, s::<KnownPeer>())),
        (maps::KNOWN_FILTER, u(4, 8)),
        (maps::BUDGETS, u(4, s::<Budget>())),
        (maps::BUDGET_DROPS, u(4, 8)),
        (maps::SETS_GATE, u(4, 4)),
        (maps::SIP_CALLS, u(16, s::<SipCalls>())),
        (maps::ZERO, u(4, 128)),
        (maps::PINHOLES, u(s::<PinholeKey>(), s::<Pinhole>())),
        (maps::SIGNALING, u(0, 0)),
        (maps::SIGNAL_BUDGET, u(4, s::<Budget>())),
    ])
}

/// Entries of the maps whose size is fixed by the program (not by `[capacity]`): a pinned map
/// of another size belongs to another layout and is migrated.
fn fixed_entries() -> StdHashMap<&'static str, u32> {
    StdHashMap::from([
        (maps::ACTIVE, active::COUNT),
        (maps::POLICY, GENERATIONS),
        (maps::PORTS, common::PORTS_ENTRIES),
        (maps::CLASSES, common::CLASSES_ENTRIES),
        (maps::FLOW_PORTS, common::FLOW_PORT_WORDS),
        (maps::COUNTERS, COUNTERS_ENTRIES),
        (maps::RULE_COUNTERS, RULE_COUNTERS_ENTRIES),
        (maps::SIP_UA, GENERATIONS),
        (maps::STATS, stat::COUNT),
        (maps::SIP_SCRATCH, 2),
        (maps::KNOWN_FILTER, known::FILTER_WORDS),
        (maps::BUDGETS, MAX_CLASSES),
        (maps::CAPTURE_BUDGETS, common::MAX_REASONS),
        (maps::BUDGET_DROPS, MAX_CLASSES),
        (maps::SETS_GATE, 65536),
        (maps::SOURCES_GATE, 65536),
        (maps::SOURCES_MID, common::MID_WORDS),
        (maps::ZERO, 1),
        (maps::SIGNAL_BUDGET, 1),
    ])
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap { map: name })?;
    Ok(T::try_from(map).map_err(MapOpError::on(name, "open"))?)
}

/// One value of a hash map, `None` if absent.
fn lookup<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, name: &'static str, key: &K) -> Result<Option<V>> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(MapOpError::new(name, "read", e).into()),
    }
}

/// Every entry of a hash map (walks it).
fn walk<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, name: &'static str) -> Result<Vec<(K, V)>> {
    map.iter().map(|r| r.map_err(|e| MapOpError::new(name, "iterate", e).into())).collect()
}

/// The outcome of removing a key from `name`: absent is fine.
fn removed(r: std::result::Result<(), MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(MapOpError::new(name, "remove", e).into()),
    }
}

/// The generation a set-trie key belongs to (its first four bytes, big endian).
fn set_key_generation(data: &[u8]) -> usize {
    (u32::from_be_bytes([data[0], data[1], data[2], data[3]]) & 1) as usize
}

impl Dataplane {
    /// Load the object (maps created or adopted from `pin_dir`) and its programs, through the
    /// verifier. Nothing is attached.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        raise_memlock();
        let mut adopted_maps = false;
        let mut migration = None;
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DataplaneError::Pin { path: dir.clone(), detail: e.to_string() })?;
            adopted_maps = dir.join(maps::ACTIVE).exists();
            migrate::resume_interrupted(dir, attach::attached_maps(dir))?;
            migration = migrate::plan(dir, &expected_layout(), &fixed_entries(), migrate::pinned_version(dir))?;
        }
        let result = Self::load_with(opts, adopted_maps, migration.as_ref());
        match (result, migration) {
            (Ok(mut dp), Some(mut m)) => {
                if let Err(e) = m.carry() {
                    m.abandon();
                    return Err(e);
                }
                dp.migration = Some(m);
                if adopted_maps {
                    dp.read_back()?;
                }
                Ok(dp)
            }
            (Ok(mut dp), None) => {
                if adopted_maps {
                    dp.read_back()?;
                }
                Ok(dp)
            }
            (Err(e), m) => {
                if let Some(m) = m {
                    m.abandon();
                }
                Err(e)
            }
        }
    }

    fn load_with(opts: &LoadOptions, adopted_maps: bool, migration: Option<&migrate::Migration>) -> Result<Self> {
        let caps = &opts.capacity;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::SOURCES_V4, caps.allow.saturating_add(caps.block_v4))
            // One block per /24 holding entries longer than /24: never more than the block
            // list's capacity in any real list, and a power of two keeps the kernel's bucket
            // array at half the size the trie's capacity (allow + block) would round up to.
            .map_max_entries(maps::SOURCES_HOSTS, caps.block_v4.max(caps.allow))
            .map_max_entries(maps::SOURCES_V6, caps.allow.saturating_add(caps.block_v6))
            .map_max_entries(maps::SETS_V4, caps.sets)
            .map_max_entries(maps::SETS_V6, caps.sets)
            .map_max_entries(maps::BANS, caps.bans)
            .map_max_entries(maps::RATES, caps.rates)
            .map_max_entries(maps::FLOWS, caps.flows)
            .map_max_entries(maps::FRAGS, caps.frags)
            .map_max_entries(maps::SIP_PEERS, caps.sip_peers)
            .map_max_entries(maps::KNOWN, caps.known);
        let pin_paths: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                let staged: Vec<&str> = migration.map(|m| m.names().collect()).unwrap_or_default();
                if let Some(m) = migration {
                    std::fs::create_dir_all(m.staging())
                        .map_err(|e| DataplaneError::Pin { path: m.staging(), detail: e.to_string() })?;
                }
                maps::ALL
                    .iter()
                    .chain([AYA_LOGS].iter())
                    .map(|n| {
                        let at = if staged.contains(n) { dir.join(migrate::STAGING) } else { dir.clone() };
                        (*n, at.join(n))
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let prog: &mut Xdp = program_mut(&mut ebpf, programs::INGRESS)?;
        prog.load().map_err(|e| program_error(programs::INGRESS, e))?;
        let prog: &mut SchedClassifier = program_mut(&mut ebpf, programs::EGRESS)?;
        prog.load().map_err(|e| program_error(programs::EGRESS, e))?;

        let dp = Self {
            #[cfg(feature = "test-hooks")]
            map_names: ebpf.maps().map(|(n, _)| n.to_string()).collect(),
            active: take(&mut ebpf, maps::ACTIVE)?,
            policy: take(&mut ebpf, maps::POLICY)?,
            ports: take(&mut ebpf, maps::PORTS)?,
            classes: take(&mut ebpf, maps::CLASSES)?,
            sets_v4: take(&mut ebpf, maps::SETS_V4)?,
            sets_v6: take(&mut ebpf, maps::SETS_V6)?,
            sources: Some(SourceMaps {
                v4: take(&mut ebpf, maps::SOURCES_V4)?,
                v6: take(&mut ebpf, maps::SOURCES_V6)?,
                gate: take(&mut ebpf, maps::SOURCES_GATE)?,
                mid: take(&mut ebpf, maps::SOURCES_MID)?,
                hosts: take(&mut ebpf, maps::SOURCES_HOSTS)?,
            }),
            bans: take(&mut ebpf, maps::BANS)?,
            rates: take(&mut ebpf, maps::RATES)?,
            flows: take(&mut ebpf, maps::FLOWS)?,
            #[cfg(feature = "test-hooks")]
            flow_ports: take(&mut ebpf, maps::FLOW_PORTS)?,
            frags: take(&mut ebpf, maps::FRAGS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            rule_counters: take(&mut ebpf, maps::RULE_COUNTERS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            sip_ua: take(&mut ebpf, maps::SIP_UA)?,
            sip_peers: take(&mut ebpf, maps::SIP_PEERS)?,
            known: take(&mut ebpf, maps::KNOWN)?,
            known_filter: take(&mut ebpf, maps::KNOWN_FILTER)?,
            budget_drops: take(&mut ebpf, maps::BUDGET_DROPS)?,
            budgets: take(&mut ebpf, maps::BUDGETS)?,
            sets_gate: take(&mut ebpf, maps::SETS_GATE)?,
            sets_gate_mirror: vec![0; 65536],
            events: Some(take(&mut ebpf, maps::EVENTS)?),
            capture: Some(take(&mut ebpf, maps::CAPTURE)?),
            signaling: Some(take(&mut ebpf, maps::SIGNALING)?),
            pinholes: take(&mut ebpf, maps::PINHOLES)?,
            pinholes_full: false,
            ebpf,
            shadow_ports: [vec![PortRule::default(); PORT_SLOTS], vec![PortRule::default(); PORT_SLOTS]],
            shadow_sets: Default::default(),
            generation: 0,
            last_flip: None,
            pin_dir: opts.pin_dir.clone(),
            adopted_maps,
            migration: None,
        };
        Ok(dp)
    }

    /// True while pinned maps of another layout wait for the program swap.
    pub fn migrating(&self) -> bool {
        self.migration.is_some()
    }

    /// After the programs were swapped (or attached): finish a migration (second pass, new
    /// maps moved over the old pins) and record this build's layout version.
    fn finish_migration(&mut self) -> Result<()> {
        if let Some(m) = self.migration.take() {
            // Packets the old program was running when the links switched finish within
            // microseconds (RCU); what they wrote is then in the old maps for the second pass.
            std::thread::sleep(Duration::from_millis(20));
            m.finish()?;
            // A ban the old program raised after the first pass came over in the second: the new
            // program must look (the sweep clears the flag again once the table is empty).
            self.active.set(active::BANS_PRESENT, 1, 0).map_err(MapOpError::on(maps::ACTIVE, "write"))?;
        }
        self.active.set(active::LAYOUT, common::LAYOUT_VERSION, 0).map_err(MapOpError::on(maps::ACTIVE, "write"))?;
        Ok(())
    }

    /// The allow/block list maps, once: [`crate::sources`] owns them from then on.
    pub fn take_source_maps(&mut self) -> Option<SourceMaps> {
        self.sources.take()
    }

    /// After adopting pinned maps: learn the active generation and what both generations hold,
    /// so the next reload diffs against the truth.
    fn read_back(&mut self) -> Result<()> {
        self.generation = self.active.get(&active::GENERATION, 0).map_err(MapOpError::on(maps::ACTIVE, "read"))? & 1;
        for generation in 0..GENERATIONS {
            for slot in 0..PORT_PROTOS {
                for port in 0..=u16::MAX {
                    let rule = self
                        .ports
                        .get(&port_index(generation, slot, port), 0)
                        .map_err(MapOpError::on(maps::PORTS, "read"))?;
                    self.shadow_ports[generation as usize][port_slot(slot, port)] = rule;
                }
            }
        }
        for key in self.sets_v4.keys() {
            let key = key.map_err(MapOpError::on(maps::SETS_V4, "iterate"))?;
            self.shadow_sets[set_key_generation(&key.data())].0.push(key);
        }
        for key in self.sets_v6.keys() {
            let key = key.map_err(MapOpError::on(maps::SETS_V6, "iterate"))?;
            self.shadow_sets[set_key_generation(&key.data())].1.push(key);
        }
        Ok(())
    }

    /// The active policy generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Write `compiled` into the inactive generation, then flip to it. The static allow and
    /// block lists are not touched here (see [`crate::sources`]).
    pub fn apply_policy(&mut self, compiled: &CompiledPolicy) -> Result<()> {
        if let Some(flip) = self.last_flip {
            let since = flip.elapsed();
            if since < GENERATION_GRACE {
                std::thread::sleep(GENERATION_GRACE - since);
            }
        }
        let next = self.generation ^ 1;
        let shadow = &mut self.shadow_ports[next as usize];
        for slot in 0..PORT_PROTOS {
            for port in 0..=u16::MAX {
                let i = port_slot(slot, port);
                let want = compiled.ports[i];
                if shadow[i] != want {
                    self.ports
                        .set(port_index(next, slot, port), want, 0)
                        .map_err(MapOpError::on(maps::PORTS, "write"))?;
                    shadow[i] = want;
                }
            }
        }
        for class in 0..MAX_CLASSES {
            self.classes
                .set(class_index(next, class), compiled.classes[class as usize], 0)
                .map_err(MapOpError::on(maps::CLASSES, "write"))?;
        }
        #[expect(clippy::needless_borrows_for_generic_args, reason = "a 64 KiB value: borrowed, not copied")]
        self.sip_ua.set(next, &*compiled.ua.table, 0).map_err(MapOpError::on(maps::SIP_UA, "write"))?;
        // The retired generation's set entries go first: it is inactive, nobody reads them. A
        // key that cannot be removed stays remembered, so the next reload of this generation
        // tries again rather than leaving a stale entry live.
        let (old_v4, old_v6) = std::mem::take(&mut self.shadow_sets[next as usize]);
        let mut left = (Vec::new(), Vec::new());
        let mut failure = None;
        for key in old_v4 {
            if let Err(e) = removed(self.sets_v4.remove(&key), maps::SETS_V4) {
                failure.get_or_insert(e);
                left.0.push(key);
            }
        }
        for key in old_v6 {
            if let Err(e) = removed(self.sets_v6.remove(&key), maps::SETS_V6) {
                failure.get_or_insert(e);
                left.1.push(key);
            }
        }
        if let Some(e) = failure {
            self.shadow_sets[next as usize] = left;
            return Err(e);
        }
        let bits = SET_KEY_GENERATION_BITS;
        for (net, mask) in &compiled.sets_v4 {
            let key = Key::new(bits + net.prefix_len() as u32, set_key_v4(next, net.network().octets()));
            // Remembered before the write: a failed insert may still have left the key.
            self.shadow_sets[next as usize].0.push(key);
            self.sets_v4.insert(&key, mask, 0).map_err(MapOpError::on(maps::SETS_V4, "write"))?;
        }
        for (net, mask) in &compiled.sets_v6 {
            let key = Key::new(bits + net.prefix_len() as u32, set_key_v6(next, net.network().octets()));
            self.shadow_sets[next as usize].1.push(key);
            self.sets_v6.insert(&key, mask, 0).map_err(MapOpError::on(maps::SETS_V6, "write"))?;
        }
        self.write_sets_gate(next, compiled)?;
        let mut config = compiled.config;
        if self.pinholes_full {
            config.pinhole_flags |= PINHOLE_FULL;
        }
        self.policy.set(next, config, 0).map_err(MapOpError::on(maps::POLICY, "write"))?;
        // The flip: one 4-byte array store.
        self.active.set(active::GENERATION, next, 0).map_err(MapOpError::on(maps::ACTIVE, "flip"))?;
        self.generation = next;
        self.last_flip = Some(Instant::now());
        Ok(())
    }

    /// Give generation `generation`'s bit in `SETS_GATE` to exactly the /16s its IPv4 set entries
    /// overlap (the generation is inactive while this runs).
    fn write_sets_gate(&mut self, generation: u32, compiled: &CompiledPolicy) -> Result<()> {
        let bit = 1u32 << (generation & 1);
        let mut want = vec![false; 65536];
        for (net, _) in &compiled.sets_v4 {
            let first = (u32::from(net.network()) >> 16) as usize;
            let count = if net.prefix_len() >= 16 { 1 } else { 1usize << (16 - net.prefix_len()) };
            want[first..first + count].iter_mut().for_each(|w| *w = true);
        }
        for (g, &w) in want.iter().enumerate() {
            let value = if w { self.sets_gate_mirror[g] | bit } else { self.sets_gate_mirror[g] & !bit };
            if value != self.sets_gate_mirror[g] {
                self.sets_gate.set(g as u32, value, 0).map_err(MapOpError::on(maps::SETS_GATE, "write"))?;
                self.sets_gate_mirror[g] = value;
            }
        }
        Ok(())
    }

    /// Every entry of the known-peer table (walks it).
    pub fn known_peers(&self) -> Result<Vec<(SourceKey, KnownPeer)>> {
        walk(&self.known, maps::KNOWN)
    }

    /// Make `key` a known peer (a restore after a reboot): its entry, then its filter slot.
    pub fn known_insert(&mut self, key: &SourceKey, peer: &KnownPeer) -> Result<()> {
        self.known.insert(key, peer, 0).map_err(MapOpError::on(maps::KNOWN, "insert"))?;
        let (word, byte) = known::filter_slot(key);
        let w = self.known_filter.get(&word, 0).map_err(MapOpError::on(maps::KNOWN_FILTER, "read"))?;
        let w = w | 1u64 << (byte * 8);
        self.known_filter.set(word, w, 0).map_err(MapOpError::on(maps::KNOWN_FILTER, "write"))?;
        Ok(())
    }

    /// Packets each class's unknown budget refused so far (summed over CPUs), by class id.
    pub fn budget_drops(&self) -> Result<Vec<u64>> {
        (0..MAX_CLASSES)
            .map(|c| {
                let v = self.budget_drops.get(&c, 0).map_err(MapOpError::on(maps::BUDGET_DROPS, "read"))?;
                Ok(v.iter().sum())
            })
            .collect()
    }

    /// Insert or replace a ban (and raise the "bans may exist" flag after it).
    pub fn ban_insert(&mut self, key: &SourceKey, entry: &BanEntry) -> Result<()> {
        self.bans.insert(key, entry, 0).map_err(MapOpError::on(maps::BANS, "insert"))?;
        self.active.set(active::BANS_PRESENT, 1, 0).map_err(MapOpError::on(maps::ACTIVE, "write"))?;
        Ok(())
    }

    /// The ban table looks empty to the controller: clear the flag, then look again, so a ban
    /// the program inserted meanwhile (it sets the flag after inserting) is never left
    /// unenforced for longer than this call.
    pub fn clear_bans_present(&mut self) -> Result<()> {
        self.active.set(active::BANS_PRESENT, 0, 0).map_err(MapOpError::on(maps::ACTIVE, "write"))?;
        if self.bans.keys().next().is_some() {
            self.active.set(active::BANS_PRESENT, 1, 0).map_err(MapOpError::on(maps::ACTIVE, "write"))?;
        }
        Ok(())
    }

    /// Remove a ban (absent is fine).
    pub fn ban_remove(&mut self, key: &SourceKey) -> Result<()> {
        removed(self.bans.remove(key), maps::BANS)
    }

    /// One ban, if present.
    pub fn ban_get(&self, key: &SourceKey) -> Result<Option<BanEntry>> {
        lookup(&self.bans, maps::BANS, key)
    }

    /// Every ban in the table (walks it: start-up and tests only).
    pub fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>> {
        walk(&self.bans, maps::BANS)
    }

    /// The live rule of a (protocol slot, port) in the active generation.
    pub fn port_rule(&self, slot: u32, port: u16) -> Result<PortRule> {
        Ok(self.ports.get(&port_index(self.generation, slot, port), 0).map_err(MapOpError::on(maps::PORTS, "read"))?)
    }

    /// The set bits of the active generation's source-set trie for `addr` (longest match).
    pub fn set_mask(&self, addr: std::net::IpAddr) -> Result<u64> {
        let r = match addr {
            std::net::IpAddr::V4(a) => self.sets_v4.get(&Key::new(64, set_key_v4(self.generation, a.octets())), 0),
            std::net::IpAddr::V6(a) => self.sets_v6.get(&Key::new(160, set_key_v6(self.generation, a.octets())), 0),
        };
        match r {
            Ok(m) => Ok(m),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(MapOpError::new(maps::SETS_V4, "read", e).into()),
        }
    }

    /// One known peer, if present.
    pub fn known_get(&self, key: &SourceKey) -> Result<Option<KnownPeer>> {
        lookup(&self.known, maps::KNOWN, key)
    }

    /// One rate bucket, if present.
    pub fn rate_get(&self, key: &RateKey) -> Result<Option<RateState>> {
        lookup(&self.rates, maps::RATES, key)
    }

    /// The shared budget of unknown sources of a class (its theoretical arrival time).
    pub fn budget_get(&self, class: u8) -> Result<Budget> {
        Ok(self.budgets.get(&(class as u32), 0).map_err(MapOpError::on(maps::BUDGETS, "read"))?)
    }

    /// Every tracked rate bucket (walks it: `voipwall top` only).
    pub fn rates(&self) -> Result<Vec<(RateKey, RateState)>> {
        walk(&self.rates, maps::RATES)
    }

    /// Sum the per-CPU verdict/reason counters.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for v in 0..verdict::COUNT {
            for r in 0..reason::COUNT {
                let values =
                    self.counters.get(&counter_index(v, r), 0).map_err(MapOpError::on(maps::COUNTERS, "read"))?;
                let slot = &mut out.by_verdict[v as usize][r as usize];
                for c in values.iter() {
                    slot.packets += c.packets;
                    slot.bytes += c.bytes;
                }
            }
        }
        Ok(out)
    }

    /// Sum the per-CPU counters of rules `0..rules`: `[rule][verdict]`.
    pub fn rule_counters(&self, rules: usize) -> Result<Vec<[Counter; verdict::COUNT as usize]>> {
        let rules = rules.min((RULE_COUNTERS_ENTRIES / verdict::COUNT) as usize);
        let mut out = vec![[Counter::default(); verdict::COUNT as usize]; rules];
        for (rule, slot) in out.iter_mut().enumerate() {
            for v in 0..verdict::COUNT {
                let values = self
                    .rule_counters
                    .get(&rule_counter_index(rule as u32, v), 0)
                    .map_err(MapOpError::on(maps::RULE_COUNTERS, "read"))?;
                for c in values.iter() {
                    slot[v as usize].packets += c.packets;
                    slot[v as usize].bytes += c.bytes;
                }
            }
        }
        Ok(out)
    }

    /// Sums of the per-CPU `STATS` slots (indices in `common::stat`).
    pub fn stats(&self) -> Result<[u64; stat::COUNT as usize]> {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self.stats.get(&(i as u32), 0).map_err(MapOpError::on(maps::STATS, "read"))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// One `stat::*` counter, summed over CPUs.
    pub fn stat(&self, index: u32) -> Result<u64> {
        let values = self.stats.get(&index, 0).map_err(MapOpError::on(maps::STATS, "read"))?;
        Ok(values.iter().sum())
    }

    /// The ban event ring buffer (once; the events service owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The drop-sample ring buffer (`[capture]`), for the daemon's capture task.
    pub fn take_capture(&mut self) -> Option<RingBuf<MapData>> {
        self.capture.take()
    }

    /// The call-signaling ring buffer, for the daemon's pinhole learner.
    pub fn take_signaling(&mut self) -> Option<RingBuf<MapData>> {
        self.signaling.take()
    }

    /// Add or replace a pinhole. `Err` with [`MapError::OutOfBounds`]-like errors when the
    /// table is full (the caller counts it and may set [`Dataplane::set_pinholes_full`]).
    pub fn pinhole_insert(&mut self, key: &PinholeKey, value: &Pinhole) -> Result<()> {
        Ok(self.pinholes.insert(key, value, 0).map_err(MapOpError::on(maps::PINHOLES, "write"))?)
    }

    /// Remove a pinhole (absent is fine).
    pub fn pinhole_remove(&mut self, key: &PinholeKey) -> Result<()> {
        removed(self.pinholes.remove(key), maps::PINHOLES)
    }

    /// One pinhole, if present.
    pub fn pinhole_get(&self, key: &PinholeKey) -> Result<Option<Pinhole>> {
        lookup(&self.pinholes, maps::PINHOLES, key)
    }

    /// Every pinhole in the table.
    pub fn pinholes(&self) -> Result<Vec<(PinholeKey, Pinhole)>> {
        walk(&self.pinholes, maps::PINHOLES)
    }

    /// Whether the controller last told the program the pinhole table is full.
    pub fn pinholes_full(&self) -> bool {
        self.pinholes_full
    }

    /// Tell the program whether the pinhole table is full: ports with `pinhole_full = "limit"`
    /// admit by their rate class meanwhile. Written into both generations' config (a reload
    /// carries it through [`Dataplane::apply_policy`]).
    pub fn set_pinholes_full(&mut self, full: bool) -> Result<()> {
        if self.pinholes_full == full {
            return Ok(());
        }
        for g in 0..GENERATIONS {
            let mut cfg = self.policy.get(&g, 0).map_err(MapOpError::on(maps::POLICY, "read"))?;
            cfg.pinhole_flags = if full { cfg.pinhole_flags | PINHOLE_FULL } else { cfg.pinhole_flags & !PINHOLE_FULL };
            self.policy.set(g, cfg, 0).map_err(MapOpError::on(maps::POLICY, "write"))?;
        }
        self.pinholes_full = full;
        Ok(())
    }

    /// Capacity of a map as created in the kernel (the source lists' maps: see
    /// [`crate::sources::Sources::capacity`]).
    pub fn capacity_of(&self, name: &str) -> Option<u32> {
        let info = match name {
            n if n == maps::SETS_V4 => self.sets_v4.map().info(),
            n if n == maps::SETS_V6 => self.sets_v6.map().info(),
            n if n == maps::BANS => self.bans.map().info(),
            n if n == maps::RATES => self.rates.map().info(),
            n if n == maps::FLOWS => self.flows.map().info(),
            n if n == maps::FRAGS => self.frags.map().info(),
            n if n == maps::PORTS => self.ports.map().info(),
            n if n == maps::SIP_PEERS => self.sip_peers.map().info(),
            n if n == maps::KNOWN => self.known.map().info(),
            _ => return None,
        };
        info.ok().map(|i| i.max_entries())
    }
}

pub(crate) fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(DataplaneError::Program { name, detail: "missing from the object".into() })?;
    p.try_into().map_err(|e: aya::programs::ProgramError| DataplaneError::Program { name, detail: e.to_string() })
}

fn program_error(name: &'static str, e: aya::programs::ProgramError) -> DataplaneError {
    let detail = match &e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            format!("{io_error}\nverifier log:\n{verifier_log}")
        }
        other => other.to_string(),
    };
    DataplaneError::Program { name, detail }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raising it is harmless on newer ones.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer to a local.
    unsafe {
        libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the data plane's expiry times use.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a local timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
