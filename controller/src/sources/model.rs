//! The allow and block lists as the operator sees them: each CIDR may come from the policy file,
//! from the CLI (with reason, who, created, expiry), or both.
//!
//! The kernel holds both lists in one longest-prefix trie per family. Because the allow list is
//! checked first, a block entry covered by a wider allow entry is written as `ALLOW`; this store
//! computes those values and, for every change, the kernel writes it needs: a change to an allow
//! entry re-evaluates the block entries inside it, found by a range scan, so a single CLI change
//! on a million-entry list touches only what it affects.
//!
//! Writes come in two groups so a policy reload keeps every packet's verdict that of the old or
//! the new policy: `early` (new entries, entries turning `ALLOW`) is written before the
//! generation flip, `late` (removals, entries turning `BLOCK`) after it. Between the two the
//! trie holds the union of both policies' lists with allow winning, which answers every source
//! as one of the two policies would.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// The two source lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    /// "allow" or "block", as the CLI and JSON name the lists.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
        }
    }
}

/// What a kernel trie entry answers for its CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrieValue {
    Allow,
    /// Blocked by the policy or the operator.
    Block,
    /// Blocked by fleet decisions only.
    Fleet,
}

impl TrieValue {
    /// The value of a kernel trie entry.
    pub const fn kernel_value(self) -> u32 {
        match self {
            Self::Allow => common::SOURCE_ALLOW,
            Self::Block => common::SOURCE_BLOCK,
            Self::Fleet => common::SOURCE_FLEET,
        }
    }

    /// The answer a kernel trie value stands for.
    pub const fn from_kernel_value(v: u32) -> Self {
        match v {
            common::SOURCE_ALLOW => Self::Allow,
            common::SOURCE_FLEET => Self::Fleet,
            _ => Self::Block,
        }
    }
}

/// A block entry that comes from fleet decisions (CrowdSec): the decision that lasts longest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEntry {
    /// The decision's origin (`crowdsec`, `cscli`, `lists`, ...).
    pub origin: Arc<str>,
    pub scenario: Arc<str>,
    /// Unix seconds.
    pub expires: u64,
}

/// A CLI-made entry. Strings are shared: a bulk import of a million CIDRs holds one copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntry {
    pub reason: Option<Arc<str>>,
    pub who: Arc<str>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` = permanent.
    pub expires: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Origins {
    policy: bool,
    manual: Option<ManualEntry>,
    /// Block entries only.
    fleet: Option<FleetEntry>,
}

impl Origins {
    fn is_empty(&self) -> bool {
        !self.policy && self.manual.is_none() && self.fleet.is_none()
    }

    /// The policy or the operator put it there.
    fn local(&self) -> bool {
        self.policy || self.manual.is_some()
    }
}

/// One row of `voipwall list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    pub cidr: IpNet,
    /// "policy", "manual", "fleet", or several joined by '+' ("policy+manual").
    pub origin: String,
    #[serde(flatten)]
    pub manual: Option<ManualEntry>,
    /// The fleet decision behind the entry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fleet: Option<FleetEntry>,
}

/// What persists across restarts: the manual entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistedLists {
    pub allow: BTreeMap<IpNet, ManualEntry>,
    pub block: BTreeMap<IpNet, ManualEntry>,
}

/// The snapshot file's form: entries grouped by identical details, so a bulk import of a
/// million CIDRs is stored as one group (a CIDR each), not a million copies of its details.
#[derive(Serialize, Deserialize)]
struct Group {
    list: ListKind,
    #[serde(flatten)]
    entry: ManualEntry,
    cidrs: Vec<IpNet>,
}

impl Serialize for PersistedLists {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        type GroupKey = (ListKind, Option<Arc<str>>, Arc<str>, u64, Option<u64>);
        let mut groups: BTreeMap<GroupKey, Vec<IpNet>> = BTreeMap::new();
        for (kind, map) in [(ListKind::Allow, &self.allow), (ListKind::Block, &self.block)] {
            for (net, e) in map {
                groups.entry((kind, e.reason.clone(), e.who.clone(), e.created, e.expires)).or_default().push(*net);
            }
        }
        let out: Vec<Group> = groups
            .into_iter()
            .map(|((list, reason, who, created, expires), cidrs)| Group {
                list,
                entry: ManualEntry { reason, who, created, expires },
                cidrs,
            })
            .collect();
        out.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PersistedLists {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let groups = Vec::<Group>::deserialize(d)?;
        let mut p = PersistedLists::default();
        for g in groups {
            let map = if g.list == ListKind::Allow { &mut p.allow } else { &mut p.block };
            for net in g.cidrs {
                map.insert(net, g.entry.clone());
            }
        }
        Ok(p)
    }
}

/// One journalled change of the manual entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ListOp {
    Add { list: ListKind, cidrs: Vec<IpNet>, entry: ManualEntry },
    Remove { list: ListKind, cidrs: Vec<IpNet> },
}

impl PersistedLists {
    /// Replay one journal record.
    pub fn apply(&mut self, op: ListOp) {
        match op {
            ListOp::Add { list, cidrs, entry } => {
                let map = if list == ListKind::Allow { &mut self.allow } else { &mut self.block };
                for net in cidrs {
                    map.insert(net, entry.clone());
                }
            }
            ListOp::Remove { list, cidrs } => {
                let map = if list == ListKind::Allow { &mut self.allow } else { &mut self.block };
                for net in cidrs {
                    map.remove(&net);
                }
            }
        }
    }
}

/// One kernel write: set `net` to `value`, or remove it (`None`). `before` is what the trie
/// held for `net` until now (the data plane keeps its /16 gate from these transitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChange {
    pub net: IpNet,
    pub value: Option<TrieValue>,
    pub before: Option<TrieValue>,
}

impl KernelChange {
    /// The change that puts back what this one overwrote.
    pub fn reversed(&self) -> Self {
        Self { net: self.net, value: self.before, before: self.value }
    }
}

/// Kernel writes of one operation, in the order they must happen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelDiff {
    /// Before a policy flip: new entries and entries turning `ALLOW`.
    pub early: Vec<KernelChange>,
    /// After it: removals and entries turning `BLOCK`.
    pub late: Vec<KernelChange>,
}

impl KernelDiff {
    pub fn extend(&mut self, other: KernelDiff) {
        self.early.extend(other.early);
        self.late.extend(other.late);
    }

    pub fn is_empty(&self) -> bool {
        self.early.is_empty() && self.late.is_empty()
    }

    /// Every change, early first.
    pub fn all(&self) -> impl Iterator<Item = &KernelChange> {
        self.early.iter().chain(self.late.iter())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Lists {
    allow: BTreeMap<IpNet, Origins>,
    block: BTreeMap<IpNet, Origins>,
    /// How many allow entries have each (family, prefix length): "is this covered by an allow
    /// entry" then checks only the lengths in use, not all 33 or 129.
    allow_lens: BTreeMap<(bool, u8), usize>,
    /// Kernel trie entries per family (IPv4, IPv6), kept as changes are made so a metrics
    /// scrape never counts a million entries.
    kernel_counts: (usize, usize),
    /// Entries by kind, kept as changes are made (a scrape never counts a million entries).
    counts: Counts,
}

/// Entry counts: allow entries, block entries from the policy or the operator, fleet entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    allow: usize,
    block: usize,
    fleet: usize,
}

/// What `net` is in the lists: (on the allow list, blocked locally, blocked by the fleet).
type Shape = (bool, bool, bool);

/// All nets whose network address lies inside `net` sort between these two keys.
fn range_of(net: &IpNet) -> (IpNet, IpNet) {
    match net {
        IpNet::V4(n) => (
            IpNet::V4(Ipv4Net::new(n.network(), 0).expect("/0")),
            IpNet::V4(Ipv4Net::new(n.broadcast(), 32).expect("/32")),
        ),
        IpNet::V6(n) => (
            IpNet::V6(Ipv6Net::new(n.network(), 0).expect("/0")),
            IpNet::V6(Ipv6Net::new(n.broadcast(), 128).expect("/128")),
        ),
    }
}

impl Lists {
    fn map(&self, kind: ListKind) -> &BTreeMap<IpNet, Origins> {
        match kind {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    /// Get or create the entry of `net`.
    fn entry(&mut self, kind: ListKind, net: IpNet) -> &mut Origins {
        if kind == ListKind::Allow && !self.allow.contains_key(&net) {
            *self.allow_lens.entry((net.addr().is_ipv6(), net.prefix_len())).or_default() += 1;
        }
        match kind {
            ListKind::Allow => self.allow.entry(net).or_default(),
            ListKind::Block => self.block.entry(net).or_default(),
        }
    }

    fn get_mut(&mut self, kind: ListKind, net: &IpNet) -> Option<&mut Origins> {
        match kind {
            ListKind::Allow => self.allow.get_mut(net),
            ListKind::Block => self.block.get_mut(net),
        }
    }

    /// Drop the entry of `net` if no origin is left.
    fn prune(&mut self, kind: ListKind, net: &IpNet) {
        let map = match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        };
        if map.get(net).is_some_and(Origins::is_empty) {
            map.remove(net);
            if kind == ListKind::Allow {
                let key = (net.addr().is_ipv6(), net.prefix_len());
                if let Some(n) = self.allow_lens.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.allow_lens.remove(&key);
                    }
                }
            }
        }
    }

    /// Restore persisted manual entries, dropping those already expired.
    pub fn restore(persisted: PersistedLists, now: u64) -> Self {
        let mut l = Self::default();
        for (kind, entries) in [(ListKind::Allow, persisted.allow), (ListKind::Block, persisted.block)] {
            for (net, e) in entries {
                if e.expires.is_none_or(|x| x > now) {
                    l.entry(kind, net).manual = Some(e);
                }
            }
        }
        l.counts = Counts { allow: l.allow.len(), block: l.block.len(), fleet: 0 };
        let kernel = l.kernel();
        l.kernel_counts = (
            kernel.keys().filter(|n| n.addr().is_ipv4()).count(),
            kernel.keys().filter(|n| n.addr().is_ipv6()).count(),
        );
        l
    }

    pub fn persisted(&self) -> PersistedLists {
        let pick =
            |m: &BTreeMap<IpNet, Origins>| m.iter().filter_map(|(n, s)| s.manual.clone().map(|e| (*n, e))).collect();
        PersistedLists { allow: pick(&self.allow), block: pick(&self.block) }
    }

    /// An allow entry equal to or wider than `net`.
    fn allow_covers(&self, net: &IpNet) -> bool {
        let v6 = net.addr().is_ipv6();
        self.allow_lens
            .range((v6, 0)..=(v6, net.prefix_len()))
            .any(|(&(_, len), _)| IpNet::new(net.addr(), len).is_ok_and(|sup| self.allow.contains_key(&sup.trunc())))
    }

    /// What the kernel trie must hold for `net`.
    fn value(&self, net: &IpNet) -> Option<TrieValue> {
        self.state(net).0
    }

    /// [`Self::value`] and [`Self::shape`] of `net` with one lookup in each list.
    fn state(&self, net: &IpNet) -> (Option<TrieValue>, Shape) {
        let (allowed, b) = (self.allow.contains_key(net), self.block.get(net));
        let value = if (allowed || b.is_some()) && self.allow_covers(net) {
            Some(TrieValue::Allow)
        } else {
            b.map(|o| if o.local() { TrieValue::Block } else { TrieValue::Fleet })
        };
        (value, (allowed, b.is_some_and(Origins::local), b.is_some_and(|o| o.fleet.is_some())))
    }

    /// Block entries inside `net` (including `net` itself).
    fn blocks_within(&self, net: &IpNet) -> impl Iterator<Item = IpNet> + '_ {
        let (lo, hi) = range_of(net);
        let outer = *net;
        self.block.range(lo..=hi).map(|(n, _)| *n).filter(move |n| outer.contains(n))
    }

    /// Apply `change` to the lists and return the kernel writes it needs, looking only at the
    /// nets it can affect: `nets` themselves, and for allow changes the block entries inside.
    fn mutate(&mut self, kind: ListKind, nets: &[IpNet], change: impl FnOnce(&mut Self)) -> KernelDiff {
        let mut affected: Vec<IpNet> = nets.to_vec();
        if kind == ListKind::Allow {
            for n in nets {
                affected.extend(self.blocks_within(n));
            }
        }
        // In order, without duplicates (a bulk import's sorted file is already in order).
        affected.sort_unstable();
        affected.dedup();
        // An allow change leaves the block entries as they are, so the set found before the
        // change is the whole set.
        let before: Vec<(Option<TrieValue>, Shape)> = affected.iter().map(|n| self.state(n)).collect();
        change(self);
        let mut diff = KernelDiff::default();
        for (net, (before, shape)) in affected.iter().zip(before) {
            let (after, now) = self.state(net);
            self.count(shape, now);
            if before == after {
                continue;
            }
            let count = if net.addr().is_ipv4() { &mut self.kernel_counts.0 } else { &mut self.kernel_counts.1 };
            match (before, after) {
                (None, Some(_)) => *count += 1,
                (Some(_), None) => *count -= 1,
                _ => {}
            }
            let change = KernelChange { net: *net, value: after, before };
            match (before, after) {
                (None, Some(_)) | (_, Some(TrieValue::Allow)) => diff.early.push(change),
                _ => diff.late.push(change),
            }
        }
        diff
    }

    fn count(&mut self, before: Shape, after: Shape) {
        let step = |c: &mut usize, was: bool, is: bool| match (was, is) {
            (false, true) => *c += 1,
            (true, false) => *c -= 1,
            _ => {}
        };
        step(&mut self.counts.allow, before.0, after.0);
        step(&mut self.counts.block, before.1, after.1);
        step(&mut self.counts.fleet, before.2, after.2);
    }

    /// Replace the policy's entries of a list.
    pub fn set_policy(&mut self, kind: ListKind, nets: &[IpNet]) -> KernelDiff {
        let old: Vec<IpNet> = self.map(kind).iter().filter(|(_, s)| s.policy).map(|(n, _)| *n).collect();
        let mut touched: Vec<IpNet> = old.iter().filter(|n| !nets.contains(n)).copied().collect();
        touched.extend(nets.iter().filter(|n| !old.contains(n)));
        if touched.is_empty() {
            return KernelDiff::default();
        }
        let nets: BTreeSet<IpNet> = nets.iter().copied().collect();
        self.mutate(kind, &touched.clone(), move |l| {
            for n in &touched {
                if nets.contains(n) {
                    l.entry(kind, *n).policy = true;
                } else if let Some(s) = l.get_mut(kind, n) {
                    s.policy = false;
                    l.prune(kind, n);
                }
            }
        })
    }

    /// Add (or refresh) manual entries, all with the same details.
    pub fn add_manual(&mut self, kind: ListKind, nets: &[IpNet], entry: ManualEntry) -> KernelDiff {
        self.mutate(kind, nets, |l| {
            for net in nets {
                l.entry(kind, *net).manual = Some(entry.clone());
            }
        })
    }

    /// Remove a manual entry. `Err` if there is none (the CIDR may be a policy entry).
    pub fn remove_manual(&mut self, kind: ListKind, net: &IpNet) -> Result<KernelDiff, RemoveError> {
        match self.map(kind).get(net) {
            None => return Err(RemoveError::Absent),
            Some(s) if s.manual.is_none() && !s.policy => return Err(RemoveError::FleetOnly),
            Some(s) if s.manual.is_none() => return Err(RemoveError::PolicyOnly),
            Some(_) => {}
        }
        let net = *net;
        Ok(self.mutate(kind, &[net], |l| {
            if let Some(s) = l.get_mut(kind, &net) {
                s.manual = None;
            }
            l.prune(kind, &net);
        }))
    }

    /// Add (or refresh) fleet entries and remove others (`remove`), in one change.
    pub fn set_fleet(&mut self, add: &[(IpNet, FleetEntry)], remove: &[IpNet]) -> KernelDiff {
        let nets: Vec<IpNet> = add.iter().map(|(n, _)| *n).chain(remove.iter().copied()).collect();
        self.mutate(ListKind::Block, &nets, |l| {
            for n in remove {
                if let Some(s) = l.get_mut(ListKind::Block, n) {
                    s.fleet = None;
                    l.prune(ListKind::Block, n);
                }
            }
            for (n, e) in add {
                l.entry(ListKind::Block, *n).fleet = Some(e.clone());
            }
        })
    }

    /// The fleet entries.
    pub fn fleet(&self) -> impl Iterator<Item = (IpNet, &FleetEntry)> {
        self.block.iter().filter_map(|(n, s)| s.fleet.as_ref().map(|e| (*n, e)))
    }

    /// Fleet entries whose decision has ended.
    pub fn fleet_expired(&self, now: u64) -> Vec<IpNet> {
        self.fleet().filter(|(_, e)| e.expires <= now).map(|(n, _)| n).collect()
    }

    /// Manual entries whose TTL has passed.
    pub fn expired(&self, now: u64) -> Vec<(ListKind, IpNet)> {
        let mut out = Vec::new();
        for kind in [ListKind::Allow, ListKind::Block] {
            for (net, s) in self.map(kind) {
                if s.manual.as_ref().and_then(|m| m.expires).is_some_and(|x| x <= now) {
                    out.push((kind, *net));
                }
            }
        }
        out
    }

    /// Everything the kernel trie must hold.
    pub fn kernel(&self) -> BTreeMap<IpNet, TrieValue> {
        self.allow.keys().chain(self.block.keys()).filter_map(|n| self.value(n).map(|v| (*n, v))).collect()
    }

    /// CIDRs of a list (policy and manual; not fleet entries).
    pub fn cidrs(&self, kind: ListKind) -> Vec<IpNet> {
        self.map(kind).iter().filter(|(_, s)| s.local()).map(|(n, _)| *n).collect()
    }

    /// Entries of a list from the policy or the operator (not fleet entries).
    pub fn len(&self, kind: ListKind) -> usize {
        match kind {
            ListKind::Allow => self.counts.allow,
            ListKind::Block => self.counts.block,
        }
    }

    /// Fleet entries.
    pub fn fleet_len(&self) -> usize {
        self.counts.fleet
    }

    /// Kernel entries per family: (IPv4, IPv6). Each CIDR on either list is one entry.
    pub fn kernel_len(&self) -> (usize, usize) {
        self.kernel_counts
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty()
    }

    /// Any entry of the list from the policy or the operator contains `addr`.
    pub fn contains(&self, kind: ListKind, addr: IpAddr) -> bool {
        self.map(kind).iter().any(|(n, s)| s.local() && n.contains(&addr))
    }

    /// The entries of both lists that contain `addr`, longest prefix first (one lookup per
    /// prefix length, whatever the list size).
    pub fn covering(&self, addr: IpAddr) -> Vec<(ListKind, ListRow)> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let mut out = Vec::new();
        for len in (0..=max).rev() {
            let Ok(net) = IpNet::new(addr, len).map(|n| n.trunc()) else { continue };
            for kind in [ListKind::Allow, ListKind::Block] {
                if self.map(kind).contains_key(&net) {
                    out.extend(self.rows_of(kind, [net]).map(|r| (kind, r)));
                }
            }
        }
        out
    }

    pub fn rows(&self, kind: ListKind) -> Vec<ListRow> {
        self.map(kind).iter().map(|(net, s)| row(*net, s)).collect()
    }

    fn rows_of(&self, kind: ListKind, nets: impl IntoIterator<Item = IpNet>) -> impl Iterator<Item = ListRow> {
        let map = self.map(kind);
        nets.into_iter().filter_map(move |n| map.get(&n).map(|s| row(n, s)))
    }
}

fn row(cidr: IpNet, s: &Origins) -> ListRow {
    let origins: Vec<&str> = [(s.policy, "policy"), (s.manual.is_some(), "manual"), (s.fleet.is_some(), "fleet")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    ListRow { cidr, origin: origins.join("+"), manual: s.manual.clone(), fleet: s.fleet.clone() }
}

/// The entries an operation may touch, as they were: enough to undo it without copying the
/// whole store (a million entries take tens of milliseconds to clone).
pub struct Checkpoint {
    entries: Vec<(ListKind, IpNet, Option<Origins>)>,
    allow_lens: BTreeMap<(bool, u8), usize>,
    kernel_counts: (usize, usize),
    counts: Counts,
}

impl Lists {
    /// Remember `nets` of `kind` (and, for allow changes, nothing else: block entries are not
    /// modified by them).
    pub fn checkpoint(&self, nets: impl IntoIterator<Item = (ListKind, IpNet)>) -> Checkpoint {
        Checkpoint {
            entries: nets.into_iter().map(|(k, n)| (k, n, self.map(k).get(&n).cloned())).collect(),
            allow_lens: self.allow_lens.clone(),
            kernel_counts: self.kernel_counts,
            counts: self.counts,
        }
    }

    /// Remember the entries a policy change to `allow` and `block` may touch: the policy's
    /// current entries and the new ones.
    pub fn checkpoint_policy(&self, allow: &[IpNet], block: &[IpNet]) -> Checkpoint {
        let current = |kind| self.map(kind).iter().filter(|(_, o)| o.policy).map(move |(n, _)| (kind, *n));
        let touched: Vec<(ListKind, IpNet)> = current(ListKind::Allow)
            .chain(current(ListKind::Block))
            .chain(allow.iter().map(|n| (ListKind::Allow, *n)))
            .chain(block.iter().map(|n| (ListKind::Block, *n)))
            .collect();
        self.checkpoint(touched)
    }

    /// Put the remembered entries back.
    pub fn rollback(&mut self, cp: Checkpoint) {
        for (kind, net, prev) in cp.entries.into_iter().rev() {
            let map = match kind {
                ListKind::Allow => &mut self.allow,
                ListKind::Block => &mut self.block,
            };
            match prev {
                Some(s) => {
                    map.insert(net, s);
                }
                None => {
                    map.remove(&net);
                }
            }
        }
        self.allow_lens = cp.allow_lens;
        self.kernel_counts = cp.kernel_counts;
        self.counts = cp.counts;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("not on the list")]
    Absent,
    #[error("comes from the policy file; edit the policy and reload to remove it")]
    PolicyOnly,
    #[error(
        "comes from a fleet decision; delete the decision in CrowdSec (`cscli decisions delete`) or put the address on the allow list"
    )]
    FleetOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn manual(expires: Option<u64>) -> ManualEntry {
        ManualEntry { reason: Some("test".into()), who: "root".into(), created: 100, expires }
    }

    fn set(n: &str, v: TrieValue) -> (IpNet, Option<TrieValue>) {
        (net(n), Some(v))
    }

    fn rm(n: &str) -> (IpNet, Option<TrieValue>) {
        (net(n), None)
    }

    fn writes(c: &[KernelChange]) -> Vec<(IpNet, Option<TrieValue>)> {
        c.iter().map(|c| (c.net, c.value)).collect()
    }

    /// The trie's answer for an address: longest prefix among the kernel entries.
    fn lookup(l: &Lists, addr: &str) -> Option<TrieValue> {
        let a: IpAddr = addr.parse().unwrap();
        l.kernel().into_iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|e| e.1)
    }

    /// What "allow first, then block" says for an address.
    fn semantics(l: &Lists, addr: &str) -> Option<TrieValue> {
        let a: IpAddr = addr.parse().unwrap();
        if l.contains(ListKind::Allow, a) {
            Some(TrieValue::Allow)
        } else if l.contains(ListKind::Block, a) {
            Some(TrieValue::Block)
        } else {
            None
        }
    }

    #[test]
    fn longest_prefix_answers_like_allow_then_block() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("10.1.2.0/24"), net("192.168.0.0/16")]);
        l.set_policy(ListKind::Allow, &[net("10.1.0.0/16"), net("10.1.2.3/32"), net("172.16.0.0/12")]);
        l.add_manual(ListKind::Block, &[net("172.16.5.0/24")], manual(None));
        for a in ["10.2.0.1", "10.1.9.9", "10.1.2.4", "10.1.2.3", "192.168.1.1", "172.16.5.1", "172.17.0.1", "8.8.8.8"]
        {
            assert_eq!(lookup(&l, a), semantics(&l, a), "{a}");
        }
        assert_eq!(l.kernel()[&net("10.1.2.0/24")], TrieValue::Allow, "a block inside an allow is written as allow");
    }

    #[test]
    fn adding_and_removing_an_allow_rewrites_the_blocks_inside_it() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.1.2.0/24"), net("10.9.0.0/16")]);
        let d = l.add_manual(ListKind::Allow, &[net("10.1.0.0/16")], manual(None));
        assert_eq!(writes(&d.early), vec![set("10.1.0.0/16", TrieValue::Allow), set("10.1.2.0/24", TrieValue::Allow)]);
        assert_eq!(d.early[1].before, Some(TrieValue::Block), "the previous value travels with the write");
        assert!(d.late.is_empty());
        let d = l.remove_manual(ListKind::Allow, &net("10.1.0.0/16")).unwrap();
        assert!(d.early.is_empty());
        assert_eq!(writes(&d.late), vec![rm("10.1.0.0/16"), set("10.1.2.0/24", TrieValue::Block)]);
    }

    #[test]
    fn policy_and_manual_origins_share_one_kernel_entry() {
        let mut l = Lists::default();
        let d = l.set_policy(ListKind::Block, &[net("10.0.0.0/8")]);
        assert_eq!(writes(&d.early), vec![set("10.0.0.0/8", TrieValue::Block)]);
        assert!(l.add_manual(ListKind::Block, &[net("10.0.0.0/8")], manual(None)).is_empty(), "already in the kernel");
        assert!(!l.add_manual(ListKind::Block, &[net("192.0.2.0/24")], manual(None)).is_empty());
        let d = l.set_policy(ListKind::Block, &[]);
        assert!(d.is_empty(), "the manual origin keeps it: {d:?}");
        assert_eq!(l.rows(ListKind::Block)[0].origin, "manual");
        assert_eq!(writes(&l.remove_manual(ListKind::Block, &net("10.0.0.0/8")).unwrap().late), vec![rm("10.0.0.0/8")]);
        assert_eq!(l.remove_manual(ListKind::Block, &net("10.0.0.0/8")), Err(RemoveError::Absent));
    }

    #[test]
    fn removing_a_policy_entry_by_hand_is_refused() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Allow, &[net("203.0.113.10/32")]);
        assert_eq!(l.remove_manual(ListKind::Allow, &net("203.0.113.10/32")), Err(RemoveError::PolicyOnly));
        assert_eq!(l.cidrs(ListKind::Allow), vec![net("203.0.113.10/32")]);
    }

    #[test]
    fn reload_diff_puts_additions_before_and_removals_after_the_flip() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("172.16.0.0/12")]);
        let d = l.set_policy(ListKind::Block, &[net("172.16.0.0/12"), net("192.168.0.0/16")]);
        assert_eq!(writes(&d.early), vec![set("192.168.0.0/16", TrieValue::Block)]);
        assert_eq!(writes(&d.late), vec![rm("10.0.0.0/8")]);
    }

    #[test]
    fn expiry_and_persistence() {
        let mut l = Lists::default();
        l.add_manual(ListKind::Block, &[net("192.0.2.0/24")], manual(Some(200)));
        l.add_manual(ListKind::Allow, &[net("198.51.100.1/32")], manual(None));
        assert!(l.expired(199).is_empty());
        assert_eq!(l.expired(200), vec![(ListKind::Block, net("192.0.2.0/24"))]);
        let p = l.persisted();
        let back = Lists::restore(p.clone(), 150);
        assert_eq!(back.persisted(), p);
        let after = Lists::restore(p, 300);
        assert_eq!(after.len(ListKind::Block), 0, "expired entries are dropped at restore");
        assert_eq!(after.len(ListKind::Allow), 1);
        assert!(after.contains(ListKind::Allow, "198.51.100.1".parse().unwrap()));
        assert_eq!(after.kernel_len(), (1, 0));
    }

    #[test]
    fn snapshots_group_entries_and_journal_ops_replay() {
        let mut p = PersistedLists::default();
        let bulk = manual(None);
        for i in 0..100u32 {
            p.block.insert(IpNet::V4(Ipv4Net::new((0x0b00_0000 + (i << 8)).into(), 24).unwrap()), bulk.clone());
        }
        p.allow.insert(net("198.51.100.1/32"), manual(Some(500)));
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text.matches("\"who\"").count(), 2, "one group per distinct details: {text}");
        let back: PersistedLists = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let mut q = back;
        q.apply(ListOp::Remove { list: ListKind::Allow, cidrs: vec![net("198.51.100.1/32")] });
        q.apply(ListOp::Add { list: ListKind::Block, cidrs: vec![net("203.0.113.0/24")], entry: manual(None) });
        assert!(q.allow.is_empty());
        assert_eq!(q.block.len(), 101);
    }

    #[test]
    fn rollback_restores_exactly_the_checkpointed_entries() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8")]);
        l.add_manual(ListKind::Block, &[net("192.0.2.0/24")], manual(None));
        let before_kernel = l.kernel();
        let before_rows = l.rows(ListKind::Block);
        let nets = [net("10.0.0.0/8"), net("198.51.100.0/24")];
        let cp = l.checkpoint(nets.iter().map(|n| (ListKind::Block, *n)));
        l.add_manual(ListKind::Block, &nets, manual(Some(9)));
        assert_ne!(l.rows(ListKind::Block), before_rows);
        l.rollback(cp);
        assert_eq!(l.rows(ListKind::Block), before_rows);
        assert_eq!(l.kernel(), before_kernel);
        assert_eq!(l.kernel_len(), (2, 0));
    }

    #[test]
    fn kernel_counts_follow_every_change() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("2001:db8::/32")]);
        l.add_manual(ListKind::Allow, &[net("10.0.0.0/8"), net("192.0.2.1/32")], manual(None));
        assert_eq!(l.kernel_len(), (2, 1));
        l.remove_manual(ListKind::Allow, &net("192.0.2.1/32")).unwrap();
        l.set_policy(ListKind::Block, &[]);
        assert_eq!(l.kernel_len(), (1, 0));
        assert_eq!(l.kernel_len().0, l.kernel().len());
    }

    #[test]
    fn entry_counts_follow_every_change_and_rollback() {
        let scan = |l: &Lists| {
            (
                l.allow.len(),
                l.block.values().filter(|o| o.local()).count(),
                l.block.values().filter(|o| o.fleet.is_some()).count(),
            )
        };
        let counts = |l: &Lists| (l.len(ListKind::Allow), l.len(ListKind::Block), l.fleet_len());
        let e = FleetEntry { origin: "cscli".into(), scenario: "x".into(), expires: 900 };
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("192.0.2.0/24")]);
        l.set_fleet(&[(net("192.0.2.0/24"), e.clone()), (net("198.51.100.1/32"), e.clone())], &[]);
        l.add_manual(ListKind::Allow, &[net("10.0.0.0/8")], manual(None));
        assert_eq!(counts(&l), (1, 2, 2));
        assert_eq!(counts(&l), scan(&l));
        let cp = l.checkpoint([(ListKind::Block, net("198.51.100.1/32")), (ListKind::Block, net("192.0.2.0/24"))]);
        l.set_fleet(&[], &[net("198.51.100.1/32"), net("192.0.2.0/24")]);
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8")]);
        assert_eq!(counts(&l), scan(&l));
        l.rollback(cp);
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("192.0.2.0/24")]);
        assert_eq!(counts(&l), scan(&l));
        let restored = Lists::restore(l.persisted(), 0);
        assert_eq!(counts(&restored), scan(&restored));
    }

    #[test]
    fn a_change_on_a_large_list_touches_only_what_it_affects() {
        let mut l = Lists::default();
        let many: Vec<IpNet> =
            (0..20_000u32).map(|i| IpNet::V4(Ipv4Net::new((0x0b00_0000 + (i << 8)).into(), 24).unwrap())).collect();
        l.set_policy(ListKind::Block, &many);
        let d = l.add_manual(ListKind::Allow, &[net("11.0.1.0/24")], manual(None));
        assert_eq!(writes(&d.early), vec![set("11.0.1.0/24", TrieValue::Allow)], "one entry rewritten");
        let d = l.add_manual(ListKind::Block, &[net("203.0.113.0/24")], manual(None));
        assert_eq!(d.early.len() + d.late.len(), 1);
    }

    #[test]
    fn fleet_entries_block_as_fleet_and_yield_to_local_entries_and_allow() {
        let mut l = Lists::default();
        let e = |expires| FleetEntry { origin: "cscli".into(), scenario: "manual".into(), expires };
        let d = l.set_fleet(&[(net("198.51.100.7/32"), e(500)), (net("203.0.113.0/24"), e(900))], &[]);
        assert_eq!(
            writes(&d.early),
            vec![set("198.51.100.7/32", TrieValue::Fleet), set("203.0.113.0/24", TrieValue::Fleet)]
        );
        assert_eq!((l.len(ListKind::Block), l.fleet_len()), (0, 2), "fleet entries are not the operator's list");
        assert!(!l.contains(ListKind::Block, "198.51.100.7".parse().unwrap()));
        // The operator blocks the same address: the kernel says block; removing it says fleet again.
        let d = l.add_manual(ListKind::Block, &[net("198.51.100.7/32")], manual(None));
        assert_eq!(writes(&d.all().copied().collect::<Vec<_>>()), vec![set("198.51.100.7/32", TrieValue::Block)]);
        assert_eq!(l.rows(ListKind::Block)[0].origin, "manual+fleet");
        let d = l.remove_manual(ListKind::Block, &net("198.51.100.7/32")).unwrap();
        assert_eq!(writes(&d.all().copied().collect::<Vec<_>>()), vec![set("198.51.100.7/32", TrieValue::Fleet)]);
        assert_eq!(l.remove_manual(ListKind::Block, &net("203.0.113.0/24")), Err(RemoveError::FleetOnly));
        // An allow entry wins over a fleet decision.
        l.add_manual(ListKind::Allow, &[net("203.0.113.0/25")], manual(None));
        assert_eq!(lookup(&l, "203.0.113.9"), Some(TrieValue::Allow));
        assert_eq!(lookup(&l, "203.0.113.200"), Some(TrieValue::Fleet));
        // Expiry and removal.
        assert_eq!(l.fleet_expired(600), vec![net("198.51.100.7/32")]);
        let d = l.set_fleet(&[], &[net("198.51.100.7/32")]);
        assert_eq!(writes(&d.late), vec![rm("198.51.100.7/32")]);
        assert_eq!(l.fleet_len(), 1);
    }
}
