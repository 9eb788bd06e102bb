//! Media pinholes end to end: the pbx site of `e2e_voip` (Kamailio, the SIPp RTP echo, a SIPp
//! phone) with the RTP ranges in pinhole mode. Calls carry RTP both ways with no loss, the
//! attacker reaches no media port (not even the live call's), and the pinholes close after BYE;
//! 200 concurrent SIPp calls, each with its own media port, get every RTP packet through and
//! leave no pinhole behind. Each test prints its figures (`--nocapture`).

use std::{collections::BTreeSet, time::Duration};

use common::{PORT_OPEN, PORT_PINHOLE, PROTO_SLOT_UDP};
use tests::{
    bpf_available,
    daemon::Daemon,
    pbx::{Pbx, admin_policy, assert_rtp},
    site::{Site, udp_probe, udp_sweep},
    voip::{Sipp, asset, sipp_calls},
};

/// The roles' media class in pinhole mode, a short grace so the test sees the close.
const MEDIA: &str = "[media]\nmode = \"pinhole\"\ngrace = \"1s\"\n";

/// Packets the data plane passed for `reason`.
fn passed(d: &Daemon, reason: &str) -> u64 {
    d.json(&["stats"])["counters"]
        .as_array()
        .expect("stats has counters")
        .iter()
        .filter(|c| c["verdict"] == "pass" && c["reason"] == reason)
        .map(|c| c["packets"].as_u64().unwrap_or(0))
        .sum()
}

fn pinholes(d: &Daemon) -> serde_json::Value {
    d.json(&["pinhole", "list"])
}

/// Wait until the table is empty (the grace, then the once-a-second sweep).
fn wait_empty(d: &Daemon, limit: Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let list = pinholes(d);
        if list["pinholes"].as_array().is_some_and(Vec::is_empty) || start.elapsed() > limit {
            return list;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_1_calls_carry_media_only_from_their_peers() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let (_, compiled) = voipwall::policy::parse("p.toml", &policy).unwrap();
    let p = Pbx::start_with_site(site, Some(policy), true, 10000);
    p.register(false, 5060);
    let closed_before = p.d().dropped("pinhole_closed");
    let mut during = None;
    let s = p.call(false, 5060, 10000, 8, |p| {
        std::thread::sleep(Duration::from_millis(500));
        let (attacker, pbx) = (p.site.attacker.ip(), p.site.pbx.ip());
        let live = pinholes(p.d());
        let probe = udp_probe(&p.site.attacker.ns, attacker, pbx, 10000);
        let sweep = udp_sweep(&p.site.attacker.ns, attacker, pbx, 20_000, 1);
        during = Some((live, probe, sweep));
    });
    assert_rtp("call through Kamailio, RTP in pinhole mode (IPv4)", &s, 0.0);
    let (live, probe, sweep) = during.unwrap();
    let phone = p.site.phone.ip();
    let rows = live["pinholes"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["peer"] == phone && r["local_port"] == 10000 && r["state"] == "active"),
        "the call's pinhole, latched by its media: {live:#}"
    );
    assert!(rows.iter().all(|r| r["peer"] == phone), "pinholes only to the call's peer: {live:#}");
    assert!(!probe, "the attacker reaches the live call's media port");
    // A full UDP sweep during the call finds the open signaling ports and no media port.
    let want: BTreeSet<u16> = (1..=u16::MAX)
        .filter(|&port| {
            let r = compiled.port(PROTO_SLOT_UDP, port);
            r.flags & PORT_OPEN != 0 && r.flags & PORT_PINHOLE == 0 && r.sets == 0
        })
        .collect();
    eprintln!(
        "figure: UDP sweep during a call in pinhole mode: {} ports reachable ({} open to all)",
        sweep.len(),
        want.len()
    );
    // (Kamailio listens on 5060 and answers no junk: it may be missing from the sweep.)
    assert!(sweep.is_subset(&want), "the sweep during the call reaches only ports open to everyone: {sweep:?}");
    assert!(p.d().dropped("pinhole_closed") > closed_before, "the attacker's media port probes counted");

    // After BYE the call's pinholes close within the grace.
    let after = wait_empty(p.d(), Duration::from_secs(5));
    assert!(after["pinholes"].as_array().unwrap().is_empty(), "pinholes left after BYE: {after:#}");
    assert!(!udp_probe(&p.site.phone.ns, phone, p.site.pbx.ip(), 10000), "the phone reaches the port after the call");

    // IPv6: the same call.
    p.register(true, 5060);
    let s6 = p.call(true, 5060, 10000, 3, |_| {});
    assert_rtp("call through Kamailio, RTP in pinhole mode (IPv6)", &s6, 0.0);
    let metrics = p.d().json(&["pinhole", "list"]);
    eprintln!(
        "figure: pinholes opened {}, closed {}, set-up (SIP message seen to pinhole in the table) mean {:.1} us over {}",
        metrics["opened"],
        metrics["closed"],
        metrics["setup_s"]["mean"].as_f64().unwrap() * 1e6,
        metrics["setup_s"]["count"]
    );
}

/// RTP packets in SIPp's G.711 sample (`/usr/share/sip-tester/g711a.pcap`).
const PCAP_PACKETS: u64 = 236;

#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_2_two_hundred_concurrent_calls() {
    if !bpf_available() {
        return;
    }
    const CALLS: u64 = 200;
    let site = Site::new();
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let p = Pbx::start_with_site(site, Some(policy), false, 0);
    let (pbx, phone) = (p.site.pbx.ip().to_string(), p.site.phone.ip().to_string());
    let uas = Sipp::spawn(
        &p.site.pbx.ns,
        &[
            "-sf",
            asset("uas_ports.xml").to_str().unwrap(),
            "-i",
            &pbx,
            "-p",
            "5060",
            "-mi",
            &pbx,
            "-mp",
            "12000",
            "-m",
            &CALLS.to_string(),
        ],
        Duration::from_secs(120),
        &p.env.root.join("uas.log"),
    );
    std::thread::sleep(Duration::from_millis(400));
    let (pass0, closed0) = (passed(p.d(), "pinhole"), p.d().dropped("pinhole_closed"));
    let out = Sipp::run(
        &p.site.phone.ns,
        &[
            &format!("{pbx}:5060"),
            "-sf",
            asset("uac_pcap.xml").to_str().unwrap(),
            "-s",
            "200",
            "-i",
            &phone,
            "-p",
            "5064",
            "-mi",
            &phone,
            "-mp",
            "30000",
            "-m",
            &CALLS.to_string(),
            "-l",
            &CALLS.to_string(),
            "-r",
            "50",
            "-recv_timeout",
            "15000",
        ],
        Duration::from_secs(90),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (ok, failed) = sipp_calls(&text);
    assert_eq!((ok, failed), (CALLS, 0), "every call completes:\n{text}");
    assert_eq!(uas.wait(), 0, "the callee answered every call");
    let admitted = passed(p.d(), "pinhole") - pass0;
    let refused = p.d().dropped("pinhole_closed") - closed0;
    let list = pinholes(p.d());
    let peak = list["peak"].as_u64().unwrap();
    eprintln!(
        "figure: {CALLS} concurrent calls: RTP admitted by pinholes {admitted} of {} sent, refused {refused}, peak pinholes {peak}; set-up mean {:.1} us, max {:.1} us",
        CALLS * PCAP_PACKETS,
        list["setup_s"]["mean"].as_f64().unwrap() * 1e6,
        list["setup_s"]["max"].as_f64().unwrap() * 1e6,
    );
    assert_eq!(refused, 0, "no RTP of a live call dropped");
    assert_eq!(admitted, CALLS * PCAP_PACKETS, "every call's RTP passed");
    assert!(peak >= 2 * 150, "the calls overlapped: peak {peak} pinholes");
    let after = wait_empty(p.d(), Duration::from_secs(6));
    assert!(after["pinholes"].as_array().unwrap().is_empty(), "pinholes left after the last BYE: {after:#}");
    eprintln!(
        "figure: pinhole set-up (SIP message seen to pinhole in the table) mean {:.1} us over {} pinholes; closed {}",
        after["setup_s"]["mean"].as_f64().unwrap() * 1e6,
        after["setup_s"]["count"],
        after["closed"]
    );
}

/// A call the pbx places (SIPp on the pbx calls a SIPp callee with an RTP echo on the phone):
/// the pbx's offer opens its media port to the callee before the INVITE leaves, the echo's
/// packets come back through the pinhole, and nothing of the call is dropped.
#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_3_a_call_the_pbx_places() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let p = Pbx::start_with_site(site, Some(policy), false, 0);
    let (pbx, phone) = (p.site.pbx.ip().to_string(), p.site.phone.ip().to_string());
    let callee = Sipp::spawn(
        &p.site.phone.ns,
        &["-sn", "uas", "-i", &phone, "-p", "5062", "-mi", &phone, "-mp", "6000", "-rtp_echo", "-m", "1"],
        Duration::from_secs(60),
        &p.env.root.join("callee.log"),
    );
    std::thread::sleep(Duration::from_millis(400));
    let (pass0, closed0) = (passed(p.d(), "pinhole"), p.d().dropped("pinhole_closed"));
    let out = Sipp::run(
        &p.site.pbx.ns,
        &[
            &format!("{phone}:5062"),
            "-sf",
            asset("uac_pcap.xml").to_str().unwrap(),
            "-s",
            "300",
            "-i",
            &pbx,
            "-p",
            "5060",
            "-mi",
            &pbx,
            "-mp",
            "12000",
            "-m",
            "1",
            "-recv_timeout",
            "10000",
        ],
        Duration::from_secs(40),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(sipp_calls(&text), (1, 0), "the call completes:\n{text}");
    assert_eq!(callee.wait(), 0, "the callee answered");
    let echoed = passed(p.d(), "pinhole") - pass0;
    let refused = p.d().dropped("pinhole_closed") - closed0;
    eprintln!(
        "figure: call placed by the pbx: {echoed} echoed RTP packets admitted by its pinhole of {PCAP_PACKETS} sent, {refused} refused"
    );
    assert_eq!(refused, 0, "nothing of the call dropped");
    assert_eq!(echoed, PCAP_PACKETS, "every echoed packet came back through the pinhole");
    let after = wait_empty(p.d(), Duration::from_secs(6));
    assert!(after["pinholes"].as_array().unwrap().is_empty(), "pinholes left after BYE: {after:#}");
}

/// A phone behind a NAT (a `home` namespace masqueraded by the carrier namespace) whose SDP
/// carries its private address: the pinhole on the signaling address (the NAT's) admits its
/// media, latched on the NAT's source port, and every RTP packet of the call passes.
#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_4_a_phone_behind_nat() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let n = site.net;
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let p = Pbx::start_with_site(site, Some(policy), false, 0);
    let nat = &p.site.carrier;
    let home = tests::netns::NetNs::new("home");
    let (inside, outside) = (format!("hm{n}"), format!("nt{n}"));
    tests::netns::veth(&home, &inside, &nat.ns, &outside);
    nat.ns.sh(&format!(
        "ip addr add 172.16.{n}.1/24 dev {outside} && sysctl -qw net.ipv4.ip_forward=1 && \
         nft 'add table ip vwnat; add chain ip vwnat post {{ type nat hook postrouting priority 100; }}; add rule ip vwnat post oifname {} masquerade'",
        nat.iface
    ));
    home.sh(&format!("ip addr add 172.16.{n}.2/24 dev {inside} && ip route add default via 172.16.{n}.1"));
    let (pbx, private, public) = (p.site.pbx.ip().to_string(), format!("172.16.{n}.2"), nat.ip().to_string());
    let uas = Sipp::spawn(
        &p.site.pbx.ns,
        &[
            "-sf",
            asset("uas_ports.xml").to_str().unwrap(),
            "-i",
            &pbx,
            "-p",
            "5060",
            "-mi",
            &pbx,
            "-mp",
            "12000",
            "-m",
            "1",
        ],
        Duration::from_secs(60),
        &p.env.root.join("uas.log"),
    );
    std::thread::sleep(Duration::from_millis(400));
    let (pass0, closed0) = (passed(p.d(), "pinhole"), p.d().dropped("pinhole_closed"));
    let (out, during) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            Sipp::run(
                &home,
                &[
                    &format!("{pbx}:5060"),
                    "-sf",
                    asset("uac_pcap.xml").to_str().unwrap(),
                    "-s",
                    "200",
                    "-i",
                    &private,
                    "-p",
                    "5064",
                    "-mi",
                    &private,
                    "-mp",
                    "30000",
                    "-m",
                    "1",
                    "-recv_timeout",
                    "10000",
                ],
                Duration::from_secs(40),
            )
        });
        std::thread::sleep(Duration::from_secs(3));
        let during = pinholes(p.d());
        (call.join().unwrap(), during)
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(sipp_calls(&text), (1, 0), "the call completes:\n{text}");
    assert_eq!(uas.wait(), 0, "the callee answered");
    let rows = during["pinholes"].as_array().unwrap();
    let row = |peer: &str, port: u64| rows.iter().find(|r| r["peer"] == peer && r["local_port"] == port);
    let nat_row = row(&public, 12000).unwrap_or_else(|| panic!("a pinhole for the NAT's address: {during:#}"));
    assert_eq!(nat_row["state"], "active", "latched by the media through the NAT: {during:#}");
    assert!(nat_row["opened_by"].as_array().unwrap().contains(&serde_json::json!("signaling")), "{during:#}");
    let sdp_row = row(&private, 12000).unwrap_or_else(|| panic!("a pinhole for the SDP's address: {during:#}"));
    assert_eq!(sdp_row["opened_by"], serde_json::json!(["sdp"]), "{during:#}");
    let admitted = passed(p.d(), "pinhole") - pass0;
    let refused = p.d().dropped("pinhole_closed") - closed0;
    eprintln!(
        "figure: phone behind NAT (SDP {private}, signaling and media from {public}): {admitted} of {PCAP_PACKETS} RTP packets admitted, {refused} refused"
    );
    assert_eq!((admitted, refused), (PCAP_PACKETS, 0), "every RTP packet through the NAT passed");
}

/// A real softphone: Debian's baresip (headless, a 440 Hz tone from `ausine`, commands from
/// `-e`) behind the phone's address calls through Kamailio to the echo; its tone reaches the
/// echo through the call's pinhole and the echo comes back to it.
#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_5_baresip_calls_through_kamailio() {
    if !bpf_available() {
        return;
    }
    tests::voip::require("baresip");
    let site = Site::new();
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let p = Pbx::start_with_site(site, Some(policy), true, 10000);
    let (pbx, phone) = (p.site.pbx.ip().to_string(), p.site.phone.ip().to_string());
    let dir = p.env.root.join("baresip");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method epoll\nsip_listen {phone}:5090\naudio_player aubridge,sink\naudio_source ausine,440\n\
             audio_alert aubridge,sink\nausrc_srate 48000\nauplay_srate 48000\nausrc_channels 2\nauplay_channels 1\n\
             rtp_ports 20300-20399\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule ausine.so\n\
             module aubridge.so\nmodule_app account.so\nmodule_app menu.so\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("accounts"), format!("<sip:100@{pbx}>;auth_pass={};regint=0\n", tests::pbx::PASSWORD))
        .unwrap();
    // The phone counts the echo coming back to it (an nftables counter on its input).
    p.site.phone.ns.sh(&format!(
        "nft 'add table inet vwrx; add counter inet vwrx echo; add chain inet vwrx in {{ type filter hook input priority 0; }}; add rule inet vwrx in ip saddr {pbx} udp sport 10000 counter name echo'"
    ));
    let (pass0, closed0) = (passed(p.d(), "pinhole"), p.d().dropped("pinhole_closed"));
    let log = p.env.root.join("baresip.log");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &p.site.phone.ns.name, "timeout", "-k", "2", "20", "baresip", "-f"])
        .arg(&dir)
        .args(["-e", &format!("/dial sip:200@{pbx}"), "-t", "8"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run baresip");
    std::fs::write(&log, &out.stdout).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let admitted = passed(p.d(), "pinhole") - pass0;
    let refused = p.d().dropped("pinhole_closed") - closed0;
    let echoed: u64 = p
        .site
        .phone
        .ns
        .sh("nft list counter inet vwrx echo")
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    eprintln!(
        "figure: baresip call: {admitted} RTP packets admitted by the pinhole, {refused} refused, {echoed} echoed back to baresip"
    );
    assert!(admitted >= 200, "baresip's tone reached the echo through the pinhole ({admitted}):\n{text}");
    assert_eq!(refused, 0, "nothing of the call dropped:\n{text}");
    assert!(echoed >= 200, "the echo came back to baresip ({echoed}):\n{text}");
}

/// A re-INVITE from the pbx moves the call's media port: the caller's RTP passes on the first
/// port, then on the new one, and the old port closes.
#[test]
#[ignore = "needs root and BPF"]
fn e2e_pinholes_6_a_reinvite_moves_the_media_port() {
    if !bpf_available() {
        return;
    }
    let site = Site::new();
    let policy = admin_policy(&site, &["voip-edge"], MEDIA);
    let p = Pbx::start_with_site(site, Some(policy), false, 0);
    let (pbx, phone) = (p.site.pbx.ip().to_string(), p.site.phone.ip().to_string());
    let uas = Sipp::spawn(
        &p.site.pbx.ns,
        &[
            "-sf",
            asset("uas_reinvite.xml").to_str().unwrap(),
            "-i",
            &pbx,
            "-p",
            "5060",
            "-mi",
            &pbx,
            "-mp",
            "12000",
            "-m",
            "1",
        ],
        Duration::from_secs(60),
        &p.env.root.join("uas.log"),
    );
    std::thread::sleep(Duration::from_millis(400));
    let (pass0, closed0) = (passed(p.d(), "pinhole"), p.d().dropped("pinhole_closed"));
    let out = Sipp::run(
        &p.site.phone.ns,
        &[
            &format!("{pbx}:5060"),
            "-sf",
            asset("uac_reinvite.xml").to_str().unwrap(),
            "-s",
            "200",
            "-i",
            &phone,
            "-p",
            "5064",
            "-mi",
            &phone,
            "-mp",
            "30000",
            "-m",
            "1",
            "-recv_timeout",
            "15000",
        ],
        Duration::from_secs(50),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(sipp_calls(&text), (1, 0), "the call completes:\n{text}");
    assert_eq!(uas.wait(), 0, "the callee moved the media and answered the BYE");
    let admitted = passed(p.d(), "pinhole") - pass0;
    let refused = p.d().dropped("pinhole_closed") - closed0;
    let list = pinholes(p.d());
    eprintln!(
        "figure: re-INVITE moving the media port 12000 -> 12100: {admitted} of {} RTP packets admitted, {refused} refused; closed {}",
        2 * PCAP_PACKETS,
        list["closed"]
    );
    assert_eq!((admitted, refused), (2 * PCAP_PACKETS, 0), "the media passed on both ports");
    assert!(list["closed"]["moved"].as_u64() >= Some(2), "the first port closed when the media moved: {list:#}");
    assert!(!udp_probe(&p.site.phone.ns, &phone, &pbx, 12000), "the old port is closed after the grace");
}
