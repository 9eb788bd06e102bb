//! The fleet: bans shared across hosts through CrowdSec's Local API ([`lapi`]).
//!
//! **Pull.** Decisions of type `ban`, scope `Ip` or `Range`, go into the block tries as fleet
//! entries (their own drop reason, `fleet_block`; not the operator's list). Each entry lasts
//! as long as its longest decision and expires by itself at the decision's end, LAPI or not.
//! Fail-static: an answer that is an error, late, or not what the API defines changes nothing;
//! the daemon retries with backoff (doubling up to 8 intervals, at most 10 s) and, once the LAPI answers again, asks for the whole set
//! (`startup=true`) and applies the difference.
//!
//! **Push.** Every ban voipwall issues becomes an alert with one decision of the same duration
//! (scenario `voipwall/CLASS`), queued (bounded, oldest dropped and counted) and sent by a task
//! of its own: the data plane never waits for the LAPI. When such a decision comes back in the
//! stream, the host already holds the ban: it is counted as `own` and not applied twice.
//!
//! Decisions that would block the host itself or a member of the `admins` or `cluster` sets are
//! not applied (counted as `protected`): a fleet decision must never lock the operator out.

pub mod lapi;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use serde::Serialize;

use self::lapi::{Alert, LapiError, RawDecision, Stream};
use crate::{policy::fleet::Crowdsec, sources::FleetEntry};

/// A decision this host applies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    net: IpNet,
    origin: Arc<str>,
    scenario: Arc<str>,
    /// Unix seconds.
    expires: u64,
}

/// What the fleet did and how it is doing, for `fleet status`, `status` and the metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// Unix seconds of the last answer applied.
    pub last_sync: Option<u64>,
    /// Unix seconds of the first failure of the current run of failures.
    pub failing_since: Option<u64>,
    pub last_error: Option<String>,
    /// Failed pulls by kind (`unreachable`, `timeout`, `auth`, `http_status`, `garbage`,
    /// `kernel`, `config`).
    pub errors: BTreeMap<&'static str, u64>,
    pub syncs: u64,
    /// Decisions not applied, by why: `type:TYPE` (not a ban), `scope` (not `Ip` or `Range`),
    /// `invalid` (value or duration), `ended`, `filtered` (origins/scenarios), `protected`, `own`.
    pub skipped: BTreeMap<String, u64>,
    pub pushed: u64,
    pub push_dropped: u64,
    pub push_errors: u64,
    pub last_push_error: Option<String>,
}

/// The fleet's state inside the firewall.
pub struct Fleet {
    pub cfg: Arc<Crowdsec>,
    held: HashMap<i64, Held>,
    /// Nets this host banned and pushed, until when.
    own: HashMap<IpNet, u64>,
    pub status: Status,
    queue: VecDeque<Alert>,
    /// The next pull asks for every decision.
    pub startup: bool,
    /// Consecutive failed pulls (for the backoff).
    pub failures: u32,
    /// When the last "pull failed" line was logged (one a minute at most).
    pub warned_at: Option<u64>,
    /// When the whole set was last applied (unix seconds).
    full_at: u64,
}

/// The changes one stream answer makes to the fleet entries.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    pub add: Vec<(IpNet, FleetEntry)>,
    pub remove: Vec<IpNet>,
}

/// Nets a decision must not block: the host's addresses, the `admins` and `cluster` sets.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    pub addrs: Vec<IpAddr>,
    pub nets: Vec<IpNet>,
}

impl Protected {
    fn covers(&self, net: &IpNet) -> bool {
        self.addrs.iter().any(|a| net.contains(a)) || self.nets.iter().any(|n| n.contains(net) || net.contains(n))
    }
}

impl Fleet {
    pub fn new(cfg: Arc<Crowdsec>) -> Self {
        Self {
            cfg,
            held: HashMap::new(),
            own: HashMap::new(),
            status: Status::default(),
            queue: VecDeque::new(),
            startup: true,
            failures: 0,
            warned_at: None,
            full_at: 0,
        }
    }

    /// A new configuration (a reload): keep what is held; ask for everything again.
    pub fn reconfigure(&mut self, cfg: Arc<Crowdsec>) {
        if *self.cfg != *cfg {
            self.cfg = cfg;
            self.startup = true;
        }
    }

    /// Whether the next pull asks for the whole set: at start, after a failure, after a
    /// reconfiguration, and every `resync`.
    pub fn wants_startup(&self, now: u64) -> bool {
        self.startup || now >= self.full_at + self.cfg.resync.as_secs()
    }

    /// Decisions held, by origin.
    pub fn by_origin(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for h in self.held.values() {
            *m.entry(h.origin.to_string()).or_default() += 1;
        }
        m
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A failed pull: nothing changes but the counters; the next successful pull asks for
    /// everything.
    pub fn failed(&mut self, kind: &'static str, message: String, now: u64) {
        *self.status.errors.entry(kind).or_default() += 1;
        self.status.failing_since.get_or_insert(now);
        self.status.last_error = Some(message);
        self.startup = true;
        self.failures = self.failures.saturating_add(1);
    }

    /// Work out what a stream answer changes, given the fleet entries the lists hold now
    /// (`current`). Nothing is changed yet: [`Self::commit`] takes the result once the kernel
    /// holds it.
    pub fn plan(
        &self,
        stream: &Stream,
        startup: bool,
        now: u64,
        protected: &Protected,
        current: &BTreeMap<IpNet, FleetEntry>,
    ) -> (Plan, Change) {
        let mut held = if startup { HashMap::new() } else { self.held.clone() };
        let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
        let mut touched: BTreeSet<IpNet> = BTreeSet::new();
        if startup {
            touched.extend(current.keys().copied());
        }
        for d in &stream.deleted {
            let gone: Vec<i64> = match d.id {
                Some(id) => vec![id],
                // No id: every held decision for that value.
                None => {
                    net_of(d).map_or(Vec::new(), |n| held.iter().filter(|(_, h)| h.net == n).map(|(i, _)| *i).collect())
                }
            };
            for id in gone {
                if let Some(h) = held.remove(&id) {
                    touched.insert(h.net);
                }
            }
        }
        let mut next_id = -1i64;
        for d in &stream.new {
            match self.judge(d, now, protected) {
                Ok(h) => {
                    let id = d.id.unwrap_or_else(|| {
                        next_id -= 1;
                        next_id
                    });
                    touched.insert(h.net);
                    if let Some(old) = held.insert(id, h) {
                        touched.insert(old.net);
                    }
                }
                Err(why) => *skipped.entry(why).or_default() += 1,
            }
        }
        // The entry of each touched net: its longest decision.
        let mut best: HashMap<IpNet, &Held> = HashMap::new();
        for h in held.values().filter(|h| touched.contains(&h.net)) {
            best.entry(h.net)
                .and_modify(|b| {
                    if h.expires > b.expires {
                        *b = h
                    }
                })
                .or_insert(h);
        }
        let mut change = Change::default();
        for net in &touched {
            match best.get(net) {
                Some(h) => {
                    let e = FleetEntry { origin: h.origin.clone(), scenario: h.scenario.clone(), expires: h.expires };
                    if current.get(net) != Some(&e) {
                        change.add.push((*net, e));
                    }
                }
                None if current.contains_key(net) => change.remove.push(*net),
                None => {}
            }
        }
        (Plan { held, skipped }, change)
    }

    /// The kernel and the lists hold a plan's change: make it the fleet's state.
    pub fn commit(&mut self, plan: Plan, startup: bool, now: u64) {
        self.held = plan.held;
        if startup {
            self.full_at = now;
        }
        for (why, n) in plan.skipped {
            *self.status.skipped.entry(why).or_default() += n;
        }
        self.status.last_sync = Some(now);
        self.status.failing_since = None;
        self.status.syncs += 1;
        self.startup = false;
        self.failures = 0;
        self.warned_at = None;
    }

    /// Forget decisions that have ended (their entries expire in the lists by themselves).
    pub fn expire(&mut self, now: u64) {
        self.held.retain(|_, h| h.expires > now);
        self.own.retain(|_, until| *until > now);
    }

    /// Whether a decision is applied, and as what; `Err` says why not.
    fn judge(&self, d: &RawDecision, now: u64, protected: &Protected) -> Result<Held, String> {
        if !d.kind.eq_ignore_ascii_case("ban") {
            return Err(format!("type:{}", d.kind.to_ascii_lowercase()));
        }
        let net = net_of(d).map_err(|why| why.to_string())?;
        let secs = lapi::go_duration(&d.duration).ok_or("invalid")?;
        if secs <= 0.0 {
            return Err("ended".into());
        }
        let cfg = &self.cfg;
        if !cfg.origins.is_empty() && !cfg.origins.iter().any(|o| o.eq_ignore_ascii_case(&d.origin)) {
            return Err("filtered".into());
        }
        if !cfg.scenarios.is_empty() && !cfg.scenarios.iter().any(|s| d.scenario.contains(s.as_str())) {
            return Err("filtered".into());
        }
        if protected.covers(&net) {
            return Err("protected".into());
        }
        if self.own.get(&net).is_some_and(|until| *until > now) {
            return Err("own".into());
        }
        Ok(Held {
            net,
            origin: d.origin.as_str().into(),
            scenario: d.scenario.as_str().into(),
            expires: now.saturating_add(secs.ceil() as u64),
        })
    }

    /// Queue a ban of this host for the LAPI (if this fleet pushes): `source` banned for
    /// `class` until `until` (unix seconds). Beyond the queue's bound the oldest is dropped.
    pub fn ban(&mut self, source: IpNet, class: &str, detail: &str, now: u64, until: u64) {
        if !self.cfg.push || until <= now {
            return;
        }
        self.own.insert(source, until);
        self.queue.push_back(alert(source, class, detail, now, until));
        while self.queue.len() > self.cfg.push_queue {
            self.queue.pop_front();
            self.status.push_dropped += 1;
        }
    }

    /// Up to `n` queued alerts, oldest first (put back with [`Self::unsent`] if they fail).
    pub fn take(&mut self, n: usize) -> Vec<Alert> {
        let n = n.min(self.queue.len());
        self.queue.drain(..n).collect()
    }

    /// Alerts that could not be sent go back to the front of the queue (the bound still holds:
    /// the oldest are dropped).
    pub fn unsent(&mut self, alerts: Vec<Alert>, error: &LapiError) {
        self.status.push_errors += 1;
        self.status.last_push_error = Some(error.to_string());
        for a in alerts.into_iter().rev() {
            self.queue.push_front(a);
        }
        while self.queue.len() > self.cfg.push_queue {
            self.queue.pop_front();
            self.status.push_dropped += 1;
        }
    }

    pub fn sent(&mut self, n: usize) {
        self.status.pushed += n as u64;
        self.status.last_push_error = None;
    }
}

/// What [`Fleet::plan`] decided, to [`Fleet::commit`].
pub struct Plan {
    held: HashMap<i64, Held>,
    skipped: BTreeMap<String, u64>,
}

/// The net a decision names: `Ip` (a /32 or /128) or `Range` (a CIDR), scope compared without
/// case.
fn net_of(d: &RawDecision) -> Result<IpNet, &'static str> {
    let value = d.value.trim();
    if d.scope.eq_ignore_ascii_case("ip") {
        let a: IpAddr = value.parse().map_err(|_| "invalid")?;
        Ok(IpNet::from(a))
    } else if d.scope.eq_ignore_ascii_case("range") {
        let n: IpNet = value.parse().map_err(|_| "invalid")?;
        Ok(n.trunc())
    } else {
        Err("scope")
    }
}

fn alert(source: IpNet, class: &str, detail: &str, now: u64, until: u64) -> Alert {
    let single = source.prefix_len() == source.max_prefix_len();
    let (scope, value) = if single { ("Ip", source.addr().to_string()) } else { ("Range", source.to_string()) };
    let scenario = format!("voipwall/{class}");
    let at = crate::state::rfc3339(now);
    Alert {
        scenario: scenario.clone(),
        scenario_hash: String::new(),
        scenario_version: String::new(),
        message: format!("voipwall banned {source}: {detail}"),
        events_count: 1,
        start_at: at.clone(),
        stop_at: at.clone(),
        capacity: 0,
        leakspeed: "0".into(),
        simulated: false,
        events: vec![lapi::Event {
            timestamp: at,
            meta: vec![lapi::Meta { key: "source".into(), value: value.clone() }],
        }],
        source: lapi::Source {
            scope: scope.into(),
            value: value.clone(),
            ip: single.then(|| value.clone()),
            range: (!single).then(|| source.to_string()),
        },
        decisions: vec![lapi::Decision {
            origin: "voipwall".into(),
            kind: "ban".into(),
            scope: scope.into(),
            value,
            duration: format!("{}s", until - now),
            scenario,
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> Crowdsec {
        Crowdsec {
            url: "http://127.0.0.1:8080".into(),
            api_key_file: None,
            machine_file: None,
            pull: true,
            push: true,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            resync: Duration::from_secs(300),
            origins: Vec::new(),
            scenarios: Vec::new(),
            ca_file: None,
            insecure_skip_verify: false,
            push_queue: 3,
        }
    }

    fn d(id: i64, scope: &str, value: &str, duration: &str) -> RawDecision {
        RawDecision {
            id: Some(id),
            origin: "cscli".into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "manual".into(),
        }
    }

    fn apply(f: &mut Fleet, s: &Stream, startup: bool, now: u64, cur: &mut BTreeMap<IpNet, FleetEntry>) -> Change {
        let (plan, change) = f.plan(s, startup, now, &Protected::default(), cur);
        for n in &change.remove {
            cur.remove(n);
        }
        for (n, e) in &change.add {
            cur.insert(*n, e.clone());
        }
        f.commit(plan, startup, now);
        change
    }

    #[test]
    fn deltas_startup_and_overlapping_decisions() {
        let mut f = Fleet::new(Arc::new(cfg()));
        let mut cur = BTreeMap::new();
        let s = Stream {
            new: vec![
                d(1, "Ip", "192.0.2.1", "1h"),
                d(2, "range", "198.51.100.7/24", "30s"),
                d(3, "Ip", "192.0.2.1", "2h"),
                d(4, "Ip", "2001:db8::1", "10s"),
            ],
            deleted: vec![],
        };
        let c = apply(&mut f, &s, true, 1000, &mut cur);
        assert_eq!(c.add.len(), 3);
        assert_eq!(cur[&"192.0.2.1/32".parse().unwrap()].expires, 1000 + 7200, "the longest decision wins");
        assert!(cur.contains_key(&"198.51.100.0/24".parse().unwrap()), "ranges are truncated to their network");
        // Deleting the longer decision leaves the shorter one.
        let s = Stream { new: vec![], deleted: vec![d(3, "Ip", "192.0.2.1", "-1s")] };
        let c = apply(&mut f, &s, false, 1001, &mut cur);
        assert_eq!(c.add[0].1.expires, 1000 + 3600);
        // A startup answer is the whole set: what it lacks goes.
        let s = Stream { new: vec![d(1, "Ip", "192.0.2.1", "1h")], deleted: vec![] };
        let c = apply(&mut f, &s, true, 1002, &mut cur);
        assert_eq!(c.remove.len(), 2);
        assert_eq!(cur.len(), 1);
        assert_eq!(f.held(), 1);
    }

    #[test]
    fn what_is_not_applied_and_why() {
        let mut f = Fleet::new(Arc::new(Crowdsec { origins: vec!["cscli".into(), "crowdsec".into()], ..cfg() }));
        let protected =
            Protected { addrs: vec!["10.0.0.1".parse().unwrap()], nets: vec!["203.0.113.0/24".parse().unwrap()] };
        f.ban("192.0.2.99/32".parse().unwrap(), "signaling", "level 1", 1000, 4600);
        let mut captcha = d(1, "Ip", "192.0.2.1", "1h");
        captcha.kind = "captcha".into();
        let mut lists = d(2, "Ip", "192.0.2.2", "1h");
        lists.origin = "lists".into();
        let s = Stream {
            new: vec![
                captcha,
                lists,
                d(3, "Country", "FR", "1h"),
                d(4, "Ip", "not-an-ip", "1h"),
                d(5, "Ip", "192.0.2.5", "soon"),
                d(6, "Range", "10.0.0.0/8", "1h"),
                d(7, "Ip", "203.0.113.9", "1h"),
                d(8, "Ip", "192.0.2.99", "1h"),
                d(9, "Ip", "192.0.2.9", "-3s"),
                d(10, "Ip", "192.0.2.10", "1h"),
            ],
            deleted: vec![],
        };
        let (plan, change) = f.plan(&s, true, 1000, &protected, &BTreeMap::new());
        assert_eq!(change.add.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(), vec!["192.0.2.10/32"]);
        let want: BTreeMap<String, u64> = [
            ("type:captcha", 1),
            ("filtered", 1),
            ("scope", 1),
            ("invalid", 2),
            ("protected", 2),
            ("own", 1),
            ("ended", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(plan.skipped, want);
    }

    #[test]
    fn the_push_queue_is_bounded_and_keeps_order() {
        let mut f = Fleet::new(Arc::new(cfg()));
        for i in 1..=5u8 {
            f.ban(IpNet::from(IpAddr::from([192, 0, 2, i])), "signaling", "x", 100, 200);
        }
        assert_eq!((f.queued(), f.status.push_dropped), (3, 2), "the oldest two dropped");
        let batch = f.take(2);
        assert_eq!(batch[0].source.value, "192.0.2.3");
        f.unsent(batch, &LapiError::Timeout);
        assert_eq!(f.queued(), 3);
        let a = f.take(10);
        assert_eq!(
            a.iter().map(|a| a.source.value.as_str()).collect::<Vec<_>>(),
            ["192.0.2.3", "192.0.2.4", "192.0.2.5"]
        );
        assert_eq!(a[0].decisions[0].duration, "100s");
        assert_eq!(a[0].scenario, "voipwall/signaling");
        let six: IpNet = "2001:db8:1::/64".parse().unwrap();
        f.ban(six, "sip-failed-auth", "x", 100, 200);
        let a = f.take(1);
        assert_eq!((a[0].source.scope.as_str(), a[0].source.value.as_str()), ("Range", "2001:db8:1::/64"));
    }
}
