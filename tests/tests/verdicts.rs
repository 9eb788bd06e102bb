//! BPF_PROG_TEST_RUN verdict tables: every step and reason of the decision chain, each case
//! asserting the XDP action and the exact (verdict, reason) counter the packet moved.

use common::{BAN_DRY_RUN, BAN_IPV6, BanEntry, FlowKey, addr::v4_mapped};
use tests::{
    Harness, XDP_DROP, XDP_PASS, bpf_available,
    packet::{ETH_P_8021AD, ETH_P_8021Q, Ext, Ip, L4, Packet, TCP_ACK, TCP_SYN, arp},
};
use voipwall::dataplane::monotonic_ns;

const HOST: [u8; 4] = [10, 0, 0, 1];
const HOST6: &str = "2001:db8:feed::1";
const PEER: [u8; 4] = [192, 0, 2, 200];
const PEER6: &str = "2001:db8:1::1";
const ADMIN: [u8; 4] = [192, 0, 2, 5];
const ALLOWED: [u8; 4] = [198, 51, 100, 10];
const ALLOWED6: &str = "2001:db8:a110::9";
const BLOCKED: [u8; 4] = [203, 0, 113, 7];
const BLOCKED6: &str = "2001:db8:b10c::7";
/// Inside the blocked /24, but on the allow list: allow wins.
const ALLOWED_IN_BLOCKED: [u8; 4] = [203, 0, 113, 9];

/// voip-edge, plus lists, an admin-only SSH rule and small bursts so limits cross quickly.
const POLICY: &str = r#"
roles = ["voip-edge"]
allow = ["198.51.100.10/32", "2001:db8:a110::/48", "203.0.113.9/32"]
block = ["203.0.113.0/24", "2001:db8:b10c::/48"]

[sets]
admins = ["192.0.2.0/28", "2001:db8:ad::/48"]

[[rule]]
name = "ssh-admins"
proto = "tcp"
ports = ["22"]
from = ["admins"]

[[rule]]
name = "level2-probe"
proto = "udp"
ports = ["6000"]
limit = "police-then-ban"

# Low rates: one token per 200 ms or slower, so the harness's own pace between packets never
# refills a bucket and every case is deterministic.
[limit.signaling]
levels = [{ pps = 5, burst = 20, ban = "1h" }, { pps = 20, burst = 40, ban = "1h" }]

[limit.police-then-ban]
levels = [{ pps = 1, burst = 5, ban = "0" }, { pps = 2, burst = 10, ban = "1h" }]

[options]
icmp_echo = { pps = 1, burst = 3 }
"#;

fn sip(src: [u8; 4]) -> Vec<u8> {
    Packet::udp4(src, 5060, HOST, 5060).payload(b"OPTIONS sip:host SIP/2.0\r\n\r\n").bytes()
}

#[test]
#[ignore = "needs root and BPF"]
fn parsing_layers() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let base = || Packet::udp4(PEER, 5060, HOST, 5060);
    let mut lldp = arp();
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u32, &str)> = vec![
        ("ARP passes", arp(), XDP_PASS, "non_ip"),
        ("LLDP passes", lldp, XDP_PASS, "non_ip"),
        ("802.1Q tagged SIP", base().vlan(ETH_P_8021Q, 100).bytes(), XDP_PASS, "port_open"),
        ("QinQ tagged SIP", base().vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 100).bytes(), XDP_PASS, "port_open"),
        (
            "QinQ tagged closed port",
            Packet::udp4(PEER, 1, HOST, 9999).vlan(ETH_P_8021AD, 10).vlan(ETH_P_8021Q, 100).bytes(),
            XDP_DROP,
            "port_closed",
        ),
        (
            "three tags hide the payload",
            base().vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).vlan(ETH_P_8021Q, 3).bytes(),
            XDP_DROP,
            "malformed",
        ),
        (
            "VLAN-tagged ARP",
            {
                let mut f = arp();
                f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
                f
            },
            XDP_PASS,
            "non_ip",
        ),
        ("IPv4 with 4 option bytes (IHL 6)", base().ipv4_options(&[0x94, 0x04, 0, 0]).bytes(), XDP_PASS, "port_open"),
        ("IPv4 with 40 option bytes (IHL 15)", base().ipv4_options(&[1; 40]).bytes(), XDP_PASS, "port_open"),
        (
            "IPv4 options to a closed port",
            Packet::udp4(PEER, 1, HOST, 9999).ipv4_options(&[1; 12]).bytes(),
            XDP_DROP,
            "port_closed",
        ),
        ("IPv6 SIP", Packet::udp6(PEER6, 5060, HOST6, 5060).bytes(), XDP_PASS, "port_open"),
        (
            "IPv6 hop-by-hop + routing + destination options",
            Packet::udp6(PEER6, 5060, HOST6, 5060)
                .ext(Ext::HopByHop(0))
                .ext(Ext::Routing(1))
                .ext(Ext::DestOpts(2))
                .bytes(),
            XDP_PASS,
            "port_open",
        ),
        (
            "IPv6 extension headers then a closed port",
            Packet::tcp6(PEER6, 1, HOST6, 80, TCP_SYN).ext(Ext::HopByHop(0)).ext(Ext::DestOpts(0)).bytes(),
            XDP_DROP,
            "port_closed",
        ),
        (
            "IPv6 atomic fragment",
            Packet::udp6(PEER6, 5060, HOST6, 5060).ext(Ext::AtomicFragment).bytes(),
            XDP_PASS,
            "port_open",
        ),
        (
            "IPv6 with 6 extension headers (the bound)",
            (0..6).fold(Packet::udp6(PEER6, 5060, HOST6, 5060), |p, _| p.ext(Ext::DestOpts(0))).bytes(),
            XDP_PASS,
            "port_open",
        ),
        (
            "IPv6 with 7 extension headers",
            (0..7).fold(Packet::udp6(PEER6, 5060, HOST6, 5060), |p, _| p.ext(Ext::DestOpts(0))).bytes(),
            XDP_DROP,
            "malformed",
        ),
        (
            "GRE is not a VoIP protocol",
            Packet::new(Ip::v4(PEER, HOST), L4::Raw { proto: 47 }).bytes(),
            XDP_DROP,
            "protocol_closed",
        ),
        (
            "SCTP over IPv6",
            Packet::new(Ip::v6(PEER6, HOST6), L4::Raw { proto: 132 }).bytes(),
            XDP_DROP,
            "protocol_closed",
        ),
    ];
    for (what, frame, action, reason) in cases {
        h.expect(what, &frame, action, reason);
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn inconsistent_headers_are_malformed() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let mut ihl4 = sip(PEER);
    ihl4[14] = 0x44;
    let mut v6_in_v4 = sip(PEER);
    v6_in_v4[14] = 0x65;
    let mut long_total = sip(PEER);
    long_total[16..18].copy_from_slice(&4000u16.to_be_bytes());
    let mut short_total = sip(PEER);
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut tcp_doff = Packet::tcp4(PEER, 1000, HOST, 5061, TCP_SYN).bytes();
    tcp_doff[14 + 20 + 12] = 4 << 4;
    let mut tcp_doff_past_end = Packet::tcp4(PEER, 1000, HOST, 5061, TCP_SYN).payload(b"").bytes();
    tcp_doff_past_end[14 + 20 + 12] = 15 << 4;
    let mut v6_long = Packet::udp6(PEER6, 5060, HOST6, 5060).bytes();
    v6_long[14 + 4..14 + 6].copy_from_slice(&3000u16.to_be_bytes());
    for (what, frame) in [
        ("IHL 4", ihl4),
        ("version 6 in an IPv4 frame", v6_in_v4),
        ("total length beyond the frame", long_total),
        ("total length shorter than the header", short_total),
        ("TCP data offset 4", tcp_doff),
        ("TCP data offset beyond the frame", tcp_doff_past_end),
        ("IPv6 payload length beyond the frame", v6_long),
    ] {
        h.expect(what, &frame, XDP_DROP, "malformed");
    }
}

/// Every prefix of a frame that ends inside or right at the end of a header is malformed.
#[test]
#[ignore = "needs root and BPF"]
fn packets_cut_at_every_header_boundary_are_malformed() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let frames: Vec<(&str, Vec<u8>, Vec<usize>)> = vec![
        // (name, frame, header boundaries: end offsets of eth, ip, l4 headers)
        ("IPv4/UDP", sip(PEER), vec![14, 34, 42]),
        ("IPv4/TCP", Packet::tcp4(PEER, 1000, HOST, 5061, TCP_SYN).bytes(), vec![14, 34, 54]),
        ("IPv4/ICMP", Packet::icmp4(PEER, HOST, 8).bytes(), vec![14, 34, 42]),
        (
            "802.1Q/IPv4 with options/UDP",
            Packet::udp4(PEER, 5060, HOST, 5060).vlan(ETH_P_8021Q, 7).ipv4_options(&[1; 8]).bytes(),
            vec![14, 18, 46, 54],
        ),
        (
            "QinQ/IPv6/UDP",
            Packet::udp6(PEER6, 5060, HOST6, 5060).vlan(ETH_P_8021AD, 1).vlan(ETH_P_8021Q, 2).bytes(),
            vec![14, 18, 22, 62, 70],
        ),
        (
            "IPv6/hop-by-hop/dest-opts/TCP",
            Packet::tcp6(PEER6, 1, HOST6, 5061, TCP_SYN).ext(Ext::HopByHop(0)).ext(Ext::DestOpts(1)).bytes(),
            vec![14, 54, 62, 78, 98],
        ),
        ("IPv6/ICMPv6", Packet::icmp6(PEER6, HOST6, 128).bytes(), vec![14, 54, 62]),
    ];
    let mut checked = 0;
    for (name, frame, boundaries) in frames {
        let mut cuts: Vec<usize> = Vec::new();
        for &b in &boundaries {
            // Just before the boundary (the header is cut) and, except for the last header, at
            // it (the next header is missing entirely).
            cuts.push(b - 1);
            if b != *boundaries.last().unwrap() && b > 14 {
                cuts.push(b);
            }
        }
        // The IP length field no longer matches once any byte is gone.
        cuts.push(frame.len() - 1);
        for cut in cuts {
            if cut < 14 {
                // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
                continue;
            }
            h.expect(&format!("{name} cut to {cut} of {} bytes", frame.len()), &frame[..cut], XDP_DROP, "malformed");
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} cuts checked");
}

#[test]
#[ignore = "needs root and BPF"]
fn allow_list_bypasses_everything() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    h.expect("allowed source to a closed port", &Packet::udp4(ALLOWED, 1, HOST, 9999).bytes(), XDP_PASS, "allow_list");
    h.expect("allowed source, denied ICMP type", &Packet::icmp4(ALLOWED, HOST, 5).bytes(), XDP_PASS, "allow_list");
    h.expect("allowed IPv6 source", &Packet::tcp6(ALLOWED6, 1, HOST6, 80, TCP_SYN).bytes(), XDP_PASS, "allow_list");
    h.expect(
        "allow entry inside a blocked range wins",
        &Packet::udp4(ALLOWED_IN_BLOCKED, 1, HOST, 5060).bytes(),
        XDP_PASS,
        "allow_list",
    );
    // Rate limits do not apply: 100 back-to-back SIP packets (burst is 20).
    for i in 0..100 {
        h.expect(&format!("allowed flood packet {i}"), &sip(ALLOWED), XDP_PASS, "allow_list");
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn block_list_and_bans_drop() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    h.expect("blocked source to an open port", &sip(BLOCKED), XDP_DROP, "block_list");
    h.expect("blocked IPv6 source", &Packet::udp6(BLOCKED6, 5060, HOST6, 5060).bytes(), XDP_DROP, "block_list");
    h.expect("blocked source, ICMP echo reply", &Packet::icmp4(BLOCKED, HOST, 0).bytes(), XDP_DROP, "block_list");

    // A live ban drops; an expired one is treated as absent without any sweeper.
    let src = [192, 0, 2, 77];
    let now = monotonic_ns();
    let ban = |expires_ns| BanEntry { expires_ns, rate_pps: 0, class: 0, level: 0, flags: 0, _pad: Default::default() };
    h.dp.ban_insert(&v4_mapped(src), &ban(now + 60_000_000_000)).unwrap();
    h.expect("banned source", &sip(src), XDP_DROP, "banned");
    h.expect(
        "banned source to a closed port counts as banned",
        &Packet::udp4(src, 1, HOST, 9999).bytes(),
        XDP_DROP,
        "banned",
    );
    h.dp.ban_insert(&v4_mapped(src), &ban(now.saturating_sub(1_000_000_000))).unwrap();
    h.expect("expired ban", &sip(src), XDP_PASS, "port_open");
    assert!(h.dp.ban_get(&v4_mapped(src)).unwrap().is_some(), "the program ignores, not deletes, an expired ban");
    assert!(h.drain_events().is_empty(), "manual bans emit no events");
}

#[test]
#[ignore = "needs root and BPF"]
fn return_traffic_needs_a_flow_the_host_opened() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let server = [93, 184, 216, 34];
    let reply = Packet::tcp4(server, 443, HOST, 45000, TCP_SYN | TCP_ACK).bytes();
    h.expect("unsolicited TCP to an ephemeral port", &reply, XDP_DROP, "port_closed");
    // The host opens the connection: the egress program records it.
    let syn = Packet::tcp4(HOST, 45000, server, 443, TCP_SYN).bytes();
    assert_eq!(h.dp.test_run_egress(&syn).unwrap(), -1, "egress never drops (TC_ACT_UNSPEC)");
    h.expect("SYN-ACK of the host's connection", &reply, XDP_PASS, "return_traffic");
    h.expect(
        "same port, other remote",
        &Packet::tcp4([93, 184, 216, 35], 443, HOST, 45000, TCP_ACK).bytes(),
        XDP_DROP,
        "port_closed",
    );
    h.expect(
        "same remote, other port",
        &Packet::tcp4(server, 443, HOST, 45001, TCP_ACK).bytes(),
        XDP_DROP,
        "port_closed",
    );

    // A non-SYN segment from a closed port (an RST the host sends in dry run) opens nothing.
    let rst_src = [192, 0, 2, 99];
    h.dp.test_run_egress(&Packet::tcp4(HOST, 45555, rst_src, 80, 0x14).bytes()).unwrap();
    h.expect("RST opens no flow", &Packet::tcp4(rst_src, 80, HOST, 45555, TCP_ACK).bytes(), XDP_DROP, "port_closed");

    // UDP: a DNS query from a closed ephemeral port.
    let resolver = [9, 9, 9, 9];
    let answer = Packet::udp4(resolver, 53, HOST, 33001).bytes();
    h.expect("unsolicited DNS answer", &answer, XDP_DROP, "port_closed");
    h.dp.test_run_egress(&Packet::udp4(HOST, 33001, resolver, 53).bytes()).unwrap();
    h.expect("DNS answer to the host's query", &answer, XDP_PASS, "return_traffic");

    // A server reply from an open port is not a flow the host opened.
    let phone = [192, 0, 2, 150];
    h.dp.test_run_egress(&Packet::udp4(HOST, 5060, phone, 5062).bytes()).unwrap();
    assert!(
        !h.dp.flows().unwrap().iter().any(|(k, _)| k.remote == v4_mapped(phone)),
        "a reply from open port 5060 must not be recorded"
    );

    // IPv6.
    let reply6 = Packet::udp6("2001:db8:53::53", 53, HOST6, 33002).bytes();
    h.expect("unsolicited IPv6 DNS answer", &reply6, XDP_DROP, "port_closed");
    h.dp.test_run_egress(&Packet::udp6(HOST6, 33002, "2001:db8:53::53", 53).bytes()).unwrap();
    h.expect("IPv6 DNS answer to the host's query", &reply6, XDP_PASS, "return_traffic");
}

#[test]
#[ignore = "needs root and BPF"]
fn return_traffic_times_out() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(&POLICY.replace("[options]\n", "[options]\nreturn_timeout = \"1s\"\n"));
    let server = [93, 184, 216, 34];
    let reply = Packet::udp4(server, 123, HOST, 33123).bytes();
    // A flow last seen 5 s ago (the timeout is 1 s).
    let key = FlowKey {
        remote: v4_mapped(server),
        local: v4_mapped(HOST),
        remote_port: 123,
        local_port: 33123,
        proto: 17,
        _pad: [0; 3],
    };
    h.dp.flow_insert(&key, monotonic_ns() - 5_000_000_000).unwrap();
    h.expect("stale flow", &reply, XDP_DROP, "port_closed");
    h.dp.flow_insert(&key, monotonic_ns()).unwrap();
    h.expect("fresh flow", &reply, XDP_PASS, "return_traffic");
}

#[test]
#[ignore = "needs root and BPF"]
fn icmp_classes() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    for (t, action, reason) in [
        (0, XDP_PASS, "icmp"),
        (3, XDP_PASS, "icmp"),
        (11, XDP_PASS, "icmp"),
        (5, XDP_DROP, "icmp_denied"),
        (9, XDP_DROP, "icmp_denied"),
        (13, XDP_DROP, "icmp_denied"),
        (17, XDP_DROP, "icmp_denied"),
    ] {
        h.expect(&format!("ICMPv4 type {t}"), &Packet::icmp4(PEER, HOST, t).bytes(), action, reason);
    }
    for (t, action, reason) in [
        (1, XDP_PASS, "icmp"),
        (2, XDP_PASS, "icmp"),
        (3, XDP_PASS, "icmp"),
        (129, XDP_PASS, "icmp"),
        (133, XDP_PASS, "icmp"),
        (134, XDP_PASS, "icmp"),
        (135, XDP_PASS, "icmp"),
        (136, XDP_PASS, "icmp"),
        (137, XDP_PASS, "icmp"),
        (4, XDP_DROP, "icmp_denied"),
        (130, XDP_DROP, "icmp_denied"),
        (138, XDP_DROP, "icmp_denied"),
        (200, XDP_DROP, "icmp_denied"),
    ] {
        h.expect(&format!("ICMPv6 type {t}"), &Packet::icmp6(PEER6, HOST6, t).bytes(), action, reason);
    }
    // Echo requests: burst 3, then limited, per source.
    for i in 0..3 {
        h.expect(&format!("echo request {i}"), &Packet::icmp4(PEER, HOST, 8).bytes(), XDP_PASS, "icmp");
    }
    h.expect("echo request over the limit", &Packet::icmp4(PEER, HOST, 8).bytes(), XDP_DROP, "icmp_rate_limited");
    h.expect("echo request from another source", &Packet::icmp4(ADMIN, HOST, 8).bytes(), XDP_PASS, "icmp");
    for i in 0..3 {
        h.expect(&format!("ICMPv6 echo request {i}"), &Packet::icmp6(PEER6, HOST6, 128).bytes(), XDP_PASS, "icmp");
    }
    h.expect(
        "ICMPv6 echo request over the limit",
        &Packet::icmp6(PEER6, HOST6, 128).bytes(),
        XDP_DROP,
        "icmp_rate_limited",
    );
    h.expect(
        "ICMPv4 carried over IPv6 is not ICMPv6",
        &Packet::new(Ip::v6(PEER6, HOST6), L4::Raw { proto: 1 }).bytes(),
        XDP_DROP,
        "protocol_closed",
    );
}

#[test]
#[ignore = "needs root and BPF"]
fn port_policy() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    h.expect("closed UDP port", &Packet::udp4(PEER, 1, HOST, 9999).bytes(), XDP_DROP, "port_closed");
    h.expect("closed TCP port", &Packet::tcp4(PEER, 1, HOST, 80, TCP_SYN).bytes(), XDP_DROP, "port_closed");
    h.expect("5061 is TCP only", &Packet::udp4(PEER, 1, HOST, 5061).bytes(), XDP_DROP, "port_closed");
    h.expect("SIP over TCP", &Packet::tcp4(PEER, 40000, HOST, 5060, TCP_SYN).bytes(), XDP_PASS, "port_open");
    h.expect("RTP low edge", &Packet::udp4(PEER, 1, HOST, 10000).bytes(), XDP_PASS, "port_open");
    h.expect("RTP high edge", &Packet::udp4(PEER, 1, HOST, 65000).bytes(), XDP_PASS, "port_open");
    h.expect("just past RTP", &Packet::udp4(PEER, 1, HOST, 65001).bytes(), XDP_DROP, "port_closed");
    h.expect("self-care web", &Packet::tcp4(PEER, 1, HOST, 8445, TCP_SYN).bytes(), XDP_PASS, "port_open");
    h.expect("SSH from an admin", &Packet::tcp4(ADMIN, 50000, HOST, 22, TCP_SYN).bytes(), XDP_PASS, "port_open");
    h.expect(
        "SSH from an IPv6 admin",
        &Packet::tcp6("2001:db8:ad::5", 50000, HOST6, 22, TCP_SYN).bytes(),
        XDP_PASS,
        "port_open",
    );
    h.expect(
        "SSH from a stranger",
        &Packet::tcp4(PEER, 50000, HOST, 22, TCP_SYN).bytes(),
        XDP_DROP,
        "source_not_allowed",
    );
    h.expect(
        "SSH from an IPv6 stranger",
        &Packet::tcp6(PEER6, 50000, HOST6, 22, TCP_SYN).bytes(),
        XDP_DROP,
        "source_not_allowed",
    );
    assert_eq!(h.rule_packets("ssh-admins"), [2, 2, 0], "per-rule counters [pass, drop, would_drop]");
    assert_eq!(h.rule_packets("voip-edge/rtp-portaswitch"), [1, 0, 0]);
    assert_eq!(h.rule_packets("voip-edge/sip"), [1, 0, 0]);
}

#[test]
#[ignore = "needs root and BPF"]
fn rate_level_one_bans_with_one_event() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let attacker = [192, 0, 2, 66];
    for i in 0..20 {
        h.expect(&format!("burst packet {i}"), &sip(attacker), XDP_PASS, "port_open");
    }
    h.expect("packet 21 crosses level 1", &sip(attacker), XDP_DROP, "rate_limited");
    for i in 0..5 {
        h.expect(&format!("after the ban {i}"), &sip(attacker), XDP_DROP, "banned");
    }
    h.expect("another source is still served", &sip(PEER), XDP_PASS, "port_open");
    let ban = h.dp.ban_get(&v4_mapped(attacker)).unwrap().expect("ban inserted by the program");
    assert_eq!(ban.level, 1);
    let now = monotonic_ns();
    assert!(
        ban.expires_ns > now + 3500 * 1_000_000_000 && ban.expires_ns <= now + 3600 * 1_000_000_000 + 1_000_000_000,
        "1h ban: {ban:?}"
    );
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "exactly one event: {events:?}");
    let e = events[0];
    assert_eq!(e.addr, v4_mapped(attacker));
    assert_eq!((e.level, e.prefix_len, e.flags), (1, 32, 0));
    assert_eq!(h.compiled.class_names[e.class as usize], "signaling");
    assert_eq!(e.expires_ns, ban.expires_ns);
    // 21 packets, extrapolated over at least 100 ms and at most the one-second window.
    assert!((21..=210).contains(&e.rate_pps), "observed rate {}", e.rate_pps);
    assert_eq!(h.rule_packets("voip-edge/sip"), [21, 1, 0]);
}

#[test]
#[ignore = "needs root and BPF"]
fn rate_level_two_bans_when_level_one_only_polices() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let src = [192, 0, 2, 67];
    let probe = Packet::udp4(src, 1, HOST, 6000).bytes();
    for i in 0..5 {
        h.expect(&format!("level-1 burst {i}"), &probe, XDP_PASS, "port_open");
    }
    for i in 5..10 {
        h.expect(&format!("policed {i}"), &probe, XDP_DROP, "rate_limited");
    }
    assert!(h.dp.ban_get(&v4_mapped(src)).unwrap().is_none(), "police-only level 1 bans nobody");
    h.expect("packet 11 crosses level 2", &probe, XDP_DROP, "rate_limited");
    h.expect("then banned", &probe, XDP_DROP, "banned");
    assert_eq!(h.dp.ban_get(&v4_mapped(src)).unwrap().expect("level 2 ban").level, 2);
    let events = h.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].level, 2);
    assert_eq!(h.compiled.class_names[events[0].class as usize], "police-then-ban");
}

#[test]
#[ignore = "needs root and BPF"]
fn ipv6_sources_share_their_64() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let from = |s: &str| Packet::udp6(s, 5060, HOST6, 5060).bytes();
    for i in 0..20u32 {
        h.expect("burst spread over one /64", &from(&format!("2001:db8:bad:1::{:x}", i + 1)), XDP_PASS, "port_open");
    }
    h.expect("21st packet from the /64", &from("2001:db8:bad:1::ffff"), XDP_DROP, "rate_limited");
    h.expect("any address of that /64 is banned", &from("2001:db8:bad:1:dead::1"), XDP_DROP, "banned");
    h.expect("the next /64 is not", &from("2001:db8:bad:2::1"), XDP_PASS, "port_open");
    let e = h.drain_events();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].prefix_len, e[0].flags & BAN_IPV6), (64, BAN_IPV6));
    assert_eq!(&e[0].addr[..8], &[0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 1]);
    assert_eq!(&e[0].addr[8..], &[0; 8], "host bits masked");
}

#[test]
#[ignore = "needs root and BPF"]
fn ban_expiry_lets_the_source_back() {
    if !bpf_available() {
        return;
    }
    let policy = POLICY.replace(
        r#"levels = [{ pps = 5, burst = 20, ban = "1h" }, { pps = 20, burst = 40, ban = "1h" }]"#,
        r#"levels = [{ pps = 5, burst = 20, ban = "1s" }]"#,
    );
    assert_ne!(policy, POLICY);
    let h = Harness::new(&policy);
    let src = [192, 0, 2, 68];
    for _ in 0..20 {
        h.expect("burst", &sip(src), XDP_PASS, "port_open");
    }
    h.expect("crosses", &sip(src), XDP_DROP, "rate_limited");
    h.expect("banned", &sip(src), XDP_DROP, "banned");
    std::thread::sleep(std::time::Duration::from_millis(1300));
    h.expect("ban expired after 1 s", &sip(src), XDP_PASS, "port_open");
}

#[test]
#[ignore = "needs root and BPF"]
fn fragments_inherit_their_first_fragments_verdict() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let invite = Packet::udp4(PEER, 5060, HOST, 5060).payload(&[b'x'; 3000]);
    let frags = invite.fragments(1480, 4242);
    assert_eq!(frags.len(), 3);
    h.expect("first fragment of a SIP INVITE", &frags[0], XDP_PASS, "port_open");
    h.expect("second fragment", &frags[1], XDP_PASS, "port_open");
    h.expect("last fragment", &frags[2], XDP_PASS, "port_open");
    assert_eq!(h.rule_packets("voip-edge/sip"), [3, 0, 0]);

    let closed = Packet::udp4(PEER, 1, HOST, 9999).payload(&[0; 3000]).fragments(1480, 4243);
    h.expect("first fragment to a closed port", &closed[0], XDP_DROP, "port_closed");
    h.expect("its later fragment", &closed[1], XDP_DROP, "port_closed");

    let orphan = Packet::udp4(PEER, 5060, HOST, 5060).payload(&[0; 3000]).fragments(1480, 4244);
    h.expect("non-first fragment without its first", &orphan[1], XDP_DROP, "fragment_orphan");
    h.expect(
        "the same id from another source is another datagram",
        &Packet::udp4(ADMIN, 5060, HOST, 5060).payload(&[0; 3000]).fragments(1480, 4242)[1],
        XDP_DROP,
        "fragment_orphan",
    );

    let v6 = Packet::udp6(PEER6, 5060, HOST6, 5060).payload(&[b'y'; 3000]).fragments(1232, 777);
    h.expect("IPv6 first fragment", &v6[0], XDP_PASS, "port_open");
    h.expect("IPv6 second fragment", &v6[1], XDP_PASS, "port_open");
    h.expect(
        "IPv6 orphan",
        &Packet::udp6(PEER6, 5060, HOST6, 5060).payload(&[0; 3000]).fragments(1232, 778)[2],
        XDP_DROP,
        "fragment_orphan",
    );

    // A first fragment too short to hold the transport header (RFC 1858's tiny fragment).
    let mut tiny = Packet::tcp4(PEER, 1, HOST, 5061, TCP_SYN).payload(b"").bytes();
    tiny.truncate(14 + 20 + 8);
    tiny[16..18].copy_from_slice(&28u16.to_be_bytes());
    tiny[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    h.expect("tiny first fragment", &tiny, XDP_DROP, "malformed");

    // Allow and block lists apply to later fragments directly.
    h.expect(
        "blocked source, later fragment",
        &Packet::udp4(BLOCKED, 5060, HOST, 5060).payload(&[0; 3000]).fragments(1480, 1)[1],
        XDP_DROP,
        "block_list",
    );
    h.expect(
        "allowed source, later fragment",
        &Packet::udp4(ALLOWED, 5060, HOST, 5060).payload(&[0; 3000]).fragments(1480, 1)[1],
        XDP_PASS,
        "allow_list",
    );
}

#[test]
#[ignore = "needs root and BPF"]
fn fragment_flood_of_one_datagram_is_bounded() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let frags = Packet::udp4(PEER, 5060, HOST, 5060).payload(&[0; 3000]).fragments(1480, 99);
    h.expect("first", &frags[0], XDP_PASS, "port_open");
    for i in 0..common::MAX_FRAGMENTS_PER_DATAGRAM {
        h.expect(&format!("repeat {i}"), &frags[1], XDP_PASS, "port_open");
    }
    h.expect("one past the bound", &frags[1], XDP_DROP, "fragment_orphan");
}

#[test]
#[ignore = "needs root and BPF"]
fn dry_run_passes_everything_and_counts_would_drop() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(&POLICY.replace("[options]\n", "[options]\ndry_run = true\n"));
    h.expect("closed port", &Packet::udp4(PEER, 1, HOST, 9999).bytes(), XDP_PASS, "port_closed");
    h.expect("blocked source", &sip(BLOCKED), XDP_PASS, "block_list");
    h.expect("malformed", &sip(PEER)[..40], XDP_PASS, "malformed");
    h.expect("SSH from a stranger", &Packet::tcp4(PEER, 1, HOST, 22, TCP_SYN).bytes(), XDP_PASS, "source_not_allowed");
    h.expect("an open port is still a plain pass", &sip(PEER), XDP_PASS, "port_open");
    let attacker = [192, 0, 2, 69];
    for _ in 0..20 {
        h.expect("burst", &sip(attacker), XDP_PASS, "port_open");
    }
    h.expect("would cross level 1", &sip(attacker), XDP_PASS, "rate_limited");
    h.expect("still passes", &sip(attacker), XDP_PASS, "rate_limited");
    assert!(h.dp.ban_get(&v4_mapped(attacker)).unwrap().is_none(), "dry run inserts no ban");
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "one would-be-ban event per ban period: {events:?}");
    assert_eq!(events[0].flags & BAN_DRY_RUN, BAN_DRY_RUN);
    assert_eq!(h.rule_packets("ssh-admins"), [0, 0, 1], "rules count would-drops in dry run");
}

#[test]
#[ignore = "needs root and BPF"]
fn reload_flips_generations() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let gen0 = h.dp.generation();
    h.expect("5060 open", &sip(PEER), XDP_PASS, "port_open");
    h.expect("9999 closed", &Packet::udp4(PEER, 1, HOST, 9999).bytes(), XDP_DROP, "port_closed");
    h.reload("roles = []\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\n[[rule]]\nname = \"x\"\nproto = \"udp\"\nports = [\"9999\"]\n");
    assert_ne!(h.dp.generation(), gen0);
    h.expect("5060 closed after reload", &sip(PEER), XDP_DROP, "port_closed");
    h.expect("9999 open after reload", &Packet::udp4(PEER, 1, HOST, 9999).bytes(), XDP_PASS, "port_open");
    h.expect(
        "sets of the old generation are gone",
        &Packet::tcp4(ADMIN, 1, HOST, 22, TCP_SYN).bytes(),
        XDP_PASS,
        "port_open",
    );
    h.reload(POLICY);
    h.expect("and back", &sip(PEER), XDP_PASS, "port_open");
    h.expect("admin set restored", &Packet::tcp4(PEER, 1, HOST, 22, TCP_SYN).bytes(), XDP_DROP, "source_not_allowed");
}

/// The IPv4 levels (the /16 gate, the /24 slots and the host blocks) answer exactly like "allow
/// list first, then block list", through random additions and removals of wide and narrow
/// entries.
#[test]
#[ignore = "needs root and BPF"]
fn source_lists_answer_like_allow_then_block_through_random_changes() {
    random_list_changes(false);
}

/// The same through the bulk path (`SourceTables::write_all`: batched trie inserts, the levels
/// written once per batch) with many CIDRs per change.
#[test]
#[ignore = "needs root and BPF"]
fn bulk_list_changes_answer_like_single_ones() {
    random_list_changes(true);
}

fn random_list_changes(bulk: bool) {
    use std::net::{IpAddr, Ipv4Addr};

    use ipnet::{IpNet, Ipv4Net};
    use voipwall::sources::{ListKind, Lists, ManualEntry};

    if !bpf_available() {
        return;
    }
    let mut h = Harness::new("roles = [\"voip-edge\"]\n");
    let mut lists = Lists::default();
    let mut rng = tests::bench::scale::Rng::new(5);
    // Addresses concentrated in a few /8s so entries overlap and nest.
    let addr = |rng: &mut tests::bench::scale::Rng| -> u32 {
        let base = [0x2d00_0000u32, 0x2e00_0000, 0x5b00_0000][(rng.next_u64() % 3) as usize];
        base | ((rng.next_u64() as u32) & 0x00ff_ffff)
    };
    let entry = || ManualEntry { reason: None, who: "test".into(), created: 0, expires: None };
    let mut present: Vec<(ListKind, IpNet)> = Vec::new();
    for round in 0..6 {
        let mut batch: Vec<(ListKind, IpNet)> = Vec::new();
        // The first bulk round holds only wide entries (/16 and shorter), which the /16 gate
        // itself answers: no longer entry sends those packets to the /24 slots.
        let (count, lens) = match (bulk, round) {
            (true, 0) => (12, 3),
            (true, _) => (400, 10),
            (false, _) => (40, 10),
        };
        for _ in 0..count {
            let len = [8u8, 12, 16, 17, 20, 24, 26, 28, 31, 32][(rng.next_u64() % lens) as usize];
            let net = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr(&mut rng)), len).unwrap().trunc());
            let kind = if rng.next_u64().is_multiple_of(3) { ListKind::Allow } else { ListKind::Block };
            if bulk {
                batch.push((kind, net));
            } else {
                let diff = lists.add_manual(kind, &[net], entry());
                for c in diff.all() {
                    h.sources.write(c).unwrap();
                }
            }
            present.push((kind, net));
        }
        for kind in [ListKind::Block, ListKind::Allow] {
            let nets: Vec<IpNet> = batch.iter().filter(|b| b.0 == kind).map(|b| b.1).collect();
            if !nets.is_empty() {
                let diff = lists.add_manual(kind, &nets, entry());
                h.sources.write_all(&diff.early).map_err(|(n, e)| format!("after {n}: {e}")).unwrap();
                h.sources.write_all(&diff.late).map_err(|(n, e)| format!("after {n}: {e}")).unwrap();
            }
        }
        if round > 0 {
            for _ in 0..25 {
                let i = (rng.next_u64() % present.len() as u64) as usize;
                let (kind, net) = present.swap_remove(i);
                if let Ok(diff) = lists.remove_manual(kind, &net) {
                    if bulk {
                        h.sources.write_all(&diff.early).map_err(|(n, e)| format!("after {n}: {e}")).unwrap();
                        h.sources.write_all(&diff.late).map_err(|(n, e)| format!("after {n}: {e}")).unwrap();
                    } else {
                        for c in diff.all() {
                            h.sources.write(c).unwrap();
                        }
                    }
                }
            }
        }
        for probe in 0..300 {
            // Half the probes inside an entry (most entries are narrow; uniform probes would
            // almost never land in one), half anywhere.
            let a = if probe % 2 == 0 && !present.is_empty() {
                let IpNet::V4(n) = present[(rng.next_u64() % present.len() as u64) as usize].1 else { unreachable!() };
                u32::from(n.network()) | ((rng.next_u64() as u32) & !u32::from(n.netmask()))
            } else {
                addr(&mut rng)
            };
            let ip = IpAddr::V4(Ipv4Addr::from(a));
            let want = if lists.contains(ListKind::Allow, ip) {
                "allow_list"
            } else if lists.contains(ListKind::Block, ip) {
                "block_list"
            } else {
                "port_closed"
            };
            let frame = Packet::udp4(a.to_be_bytes(), 1, HOST, 9999).bytes();
            let action = if want == "allow_list" { XDP_PASS } else { XDP_DROP };
            h.expect(&format!("round {round}, {ip}"), &frame, action, want);
        }
    }
}

/// A bulk insert the kernel cannot finish leaves exactly a prefix in force. The trie and the
/// levels are written side by side: when the trie fills part way, the levels take back what the
/// trie did not take; when the levels fail (the host blocks fill), the whole run leaves the
/// trie and the levels again.
#[test]
#[ignore = "needs root and BPF"]
fn a_bulk_insert_that_overflows_leaves_a_prefix_in_force() {
    use ipnet::IpNet;
    use voipwall::sources::{ListKind, Lists, ManualEntry};

    if !bpf_available() {
        return;
    }
    // Trie: allow + block_v4 = 116 entries; host blocks: 100.
    let caps = voipwall::policy::Capacity { allow: 16, block_v4: 100, ..tests::test_capacity() };
    let entry = || ManualEntry { reason: None, who: "test".into(), created: 0, expires: None };
    let probe = |net: &IpNet| match net {
        IpNet::V4(n) => u32::from(n.network()) | 7,
        IpNet::V6(_) => unreachable!(),
    };

    // 300 /24s: the trie stops at 116, the /24 slots have room for all.
    let mut h = Harness::new_with_capacity("roles = [\"voip-edge\"]\n", caps);
    let nets: Vec<IpNet> = (0..300u32).map(|i| format!("45.{}.{}.0/24", i / 200, i % 200).parse().unwrap()).collect();
    let diff = Lists::default().add_manual(ListKind::Block, &nets, entry());
    assert_eq!(diff.early.len(), 300);
    let (in_force, e) = h.sources.write_all(&diff.early).expect_err("the trie holds 116");
    assert_eq!(in_force, 116, "the trie's capacity: {e}");
    for (i, n) in nets.iter().enumerate() {
        let reason = if i < in_force { "block_list" } else { "port_closed" };
        let frame = Packet::udp4(probe(n).to_be_bytes(), 1, HOST, 9999).bytes();
        h.expect(&format!("{n} (entry {i}, {in_force} in force)"), &frame, XDP_DROP, reason);
    }
    assert_eq!(h.sources.entries().unwrap().len(), in_force);
    // The caller's undo of the prefix leaves nothing behind.
    h.sources.undo(&diff.early[..in_force]);
    assert!(h.sources.entries().unwrap().is_empty());
    for n in &nets {
        let frame = Packet::udp4(probe(n).to_be_bytes(), 1, HOST, 9999).bytes();
        h.expect(&format!("{n} after the undo"), &frame, XDP_DROP, "port_closed");
    }

    // 110 /32s in as many /24s: the trie takes them all, the host blocks stop at 100, so the
    // whole run leaves again.
    let mut h = Harness::new_with_capacity("roles = [\"voip-edge\"]\n", caps);
    let nets: Vec<IpNet> = (0..110u32).map(|i| format!("46.0.{i}.7/32").parse().unwrap()).collect();
    let diff = Lists::default().add_manual(ListKind::Block, &nets, entry());
    let (in_force, e) = h.sources.write_all(&diff.early).expect_err("100 host blocks");
    assert_eq!(in_force, 0, "nothing stays in force when the levels fail: {e}");
    assert!(h.sources.entries().unwrap().is_empty(), "the trie entries left again");
    assert_eq!(h.sources.host_blocks(), 0);
    for n in &nets {
        let frame = Packet::udp4(probe(n).to_be_bytes(), 1, HOST, 9999).bytes();
        h.expect(&format!("{n} after the failed run"), &frame, XDP_DROP, "port_closed");
    }
}

/// The "bans may exist" flag never hides a ban: clearing it with a ban in the table re-raises
/// it, and a ban the program inserts raises it again after a clear.
#[test]
#[ignore = "needs root and BPF"]
fn the_bans_present_flag_never_hides_a_ban() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let src = [192, 0, 2, 90];
    let far = monotonic_ns() + 60_000_000_000;
    h.dp.ban_insert(
        &v4_mapped(src),
        &BanEntry { expires_ns: far, rate_pps: 0, class: 0, level: 0, flags: 0, _pad: Default::default() },
    )
    .unwrap();
    h.expect("banned", &sip(src), XDP_DROP, "banned");
    h.dp.clear_bans_present().unwrap();
    h.expect("a clear with a ban in the table keeps it enforced", &sip(src), XDP_DROP, "banned");
    h.dp.ban_remove(&v4_mapped(src)).unwrap();
    h.dp.clear_bans_present().unwrap();
    h.expect("no ban, flag clear", &sip(src), XDP_PASS, "port_open");
    // The program's own ban (level 1 of the signaling class) raises the flag again.
    let attacker = [192, 0, 2, 91];
    for _ in 0..20 {
        h.expect("burst", &sip(attacker), XDP_PASS, "port_open");
    }
    h.expect("crosses level 1", &sip(attacker), XDP_DROP, "rate_limited");
    h.expect("the program's ban is enforced after a clear", &sip(attacker), XDP_DROP, "banned");
    h.drain_events();
}
