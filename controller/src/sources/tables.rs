//! The kernel side of the source lists: the two source tries (`SOURCES_V4`, `SOURCES_V6`) and the
//! IPv4 /16 gate in front of the IPv4 trie (`SOURCES_GATE`), with the controller's mirror of the
//! gate, batched inserts for bulk imports, and the walk used at start-up.
//!
//! The gate answers for a whole /16 when no entry longer than /16 lies inside it (its "more" bit
//! clear), so most sources skip the trie walk. Its invariant: a /16's "more" bit is set before
//! its first longer entry enters the trie and cleared after its last one left, so a packet never
//! takes the gate's answer where the trie holds a longer entry.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Array, IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key};
use common::{GATE_MORE, maps};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::{debug, error};

use super::model::{KernelChange, TrieValue};
use crate::dataplane::{MapOpError, SourceMaps};

type Result<T> = std::result::Result<T, MapOpError>;

/// Longest run of new IPv4 entries handed to one `BPF_MAP_UPDATE_BATCH` call.
const BATCH_RUN: usize = 1 << 16;

/// The source tries and the gate, written only through [`SourceTables::write`] and
/// [`SourceTables::write_all`].
pub struct SourceTables {
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    gate_map: Array<MapData, u32>,
    gate: Gate,
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

impl SourceTables {
    /// Take over the maps. After adopting pinned maps call [`Self::rebuild_gate`]: the gate
    /// mirror starts empty.
    pub fn new(maps: SourceMaps) -> Self {
        Self { v4: maps.v4, v6: maps.v6, gate_map: maps.gate, gate: Gate::default() }
    }

    /// Capacity of a source map as created in the kernel.
    pub fn capacity(&self, name: &str) -> Option<u32> {
        let info = match name {
            n if n == maps::SOURCES_V4 => self.v4.map().info(),
            n if n == maps::SOURCES_V6 => self.v6.map().info(),
            n if n == maps::SOURCES_GATE => self.gate_map.map().info(),
            _ => return None,
        };
        info.ok().map(|i| i.max_entries())
    }

    /// Write one entry: set or remove, keeping the gate in step.
    pub fn write(&mut self, change: &KernelChange) -> Result<()> {
        let IpNet::V4(n) = change.net else { return self.trie_write(change) };
        if n.prefix_len() > 16 {
            let g = slash16(&n);
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
            let wide = (u32::from(n.network()), n.prefix_len());
            match change.value {
                Some(v) => self.gate.wide.insert(wide, v.kernel_value()),
                None => self.gate.wide.remove(&wide),
            };
            slash16s(&n).try_for_each(|g| self.gate_write(g))
        }
    }

    /// Apply `changes` in order, like [`Self::write`] one by one, but put runs of new IPv4
    /// entries into the trie with one `BPF_MAP_UPDATE_BATCH` call per run (a bulk import of a
    /// million CIDRs then costs a few syscalls instead of a million). On error, returns how many
    /// changes are in force (a prefix of `changes`), so the caller can undo exactly those.
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

    /// New IPv4 entries, batched: raise the gate's "more" bits first, insert, then write the
    /// gate for wide entries (the same order as [`Self::write`]).
    fn insert_run_v4(&mut self, run: &[KernelChange]) -> std::result::Result<usize, (usize, MapOpError)> {
        let nets: Vec<Ipv4Net> = run
            .iter()
            .map(|c| match c.net {
                IpNet::V4(n) => n,
                IpNet::V6(_) => unreachable!("an IPv4 run"),
            })
            .collect();
        let narrow: Vec<usize> = nets.iter().filter(|n| n.prefix_len() > 16).map(slash16).collect();
        for &g in &narrow {
            self.gate.more[g] += 1;
        }
        let mut result = narrow.iter().try_for_each(|&g| self.gate_write(g)).map(|()| run.len()).map_err(|e| (0, e));
        if result.is_ok() {
            let keys: Vec<Key<[u8; 4]>> = nets.iter().map(ipv4_key).collect();
            let values: Vec<u32> = run.iter().map(|c| c.value.expect("a new entry").kernel_value()).collect();
            let (inserted, err) = update_batch(self.v4.map(), &keys, &values);
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
        }
        let in_force = match result {
            Ok(n) | Err((n, _)) => n,
        };
        // Entries not in force give their gate bits back.
        for n in nets[in_force..].iter().filter(|n| n.prefix_len() > 16) {
            let g = slash16(n);
            self.gate.more[g] -= 1;
            if self.gate.more[g] == 0
                && let Err(e) = self.gate_write(g)
            {
                // The bit stays set: packets of that /16 ask the trie, which answers right.
                error!(slash16 = g, error = %e, "clearing a gate bit failed");
            }
        }
        // Wide entries (/16 and shorter) are answered by the gate itself: write their slots now
        // that the trie holds them. Should that fail, the entries from there on leave the trie
        // again, so that what is reported in force is exactly a prefix of `run`.
        for (k, (n, c)) in nets[..in_force].iter().zip(run).enumerate() {
            if n.prefix_len() > 16 {
                continue;
            }
            self.gate
                .wide
                .insert((u32::from(n.network()), n.prefix_len()), c.value.expect("a new entry").kernel_value());
            if let Err(e) = slash16s(n).try_for_each(|g| self.gate_write(g)) {
                self.undo(&run[k..in_force]);
                return Err((k, e));
            }
        }
        result
    }

    /// Recompute every gate slot from the trie's entries (after adopting pinned maps, whose gate
    /// this process has not built).
    pub fn rebuild_gate(&mut self, entries: &[(IpNet, TrieValue)]) -> Result<()> {
        self.gate = Gate::default();
        for (net, kind) in entries {
            if let IpNet::V4(n) = net {
                if n.prefix_len() > 16 {
                    self.gate.more[slash16(n)] += 1;
                } else {
                    self.gate.wide.insert((u32::from(n.network()), n.prefix_len()), kind.kernel_value());
                }
            }
        }
        self.gate.written = vec![u32::MAX; 65536];
        (0..65536).try_for_each(|g| self.gate_write(g))
    }

    /// Write gate slot `g` if its value changed.
    fn gate_write(&mut self, g: usize) -> Result<()> {
        let mut v = self.gate.cover(g as u32);
        if self.gate.more[g] > 0 {
            v |= GATE_MORE;
        }
        if self.gate.written[g] != v {
            self.gate_map.set(g as u32, v, 0).map_err(|e| MapOpError::new(maps::SOURCES_GATE, "write", e))?;
            self.gate.written[g] = v;
        }
        Ok(())
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

/// A trie key as a network. The kernel refuses prefix lengths beyond the key's bits, so the
/// length always fits.
fn net_of(addr: IpAddr, prefix_len: u32) -> IpNet {
    IpNet::new(addr, prefix_len as u8).expect("the kernel keeps prefix lengths within the key")
}

/// The controller's copy of the IPv4 /16 gate: entries longer than /16 per /16, and the entries
/// of /16 or wider, from which each slot's answer is computed.
struct Gate {
    more: Vec<u32>,
    /// (network address, prefix length) -> SOURCE_* value, for prefixes of /16 or wider.
    wide: BTreeMap<(u32, u8), u32>,
    /// What each slot holds in the kernel.
    written: Vec<u32>,
}

impl Default for Gate {
    fn default() -> Self {
        Self { more: vec![0; 65536], wide: BTreeMap::new(), written: vec![0; 65536] }
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
