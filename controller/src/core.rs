//! The daemon's state and every operation on it: start (load, reconcile, attach or adopt),
//! reload (atomic, with commit-confirmed rollback), list changes, bans, sweeping and the
//! read-only views (list, stats, top, status). Synchronous: the async services call into it
//! under one mutex, so operations never interleave.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{BAN_DRY_RUN, BanEntry, BanEvent, POLICY_DRY_RUN, maps, rate::observed_pps, reason, stat, verdict};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::{
    bans::{BanRecord, Bans, key_of, mono_to_unix, source_of, unix_to_mono},
    dataplane::{
        AttachedMode, Attachment, Counters, Dataplane, DataplaneError, ListKind, LoadOptions, XdpModeChoice,
        monotonic_ns,
    },
    lists::{KernelChange, KernelDiff, ListOp, Lists, ManualEntry, PersistedLists, RemoveError},
    policy::{self, CompiledPolicy, Policy, SshReach},
    state::{self, Journal, rfc3339, unix_now},
    system,
};

/// The CIDRs of a change for a log line or reply: all of a few, a count of many.
fn summarize(nets: &[IpNet]) -> String {
    if nets.len() <= 8 {
        nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    } else {
        format!("{} CIDRs ({} ... {})", nets.len(), nets[0], nets[nets.len() - 1])
    }
}

/// A list change bigger than this is written as a snapshot rather than a journal line.
const JOURNAL_MAX_OP: usize = 1000;
/// The journal is folded into a snapshot once it holds this many changes.
const JOURNAL_MAX_LINES: usize = 2000;

/// An operation's failure, with the CLI exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Bad input: exit 2, nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The kernel or the filesystem refused: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl OpError {
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::Invalid(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

impl From<DataplaneError> for OpError {
    fn from(e: DataplaneError) -> Self {
        Self::Runtime(e.to_string())
    }
}

/// What an operation returns: a human rendering and the same facts as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub data: Value,
}

impl Reply {
    fn new(text: impl Into<String>, data: Value) -> Self {
        Self { text: text.into(), data }
    }
}

/// How `voipwall run` was asked to start.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub iface: String,
    pub policy_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub force_dry_run: bool,
    pub xdp_mode: XdpModeChoice,
    pub allow_lockout: bool,
}

/// A CLI list change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ListChange {
    pub cidrs: Vec<String>,
    /// A file of CIDRs, one per line (`#` comments), read by the daemon: bulk imports.
    #[serde(default)]
    pub file: Option<PathBuf>,
    pub ttl: Option<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub force: bool,
    /// The SSH client address of the operator's session, if any.
    pub ssh_client: Option<IpAddr>,
}

/// Reload outcome counters: `voipwall_policy_reloads_total{result}`.
#[derive(Clone, Debug, Default)]
pub struct ReloadStats {
    pub ok: u64,
    pub error: u64,
    pub rolled_back: u64,
}

struct Pending {
    previous: (Policy, CompiledPolicy, Option<PathBuf>),
    deadline: Instant,
}

#[derive(Serialize, Deserialize)]
struct AttachmentState {
    mode: AttachedMode,
    since: u64,
}

pub struct Core {
    pub iface: String,
    dp: Dataplane,
    attachment: Option<Attachment>,
    policy: Policy,
    compiled: CompiledPolicy,
    policy_path: Option<PathBuf>,
    force_dry_run: bool,
    lists: Lists,
    /// Small list changes since the last snapshot of `lists.json`.
    journal: Journal,
    bans: Bans,
    bans_dirty: bool,
    state_dir: PathBuf,
    pending: Option<Pending>,
    pub reloads: ReloadStats,
    /// Enforced bans by (class, level).
    pub bans_total: BTreeMap<(String, u8), u64>,
    attached_since: u64,
    /// Unix time of the last successful reload (or start).
    pub policy_loaded_at: u64,
}

fn load_policy(path: Option<&Path>, force_dry_run: bool) -> Result<(Policy, CompiledPolicy), OpError> {
    let (p, mut c) = match path {
        Some(p) => policy::load(p).map_err(|e| OpError::Invalid(e.to_string()))?,
        None => policy::default_policy(),
    };
    if force_dry_run {
        c.config.flags |= POLICY_DRY_RUN;
    }
    Ok((p, c))
}

fn lockout_message(c: &CompiledPolicy) -> String {
    format!(
        "refusing a policy that closes the SSH port {}/tcp to every source (its `from` sets are empty and the allow list is empty); fill the set, add your address to `allow`, or pass --allow-lockout",
        c.ssh_port
    )
}

impl Core {
    /// Everything `voipwall run` does before its services start.
    pub fn start(opts: &StartOptions) -> Result<Self, OpError> {
        let (policy, compiled) = load_policy(opts.policy_path.as_deref(), opts.force_dry_run)?;
        if compiled.ssh == SshReach::Closed && !opts.allow_lockout {
            return Err(OpError::Invalid(lockout_message(&compiled)));
        }
        for w in &compiled.warnings {
            warn!(warning = %w, "policy");
        }
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| OpError::Runtime(format!("state dir {}: {e}", opts.state_dir.display())))?;
        let now = unix_now();
        // Lists: the snapshot, then every journalled change after it.
        let mut persisted: PersistedLists = state::read_json(&opts.state_dir.join("lists.json"))
            .map_err(|e| OpError::Runtime(e.to_string()))?
            .unwrap_or_default();
        let journal_path = opts.state_dir.join("lists.journal");
        for op in Journal::replay::<ListOp>(&journal_path).map_err(|e| OpError::Runtime(e.to_string()))? {
            persisted.apply(op);
        }
        let journal =
            Journal::open(&journal_path).map_err(|e| OpError::Runtime(format!("{}: {e}", journal_path.display())))?;
        let ban_records: Vec<BanRecord> = state::read_json(&opts.state_dir.join("bans.json"))
            .map_err(|e| OpError::Runtime(e.to_string()))?
            .unwrap_or_default();
        let mut lists = Lists::restore(persisted, now);
        let bans = Bans::restore(ban_records, now);

        let dp = Dataplane::load(&LoadOptions { pin_dir: Some(opts.pin_dir.clone()), capacity: policy.capacity })?;
        if dp.adopted_maps {
            info!(pin_dir = %opts.pin_dir.display(), "adopting pinned maps");
        }

        // The policy's static lists join the restored manual entries; what the kernel must hold
        // is reconciled against what it holds below (an adopted table may differ).
        lists.set_policy(ListKind::Allow, &compiled.allow);
        lists.set_policy(ListKind::Block, &compiled.block);
        let mut core = Self {
            iface: opts.iface.clone(),
            dp,
            attachment: None,
            policy,
            compiled: compiled.clone(),
            policy_path: opts.policy_path.clone(),
            force_dry_run: opts.force_dry_run,
            lists,
            journal,
            bans,
            bans_dirty: true,
            state_dir: opts.state_dir.clone(),
            pending: None,
            reloads: ReloadStats::default(),
            bans_total: BTreeMap::new(),
            attached_since: now,
            policy_loaded_at: now,
        };
        // Reconcile the source tries with what an adopted table holds: additions and entries
        // turning allow before the flip, the rest after it (the reload order, see `lists`).
        let want = core.lists.kernel();
        let entries = core.dp.source_entries()?;
        if core.dp.adopted_maps {
            core.dp.rebuild_gate(&entries)?;
        }
        let have: BTreeMap<IpNet, ListKind> = entries.into_iter().collect();
        let mut diff = KernelDiff::default();
        for (net, kind) in &want {
            if have.get(net) != Some(kind) {
                let c = KernelChange { net: *net, value: Some(*kind), before: have.get(net).copied() };
                if *kind == ListKind::Allow || !have.contains_key(net) { diff.early.push(c) } else { diff.late.push(c) }
            }
        }
        diff.late.extend(have.iter().filter(|(n, _)| !want.contains_key(n)).map(|(n, k)| KernelChange {
            net: *n,
            value: None,
            before: Some(*k),
        }));
        for c in &diff.early {
            core.dp.source_write(c)?;
        }
        core.dp.apply_policy(&compiled)?;
        for c in &diff.late {
            core.dp.source_write(c)?;
        }

        // Bans: the kernel keeps bans raised while no daemon ran; the state file keeps bans
        // across reboots. Merge both.
        let now_mono = monotonic_ns();
        for (key, entry) in core.dp.bans()? {
            if entry.expires_ns > now_mono {
                let class = core.compiled.class_name(entry.class);
                core.bans.learn(&key, &entry, core.policy.options.ipv6_prefix, class, now_mono, now);
            }
        }
        for rec in core.bans.records() {
            let key = key_of(&rec.source);
            if core.dp.ban_get(&key)?.is_none() {
                core.dp.ban_insert(
                    &key,
                    &BanEntry {
                        expires_ns: unix_to_mono(rec.expires, now_mono, now),
                        rate_pps: rec.rate_pps,
                        class: 0,
                        level: rec.level,
                        flags: if rec.source.addr().is_ipv6() { common::BAN_IPV6 } else { 0 },
                        _pad: 0,
                    },
                )?;
            }
        }

        let remembered: Option<AttachmentState> =
            state::read_json(&core.state_dir.join("attachment.json")).ok().flatten();
        let attachment = core.dp.attach(&opts.iface, opts.xdp_mode, remembered.as_ref().map(|a| a.mode))?;
        if attachment.adopted {
            core.attached_since = remembered.map_or(now, |a| a.since);
            info!(iface = %opts.iface, program_id = attachment.program_id, "adopted the attached program without detaching");
        } else {
            let _ = state::write_json(
                &core.state_dir.join("attachment.json"),
                &AttachmentState { mode: attachment.mode, since: now },
            );
            info!(iface = %opts.iface, mode = attachment.mode.as_str(), program_id = attachment.program_id, "attached");
        }
        core.attachment = Some(attachment);
        core.snapshot_lists()?;
        core.persist_bans();
        Ok(core)
    }

    /// Detach, or leave the pinned program in place (`keep_attached`).
    pub fn shutdown(&mut self, keep_attached: bool) {
        self.persist_bans();
        if let Some(a) = self.attachment.take() {
            if keep_attached {
                info!(iface = %self.iface, "leaving the program attached (--keep-attached)");
                a.forget();
            } else {
                self.dp.detach(a);
                let _ = std::fs::remove_file(self.state_dir.join("attachment.json"));
                info!(iface = %self.iface, "detached");
            }
        }
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    pub fn policy(&self) -> (&Policy, &CompiledPolicy) {
        (&self.policy, &self.compiled)
    }

    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn bans(&self) -> &Bans {
        &self.bans
    }

    pub fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    pub fn attached_since(&self) -> u64 {
        self.attached_since
    }

    /// Write the whole manual list state and empty the journal.
    fn snapshot_lists(&mut self) -> Result<(), OpError> {
        let err =
            |e: std::io::Error| OpError::Runtime(format!("persisting lists in {}: {e}", self.state_dir.display()));
        state::write_json_compact(&self.state_dir.join("lists.json"), &self.lists.persisted()).map_err(err)?;
        self.journal.reset().map_err(|e| OpError::Runtime(format!("resetting the list journal: {e}")))
    }

    /// A change of `size` CIDRs is recorded by a new snapshot rather than a journal line.
    fn snapshot_due(&self, size: usize) -> bool {
        size > JOURNAL_MAX_OP || self.journal.lines >= JOURNAL_MAX_LINES
    }

    /// Make a list change durable: one fsynced journal line for small changes, a snapshot for
    /// bulk ones or when the journal has grown long.
    fn record(&mut self, op: ListOp) -> Result<(), OpError> {
        let size = match &op {
            ListOp::Add { cidrs, .. } | ListOp::Remove { cidrs, .. } => cidrs.len(),
        };
        if self.snapshot_due(size) {
            return self.snapshot_lists();
        }
        self.journal.append(&op).map_err(|e| OpError::Runtime(format!("journalling a list change: {e}")))
    }

    fn persist_bans(&mut self) {
        if !self.bans_dirty {
            return;
        }
        match state::write_json(&self.state_dir.join("bans.json"), &self.bans.records()) {
            Ok(()) => self.bans_dirty = false,
            Err(e) => error!(error = %e, "persisting bans failed; will retry"),
        }
    }

    /// Install a policy: new list entries, generation flip, retired list entries. On error the
    /// running policy and lists are left as they were.
    fn install(&mut self, policy: Policy, compiled: CompiledPolicy) -> Result<(), OpError> {
        let touched = self
            .compiled
            .allow
            .iter()
            .chain(&compiled.allow)
            .map(|n| (ListKind::Allow, *n))
            .chain(self.compiled.block.iter().chain(&compiled.block).map(|n| (ListKind::Block, *n)));
        let saved = self.lists.checkpoint(touched.collect::<Vec<_>>());
        let mut diff = self.lists.set_policy(ListKind::Allow, &compiled.allow);
        diff.extend(self.lists.set_policy(ListKind::Block, &compiled.block));
        let result = self.write_early(&diff).and_then(|()| {
            self.dp.apply_policy(&compiled).map_err(|e| {
                self.undo(&diff.early);
                OpError::from(e)
            })
        });
        if let Err(e) = result {
            self.lists.rollback(saved);
            return Err(e);
        }
        for c in &diff.late {
            if let Err(e) = self.dp.source_write(c) {
                error!(cidr = %c.net, error = %e, "retiring a list entry failed");
            }
        }
        self.policy = policy;
        self.compiled = compiled;
        self.policy_loaded_at = unix_now();
        Ok(())
    }

    /// Every allow/block CIDR in force (policy and manual), for the SSH guard.
    fn all_lists(&self) -> (Vec<IpNet>, Vec<IpNet>) {
        (self.lists.cidrs(ListKind::Allow), self.lists.cidrs(ListKind::Block))
    }

    /// Write the early half of a diff; on failure put back what was written and report it
    /// (the lists themselves are rolled back by the caller).
    fn write_early(&mut self, diff: &KernelDiff) -> Result<(), OpError> {
        self.dp.source_write_all(&diff.early).map_err(|(done, e)| {
            self.undo(&diff.early[..done]);
            e.into()
        })
    }

    /// Put back the kernel entries `changes` overwrote (each change knows what was there).
    fn undo(&mut self, changes: &[KernelChange]) {
        for c in changes.iter().rev() {
            let back = KernelChange { net: c.net, value: c.before, before: c.value };
            if let Err(e) = self.dp.source_write(&back) {
                error!(cidr = %c.net, error = %e, "restoring a list entry failed");
            }
        }
    }

    /// Take back a list change whose kernel writes succeeded but which could not be made
    /// durable: the kernel entries, then the in-memory lists.
    fn revert(&mut self, diff: &KernelDiff, saved: crate::lists::Checkpoint) {
        self.undo(&diff.late);
        self.undo(&diff.early);
        self.lists.rollback(saved);
    }

    /// Apply a whole list diff (no policy flip involved), restoring everything on failure.
    fn write_diff(&mut self, diff: &KernelDiff) -> Result<(), OpError> {
        self.write_early(diff)?;
        self.dp.source_write_all(&diff.late).map_err(|(done, e)| {
            self.undo(&diff.late[..done]);
            self.undo(&diff.early);
            e.into()
        })
    }

    /// `voipwall reload`: atomic; on any error the old policy keeps running.
    pub fn reload(
        &mut self,
        path: Option<PathBuf>,
        confirm_within: Option<Duration>,
        allow_lockout: bool,
        caller: Option<IpAddr>,
    ) -> Result<Reply, OpError> {
        let result = self.try_reload(path, confirm_within, allow_lockout, caller);
        match &result {
            Ok(_) => self.reloads.ok += 1,
            Err(e) => {
                self.reloads.error += 1;
                warn!(error = %e, "policy reload refused; the previous policy keeps running");
            }
        }
        result
    }

    fn try_reload(
        &mut self,
        path: Option<PathBuf>,
        confirm_within: Option<Duration>,
        allow_lockout: bool,
        caller: Option<IpAddr>,
    ) -> Result<Reply, OpError> {
        let path = path.or_else(|| self.policy_path.clone());
        let (policy, compiled) = load_policy(path.as_deref(), self.force_dry_run)?;
        if !allow_lockout {
            if compiled.ssh == SshReach::Closed {
                return Err(OpError::Invalid(lockout_message(&compiled)));
            }
            if let Some(ip) = caller {
                let (mut allow, mut block) = self.all_lists();
                // The new policy's static lists replace the current policy's.
                allow.retain(|n| !self.compiled.allow.contains(n));
                block.retain(|n| !self.compiled.block.contains(n));
                allow.extend(&compiled.allow);
                block.extend(&compiled.block);
                if !compiled.admits_ssh_from(ip, &allow, &block) {
                    return Err(OpError::Invalid(format!(
                        "refusing a policy under which your SSH session ({ip} -> {}/tcp) would be cut; pass --allow-lockout if you mean it",
                        compiled.ssh_port
                    )));
                }
            }
        }
        let previous = (self.policy.clone(), self.compiled.clone(), self.policy_path.clone());
        let (sha, roles) = (policy.sha256.clone(), policy.roles.join(","));
        self.install(policy, compiled)?;
        self.policy_path = path;
        self.pending = confirm_within.map(|d| Pending { previous, deadline: Instant::now() + d });
        let mut text =
            format!("policy {} applied (sha256 {}, generation {})", self.policy.path, &sha[..12], self.dp.generation());
        if let Some(d) = confirm_within {
            let _ =
                write!(text, "; it rolls back in {} unless `voipwall confirm` arrives", humantime::format_duration(d));
        }
        for w in &self.compiled.warnings {
            let _ = write!(text, "\nwarning: {w}");
        }
        info!(path = %self.policy.path, sha256 = %sha, roles = %roles, generation = self.dp.generation(), confirm_within = ?confirm_within, "policy reloaded");
        Ok(Reply::new(
            text,
            json!({ "path": self.policy.path, "sha256": sha, "generation": self.dp.generation(), "confirm_within_secs": confirm_within.map(|d| d.as_secs_f64()) }),
        ))
    }

    /// `voipwall confirm`.
    pub fn confirm(&mut self) -> Result<Reply, OpError> {
        match self.pending.take() {
            Some(_) => {
                info!(path = %self.policy.path, "policy confirmed");
                Ok(Reply::new(format!("policy {} confirmed", self.policy.path), json!({ "confirmed": true })))
            }
            None => Err(OpError::Invalid("no reload is waiting for confirmation".into())),
        }
    }

    /// Roll back an unconfirmed reload whose time is up. Returns true if it did.
    pub fn rollback_if_due(&mut self, now: Instant) -> bool {
        if !self.pending.as_ref().is_some_and(|p| p.deadline <= now) {
            return false;
        }
        let p = self.pending.take().expect("checked above");
        let (policy, compiled, path) = p.previous;
        let restored = policy.path.clone();
        match self.install(policy, compiled) {
            Ok(()) => {
                self.policy_path = path;
                self.reloads.rolled_back += 1;
                warn!(restored = %restored, "reload not confirmed in time: rolled back to the previous policy");
                true
            }
            Err(e) => {
                error!(error = %e, "rolling back the unconfirmed policy failed; the new policy stays");
                false
            }
        }
    }

    /// The CIDRs of a request: its arguments and, if given, its file (every line checked
    /// before anything changes; an error names the line).
    fn parse_cidrs(req: &ListChange) -> Result<Vec<IpNet>, OpError> {
        let mut out: Vec<IpNet> = req
            .cidrs
            .iter()
            .map(|c| policy::parse_cidr(c).map_err(|(m, h)| OpError::Invalid(format!("{m}; {h}"))))
            .collect::<Result<_, _>>()?;
        if let Some(path) = &req.file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| OpError::Invalid(format!("cannot read {}: {e}", path.display())))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                out.push(
                    policy::parse_cidr(line)
                        .map_err(|(m, h)| OpError::Invalid(format!("{}:{}: {m}; {h}", path.display(), i + 1)))?,
                );
            }
        }
        if out.is_empty() {
            return Err(OpError::Invalid("name at least one CIDR (arguments or --file)".into()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn parse_ttl(ttl: &Option<String>) -> Result<Option<u64>, OpError> {
        match ttl {
            None => Ok(None),
            Some(t) => match policy::parse_duration(t) {
                Ok(d) if !d.is_zero() => Ok(Some(unix_now() + d.as_secs().max(1))),
                Ok(_) => {
                    Err(OpError::Invalid("--ttl must be longer than zero (leave it out for a permanent entry)".into()))
                }
                Err(hint) => Err(OpError::Invalid(format!("--ttl {t:?} is not a duration; {hint}"))),
            },
        }
    }

    /// `voipwall block` / `voipwall allow`.
    pub fn add(&mut self, kind: ListKind, req: &ListChange, who: &str) -> Result<Reply, OpError> {
        let nets = Self::parse_cidrs(req)?;
        let expires = Self::parse_ttl(&req.ttl)?;
        if kind == ListKind::Block && !req.force {
            let local = system::local_addrs();
            for net in &nets {
                if let Some(a) = local.iter().find(|a| net.contains(*a)) {
                    return Err(OpError::Invalid(format!(
                        "{net} holds this host's own address {a}; blocking it would cut the host off (use --force if you mean it)"
                    )));
                }
                if let Some(ip) = req.ssh_client.filter(|ip| net.contains(ip)) {
                    return Err(OpError::Invalid(format!(
                        "{net} holds your SSH client address {ip}; blocking it would cut your session (use --force if you mean it)"
                    )));
                }
            }
        }
        let entry = ManualEntry {
            reason: req.reason.as_deref().map(Into::into),
            who: who.into(),
            created: unix_now(),
            expires,
        };
        let saved = self.lists.checkpoint(nets.iter().map(|n| (kind, *n)).collect::<Vec<_>>());
        let diff = self.lists.add_manual(kind, &nets, entry.clone());
        if self.snapshot_due(nets.len()) {
            // A bulk change: serialize and fsync the new snapshot on another core while the
            // kernel entries go in; it is put in place only once they all are.
            let snapshot = self.lists.persisted();
            let path = self.state_dir.join("lists.json");
            let staging = std::thread::spawn(move || state::stage_json_compact(&path, &snapshot));
            let kernel = self.write_diff(&diff);
            let staged = staging.join().unwrap_or_else(|_| Err(std::io::Error::other("the snapshot writer panicked")));
            let result = match (kernel, staged) {
                (Err(e), staged) => {
                    if let Ok(s) = staged {
                        s.discard();
                    }
                    self.lists.rollback(saved);
                    return Err(e);
                }
                (Ok(()), staged) => staged.and_then(state::Staged::commit),
            };
            let result = result
                .map_err(|e| OpError::Runtime(format!("persisting lists in {}: {e}", self.state_dir.display())))
                .and_then(|()| {
                    self.journal.reset().map_err(|e| OpError::Runtime(format!("resetting the list journal: {e}")))
                });
            if let Err(e) = result {
                // Not durable, so not done: take the change back.
                self.revert(&diff, saved);
                return Err(e);
            }
        } else {
            if let Err(e) = self.write_diff(&diff) {
                self.lists.rollback(saved);
                return Err(e);
            }
            if let Err(e) = self.record(ListOp::Add { list: kind, cidrs: nets.clone(), entry }) {
                // Not durable, so not done: take the change back.
                self.revert(&diff, saved);
                return Err(e);
            }
        }
        let verb = if kind == ListKind::Block { "blocked" } else { "allowed" };
        let until = expires.map_or("permanently".to_string(), |e| format!("until {}", rfc3339(e)));
        let shown = summarize(&nets);
        info!(action = verb, cidrs = %shown, count = nets.len(), ttl = ?req.ttl, reason = ?req.reason, who = %who, "list change");
        let list: Vec<String> = nets.iter().take(1000).map(ToString::to_string).collect();
        Ok(Reply::new(
            format!("{verb} {shown} {until}"),
            json!({ "action": verb, "count": nets.len(), "cidrs": list, "expires": expires }),
        ))
    }

    /// `voipwall unblock` / `voipwall disallow`.
    pub fn remove(&mut self, kind: ListKind, req: &ListChange, who: &str) -> Result<Reply, OpError> {
        let nets = Self::parse_cidrs(req)?;
        let saved = self.lists.checkpoint(nets.iter().map(|n| (kind, *n)).collect::<Vec<_>>());
        let mut diff = KernelDiff::default();
        let mut unbans = Vec::new();
        let mut removed = Vec::new();
        for net in &nets {
            let unban: Vec<IpNet> = if kind == ListKind::Block { self.bans.within(net) } else { Vec::new() };
            match self.lists.remove_manual(kind, net) {
                Ok(d) => {
                    diff.extend(d);
                    removed.push(*net);
                }
                Err(RemoveError::Absent) if !unban.is_empty() => {}
                Err(RemoveError::Absent) => {
                    self.lists.rollback(saved);
                    let what =
                        if kind == ListKind::Block { "neither blocked nor banned" } else { "not on the allow list" };
                    return Err(OpError::Invalid(format!("{net} is {what}; `voipwall list` shows the entries")));
                }
                Err(e @ RemoveError::PolicyOnly) => {
                    self.lists.rollback(saved);
                    return Err(OpError::Invalid(format!("{net} {e}")));
                }
            }
            unbans.extend(unban);
        }
        if kind == ListKind::Allow
            && !req.force
            && let Some(ip) = req.ssh_client
        {
            let (allow, block) = self.all_lists();
            if !self.compiled.admits_ssh_from(ip, &allow, &block) {
                self.lists.rollback(saved);
                return Err(OpError::Invalid(format!(
                    "removing {} would cut your SSH session from {ip} (it is only admitted by the allow list); use --force if you mean it",
                    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                )));
            }
        }
        if let Err(e) = self.write_diff(&diff) {
            self.lists.rollback(saved);
            return Err(e);
        }
        for source in &unbans {
            self.dp.ban_remove(&key_of(source))?;
            self.bans.remove(source);
            self.bans_dirty = true;
            info!(source = %source, who = %who, "unbanned by operator");
        }
        if !unbans.is_empty() && self.bans.is_empty() {
            self.dp.clear_bans_present()?;
        }
        if !removed.is_empty()
            && let Err(e) = self.record(ListOp::Remove { list: kind, cidrs: removed })
        {
            self.revert(&diff, saved);
            return Err(e);
        }
        self.persist_bans();
        let verb = if kind == ListKind::Block { "unblocked" } else { "disallowed" };
        let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
        info!(action = verb, cidrs = %list.join(" "), who = %who, "list change");
        let mut text = format!("{verb} {}", list.join(" "));
        if !unbans.is_empty() {
            let _ = write!(text, " (lifted {} ban{})", unbans.len(), if unbans.len() == 1 { "" } else { "s" });
        }
        Ok(Reply::new(
            text,
            json!({ "action": verb, "cidrs": list, "unbanned": unbans.iter().map(ToString::to_string).collect::<Vec<_>>() }),
        ))
    }

    /// A ban event from the kernel.
    pub fn on_ban_event(&mut self, ev: &BanEvent) {
        let now_mono = monotonic_ns();
        let now = unix_now();
        let class = self.compiled.class_name(ev.class);
        let source = source_of(&ev.addr, ev.prefix_len);
        let until = mono_to_unix(ev.expires_ns, now_mono, now);
        // The SIP checks report a count (matches, failed authentications, unanswered
        // challenges) where the rate limiter reports a packet rate.
        let sip_check = common::sip::CLASS_NAMES.iter().any(|(c, _)| *c == ev.class);
        let dry = ev.flags & BAN_DRY_RUN != 0;
        let msg = if dry { "would ban (dry run)" } else { "banned" };
        if sip_check {
            warn!(target: "voipwall::ban", source = %source, class = %class, count = ev.rate_pps, until = %rfc3339(until), dry_run = dry, "{msg}");
        } else {
            warn!(target: "voipwall::ban", source = %source, class = %class, level = ev.level, rate_pps = ev.rate_pps, until = %rfc3339(until), dry_run = dry, "{msg}");
        }
        if dry {
            return;
        }
        *self.bans_total.entry((class.clone(), ev.level)).or_default() += 1;
        self.bans.insert(BanRecord {
            source,
            class,
            level: ev.level,
            rate_pps: ev.rate_pps,
            created: now,
            expires: until,
        });
        self.bans_dirty = true;
    }

    /// Remove expired bans and list entries; persist what changed. Runs every second.
    pub fn sweep(&mut self) {
        let now = unix_now();
        let expired_bans = self.bans.expired(now);
        let had_bans = !expired_bans.is_empty();
        for source in expired_bans {
            if let Err(e) = self.dp.ban_remove(&key_of(&source)) {
                error!(source = %source, error = %e, "removing an expired ban failed");
                continue;
            }
            if let Some(b) = self.bans.remove(&source) {
                info!(target: "voipwall::ban", source = %source, class = %b.class, level = b.level, "ban expired");
            }
            self.bans_dirty = true;
        }
        if had_bans
            && self.bans.is_empty()
            && let Err(e) = self.dp.clear_bans_present()
        {
            error!(error = %e, "clearing the bans-present flag failed");
        }
        let expired = self.lists.expired(now);
        if !expired.is_empty() {
            for (kind, net) in &expired {
                if let Ok(diff) = self.lists.remove_manual(*kind, net) {
                    for c in diff.all() {
                        if let Err(e) = self.dp.source_write(c) {
                            error!(cidr = %c.net, error = %e, "removing an expired entry failed");
                        }
                    }
                }
                info!(cidr = %net, list = ?kind, "list entry expired");
            }
            for kind in [ListKind::Allow, ListKind::Block] {
                let cidrs: Vec<IpNet> = expired.iter().filter(|(k, _)| *k == kind).map(|(_, n)| *n).collect();
                if !cidrs.is_empty()
                    && let Err(e) = self.record(ListOp::Remove { list: kind, cidrs })
                {
                    // Expired entries are dropped again at the next start anyway.
                    error!(error = %e, "persisting expired list entries failed");
                }
            }
        }
        self.persist_bans();
    }

    /// `voipwall list`.
    pub fn list(&self, which: Option<&str>) -> Result<Reply, OpError> {
        let which = which.unwrap_or("all");
        if !matches!(which, "all" | "blocked" | "allowed" | "banned") {
            return Err(OpError::Invalid(format!("`{which}` is not a list; write blocked, allowed or banned")));
        }
        let mut data = serde_json::Map::new();
        let mut text = String::new();
        let fmt_manual = |m: &Option<ManualEntry>| match m {
            Some(m) => format!(
                "{}  {}  by {}  {}",
                m.expires.map_or("permanent".to_string(), |e| format!("until {}", rfc3339(e))),
                m.reason.as_deref().unwrap_or("-"),
                m.who,
                rfc3339(m.created)
            ),
            None => String::new(),
        };
        for (name, kind) in [("blocked", ListKind::Block), ("allowed", ListKind::Allow)] {
            if which == "all" || which == name {
                let rows = self.lists.rows(kind);
                let _ = writeln!(text, "{name} ({}):", rows.len());
                for r in &rows {
                    let _ = writeln!(text, "  {:<43} {:<14} {}", r.cidr.to_string(), r.origin, fmt_manual(&r.manual));
                }
                data.insert(name.into(), serde_json::to_value(&rows).expect("serializable"));
            }
        }
        if which == "all" || which == "banned" {
            let rows: Vec<Value> = self
                .bans
                .records()
                .iter()
                .map(|b| json!({ "cidr": b.source, "origin": "auto", "class": b.class, "level": b.level, "rate_pps": b.rate_pps, "created": b.created, "expires": b.expires }))
                .collect();
            let _ = writeln!(text, "banned ({}):", rows.len());
            for b in self.bans.records() {
                let _ = writeln!(
                    text,
                    "  {:<43} auto           until {}  class {} level {}  {} pps",
                    b.source.to_string(),
                    rfc3339(b.expires),
                    b.class,
                    b.level,
                    b.rate_pps
                );
            }
            data.insert("banned".into(), Value::Array(rows));
        }
        Ok(Reply::new(text, Value::Object(data)))
    }

    /// Counter sums.
    pub fn counters(&self) -> Result<Counters, OpError> {
        Ok(self.dp.counters()?)
    }

    /// `voipwall stats`.
    pub fn stats(&self) -> Result<Reply, OpError> {
        let c = self.dp.counters()?;
        let rules = self.dp.rule_counters(self.compiled.rule_names.len())?;
        let mut text = String::from("verdict     reason                packets         bytes\n");
        let mut rows = Vec::new();
        for v in 0..verdict::COUNT {
            for r in 0..reason::COUNT {
                let x = c.get(v, r);
                if x.packets == 0 {
                    continue;
                }
                let _ = writeln!(
                    text,
                    "{:<11} {:<20} {:>9} {:>13}",
                    verdict::NAMES[v as usize],
                    reason::NAMES[r as usize],
                    x.packets,
                    x.bytes
                );
                rows.push(json!({ "verdict": verdict::NAMES[v as usize], "reason": reason::NAMES[r as usize], "packets": x.packets, "bytes": x.bytes }));
            }
        }
        let mut rule_rows = Vec::new();
        let _ = writeln!(text, "\nrule                                   pass       drop  would_drop");
        for (id, counts) in rules.iter().enumerate().skip(1) {
            let name = &self.compiled.rule_names[id];
            let _ = writeln!(
                text,
                "{:<36} {:>8} {:>10} {:>11}",
                name, counts[0].packets, counts[1].packets, counts[2].packets
            );
            rule_rows.push(json!({ "rule": name, "pass": counts[0].packets, "drop": counts[1].packets, "would_drop": counts[2].packets }));
        }
        Ok(Reply::new(text, json!({ "counters": rows, "rules": rule_rows })))
    }

    /// `voipwall top`: sources by current rate (walks the rate table).
    pub fn top(&self, limit: usize) -> Result<Reply, OpError> {
        let now = monotonic_ns();
        let prefix = self.policy.options.ipv6_prefix;
        let mut rows: Vec<(IpNet, String, u32, u32)> = self
            .dp
            .rates()?
            .into_iter()
            .map(|(k, st)| {
                let class = self.compiled.class_name(k.class as u8);
                // A window older than two seconds is a source that went quiet.
                let pps =
                    if now.saturating_sub(st.window_start_ns) > 2_000_000_000 { 0 } else { observed_pps(&st, now) };
                (source_of(&k.addr, prefix), class, pps, st.window_packets)
            })
            .collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        rows.truncate(limit);
        let mut text = format!("{:<43} {:<14} {:>10}\n", "source", "class", "pps");
        for (s, c, pps, _) in &rows {
            let _ = writeln!(text, "{:<43} {:<14} {:>10}", s.to_string(), c, pps);
        }
        let data: Vec<Value> = rows
            .iter()
            .map(|(s, c, pps, w)| json!({ "source": s, "class": c, "pps": pps, "window_packets": w }))
            .collect();
        Ok(Reply::new(text, json!({ "sources": data })))
    }

    /// Entries vs capacity per map, without walking any large map. The kernel-written LRU tables
    /// only fill up, so their entries are what the program created, capped at capacity.
    pub fn map_fill(&self) -> Vec<(&'static str, Option<u64>, u32)> {
        let cap = |n| self.dp.capacity_of(n).unwrap_or(0);
        let stats = self.dp.stats().ok();
        let created = |slot: u32, map| stats.map(|s| s[slot as usize].min(cap(map) as u64));
        let (v4, v6) = self.lists.kernel_len();
        vec![
            (maps::SOURCES_V4, Some(v4 as u64), cap(maps::SOURCES_V4)),
            (maps::SOURCES_V6, Some(v6 as u64), cap(maps::SOURCES_V6)),
            (maps::SETS_V4, Some(self.compiled.sets_v4.len() as u64), cap(maps::SETS_V4)),
            (maps::SETS_V6, Some(self.compiled.sets_v6.len() as u64), cap(maps::SETS_V6)),
            (maps::BANS, Some(self.bans.len() as u64), cap(maps::BANS)),
            (maps::RATES, created(stat::RATES_CREATED, maps::RATES), cap(maps::RATES)),
            (maps::FLOWS, created(stat::FLOWS_CREATED, maps::FLOWS), cap(maps::FLOWS)),
            (maps::FRAGS, created(stat::FRAGS_CREATED, maps::FRAGS), cap(maps::FRAGS)),
            (maps::SIP_PEERS, created(stat::SIP_PEERS_CREATED, maps::SIP_PEERS), cap(maps::SIP_PEERS)),
        ]
    }

    /// `voipwall status`.
    pub fn status(&self) -> Result<Reply, OpError> {
        let a = self.attachment.as_ref();
        let dry = self.compiled.config.flags & POLICY_DRY_RUN != 0;
        let fill: Vec<Value> =
            self.map_fill().into_iter().map(|(m, e, c)| json!({ "map": m, "entries": e, "capacity": c })).collect();
        let data = json!({
            "iface": self.iface,
            "attached": a.is_some(),
            "xdp_mode": a.map(|a| a.mode.as_str()),
            "program_id": a.map(|a| a.program_id),
            "adopted": a.map(|a| a.adopted),
            "attached_since": rfc3339(self.attached_since),
            "policy": {
                "path": self.policy.path,
                "sha256": self.policy.sha256,
                "roles": self.policy.roles,
                "generation": self.dp.generation(),
                "loaded_at": rfc3339(self.policy_loaded_at),
                "pending_confirmation": self.pending.as_ref().map(|p| p.deadline.saturating_duration_since(Instant::now()).as_secs_f64()),
            },
            "dry_run": dry,
            "ssh": self.compiled.ssh,
            "maps": fill,
            "reloads": { "ok": self.reloads.ok, "error": self.reloads.error, "rolled_back": self.reloads.rolled_back },
        });
        let mut text = String::new();
        let _ = writeln!(text, "interface      {}", self.iface);
        match a {
            Some(a) => {
                let _ = writeln!(
                    text,
                    "xdp            attached ({} mode, program id {}{}) since {}",
                    a.mode.as_str(),
                    a.program_id,
                    if a.adopted { ", adopted" } else { "" },
                    rfc3339(self.attached_since)
                );
            }
            None => {
                let _ = writeln!(text, "xdp            NOT attached");
            }
        }
        let _ = writeln!(text, "policy         {} (sha256 {})", self.policy.path, self.policy.sha256);
        let _ = writeln!(
            text,
            "roles          {}",
            if self.policy.roles.is_empty() { "-".into() } else { self.policy.roles.join(", ") }
        );
        let _ = writeln!(text, "generation     {}", self.dp.generation());
        let _ = writeln!(text, "dry run        {}", if dry { "yes (nothing is dropped)" } else { "no" });
        if let Some(p) = &self.pending {
            let _ = writeln!(
                text,
                "pending        reload rolls back in {:.0}s unless confirmed",
                p.deadline.saturating_duration_since(Instant::now()).as_secs_f64()
            );
        }
        let _ = writeln!(
            text,
            "reloads        ok {} / error {} / rolled back {}",
            self.reloads.ok, self.reloads.error, self.reloads.rolled_back
        );
        let _ = writeln!(text, "maps           entries / capacity");
        for (m, e, c) in self.map_fill() {
            let _ = writeln!(text, "  {:<13} {:>9} / {}", m, e.map_or("-".to_string(), |e| e.to_string()), c);
        }
        Ok(Reply::new(text, data))
    }

    /// `voipwall policy show`.
    pub fn policy_show(&self) -> Reply {
        let mut text = format!("# {} (sha256 {})\n", self.policy.path, self.policy.sha256);
        text.push_str(&self.policy.text);
        Reply::new(
            text,
            json!({ "path": self.policy.path, "sha256": self.policy.sha256, "policy": serde_json::to_value(&self.policy).expect("serializable"), "rules": self.compiled.rule_names[1..].to_vec() }),
        )
    }
}
