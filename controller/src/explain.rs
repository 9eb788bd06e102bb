//! `voipwall explain SOURCE [PROTO PORT]`: the verdict a packet from SOURCE would get now, step by
//! step, in the order the data plane decides (the README's "What it does to a packet"). The
//! firewall reads the facts from the live maps ([`Facts`]); this module decides and lays them
//! out, so the decision itself is tested without a kernel.
//!
//! What a single address cannot tell is said, not guessed: return traffic depends on the peer's
//! port and the host's own flows, fragments on their first fragment, SIP checks on the message.

use std::{fmt::Write as _, net::IpAddr};

use common::{SOURCE_ALLOW, SOURCE_BLOCK, SOURCE_FLEET, reason};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::json;

use crate::{
    peers::KnownRecord,
    render::Reply,
    sources::{ListKind, ListRow},
    state::rfc3339,
};

/// What the live maps say about one source.
#[derive(Clone, Debug)]
pub struct Facts {
    pub source: IpAddr,
    /// The key bans and rate buckets use (IPv6 sources are aggregated per prefix).
    pub key: IpNet,
    /// The kernel's answer for the source: `SOURCE_ALLOW`, `SOURCE_BLOCK`, `SOURCE_FLEET` or 0.
    pub kernel_list: u32,
    /// Allow and block entries that contain the source, longest first.
    pub entries: Vec<(ListKind, ListRow)>,
    pub ban: Option<BanFacts>,
    pub known: Option<KnownRecord>,
    /// Names of the policy's source sets the source is in (from the live set trie).
    pub sets: Vec<String>,
    pub dry_run: bool,
    /// The ports asked about: one, or every open range.
    pub ports: Vec<PortFacts>,
}

/// An unexpired ban in the ban table, with what the controller recorded about it.
#[derive(Clone, Debug, Serialize)]
pub struct BanFacts {
    pub class: String,
    pub level: u8,
    pub rate_pps: u32,
    /// Unix seconds; `None` when the controller has no record (a ban from an earlier run).
    pub created: Option<u64>,
    pub expires: u64,
}

/// One port (or a run of ports with the same live rule).
#[derive(Clone, Debug)]
pub struct PortFacts {
    pub proto: &'static str,
    pub first: u16,
    pub last: u16,
    pub open: bool,
    /// The policy rule that opened it.
    pub rule: Option<String>,
    /// Source sets the port is limited to (empty: any source).
    pub sets: Vec<String>,
    /// The source is in one of `sets`.
    pub member: bool,
    pub class: Option<ClassFacts>,
    pub sip: Option<SipFacts>,
    /// The port is in pinhole mode (`None`: open to every source).
    pub pinhole: Option<PinholeFacts>,
}

/// A port in pinhole mode and the source's pinhole on it.
#[derive(Clone, Debug, Serialize)]
pub struct PinholeFacts {
    /// The source has a live pinhole on this port (always false for a range of ports).
    pub live: bool,
    /// How it was opened (`sdp`, `signaling`, `manual`, `rtcp`, `closing`).
    pub opened_by: Vec<&'static str>,
    /// The source port it latched (`None`: no packet yet).
    pub peer_port: Option<u16>,
    /// While the pinhole table is full, the port admits by its rate class
    /// (`pinhole_full = "limit"` and the table full now).
    pub falls_back: bool,
}

/// The port's rate class and where the source stands in it now.
#[derive(Clone, Debug, Serialize)]
pub struct ClassFacts {
    pub name: String,
    pub levels: Vec<LevelFacts>,
    /// Packets per second of the budget unknown sources share (`None`: no budget).
    pub unknown_budget_pps: Option<f64>,
    /// The budget would refuse a packet from an unknown source now.
    pub budget_spent: bool,
    /// Packets per second the source sent recently, from its bucket (`None`: no bucket).
    pub observed_pps: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LevelFacts {
    pub level: u8,
    pub pps: f64,
    pub burst: u64,
    /// Ban time in seconds; 0 = police only.
    pub ban_secs: u64,
    /// A packet now would conform to the level.
    pub conforms_now: bool,
}

/// The SIP checks of a port that carries plaintext SIP.
#[derive(Clone, Debug, Serialize)]
pub struct SipFacts {
    pub user_agent_patterns: usize,
    /// "METHOD: class" for every method with a rate class.
    pub method_limits: Vec<String>,
    pub auth_watch: bool,
}

/// One step of the decision.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Step {
    pub step: &'static str,
    /// "match", "no match", "pass", "drop" or "applies".
    pub result: &'static str,
    pub detail: String,
}

fn step(step: &'static str, result: &'static str, detail: impl Into<String>) -> Step {
    Step { step, result, detail: detail.into() }
}

/// The verdict for one port: the steps taken and the reason that ends them.
#[derive(Clone, Debug, Serialize)]
pub struct PortVerdict {
    pub proto: &'static str,
    pub ports: String,
    pub rule: Option<String>,
    pub steps: Vec<Step>,
    /// "pass", "drop" or "would_drop" (dry run).
    pub verdict: &'static str,
    /// The reason counter the packet would be counted under.
    pub reason: &'static str,
}

fn entry_text(kind: ListKind, row: &ListRow) -> String {
    let mut t = format!("{} on the {} list ({})", row.cidr, kind.name(), row.origin);
    if let Some(m) = &row.manual {
        if let Some(r) = &m.reason {
            let _ = write!(t, ", reason \"{r}\"");
        }
        let _ = write!(t, ", by {}", m.who);
        match m.expires {
            Some(e) => {
                let _ = write!(t, ", expires {}", rfc3339(e));
            }
            None => t.push_str(", no expiry"),
        }
    }
    if let Some(f) = &row.fleet {
        let _ = write!(t, ", fleet decision {} / {}, expires {}", f.origin, f.scenario, rfc3339(f.expires));
    }
    t
}

/// The steps every port shares: allow list, block list, ban. `Some(reason)` when they decide.
fn source_steps(f: &Facts) -> (Vec<Step>, Option<u32>) {
    let of = |want: ListKind| {
        f.entries.iter().filter(|(k, _)| *k == want).map(|(k, r)| entry_text(*k, r)).collect::<Vec<_>>().join("; ")
    };
    let mut steps = Vec::new();
    if f.kernel_list == SOURCE_ALLOW {
        steps.push(step("allow_list", "match", of(ListKind::Allow)));
        return (steps, Some(reason::ALLOW_LIST));
    }
    steps.push(step("allow_list", "no match", ""));
    match f.kernel_list {
        SOURCE_BLOCK => {
            steps.push(step("block_list", "match", of(ListKind::Block)));
            return (steps, Some(reason::BLOCK_LIST));
        }
        SOURCE_FLEET => {
            steps.push(step("block_list", "match", of(ListKind::Block)));
            return (steps, Some(reason::FLEET_BLOCK));
        }
        _ => steps.push(step("block_list", "no match", "")),
    }
    match &f.ban {
        Some(b) => {
            let mut d = format!("{} banned", f.key);
            if !b.class.is_empty() {
                let _ = write!(d, " by class {} level {} at {} pps", b.class, b.level, b.rate_pps);
            }
            if let Some(c) = b.created {
                let _ = write!(d, ", since {}", rfc3339(c));
            }
            let _ = write!(d, ", until {}", rfc3339(b.expires));
            steps.push(step("ban", "match", d));
            (steps, Some(reason::BANNED))
        }
        None => {
            steps.push(step("ban", "no match", ""));
            (steps, None)
        }
    }
}

fn port_steps(f: &Facts, p: &PortFacts) -> (Vec<Step>, u32) {
    let mut steps = Vec::new();
    if !p.open {
        steps.push(step(
            "port",
            "drop",
            "closed by the policy (replies to flows the host opened itself still pass as return_traffic)",
        ));
        return (steps, reason::PORT_CLOSED);
    }
    let rule = p.rule.as_deref().unwrap_or("?");
    steps.push(step("port", "match", format!("open by rule \"{rule}\"")));
    if let Some(ph) = &p.pinhole {
        if ph.live {
            let latched = ph.peer_port.map_or("no packet yet".to_string(), |pp| format!("latched to source port {pp}"));
            steps.push(step(
                "pinhole",
                "pass",
                format!("a live pinhole admits the source (opened by {}; {latched})", ph.opened_by.join(", ")),
            ));
            return (steps, reason::PINHOLE);
        }
        if !ph.falls_back {
            steps.push(step(
                "pinhole",
                "drop",
                "media in pinhole mode and the source has no live pinhole here (replies to media the host sent still pass as return_traffic)",
            ));
            return (steps, reason::PINHOLE_CLOSED);
        }
        steps.push(step(
            "pinhole",
            "match",
            "no pinhole, but the table is full and the rule falls back to its rate class",
        ));
    }
    if !p.sets.is_empty() {
        let sets = p.sets.join(", ");
        if !p.member {
            steps.push(step("source_sets", "drop", format!("open only to sets {sets}; the source is in none of them")));
            return (steps, reason::SOURCE_NOT_ALLOWED);
        }
        steps.push(step(
            "source_sets",
            "match",
            format!("open to sets {sets}; the source is in {}", f.sets.join(", ")),
        ));
    }
    if let Some(c) = &p.class {
        match &f.known {
            Some(k) => steps.push(step(
                "known_peer",
                "match",
                format!("proved its address ({}) at {}, last seen {}: its own buckets, no shared budget", k.proof, rfc3339(k.since), rfc3339(k.seen)),
            )),
            None if !f.sets.is_empty() => steps.push(step(
                "known_peer",
                "match",
                format!("in set {}: a known peer (proof set) from its first packet, with its own buckets", f.sets.join(", ")),
            )),
            None => match c.unknown_budget_pps {
                Some(pps) if c.budget_spent => {
                    steps.push(step(
                        "known_peer",
                        "drop",
                        format!("not a known peer; the budget unknown sources share in class {} ({pps} pps) is spent now", c.name),
                    ));
                    return (steps, reason::UNKNOWN_OVER_BUDGET);
                }
                Some(pps) => steps.push(step(
                    "known_peer",
                    "no match",
                    format!("not a known peer: draws from the budget unknown sources share in class {} ({pps} pps), not spent now", c.name),
                )),
                None => steps.push(step("known_peer", "no match", "not a known peer; the class has no shared budget")),
            },
        }
        let mut over = None;
        let mut d = format!("class {}", c.name);
        if let Some(pps) = c.observed_pps {
            let _ = write!(d, ", the source sent {pps} pps recently");
        }
        for l in &c.levels {
            let ban = if l.ban_secs > 0 { format!("ban {} s", l.ban_secs) } else { "police only".into() };
            let now = if l.conforms_now { "within it now" } else { "over it now" };
            let _ = write!(d, "; level {}: {} pps burst {} ({ban}), {now}", l.level, l.pps, l.burst);
            if !l.conforms_now && over.is_none() {
                over = Some(l.level);
            }
        }
        if over.is_some() {
            steps.push(step("rate", "drop", d));
            return (steps, reason::RATE_LIMITED);
        }
        steps.push(step("rate", "pass", d));
    } else {
        steps.push(step("rate", "pass", "no rate class on this port"));
    }
    if let Some(s) = &p.sip {
        let mut d = format!(
            "SIP requests are read: {} User-Agent pattern(s) (sip_user_agent), requests that cannot be inspected drop (sip_evasion)",
            s.user_agent_patterns
        );
        if !s.method_limits.is_empty() {
            let _ = write!(d, ", method limits {} (sip_method_rate_limited)", s.method_limits.join(", "));
        }
        if s.auth_watch {
            d.push_str(", credentials are counted for the authentication-failure watch");
        }
        steps.push(step("sip", "applies", d));
    }
    (steps, reason::PORT_OPEN)
}

/// Decide every port of `f`.
pub fn decide(f: &Facts) -> Vec<PortVerdict> {
    let (shared, decided) = source_steps(f);
    f.ports
        .iter()
        .map(|p| {
            let mut steps = shared.clone();
            let r = match decided {
                Some(r) => r,
                None => {
                    let (more, r) = port_steps(f, p);
                    steps.extend(more);
                    r
                }
            };
            let verdict = match (reason::is_drop(r), f.dry_run) {
                (false, _) => "pass",
                (true, false) => "drop",
                (true, true) => "would_drop",
            };
            PortVerdict {
                proto: p.proto,
                ports: if p.first == p.last { p.first.to_string() } else { format!("{}-{}", p.first, p.last) },
                rule: p.rule.clone(),
                steps,
                verdict,
                reason: reason::NAMES[r as usize],
            }
        })
        .collect()
}

/// The reply: text for people, the same facts as JSON.
pub fn reply(f: &Facts) -> Reply {
    let verdicts = decide(f);
    let mut t = format!("source {}", f.source);
    if f.key.prefix_len() != f.key.max_prefix_len() {
        let _ = write!(t, " (bans and rates count it as {})", f.key);
    }
    t.push('\n');
    let list = match f.kernel_list {
        SOURCE_ALLOW => "allow",
        SOURCE_BLOCK => "block",
        SOURCE_FLEET => "fleet",
        _ => "none",
    };
    let _ = writeln!(t, "  sets: {}", if f.sets.is_empty() { "none".to_string() } else { f.sets.join(", ") });
    if f.ports.is_empty() {
        t.push_str("  no port is open to any source\n");
    }
    for v in &verdicts {
        let _ = writeln!(
            t,
            "{}/{}{}",
            v.ports,
            v.proto,
            v.rule.as_ref().map(|r| format!(" (rule \"{r}\")")).unwrap_or_default()
        );
        for (i, s) in v.steps.iter().enumerate() {
            let _ = write!(t, "  {}. {}: {}", i + 1, s.step, s.result);
            if !s.detail.is_empty() {
                let _ = write!(t, " - {}", s.detail);
            }
            t.push('\n');
        }
        let _ = writeln!(t, "  verdict: {} ({})", v.verdict, v.reason);
    }
    let entries: Vec<_> = f
        .entries
        .iter()
        .map(|(k, r)| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v["list"] = json!(k.name());
            v
        })
        .collect();
    let data = json!({
        "source": f.source.to_string(),
        "key": f.key.to_string(),
        "list": list,
        "entries": entries,
        "ban": f.ban,
        "known": f.known,
        "sets": f.sets,
        "dry_run": f.dry_run,
        "ports": verdicts,
    });
    Reply::new(t, data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sources::ManualEntry;

    fn facts() -> Facts {
        Facts {
            source: "192.0.2.7".parse().unwrap(),
            key: "192.0.2.7/32".parse().unwrap(),
            kernel_list: 0,
            entries: Vec::new(),
            ban: None,
            known: None,
            sets: Vec::new(),
            dry_run: false,
            ports: vec![PortFacts {
                proto: "udp",
                first: 5060,
                last: 5060,
                open: true,
                rule: Some("sip".into()),
                sets: Vec::new(),
                member: false,
                pinhole: None,
                class: Some(ClassFacts {
                    name: "signaling".into(),
                    levels: vec![LevelFacts { level: 1, pps: 20.0, burst: 40, ban_secs: 3600, conforms_now: true }],
                    unknown_budget_pps: Some(2000.0),
                    budget_spent: false,
                    observed_pps: None,
                }),
                sip: Some(SipFacts { user_agent_patterns: 3, method_limits: vec![], auth_watch: false }),
            }],
        }
    }

    fn one(f: &Facts) -> PortVerdict {
        decide(f).pop().unwrap()
    }

    fn steps(v: &PortVerdict) -> Vec<(&str, &str)> {
        v.steps.iter().map(|s| (s.step, s.result)).collect()
    }

    #[test]
    fn a_port_in_pinhole_mode_passes_a_live_pinhole_and_drops_the_rest() {
        let mut f = facts();
        let live = PinholeFacts { live: true, opened_by: vec!["sdp"], peer_port: Some(4000), falls_back: false };
        f.ports[0].pinhole = Some(live.clone());
        let v = one(&f);
        assert_eq!((v.verdict, v.reason), ("pass", "pinhole"));
        assert_eq!(steps(&v)[3..], [("port", "match"), ("pinhole", "pass")]);
        assert!(v.steps[4].detail.contains("latched to source port 4000"), "{:?}", v.steps[4]);
        f.ports[0].pinhole = Some(PinholeFacts { live: false, opened_by: vec![], peer_port: None, ..live.clone() });
        let v = one(&f);
        assert_eq!((v.verdict, v.reason), ("drop", "pinhole_closed"));
        f.ports[0].pinhole = Some(PinholeFacts { live: false, falls_back: true, opened_by: vec![], peer_port: None });
        let v = one(&f);
        assert_eq!(steps(&v)[4], ("pinhole", "match"), "the table is full: on to the rate class");
        assert_eq!(v.reason, "port_open");
    }

    #[test]
    fn every_step_and_reason_in_decision_order() {
        let f = facts();
        let v = one(&f);
        assert_eq!((v.verdict, v.reason), ("pass", "port_open"));
        assert_eq!(
            steps(&v),
            [
                ("allow_list", "no match"),
                ("block_list", "no match"),
                ("ban", "no match"),
                ("port", "match"),
                ("known_peer", "no match"),
                ("rate", "pass"),
                ("sip", "applies")
            ]
        );

        let mut a = facts();
        a.kernel_list = SOURCE_ALLOW;
        a.entries.push((
            ListKind::Allow,
            ListRow {
                cidr: "192.0.2.0/24".parse().unwrap(),
                origin: "manual".into(),
                manual: Some(ManualEntry {
                    reason: Some(Arc::from("office")),
                    who: Arc::from("ops"),
                    created: 0,
                    expires: None,
                }),
                fleet: None,
            },
        ));
        let v = one(&a);
        assert_eq!((v.verdict, v.reason, steps(&v).len()), ("pass", "allow_list", 1));
        assert!(v.steps[0].detail.contains("reason \"office\", by ops, no expiry"), "{:?}", v.steps);

        for (value, want) in [(SOURCE_BLOCK, "block_list"), (SOURCE_FLEET, "fleet_block")] {
            let mut b = facts();
            b.kernel_list = value;
            let v = one(&b);
            assert_eq!((v.verdict, v.reason), ("drop", want));
            assert_eq!(steps(&v).last(), Some(&("block_list", "match")));
        }

        let mut b = facts();
        b.ban = Some(BanFacts { class: "signaling".into(), level: 1, rate_pps: 900, created: Some(0), expires: 3600 });
        let v = one(&b);
        assert_eq!((v.reason, steps(&v).len()), ("banned", 3));
        assert!(v.steps[2].detail.contains("class signaling level 1 at 900 pps"), "{:?}", v.steps);

        let mut c = facts();
        c.ports[0].open = false;
        assert_eq!(one(&c).reason, "port_closed");

        let mut s = facts();
        s.ports[0].sets = vec!["carriers".into()];
        assert_eq!(one(&s).reason, "source_not_allowed");
        s.ports[0].member = true;
        s.sets = vec!["carriers".into()];
        let v = one(&s);
        assert_eq!(v.reason, "port_open");
        assert!(steps(&v).contains(&("source_sets", "match")));

        let mut u = facts();
        u.ports[0].class.as_mut().unwrap().budget_spent = true;
        assert_eq!(one(&u).reason, "unknown_over_budget");
        u.sets = vec!["carriers".into()];
        assert_eq!(one(&u).reason, "port_open", "a set member is known from its first packet");
        u.sets.clear();
        u.known = Some(KnownRecord { source: u.key, proof: "tcp".into(), since: 0, seen: 0 });
        let v = one(&u);
        assert_eq!(v.reason, "port_open", "a known peer does not draw from the budget");
        assert!(steps(&v).contains(&("known_peer", "match")));

        let mut r = facts();
        r.ports[0].class.as_mut().unwrap().levels[0].conforms_now = false;
        assert_eq!(one(&r).reason, "rate_limited");
        r.dry_run = true;
        assert_eq!(one(&r).verdict, "would_drop");
    }

    #[test]
    fn the_reply_carries_the_same_facts_as_text_and_json() {
        let mut f = facts();
        f.source = "2001:db8::1".parse().unwrap();
        f.key = "2001:db8::/64".parse().unwrap();
        let r = reply(&f);
        assert!(r.text.contains("source 2001:db8::1 (bans and rates count it as 2001:db8::/64)"), "{}", r.text);
        assert!(r.text.contains("5060/udp (rule \"sip\")"), "{}", r.text);
        assert!(r.text.contains("verdict: pass (port_open)"), "{}", r.text);
        assert_eq!(r.data["ports"][0]["reason"], "port_open");
        assert_eq!(r.data["ports"][0]["steps"][3]["step"], "port");
        assert_eq!(r.data["list"], "none");
        assert_eq!(r.data["key"], "2001:db8::/64");
    }
}
