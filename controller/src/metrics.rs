//! Prometheus metrics in the classic text format (the `prometheus` crate's `TextEncoder`, which
//! `promtool check metrics` accepts; OpenMetrics-only encoders are refused by it), and
//! `/healthz`.
//!
//! A scrape reads the per-CPU counter arrays (a fixed number of lookups) and counts the
//! controller keeps as it goes; it never walks a list, ban or rate table, so it costs the same
//! with 10 entries or a million.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use common::{reason, stat, verdict};
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use tokio::{net::TcpListener, sync::watch};
use tracing::error;

use crate::{firewall::Firewall, sources::ListKind};

/// Names of every metric family `/metrics` exports (the dashboard test checks against it).
pub const FAMILIES: &[&str] = &[
    "voipwall_packets_total",
    "voipwall_bytes_total",
    "voipwall_rule_packets_total",
    "voipwall_rule_bytes_total",
    "voipwall_bans_total",
    "voipwall_active_bans",
    "voipwall_list_entries",
    "voipwall_map_entries",
    "voipwall_map_capacity",
    "voipwall_policy_reloads_total",
    "voipwall_policy_info",
    "voipwall_policy_generation",
    "voipwall_xdp_attached",
    "voipwall_build_info",
    "voipwall_events_lost_total",
    "voipwall_capture_samples_total",
    "voipwall_sip_auth_events_total",
    "voipwall_sip_incomplete_total",
    "voipwall_known_peers",
    "voipwall_known_learned_total",
    "voipwall_unknown_budget_drops_total",
    "voipwall_unknown_over_budget",
    "voipwall_pinholes",
    "voipwall_pinhole_calls",
    "voipwall_pinholes_opened_total",
    "voipwall_pinholes_closed_total",
    "voipwall_pinholes_refused_total",
    "voipwall_pinhole_setup_seconds",
    "voipwall_signaling_messages_total",
];

/// Families exported while the policy has `[fleet.crowdsec]`.
pub const FLEET_FAMILIES: &[&str] = &[
    "voipwall_fleet_up",
    "voipwall_fleet_last_sync_age_seconds",
    "voipwall_fleet_errors_total",
    "voipwall_fleet_decisions",
    "voipwall_fleet_skipped_total",
    "voipwall_fleet_pushed_total",
    "voipwall_fleet_push_dropped_total",
    "voipwall_fleet_push_errors_total",
    "voipwall_fleet_push_queue",
];

/// Kinds of `voipwall_fleet_errors_total`, always exported (0 until they happen).
const FLEET_ERROR_KINDS: &[&str] = &["unreachable", "timeout", "auth", "http_status", "garbage", "kernel", "config"];

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn push(f: &mut MetricFamily, pairs: &[(&str, &str)], value: f64) {
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    match f.get_field_type() {
        MetricType::COUNTER => {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    f.mut_metric().push(m);
}

/// Every metric family, read from the fw.
pub fn gather(fw: &Firewall) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut packets = family(
        "voipwall_packets_total",
        "Packets seen by the XDP program, by verdict and reason.",
        MetricType::COUNTER,
    );
    let mut bytes =
        family("voipwall_bytes_total", "Bytes seen by the XDP program, by verdict and reason.", MetricType::COUNTER);
    let counters = fw.counters();
    for r in 0..reason::COUNT {
        let verdicts: &[u32] =
            if reason::is_drop(r) { &[verdict::DROP, verdict::WOULD_DROP] } else { &[verdict::PASS] };
        for &v in verdicts {
            let c = counters.as_ref().map(|c| c.get(v, r)).unwrap_or_default();
            let l = [("verdict", verdict::NAMES[v as usize]), ("reason", reason::NAMES[r as usize])];
            push(&mut packets, &l, c.packets as f64);
            push(&mut bytes, &l, c.bytes as f64);
        }
    }
    out.push(packets);
    out.push(bytes);

    let (policy, compiled) = fw.policy();
    let mut rule_packets = family(
        "voipwall_rule_packets_total",
        "Packets decided by a policy rule, by verdict (would_drop in dry run).",
        MetricType::COUNTER,
    );
    let mut rule_bytes =
        family("voipwall_rule_bytes_total", "Bytes decided by a policy rule, by verdict.", MetricType::COUNTER);
    if let Ok(rules) = fw.dataplane().rule_counters(compiled.rule_names.len()) {
        for (id, counts) in rules.iter().enumerate().skip(1) {
            for v in 0..verdict::COUNT {
                let l = [("rule", compiled.rule_names[id].as_str()), ("verdict", verdict::NAMES[v as usize])];
                push(&mut rule_packets, &l, counts[v as usize].packets as f64);
                push(&mut rule_bytes, &l, counts[v as usize].bytes as f64);
            }
        }
    }
    out.push(rule_packets);
    out.push(rule_bytes);

    let mut bans_total = family(
        "voipwall_bans_total",
        "Sources banned by the rate limiter, by rate class and level.",
        MetricType::COUNTER,
    );
    for name in compiled.class_names.iter().skip(1) {
        for level in [1u8, 2] {
            let n = fw.bans_total.get(&(name.clone(), level)).copied().unwrap_or(0);
            push(&mut bans_total, &[("class", name), ("level", &level.to_string())], n as f64);
        }
    }
    // The SIP checks ban with one level.
    for (_, name) in common::sip::CLASS_NAMES {
        let n = fw.bans_total.get(&(name.to_string(), 1)).copied().unwrap_or(0);
        push(&mut bans_total, &[("class", name), ("level", "1")], n as f64);
    }
    out.push(bans_total);

    let mut active = family("voipwall_active_bans", "Bans in force.", MetricType::GAUGE);
    push(&mut active, &[], fw.bans().len() as f64);
    out.push(active);

    let mut lists =
        family("voipwall_list_entries", "Entries of the block list, allow list and ban table.", MetricType::GAUGE);
    push(&mut lists, &[("list", "block")], fw.lists().len(ListKind::Block) as f64);
    push(&mut lists, &[("list", "allow")], fw.lists().len(ListKind::Allow) as f64);
    push(&mut lists, &[("list", "ban")], fw.bans().len() as f64);
    push(&mut lists, &[("list", "fleet")], fw.lists().fleet_len() as f64);
    out.push(lists);
    fleet_families(fw, &mut out);

    let mut entries = family(
        "voipwall_map_entries",
        "Entries in a BPF map (maps whose count the controller tracks).",
        MetricType::GAUGE,
    );
    let mut capacity = family("voipwall_map_capacity", "Capacity of a BPF map.", MetricType::GAUGE);
    for (map, e, c) in fw.map_fill() {
        if let Some(e) = e {
            push(&mut entries, &[("map", map)], e as f64);
        }
        push(&mut capacity, &[("map", map)], c as f64);
    }
    out.push(entries);
    out.push(capacity);

    let mut reloads = family("voipwall_policy_reloads_total", "Policy reloads by result.", MetricType::COUNTER);
    push(&mut reloads, &[("result", "ok")], fw.reloads.ok as f64);
    push(&mut reloads, &[("result", "error")], fw.reloads.error as f64);
    push(&mut reloads, &[("result", "rolled_back")], fw.reloads.rolled_back as f64);
    out.push(reloads);

    let mut info = family("voipwall_policy_info", "The policy in force (value 1).", MetricType::GAUGE);
    push(&mut info, &[("sha256", &policy.sha256), ("roles", &policy.roles.join(",")), ("path", &policy.path)], 1.0);
    out.push(info);

    let mut generation =
        family("voipwall_policy_generation", "Active policy generation (flips on every reload).", MetricType::GAUGE);
    push(&mut generation, &[], fw.dataplane().generation() as f64);
    out.push(generation);

    let mut attached = family("voipwall_xdp_attached", "1 while the XDP program is attached.", MetricType::GAUGE);
    match fw.attachment() {
        Some(a) => push(&mut attached, &[("iface", &fw.iface), ("mode", a.mode.as_str())], 1.0),
        None => push(&mut attached, &[("iface", &fw.iface), ("mode", "none")], 0.0),
    }
    out.push(attached);

    let stats = fw.dataplane().stats().ok();
    let stat_of = |slot: u32| stats.map_or(0, |s| s[slot as usize]) as f64;
    let mut lost = family(
        "voipwall_events_lost_total",
        "Ban events the program could not queue (ring buffer full); the bans themselves still apply.",
        MetricType::COUNTER,
    );
    push(&mut lost, &[], stat_of(stat::EVENTS_LOST));
    out.push(lost);

    let mut samples = family(
        "voipwall_capture_samples_total",
        "Drop samples ([capture]) the program queued for the pcapng and HEP writers, and those lost to a full ring buffer.",
        MetricType::COUNTER,
    );
    push(&mut samples, &[("result", "written")], stat_of(stat::CAPTURED));
    push(&mut samples, &[("result", "lost")], stat_of(stat::CAPTURE_LOST));
    out.push(samples);

    let mut auth = family(
        "voipwall_sip_auth_events_total",
        "What the SIP authentication watch counted: challenges the host sent (401/407 to a request without credentials), failed authentications (401/407 to a request with credentials, and 403), and requests that came with credentials.",
        MetricType::COUNTER,
    );
    push(&mut auth, &[("kind", "challenge")], stat_of(stat::SIP_CHALLENGES));
    push(&mut auth, &[("kind", "failure")], stat_of(stat::SIP_AUTH_FAILURES));
    push(&mut auth, &[("kind", "answer")], stat_of(stat::SIP_AUTH_ANSWERS));
    out.push(auth);

    let mut incomplete = family(
        "voipwall_sip_incomplete_total",
        "SIP requests inspected only in part and passed: their first line, headers or User-Agent value ran past the inspected window (sip.ua_window) before a User-Agent could be read. Requests written to evade inspection drop instead (reason sip_evasion).",
        MetricType::COUNTER,
    );
    push(&mut incomplete, &[], stat_of(stat::SIP_INCOMPLETE));
    out.push(incomplete);

    let mut known = family(
        "voipwall_known_peers",
        "Known peers (sources that proved their address) by proof, as of the last walk of the table (every 10 s).",
        MetricType::GAUGE,
    );
    let mut learned = family(
        "voipwall_known_learned_total",
        "Sources that became known (new, or known again after known_ttl), by proof.",
        MetricType::COUNTER,
    );
    for (i, name) in common::known::PROOF_NAMES.iter().enumerate() {
        push(&mut known, &[("proof", name)], fw.peers.by_proof.get(name).copied().unwrap_or(0) as f64);
        push(&mut learned, &[("proof", name)], stat_of(stat::KNOWN_LEARNED + i as u32));
    }
    out.push(known);
    out.push(learned);

    let mut budget_drops = family(
        "voipwall_unknown_budget_drops_total",
        "Packets of unknown sources refused by their rate class's shared budget, by class.",
        MetricType::COUNTER,
    );
    let mut over = family(
        "voipwall_unknown_over_budget",
        "1 while a class's unknown sources are over their budget (packets refused in the last second), else 0.",
        MetricType::GAUGE,
    );
    let drops = fw.dataplane().budget_drops().ok();
    for (id, class) in budgeted_classes(fw) {
        push(&mut budget_drops, &[("class", &class)], drops.as_ref().map_or(0.0, |d| d[id as usize] as f64));
        push(&mut over, &[("class", &class)], if fw.peers.over.contains_key(&class) { 1.0 } else { 0.0 });
    }
    out.push(budget_drops);
    out.push(over);

    pinhole_families(fw, &stat_of, &mut out);

    let mut build = family("voipwall_build_info", "voipwall build (value 1).", MetricType::GAUGE);
    push(&mut build, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    out.push(build);
    out
}

fn pinhole_families(fw: &Firewall, stat_of: &dyn Fn(u32) -> f64, out: &mut Vec<MetricFamily>) {
    let ph = &fw.pinholes;
    let mut live = family(
        "voipwall_pinholes",
        "Media pinholes in the table as of the last sweep (every second), by state: latched (media flowed) or waiting.",
        MetricType::GAUGE,
    );
    push(&mut live, &[("state", "latched")], ph.latched as f64);
    push(&mut live, &[("state", "waiting")], ph.live.saturating_sub(ph.latched) as f64);
    out.push(live);
    let mut calls = family("voipwall_pinhole_calls", "Calls the pinhole learner follows.", MetricType::GAUGE);
    push(&mut calls, &[], ph.calls() as f64);
    out.push(calls);
    let mut opened = family(
        "voipwall_pinholes_opened_total",
        "Media pinholes opened, by how: learned from the calls' SDP (learned), opened by the egress program before the host's own SDP left (provisional; the learner then takes them over), added with `voipwall pinhole add` (manual).",
        MetricType::COUNTER,
    );
    push(&mut opened, &[("by", "learned")], ph.opened as f64);
    push(&mut opened, &[("by", "provisional")], stat_of(stat::PINHOLES_EARLY));
    push(&mut opened, &[("by", "manual")], ph.opened_manual as f64);
    out.push(opened);
    let mut closed = family(
        "voipwall_pinholes_closed_total",
        "Media pinholes closed, by cause: bye, cancel, failure (a 3xx-6xx to the INVITE), moved (new SDP), idle (media silence), deleted, evicted.",
        MetricType::COUNTER,
    );
    for cause in crate::pinholes::calls::Cause::ALL {
        push(&mut closed, &[("cause", cause.as_str())], ph.closed.get(&cause).copied().unwrap_or(0) as f64);
    }
    out.push(closed);
    let mut refused = family(
        "voipwall_pinholes_refused_total",
        "Pinholes the table had no room for (pinhole_full decides what their media gets).",
        MetricType::COUNTER,
    );
    push(&mut refused, &[], ph.refused as f64);
    out.push(refused);

    let mut setup = family(
        "voipwall_pinhole_setup_seconds",
        "From the data plane seeing the SIP message that completes a pinhole to the pinhole in the table.",
        MetricType::HISTOGRAM,
    );
    let mut h = prometheus::proto::Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::new();
    for (i, bound) in crate::pinholes::SETUP_BUCKETS.iter().enumerate() {
        cumulative += ph.setup_counts[i];
        let mut b = prometheus::proto::Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    h.set_sample_count(ph.setup_counts.iter().sum());
    h.set_sample_sum(ph.setup_sum);
    let mut m = Metric::default();
    m.set_histogram(h);
    setup.mut_metric().push(m);
    out.push(setup);

    let mut signaling = family(
        "voipwall_signaling_messages_total",
        "SIP messages the programs copied out for the pinhole learner: read, lost (ring buffer full or over its budget), unreadable (not SIP).",
        MetricType::COUNTER,
    );
    push(&mut signaling, &[("result", "read")], ph.signals as f64);
    push(&mut signaling, &[("result", "lost")], stat_of(stat::SIGNALS_LOST));
    push(&mut signaling, &[("result", "unreadable")], ph.unreadable as f64);
    out.push(signaling);
}

fn fleet_families(fw: &Firewall, out: &mut Vec<MetricFamily>) {
    let Some(f) = fw.fleet() else { return };
    let st = &f.status;
    let now = crate::state::unix_now();
    let mut up = family(
        "voipwall_fleet_up",
        "1 while the last pull of CrowdSec decisions succeeded, else 0 (entries are kept either way).",
        MetricType::GAUGE,
    );
    push(&mut up, &[], if st.last_sync.is_some() && st.failing_since.is_none() { 1.0 } else { 0.0 });
    out.push(up);
    let mut age = family(
        "voipwall_fleet_last_sync_age_seconds",
        "Seconds since the last successful pull of CrowdSec decisions (+Inf before the first).",
        MetricType::GAUGE,
    );
    push(&mut age, &[], st.last_sync.map_or(f64::INFINITY, |t| now.saturating_sub(t) as f64));
    out.push(age);
    let mut errors =
        family("voipwall_fleet_errors_total", "Failed pulls of CrowdSec decisions, by kind.", MetricType::COUNTER);
    for kind in FLEET_ERROR_KINDS {
        push(&mut errors, &[("kind", kind)], st.errors.get(kind).copied().unwrap_or(0) as f64);
    }
    out.push(errors);
    let mut decisions = family("voipwall_fleet_decisions", "CrowdSec decisions applied, by origin.", MetricType::GAUGE);
    for (origin, n) in f.by_origin() {
        push(&mut decisions, &[("origin", &origin)], n as f64);
    }
    // A family without samples is not valid exposition: these two appear with their first.
    if !decisions.get_metric().is_empty() {
        out.push(decisions);
    }
    let mut skipped = family(
        "voipwall_fleet_skipped_total",
        "CrowdSec decisions not applied, by why (type:TYPE, scope, invalid, ended, filtered, protected, own).",
        MetricType::COUNTER,
    );
    for (why, n) in &st.skipped {
        push(&mut skipped, &[("why", why)], *n as f64);
    }
    if !skipped.get_metric().is_empty() {
        out.push(skipped);
    }
    for (name, help, v) in [
        ("voipwall_fleet_pushed_total", "This host's bans sent to the LAPI as alerts.", st.pushed),
        ("voipwall_fleet_push_dropped_total", "Bans dropped from the full push queue (oldest first).", st.push_dropped),
        ("voipwall_fleet_push_errors_total", "Failed pushes to the LAPI (the alerts stay queued).", st.push_errors),
    ] {
        let mut fam = family(name, help, MetricType::COUNTER);
        push(&mut fam, &[], v as f64);
        out.push(fam);
    }
    let mut queue = family("voipwall_fleet_push_queue", "Bans waiting to be pushed to the LAPI.", MetricType::GAUGE);
    push(&mut queue, &[], f.queued() as f64);
    out.push(queue);
}

/// Rate classes with an unknown budget: (id, name).
fn budgeted_classes(fw: &Firewall) -> Vec<(u8, String)> {
    let (_, compiled) = fw.policy();
    compiled
        .classes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.unknown.emission_ns != 0)
        .map(|(id, _)| (id as u8, compiled.class_name(id as u8)))
        .collect()
}

/// The classic text exposition of [`gather`].
pub fn render(fw: &Firewall) -> Result<String, prometheus::Error> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&gather(fw), &mut buf)?;
    Ok(String::from_utf8(buf).expect("the text encoder writes UTF-8"))
}

/// True while the program is attached and its maps answer.
pub fn healthy(fw: &Firewall) -> bool {
    fw.attachment().is_some() && fw.counters().is_ok()
}

type Shared = Arc<Mutex<Firewall>>;

async fn metrics_handler(State(fw): State<Shared>) -> impl IntoResponse {
    let rendered = tokio::task::spawn_blocking(move || {
        let fw = fw.lock().unwrap_or_else(|p| p.into_inner());
        render(&fw)
    })
    .await;
    match rendered {
        Ok(Ok(text)) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Ok(Err(e)) => {
            error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(fw): State<Shared>) -> impl IntoResponse {
    let ok = tokio::task::spawn_blocking(move || {
        let fw = fw.lock().unwrap_or_else(|p| p.into_inner());
        healthy(&fw)
    })
    .await
    .unwrap_or(false);
    if ok { (StatusCode::OK, "ok\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not attached\n") }
}

/// Serve `/metrics` and `/healthz` until `stop` flips.
pub async fn serve(listener: TcpListener, fw: Shared, mut stop: watch::Receiver<bool>) {
    let app = Router::new().route("/metrics", get(metrics_handler)).route("/healthz", get(healthz)).with_state(fw);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        })
        .await
    {
        error!(error = %e, "metrics server failed");
    }
}
