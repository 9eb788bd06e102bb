//! The data plane handle: load the embedded eBPF object, pin and adopt maps and links, attach to
//! an interface, and write map contents. Every other module goes through this one to touch the
//! kernel.
//!
//! Policy generations: `PORTS`, `CLASSES`, `POLICY` and the source-set tries hold two
//! generations. [`Dataplane::apply_policy`] writes the inactive one completely, then flips
//! `ACTIVE` with a single 4-byte store, so no packet ever sees a half-written table; on any error
//! before the flip the running generation is untouched.

use std::{
    collections::HashMap as StdHashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use common::{
    BanEntry, COUNTERS_ENTRIES, Counter, FlowKey, FragKey, FragState, GATE_MORE, GENERATIONS, MAX_CLASSES, PORT_PROTOS,
    PROTO_SLOT_TCP, PROTO_SLOT_UDP, PolicyConfig, PortRule, RULE_COUNTERS_ENTRIES, RateClass, RateKey, RateState,
    SOURCE_ALLOW, SOURCE_BLOCK, SipPeer, SipScratch, SourceKey, UaMatcher, active, class_index, counter_index,
    flow_port_bit, maps, port_index, programs, reason, rule_counter_index, stat, verdict,
};
use ipnet::IpNet;

use crate::{
    lists::KernelChange,
    paths,
    policy::{Capacity, CompiledPolicy},
};

/// The eBPF object built by `build.rs`, embedded: one file to deploy.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// The benchmark programs (`xdp-ebpf/src/bench.rs`): the empty XDP_PASS baseline,
/// single-operation programs and the end-to-end generator.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-bench"));

/// A reload waits at least this long after the previous flip before writing into the
/// generation that flip retired, so no packet still running against it sees a partial write.
const GENERATION_GRACE: Duration = Duration::from_millis(50);

/// The aya-log ring buffer in the object; pinned with the rest so an adopted program's log lines
/// still reach the new daemon.
const AYA_LOGS: &str = "AYA_LOGS";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the eBPF object is empty: this binary was built with AYA_BUILD_SKIP=1")]
    NotBuilt,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel refused program {name}: {detail}")]
    Program { name: &'static str, detail: String },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}: {op} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned map {path} belongs to an incompatible voipwall (key {found_key} / value {found_value} bytes, expected {want_key} / {want_value}); stop that daemon and remove {dir} to start fresh"
    )]
    Incompatible { path: PathBuf, dir: PathBuf, found_key: u32, found_value: u32, want_key: u32, want_value: u32 },
    #[error("attaching to {iface} failed: {detail}")]
    Attach { iface: String, detail: String },
    #[error("pinning under {path} failed: {detail}")]
    Pin { path: PathBuf, detail: String },
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, op, source }
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native if the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// Static list kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Allow,
    Block,
}

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

/// A link kept alive either by its bpffs pin (survives the daemon) or by this process.
enum LinkHandle {
    Pinned(PinnedLink, #[expect(dead_code, reason = "kept for diagnostics")] PathBuf),
    // Held to keep the link attached until dropped.
    Owned(FdLink),
}

/// The program attached to an interface.
pub struct Attachment {
    pub iface: String,
    pub mode: AttachedMode,
    /// Kernel id of the attached XDP program.
    pub program_id: u32,
    /// True when a restarted daemon found the program already attached and kept it.
    pub adopted: bool,
    xdp: Option<LinkHandle>,
    tc: Option<LinkHandle>,
}

/// Everything the controller keeps of the loaded object.
pub struct Dataplane {
    ebpf: Ebpf,
    active: Array<MapData, u32>,
    policy: Array<MapData, PolicyConfig>,
    ports: Array<MapData, PortRule>,
    classes: Array<MapData, RateClass>,
    sets_v4: LpmTrie<MapData, [u8; 8], u64>,
    sets_v6: LpmTrie<MapData, [u8; 20], u64>,
    sources_v4: LpmTrie<MapData, [u8; 4], u32>,
    sources_v6: LpmTrie<MapData, [u8; 16], u32>,
    sources_gate: Array<MapData, u32>,
    gate: Gate,
    bans: HashMap<MapData, SourceKey, BanEntry>,
    rates: HashMap<MapData, RateKey, RateState>,
    flows: HashMap<MapData, FlowKey, u64>,
    flow_ports: Array<MapData, u64>,
    frags: HashMap<MapData, FragKey, FragState>,
    counters: PerCpuArray<MapData, Counter>,
    rule_counters: PerCpuArray<MapData, Counter>,
    stats: PerCpuArray<MapData, u64>,
    sip_ua: Array<MapData, UaMatcher>,
    sip_peers: HashMap<MapData, SourceKey, SipPeer>,
    events: Option<RingBuf<MapData>>,
    /// What each generation of `PORTS` holds, so a reload writes only what changed.
    shadow_ports: [Vec<PortRule>; GENERATIONS as usize],
    /// Set-trie keys written per generation, to delete them before the generation is reused.
    shadow_sets: [(Vec<Key<[u8; 8]>>, Vec<Key<[u8; 20]>>); GENERATIONS as usize],
    generation: u32,
    last_flip: Option<Instant>,
    pin_dir: Option<PathBuf>,
    /// True when the maps existed (pinned) before this load.
    pub adopted_maps: bool,
    /// Names of the maps in the loaded object.
    map_names: Vec<String>,
}

/// Expected (key, value) sizes of every pinned map, to refuse adopting an incompatible layout.
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
        (maps::FLOW_PORTS, u(4, 8)),
        (maps::BANS, u(16, s::<BanEntry>())),
        (maps::RATES, u(s::<RateKey>(), s::<RateState>())),
        (maps::FLOWS, u(s::<FlowKey>(), 8)),
        (maps::FRAGS, u(s::<FragKey>(), s::<FragState>())),
        (maps::EVENTS, u(0, 0)),
        (maps::COUNTERS, u(4, s::<Counter>())),
        (maps::RULE_COUNTERS, u(4, s::<Counter>())),
        (maps::STATS, u(4, 8)),
        (maps::SIP_UA, u(4, s::<UaMatcher>())),
        (maps::SIP_SCRATCH, u(4, s::<SipScratch>())),
        (maps::SIP_PEERS, u(16, s::<SipPeer>())),
    ])
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::MissingMap { map: name })?;
    T::try_from(map).map_err(map_err(name, "open"))
}

/// `BPF_MAP_UPDATE_BATCH` (aya has no wrapper for it): insert `keys[i] -> values[i]` in as few
/// syscalls as the kernel allows. Returns how many pairs are in, and the error that stopped it
/// (for example EINVAL on a kernel whose map type lacks batch updates).
fn update_batch<K: aya::Pod, V: aya::Pod>(map: &MapData, keys: &[K], values: &[V]) -> (usize, Option<std::io::Error>) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    /// The `batch` member of `union bpf_attr`.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    assert_eq!(keys.len(), values.len());
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; `keys` and `values` hold
        // `count` elements of the map's key and value sizes and outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // The kernel reports in `count` how many it processed, also on error.
        done += (attr.count as usize).min(keys.len() - done);
        if r < 0 {
            return (done, Some(std::io::Error::last_os_error()));
        }
    }
    (done, None)
}

fn ipv4_key(net: &ipnet::Ipv4Net) -> Key<[u8; 4]> {
    Key::new(net.prefix_len() as u32, net.network().octets())
}

fn ipv6_key(net: &ipnet::Ipv6Net) -> Key<[u8; 16]> {
    Key::new(net.prefix_len() as u32, net.network().octets())
}

impl Dataplane {
    /// Load the object (maps created or adopted from `pin_dir`) and its programs, through the
    /// verifier. Nothing is attached.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        raise_memlock();
        let caps = &opts.capacity;
        let mut adopted_maps = false;
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| DataplaneError::Pin { path: dir.clone(), detail: e.to_string() })?;
            adopted_maps = dir.join(maps::ACTIVE).exists();
            check_pinned_layout(dir)?;
        }
        let pin_paths: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => maps::ALL.iter().chain([AYA_LOGS].iter()).map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(maps::SOURCES_V4, caps.allow.saturating_add(caps.block_v4))
            .map_max_entries(maps::SOURCES_V6, caps.allow.saturating_add(caps.block_v6))
            .map_max_entries(maps::SETS_V4, caps.sets)
            .map_max_entries(maps::SETS_V6, caps.sets)
            .map_max_entries(maps::BANS, caps.bans)
            .map_max_entries(maps::RATES, caps.rates)
            .map_max_entries(maps::FLOWS, caps.flows)
            .map_max_entries(maps::FRAGS, caps.frags)
            .map_max_entries(maps::SIP_PEERS, caps.sip_peers);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;

        for name in [programs::INGRESS] {
            let prog: &mut Xdp = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, e))?;
        }
        for name in [programs::EGRESS] {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|e| program_error(name, e))?;
        }

        let map_names = ebpf.maps().map(|(n, _)| n.to_string()).collect();
        let mut dp = Self {
            map_names,
            active: take(&mut ebpf, maps::ACTIVE)?,
            policy: take(&mut ebpf, maps::POLICY)?,
            ports: take(&mut ebpf, maps::PORTS)?,
            classes: take(&mut ebpf, maps::CLASSES)?,
            sets_v4: take(&mut ebpf, maps::SETS_V4)?,
            sets_v6: take(&mut ebpf, maps::SETS_V6)?,
            sources_v4: take(&mut ebpf, maps::SOURCES_V4)?,
            sources_v6: take(&mut ebpf, maps::SOURCES_V6)?,
            sources_gate: take(&mut ebpf, maps::SOURCES_GATE)?,
            gate: Gate::default(),
            bans: take(&mut ebpf, maps::BANS)?,
            rates: take(&mut ebpf, maps::RATES)?,
            flows: take(&mut ebpf, maps::FLOWS)?,
            flow_ports: take(&mut ebpf, maps::FLOW_PORTS)?,
            frags: take(&mut ebpf, maps::FRAGS)?,
            counters: take(&mut ebpf, maps::COUNTERS)?,
            rule_counters: take(&mut ebpf, maps::RULE_COUNTERS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            sip_ua: take(&mut ebpf, maps::SIP_UA)?,
            sip_peers: take(&mut ebpf, maps::SIP_PEERS)?,
            events: Some(take(&mut ebpf, maps::EVENTS)?),
            ebpf,
            shadow_ports: [
                vec![PortRule::default(); (PORT_PROTOS as usize) << 16],
                vec![PortRule::default(); (PORT_PROTOS as usize) << 16],
            ],
            shadow_sets: Default::default(),
            generation: 0,
            last_flip: None,
            pin_dir: opts.pin_dir.clone(),
            adopted_maps,
        };
        if adopted_maps {
            dp.read_back()?;
        }
        Ok(dp)
    }

    /// After adopting pinned maps: learn the active generation and what both generations hold,
    /// so the next reload diffs against the truth.
    fn read_back(&mut self) -> Result<()> {
        self.generation = self.active.get(&active::GENERATION, 0).map_err(map_err(maps::ACTIVE, "read"))? & 1;
        for generation in 0..GENERATIONS {
            for slot in 0..PORT_PROTOS {
                for port in 0..=u16::MAX {
                    let rule =
                        self.ports.get(&port_index(generation, slot, port), 0).map_err(map_err(maps::PORTS, "read"))?;
                    self.shadow_ports[generation as usize][((slot as usize) << 16) | port as usize] = rule;
                }
            }
        }
        for key in self.sets_v4.keys() {
            let key = key.map_err(map_err(maps::SETS_V4, "iterate"))?;
            let g = u32::from_be_bytes([key.data()[0], key.data()[1], key.data()[2], key.data()[3]]);
            self.shadow_sets[(g & 1) as usize].0.push(key);
        }
        for key in self.sets_v6.keys() {
            let key = key.map_err(map_err(maps::SETS_V6, "iterate"))?;
            let g = u32::from_be_bytes([key.data()[0], key.data()[1], key.data()[2], key.data()[3]]);
            self.shadow_sets[(g & 1) as usize].1.push(key);
        }
        Ok(())
    }

    /// The active policy generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Write `compiled` into the inactive generation, then flip to it. The static allow and
    /// block lists are not touched here (see `lists`).
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
                let i = ((slot as usize) << 16) | port as usize;
                let want = compiled.ports[i];
                if shadow[i] != want {
                    self.ports.set(port_index(next, slot, port), want, 0).map_err(map_err(maps::PORTS, "write"))?;
                    shadow[i] = want;
                }
            }
        }
        for class in 0..MAX_CLASSES {
            self.classes
                .set(class_index(next, class), compiled.classes[class as usize], 0)
                .map_err(map_err(maps::CLASSES, "write"))?;
        }
        self.sip_ua.set(next, &*compiled.ua.table, 0).map_err(map_err(maps::SIP_UA, "write"))?;
        // The retired generation's set entries go first: it is inactive, nobody reads them.
        let (old_v4, old_v6) = std::mem::take(&mut self.shadow_sets[next as usize]);
        for key in &old_v4 {
            let _ = self.sets_v4.remove(key);
        }
        for key in &old_v6 {
            let _ = self.sets_v6.remove(key);
        }
        let gen_be = next.to_be_bytes();
        let mut new_v4 = Vec::with_capacity(compiled.sets_v4.len());
        for (net, mask) in &compiled.sets_v4 {
            let o = net.network().octets();
            let key = Key::new(
                32 + net.prefix_len() as u32,
                [gen_be[0], gen_be[1], gen_be[2], gen_be[3], o[0], o[1], o[2], o[3]],
            );
            self.sets_v4.insert(&key, mask, 0).map_err(map_err(maps::SETS_V4, "write"))?;
            new_v4.push(key);
        }
        let mut new_v6 = Vec::with_capacity(compiled.sets_v6.len());
        for (net, mask) in &compiled.sets_v6 {
            let mut data = [0u8; 20];
            data[..4].copy_from_slice(&gen_be);
            data[4..].copy_from_slice(&net.network().octets());
            let key = Key::new(32 + net.prefix_len() as u32, data);
            self.sets_v6.insert(&key, mask, 0).map_err(map_err(maps::SETS_V6, "write"))?;
            new_v6.push(key);
        }
        self.shadow_sets[next as usize] = (new_v4, new_v6);
        self.policy.set(next, compiled.config, 0).map_err(map_err(maps::POLICY, "write"))?;
        // The flip: one 4-byte array store.
        self.active.set(active::GENERATION, next, 0).map_err(map_err(maps::ACTIVE, "flip"))?;
        self.generation = next;
        self.last_flip = Some(Instant::now());
        Ok(())
    }

    /// Write one entry of the source tries (the allow and block lists): set or remove, keeping
    /// the IPv4 /16 gate in step. A /16's "more" bit is set before its first entry longer than
    /// /16 enters the trie and cleared after its last one left, so a packet never takes the
    /// gate's answer where the trie holds a longer entry.
    pub fn source_write(&mut self, change: &KernelChange) -> Result<()> {
        let IpNet::V4(n) = change.net else { return self.trie_write(change) };
        let addr = u32::from(n.network());
        if n.prefix_len() > 16 {
            let g = (addr >> 16) as usize;
            match (change.before.is_some(), change.value.is_some()) {
                (false, true) => {
                    self.gate.more[g] += 1;
                    if self.gate.more[g] == 1 {
                        self.gate_write(g)?;
                    }
                    self.trie_write(change)
                }
                (true, false) => {
                    self.trie_write(change)?;
                    self.gate.more[g] = self.gate.more[g].saturating_sub(1);
                    if self.gate.more[g] == 0 {
                        self.gate_write(g)?;
                    }
                    Ok(())
                }
                _ => self.trie_write(change),
            }
        } else {
            self.trie_write(change)?;
            match change.value {
                Some(v) => self.gate.wide.insert((addr, n.prefix_len()), source_value(v)),
                None => self.gate.wide.remove(&(addr, n.prefix_len())),
            };
            let first = (addr >> 16) as usize;
            let count = 1usize << (16 - n.prefix_len());
            for g in first..first + count {
                self.gate_write(g)?;
            }
            Ok(())
        }
    }

    /// Apply `changes` in order, like [`Self::source_write`] one by one, but put runs of new
    /// IPv4 entries into the trie with one `BPF_MAP_UPDATE_BATCH` call per run (a bulk import of
    /// a million CIDRs then costs a few syscalls instead of a million). On error, returns how
    /// many changes are in force (a prefix of `changes`), so the caller can undo exactly those.
    pub fn source_write_all(&mut self, changes: &[KernelChange]) -> std::result::Result<(), (usize, DataplaneError)> {
        const RUN: usize = 1 << 16;
        let new_v4 = |c: &KernelChange| c.before.is_none() && c.value.is_some() && c.net.addr().is_ipv4();
        let mut i = 0;
        while i < changes.len() {
            if !new_v4(&changes[i]) {
                self.source_write(&changes[i]).map_err(|e| (i, e))?;
                i += 1;
                continue;
            }
            let end =
                changes[i..].iter().take(RUN).position(|c| !new_v4(c)).map_or((i + RUN).min(changes.len()), |p| i + p);
            let done = self.insert_run_v4(&changes[i..end]).map_err(|(n, e)| (i + n, e))?;
            debug_assert_eq!(done, end - i);
            i = end;
        }
        Ok(())
    }

    /// New IPv4 entries, batched: raise the gate's "more" bits first, insert, then write the
    /// gate for wide entries (the same order as [`Self::source_write`]).
    fn insert_run_v4(&mut self, run: &[KernelChange]) -> std::result::Result<usize, (usize, DataplaneError)> {
        let nets: Vec<ipnet::Ipv4Net> = run
            .iter()
            .map(|c| match c.net {
                IpNet::V4(n) => n,
                IpNet::V6(_) => unreachable!("IPv4 run"),
            })
            .collect();
        let mut raised = Vec::new();
        for n in &nets {
            if n.prefix_len() > 16 {
                let g = (u32::from(n.network()) >> 16) as usize;
                self.gate.more[g] += 1;
                raised.push(g);
            }
        }
        let mut result = Ok(run.len());
        for &g in &raised {
            if let Err(e) = self.gate_write(g) {
                result = Err((0, e));
                break;
            }
        }
        if result.is_ok() {
            let keys: Vec<Key<[u8; 4]>> = nets.iter().map(ipv4_key).collect();
            let values: Vec<u32> = run.iter().map(|c| source_value(c.value.expect("new entry"))).collect();
            let (inserted, err) = update_batch(self.sources_v4.map(), &keys, &values);
            if let Some(e) = err {
                // Not supported by this kernel (or failed part way): the rest one by one.
                tracing::debug!(error = %e, inserted, "batched insert stopped; inserting the rest one by one");
                for (n, (net, v)) in (inserted..).zip(nets[inserted..].iter().zip(&values[inserted..])) {
                    if let Err(e2) =
                        self.sources_v4.insert(&ipv4_key(net), v, 0).map_err(map_err(maps::SOURCES_V4, "insert"))
                    {
                        result = Err((n, e2));
                        break;
                    }
                }
            }
        }
        let in_force = match result {
            Ok(n) | Err((n, _)) => n,
        };
        // Entries not in force give their gate bits back.
        for n in &nets[in_force..] {
            if n.prefix_len() > 16 {
                let g = (u32::from(n.network()) >> 16) as usize;
                self.gate.more[g] -= 1;
                if self.gate.more[g] == 0 {
                    let _ = self.gate_write(g);
                }
            }
        }
        // Wide entries (/16 and shorter) are answered by the gate itself: write their slots now
        // that the trie holds them. Should that fail, the entries from there on leave the trie
        // again, so that what is reported in force is exactly a prefix of `run`.
        for (k, (n, c)) in nets[..in_force].iter().zip(run).enumerate() {
            if n.prefix_len() > 16 {
                continue;
            }
            let addr = u32::from(n.network());
            self.gate.wide.insert((addr, n.prefix_len()), source_value(c.value.expect("new entry")));
            let first = (addr >> 16) as usize;
            let written = (first..first + (1usize << (16 - n.prefix_len()))).try_for_each(|g| self.gate_write(g));
            if let Err(e) = written {
                for later in &run[k..in_force] {
                    let _ = self.source_write(&KernelChange { net: later.net, value: None, before: later.value });
                }
                return Err((k, e));
            }
        }
        result
    }

    /// Recompute every gate slot from the trie's entries (after adopting pinned maps, whose
    /// gate this process has not built).
    pub fn rebuild_gate(&mut self, entries: &[(IpNet, ListKind)]) -> Result<()> {
        self.gate = Gate::default();
        for (net, kind) in entries {
            if let IpNet::V4(n) = net {
                let addr = u32::from(n.network());
                if n.prefix_len() > 16 {
                    self.gate.more[(addr >> 16) as usize] += 1;
                } else {
                    self.gate.wide.insert((addr, n.prefix_len()), source_value(*kind));
                }
            }
        }
        self.gate.written = vec![u32::MAX; 65536];
        for g in 0..65536 {
            self.gate_write(g)?;
        }
        Ok(())
    }

    /// Write gate slot `g` if its value changed.
    fn gate_write(&mut self, g: usize) -> Result<()> {
        let mut v = self.gate.cover(g as u32);
        if self.gate.more[g] > 0 {
            v |= GATE_MORE;
        }
        if self.gate.written[g] != v {
            self.sources_gate.set(g as u32, v, 0).map_err(map_err(maps::SOURCES_GATE, "write"))?;
            self.gate.written[g] = v;
        }
        Ok(())
    }

    fn trie_write(&mut self, change: &KernelChange) -> Result<()> {
        let value = change.value.map(source_value);
        let r = match (change.net, value) {
            (IpNet::V4(n), Some(v)) => {
                self.sources_v4.insert(&ipv4_key(&n), v, 0).map_err(map_err(maps::SOURCES_V4, "insert"))
            }
            (IpNet::V6(n), Some(v)) => {
                self.sources_v6.insert(&ipv6_key(&n), v, 0).map_err(map_err(maps::SOURCES_V6, "insert"))
            }
            (IpNet::V4(n), None) => self.sources_v4.remove(&ipv4_key(&n)).map_err(map_err(maps::SOURCES_V4, "remove")),
            (IpNet::V6(n), None) => self.sources_v6.remove(&ipv6_key(&n)).map_err(map_err(maps::SOURCES_V6, "remove")),
        };
        match r {
            // Removing what is not there is fine.
            Err(DataplaneError::Map { source: MapError::KeyNotFound, .. }) => Ok(()),
            other => other,
        }
    }

    /// Every entry of the source tries (walks them: startup and tests only).
    pub fn source_entries(&self) -> Result<Vec<(IpNet, ListKind)>> {
        let kind = |v: u32| if v == SOURCE_ALLOW { ListKind::Allow } else { ListKind::Block };
        let mut out = Vec::new();
        for r in self.sources_v4.iter() {
            let (k, v) = r.map_err(map_err(maps::SOURCES_V4, "iterate"))?;
            out.push((IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8).expect("valid prefix"), kind(v)));
        }
        for r in self.sources_v6.iter() {
            let (k, v) = r.map_err(map_err(maps::SOURCES_V6, "iterate"))?;
            out.push((IpNet::new(IpAddr::from(k.data()), k.prefix_len() as u8).expect("valid prefix"), kind(v)));
        }
        Ok(out)
    }

    /// Insert or replace a ban (and raise the "bans may exist" flag after it).
    pub fn ban_insert(&mut self, key: &SourceKey, entry: &BanEntry) -> Result<()> {
        self.bans.insert(key, entry, 0).map_err(map_err(maps::BANS, "insert"))?;
        self.active.set(active::BANS_PRESENT, 1, 0).map_err(map_err(maps::ACTIVE, "write"))
    }

    /// The ban table looks empty to the controller: clear the flag, then look again, so a ban
    /// the program inserted meanwhile (it sets the flag after inserting) is never left
    /// unenforced for longer than this call.
    pub fn clear_bans_present(&mut self) -> Result<()> {
        self.active.set(active::BANS_PRESENT, 0, 0).map_err(map_err(maps::ACTIVE, "write"))?;
        if self.bans.keys().next().is_some() {
            self.active.set(active::BANS_PRESENT, 1, 0).map_err(map_err(maps::ACTIVE, "write"))?;
        }
        Ok(())
    }

    /// Remove a ban (absent is fine).
    pub fn ban_remove(&mut self, key: &SourceKey) -> Result<()> {
        match self.bans.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::BANS, "remove")(e)),
        }
    }

    /// One ban, if present.
    pub fn ban_get(&self, key: &SourceKey) -> Result<Option<BanEntry>> {
        match self.bans.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::BANS, "read")(e)),
        }
    }

    /// A source's SIP authentication counters, if it has any.
    pub fn sip_peer(&self, key: &SourceKey) -> Result<Option<SipPeer>> {
        match self.sip_peers.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(maps::SIP_PEERS, "read")(e)),
        }
    }

    /// Every ban in the table (walks it: startup and tests only).
    pub fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>> {
        self.bans.iter().map(|r| r.map_err(map_err(maps::BANS, "iterate"))).collect()
    }

    /// Every tracked rate bucket (walks it: `voipwall top` only).
    pub fn rates(&self) -> Result<Vec<(RateKey, RateState)>> {
        self.rates.iter().map(|r| r.map_err(map_err(maps::RATES, "iterate"))).collect()
    }

    /// Every recorded outgoing flow (tests and diagnostics).
    pub fn flows(&self) -> Result<Vec<(FlowKey, u64)>> {
        self.flows.iter().map(|r| r.map_err(map_err(maps::FLOWS, "iterate"))).collect()
    }

    /// Record a flow as if the egress program had, port bit included (tests and benchmarks).
    pub fn flow_insert(&mut self, key: &FlowKey, seen_ns: u64) -> Result<()> {
        self.flows.insert(key, seen_ns, 0).map_err(map_err(maps::FLOWS, "insert"))?;
        let slot = if key.proto == 6 { PROTO_SLOT_TCP } else { PROTO_SLOT_UDP };
        let (word, bit) = flow_port_bit(slot, key.local_port);
        let w = self.flow_ports.get(&word, 0).map_err(map_err(maps::FLOW_PORTS, "read"))?;
        self.flow_ports.set(word, w | bit, 0).map_err(map_err(maps::FLOW_PORTS, "write"))
    }

    /// Every remembered first fragment (tests).
    pub fn frags(&self) -> Result<Vec<(FragKey, FragState)>> {
        self.frags.iter().map(|r| r.map_err(map_err(maps::FRAGS, "iterate"))).collect()
    }

    /// Sum the per-CPU verdict/reason counters.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for v in 0..verdict::COUNT {
            for r in 0..reason::COUNT {
                let values = self.counters.get(&counter_index(v, r), 0).map_err(map_err(maps::COUNTERS, "read"))?;
                let slot = &mut out.by_verdict[v as usize][r as usize];
                for c in values.iter() {
                    slot.packets += c.packets;
                    slot.bytes += c.bytes;
                }
            }
        }
        debug_assert!(COUNTERS_ENTRIES >= verdict::COUNT * reason::COUNT);
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
                    .map_err(map_err(maps::RULE_COUNTERS, "read"))?;
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
            let values = self.stats.get(&(i as u32), 0).map_err(map_err(maps::STATS, "read"))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// The ban event ring buffer (once; the events service owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Capacity of a map as created in the kernel.
    pub fn capacity_of(&self, name: &str) -> Option<u32> {
        let info = match name {
            n if n == maps::SOURCES_V4 => self.sources_v4.map().info(),
            n if n == maps::SOURCES_V6 => self.sources_v6.map().info(),
            n if n == maps::SOURCES_GATE => self.sources_gate.map().info(),
            n if n == maps::SETS_V4 => self.sets_v4.map().info(),
            n if n == maps::SETS_V6 => self.sets_v6.map().info(),
            n if n == maps::BANS => self.bans.map().info(),
            n if n == maps::RATES => self.rates.map().info(),
            n if n == maps::FLOWS => self.flows.map().info(),
            n if n == maps::FRAGS => self.frags.map().info(),
            n if n == maps::PORTS => self.ports.map().info(),
            n if n == maps::SIP_PEERS => self.sip_peers.map().info(),
            _ => return None,
        };
        info.ok().map(|i| i.max_entries())
    }

    /// Run the XDP program once per `repeat` on `data` (BPF_PROG_TEST_RUN): the XDP action and
    /// the kernel's average duration per run.
    pub fn test_run(&self, data: &[u8], repeat: u32) -> Result<(u32, Duration)> {
        let prog: &Xdp = program(&self.ebpf, programs::INGRESS)?;
        let mut out = vec![0u8; data.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                repeat: repeat.max(1),
                ..Default::default()
            })
            .map_err(|e| DataplaneError::Program { name: programs::INGRESS, detail: format!("test_run: {e}") })?;
        Ok((r.return_value, r.duration))
    }

    /// Run the TC egress program once on `data`; its return code.
    pub fn test_run_egress(&self, data: &[u8]) -> Result<i32> {
        let prog: &SchedClassifier = program(&self.ebpf, programs::EGRESS)?;
        let mut out = vec![0u8; data.len() + 256];
        let r = prog
            .test_run(TestRunOptions { data_in: Some(data), data_out: Some(&mut out), repeat: 1, ..Default::default() })
            .map_err(|e| DataplaneError::Program { name: programs::EGRESS, detail: format!("test_run: {e}") })?;
        Ok(r.return_value as i32)
    }

    /// Map and program names present in the loaded object (for the object check).
    pub fn object_names(&self) -> (Vec<String>, Vec<String>) {
        (self.map_names.clone(), self.ebpf.programs().map(|(n, _)| n.to_string()).collect())
    }

    /// Attach (or adopt) the XDP program and the TC egress program on `iface`. With a pin
    /// folder, links are pinned there and a later daemon adopts them without a gap;
    /// `remembered` is the mode a previous daemon recorded (bpf_link info does not say it).
    pub fn attach(&mut self, iface: &str, mode: XdpModeChoice, remembered: Option<AttachedMode>) -> Result<Attachment> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        if let Some(dir) = self.pin_dir.clone() {
            let xdp_pin = dir.join(paths::XDP_LINK_PIN);
            let tc_pin = dir.join(paths::TC_LINK_PIN);
            if let Ok(link) = PinnedLink::from_pin(&xdp_pin) {
                // A second handle on the same link, only to read its info; dropping it closes
                // a file descriptor and detaches nothing (the pin holds the link).
                let program_id = FdLink::from(PinnedLink::from_pin(&xdp_pin).map_err(|e| attach_err(e.to_string()))?)
                    .info()
                    .map(|i| i.program_id())
                    .map_err(|e| attach_err(e.to_string()))?;
                let tc = match PinnedLink::from_pin(&tc_pin) {
                    Ok(l) => LinkHandle::Pinned(l, tc_pin),
                    Err(_) => self.attach_tc(iface, Some(&tc_pin))?,
                };
                let mode = remembered.unwrap_or(AttachedMode::Native);
                return Ok(Attachment {
                    iface: iface.to_string(),
                    mode,
                    program_id,
                    adopted: true,
                    xdp: Some(LinkHandle::Pinned(link, xdp_pin)),
                    tc: Some(tc),
                });
            }
            let (xdp, mode, program_id) = self.attach_xdp(iface, mode, Some(&xdp_pin))?;
            let tc = match self.attach_tc(iface, Some(&tc_pin)) {
                Ok(tc) => tc,
                Err(e) => {
                    drop(release(xdp));
                    return Err(e);
                }
            };
            return Ok(Attachment {
                iface: iface.to_string(),
                mode,
                program_id,
                adopted: false,
                xdp: Some(xdp),
                tc: Some(tc),
            });
        }
        let (xdp, mode, program_id) = self.attach_xdp(iface, mode, None)?;
        let tc = self.attach_tc(iface, None)?;
        Ok(Attachment { iface: iface.to_string(), mode, program_id, adopted: false, xdp: Some(xdp), tc: Some(tc) })
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        choice: XdpModeChoice,
        pin: Option<&Path>,
    ) -> Result<(LinkHandle, AttachedMode, u32)> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        let prog: &mut Xdp = program_mut(&mut self.ebpf, programs::INGRESS)?;
        let tries: &[(XdpMode, AttachedMode)] = match choice {
            XdpModeChoice::Native => &[(XdpMode::Driver, AttachedMode::Native)],
            XdpModeChoice::Generic => &[(XdpMode::Skb, AttachedMode::Generic)],
            XdpModeChoice::Auto => &[(XdpMode::Driver, AttachedMode::Native), (XdpMode::Skb, AttachedMode::Generic)],
        };
        let mut last = String::new();
        for &(flags, mode) in tries {
            match prog.attach(iface, flags) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
                    let fd: FdLink = link
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| attach_err(format!("not a bpf_link: {e}")))?;
                    let program_id = fd.info().map(|i| i.program_id()).map_err(|e| attach_err(e.to_string()))?;
                    let handle = match pin {
                        Some(path) => {
                            let pinned = fd
                                .pin(path)
                                .map_err(|e| DataplaneError::Pin { path: path.to_path_buf(), detail: e.to_string() })?;
                            LinkHandle::Pinned(pinned, path.to_path_buf())
                        }
                        None => LinkHandle::Owned(fd),
                    };
                    return Ok((handle, mode, program_id));
                }
                Err(e) => last = format!("{} mode: {e}", mode.as_str()),
            }
        }
        Err(attach_err(last))
    }

    fn attach_tc(&mut self, iface: &str, pin: Option<&Path>) -> Result<LinkHandle> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::EGRESS)?;
        let id = prog.attach(iface, TcAttachType::Egress).map_err(|e| attach_err(format!("tc egress: {e}")))?;
        let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
        let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
            attach_err(format!("tc egress is not a bpf_link (kernel < 6.6?): {e}"))
        })?;
        Ok(match pin {
            Some(path) => {
                let pinned = fd
                    .pin(path)
                    .map_err(|e| DataplaneError::Pin { path: path.to_path_buf(), detail: e.to_string() })?;
                LinkHandle::Pinned(pinned, path.to_path_buf())
            }
            None => LinkHandle::Owned(fd),
        })
    }

    /// Detach: unpin the links (if pinned) and drop them. The maps stay pinned so bans and lists
    /// survive a restart.
    pub fn detach(&mut self, mut attachment: Attachment) {
        if let Some(h) = attachment.xdp.take() {
            drop(release(h));
        }
        if let Some(h) = attachment.tc.take() {
            drop(release(h));
        }
    }
}

impl Attachment {
    /// Keep the pinned links in place when this handle is dropped (`--keep-attached`, or a
    /// crash): the kernel keeps filtering.
    pub fn forget(mut self) {
        if let Some(LinkHandle::Pinned(l, _)) = self.xdp.take() {
            std::mem::forget(l);
        }
        if let Some(LinkHandle::Pinned(l, _)) = self.tc.take() {
            std::mem::forget(l);
        }
    }
}

fn source_value(kind: ListKind) -> u32 {
    match kind {
        ListKind::Allow => SOURCE_ALLOW,
        ListKind::Block => SOURCE_BLOCK,
    }
}

/// The controller's copy of the IPv4 /16 gate: entries longer than /16 per /16, and the
/// entries of /16 or wider, from which each slot's answer is computed.
struct Gate {
    more: Vec<u32>,
    /// (network address, prefix length) -> SOURCE_* value, for prefixes of /16 or wider.
    wide: std::collections::BTreeMap<(u32, u8), u32>,
    /// What each slot holds in the kernel.
    written: Vec<u32>,
}

impl Default for Gate {
    fn default() -> Self {
        Self { more: vec![0; 65536], wide: Default::default(), written: vec![0; 65536] }
    }
}

impl Gate {
    /// The answer of the longest entry of /16 or wider covering /16 number `g`.
    fn cover(&self, g: u32) -> u32 {
        if self.wide.is_empty() {
            return 0;
        }
        let addr = g << 16;
        (0..=16u8)
            .rev()
            .find_map(|len| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                self.wide.get(&(addr & mask, len)).copied()
            })
            .unwrap_or(0)
    }
}

/// Unpin a link (if pinned) and hand back the last handle; dropping it detaches.
fn release(h: LinkHandle) -> Option<FdLink> {
    match h {
        LinkHandle::Pinned(l, _) => l.unpin().ok(),
        LinkHandle::Owned(l) => Some(l),
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(DataplaneError::Program { name, detail: "missing from the object".into() })?;
    p.try_into().map_err(|e: aya::programs::ProgramError| DataplaneError::Program { name, detail: e.to_string() })
}

fn program<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program(name).ok_or(DataplaneError::Program { name, detail: "missing from the object".into() })?;
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

/// Refuse to adopt pinned maps whose key or value size differs from this build's.
fn check_pinned_layout(dir: &Path) -> Result<()> {
    for (name, (key, value)) in expected_layout() {
        let path = dir.join(name);
        if !path.exists() || name == maps::EVENTS {
            continue;
        }
        let Ok(data) = MapData::from_pin(&path) else { continue };
        let Ok(info) = data.info() else { continue };
        if info.key_size() != key || info.value_size() != value {
            return Err(DataplaneError::Incompatible {
                path,
                dir: dir.to_path_buf(),
                found_key: info.key_size(),
                found_value: info.value_size(),
                want_key: key,
                want_value: value,
            });
        }
    }
    Ok(())
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
