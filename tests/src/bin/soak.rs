//! `cargo xtask soak --minutes N`: one voipwall host of a CrowdSec fleet under mixed legitimate
//! and attack traffic for N minutes, with a policy reload every 10 s, list changes from the CLI
//! and the LAPI killed and restarted every minute. Every 10 s it samples the daemon's RSS, open
//! file descriptors, map fills and lost events; at the end it checks that RSS and FDs stayed
//! flat, that no legitimate packet was lost, that nothing reached a port it must not, and that
//! the packets the data plane counted (all verdicts and reasons) equal the packets the client
//! side sent. Exit status 1 when a check fails.
//!
//! Everything runs in the namespaces the fleet helpers create (the client namespace has no
//! route out); generators stop by themselves at the deadline.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tests::{
    crowdsec::{Fleet, INTERVAL},
    daemon::{Daemon, pace},
    netns::{NetNs, Pair},
};

/// Per-source packets received by the server's sockets.
type Received = Arc<Mutex<BTreeMap<String, u64>>>;

/// A generator: `pps` datagrams a second from `src` to `dst(seq)` until `stop` or `deadline`.
fn generator(
    ns: &NetNs,
    src: &str,
    pps: u64,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    send: impl Fn(&UdpSocket, u64) + Send + 'static,
) -> JoinHandle<u64> {
    let sock = ns.enter(|| UdpSocket::bind(src)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
    std::thread::spawn(move || {
        let gap = Duration::from_nanos(1_000_000_000 / pps.max(1));
        let start = Instant::now();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            send(&sock, n);
            n += 1;
            pace(start, n, gap);
        }
        n
    })
}

/// Count what arrives at `addr` in `ns`, by source address, until `stop`.
fn receiver(ns: &NetNs, addr: &str, got: Received, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let sock = ns.enter(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) => *got.lock().unwrap().entry(from.ip().to_string()).or_default() += 1,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => {}
            }
        }
    })
}

fn sip(ua: &str, seq: u64, server: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{seq}\r\nFrom: <sip:soak@{server}>;tag={seq}\r\nTo: <sip:{server}>\r\nCall-ID: {seq}@soak\r\nCSeq: {seq} OPTIONS\r\nUser-Agent: {ua}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// `voipwall stats` as (verdict, reason) -> packets.
fn counters(d: &Daemon) -> BTreeMap<(String, String), u64> {
    d.json(&["stats"])["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let k = (r["verdict"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string());
            (k, r["packets"].as_u64().unwrap())
        })
        .collect()
}

/// The data plane's total count and the client interface's transmitted packets, read as a pair
/// nothing arrived between (a frame counted between the two reads would show as a difference).
fn snapshot(d: &Daemon, pair: &Pair) -> (u64, u64) {
    for _ in 0..50 {
        let counted: u64 = counters(d).values().sum();
        let tx = tx_packets(pair);
        if counters(d).values().sum::<u64>() == counted && tx_packets(pair) == tx {
            return (counted, tx);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the link never went quiet for a consistent snapshot");
}

fn tx_packets(pair: &Pair) -> u64 {
    let out = pair.client.sh(&format!("ip -s -j link show dev {}", pair.client_if));
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    v[0]["stats64"]["tx"]["packets"].as_u64().expect("tx packets")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

fn main() {
    let minutes: u64 =
        std::env::args().skip_while(|a| a != "--minutes").nth(1).map(|m| m.parse().expect("--minutes N")).unwrap_or(30);
    assert!(tests::bpf_available(), "the soak needs root and BPF");
    let total = Duration::from_secs(minutes * 60);
    println!("soak: {minutes} min; one fleet host, LAPI flapping every 60 s, reload every 10 s");

    let mut fleet = Fleet::start_full(1, false, "2s", INTERVAL, "5m");
    let policy_path = fleet.envs[0].root.join("policy.toml");
    let fleet_section = {
        let text = std::fs::read_to_string(&policy_path).unwrap();
        text[text.find("[fleet.crowdsec]").expect("fleet section")..].to_string()
    };
    let head = "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{ pps = 200, burst = 400, ban = \"1m\" }]\nunknown = \"off\"\n";
    let policies = [
        format!("{head}{fleet_section}"),
        format!("{head}[[rule]]\nname = \"extra\"\nproto = \"udp\"\nports = [\"7000-7100\"]\n{fleet_section}"),
    ];
    std::fs::write(&policy_path, &policies[0]).unwrap();
    fleet.daemons[0].ok(&["reload"]);

    let pair = &fleet.site.hosts[0].pair;
    // The fleet helpers turn IPv6 off on the filtered link; the soak wants an IPv6 stream too.
    pair.server.sh(&format!(
        "sysctl -qw net.ipv6.conf.{0}.disable_ipv6=0 && ip -6 addr add {1}/64 dev {0} nodad",
        pair.server_if,
        pair.server_v6()
    ));
    pair.client.sh(&format!(
        "sysctl -qw net.ipv6.conf.{0}.disable_ipv6=0 && ip -6 addr add {1}/64 dev {0} nodad",
        pair.client_if,
        pair.client_v6(8)
    ));
    let server = pair.server_v4();
    let stop = Arc::new(AtomicBool::new(false));
    let got: Received = Arc::default();
    let receivers = [
        receiver(&pair.server, &format!("{server}:5060"), got.clone(), stop.clone()),
        receiver(&pair.server, &format!("{server}:12000"), got.clone(), stop.clone()),
        receiver(&pair.server, &format!("[{}]:12000", pair.server_v6()), got.clone(), stop.clone()),
    ];
    let (counted_before, tx_before) = snapshot(&fleet.daemons[0], pair);
    let deadline = Instant::now() + total;
    let started = Instant::now();

    let to = |port: u16| -> SocketAddr { format!("{server}:{port}").parse().unwrap() };
    let (sip_to, rtp_to) = (to(5060), to(12000));
    let rtp6_to: SocketAddr = format!("[{}]:12000", pair.server_v6()).parse().unwrap();
    let srv = server.clone();
    let srv2 = server.clone();
    let srv3 = server.clone();
    // Legitimate: a SIP peer (50/s), an RTP stream over IPv4 (200/s) and one over IPv6 (50/s).
    let legit = vec![
        (
            pair.client_v4(2),
            generator(&pair.client, &format!("{}:5062", pair.client_v4(2)), 50, deadline, stop.clone(), move |s, n| {
                let _ = s.send_to(&sip("Linphone/5.2", n, &srv), sip_to);
            }),
        ),
        (
            pair.client_v4(3),
            generator(
                &pair.client,
                &format!("{}:40000", pair.client_v4(3)),
                200,
                deadline,
                stop.clone(),
                move |s, n| {
                    let _ = s.send_to(&n.to_be_bytes(), rtp_to);
                },
            ),
        ),
        (
            pair.client_v6(8),
            generator(
                &pair.client,
                &format!("[{}]:40000", pair.client_v6(8)),
                50,
                deadline,
                stop.clone(),
                move |s, n| {
                    let _ = s.send_to(&n.to_be_bytes(), rtp6_to);
                },
            ),
        ),
    ];
    // Attacks: a SIP scanner, a closed-port sweep, and a flood of 2 s every 30 s.
    let scanner =
        generator(&pair.client, &format!("{}:5070", pair.client_v4(4)), 20, deadline, stop.clone(), move |s, n| {
            let _ = s.send_to(&sip("friendly-scanner", n, &srv2), sip_to);
        });
    let base = server.clone();
    let sweep =
        generator(&pair.client, &format!("{}:0", pair.client_v4(5)), 100, deadline, stop.clone(), move |s, n| {
            let port = 9000 + (n * 7919 % 1000) as u16;
            let _ = s.send_to(b"probe", format!("{base}:{port}").parse::<SocketAddr>().unwrap());
        });
    let flood =
        generator(&pair.client, &format!("{}:5080", pair.client_v4(6)), 2000, deadline, stop.clone(), move |s, n| {
            // Sends only in the first 2 s of every 30 s (4000 datagrams), idles otherwise.
            if n % 60_000 < 4000 {
                let _ = s.send_to(&sip("flood", n, &srv3), sip_to);
            }
        });
    // A source the CLI blocks and unblocks every 10 s.
    let toggled =
        generator(&pair.client, &format!("{}:40001", pair.client_v4(7)), 20, deadline, stop.clone(), move |s, n| {
            let _ = s.send_to(&n.to_be_bytes(), rtp_to);
        });

    let d = &fleet.daemons[0];
    let pid = d.pid();
    let mut samples = Vec::new();
    let mut tick = 0u64;
    let mut lapi_down_since: Option<Instant> = None;
    let mut failures = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now())));
        tick += 1;
        std::fs::write(&policy_path, &policies[(tick % 2) as usize]).unwrap();
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.ok(&["reload"]))) {
            failures.push(format!("reload at tick {tick} failed: {e:?}"));
        }
        let blocked = pair.client_v4(7);
        if tick % 2 == 1 {
            d.ok(&["block", &blocked, "--reason", "soak toggle"]);
        } else {
            d.ok(&["unblock", &blocked]);
        }
        // The LAPI is down for 10 s of every minute.
        if tick.is_multiple_of(6) {
            fleet.lapi.kill();
            lapi_down_since = Some(Instant::now());
        } else if lapi_down_since.take().is_some() {
            fleet.lapi.restart();
        }
        let status = d.json(&["status"]);
        let metrics = fleet.site.hosts[0].pair.server.sh("curl -sf 127.0.0.1:9947/metrics");
        let s = Sample { at: started.elapsed(), rss_kib: proc_status_kib(pid, "VmRSS:"), fds: open_fds(pid) };
        let fills: Vec<String> = status["maps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["entries"].as_u64().unwrap_or(0) > 0)
            .map(|m| format!("{}={}/{}", m["map"].as_str().unwrap(), m["entries"], m["capacity"]))
            .collect();
        println!(
            "t={:>5.0}s rss={} KiB fds={} events_lost={} maps: {}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.fds,
            metric(&metrics, "voipwall_events_lost_total"),
            fills.join(" ")
        );
        samples.push(s);
    }
    if lapi_down_since.is_some() {
        fleet.lapi.restart();
    }
    stop.store(true, Ordering::Relaxed);
    let sent_legit: Vec<(String, u64)> = legit.into_iter().map(|(src, h)| (src, h.join().unwrap())).collect();
    let sent_scan = scanner.join().unwrap();
    let sent_sweep = sweep.join().unwrap();
    let flood_iters = flood.join().unwrap();
    let sent_flood = (0..flood_iters).filter(|n| n % 60_000 < 4000).count() as u64;
    let sent_toggled = toggled.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for r in receivers {
        r.join().unwrap();
    }
    let got = got.lock().unwrap().clone();
    let d = &fleet.daemons[0];
    let after = counters(d);
    let (counted_after, tx_after) = snapshot(d, pair);
    let (counted, tx) = (counted_after - counted_before, tx_after - tx_before);

    println!("\nsent / delivered:");
    for (src, sent) in &sent_legit {
        let delivered = got.get(src).copied().unwrap_or(0);
        println!("  legitimate from {src}: {sent} sent, {delivered} delivered");
        if delivered != *sent {
            failures.push(format!("legitimate traffic from {src} lost {} of {sent}", sent.saturating_sub(delivered)));
        }
    }
    let scan_got = got.get(&pair.client_v4(4)).copied().unwrap_or(0);
    println!("  scanner: {sent_scan} sent, {scan_got} delivered");
    if scan_got != 0 {
        failures.push(format!("{scan_got} scanner packets delivered"));
    }
    println!("  closed-port sweep: {sent_sweep} sent (no listener)");
    println!("  flood: {sent_flood} sent, {} delivered", got.get(&pair.client_v4(6)).copied().unwrap_or(0));
    println!("  toggled block: {sent_toggled} sent, {} delivered", got.get(&pair.client_v4(7)).copied().unwrap_or(0));
    println!("\ncounted by the data plane (whole run, all sources incl. ARP/ND):");
    for ((v, r), p) in &after {
        println!("  {v:<10} {r:<24} {p}");
    }
    println!("  total counted {counted}, client interface sent {tx}, difference {}", counted as i64 - tx as i64);
    if counted != tx {
        failures.push(format!("the data plane counted {counted} packets but the client side sent {tx}"));
    }
    // Flat: the last quarter's RSS within 4 MiB of the first quarter's peak, FDs unchanged.
    if samples.len() >= 4 {
        let q = samples.len() / 4;
        let early = samples[..q].iter().map(|s| s.rss_kib).max().unwrap();
        let late = samples[samples.len() - q..].iter().map(|s| s.rss_kib).max().unwrap();
        let (fd_min, fd_max) =
            (samples[q..].iter().map(|s| s.fds).min().unwrap(), samples[q..].iter().map(|s| s.fds).max().unwrap());
        println!(
            "\nRSS first quarter peak {early} KiB, last quarter peak {late} KiB; FDs after warm-up {fd_min}-{fd_max}"
        );
        if late > early + 4096 {
            failures.push(format!("RSS grew from {early} KiB to {late} KiB"));
        }
        if fd_max > fd_min + 2 {
            failures.push(format!("open FDs moved between {fd_min} and {fd_max}"));
        }
    }
    if failures.is_empty() {
        println!("\nsoak passed");
    } else {
        println!("\nsoak FAILED:\n  {}", failures.join("\n  "));
        drop(fleet);
        std::process::exit(1);
    }
}
