//! Floods from spoofed sources, end to end: the VoIP site of `e2e_voip` (Kamailio with digest
//! authentication behind voipwall), and trafgen (Debian's `netsniff-ng`) in the attacker's
//! namespace sending valid SIP requests, RTP-sized datagrams or TCP SYNs from a random source
//! address in every packet, as fast as it goes. The pbx namespace has no default route, so the
//! answers its SIP server sends to the random addresses die there. Each test prints its
//! figures (`--nocapture`).

use std::time::{Duration, Instant};

use tests::{
    bpf_available,
    daemon::Daemon,
    netns::{NetNs, mac_of},
    pbx::{PASSWORD, Pbx, admin_policy, assert_rtp},
    site::{FloodSpec, PassedCounter, Site, Spoofed, StrictEcho, Trafgen},
    voip::{Background, Sipp, asset, sipp_calls},
};

/// How long each flood lasts (at least 10 s of flood while the phone works through it).
const FLOOD: Duration = Duration::from_secs(12);
/// The signaling class's budget for unknown sources (the built-in default).
const BUDGET_PPS: f64 = 2000.0;
const BUDGET_BURST: f64 = 4000.0;
/// The SIP port the pbx pings its carrier from (a SIP port of the policy, as a SIP server's
/// own listening port would be).
const PING_PORT: u16 = 5090;

/// The default role, admins, and a SIP port to ping the carrier from.
fn policy(site: &Site) -> String {
    admin_policy(
        site,
        &["voip-edge"],
        &format!(
            "[sip]\nports = [\"5060\", \"{PING_PORT}\"]\n[[rule]]\nname = \"carrier-ping\"\nproto = \"udp\"\nports = [\"{PING_PORT}\"]\nlimit = \"signaling\"\n"
        ),
    )
}

/// A valid SIP OPTIONS, as a scanner or a flood sends it.
fn options_payload(dst: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:100@{dst} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKflood\r\nFrom: <sip:flood@192.0.2.1>;tag=f1\r\nTo: <sip:100@{dst}>\r\nCall-ID: flood@192.0.2.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn flood(p: &Pbx, what: Spoofed, payload: &[u8]) -> Trafgen {
    let mac = mac_of(&p.site.pbx.ns, &p.site.pbx.iface);
    let spec = FloodSpec { what, payload, count: 50_000_000, pps: None, limit: FLOOD };
    Trafgen::start(&p.site.attacker.ns, &p.site.attacker.iface, mac, spec, &p.env.root)
}

/// SIPp transactions from `ns` (`local`, `port`) to `target` with `scenario`: `count` of them at
/// `rate` per second; (answered, failed).
fn transactions(ns: &NetNs, target: &str, scenario: &str, local: &str, port: u16, count: u32, rate: u32) -> (u64, u64) {
    let sf = asset(scenario);
    let port = port.to_string();
    let (m, r) = (count.to_string(), rate.to_string());
    let limit = Duration::from_secs(u64::from(count / rate.max(1)) + 20);
    let out = Sipp::run(
        ns,
        &[
            target,
            "-sf",
            sf.to_str().unwrap(),
            "-s",
            "100",
            "-au",
            "100",
            "-ap",
            PASSWORD,
            "-i",
            local,
            "-p",
            &port,
            "-m",
            &m,
            "-r",
            &r,
            "-recv_timeout",
            "4000",
        ],
        limit,
    );
    sipp_calls(&String::from_utf8_lossy(&out.stdout))
}

/// Counters of the daemon: (packets a rule passed, packets unknown sources' budgets refused).
fn counters(d: &Daemon, rule: &str) -> (u64, u64) {
    let stats = d.json(&["stats"]);
    let pass = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == rule)
        .map_or(0, |r| r["pass"].as_u64().unwrap_or(0));
    let refused = stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["reason"] == "unknown_over_budget")
        .map(|c| c["packets"].as_u64().unwrap_or(0))
        .sum();
    (pass, refused)
}

fn known(d: &Daemon) -> Vec<(String, String)> {
    d.json(&["list", "known"])["known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["source"].as_str().unwrap().to_string(), k["proof"].as_str().unwrap().to_string()))
        .collect()
}

/// The pbx pings the carrier from its SIP port: the carrier's answer makes it known.
fn ping_carrier(p: &Pbx) -> Background {
    let carrier = p.site.carrier.ip().to_string();
    let uas = Sipp::spawn(
        &p.site.carrier.ns,
        &["-sf", asset("options_uas.xml").to_str().unwrap(), "-i", &carrier, "-p", "5060", "-m", "1"],
        Duration::from_secs(30),
        &p.env.root.join("carrier-uas.log"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let pbx = p.site.pbx.ip().to_string();
    let (ok, failed) = transactions(&p.site.pbx.ns, &format!("{carrier}:5060"), "options.xml", &pbx, PING_PORT, 1, 1);
    assert_eq!((ok, failed), (1, 0), "the carrier answers the pbx's OPTIONS ping");
    uas
}

#[track_caller]
fn assert_within_budget(what: &str, passed: u64, took: Duration) {
    let bound = BUDGET_PPS * took.as_secs_f64() + BUDGET_BURST + 2.0;
    eprintln!(
        "figure: {what}: {passed} flood packets passed XDP in {took:.1?}; bound (budget x duration + burst) {bound:.0}"
    );
    assert!((passed as f64) <= bound, "{what}: {passed} flood packets passed, more than {bound:.0}");
}

/// The SIP flood every operator sees: valid OPTIONS to 5060 from a random IPv4 address per
/// packet. A phone registered before, a carrier the pbx pinged before, a call placed during
/// the flood and a phone never seen before all get through; the flood gets the budget.
#[test]
#[ignore = "needs root and BPF"]
fn flood_1_random_source_sip_flood_keeps_phones_calls_and_carriers() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let text = policy(&site);
    let p = Pbx::start_with_site(site, Some(text), true, 10000);
    let _carrier_uas = ping_carrier(&p);
    p.register(false, 5060);
    let k = known(p.d());
    let (phone, carrier) = (p.site.phone.ip().to_string(), p.site.carrier.ip().to_string());
    assert!(k.contains(&(format!("{phone}/32"), "sip-digest".into())), "the registered phone is known: {k:?}");
    assert!(k.contains(&(format!("{carrier}/32"), "sip-response".into())), "the pinged carrier is known: {k:?}");

    let pbx = p.site.pbx.ip().to_string();
    let target = format!("{pbx}:5060");
    let new_phone = format!("10.99.{}.12", p.site.net);
    p.site.phone.ns.sh(&format!("ip addr add {new_phone}/24 dev {}", p.site.phone.iface));
    let witness = PassedCounter::new(&p.site.pbx.ns, 5060, &[&phone, &carrier, &new_phone]);
    let (pass0, refused0) = counters(p.d(), "voip-edge/sip");
    let legit0 = legit_requests(&p, &[&phone, &carrier, &new_phone]);
    let started = Instant::now();
    let f = flood(&p, Spoofed::Udp4 { dst: &pbx, port: 5060 }, &options_payload(&pbx));
    std::thread::sleep(Duration::from_secs(1));
    let (options, registers, invites, tries, rtp) = std::thread::scope(|s| {
        let options = s.spawn(|| transactions(&p.site.phone.ns, &target, "options.xml", &phone, 5065, 100, 10));
        let registers = s.spawn(|| transactions(&p.site.phone.ns, &target, "register.xml", &phone, 5063, 10, 1));
        let invites = s.spawn(|| transactions(&p.site.carrier.ns, &target, "invite_probe.xml", &carrier, 5061, 3, 1));
        let tries = s.spawn(|| {
            // A phone never seen before registers: how many tries it needs.
            (1..=20u32).find(|_| transactions(&p.site.phone.ns, &target, "register.xml", &new_phone, 5068, 1, 1).0 == 1)
        });
        let rtp = p.call(false, 5060, 10000, 5, |_| {});
        (options.join().unwrap(), registers.join().unwrap(), invites.join().unwrap(), tries.join().unwrap(), rtp)
    });
    let sent = f.wait();
    let took = started.elapsed();
    let (pass1, refused1) = counters(p.d(), "voip-edge/sip");
    let legit = legit_requests(&p, &[&phone, &carrier, &new_phone]) - legit0;
    let passed = witness.packets();
    eprintln!(
        "figure: IPv4 SIP flood: voipwall's own count of flood packets passed: {} (rule passes minus the requests Kamailio logged from the legitimate peers)",
        (pass1 - pass0).saturating_sub(legit)
    );
    eprintln!(
        "figure: IPv4 SIP flood: {sent} packets in {took:.1?} ({:.0} pps), {} refused by the budget ({:.1}%)",
        sent as f64 / took.as_secs_f64(),
        refused1 - refused0,
        100.0 * (refused1 - refused0) as f64 / sent.max(1) as f64
    );
    eprintln!(
        "figure: registered phone during the flood: OPTIONS {}/{} answered, REGISTER {}/{} answered",
        options.0,
        options.0 + options.1,
        registers.0,
        registers.0 + registers.1
    );
    eprintln!("figure: carrier pinged before the flood: INVITEs {}/{} answered", invites.0, invites.0 + invites.1);
    eprintln!("figure: a phone never seen before registered during the flood after {tries:?} tries");
    assert_rtp("call placed during the IPv4 SIP flood", &rtp, 1.0);
    assert!(sent > 100_000, "the flood was a flood: {sent} packets");
    assert!(options.0 * 100 >= 99 * (options.0 + options.1) && options.0 >= 99, "OPTIONS answered: {options:?}");
    assert!(
        registers.0 * 100 >= 99 * (registers.0 + registers.1) && registers.0 >= 10,
        "REGISTERs answered: {registers:?}"
    );
    assert!(invites.0 >= 1, "the carrier's INVITE is answered: {invites:?}");
    assert!(tries.is_some(), "a new phone registers within 20 tries");
    assert_within_budget("IPv4 SIP flood", passed, took);
}

/// Requests Kamailio logged from the legitimate addresses.
fn legit_requests(p: &Pbx, ips: &[&str]) -> u64 {
    ips.iter().map(|ip| p.k().requests_from(ip) as u64).sum()
}

/// The same from random IPv6 /64s, and a `kill -9` of the daemon in the middle: the pinned
/// program keeps filtering, the restarted daemon adopts it, the phone stays known, and no closed
/// port opens meanwhile.
#[test]
#[ignore = "needs root and BPF"]
fn flood_2_ipv6_flood_and_a_kill_9_keep_the_phone_known() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let text = policy(&site);
    let mut p = Pbx::start_with_site(site, Some(text), true, 10000);
    p.register(true, 5060);
    let phone6 = p.site.phone.ip6().to_string();
    let prefix = format!("{}/64", phone6.rsplit_once("::").map_or(phone6.clone(), |(net, _)| format!("{net}::")));
    assert!(known(p.d()).iter().any(|(s, proof)| *s == prefix && proof == "sip-digest"), "{:?}", known(p.d()));
    let pbx6 = p.site.pbx.ip6().to_string();
    let target = format!("[{pbx6}]:5060");
    let witness = PassedCounter::new(&p.site.pbx.ns, 5060, &[&phone6]);
    let started = Instant::now();
    let f = flood(&p, Spoofed::Udp6 { dst: &pbx6, port: 5060 }, &options_payload(&pbx6));
    std::thread::sleep(Duration::from_secs(1));
    let options = std::thread::scope(|s| {
        let options = s.spawn(|| transactions(&p.site.phone.ns, &target, "options.xml", &phone6, 5065, 100, 10));
        std::thread::sleep(Duration::from_secs(3));
        // kill -9 and a restart, in the middle of the flood.
        let d = p.d.take().unwrap();
        d.kill9();
        let closed = tests::site::udp_probe(&p.site.attacker.ns, &p.site.attacker.v4[0], p.site.pbx.ip(), 9999);
        let policy = p.env.root.join("policy.toml");
        let args = ["--metrics", "off", "--policy", policy.to_str().unwrap()];
        p.d = Some(Daemon::start_on(&p.site.pbx.ns, &p.site.pbx.iface, &p.env, &args));
        (options.join().unwrap(), closed)
    });
    let (options, closed_answered) = options;
    let sent = f.wait();
    let took = started.elapsed();
    eprintln!(
        "figure: IPv6 SIP flood: {sent} packets in {took:.1?} ({:.0} pps); kill -9 and restart in the middle",
        sent as f64 / took.as_secs_f64()
    );
    eprintln!(
        "figure: registered IPv6 phone across the flood and the restart: OPTIONS {}/{} answered",
        options.0,
        options.0 + options.1
    );
    assert!(!closed_answered, "a closed port stays closed while no daemon runs");
    assert!(known(p.d()).iter().any(|(s, _)| *s == prefix), "the phone is still known after the restart");
    assert!(options.0 * 100 >= 99 * (options.0 + options.1) && options.0 >= 99, "OPTIONS answered: {options:?}");
    assert_within_budget("IPv6 SIP flood", witness.packets(), took);
}

/// Random sources flood the RTP range during a call: the call's media is untouched. The media
/// server answers only its negotiated peer (as Asterisk's `strictrtp` does); SIPp's echo would
/// stop at its first send to a spoofed address, which has no route from the pbx.
#[test]
#[ignore = "needs root and BPF"]
fn flood_3_rtp_range_flood_during_a_call() {
    if !bpf_available() {
        return;
    }
    const MEDIA: u16 = 10000;
    let site = Site::new();
    let text = policy(&site);
    // SIPp's echo answers the call's SDP on other ports; the call's RTP goes to the strict echo.
    let p = Pbx::start_with_site(site, Some(text), true, MEDIA + 100);
    p.register(false, 5060);
    let pbx = p.site.pbx.ip().to_string();
    let echo = StrictEcho::start(&p.site.pbx.ns, &format!("{pbx}:{MEDIA}"), p.site.phone.ip());
    let (_, refused0) = counters(p.d(), "voip-edge/sip");
    let started = Instant::now();
    let mut f = None;
    let rtp = p.call(false, 5060, MEDIA, 8, |p| {
        f = Some(flood(p, Spoofed::Udp4Range { dst: &pbx, lo: 10000, hi: 20000 }, &[0x80; 172]));
    });
    let sent = f.unwrap().wait();
    let took = started.elapsed();
    let (_, refused1) = counters(p.d(), "voip-edge/sip");
    let reached = echo.finish();
    eprintln!(
        "figure: RTP range flood: {sent} packets in {took:.1?} ({:.0} pps) from random sources into 10000-20000 during the call, {} refused by the budget ({:.1}%), {reached} reached the call's media socket",
        sent as f64 / took.as_secs_f64(),
        refused1 - refused0,
        100.0 * (refused1 - refused0) as f64 / sent.max(1) as f64
    );
    assert!(sent > 100_000, "the flood was a flood: {sent} packets");
    assert_rtp("call during a random-source RTP range flood", &rtp, 1.0);
}

/// A random-source SYN flood (from 198.18.0.0/16) to the TCP SIP port: behind the budget, the
/// kernel's own SYN cookies carry the rest. An established TCP connection keeps working, and a known peer opens
/// a new one.
#[test]
#[ignore = "needs root and BPF"]
fn flood_4_syn_flood_to_tcp_sip() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let text = policy(&site);
    let p = Pbx::start_with_site(site, Some(text), true, 10000);
    p.register(false, 5060);
    let pbx = p.site.pbx.ip().to_string();
    let phone = p.site.phone.ip().to_string();
    let target = format!("{pbx}:5060");
    let syncookies = p.site.pbx.ns.sh("sysctl -n net.ipv4.tcp_syncookies").trim().to_string();
    // The SYN-ACKs to the spoofed sources go into a sink inside the pbx namespace (a veth pair
    // with both ends there, without ARP; the far end drops what it gets, forwarding is off):
    // the kernel keeps its half-open state and its SYN queue and cookies work as on a routed
    // host.
    p.site
        .pbx
        .ns
        .sh("ip link add sinka type veth peer name sinkb && ip link set sinka arp off up && ip link set sinkb up \
         && sysctl -qw net.ipv4.ip_forward=0 && ip route add 198.18.0.0/16 dev sinka");
    let (_, refused0) = counters(p.d(), "voip-edge/sip");
    let (cookies0, drops0) = (tcp_ext(&p.site.pbx.ns, "SyncookiesSent"), tcp_ext(&p.site.pbx.ns, "ListenDrops"));
    let started = Instant::now();
    let f = flood(&p, Spoofed::Syn4 { dst: &pbx, port: 5060 }, &[]);
    let (established, fresh) = std::thread::scope(|s| {
        // One TCP connection for 80 OPTIONS over 8 s, opened just before the flood peaks.
        let established = s.spawn(|| tcp_transactions(&p.site.phone.ns, &target, &phone, 5070, 80, 10));
        std::thread::sleep(Duration::from_secs(4));
        // A new connection from the known phone in the middle of the flood.
        let fresh = tcp_transactions(&p.site.phone.ns, &target, &phone, 5071, 5, 5);
        (established.join().unwrap(), fresh)
    });
    let sent = f.wait();
    let (_, refused1) = counters(p.d(), "voip-edge/sip");
    let took = started.elapsed();
    let cookies = tcp_ext(&p.site.pbx.ns, "SyncookiesSent") - cookies0;
    let listen_drops = tcp_ext(&p.site.pbx.ns, "ListenDrops") - drops0;
    eprintln!(
        "figure: SYN flood to 5060/tcp: {sent} SYNs in {took:.1?} ({:.0} pps), {} refused by the budget, the kernel answered {cookies} with SYN cookies (tcp_syncookies={syncookies}), its listen drops {listen_drops}",
        sent as f64 / took.as_secs_f64(),
        refused1 - refused0
    );
    eprintln!(
        "figure: TCP SIP during the SYN flood: established connection {}/{} OPTIONS answered, new connection from the known phone {}/{}",
        established.0,
        established.0 + established.1,
        fresh.0,
        fresh.0 + fresh.1
    );
    assert!(sent > 100_000, "the flood was a flood: {sent} SYNs");
    assert_eq!(established.1, 0, "the established connection keeps working: {established:?}");
    assert!(established.0 >= 80, "{established:?}");
    assert_eq!(fresh, (5, 0), "the known phone opens a new connection and is answered");
}

/// OPTIONS over one TCP connection (SIPp's `-t t1`).
fn tcp_transactions(ns: &NetNs, target: &str, local: &str, port: u16, count: u32, rate: u32) -> (u64, u64) {
    let sf = asset("options.xml");
    let (port, m, r) = (port.to_string(), count.to_string(), rate.to_string());
    let out = Sipp::run(
        ns,
        &[
            target,
            "-t",
            "t1",
            "-sf",
            sf.to_str().unwrap(),
            "-s",
            "100",
            "-i",
            local,
            "-p",
            &port,
            "-m",
            &m,
            "-r",
            &r,
            "-recv_timeout",
            "4000",
        ],
        Duration::from_secs(u64::from(count / rate.max(1)) + 20),
    );
    sipp_calls(&String::from_utf8_lossy(&out.stdout))
}

/// A `TcpExt` counter of the namespace's `/proc/net/netstat`.
fn tcp_ext(ns: &NetNs, name: &str) -> u64 {
    let text = ns.sh("cat /proc/net/netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (keys, values) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    keys.split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in /proc/net/netstat"))
}
