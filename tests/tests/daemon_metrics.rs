//! `/metrics` tells the truth: known frames crafted and injected over a real veth move exactly
//! the counters they should; the output passes `promtool check metrics`; a real Prometheus
//! server scrapes it; the Grafana dashboard only queries metrics that exist.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tests::{
    bpf_available,
    daemon::{Daemon, Env},
    netns::{Injector, Pair, mac_of},
    packet::{Ext, Ip, L4, Packet, TCP_SYN, arp},
};

/// One metric family's samples: label set (sorted `k=v` pairs) -> value.
type Samples = BTreeMap<String, BTreeMap<String, f64>>;

fn parse(text: &str) -> Samples {
    let mut out: Samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut pairs: Vec<String> = Vec::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let end = after.find('"').expect("closing quote");
            pairs.push(format!("{}={}", k.trim_start_matches(','), &after[..end]));
            rest = &after[end + 1..];
        }
        pairs.sort();
        out.entry(name.to_string()).or_default().insert(pairs.join(","), value);
    }
    out
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.sort();
    let fam = s.get(name).unwrap_or_else(|| panic!("no metric {name}"));
    fam.iter().filter(|(k, _)| want.iter().all(|w| k.split(',').any(|p| p == w))).map(|(_, v)| *v).sum()
}

fn scrape(pair: &Pair) -> String {
    pair.server.sh("curl -sf 127.0.0.1:9947/metrics")
}

const POLICY: &str = r#"
roles = ["voip-edge"]
allow = ["198.51.100.10/32"]
block = ["192.0.2.66/32"]
[sets]
admins = ["203.0.113.0/24"]
[[rule]]
name = "ssh-admins"
proto = "tcp"
ports = ["22"]
from = ["admins"]
[limit.signaling]
levels = [{ pps = 1, burst = 10, ban = "1h" }]
[options]
icmp_echo = { pps = 1, burst = 2 }
[sip]
ua_ban = "0"
[sip.methods]
INVITE = { pps = 1, burst = 2 }
"#;

struct Sent {
    by_reason: BTreeMap<&'static str, (u64, u64)>,
}

impl Sent {
    fn send(&mut self, inj: &Injector, reason: &'static str, frame: &[u8], times: u64) {
        for _ in 0..times {
            inj.send(frame);
        }
        let e = self.by_reason.entry(reason).or_default();
        e.0 += times;
        e.1 += times * frame.len() as u64;
    }
}

/// A pair with IPv6 off (no neighbour discovery or MLD noise) and a frame injector.
fn quiet_pair() -> (Pair, Injector, [u8; 4]) {
    let pair = Pair::new();
    for (ns, iface) in [(&pair.server, &pair.server_if), (&pair.client, &pair.client_if)] {
        ns.sh(&format!("sysctl -qw net.ipv6.conf.{iface}.disable_ipv6=1"));
    }
    let inj = Injector::open(&pair.client, &pair.client_if, mac_of(&pair.server, &pair.server_if));
    let host: [u8; 4] =
        pair.server_v4().split('.').map(|o| o.parse().unwrap()).collect::<Vec<u8>>().try_into().unwrap();
    (pair, inj, host)
}

#[test]
#[ignore = "needs root and BPF"]
fn injected_traffic_moves_exactly_the_right_counters() {
    if !bpf_available() {
        return;
    }
    let (pair, inj, host) = quiet_pair();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let d = Daemon::start(&pair, &env, &["--metrics", "127.0.0.1:9947", "--policy", policy.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(500));
    let before = parse(&scrape(&pair));

    // Sources outside the server's subnet: it has no route back, so it never ARPs or answers.
    let peer = [192, 0, 2, 10];
    let mut sent = Sent { by_reason: BTreeMap::new() };
    let sip = Packet::udp4(peer, 5060, host, 5060).payload(b"OPTIONS sip:x SIP/2.0\r\n\r\n").bytes();
    sent.send(&inj, "port_open", &sip, 7);
    sent.send(&inj, "port_closed", &Packet::udp4(peer, 1, host, 9999).bytes(), 4);
    sent.send(&inj, "block_list", &Packet::udp4([192, 0, 2, 66], 1, host, 5060).bytes(), 3);
    sent.send(&inj, "allow_list", &Packet::udp4([198, 51, 100, 10], 1, host, 9999).bytes(), 2);
    sent.send(&inj, "malformed", &sip[..40], 5);
    sent.send(&inj, "icmp", &Packet::icmp4(peer, host, 0).bytes(), 2);
    sent.send(&inj, "icmp_denied", &Packet::icmp4(peer, host, 5).bytes(), 3);
    let echo = Packet::icmp4([192, 0, 2, 11], host, 8).bytes();
    sent.send(&inj, "icmp", &echo, 2);
    sent.send(&inj, "icmp_rate_limited", &echo, 3);
    sent.send(&inj, "source_not_allowed", &Packet::tcp4(peer, 40000, host, 22, TCP_SYN).bytes(), 3);
    sent.send(&inj, "protocol_closed", &Packet::new(Ip::v4(peer, host), L4::Raw { proto: 47 }).bytes(), 2);
    let orphan = Packet::udp4(peer, 5060, host, 5060).payload(&[0; 3000]).fragments(1480, 99)[1].clone();
    sent.send(&inj, "fragment_orphan", &orphan, 2);
    let mut other_arp = arp();
    other_arp[38..42].copy_from_slice(&[192, 0, 2, 254]);
    sent.send(&inj, "non_ip", &other_arp, 3);
    // IPv6 is off on the host, but the program still judges IPv6 frames.
    let v6 = Packet::udp6("2001:db8::10", 1, "2001:db8::1", 9999).ext(Ext::HopByHop(0)).bytes();
    sent.send(&inj, "port_closed", &v6, 1);
    // SIP checks: a scanner's User-Agent; INVITEs over their method limit (burst 2).
    let scan = Packet::udp4([192, 0, 2, 13], 5060, host, 5060)
        .payload(b"REGISTER sip:x SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n")
        .bytes();
    sent.send(&inj, "sip_user_agent", &scan, 3);
    let invite = Packet::udp4([192, 0, 2, 12], 5060, host, 5060)
        .payload(b"INVITE sip:x SIP/2.0\r\nUser-Agent: Yealink\r\n\r\n")
        .bytes();
    sent.send(&inj, "port_open", &invite, 2);
    sent.send(&inj, "sip_method_rate_limited", &invite, 2);
    // A request padded to evade inspection drops; one cut short before any User-Agent passes
    // and is counted as inspected in part.
    let evasive = format!("OPTIONS sip:x SIP/2.0\r\nUser-Agent{}: Yealink\r\n\r\n", " ".repeat(129));
    let evasive = Packet::udp4([192, 0, 2, 14], 5060, host, 5060).payload(evasive.as_bytes()).bytes();
    sent.send(&inj, "sip_evasion", &evasive, 2);
    let cut =
        Packet::udp4([192, 0, 2, 14], 5060, host, 5060).payload(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP x").bytes();
    sent.send(&inj, "port_open", &cut, 1);
    // A flood: burst 10 passes, the 11th crosses level 1 and bans, 2 more hit the ban.
    let flood = Packet::udp4([192, 0, 2, 20], 5060, host, 5060).bytes();
    sent.send(&inj, "port_open", &flood, 10);
    sent.send(&inj, "rate_limited", &flood, 1);
    sent.send(&inj, "banned", &flood, 2);

    std::thread::sleep(Duration::from_millis(1500));
    let text = scrape(&pair);
    let after = parse(&text);
    for reason in common::reason::NAMES {
        let verdict = if common::reason::is_drop(common::reason::from_name(reason).unwrap()) { "drop" } else { "pass" };
        let l = [("verdict", verdict), ("reason", reason)];
        let dp = get(&after, "voipwall_packets_total", &l) - get(&before, "voipwall_packets_total", &l);
        let db = get(&after, "voipwall_bytes_total", &l) - get(&before, "voipwall_bytes_total", &l);
        let (want_p, want_b) = sent.by_reason.get(reason).copied().unwrap_or((0, 0));
        if reason == "return_traffic" {
            continue;
        }
        assert_eq!(
            dp as u64, want_p,
            "voipwall_packets_total{{verdict={verdict},reason={reason}}} moved {dp}, expected {want_p}\n{text}"
        );
        assert_eq!(db as u64, want_b, "voipwall_bytes_total{{reason={reason}}} moved {db}, expected {want_b}");
    }
    let delta = |name: &str, l: &[(&str, &str)]| get(&after, name, l) - get(&before, name, l);
    assert_eq!(delta("voipwall_bans_total", &[("class", "signaling"), ("level", "1")]), 1.0);
    assert_eq!(get(&after, "voipwall_active_bans", &[]), 1.0);
    assert_eq!(get(&after, "voipwall_list_entries", &[("list", "ban")]), 1.0);
    assert_eq!(get(&after, "voipwall_list_entries", &[("list", "block")]), 1.0);
    assert_eq!(get(&after, "voipwall_list_entries", &[("list", "allow")]), 1.0);
    assert_eq!(delta("voipwall_rule_packets_total", &[("rule", "voip-edge/sip"), ("verdict", "pass")]), 20.0);
    assert_eq!(
        delta("voipwall_rule_packets_total", &[("rule", "voip-edge/sip"), ("verdict", "drop")]),
        8.0,
        "rate limit, User-Agent, evasion and method-limit drops on the SIP rule"
    );
    assert_eq!(delta("voipwall_sip_incomplete_total", &[]), 1.0, "the message cut short before any User-Agent");
    assert_eq!(delta("voipwall_rule_packets_total", &[("rule", "ssh-admins"), ("verdict", "drop")]), 3.0);
    assert_eq!(
        get(&after, "voipwall_map_entries", &[("map", "RATES")]),
        7.0,
        "(source, class) buckets: SIP peer, flooder, echo source, the scanner, the evasive sender, the INVITE sender in signaling and in sip-INVITE"
    );
    assert_eq!(
        delta("voipwall_bans_total", &[("class", "sip-user-agent"), ("level", "1")]),
        0.0,
        "ua_ban = 0 drops without banning"
    );
    assert!(get(&after, "voipwall_map_capacity", &[("map", "SOURCES_V4")]) > 0.0);
    assert_eq!(get(&after, "voipwall_xdp_attached", &[("iface", &pair.server_if)]), 1.0);
    assert_eq!(get(&after, "voipwall_build_info", &[]), 1.0);
    assert_eq!(get(&after, "voipwall_policy_info", &[("roles", "voip-edge")]), 1.0);

    // Dry run counts would-drops, per reason and per rule.
    let dry = env.write("dry.toml", &POLICY.replace("[options]\n", "[options]\ndry_run = true\n"));
    d.ok(&["reload", "--policy", dry.to_str().unwrap()]);
    let before = parse(&scrape(&pair));
    inj.send(&Packet::udp4(peer, 1, host, 9999).bytes());
    inj.send(&Packet::udp4(peer, 1, host, 9999).bytes());
    inj.send(&Packet::tcp4(peer, 40001, host, 22, TCP_SYN).bytes());
    std::thread::sleep(Duration::from_millis(500));
    let after = parse(&scrape(&pair));
    let delta = |name: &str, l: &[(&str, &str)]| get(&after, name, l) - get(&before, name, l);
    assert_eq!(delta("voipwall_packets_total", &[("verdict", "would_drop"), ("reason", "port_closed")]), 2.0);
    assert_eq!(delta("voipwall_rule_packets_total", &[("rule", "ssh-admins"), ("verdict", "would_drop")]), 1.0);
    assert_eq!(delta("voipwall_packets_total", &[("verdict", "drop"), ("reason", "port_closed")]), 0.0);
    assert_eq!(
        delta("voipwall_policy_reloads_total", &[("result", "ok")]),
        0.0,
        "the reload happened before this window"
    );
    assert_eq!(get(&after, "voipwall_policy_reloads_total", &[("result", "ok")]), 1.0);

    // Health.
    let code = pair.server.sh("curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:9947/healthz");
    assert_eq!(code, "200");
    let log = d.log_text();
    assert!(
        log.contains("banned")
            && log.contains("source=192.0.2.20/32")
            && log.contains("class=signaling")
            && log.contains("level=1")
            && log.contains("rate_pps=")
            && log.contains("until="),
        "ban log line has source, class, level, rate and expiry:\n{log}"
    );
    assert!(log.contains("policy reloaded"), "reloads are logged");
}

#[test]
#[ignore = "needs root and BPF"]
fn promtool_accepts_the_live_output_and_the_dashboard_queries_only_real_metrics() {
    if !bpf_available() {
        return;
    }
    let (pair, inj, host) = quiet_pair();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let d = Daemon::start(
        &pair,
        &env,
        &["--metrics", "127.0.0.1:9947", "--policy", policy.to_str().unwrap(), "--log-format", "json"],
    );
    // Populate every family: a ban, rule counters, a reload of each outcome.
    for _ in 0..12 {
        inj.send(&Packet::udp4([192, 0, 2, 20], 5060, host, 5060).bytes());
    }
    d.ok(&["reload"]);
    std::thread::sleep(Duration::from_millis(500));
    let text = scrape(&pair);
    tests::promtool_check_metrics(&env.root, &text);

    let exported = parse(&text);
    for family in voipwall::metrics::FAMILIES {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} is declared in /metrics");
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = Vec::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("voipwall_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            // Fleet families are exported while the policy has `[fleet.crowdsec]` (this one has
            // none; the fleet tests scrape them).
            assert!(
                exported.contains_key(&name) || voipwall::metrics::FLEET_FAMILIES.contains(&name.as_str()),
                "the dashboard queries {name}, which /metrics does not export (in `{e}`)"
            );
            used.push(name);
        }
    }
    for needed in voipwall::metrics::FAMILIES.iter().chain(voipwall::metrics::FLEET_FAMILIES) {
        // A histogram is queried through its series (`_bucket`, `_count`, `_sum`).
        let shows = |u: &String| {
            u == needed || u.strip_prefix(needed).is_some_and(|s| ["_bucket", "_count", "_sum"].contains(&s))
        };
        assert!(used.iter().any(shows), "the dashboard shows {needed}");
    }

    // JSON logs: one JSON object per line, the ban with its fields.
    let log = d.log_text();
    let ban = log.lines().find(|l| l.contains("\"banned\"")).unwrap_or_else(|| panic!("no JSON ban line:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(ban).unwrap();
    assert_eq!(v["fields"]["source"], "192.0.2.20/32");
    assert_eq!(v["fields"]["class"], "signaling");
    assert_eq!(v["fields"]["level"], 1);
    assert!(v["fields"]["until"].as_str().unwrap().ends_with('Z'));
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if (k == "expr" || k == "query") && v.is_string() {
                    out.push(v.as_str().unwrap().to_string());
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// A Prometheus server started by this test inside the server namespace, killed by PID.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(pair: &Pair, q: &str) -> Option<f64> {
    let out = pair.server.sh_quiet(&format!("curl -sf --get --data-urlencode 'query={q}' 127.0.0.1:9090/api/v1/query"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
#[ignore = "needs root and BPF"]
fn a_real_prometheus_scrapes_the_daemon() {
    if !bpf_available() {
        return;
    }
    let (pair, inj, host) = quiet_pair();
    let env = Env::new();
    let _d = Daemon::start(&pair, &env, &["--metrics", "127.0.0.1:9947"]);
    let config = env.write(
        "prometheus.yml",
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: voipwall\n    static_configs:\n      - targets: ['127.0.0.1:9947']\n",
    );
    let tsdb = env.root.join("tsdb");
    let prom = Command::new("ip")
        .args(["netns", "exec", &pair.server.name, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus)");
    let _prom = Prometheus(prom);
    let q = "sum(voipwall_packets_total{reason=\"port_closed\",verdict=\"drop\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        if let (Some(up), Some(v)) = (query(&pair, "up{job=\"voipwall\"}"), query(&pair, q))
            && up == 1.0
        {
            break v;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped voipwall");
        std::thread::sleep(Duration::from_millis(500));
    };
    for _ in 0..25 {
        inj.send(&Packet::udp4([192, 0, 2, 10], 1, host, 9999).bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = query(&pair, q).unwrap_or(before);
        if now - before == 25.0 {
            break;
        }
        assert!(now - before < 25.0, "counted more than sent: {before} -> {now}");
        assert!(Instant::now() < deadline, "Prometheus shows {before} -> {now}, expected +25");
        std::thread::sleep(Duration::from_millis(500));
    }
    // And PromQL over the series works (rate/increase across scrapes).
    std::thread::sleep(Duration::from_secs(2));
    let inc =
        query(&pair, "sum(increase(voipwall_packets_total{reason=\"port_closed\"}[1m]))").expect("increase() result");
    assert!(inc >= 25.0, "increase over the last minute is {inc}");
}

/// The known peers and the unknown sources' budgets, seen from outside: a TCP peer that
/// completed a handshake (and sent data the host acknowledged) counts as known by `tcp`; a
/// random-source flood over the signaling budget shows as budget drops, as the class over its
/// budget while it lasts, and as one log line going over and one coming back.
#[test]
#[ignore = "needs root and BPF"]
fn known_peers_and_unknown_budgets_in_metrics_status_and_log() {
    if !bpf_available() {
        return;
    }
    let (pair, inj, host) = quiet_pair();
    let env = Env::new();
    let policy = env.write("p.toml", "roles = [\"voip-edge\"]\n[limit.signaling]\nunknown = { pps = 5, burst = 5 }\n");
    let d = Daemon::start(&pair, &env, &["--metrics", "127.0.0.1:9947", "--policy", policy.to_str().unwrap()]);

    // A TCP SIP peer: handshake, a request, an answer.
    let (server, client) = (pair.server_v4(), pair.client_v4(2));
    let listener = pair.server.enter(|| std::net::TcpListener::bind(format!("{server}:5060"))).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap();
        std::io::Write::write_all(&mut s, &buf[..n]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    });
    let mut c = pair.client.enter(|| std::net::TcpStream::connect(format!("{server}:5060"))).unwrap();
    std::io::Write::write_all(&mut c, b"OPTIONS sip:x SIP/2.0\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(std::io::Read::read(&mut c, &mut buf).unwrap() > 0, "the TCP peer is answered");
    accept.join().unwrap();
    let known = d.json(&["list", "known"]);
    let rows = known["known"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["source"] == format!("{client}/32") && r["proof"] == "tcp"),
        "the TCP peer is known: {known}"
    );

    // 600 packets in 3 s from 600 sources: 5 fit the budget's burst, about 15 more its rate.
    let before = parse(&scrape(&pair));
    let started = Instant::now();
    let mut over_seen = (0.0, String::new());
    for i in 0..600u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        inj.send(&Packet::udp4(src, 5060, host, 5060).payload(b"OPTIONS sip:x SIP/2.0\r\n\r\n").bytes());
        tests::daemon::pace(started, u64::from(i), Duration::from_millis(5));
        if i == 400 {
            let text = scrape(&pair);
            over_seen =
                (get(&parse(&text), "voipwall_unknown_over_budget", &[("class", "signaling")]), d.ok(&["status"]));
        }
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = parse(&scrape(&pair));
    let delta = |name: &str, l: &[(&str, &str)]| get(&after, name, l) - get(&before, name, l);
    let refused = delta("voipwall_unknown_budget_drops_total", &[("class", "signaling")]);
    assert_eq!(
        refused,
        delta("voipwall_packets_total", &[("verdict", "drop"), ("reason", "unknown_over_budget")]),
        "the per-class budget drops add up to the reason's"
    );
    let admitted = 600.0 - refused;
    let bound = 5.0 + 5.0 * took.as_secs_f64() + 1.0;
    assert!(admitted >= 5.0 && admitted <= bound, "{admitted} unknown packets admitted, budget allows {bound:.0}");
    assert_eq!(over_seen.0, 1.0, "the class shows over its budget during the flood");
    assert!(over_seen.1.contains("over budget    signaling (refusing"), "status shows it:\n{}", over_seen.1);

    // It recovers, logged once each way; the known peer is counted by its proof.
    let deadline = Instant::now() + Duration::from_secs(15);
    let settled = loop {
        let s = parse(&scrape(&pair));
        let done = get(&s, "voipwall_unknown_over_budget", &[("class", "signaling")]) == 0.0
            && get(&s, "voipwall_known_peers", &[("proof", "tcp")]) == 1.0;
        if done || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(get(&settled, "voipwall_unknown_over_budget", &[("class", "signaling")]), 0.0, "recovered");
    assert_eq!(get(&settled, "voipwall_known_peers", &[("proof", "tcp")]), 1.0);
    assert_eq!(get(&settled, "voipwall_known_learned_total", &[("proof", "tcp")]), 1.0);
    let log = d.log_text();
    let over_lines = log.lines().filter(|l| l.contains("over their budget") && l.contains("class=signaling")).count();
    let back_lines =
        log.lines().filter(|l| l.contains("back within their budget") && l.contains("class=signaling")).count();
    assert_eq!((over_lines, back_lines), (1, 1), "one line over, one line back:\n{log}");
}
