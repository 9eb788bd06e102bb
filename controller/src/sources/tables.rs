//! The kernel side of the source lists: the two source tries (`SOURCES_V4`, `SOURCES_V6`) and,
//! derived from the IPv4 trie, the three levels the data plane answers IPv4 sources from
//! (DIR-16-8-8): the /16 gate (`SOURCES_GATE`), a 4-bit slot per /24 (`SOURCES_MID`) and a block
//! of 256 host answers per /24 that holds entries longer than /24 (`SOURCES_HOSTS`). Also
//! batched inserts for bulk imports, and the walk used at start-up.
//!
//! The trie is the record; the levels are recomputed from the controller's copy of the IPv4
//! entries ([`V4Index`]) for the /16s and /24s a change touches, and written in an order that
//! never lets a packet read a level the level above does not vouch for: host blocks before the
//! `SOURCES_MID` slots that point at them, those before the gate's "more" bit, and host blocks
//! deleted only after no slot points at them. A packet sees the answer from before or after a
//! change, nothing in between.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key};
use common::{GATE_MORE, HostBlock, MID_HOSTS, MID_WORDS, maps, mid_slot};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, error};

use super::model::{KernelChange, TrieValue};
use crate::dataplane::{MapOpError, SourceMaps};

type Result<T> = std::result::Result<T, MapOpError>;

/// Longest run of new IPv4 entries handed to one `BPF_MAP_UPDATE_BATCH` call.
const BATCH_RUN: usize = 1 << 16;

/// The source tries and the IPv4 levels, written only through [`SourceTables::write`] and
/// [`SourceTables::write_all`].
pub struct SourceTables {
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    levels: Levels,
    times: WriteTimes,
}

/// Time the batched inserts of new IPv4 entries took since [`SourceTables::take_times`]: the
/// trie's share (on its own thread) and the levels' share (this thread, at the same time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteTimes {
    pub trie: Duration,
    pub levels: Duration,
}

/// The IPv4 levels and the index they are computed from (apart from the trie, so that a bulk
/// insert can write the trie on one thread while this one writes the levels).
struct Levels {
    gate_map: Array<MapData, u32>,
    mid_map: Array<MapData, u64>,
    hosts_map: HashMap<MapData, u32, HostBlock>,
    index: V4Index,
}

fn ipv4_key(net: &Ipv4Net) -> Key<[u8; 4]> {
    Key::new(net.prefix_len() as u32, net.network().octets())
}

fn ipv6_key(net: &Ipv6Net) -> Key<[u8; 16]> {
    Key::new(net.prefix_len() as u32, net.network().octets())
}

/// The /16 number of an IPv4 network.
fn slash16(n: &Ipv4Net) -> usize {
    (u32::from(n.network()) >> 16) as usize
}

/// The /16 numbers a network of /16 or wider covers.
fn slash16s(n: &Ipv4Net) -> std::ops::Range<usize> {
    let first = slash16(n);
    first..first + (1usize << (16 - n.prefix_len()))
}

/// The /16s and /24s whose levels a change of these networks touches.
#[derive(Default)]
struct Dirty {
    slash16s: BTreeSet<usize>,
    slash24s: BTreeSet<u32>,
}

impl Dirty {
    fn of<'a>(nets: impl IntoIterator<Item = &'a Ipv4Net>) -> Self {
        let mut d = Self::default();
        for n in nets {
            if n.prefix_len() <= 16 {
                d.slash16s.extend(slash16s(n));
            } else {
                d.slash16s.insert(slash16(n));
                if n.prefix_len() > 24 {
                    d.slash24s.insert(u32::from(n.network()) >> 8);
                }
            }
        }
        d
    }
}

impl SourceTables {
    /// Take over the maps. After adopting pinned maps call [`Self::rebuild_index`]: the index
    /// starts empty.
    pub fn new(maps: SourceMaps) -> Self {
        Self {
            v4: maps.v4,
            v6: maps.v6,
            levels: Levels { gate_map: maps.gate, mid_map: maps.mid, hosts_map: maps.hosts, index: V4Index::default() },
            times: WriteTimes::default(),
        }
    }

    /// The time batched inserts took since the last call, and start counting again.
    pub fn take_times(&mut self) -> WriteTimes {
        std::mem::take(&mut self.times)
    }

    /// Capacity of a source map as created in the kernel.
    pub fn capacity(&self, name: &str) -> Option<u32> {
        let info = match name {
            n if n == maps::SOURCES_V4 => self.v4.map().info(),
            n if n == maps::SOURCES_V6 => self.v6.map().info(),
            n if n == maps::SOURCES_GATE => self.levels.gate_map.map().info(),
            n if n == maps::SOURCES_MID => self.levels.mid_map.map().info(),
            n if n == maps::SOURCES_HOSTS => self.levels.hosts_map.map().info(),
            _ => return None,
        };
        info.ok().map(|i| i.max_entries())
    }

    /// Host blocks in `SOURCES_HOSTS` (/24s holding entries longer than /24).
    pub fn host_blocks(&self) -> usize {
        self.levels.index.hosts_written.len()
    }

    /// Write one entry: set or remove, then bring the IPv4 levels in step. If the levels cannot
    /// be written, the entry is taken back out and the error returned.
    pub fn write(&mut self, change: &KernelChange) -> Result<()> {
        let IpNet::V4(n) = change.net else { return self.trie_write(change) };
        self.trie_write(change)?;
        self.levels.index.set(&n, change.value.map(TrieValue::kernel_value));
        let dirty = Dirty::of([&n]);
        if let Err(e) = self.levels.sync(&dirty) {
            self.levels.index.set(&n, change.before.map(TrieValue::kernel_value));
            if let Err(e) = self.trie_write(&change.reversed()) {
                error!(cidr = %n, error = %e, "restoring a list entry failed");
            }
            if let Err(e) = self.levels.sync(&dirty) {
                error!(cidr = %n, error = %e, "restoring the IPv4 levels failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Apply `changes` in order, like [`Self::write`] one by one, but put runs of new IPv4
    /// entries into the trie with one `BPF_MAP_UPDATE_BATCH` call per run and write the levels
    /// they touch once per run (a bulk import of a million CIDRs then costs a few syscalls
    /// instead of a million). On error, returns how many changes are in force (a prefix of
    /// `changes`), so the caller can undo exactly those.
    pub fn write_all(&mut self, changes: &[KernelChange]) -> std::result::Result<(), (usize, MapOpError)> {
        let new_v4 = |c: &KernelChange| c.before.is_none() && c.value.is_some() && c.net.addr().is_ipv4();
        let mut i = 0;
        while i < changes.len() {
            if !new_v4(&changes[i]) {
                self.write(&changes[i]).map_err(|e| (i, e))?;
                i += 1;
                continue;
            }
            let end = changes[i..]
                .iter()
                .take(BATCH_RUN)
                .position(|c| !new_v4(c))
                .map_or((i + BATCH_RUN).min(changes.len()), |p| i + p);
            let done = self.insert_run_v4(&changes[i..end]).map_err(|(n, e)| (i + n, e))?;
            debug_assert_eq!(done, end - i);
            i = end;
        }
        Ok(())
    }

    /// Put back what `changes` overwrote (each change knows what was there), newest first.
    /// Failures are logged: the caller is already handling an error.
    pub fn undo(&mut self, changes: &[KernelChange]) {
        for c in changes.iter().rev() {
            if let Err(e) = self.write(&c.reversed()) {
                error!(cidr = %c.net, error = %e, "restoring a list entry failed");
            }
        }
    }

    /// New IPv4 entries, batched: into the trie on a second thread while this one computes and
    /// writes the levels they touch (the data plane reads only the levels, so their order does
    /// not matter to packets; on a bulk import the two halves cost about the same). Should
    /// either fail, what is reported in force is a prefix of `run`: the levels are brought back
    /// to the entries the trie took, or, if the levels themselves fail, the whole run leaves.
    fn insert_run_v4(&mut self, run: &[KernelChange]) -> std::result::Result<usize, (usize, MapOpError)> {
        let nets: Vec<Ipv4Net> = run
            .iter()
            .map(|c| match c.net {
                IpNet::V4(n) => n,
                IpNet::V6(_) => unreachable!("an IPv4 run"),
            })
            .collect();
        let keys: Vec<Key<[u8; 4]>> = nets.iter().map(ipv4_key).collect();
        let values: Vec<u32> = run.iter().map(|c| c.value.expect("a new entry").kernel_value()).collect();
        let dirty = Dirty::of(&nets);
        let (v4, levels) = (&self.v4, &mut self.levels);
        let ((inserted, err, trie_time), synced, levels_time) = std::thread::scope(|s| {
            let trie = s.spawn(|| {
                let started = Instant::now();
                let (inserted, err) = update_batch(v4.map(), &keys, &values);
                (inserted, err, started.elapsed())
            });
            let started = Instant::now();
            for (n, v) in nets.iter().zip(&values) {
                levels.index.set(n, Some(*v));
            }
            let synced = levels.sync(&dirty);
            let levels_time = started.elapsed();
            let trie = trie
                .join()
                .unwrap_or_else(|_| (0, Some(std::io::Error::other("the trie writer panicked")), Duration::ZERO));
            (trie, synced, levels_time)
        });
        let started = Instant::now();
        let mut result = Ok(run.len());
        if let Some(e) = err {
            // Not supported by this kernel (or failed part way): the rest one by one.
            debug!(error = %e, inserted, "batched insert stopped; inserting the rest one by one");
            for (n, (key, v)) in (inserted..).zip(keys[inserted..].iter().zip(&values[inserted..])) {
                if let Err(e) = self.v4.insert(key, v, 0) {
                    result = Err((n, MapOpError::new(maps::SOURCES_V4, "insert", e)));
                    break;
                }
            }
        }
        self.times.trie += trie_time + started.elapsed();
        self.times.levels += levels_time;
        let in_force = match result {
            Ok(n) | Err((n, _)) => n,
        };
        if let Err(e) = synced {
            for (n, key) in nets[..in_force].iter().zip(&keys) {
                if let Err(e) = self.v4.remove(key) {
                    error!(cidr = %n, error = %e, "taking a list entry back out failed");
                }
            }
            self.levels.retract(&nets, &dirty);
            return Err((0, e));
        }
        if in_force < run.len() {
            let rest = &nets[in_force..];
            self.levels.retract(rest, &Dirty::of(rest));
        }
        result
    }

    /// Recompute every IPv4 level from the trie's entries (after adopting pinned maps, whose
    /// levels this process has not built, or which an older version did not have).
    pub fn rebuild_index(&mut self, entries: &[(IpNet, TrieValue)]) -> Result<()> {
        self.levels.index = V4Index::default();
        let mut dirty = Dirty { slash16s: (0..65536).collect(), slash24s: BTreeSet::new() };
        for (net, kind) in entries {
            if let IpNet::V4(n) = net {
                self.levels.index.set(n, Some(kind.kernel_value()));
                if n.prefix_len() > 24 {
                    dirty.slash24s.insert(u32::from(n.network()) >> 8);
                }
            }
        }
        // What the kernel holds is unknown: every slot is written, every block checked.
        self.levels.index.gate_written = vec![u32::MAX; 65536];
        self.levels.index.mid_written = vec![u64::MAX; MID_WORDS as usize];
        for k in self.levels.hosts_map.keys() {
            let k = k.map_err(|e| MapOpError::new(maps::SOURCES_HOSTS, "iterate", e))?;
            self.levels.index.hosts_written.insert(k);
            dirty.slash24s.insert(k);
        }
        self.levels.sync(&dirty)
    }

    fn trie_write(&mut self, change: &KernelChange) -> Result<()> {
        let r = match (change.net, change.value) {
            (IpNet::V4(n), Some(v)) => {
                self.v4.insert(&ipv4_key(&n), v.kernel_value(), 0).map_err(|e| (maps::SOURCES_V4, "insert", e))
            }
            (IpNet::V6(n), Some(v)) => {
                self.v6.insert(&ipv6_key(&n), v.kernel_value(), 0).map_err(|e| (maps::SOURCES_V6, "insert", e))
            }
            (IpNet::V4(n), None) => self.v4.remove(&ipv4_key(&n)).map_err(|e| (maps::SOURCES_V4, "remove", e)),
            (IpNet::V6(n), None) => self.v6.remove(&ipv6_key(&n)).map_err(|e| (maps::SOURCES_V6, "remove", e)),
        };
        match r {
            Ok(()) => Ok(()),
            // Removing what is not there is fine.
            Err((_, "remove", MapError::KeyNotFound)) => Ok(()),
            Err((map, op, e)) => Err(MapOpError::new(map, op, e)),
        }
    }

    /// The trie's answer for one address (the kernel does the longest-prefix match).
    pub fn answer(&self, addr: IpAddr) -> Result<u32> {
        let r = match addr {
            IpAddr::V4(a) => self.v4.get(&Key::new(32, a.octets()), 0).map_err(|e| (maps::SOURCES_V4, e)),
            IpAddr::V6(a) => self.v6.get(&Key::new(128, a.octets()), 0).map_err(|e| (maps::SOURCES_V6, e)),
        };
        match r {
            Ok(v) => Ok(v),
            Err((_, MapError::KeyNotFound)) => Ok(0),
            Err((map, e)) => Err(MapOpError::new(map, "read", e)),
        }
    }

    /// Every entry of the source tries (walks them: start-up and tests only).
    pub fn entries(&self) -> Result<Vec<(IpNet, TrieValue)>> {
        let mut out = Vec::new();
        for r in self.v4.iter() {
            let (k, v) = r.map_err(|e| MapOpError::new(maps::SOURCES_V4, "iterate", e))?;
            out.push((net_of(IpAddr::from(k.data()), k.prefix_len()), TrieValue::from_kernel_value(v)));
        }
        for r in self.v6.iter() {
            let (k, v) = r.map_err(|e| MapOpError::new(maps::SOURCES_V6, "iterate", e))?;
            out.push((net_of(IpAddr::from(k.data()), k.prefix_len()), TrieValue::from_kernel_value(v)));
        }
        Ok(out)
    }
}

impl Levels {
    /// Take `nets` out of the index and bring the levels of `dirty` back in line (after a
    /// failed write; a failure here is logged, the caller is already returning an error).
    fn retract(&mut self, nets: &[Ipv4Net], dirty: &Dirty) {
        for n in nets {
            self.index.set(n, None);
        }
        if let Err(e) = self.sync(dirty) {
            error!(error = %e, "restoring the IPv4 levels failed");
        }
    }

    /// Bring the levels of the dirty /16s and /24s to what the index says, in the order the
    /// module describes. Only what differs from what was written is written.
    fn sync(&mut self, dirty: &Dirty) -> Result<()> {
        let ix = &mut self.index;
        let (mut keys, mut blocks, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for &x in &dirty.slash24s {
            match ix.block24(x) {
                Some(b) => {
                    keys.push(x);
                    blocks.push(b);
                }
                None if ix.hosts_written.contains(&x) => gone.push(x),
                None => {}
            }
        }
        let (done, err) = update_batch(self.hosts_map.map(), &keys, &blocks);
        ix.hosts_written.extend(&keys[..done]);
        if let Some(e) = err {
            return Err(MapOpError::new(maps::SOURCES_HOSTS, "write", MapError::SyscallError(syscall_error(e))));
        }

        let (mut idx, mut words) = (Vec::new(), Vec::new());
        for &g in &dirty.slash16s {
            if ix.more[g] == 0 && ix.gate_written[g] & GATE_MORE == 0 {
                continue; // not read while the gate answers for the whole /16
            }
            for (i, w) in ix.words16(g as u32).into_iter().enumerate() {
                let at = g * 16 + i;
                if ix.mid_written[at] != w {
                    idx.push(at as u32);
                    words.push(w);
                }
            }
        }
        let (done, err) = update_batch(self.mid_map.map(), &idx, &words);
        for (&i, &w) in idx[..done].iter().zip(&words) {
            ix.mid_written[i as usize] = w;
        }
        if let Some(e) = err {
            return Err(MapOpError::new(maps::SOURCES_MID, "write", MapError::SyscallError(syscall_error(e))));
        }

        let (mut idx, mut gates) = (Vec::new(), Vec::new());
        for &g in &dirty.slash16s {
            let v = ix.gate_value(g as u32);
            if ix.gate_written[g] != v {
                idx.push(g as u32);
                gates.push(v);
            }
        }
        let (done, err) = update_batch(self.gate_map.map(), &idx, &gates);
        for (&g, &v) in idx[..done].iter().zip(&gates) {
            ix.gate_written[g as usize] = v;
        }
        if let Some(e) = err {
            return Err(MapOpError::new(maps::SOURCES_GATE, "write", MapError::SyscallError(syscall_error(e))));
        }

        for x in gone {
            match self.hosts_map.remove(&x) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    ix.hosts_written.remove(&x);
                }
                Err(e) => return Err(MapOpError::new(maps::SOURCES_HOSTS, "remove", e)),
            }
        }
        Ok(())
    }
}

/// An `io::Error` from a raw syscall as aya's syscall error.
fn syscall_error(e: std::io::Error) -> aya::sys::SyscallError {
    aya::sys::SyscallError { call: "bpf_map_update_batch", io_error: e }
}

/// A trie key as a network. The kernel refuses prefix lengths beyond the key's bits, so the
/// length always fits.
fn net_of(addr: IpAddr, prefix_len: u32) -> IpNet {
    IpNet::new(addr, prefix_len as u8).expect("the kernel keeps prefix lengths within the key")
}

/// The controller's copy of the IPv4 entries, from which every level is computed, and what
/// each level holds in the kernel.
struct V4Index {
    /// (network address, prefix length) -> SOURCE_* value.
    entries: BTreeMap<(u32, u8), u32>,
    /// Entries of each prefix length /0 to /16 (the lengths [`V4Index::cover16`] looks up).
    wide: [u32; 17],
    /// Per /16: entries longer than /16 inside it.
    more: Vec<u32>,
    gate_written: Vec<u32>,
    mid_written: Vec<u64>,
    /// /24s with a block in `SOURCES_HOSTS`.
    hosts_written: HashSet<u32>,
}

impl Default for V4Index {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            wide: [0; 17],
            more: vec![0; 65536],
            gate_written: vec![0; 65536],
            mid_written: vec![0; MID_WORDS as usize],
            hosts_written: HashSet::new(),
        }
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl V4Index {
    /// Set (`Some`) or remove (`None`) one entry.
    fn set(&mut self, n: &Ipv4Net, value: Option<u32>) {
        let key = (u32::from(n.network()), n.prefix_len());
        let had = match value {
            Some(v) => self.entries.insert(key, v).is_some(),
            None => self.entries.remove(&key).is_some(),
        };
        let count = match n.prefix_len() {
            len @ 0..=16 => &mut self.wide[len as usize],
            _ => &mut self.more[slash16(n)],
        };
        match (had, value.is_some()) {
            (false, true) => *count += 1,
            (true, false) => *count -= 1,
            _ => {}
        }
    }

    /// Entries whose network address lies in `[first, first + size)`.
    fn within(&self, first: u32, size: u64) -> impl Iterator<Item = (u32, u8, u32)> + '_ {
        let last = (first as u64 + size - 1) as u32;
        self.entries.range((first, 0)..=(last, 32)).map(|(&(a, l), &v)| (a, l, v))
    }

    /// The answer of the longest entry of /16 or wider covering /16 number `g` (only the
    /// lengths that have entries are looked up).
    fn cover16(&self, g: u32) -> u32 {
        let addr = g << 16;
        (0..=16u8)
            .rev()
            .filter(|&len| self.wide[len as usize] > 0)
            .find_map(|len| self.entries.get(&(addr & mask(len), len)).copied())
            .unwrap_or(0)
    }

    fn gate_value(&self, g: u32) -> u32 {
        self.cover16(g) | if self.more[g as usize] > 0 { GATE_MORE } else { 0 }
    }

    /// The 16 `SOURCES_MID` words of /16 number `g`: each /24's answer from entries of /24 or
    /// wider, and [`MID_HOSTS`] where longer entries lie inside it.
    fn words16(&self, g: u32) -> [u64; 16] {
        let mut slots = [self.cover16(g); 256];
        let mut inside: Vec<(u32, u8, u32)> = self.within(g << 16, 1 << 16).filter(|e| e.1 > 16).collect();
        inside.sort_by_key(|e| e.1);
        for (a, len, v) in inside {
            let first = ((a >> 8) & 0xff) as usize;
            if len <= 24 {
                slots[first..first + (1 << (24 - len))].fill(v);
            } else {
                slots[first] |= MID_HOSTS;
            }
        }
        let mut words = [0u64; 16];
        for (i, s) in slots.into_iter().enumerate() {
            let (w, shift) = mid_slot((g << 8) | i as u32);
            words[w as usize & 15] |= (s as u64) << shift;
        }
        words
    }

    /// The host block of /24 number `x`, `None` if no entry longer than /24 lies inside it.
    fn block24(&self, x: u32) -> Option<HostBlock> {
        let mut inside: Vec<(u32, u8, u32)> = self.within(x << 8, 256).filter(|e| e.1 > 24).collect();
        if inside.is_empty() {
            return None;
        }
        inside.sort_by_key(|e| e.1);
        let mut hosts = [0u32; 256];
        for (a, len, v) in inside {
            let first = (a & 0xff) as usize;
            hosts[first..first + (1 << (32 - len))].fill(v);
        }
        let mut block: HostBlock = [0; 8];
        for (i, h) in hosts.into_iter().enumerate() {
            let (w, shift) = common::host_slot(i as u32);
            block[w] |= (h as u64) << shift;
        }
        Some(block)
    }
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

#[cfg(test)]
mod tests {
    use common::{GATE_VALUE, host_value, mid_value};

    use super::*;

    /// What the data plane answers for `addr`, read from the levels as the index computes them.
    fn levels_answer(ix: &V4Index, addr: u32) -> u32 {
        let gate = ix.gate_value(addr >> 16);
        if gate & GATE_MORE == 0 {
            return gate & GATE_VALUE;
        }
        let slash24 = addr >> 8;
        let slot = mid_value(ix.words16(addr >> 16)[mid_slot(slash24).0 as usize & 15], slash24);
        if slot & MID_HOSTS != 0 {
            let block = ix.block24(slash24).expect("a block where the slot says hosts");
            let host = host_value(&block, addr);
            if host != 0 {
                return host;
            }
        }
        slot & GATE_VALUE
    }

    /// Longest-prefix match over the entries, the trie's answer.
    fn trie_answer(ix: &V4Index, addr: u32) -> u32 {
        (0..=32u8).rev().find_map(|len| ix.entries.get(&(addr & mask(len), len)).copied()).unwrap_or(0)
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
    }

    #[test]
    fn levels_answer_like_the_trie_for_nested_prefixes_of_every_length() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut ix = V4Index::default();
        // Everything inside 10.1.0.0/16 and 10.0.0.0/8 so that prefixes nest often.
        let mut nets = Vec::new();
        for _ in 0..3000 {
            let len = (rng.next() % 33) as u8;
            let spread = if rng.next().is_multiple_of(4) { 0x00ff_ffff } else { 0xffff };
            let addr = 0x0a01_0000 | (rng.next() & spread);
            let n = Ipv4Net::new(addr.into(), len).unwrap().trunc();
            nets.push(n);
            ix.set(&n, Some(1 + rng.next() % 3));
        }
        // Remove a third again, so counts go down as well as up.
        for n in nets.iter().step_by(3) {
            ix.set(n, None);
        }
        let more: usize = ix.more.iter().map(|&m| m as usize).sum();
        assert_eq!(more, ix.entries.keys().filter(|k| k.1 > 16).count());
        for len in 0..=16u8 {
            assert_eq!(ix.wide[len as usize] as usize, ix.entries.keys().filter(|k| k.1 == len).count(), "/{len}");
        }
        for _ in 0..50_000 {
            // Mostly inside 10.0.0.0/15 where the entries are, some anywhere.
            let addr = if rng.next().is_multiple_of(8) { rng.next() } else { 0x0a00_0000 | (rng.next() & 0x0001_ffff) };
            assert_eq!(levels_answer(&ix, addr), trie_answer(&ix, addr), "{}", std::net::Ipv4Addr::from(addr));
        }
    }

    #[test]
    fn dirty_sets_name_the_levels_a_change_touches() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let d = Dirty::of(&[n("10.0.0.0/15"), n("10.9.8.0/22"), n("10.9.8.7/32")]);
        assert_eq!(d.slash16s.into_iter().collect::<Vec<_>>(), [0x0a00, 0x0a01, 0x0a09]);
        assert_eq!(d.slash24s.into_iter().collect::<Vec<_>>(), [0x0a_0908]);
        let d = Dirty::of(&[n("0.0.0.0/0")]);
        assert_eq!(d.slash16s.len(), 65536);
    }
}
