//! End to end on a veth pair: a generator in the client namespace (the `bench_redirect`
//! program run with BPF_F_TEST_XDP_LIVE_FRAMES, bounded by its frame count) pushes frames into
//! the veth; the server end filters them with nothing, an XDP drop-all, voipwall, or the
//! equivalent nftables ruleset (netdev ingress or inet input: a set for the block list, a set of
//! open ports, a per-source meter). The generator and the receiving NAPI run on the same pinned
//! CPU inside one syscall, so frames/wall time is the single-core rate and wall/frames the CPU
//! cost per frame of the whole path.

use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use common::{reason, verdict};
use serde::Serialize;
use voipwall::{
    dataplane::{Dataplane, LoadOptions, XdpModeChoice},
    policy,
    sources::{KernelChange, SourceTables, TrieValue},
};

use crate::{
    bench::{
        Baseline, Mode, Settings, Stat,
        peers::XdpFilter,
        scale::{Rng, block_feed},
        side_by_side,
    },
    netns::{NetNs, Pair, mac_of},
    packet::Packet,
};

#[derive(Clone, Debug, Serialize)]
pub struct E2eRow {
    pub scenario: String,
    pub filter: String,
    pub frames: u64,
    /// Frames the filter (or the stack) is known to have handled.
    pub handled: u64,
    pub secs: f64,
    pub mpps: f64,
    pub ns_per_frame: f64,
}

/// A target's two filters on one scenario, measured in alternating rounds (the order switching
/// every round) with the ratio taken per round: one run of each swings with what else the
/// machine does.
#[derive(Clone, Debug, Serialize)]
pub struct E2ePaired {
    pub scenario: String,
    pub baseline: String,
    pub rounds: usize,
    pub voipwall_mpps: Stat,
    pub baseline_mpps: Stat,
    /// voipwall / baseline, per round.
    pub ratio: Stat,
}

const BLOCK_ENTRIES: usize = 10_000;

/// The open ports xdp-filter gets in the end-to-end runs (those the frames use; its port check
/// is one array read whichever ports are listed).
const XDP_FILTER_PORTS: [u16; 3] = [5060, 5061, 12000];

fn policy_text() -> String {
    "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{ pps = 10000000, burst = 100000000, ban = \"1h\" }]\nunknown = \"off\"\n[limit.media]\nunknown = \"off\"\n"
        .to_string()
}

fn nft_rules(family_hook: &str, iface: &str, blocks: &[ipnet::IpNet]) -> String {
    let (table, chain) = match family_hook {
        "netdev" => ("netdev", format!("type filter hook ingress device \"{iface}\" priority 0; policy accept;")),
        _ => ("inet", "type filter hook input priority 0; policy accept;".to_string()),
    };
    let elements: Vec<String> = blocks.iter().map(ToString::to_string).collect();
    format!(
        "table {table} vwbench {{
  counter closed_drops {{ }}
  counter passed {{ }}
  set blocklist {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}
  set open_udp {{ type inet_service; flags interval; elements = {{ 5060, 10000-20000, 35000-65000 }} }}
  set open_tcp {{ type inet_service; flags interval; elements = {{ 22, 443, 5060, 5061, 8442-8449 }} }}
  set persrc {{ type ipv4_addr; flags dynamic; timeout 60s; size 262144; }}
  chain filter {{
    {chain}
    ip saddr @blocklist drop
    udp dport @open_udp add @persrc {{ ip saddr limit rate over 10000000/second burst 1000000 packets }} drop
    udp dport @open_udp counter name passed accept
    tcp dport @open_tcp counter name passed accept
    meta l4proto {{ udp, tcp }} counter name closed_drops drop
  }}
}}
",
        elements.join(", ")
    )
}

fn nft_counter(ns: &NetNs, table: &str, name: &str) -> u64 {
    let out = ns.sh(&format!("nft -j list counter {table} vwbench {name}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    v["nftables"].as_array().and_then(|a| a.iter().find_map(|x| x["counter"]["packets"].as_u64())).unwrap_or(0)
}

fn udp_noports(ns: &NetNs) -> u64 {
    let snmp = ns.sh("cat /proc/net/snmp");
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (head, vals) =
        (lines[0].split_whitespace().collect::<Vec<_>>(), lines[1].split_whitespace().collect::<Vec<_>>());
    let i = head.iter().position(|h| *h == "NoPorts").expect("NoPorts column");
    vals[i].parse().unwrap_or(0)
}

fn xdp_drops(ns: &NetNs, iface: &str) -> u64 {
    let out = ns.sh_quiet(&format!("ethtool -S {iface}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("xdp_drops"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

/// Run the generator: `frames` copies of `frame` out of the client veth, in batches.
fn generate(pair: &Pair, b: &Baseline, frame: &[u8], frames: u32) -> Duration {
    let client_if = pair.client_if.clone();
    pair.client.enter(|| {
        let c = std::ffi::CString::new(client_if.clone()).expect("name");
        // SAFETY: valid C string.
        assert!(unsafe { libc::if_nametoindex(c.as_ptr()) } > 0, "generator runs in the client namespace");
        // The generator redirects to the interface index `run` wrote into BENCH_TARGET.
        let prog: &Xdp = b.ebpf.program("bench_redirect").expect("bench_redirect").try_into().expect("XDP");
        let start = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })
        .expect("live-frames test_run");
        start.elapsed()
    })
}

/// The two traffic mixes: closed-port frames (the drop path) and allowed SIP (the pass path,
/// which then costs the kernel stack too).
fn frames(pair: &Pair) -> Vec<(&'static str, Vec<u8>)> {
    let server: [u8; 4] =
        pair.server_v4().split('.').map(|o| o.parse().unwrap()).collect::<Vec<u8>>().try_into().unwrap();
    let dst_mac = mac_of(&pair.server, &pair.server_if);
    let src_mac = mac_of(&pair.client, &pair.client_if);
    let with_macs = |mut f: Vec<u8>| {
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f
    };
    vec![
        (
            "drop: UDP to a closed port",
            with_macs(Packet::udp4([192, 0, 2, 10], 40000, server, 9999).payload(&[0; 64]).bytes()),
        ),
        (
            "pass: allowed SIP (then the kernel stack)",
            with_macs(Packet::udp4([192, 0, 2, 11], 5060, server, 5060).payload(&[b'x'; 200]).bytes()),
        ),
    ]
}

/// The table of section 3 (one run of every filter on each scenario), then the targets' pairs.
pub fn run(settings: &Settings, b: &mut Baseline) -> (Vec<E2eRow>, Vec<E2ePaired>) {
    let frames_n: u32 = match settings.mode {
        Mode::Smoke => 20_000,
        Mode::Quick => 500_000,
        Mode::Full => 2_000_000,
    };
    let pair = prepare_pair(b);
    let mut rng = Rng::new(11);
    let blocks = block_feed(BLOCK_ENTRIES, &mut rng);
    // voipwall, loaded once for section 3 and the pairs.
    let (mut dp, _tables) = load_voipwall(settings, &blocks);
    let mut rows = Vec::new();
    let record = |rows: &mut Vec<E2eRow>, scenario: &str, filter: &str, handled: u64, d: Duration| {
        let secs = d.as_secs_f64();
        rows.push(E2eRow {
            scenario: scenario.to_string(),
            filter: filter.to_string(),
            frames: frames_n as u64,
            handled,
            secs,
            mpps: handled as f64 / secs / 1e6,
            ns_per_frame: secs * 1e9 / frames_n as f64,
        });
    };
    for (scenario, frame) in frames(&pair) {
        // 1. No filter: the stack drops them (no socket on the port).
        let before = udp_noports(&pair.server);
        let d = generate(&pair, b, &frame, frames_n);
        record(&mut rows, scenario, "none (kernel stack)", udp_noports(&pair.server) - before, d);

        // 2. XDP drop-all: the upper bound of any XDP filter on this path.
        if scenario.starts_with("drop") {
            let (handled, d) = run_drop_all(&pair, b, &frame, frames_n);
            record(&mut rows, scenario, "XDP drop-all", handled, d);
        }

        // 3. voipwall, native XDP, with a 10k-entry block list.
        let (handled, d) = run_voipwall(&pair, b, &mut dp, scenario, &frame, frames_n);
        record(&mut rows, scenario, "voipwall (XDP)", handled, d);

        // 4. xdp-filter (xdp-tools), native XDP, deny policy with the open ports, UDP only (its
        //    fastest program for these frames; it cannot hold the CIDR block list).
        {
            let rules: Vec<String> = XDP_FILTER_PORTS.iter().map(|p| format!("port {p}")).collect();
            let rules: Vec<&str> = rules.iter().map(String::as_str).collect();
            let xf = XdpFilter::load_on(&pair.server, &pair.server_if, "deny", "udp", &rules);
            let is_drop = scenario.starts_with("drop");
            let count = |ns: &NetNs, iface: &str| if is_drop { xdp_drops(ns, iface) } else { udp_noports(ns) };
            let before = count(&pair.server, &pair.server_if);
            let d = generate(&pair, b, &frame, frames_n);
            let handled = count(&pair.server, &pair.server_if) - before;
            drop(xf);
            record(&mut rows, scenario, "xdp-filter (XDP, deny policy, udp)", handled, d);
        }

        // 5./6. nftables: netdev ingress, inet input.
        for hook in ["netdev", "inet"] {
            let rules = nft_rules(hook, &pair.server_if, &blocks);
            let path = std::env::temp_dir().join(format!("vwbench-{}.nft", std::process::id()));
            std::fs::write(&path, rules).expect("write nft rules");
            pair.server.sh(&format!("nft -f {}", path.display()));
            let counter = if scenario.starts_with("drop") { "closed_drops" } else { "passed" };
            let before = nft_counter(&pair.server, hook, counter);
            let d = generate(&pair, b, &frame, frames_n);
            let handled = nft_counter(&pair.server, hook, counter) - before;
            pair.server.sh(&format!("nft delete table {hook} vwbench"));
            let _ = std::fs::remove_file(&path);
            record(
                &mut rows,
                scenario,
                &format!("nftables ({} hook)", if hook == "netdev" { "netdev ingress" } else { "inet input" }),
                handled,
                d,
            );
        }
    }
    let paired = paired(settings, b, &pair, &mut dp);
    (rows, paired)
}

/// A veth pair set up for the generator: rp_filter off, replies to the sources blackholed, NAPI
/// on the receiving end, and the generator's target interface written.
fn prepare_pair(b: &mut Baseline) -> Pair {
    let pair = Pair::new();
    for (ns, iface) in [(&pair.server, &pair.server_if), (&pair.client, &pair.client_if)] {
        ns.sh(&format!("sysctl -qw net.ipv6.conf.{iface}.disable_ipv6=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.{iface}.rp_filter=0"));
    }
    // Replies (ICMP unreachable) to the off-subnet sources are discarded cheaply.
    pair.server.sh("ip route add blackhole 192.0.2.0/24");
    // NAPI on the receiving veth so redirected frames are accepted without an XDP program.
    pair.server.sh(&format!("ethtool -K {} gro on", pair.server_if));
    {
        let mut target: Array<_, u32> =
            Array::try_from(b.ebpf.map_mut("BENCH_TARGET").expect("BENCH_TARGET")).expect("array");
        let c = std::ffi::CString::new(pair.client_if.clone()).unwrap();
        let idx = pair.client.enter(|| {
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        });
        target.set(0, idx, 0).expect("set target");
    }
    pair
}

/// The targets' pairs, voipwall against the baseline a target names (the XDP drop-all program
/// for the drop path, no filter for the pass path), in alternating rounds on the same veth.
fn paired(settings: &Settings, b: &mut Baseline, pair: &Pair, dp: &mut Dataplane) -> Vec<E2ePaired> {
    let (frames_n, rounds): (u32, usize) = match settings.mode {
        Mode::Smoke => (20_000, 2),
        Mode::Quick => (500_000, 4),
        Mode::Full => (1_000_000, 8),
    };
    let mpps = |(handled, d): (u64, Duration)| handled as f64 / d.as_secs_f64() / 1e6;
    frames(pair)
        .into_iter()
        .map(|(scenario, frame)| {
            let drop = scenario.starts_with("drop");
            // Both sides run the generator on `b`; only the drop-all side attaches a program of
            // it, one side at a time.
            let b = RefCell::new(&mut *b);
            let (voipwall_mpps, baseline_mpps, ratio) = side_by_side(
                rounds,
                || mpps(run_voipwall(pair, &b.borrow(), dp, scenario, &frame, frames_n)),
                || {
                    let mut b = b.borrow_mut();
                    if drop {
                        mpps(run_drop_all(pair, &mut b, &frame, frames_n))
                    } else {
                        let before = udp_noports(&pair.server);
                        let d = generate(pair, &b, &frame, frames_n);
                        mpps((udp_noports(&pair.server) - before, d))
                    }
                },
            );
            E2ePaired {
                scenario: scenario.to_string(),
                baseline: if drop { "XDP drop-all" } else { "none (kernel stack)" }.to_string(),
                rounds,
                voipwall_mpps,
                baseline_mpps,
                ratio,
            }
        })
        .collect()
}

/// voipwall loaded with the bench policy and the 10k-entry block list (the tables must live as
/// long as the data plane is measured).
fn load_voipwall(settings: &Settings, blocks: &[ipnet::IpNet]) -> (Dataplane, SourceTables) {
    let (_, compiled) = policy::parse("bench.toml", &policy_text()).expect("policy");
    let mut dp = Dataplane::load(&LoadOptions { pin_dir: None, capacity: settings.capacity() }).expect("load");
    dp.apply_policy(&compiled).expect("policy");
    let mut tables = SourceTables::new(dp.take_source_maps().expect("source maps"));
    for net in blocks {
        tables.write(&KernelChange { net: *net, value: Some(TrieValue::Block), before: None }).expect("block");
    }
    (dp, tables)
}

/// One run through voipwall attached in native mode: frames it counted for the scenario's
/// verdict, and the wall time.
fn run_voipwall(
    pair: &Pair,
    b: &Baseline,
    dp: &mut Dataplane,
    scenario: &str,
    frame: &[u8],
    frames_n: u32,
) -> (u64, Duration) {
    let iface = pair.server_if.clone();
    let attachment = pair.server.enter(|| dp.attach(&iface, XdpModeChoice::Native, None)).expect("attach voipwall");
    let r = if scenario.starts_with("drop") { reason::PORT_CLOSED } else { reason::PORT_OPEN };
    let v = if scenario.starts_with("drop") { verdict::DROP } else { verdict::PASS };
    let before = dp.counters().expect("counters").get(v, r).packets;
    let d = generate(pair, b, frame, frames_n);
    let handled = dp.counters().expect("counters").get(v, r).packets - before;
    dp.detach(attachment);
    (handled, d)
}

/// One run through the XDP drop-all program.
fn run_drop_all(pair: &Pair, b: &mut Baseline, frame: &[u8], frames_n: u32) -> (u64, Duration) {
    let iface = pair.server_if.clone();
    let link = pair.server.enter(|| {
        let prog: &mut Xdp = b.ebpf.program_mut("bench_drop").expect("bench_drop").try_into().expect("XDP");
        prog.attach(&iface, XdpMode::Driver).expect("attach bench_drop")
    });
    let before = xdp_drops(&pair.server, &pair.server_if);
    let d = generate(pair, b, frame, frames_n);
    let handled = xdp_drops(&pair.server, &pair.server_if) - before;
    let prog: &mut Xdp = b.ebpf.program_mut("bench_drop").expect("bench_drop").try_into().expect("XDP");
    prog.detach(link).expect("detach");
    (if handled == 0 { frames_n as u64 } else { handled }, d)
}
