//! How the read-only views look: the text the CLI prints and the same facts as JSON (`--json`).
//! The firewall gathers the facts; this module only lays them out.

use std::fmt::Write as _;

use common::{reason, verdict};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    bans::BanRecord,
    dataplane::Counters,
    peers::KnownRecord,
    sources::{ListKind, ListRow, ManualEntry},
    state::rfc3339,
};

/// What an operation returns: a human rendering and the same facts as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub data: Value,
}

impl Reply {
    pub fn new(text: impl Into<String>, data: Value) -> Self {
        Self { text: text.into(), data }
    }
}

/// The CIDRs of a change for a log line or reply: all of a few, a count of many.
pub fn summarize(nets: &[IpNet]) -> String {
    if nets.len() <= 8 {
        nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
    } else {
        format!("{} CIDRs ({} ... {})", nets.len(), nets[0], nets[nets.len() - 1])
    }
}

/// Which lists `voipwall list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    All,
    Blocked,
    Allowed,
    Banned,
    Known,
}

impl Which {
    /// The CLI's word for a list; `None` for anything else.
    pub fn parse(word: Option<&str>) -> Option<Self> {
        match word.unwrap_or("all") {
            "all" => Some(Self::All),
            "blocked" => Some(Self::Blocked),
            "allowed" => Some(Self::Allowed),
            "banned" => Some(Self::Banned),
            "known" => Some(Self::Known),
            _ => None,
        }
    }

    fn shows(self, other: Self) -> bool {
        self == Self::All || self == other
    }
}

fn manual_details(m: &Option<ManualEntry>) -> String {
    match m {
        Some(m) => format!(
            "{}  {}  by {}  {}",
            m.expires.map_or("permanent".to_string(), |e| format!("until {}", rfc3339(e))),
            m.reason.as_deref().unwrap_or("-"),
            m.who,
            rfc3339(m.created)
        ),
        None => String::new(),
    }
}

/// `voipwall list`: `rows` gives a list's rows by kind.
pub fn list(which: Which, rows: impl Fn(ListKind) -> Vec<ListRow>, bans: &[BanRecord]) -> Reply {
    let mut data = serde_json::Map::new();
    let mut text = String::new();
    for (name, kind, w) in [("blocked", ListKind::Block, Which::Blocked), ("allowed", ListKind::Allow, Which::Allowed)]
    {
        if which.shows(w) {
            let rows = rows(kind);
            let _ = writeln!(text, "{name} ({}):", rows.len());
            for r in &rows {
                let mut details = manual_details(&r.manual);
                if let Some(f) = &r.fleet {
                    let _ = write!(
                        details,
                        "{}fleet: {} {} until {}",
                        if details.is_empty() { "" } else { "; " },
                        f.origin,
                        f.scenario,
                        rfc3339(f.expires)
                    );
                }
                let _ = writeln!(text, "  {:<43} {:<14} {}", r.cidr.to_string(), r.origin, details);
            }
            data.insert(name.into(), serde_json::to_value(&rows).expect("serializable"));
        }
    }
    if which.shows(Which::Banned) {
        let _ = writeln!(text, "banned ({}):", bans.len());
        for b in bans {
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
        let rows: Vec<Value> = bans
            .iter()
            .map(|b| json!({ "cidr": b.source, "origin": "auto", "class": b.class, "level": b.level, "rate_pps": b.rate_pps, "created": b.created, "expires": b.expires }))
            .collect();
        data.insert("banned".into(), Value::Array(rows));
    }
    Reply::new(text, Value::Object(data))
}

/// `voipwall fleet status`: `data` is the fleet's JSON (null: no fleet configured).
pub fn fleet(data: Value) -> Reply {
    if data.is_null() {
        return Reply::new("fleet: not configured (no [fleet.crowdsec] in the policy)\n", json!({ "fleet": null }));
    }
    let mut text = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        text,
        "fleet          crowdsec {} (pull {}, push {})",
        data["url"].as_str().unwrap_or("?"),
        data["pull"],
        data["push"]
    );
    let sync = match (data["last_sync"].as_str(), data["last_sync_age_s"].as_u64()) {
        (Some(at), Some(age)) => format!("{at} ({age} s ago), {} syncs", n(&data["syncs"])),
        _ => "never".into(),
    };
    let _ = writeln!(text, "last sync      {sync}");
    if let Some(since) = data["failing_since"].as_str() {
        let _ = writeln!(text, "failing since  {since}: {}", data["last_error"].as_str().unwrap_or("?"));
        let _ = writeln!(text, "               every entry is kept; retrying with backoff");
    }
    let pairs = |v: &Value| -> String {
        v.as_object()
            .filter(|m| !m.is_empty())
            .map_or("-".into(), |m| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "))
    };
    let _ = writeln!(text, "errors         {}", pairs(&data["errors"]));
    let _ = writeln!(
        text,
        "entries        {} ({} decisions: {})",
        n(&data["entries"]),
        n(&data["decisions"]),
        pairs(&data["decisions_by_origin"])
    );
    let _ = writeln!(text, "not applied    {}", pairs(&data["skipped"]));
    let _ = writeln!(
        text,
        "pushed         {} ({} queued, {} dropped, {} failed pushes)",
        n(&data["pushed"]),
        n(&data["push_queue"]),
        n(&data["push_dropped"]),
        n(&data["push_errors"])
    );
    Reply::new(text, json!({ "fleet": data }))
}

/// `voipwall list known`: the known peers, how each proved its address, since and last seen.
pub fn known(peers: &[KnownRecord]) -> Reply {
    let mut text = format!("known ({}):\n", peers.len());
    for p in peers {
        let _ = writeln!(
            text,
            "  {:<43} {:<13} since {}  seen {}",
            p.source.to_string(),
            p.proof,
            rfc3339(p.since),
            rfc3339(p.seen)
        );
    }
    Reply::new(text, json!({ "known": peers }))
}

/// `voipwall stats`: the counters by verdict and reason, then per rule (`rules[i]` is rule
/// `rule_names[i]`'s pass/drop/would-drop, rule 0 being "no rule").
pub fn stats(c: &Counters, rules: &[[common::Counter; verdict::COUNT as usize]], rule_names: &[String]) -> Reply {
    let mut text = String::from("verdict     reason                packets         bytes\n");
    let mut rows = Vec::new();
    for v in 0..verdict::COUNT {
        for r in 0..reason::COUNT {
            let x = c.get(v, r);
            if x.packets == 0 {
                continue;
            }
            let (vn, rn) = (verdict::NAMES[v as usize], reason::NAMES[r as usize]);
            let _ = writeln!(text, "{vn:<11} {rn:<20} {:>9} {:>13}", x.packets, x.bytes);
            rows.push(json!({ "verdict": vn, "reason": rn, "packets": x.packets, "bytes": x.bytes }));
        }
    }
    let mut rule_rows = Vec::new();
    let _ = writeln!(text, "\nrule                                   pass       drop  would_drop");
    for (id, counts) in rules.iter().enumerate().skip(1) {
        let name = &rule_names[id];
        let _ =
            writeln!(text, "{name:<36} {:>8} {:>10} {:>11}", counts[0].packets, counts[1].packets, counts[2].packets);
        rule_rows.push(json!({ "rule": name, "pass": counts[0].packets, "drop": counts[1].packets, "would_drop": counts[2].packets }));
    }
    Reply::new(text, json!({ "counters": rows, "rules": rule_rows }))
}

/// One row of `voipwall top`.
pub struct TopRow {
    pub source: IpNet,
    pub class: String,
    pub pps: u32,
    pub window_packets: u32,
    /// A known peer (its state lives in its known-peer entry).
    pub known: bool,
}

/// `voipwall top`: rows already sorted and cut.
pub fn top(rows: &[TopRow]) -> Reply {
    let mut text = format!("{:<43} {:<14} {:>10}  {}\n", "source", "class", "pps", "known");
    for r in rows {
        let _ = writeln!(
            text,
            "{:<43} {:<14} {:>10}  {}",
            r.source.to_string(),
            r.class,
            r.pps,
            if r.known { "yes" } else { "no" }
        );
    }
    let data: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "source": r.source, "class": r.class, "pps": r.pps, "window_packets": r.window_packets, "known": r.known }))
        .collect();
    Reply::new(text, json!({ "sources": data }))
}

/// One row of the map fill table: name, entries (if known without a walk), capacity.
pub type MapFill = (&'static str, Option<u64>, u32);

/// `voipwall status`: `data` is the JSON form; the text is laid out from it and `fill`.
pub fn status(data: Value, fill: &[MapFill]) -> Reply {
    let mut text = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let _ = writeln!(text, "interface      {}", s(&data["iface"]));
    if data["attached"].as_bool() == Some(true) {
        let adopted = match (data["adopted"].as_bool(), data["replaced_program"].as_u64()) {
            (_, Some(old)) => format!(", replaced program {old} on the adopted link"),
            (Some(true), None) => ", adopted".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "xdp            attached ({} mode, program id {}{adopted}) since {}",
            s(&data["xdp_mode"]),
            data["program_id"],
            s(&data["attached_since"])
        );
    } else {
        let _ = writeln!(text, "xdp            NOT attached");
    }
    let p = &data["policy"];
    let _ = writeln!(text, "policy         {} (sha256 {})", s(&p["path"]), s(&p["sha256"]));
    let roles: Vec<String> = p["roles"].as_array().map(|r| r.iter().map(s).collect()).unwrap_or_default();
    let _ = writeln!(text, "roles          {}", if roles.is_empty() { "-".into() } else { roles.join(", ") });
    let _ = writeln!(text, "generation     {}", p["generation"]);
    let dry = data["dry_run"].as_bool() == Some(true);
    let _ = writeln!(text, "dry run        {}", if dry { "yes (nothing is dropped)" } else { "no" });
    if let Some(secs) = p["pending_confirmation"].as_f64() {
        let _ = writeln!(text, "pending        reload rolls back in {secs:.0}s unless confirmed");
    }
    let r = &data["reloads"];
    let _ = writeln!(text, "reloads        ok {} / error {} / rolled back {}", r["ok"], r["error"], r["rolled_back"]);
    let k = &data["known"];
    let by: Vec<String> = k["by_proof"]
        .as_object()
        .map(|m| m.iter().filter(|(_, v)| v.as_u64() != Some(0)).map(|(n, v)| format!("{n} {v}")).collect())
        .unwrap_or_default();
    let _ = writeln!(
        text,
        "known peers    {}{}",
        k["total"],
        if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) }
    );
    let over: Vec<String> = data["over_budget"]
        .as_object()
        .map(|m| m.iter().map(|(c, v)| format!("{c} (refusing {v}/s)")).collect())
        .unwrap_or_default();
    let _ = writeln!(text, "over budget    {}", if over.is_empty() { "-".into() } else { over.join(", ") });
    let f = &data["fleet"];
    if !f.is_null() {
        let state = match (f["failing_since"].as_str(), f["last_sync_age_s"].as_u64()) {
            (Some(since), _) => format!("FAILING since {since} (entries kept)"),
            (None, Some(age)) => format!("synced {age} s ago"),
            (None, None) => "not synced yet".into(),
        };
        let _ = writeln!(text, "fleet          {} entries, {state}", f["entries"].as_u64().unwrap_or(0));
    }
    let _ = writeln!(text, "maps           entries / capacity");
    for (m, e, c) in fill {
        let _ = writeln!(text, "  {:<13} {:>9} / {}", m, e.map_or("-".to_string(), |e| e.to_string()), c);
    }
    Reply::new(text, data)
}
