//! The allow and block lists, end to end: the operator's model ([`model`]), the kernel tries and
//! the IPv4 lookup levels derived from them ([`tables`]), and durability (a snapshot plus an
//! fsynced journal in the state folder). Every change goes model -> kernel -> disk, and is taken back in the kernel and the
//! model when a later step fails, so a change is either done and durable or not done at all.
//!
//! Policy changes (start-up and reload) come with a generation flip of the data plane: entries
//! that appear or turn `ALLOW` are written before the flip, the rest after it (see [`model`]), so
//! every packet gets the verdict of the old or of the new policy.

pub mod model;
pub mod tables;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tracing::{error, info, warn};

pub use self::{
    model::{
        FleetEntry, KernelChange, KernelDiff, ListKind, ListOp, ListRow, Lists, ManualEntry, PersistedLists,
        RemoveError, TrieValue,
    },
    tables::{SourceTables, WriteTimes},
};
use crate::{
    dataplane::{DataplaneError, MapOpError},
    state::{self, Journal, ReadState, StateError},
};

/// A list change bigger than this is written as a snapshot rather than a journal line.
const JOURNAL_MAX_OP: usize = 1000;
/// The journal is folded into a snapshot once it holds this many changes.
const JOURNAL_MAX_LINES: usize = 2000;

const SNAPSHOT: &str = "lists.json";
const JOURNAL: &str = "lists.journal";
/// The fleet entries (rewritten after every change: the fleet has no journal).
const FLEET: &str = "fleet.json";

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// The generation flip a policy change waits for.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    State(#[from] StateError),
}

type Result<T> = std::result::Result<T, SourcesError>;

/// The lists, their kernel tables and their files.
pub struct Sources {
    lists: Lists,
    tables: SourceTables,
    journal: Journal,
    state_dir: PathBuf,
    snapshot_times: Option<SnapshotTimes>,
}

/// Where the time of a change written as a new snapshot went: the kernel writes (of which the
/// batched trie inserts, on their own thread, and the IPv4 levels computed and written beside
/// them) and the snapshot, serialized and fsynced on another thread while the kernel writes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotTimes {
    pub kernel: Duration,
    pub written: WriteTimes,
    pub snapshot: Duration,
}

/// A list change being put together: the model is already changed, the kernel and the disk are
/// not yet. [`Sources::commit`] makes it real, [`Sources::abort`] forgets it.
#[must_use = "a staged change is neither applied nor taken back until commit or abort"]
pub struct Staged {
    kind: ListKind,
    saved: model::Checkpoint,
    diff: KernelDiff,
    added: Option<(Vec<IpNet>, ManualEntry)>,
    removed: Vec<IpNet>,
}

impl Staged {
    /// CIDRs whose manual entry this change removes.
    pub fn removed(&self) -> &[IpNet] {
        &self.removed
    }
}

impl Sources {
    /// Read the lists from `state_dir` (snapshot, then every journalled change after it), drop
    /// expired entries, join the policy's own entries, and take over the kernel tables. Nothing
    /// is written to the kernel yet: see [`Self::reconcile`].
    ///
    /// `recover` (`--recover`; the value: whether the tables are adopted pins): an unreadable
    /// snapshot, journal or fleet file is moved aside instead of failing, and what the adopted
    /// tables hold is taken as the truth: entries the files still describe keep their details,
    /// the others come back as permanent entries marked as recovered.
    pub fn open(
        state_dir: &Path,
        tables: SourceTables,
        allow: &[IpNet],
        block: &[IpNet],
        now: u64,
        recover: Option<bool>,
    ) -> Result<Self> {
        let may_recover = recover.is_some();
        let mut lost = false;
        let snapshot = state_dir.join(SNAPSHOT);
        let mut persisted: PersistedLists =
            match state::read_state("reading the list snapshot", &snapshot, may_recover)? {
                ReadState::Read(p) => p.unwrap_or_default(),
                ReadState::SetAside(_) => {
                    lost = true;
                    PersistedLists::default()
                }
            };
        let journal_path = state_dir.join(JOURNAL);
        let replayed = Journal::replay::<ListOp>(&journal_path).map(Some);
        match state::checked("replaying the list journal", &journal_path, may_recover, replayed)? {
            ReadState::Read(ops) => ops.into_iter().flatten().for_each(|op| persisted.apply(op)),
            ReadState::SetAside(_) => lost = true,
        }
        let journal =
            Journal::open(&journal_path).map_err(StateError::at("opening the list journal", &journal_path))?;
        // The fleet entries the host held when it stopped: kept (fail-static) until their
        // decisions end or the LAPI says otherwise.
        let fleet_path = state_dir.join(FLEET);
        let (mut fleet, fleet_lost): (Vec<(IpNet, FleetEntry)>, bool) =
            match state::read_state("reading the fleet entries", &fleet_path, may_recover)? {
                ReadState::Read(f) => (f.unwrap_or_default(), false),
                ReadState::SetAside(_) => (Vec::new(), true),
            };
        if (lost || fleet_lost) && recover == Some(true) {
            let entries = tables.entries()?;
            if lost {
                persisted = recovered_lists(&persisted, &entries, allow, block, now);
            }
            if fleet_lost {
                fleet = recovered_fleet(&entries, now);
            }
            info!(
                allow = persisted.allow.len(),
                block = persisted.block.len(),
                fleet = fleet.len(),
                "lists rebuilt from the pinned tables"
            );
        } else if lost || fleet_lost {
            warn!(
                "no pinned tables to rebuild from (a new start): the lists hold what the readable files and the policy give"
            );
        }
        let mut lists = Lists::restore(persisted, now);
        lists.set_policy(ListKind::Allow, allow);
        lists.set_policy(ListKind::Block, block);
        let live: Vec<(IpNet, FleetEntry)> = fleet.into_iter().filter(|(_, e)| e.expires > now).collect();
        lists.set_fleet(&live, &[]);
        Ok(Self { lists, tables, journal, state_dir: state_dir.to_path_buf(), snapshot_times: None })
    }

    /// Add, refresh and remove fleet entries in one change: kernel, then the fleet file. On a
    /// kernel error nothing changed (the kernel writes made are undone).
    pub fn apply_fleet(&mut self, add: &[(IpNet, FleetEntry)], remove: &[IpNet]) -> Result<()> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let saved = self.lists.checkpoint(
            add.iter().map(|(n, _)| (ListKind::Block, *n)).chain(remove.iter().map(|n| (ListKind::Block, *n))),
        );
        let diff = self.lists.set_fleet(add, remove);
        if let Err(e) = write_diff(&mut self.tables, &diff) {
            self.lists.rollback(saved);
            return Err(e);
        }
        self.persist_fleet()
    }

    /// Remove fleet entries whose decision ended; returns how many. Failures are logged and
    /// retried at the next sweep.
    pub fn expire_fleet(&mut self, now: u64) -> usize {
        let ended = self.lists.fleet_expired(now);
        if ended.is_empty() {
            return 0;
        }
        match self.apply_fleet(&[], &ended) {
            Ok(()) => ended.len(),
            Err(e) => {
                error!(error = %e, entries = ended.len(), "removing ended fleet entries failed; retrying at the next sweep");
                0
            }
        }
    }

    fn persist_fleet(&self) -> Result<()> {
        let path = self.state_dir.join(FLEET);
        let entries: Vec<(IpNet, &FleetEntry)> = self.lists.fleet().collect();
        state::write_json_compact(&path, &entries).map_err(StateError::at("writing the fleet entries", &path))?;
        Ok(())
    }

    /// Bring the kernel tables to what the lists say, around the data plane's generation flip
    /// (`flip`): the tables may hold anything (adopted from pinned maps, or empty), so the diff
    /// is computed against what they hold. Then write a fresh snapshot.
    pub fn reconcile<E>(&mut self, adopted: bool, flip: impl FnOnce() -> std::result::Result<(), E>) -> Result<()>
    where
        SourcesError: From<E>,
    {
        let entries = self.tables.entries()?;
        if adopted {
            self.tables.rebuild_index(&entries)?;
        }
        let have: BTreeMap<IpNet, TrieValue> = entries.into_iter().collect();
        let want = self.lists.kernel();
        let mut diff = KernelDiff::default();
        for (net, kind) in &want {
            let before = have.get(net).copied();
            if before != Some(*kind) {
                let c = KernelChange { net: *net, value: Some(*kind), before };
                if *kind == TrieValue::Allow || before.is_none() { diff.early.push(c) } else { diff.late.push(c) }
            }
        }
        diff.late.extend(have.iter().filter(|(n, _)| !want.contains_key(n)).map(|(n, k)| KernelChange {
            net: *n,
            value: None,
            before: Some(*k),
        }));
        write_early(&mut self.tables, &diff)?;
        if let Err(e) = flip() {
            self.tables.undo(&diff.early);
            return Err(e.into());
        }
        // At start-up a late write that fails is an error like any other: the daemon does not
        // start with tables it could not bring in line.
        self.tables.write_all(&diff.late).map_err(|(_, e)| e)?;
        self.snapshot()
    }

    /// Replace the policy's own entries (a reload), around the generation flip `flip`. On any
    /// error before the flip completes, the lists and the kernel are as they were; a failure
    /// to retire an entry after it is logged (the entry then answers as the old policy did).
    pub fn replace_policy<E>(
        &mut self,
        allow: &[IpNet],
        block: &[IpNet],
        flip: impl FnOnce() -> std::result::Result<(), E>,
    ) -> Result<()>
    where
        SourcesError: From<E>,
    {
        let saved = self.lists.checkpoint_policy(allow, block);
        let mut diff = self.lists.set_policy(ListKind::Allow, allow);
        diff.extend(self.lists.set_policy(ListKind::Block, block));
        if let Err(e) = self.around_flip(&diff, flip) {
            self.lists.rollback(saved);
            return Err(e);
        }
        Ok(())
    }

    /// Early writes, the flip, late writes. A failed early write or flip undoes the early
    /// writes and returns the error; failed late writes are logged.
    fn around_flip<E>(&mut self, diff: &KernelDiff, flip: impl FnOnce() -> std::result::Result<(), E>) -> Result<()>
    where
        SourcesError: From<E>,
    {
        write_early(&mut self.tables, diff)?;
        if let Err(e) = flip() {
            self.tables.undo(&diff.early);
            return Err(e.into());
        }
        for c in &diff.late {
            if let Err(e) = self.tables.write(c) {
                error!(cidr = %c.net, error = %e, "retiring a list entry failed");
            }
        }
        Ok(())
    }

    /// Start a change of `kind` touching `nets`.
    pub fn stage(&self, kind: ListKind, nets: &[IpNet]) -> Staged {
        Staged {
            kind,
            saved: self.lists.checkpoint(nets.iter().map(|n| (kind, *n))),
            diff: KernelDiff::default(),
            added: None,
            removed: Vec::new(),
        }
    }

    /// Add (or refresh) manual entries, all with the same details, to a staged change.
    pub fn stage_add(&mut self, staged: &mut Staged, nets: Vec<IpNet>, entry: ManualEntry) {
        staged.diff.extend(self.lists.add_manual(staged.kind, &nets, entry.clone()));
        staged.added = Some((nets, entry));
    }

    /// Remove one manual entry in a staged change.
    pub fn stage_remove(&mut self, staged: &mut Staged, net: &IpNet) -> std::result::Result<(), RemoveError> {
        staged.diff.extend(self.lists.remove_manual(staged.kind, net)?);
        staged.removed.push(*net);
        Ok(())
    }

    /// Forget a staged change: the lists are as they were.
    pub fn abort(&mut self, staged: Staged) {
        self.lists.rollback(staged.saved);
    }

    /// Make a staged change real: kernel writes, then one fsynced journal line (or a new
    /// snapshot for a bulk change, serialized on another thread while the kernel writes run and
    /// put in place only after they all succeeded). On failure everything is taken back.
    pub fn commit(&mut self, staged: Staged) -> Result<()> {
        let Staged { kind, saved, diff, added, removed } = staged;
        self.snapshot_times = None;
        let size = added.as_ref().map_or(0, |(n, _)| n.len()) + removed.len();
        let result = if self.snapshot_due(size) {
            let path = self.state_dir.join(SNAPSHOT);
            let (lists, tables) = (&self.lists, &mut self.tables);
            let mut times = SnapshotTimes::default();
            tables.take_times();
            let (kernel, staged_file) = std::thread::scope(|s| {
                let stager = s.spawn(|| {
                    let started = Instant::now();
                    let staged = state::stage_json_compact(&path, &lists.persisted())
                        .map_err(StateError::at("writing the list snapshot", &path));
                    (staged, started.elapsed())
                });
                let started = Instant::now();
                let kernel = write_diff(tables, &diff);
                times.kernel = started.elapsed();
                let staged_file = match stager.join() {
                    Ok((staged, took)) => {
                        times.snapshot = took;
                        staged
                    }
                    Err(_) => Err(StateError {
                        what: "writing the list snapshot (the writer panicked)",
                        path: path.clone(),
                        source: std::io::Error::other("panicked"),
                    }),
                };
                (kernel, staged_file)
            });
            times.written = tables.take_times();
            self.snapshot_times = Some(times);
            match (kernel, staged_file) {
                (Err(e), staged_file) => {
                    if let Ok(f) = staged_file {
                        f.discard();
                    }
                    self.lists.rollback(saved);
                    return Err(e);
                }
                (Ok(()), Err(e)) => Err(e.into()),
                (Ok(()), Ok(f)) => {
                    let path = f.path().to_path_buf();
                    f.commit()
                        .map_err(StateError::at("putting the list snapshot in place", &path))
                        .map_err(Into::into)
                        .and_then(|()| self.reset_journal())
                }
            }
        } else {
            if let Err(e) = write_diff(&mut self.tables, &diff) {
                self.lists.rollback(saved);
                return Err(e);
            }
            let mut result = Ok(());
            if let Some((cidrs, entry)) = added {
                result = self.journal_append(&ListOp::Add { list: kind, cidrs, entry });
            }
            if result.is_ok() && !removed.is_empty() {
                result = self.journal_append(&ListOp::Remove { list: kind, cidrs: removed });
            }
            result
        };
        if let Err(e) = result {
            // Not durable, so not done: take the change back.
            self.tables.undo(&diff.late);
            self.tables.undo(&diff.early);
            self.lists.rollback(saved);
            return Err(e);
        }
        Ok(())
    }

    /// Where the time of the last [`Self::commit`] went, if it wrote a new snapshot.
    pub fn take_snapshot_times(&mut self) -> Option<SnapshotTimes> {
        self.snapshot_times.take()
    }

    /// Remove manual entries whose TTL has passed (kernel and journal); returns them. Failures
    /// are logged: an entry that could not leave the kernel is retried at the next sweep, one
    /// that could not be journalled is dropped again at the next start anyway.
    /// Per-entry lines go through `log` (a million entries may expire in one sweep).
    pub fn expire(&mut self, now: u64, log: &mut crate::ratelog::RateLog) -> Vec<(ListKind, IpNet)> {
        let expired = self.lists.expired(now);
        let mut gone = Vec::new();
        for (kind, net) in expired {
            let saved = self.lists.checkpoint([(kind, net)]);
            let Ok(diff) = self.lists.remove_manual(kind, &net) else { continue };
            if let Err(e) = write_diff(&mut self.tables, &diff) {
                if let Some(suppressed) = log.allow("list_expire_failed") {
                    error!(cidr = %net, error = %e, suppressed, "removing an expired entry failed; retrying at the next sweep");
                }
                self.lists.rollback(saved);
                continue;
            }
            if let Some(suppressed) = log.allow("list_expired") {
                info!(cidr = %net, list = ?kind, suppressed, "list entry expired");
            }
            gone.push((kind, net));
        }
        for kind in [ListKind::Allow, ListKind::Block] {
            let cidrs: Vec<IpNet> = gone.iter().filter(|(k, _)| *k == kind).map(|(_, n)| *n).collect();
            if !cidrs.is_empty()
                && let Err(e) = self.record(ListOp::Remove { list: kind, cidrs })
            {
                error!(error = %e, "persisting expired list entries failed; they are dropped again at the next start");
            }
        }
        gone
    }

    /// The operator's view of the lists.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// Capacity of a source map as created in the kernel.
    pub fn capacity(&self, name: &str) -> Option<u32> {
        self.tables.capacity(name)
    }

    /// The live source trie's answer for `addr` (longest match): a `SOURCE_*` value or 0.
    pub fn kernel_answer(&self, addr: IpAddr) -> std::result::Result<u32, MapOpError> {
        self.tables.answer(addr)
    }

    /// Host blocks the IPv4 levels use (/24s holding entries longer than /24).
    pub fn host_blocks(&self) -> usize {
        self.tables.host_blocks()
    }

    /// Every entry of the kernel tries (walks them: tests and diagnostics).
    pub fn kernel_entries(&self) -> std::result::Result<Vec<(IpNet, TrieValue)>, MapOpError> {
        self.tables.entries()
    }

    /// A change of `size` CIDRs is recorded by a new snapshot rather than a journal line.
    fn snapshot_due(&self, size: usize) -> bool {
        size > JOURNAL_MAX_OP || self.journal.lines >= JOURNAL_MAX_LINES
    }

    /// Make a list change durable: a journal line, or a snapshot when one is due.
    fn record(&mut self, op: ListOp) -> Result<()> {
        let size = match &op {
            ListOp::Add { cidrs, .. } | ListOp::Remove { cidrs, .. } => cidrs.len(),
        };
        if self.snapshot_due(size) { self.snapshot() } else { self.journal_append(&op) }
    }

    fn journal_append(&mut self, op: &ListOp) -> Result<()> {
        let path = self.state_dir.join(JOURNAL);
        self.journal.append(op).map_err(StateError::at("appending to the list journal", &path))?;
        Ok(())
    }

    fn reset_journal(&mut self) -> Result<()> {
        let path = self.state_dir.join(JOURNAL);
        self.journal.reset().map_err(StateError::at("resetting the list journal", &path))?;
        Ok(())
    }

    /// Write the whole manual list state and empty the journal.
    pub fn snapshot(&mut self) -> Result<()> {
        let path = self.state_dir.join(SNAPSHOT);
        state::write_json_compact(&path, &self.lists.persisted())
            .map_err(StateError::at("writing the list snapshot", &path))?;
        self.reset_journal()
    }
}

/// Who and why of entries rebuilt from the kernel.
const RECOVERED_WHO: &str = "voipwall run --recover";
const RECOVERED_REASON: &str = "rebuilt from the pinned table: its state file was unreadable";
/// How long a fleet entry rebuilt from the kernel lasts (its decision's end is unknown) unless
/// the LAPI renews or ends it sooner.
const RECOVERED_FLEET_SECS: u64 = 3600;

/// The manual entries the adopted tables say exist: those of `known` (what the readable files
/// still describe) keep their details; the others are permanent and marked as recovered. The
/// policy's own CIDRs are not manual entries.
fn recovered_lists(
    known: &PersistedLists,
    kernel: &[(IpNet, TrieValue)],
    allow: &[IpNet],
    block: &[IpNet],
    now: u64,
) -> PersistedLists {
    let recovered =
        ManualEntry { reason: Some(RECOVERED_REASON.into()), who: RECOVERED_WHO.into(), created: now, expires: None };
    let mut out = PersistedLists::default();
    for (net, value) in kernel {
        let (map, known, policy) = match value {
            TrieValue::Allow => (&mut out.allow, &known.allow, allow),
            TrieValue::Block => (&mut out.block, &known.block, block),
            TrieValue::Fleet => continue,
        };
        if let Some(e) = known.get(net) {
            map.insert(*net, e.clone());
        } else if !policy.contains(net) {
            map.insert(*net, recovered.clone());
        }
    }
    out
}

/// Fleet-only entries of the adopted tables, kept for [`RECOVERED_FLEET_SECS`].
fn recovered_fleet(kernel: &[(IpNet, TrieValue)], now: u64) -> Vec<(IpNet, FleetEntry)> {
    let entry = FleetEntry {
        origin: "recovered".into(),
        scenario: RECOVERED_REASON.into(),
        expires: now + RECOVERED_FLEET_SECS,
    };
    kernel.iter().filter(|(_, v)| *v == TrieValue::Fleet).map(|(n, _)| (*n, entry.clone())).collect()
}

/// Write the early half of a diff into `tables`; on failure put back what was written.
fn write_early(tables: &mut SourceTables, diff: &KernelDiff) -> Result<()> {
    tables.write_all(&diff.early).map_err(|(done, e)| {
        tables.undo(&diff.early[..done]);
        e.into()
    })
}

/// Both halves of a diff (no flip involved); on failure everything is put back.
fn write_diff(tables: &mut SourceTables, diff: &KernelDiff) -> Result<()> {
    write_early(tables, diff)?;
    tables.write_all(&diff.late).map_err(|(done, e)| {
        tables.undo(&diff.late[..done]);
        tables.undo(&diff.early);
        e.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn recovery_takes_the_tables_as_the_truth_and_keeps_known_details() {
        let detailed =
            ManualEntry { reason: Some("scanner".into()), who: "uid 0".into(), created: 5, expires: Some(99) };
        let mut known = PersistedLists::default();
        known.block.insert(net("192.0.2.0/24"), detailed.clone());
        // Removed from the kernel after the snapshot (by a journalled change): gone.
        known.block.insert(net("198.51.100.7/32"), detailed.clone());
        let kernel = [
            (net("192.0.2.0/24"), TrieValue::Block),
            (net("203.0.113.9/32"), TrieValue::Block),
            (net("10.0.0.0/8"), TrieValue::Block),
            (net("2001:db8::/32"), TrieValue::Allow),
            (net("100.64.0.1/32"), TrieValue::Fleet),
        ];
        let policy_block = [net("10.0.0.0/8")];
        let out = recovered_lists(&known, &kernel, &[], &policy_block, 1000);
        assert_eq!(out.block.get(&net("192.0.2.0/24")), Some(&detailed));
        let rebuilt = &out.block[&net("203.0.113.9/32")];
        assert_eq!((rebuilt.who.as_ref(), rebuilt.expires, rebuilt.created), (RECOVERED_WHO, None, 1000));
        assert!(!out.block.contains_key(&net("198.51.100.7/32")));
        assert!(!out.block.contains_key(&net("10.0.0.0/8")), "a policy entry is not a manual one");
        assert!(out.allow.contains_key(&net("2001:db8::/32")));
        assert_eq!(out.block.len() + out.allow.len(), 3, "fleet entries are not manual ones");
        let fleet = recovered_fleet(&kernel, 1000);
        assert_eq!(fleet.len(), 1);
        assert_eq!((fleet[0].0, fleet[0].1.expires), (net("100.64.0.1/32"), 1000 + RECOVERED_FLEET_SECS));
    }
}
