//! The running firewall: the data plane, the policy it enforces, the source lists and the ban
//! mirror, and every operation on them: start (load, reconcile, attach or adopt), reload
//! (atomic, with commit-confirmed rollback), list changes with their lockout guards, bans,
//! sweeping, and the facts behind the read-only views (laid out by [`crate::render`]).
//! Synchronous: the async services call into it under one mutex, so operations never
//! interleave.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{BAN_DRY_RUN, BanEntry, BanEvent, POLICY_DRY_RUN, maps, rate::observed_pps, stat};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{error, info, warn};

use crate::{
    bans::{BanRecord, Bans, key_of, mono_to_unix, source_of, unix_to_mono},
    dataplane::{AttachedMode, Attachment, Counters, Dataplane, LoadOptions, XdpModeChoice, monotonic_ns},
    fleet::{
        Fleet, Protected,
        lapi::{Alert, LapiError, Stream},
    },
    peers,
    policy::{self, CompiledPolicy, Policy, SshReach, fleet::Crowdsec},
    ratelog::RateLog,
    render::{self, MapFill, TopRow, Which, summarize},
    sources::{FleetEntry, ListKind, Lists, ManualEntry, RemoveError, SourceTables, Sources},
    state::{self, StateError, rfc3339, unix_now},
    system,
};
pub use crate::{error::OpError, render::Reply};

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
    /// Move unreadable state files aside and rebuild from the pinned maps (`--recover`).
    pub recover: bool,
}

/// The CIDRs of a `--file`: one per line, `#` comments, blank lines skipped; sorted, without
/// duplicates. An error names the line (`origin:LINE`).
pub fn cidr_lines(text: &str, origin: &str) -> Result<Vec<IpNet>, OpError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(policy::parse_cidr(line).map_err(|(m, h)| OpError::Invalid(format!("{origin}:{}: {m}; {h}", i + 1)))?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
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

/// What `voipwall reload` (or SIGHUP) asks for.
#[derive(Clone, Debug, Default)]
pub struct ReloadRequest {
    /// Switch to this policy file (default: the current one).
    pub path: Option<PathBuf>,
    /// Roll back unless confirmed within this time.
    pub confirm_within: Option<Duration>,
    /// Apply even a policy that closes SSH to everyone or cuts the caller's session.
    pub allow_lockout: bool,
    /// The caller's SSH client address, for the lockout guard.
    pub caller: Option<IpAddr>,
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

const ATTACHMENT_FILE: &str = "attachment.json";
const BANS_FILE: &str = "bans.json";

pub struct Firewall {
    pub iface: String,
    dp: Dataplane,
    attachment: Option<Attachment>,
    policy: Policy,
    compiled: CompiledPolicy,
    policy_path: Option<PathBuf>,
    force_dry_run: bool,
    sources: Sources,
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
    /// Known peers by proof and the classes over their unknown budget.
    pub peers: peers::Watch,
    /// `[fleet.crowdsec]`, when the policy has it.
    fleet: Option<Fleet>,
    /// Per-event lines (bans, expiries, their errors) at most [`LOG_LINES_PER_S`] per second
    /// each; the rest are counted and summed up.
    log: RateLog,
    /// `stat::EVENTS_LOST` when the sweep last looked.
    events_lost: Option<u64>,
    /// Media pinholes: the learner and its counts.
    pub pinholes: crate::pinholes::Pinholes,
}

/// Per-event log lines of one kind written per second before the rest are only counted.
pub const LOG_LINES_PER_S: u32 = 20;

fn load_policy(path: Option<&Path>, force_dry_run: bool) -> Result<(Policy, CompiledPolicy), OpError> {
    let (p, mut c) = match path {
        Some(p) => policy::load(p)?,
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

impl Firewall {
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
            .map_err(StateError::at("creating the state folder", &opts.state_dir))?;
        let now = unix_now();
        let bans_path = opts.state_dir.join(BANS_FILE);
        // Bans set aside are rebuilt from the kernel's table by `merge_bans`.
        let ban_records: Vec<BanRecord> =
            state::read_state("reading the bans", &bans_path, opts.recover)?.into_value().unwrap_or_default();

        let mut dp = Dataplane::load(&LoadOptions { pin_dir: Some(opts.pin_dir.clone()), capacity: policy.capacity })?;
        if dp.adopted_maps {
            info!(pin_dir = %opts.pin_dir.display(), "adopting pinned maps");
        }
        let tables = SourceTables::new(dp.take_source_maps().expect("a freshly loaded data plane has its source maps"));
        // The policy's static lists join the restored manual entries; the kernel tables are
        // brought in line with them around the first generation flip.
        let adopted = dp.adopted_maps;
        let recover = opts.recover.then_some(adopted);
        let mut sources = Sources::open(&opts.state_dir, tables, &compiled.allow, &compiled.block, now, recover)?;
        sources.reconcile(adopted, || dp.apply_policy(&compiled))?;

        let mut fw = Self {
            iface: opts.iface.clone(),
            dp,
            attachment: None,
            policy,
            compiled,
            policy_path: opts.policy_path.clone(),
            force_dry_run: opts.force_dry_run,
            sources,
            bans: Bans::restore(ban_records, now),
            bans_dirty: true,
            state_dir: opts.state_dir.clone(),
            pending: None,
            reloads: ReloadStats::default(),
            bans_total: BTreeMap::new(),
            attached_since: now,
            policy_loaded_at: now,
            peers: peers::Watch::default(),
            fleet: None,
            log: RateLog::new(LOG_LINES_PER_S, Duration::from_secs(1)),
            events_lost: None,
            pinholes: crate::pinholes::Pinholes::new(),
        };
        fw.configure_fleet();
        fw.merge_bans(now)?;
        if !adopted {
            // A new table (after a reboot): the known peers of the state folder come back, so
            // the phones of a host rebooted during an attack stay known.
            let ttl = fw.policy.options.known_ttl.as_secs();
            match peers::restore(&mut fw.dp, &fw.state_dir, ttl, opts.recover) {
                Ok(0) => {}
                Ok(n) => info!(peers = n, "known peers restored from the state folder"),
                Err(peers::RestoreError::State(e)) => return Err(e.into()),
                Err(peers::RestoreError::Dataplane(e)) => return Err(e.into()),
            }
        }
        fw.attach(opts, now)?;
        fw.persist_bans();
        Ok(fw)
    }

    /// Bans: the kernel keeps bans raised while no daemon ran; the state file keeps bans across
    /// reboots. Merge both.
    fn merge_bans(&mut self, now: u64) -> Result<(), OpError> {
        let now_mono = monotonic_ns();
        for (key, entry) in self.dp.bans()? {
            if entry.expires_ns > now_mono {
                let class = self.compiled.class_name(entry.class);
                self.bans.learn(&key, &entry, self.policy.options.ipv6_prefix, class, now_mono, now);
            }
        }
        for rec in self.bans.records() {
            let key = key_of(&rec.source);
            if self.dp.ban_get(&key)?.is_none() {
                let entry = BanEntry {
                    expires_ns: unix_to_mono(rec.expires, now_mono, now),
                    rate_pps: rec.rate_pps,
                    class: 0,
                    level: rec.level,
                    flags: if rec.source.addr().is_ipv6() { common::BAN_IPV6 } else { 0 },
                    _pad: Default::default(),
                };
                self.dp.ban_insert(&key, &entry)?;
            }
        }
        Ok(())
    }

    /// Attach, or adopt the program a previous daemon left attached.
    fn attach(&mut self, opts: &StartOptions, now: u64) -> Result<(), OpError> {
        let path = self.state_dir.join(ATTACHMENT_FILE);
        let remembered: Option<AttachmentState> = match state::read_json(&path) {
            Ok(r) => r,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the remembered attachment is unreadable; assuming native mode");
                None
            }
        };
        let attachment = self.dp.attach(&opts.iface, opts.xdp_mode, remembered.as_ref().map(|a| a.mode))?;
        if let Some(old) = attachment.replaced {
            self.attached_since = remembered.map_or(now, |a| a.since);
            info!(iface = %opts.iface, from = old, to = attachment.program_id, "took the attached link over and replaced its program without detaching");
        } else if attachment.adopted {
            self.attached_since = remembered.map_or(now, |a| a.since);
            info!(iface = %opts.iface, program_id = attachment.program_id, "adopted the attached program without detaching");
        } else {
            if let Err(e) = state::write_json(&path, &AttachmentState { mode: attachment.mode, since: now }) {
                // Only `status` after a restart loses the mode and the time; filtering is unaffected.
                warn!(path = %path.display(), error = %e, "remembering the attachment failed");
            }
            info!(iface = %opts.iface, mode = attachment.mode.as_str(), program_id = attachment.program_id, "attached");
        }
        self.attachment = Some(attachment);
        Ok(())
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
                let path = self.state_dir.join(ATTACHMENT_FILE);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(path = %path.display(), error = %e, "removing the attachment record failed");
                }
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
        self.sources.lists()
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

    fn persist_bans(&mut self) {
        if !self.bans_dirty {
            return;
        }
        let path = self.state_dir.join(BANS_FILE);
        match state::write_json(&path, &self.bans.records()) {
            Ok(()) => self.bans_dirty = false,
            Err(e) => error!(path = %path.display(), error = %e, "persisting bans failed; will retry"),
        }
    }

    /// Install a policy: new list entries, generation flip, retired list entries. On error the
    /// running policy and lists are left as they were.
    fn install(&mut self, policy: Policy, compiled: CompiledPolicy) -> Result<(), OpError> {
        let dp = &mut self.dp;
        self.sources.replace_policy(&compiled.allow, &compiled.block, || dp.apply_policy(&compiled))?;
        self.policy = policy;
        self.compiled = compiled;
        self.policy_loaded_at = unix_now();
        self.configure_fleet();
        Ok(())
    }

    /// Follow the policy's `[fleet.crowdsec]`: start, reconfigure, or (the section removed) stop
    /// the fleet and remove its entries.
    fn configure_fleet(&mut self) {
        match (self.policy.fleet.clone(), &mut self.fleet) {
            (Some(cfg), Some(f)) => f.reconfigure(Arc::new(cfg)),
            (Some(cfg), None) => {
                info!(url = %cfg.url, pull = cfg.pull, push = cfg.push, "fleet: CrowdSec LAPI configured");
                self.fleet = Some(Fleet::new(Arc::new(cfg)));
            }
            (None, Some(_)) => {
                self.fleet = None;
                let all: Vec<IpNet> = self.sources.lists().fleet().map(|(n, _)| n).collect();
                match self.sources.apply_fleet(&[], &all) {
                    Ok(()) => info!(entries = all.len(), "fleet: removed from the policy; its entries are gone"),
                    Err(e) => error!(error = %e, "fleet: removing its entries failed"),
                }
            }
            (None, None) => {}
        }
    }

    /// The fleet's configuration, and whether its next pull asks for every decision.
    pub fn fleet_config(&self) -> Option<(Arc<Crowdsec>, bool, u32)> {
        let now = unix_now();
        self.fleet.as_ref().map(|f| (f.cfg.clone(), f.wants_startup(now), f.failures))
    }

    /// Apply one pull of the decision stream (or its failure). Fail-static: an error changes
    /// nothing in the kernel.
    pub fn fleet_pulled(
        &mut self,
        cfg: &Arc<Crowdsec>,
        startup: bool,
        answer: Result<Stream, String>,
        kind: &'static str,
    ) {
        let now = unix_now();
        let Some(fleet) = self.fleet.as_mut().filter(|f| Arc::ptr_eq(&f.cfg, cfg)) else {
            return; // reconfigured meanwhile: the answer belongs to the old configuration
        };
        let stream = match answer {
            Ok(s) => s,
            Err(message) => {
                let since = fleet.status.failing_since.unwrap_or(now);
                fleet.failed(kind, message.clone(), now);
                // One line when the trouble starts, then one a minute: never a line per retry.
                if fleet.warned_at.is_none_or(|t| now >= t + 60) {
                    fleet.warned_at = Some(now);
                    warn!(target: "voipwall::fleet", error = %message, kind, failing_for_s = now - since, "fleet: LAPI pull failed; keeping every entry as it is");
                }
                return;
            }
        };
        let protected = self.protected();
        let current: BTreeMap<IpNet, FleetEntry> = self.sources.lists().fleet().map(|(n, e)| (n, e.clone())).collect();
        let fleet = self.fleet.as_mut().expect("checked above");
        let (plan, change) = fleet.plan(&stream, startup, now, &protected, &current);
        if let Err(e) = self.sources.apply_fleet(&change.add, &change.remove) {
            let fleet = self.fleet.as_mut().expect("checked above");
            fleet.failed("kernel", e.to_string(), now);
            error!(target: "voipwall::fleet", error = %e, "fleet: writing decisions to the kernel failed; nothing changed");
            return;
        }
        let fleet = self.fleet.as_mut().expect("checked above");
        if let Some(since) = fleet.status.failing_since {
            info!(target: "voipwall::fleet", after_s = now - since, "fleet: LAPI answering again; resynchronised");
        }
        fleet.commit(plan, startup, now);
        if !change.add.is_empty() || !change.remove.is_empty() {
            info!(target: "voipwall::fleet", added = change.add.len(), removed = change.remove.len(), startup, "fleet: decisions applied");
        }
    }

    /// What fleet decisions must not block: this host's addresses, `admins` and `cluster`.
    fn protected(&self) -> Protected {
        let nets = ["admins", "cluster"].iter().filter_map(|s| self.policy.sets.get(*s)).flatten().copied().collect();
        Protected { addrs: system::local_addrs(), nets }
    }

    /// Up to `n` of this host's bans waiting for the LAPI.
    pub fn fleet_take(&mut self, n: usize) -> (Option<Arc<Crowdsec>>, Vec<Alert>) {
        match self.fleet.as_mut() {
            Some(f) if f.cfg.push => (Some(f.cfg.clone()), f.take(n)),
            _ => (None, Vec::new()),
        }
    }

    /// The outcome of a push of `alerts`.
    pub fn fleet_pushed(&mut self, alerts: Vec<Alert>, result: Result<(), LapiError>) {
        let Some(f) = self.fleet.as_mut() else { return };
        match result {
            Ok(()) => f.sent(alerts.len()),
            Err(e) => {
                if f.status.last_push_error.is_none() {
                    warn!(target: "voipwall::fleet", error = %e, queued = f.queued() + alerts.len(), "fleet: pushing bans to the LAPI failed; they wait in the queue");
                }
                f.unsent(alerts, &e);
            }
        }
    }

    /// The fleet's state (`None`: no `[fleet.crowdsec]`).
    pub fn fleet(&self) -> Option<&Fleet> {
        self.fleet.as_ref()
    }

    /// Every allow/block CIDR in force (policy and manual), for the SSH guard.
    fn all_lists(&self) -> (Vec<IpNet>, Vec<IpNet>) {
        let lists = self.sources.lists();
        (lists.cidrs(ListKind::Allow), lists.cidrs(ListKind::Block))
    }

    /// `voipwall reload`: atomic; on any error the old policy keeps running.
    pub fn reload(&mut self, req: ReloadRequest) -> Result<Reply, OpError> {
        let result = self.try_reload(req);
        match &result {
            Ok(_) => self.reloads.ok += 1,
            Err(e) => {
                self.reloads.error += 1;
                warn!(error = %e, "policy reload refused; the previous policy keeps running");
            }
        }
        result
    }

    fn try_reload(&mut self, req: ReloadRequest) -> Result<Reply, OpError> {
        let ReloadRequest { path, confirm_within, allow_lockout, caller } = req;
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
        if self.pending.as_ref().is_none_or(|p| p.deadline > now) {
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
            out.extend(cidr_lines(&text, &path.display().to_string())?);
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
        let started = Instant::now();
        let nets = Self::parse_cidrs(req)?;
        let parsed = started.elapsed();
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
        let staging = Instant::now();
        let mut staged = self.sources.stage(kind, &nets);
        self.sources.stage_add(&mut staged, nets.clone(), entry);
        let lists = staging.elapsed();
        self.sources.commit(staged)?;
        self.log_snapshot_times(nets.len(), parsed, lists, started);
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

    /// For a change written as a new snapshot (a bulk change, or one that found the journal
    /// full), log where its time went: reading and parsing the CIDRs, updating the lists, the
    /// kernel writes (the trie on its own thread, the IPv4 levels beside it) and the snapshot
    /// (written on another thread meanwhile).
    fn log_snapshot_times(&mut self, count: usize, parsed: Duration, lists: Duration, started: Instant) {
        let Some(t) = self.sources.take_snapshot_times() else { return };
        let ms = |d: Duration| (d.as_secs_f64() * 1e3).round() as u64;
        info!(
            count,
            total_ms = ms(started.elapsed()),
            parse_ms = ms(parsed),
            lists_ms = ms(lists),
            kernel_ms = ms(t.kernel),
            trie_ms = ms(t.written.trie),
            levels_ms = ms(t.written.levels),
            snapshot_ms = ms(t.snapshot),
            "list change timing"
        );
    }

    /// `voipwall unblock` / `voipwall disallow`.
    pub fn remove(&mut self, kind: ListKind, req: &ListChange, who: &str) -> Result<Reply, OpError> {
        let started = Instant::now();
        let nets = Self::parse_cidrs(req)?;
        let parsed = started.elapsed();
        let mut staged = self.sources.stage(kind, &nets);
        let mut unbans = Vec::new();
        for net in &nets {
            let unban: Vec<IpNet> = if kind == ListKind::Block { self.bans.within(net) } else { Vec::new() };
            match self.sources.stage_remove(&mut staged, net) {
                Ok(()) => {}
                Err(RemoveError::Absent) if !unban.is_empty() => {}
                Err(RemoveError::Absent) => {
                    self.sources.abort(staged);
                    let what =
                        if kind == ListKind::Block { "neither blocked nor banned" } else { "not on the allow list" };
                    return Err(OpError::Invalid(format!("{net} is {what}; `voipwall list` shows the entries")));
                }
                Err(e @ (RemoveError::PolicyOnly | RemoveError::FleetOnly)) => {
                    self.sources.abort(staged);
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
                self.sources.abort(staged);
                return Err(OpError::Invalid(format!(
                    "removing {} would cut your SSH session from {ip} (it is only admitted by the allow list); use --force if you mean it",
                    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                )));
            }
        }
        let lists = started.elapsed() - parsed;
        self.sources.commit(staged)?;
        self.log_snapshot_times(nets.len(), parsed, lists, started);
        for source in &unbans {
            self.dp.ban_remove(&key_of(source))?;
            self.bans.remove(source);
            self.bans_dirty = true;
            info!(source = %source, who = %who, "unbanned by operator");
        }
        if !unbans.is_empty() && self.bans.is_empty() {
            self.dp.clear_bans_present()?;
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
    /// `[capture]` of the policy in force.
    pub fn capture_config(&self) -> Option<crate::policy::capture::Capture> {
        self.policy.capture.clone()
    }

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
        if let Some(suppressed) = self.log.allow("ban") {
            if sip_check {
                warn!(target: "voipwall::ban", source = %source, class = %class, count = ev.rate_pps, until = %rfc3339(until), dry_run = dry, suppressed, "{msg}");
            } else {
                warn!(target: "voipwall::ban", source = %source, class = %class, level = ev.level, rate_pps = ev.rate_pps, until = %rfc3339(until), dry_run = dry, suppressed, "{msg}");
            }
        }
        if dry {
            return;
        }
        *self.bans_total.entry((class.clone(), ev.level)).or_default() += 1;
        if let Some(f) = self.fleet.as_mut() {
            let detail = if sip_check {
                format!("{class}, count {}", ev.rate_pps)
            } else {
                format!("{class} level {}, {} packets/s", ev.level, ev.rate_pps)
            };
            f.ban(source, &class, &detail, now, until);
        }
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

    /// A call-signaling record from the data plane (the pinhole learner).
    pub fn on_signal(&mut self, rec: &common::SignalRecord) {
        self.pinholes.on_signal(rec, &mut self.dp, &self.policy, &self.compiled);
    }

    /// `voipwall pinhole add`: refused for a port that is not in pinhole mode (it would change
    /// nothing there).
    pub fn pinhole_add(&mut self, peer: IpAddr, port: u16, ttl: Option<Duration>) -> Result<Reply, OpError> {
        if !crate::pinholes::in_pinhole_mode(&self.compiled, port) {
            return Err(OpError::Invalid(format!(
                "{port}/udp is not in pinhole mode (set media = \"pinhole\" on its rule, or [media] mode = \"pinhole\")"
            )));
        }
        self.pinholes.add(&mut self.dp, peer, port, ttl).map_err(OpError::Invalid)
    }

    /// `voipwall pinhole del`.
    pub fn pinhole_del(&mut self, peer: IpAddr, port: u16) -> Result<Reply, OpError> {
        self.pinholes.del(&mut self.dp, peer, port).map_err(OpError::Invalid)
    }

    /// `voipwall pinhole list`.
    pub fn pinhole_list(&self) -> Result<Reply, OpError> {
        self.pinholes.list(&self.dp).map_err(OpError::Invalid)
    }

    /// Remove expired bans and list entries; persist what changed. Runs every second.
    pub fn sweep(&mut self) {
        self.pinholes.sweep(&mut self.dp);
        let now = unix_now();
        let expired_bans = self.bans.expired(now);
        let had_bans = !expired_bans.is_empty();
        for source in expired_bans {
            if let Err(e) = self.dp.ban_remove(&key_of(&source)) {
                if let Some(suppressed) = self.log.allow("ban_remove_failed") {
                    error!(source = %source, error = %e, suppressed, "removing an expired ban failed");
                }
                continue;
            }
            if let Some(b) = self.bans.remove(&source)
                && let Some(suppressed) = self.log.allow("ban_expired")
            {
                info!(target: "voipwall::ban", source = %source, class = %b.class, level = b.level, suppressed, "ban expired");
            }
            self.bans_dirty = true;
        }
        if had_bans
            && self.bans.is_empty()
            && let Err(e) = self.dp.clear_bans_present()
        {
            error!(error = %e, "clearing the bans-present flag failed");
        }
        self.sources.expire(now, &mut self.log);
        // Ban events the program could not hand over (ring buffer full): one line per sweep at
        // most, with the count (the program itself writes no line per lost event).
        if let Ok(lost) = self.dp.stat(stat::EVENTS_LOST) {
            if let Some(before) = self.events_lost
                && lost > before
            {
                warn!(
                    lost = lost - before,
                    "ban events lost since the last second (ring buffer full): those bans are enforced and expire in the kernel, but are not logged, pushed to the fleet or kept across a reboot"
                );
            }
            self.events_lost = Some(lost);
        }
        let window = self.log.window().as_secs_f64();
        for (kind, n) in self.log.flush() {
            warn!(
                kind,
                suppressed = n,
                "{n} more `{kind}` log lines in the last {window} s were not written (at most {LOG_LINES_PER_S} per second each)"
            );
        }
        let ended = self.sources.expire_fleet(now);
        if ended > 0 {
            info!(target: "voipwall::fleet", entries = ended, "fleet: decisions ended; entries removed");
        }
        if let Some(f) = self.fleet.as_mut() {
            f.expire(now);
        }
        self.persist_bans();
        match self.dp.budget_drops() {
            Ok(drops) => self.peers.budgets(drops, |id| self.compiled.class_name(id)),
            Err(e) => error!(error = %e, "reading the unknown budgets failed"),
        }
        if self.peers.snapshot_due(now) {
            let result = self
                .known_peers()
                .map_err(OpError::from)
                .and_then(|live| self.peers.snapshot(&self.state_dir, &live, now).map_err(OpError::from));
            if let Err(e) = result {
                error!(error = %e, "keeping the known peers failed; retrying at the next snapshot");
            }
        }
    }

    /// The live known peers (walks the table).
    pub fn known_peers(&self) -> Result<Vec<peers::KnownRecord>, crate::dataplane::DataplaneError> {
        peers::live(&self.dp, self.policy.options.ipv6_prefix, self.policy.options.known_ttl.as_secs())
    }

    /// `voipwall list`.
    pub fn list(&self, which: Option<&str>) -> Result<Reply, OpError> {
        let Some(which) = Which::parse(which) else {
            return Err(OpError::Invalid(format!(
                "`{}` is not a list; write blocked, allowed, banned or known",
                which.unwrap_or_default()
            )));
        };
        if which == Which::Known {
            return Ok(render::known(&self.known_peers()?));
        }
        let lists = self.sources.lists();
        Ok(render::list(which, |kind| lists.rows(kind), &self.bans.records()))
    }

    /// Counter sums.
    pub fn counters(&self) -> Result<Counters, OpError> {
        Ok(self.dp.counters()?)
    }

    /// `voipwall stats`.
    pub fn stats(&self) -> Result<Reply, OpError> {
        let c = self.dp.counters()?;
        let rules = self.dp.rule_counters(self.compiled.rule_names.len())?;
        Ok(render::stats(&c, &rules, &self.compiled.rule_names))
    }

    /// `voipwall top`: sources by current rate (walks the rate table).
    /// `voipwall explain SOURCE [PROTO PORT]`: the facts from the live maps, decided by
    /// [`crate::explain`]. Without a port, every open port range (grouped by live rule).
    pub fn explain(&self, source: IpAddr, target: Option<(u32, u16)>) -> Result<Reply, OpError> {
        use common::{PORT_OPEN, PORT_SIP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, RateKey, SIP_AUTH_WATCH, rate::gcra};

        use crate::explain::{BanFacts, ClassFacts, Facts, LevelFacts, PortFacts, SipFacts};

        let cfg = &self.compiled.config;
        let now = monotonic_ns();
        let now_unix = unix_now();
        let key = match source {
            IpAddr::V4(a) => common::addr::v4_mapped(a.octets()),
            IpAddr::V6(a) => common::addr::mask_prefix(a.octets(), cfg.ipv6_prefix),
        };
        let net = source_of(&key, self.policy.options.ipv6_prefix);
        let ban = match self.dp.ban_get(&key)? {
            Some(b) if b.expires_ns > now => {
                let rec = self.bans.records().into_iter().find(|r| r.source == net);
                Some(BanFacts {
                    class: rec.as_ref().map_or_else(|| self.compiled.class_name(b.class), |r| r.class.clone()),
                    level: b.level,
                    rate_pps: b.rate_pps,
                    created: rec.map(|r| r.created),
                    expires: mono_to_unix(b.expires_ns, now, now_unix),
                })
            }
            _ => None,
        };
        let ttl_ns = self.policy.options.known_ttl.as_nanos() as u64;
        let peer = self.dp.known_get(&key)?.filter(|p| now.saturating_sub(p.seen_ns) <= ttl_ns);
        let known = peer.map(|p| crate::peers::KnownRecord {
            source: net,
            proof: crate::peers::proof_name(p.proof).to_string(),
            since: mono_to_unix(p.since_ns, now, now_unix),
            seen: mono_to_unix(p.seen_ns, now, now_unix),
        });
        let mask = self.dp.set_mask(source)?;
        let set_names = |m: u64| -> Vec<String> {
            (0..64).filter(|b| m >> b & 1 != 0).filter_map(|b| self.compiled.set_names.get(b).cloned()).collect()
        };
        let port_facts = |slot: u32, first: u16, last: u16, rule: common::PortRule| -> Result<PortFacts, OpError> {
            let class = match rule.class {
                0 => None,
                c => {
                    let rc = self.compiled.classes[c as usize];
                    let state = match peer.as_ref().and_then(|p| p.classes.iter().position(|&x| x == c)) {
                        Some(i) => peer.map(|p| p.rates[i]),
                        None => self.dp.rate_get(&RateKey { addr: key, class: c as u32 })?,
                    };
                    let levels = rc
                        .levels
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.emission_ns != 0)
                        .map(|(i, l)| LevelFacts {
                            level: i as u8 + 1,
                            pps: (1e9 / l.emission_ns as f64).round(),
                            burst: l.tolerance_ns / l.emission_ns + 1,
                            ban_secs: l.ban_ns / 1_000_000_000,
                            conforms_now: state.is_none_or(|st| gcra(st.tat[i], now, l).is_some()),
                        })
                        .collect();
                    let unknown = (rc.unknown.emission_ns != 0).then(|| (1e9 / rc.unknown.emission_ns as f64).round());
                    let budget_spent =
                        unknown.is_some() && gcra(self.dp.budget_get(c)?.tat_ns, now, &rc.unknown).is_none();
                    Some(ClassFacts {
                        name: self.compiled.class_name(c),
                        levels,
                        unknown_budget_pps: unknown,
                        budget_spent,
                        observed_pps: state.map(|st| observed_pps(&st, now)),
                    })
                }
            };
            let sip = (rule.flags & PORT_SIP != 0).then(|| SipFacts {
                user_agent_patterns: self.policy.sip.ua_block.len(),
                method_limits: common::sip::METHOD_NAMES
                    .iter()
                    .zip(cfg.sip_method_class)
                    .filter(|(_, c)| *c != 0)
                    .map(|(m, c)| format!("{m}: {}", self.compiled.class_name(c)))
                    .collect(),
                auth_watch: cfg.sip_flags & SIP_AUTH_WATCH != 0,
            });
            let pinhole = (slot == PROTO_SLOT_UDP && rule.flags & common::PORT_PINHOLE != 0).then(|| {
                let ph = (first == last).then(|| crate::pinholes::Pinholes::explain(&self.dp, source, first)).flatten();
                let live = ph.filter(|p| p.live(now));
                crate::explain::PinholeFacts {
                    live: live.is_some(),
                    opened_by: live.map(|p| crate::pinholes::flag_names(p.flags)).unwrap_or_default(),
                    peer_port: live.and_then(|p| (p.peer_port != 0).then_some(p.peer_port)),
                    falls_back: rule.flags & common::PORT_PINHOLE_LIMIT != 0 && self.dp.pinholes_full(),
                }
            });
            Ok(PortFacts {
                pinhole,
                proto: if slot == PROTO_SLOT_TCP { "tcp" } else { "udp" },
                first,
                last,
                open: rule.flags & PORT_OPEN != 0,
                rule: (rule.rule != 0).then(|| self.compiled.rule_names.get(rule.rule as usize).cloned()).flatten(),
                sets: set_names(rule.sets),
                member: mask & rule.sets != 0,
                class,
                sip,
            })
        };
        let mut ports = Vec::new();
        match target {
            Some((slot, port)) => ports.push(port_facts(slot, port, port, self.dp.port_rule(slot, port)?)?),
            None => {
                for slot in [PROTO_SLOT_UDP, PROTO_SLOT_TCP] {
                    let mut run: Option<(u16, u16, common::PortRule)> = None;
                    for port in 0..=u16::MAX {
                        let rule = self.dp.port_rule(slot, port)?;
                        match &mut run {
                            Some((_, last, r)) if *r == rule && *last + 1 == port => *last = port,
                            _ => {
                                if let Some((f, l, r)) = run.take().filter(|(_, _, r)| r.flags & PORT_OPEN != 0) {
                                    ports.push(port_facts(slot, f, l, r)?);
                                }
                                run = Some((port, port, rule));
                            }
                        }
                    }
                    if let Some((f, l, r)) = run.filter(|(_, _, r)| r.flags & PORT_OPEN != 0) {
                        ports.push(port_facts(slot, f, l, r)?);
                    }
                }
            }
        }
        let facts = Facts {
            source,
            key: net,
            kernel_list: self.sources.kernel_answer(source).map_err(crate::dataplane::DataplaneError::from)?,
            entries: self.sources.lists().covering(source),
            ban,
            known,
            sets: set_names(mask),
            dry_run: cfg.flags & POLICY_DRY_RUN != 0,
            ports,
        };
        Ok(crate::explain::reply(&facts))
    }

    pub fn top(&self, limit: usize) -> Result<Reply, OpError> {
        let now = monotonic_ns();
        let prefix = self.policy.options.ipv6_prefix;
        // A window older than two seconds is a source that went quiet.
        let pps = |st: &common::RateState| {
            if now.saturating_sub(st.window_start_ns) > 2_000_000_000 { 0 } else { observed_pps(st, now) }
        };
        let mut rows: Vec<TopRow> = self
            .dp
            .rates()?
            .into_iter()
            .map(|(k, st)| TopRow {
                source: source_of(&k.addr, prefix),
                class: self.compiled.class_name(k.class as u8),
                pps: pps(&st),
                window_packets: st.window_packets,
                known: false,
            })
            .collect();
        // Known peers keep their rate state in their own entries.
        let ttl_ns = self.policy.options.known_ttl.as_nanos() as u64;
        for (key, peer) in self.dp.known_peers()? {
            if now.saturating_sub(peer.seen_ns) > ttl_ns {
                continue;
            }
            for (class, st) in peer.classes.iter().zip(&peer.rates).filter(|(c, _)| **c != 0) {
                rows.push(TopRow {
                    source: source_of(&key, prefix),
                    class: self.compiled.class_name(*class),
                    pps: pps(st),
                    window_packets: st.window_packets,
                    known: true,
                });
            }
        }
        rows.sort_by(|a, b| b.pps.cmp(&a.pps).then(a.source.cmp(&b.source)));
        rows.truncate(limit);
        Ok(render::top(&rows))
    }

    /// Entries vs capacity per map, without walking any large map. The kernel-written LRU tables
    /// only fill up, so their entries are what the program created, capped at capacity.
    pub fn map_fill(&self) -> Vec<MapFill> {
        let cap = |n| self.dp.capacity_of(n).or_else(|| self.sources.capacity(n)).unwrap_or(0);
        let stats = self.dp.stats().ok();
        let created = |slot: u32, map| stats.map(|s| s[slot as usize].min(cap(map) as u64));
        let (v4, v6) = self.sources.lists().kernel_len();
        vec![
            (maps::SOURCES_V4, Some(v4 as u64), cap(maps::SOURCES_V4)),
            (maps::SOURCES_V6, Some(v6 as u64), cap(maps::SOURCES_V6)),
            (maps::SOURCES_HOSTS, Some(self.sources.host_blocks() as u64), cap(maps::SOURCES_HOSTS)),
            (maps::SETS_V4, Some(self.compiled.sets_v4.len() as u64), cap(maps::SETS_V4)),
            (maps::SETS_V6, Some(self.compiled.sets_v6.len() as u64), cap(maps::SETS_V6)),
            (maps::BANS, Some(self.bans.len() as u64), cap(maps::BANS)),
            (maps::RATES, created(stat::RATES_CREATED, maps::RATES), cap(maps::RATES)),
            (maps::FLOWS, created(stat::FLOWS_CREATED, maps::FLOWS), cap(maps::FLOWS)),
            (maps::FRAGS, created(stat::FRAGS_CREATED, maps::FRAGS), cap(maps::FRAGS)),
            (maps::SIP_PEERS, created(stat::SIP_PEERS_CREATED, maps::SIP_PEERS), cap(maps::SIP_PEERS)),
            (maps::KNOWN, created(stat::KNOWN_CREATED, maps::KNOWN), cap(maps::KNOWN)),
        ]
    }

    /// `voipwall status`.
    pub fn status(&self) -> Result<Reply, OpError> {
        let a = self.attachment.as_ref();
        let fill = self.map_fill();
        let data = json!({
            "iface": self.iface,
            "attached": a.is_some(),
            "xdp_mode": a.map(|a| a.mode.as_str()),
            "program_id": a.map(|a| a.program_id),
            "adopted": a.map(|a| a.adopted),
            "replaced_program": a.and_then(|a| a.replaced),
            "layout_version": common::LAYOUT_VERSION,
            "attached_since": rfc3339(self.attached_since),
            "policy": {
                "path": self.policy.path,
                "sha256": self.policy.sha256,
                "roles": self.policy.roles,
                "generation": self.dp.generation(),
                "loaded_at": rfc3339(self.policy_loaded_at),
                "pending_confirmation": self.pending.as_ref().map(|p| p.deadline.saturating_duration_since(Instant::now()).as_secs_f64()),
            },
            "dry_run": self.compiled.config.flags & POLICY_DRY_RUN != 0,
            "ssh": self.compiled.ssh,
            "maps": fill.iter().map(|(m, e, c)| json!({ "map": m, "entries": e, "capacity": c })).collect::<Vec<_>>(),
            "reloads": { "ok": self.reloads.ok, "error": self.reloads.error, "rolled_back": self.reloads.rolled_back },
            "known": { "total": self.peers.total(), "by_proof": self.peers.by_proof },
            "over_budget": self.peers.over,
            "fleet": self.fleet_json(),
        });
        Ok(render::status(data, &fill))
    }

    /// The fleet's state as `fleet status --json` and `status --json` show it (null without
    /// `[fleet.crowdsec]`).
    fn fleet_json(&self) -> serde_json::Value {
        let Some(f) = &self.fleet else { return serde_json::Value::Null };
        let now = unix_now();
        json!({
            "url": f.cfg.url,
            "pull": f.cfg.pull,
            "push": f.cfg.push,
            "interval_s": f.cfg.interval.as_secs_f64(),
            "last_sync": f.status.last_sync.map(rfc3339),
            "last_sync_age_s": f.status.last_sync.map(|t| now.saturating_sub(t)),
            "failing_since": f.status.failing_since.map(rfc3339),
            "last_error": f.status.last_error,
            "errors": f.status.errors,
            "syncs": f.status.syncs,
            "entries": self.sources.lists().fleet_len(),
            "decisions": f.held(),
            "decisions_by_origin": f.by_origin(),
            "skipped": f.status.skipped,
            "push_queue": f.queued(),
            "pushed": f.status.pushed,
            "push_dropped": f.status.push_dropped,
            "push_errors": f.status.push_errors,
            "last_push_error": f.status.last_push_error,
        })
    }

    /// `voipwall fleet status`.
    pub fn fleet_status(&self) -> Reply {
        render::fleet(self.fleet_json())
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
