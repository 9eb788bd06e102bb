//! Per-path cost: BPF_PROG_TEST_RUN of the real program on one packet per path, alternating with
//! the empty XDP_PASS program in the same process, on a pinned CPU; medians and spread of
//! rounds, and the ratio to the empty program measured in the same round.

use std::time::Duration;

use common::{BanEntry, KnownPeer, addr::v4_mapped, known};
use serde::Serialize;
use voipwall::dataplane::monotonic_ns;

use crate::{
    Harness,
    bench::{Baseline, Settings, Stat, median_spread, side_by_side},
    packet::{Ext, Packet, TCP_SYN},
};

pub const HOST: [u8; 4] = [10, 0, 0, 1];
pub const HOST6: &str = "2001:db8:feed::1";

/// A policy whose limits never trigger on the measured packets (huge bursts), plus a
/// police-only class that is always exceeded, so every path is measured steady-state. The
/// built-in classes have no budget for unknown sources, so their rows measure the per-source
/// path every source took before budgets existed; `spent` is a class whose budget is always
/// spent (the refused spoofed packet) and `budgeted` one whose budget never runs out (an unknown
/// source admitted by it).
pub const POLICY: &str = r#"
roles = ["voip-edge"]
allow = ["198.51.100.10/32"]
block = ["203.0.113.0/24"]

[[rule]]
name = "policed"
proto = "udp"
ports = ["6000"]
limit = "always-over"

[[rule]]
name = "budget-spent"
proto = "udp"
ports = ["6001"]
limit = "spent"

[[rule]]
name = "budgeted"
proto = "udp"
ports = ["6002"]
limit = "budgeted"

[[rule]]
name = "pinholes"
proto = "udp"
ports = ["7000-7001"]
limit = "media"
media = "pinhole"

[limit.signaling]
levels = [{ pps = 1000000, burst = 100000000, ban = "1h" }]
unknown = "off"

[limit.media]
levels = [{ pps = 1000000, burst = 100000000 }]
unknown = "off"

[limit.always-over]
levels = [{ pps = 1, burst = 1 }]

[limit.spent]
levels = [{ pps = 1000000, burst = 100000000 }]
unknown = { pps = 1, burst = 1 }

[limit.budgeted]
levels = [{ pps = 1000000, burst = 100000000 }]
unknown = { pps = 100000000, burst = 100000000 }

[sip]
ua_ban = "0"
"#;

/// A REGISTER of about 400 bytes, as a phone sends it (scanned: SIP port, User-Agent present).
pub fn register() -> Vec<u8> {
    let mut m = String::from("REGISTER sip:voip.example.com SIP/2.0\r\n");
    for h in [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport",
        "Max-Forwards: 70",
        "From: <sip:100@voip.example.com>;tag=1928301774",
        "To: <sip:100@voip.example.com>",
        "Call-ID: a84b4c76e66710@192.0.2.10",
        "CSeq: 1 REGISTER",
        "Contact: <sip:100@192.0.2.10:5060>",
        "Expires: 3600",
        "User-Agent: Yealink SIP-T46S 66.86.0.15",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY",
        "Content-Length: 0",
    ] {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.into_bytes()
}

/// A 1400-byte INVITE with SDP, its User-Agent after 17 other headers (so the scan walks most
/// of the header block).
pub fn invite_1400(ua: &str) -> Vec<u8> {
    let mut m = String::from("INVITE sip:bob@voip.example.com SIP/2.0\r\n");
    let mut headers: Vec<String> = vec![
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport".into(),
        "Max-Forwards: 70".into(),
        "From: \"Alice\" <sip:alice@voip.example.com>;tag=9fxced76sl".into(),
        "To: <sip:bob@voip.example.com>".into(),
        "Call-ID: 3848276298220188511@192.0.2.10".into(),
        "CSeq: 1 INVITE".into(),
        "Contact: <sip:alice@192.0.2.10:5060;transport=udp>".into(),
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, UPDATE".into(),
        "Supported: replaces, timer, path".into(),
        "Session-Expires: 1800;refresher=uac".into(),
        "P-Asserted-Identity: \"Alice\" <sip:alice@voip.example.com>".into(),
        "Content-Type: application/sdp".into(),
    ];
    for i in 0..5 {
        headers.push(format!("X-Trace-{i}: {}", "0123456789abcdef".repeat(3)));
    }
    headers.push(format!("User-Agent: {ua}"));
    let mut sdp = String::from(
        "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 9 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
    );
    // Pad the SDP so the whole datagram payload is 1400 bytes.
    let fixed: usize =
        m.len() + headers.iter().map(|h| h.len() + 2).sum::<usize>() + "Content-Length: 0000\r\n\r\n".len();
    while fixed + sdp.len() < 1400 {
        sdp.push_str("a=x-pad:0\r\n");
    }
    sdp.truncate(1400 - fixed);
    headers.push(format!("Content-Length: {:04}", sdp.len()));
    for h in &headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&sdp);
    m.into_bytes()
}

#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    pub path: String,
    pub reason: String,
    pub ns: Stat,
    pub empty_ns: Stat,
    pub ratio: f64,
}

pub struct Case {
    pub name: &'static str,
    pub reason: &'static str,
    pub frame: Vec<u8>,
}

pub fn cases() -> Vec<Case> {
    let reg = register();
    let sip = |src: [u8; 4]| Packet::udp4(src, 5060, HOST, 5060).payload(&reg).bytes();
    let invite = invite_1400("Yealink SIP-T46S 66.86.0.15");
    assert_eq!(invite.len(), 1400);
    let frags = Packet::udp4([192, 0, 2, 50], 5060, HOST, 5060).payload(&[0x80; 3000]).fragments(1480, 7);
    vec![
        Case { name: "allowed SIP, unknown source (warm)", reason: "port_open", frame: sip([192, 0, 2, 10]) },
        Case {
            name: "allowed RTP",
            reason: "port_open",
            frame: Packet::udp4([192, 0, 2, 11], 40000, HOST, 12000).payload(&[0; 172]).bytes(),
        },
        Case {
            name: "closed port",
            reason: "port_closed",
            frame: Packet::udp4([192, 0, 2, 12], 1234, HOST, 9999).payload(&[0; 64]).bytes(),
        },
        Case { name: "block-list hit", reason: "block_list", frame: sip([203, 0, 113, 5]) },
        Case { name: "allow-list hit", reason: "allow_list", frame: sip([198, 51, 100, 10]) },
        Case {
            name: "rate-limited drop",
            reason: "rate_limited",
            frame: Packet::udp4([192, 0, 2, 14], 1, HOST, 6000).payload(&[0; 64]).bytes(),
        },
        Case {
            name: "1400-byte INVITE to an open non-SIP port (plain allowed path)",
            reason: "port_open",
            frame: Packet::udp4([192, 0, 2, 16], 5060, HOST, 12000).payload(&invite).bytes(),
        },
        Case {
            name: "1400-byte INVITE, User-Agent scan (clean)",
            reason: "port_open",
            frame: Packet::udp4([192, 0, 2, 16], 5060, HOST, 5060).payload(&invite).bytes(),
        },
        Case {
            name: "1400-byte INVITE, listed User-Agent",
            reason: "sip_user_agent",
            frame: Packet::udp4([192, 0, 2, 17], 5060, HOST, 5060).payload(&invite_1400("friendly-scanner")).bytes(),
        },
        Case {
            name: "SIP port, 400-byte non-SIP payload",
            reason: "port_open",
            frame: Packet::udp4([192, 0, 2, 18], 5060, HOST, 5060).payload(&[0x80; 400]).bytes(),
        },
        Case {
            name: "IPv6 allowed SIP",
            reason: "port_open",
            frame: Packet::udp6("2001:db8:1::10", 5060, HOST6, 5060).payload(&reg).bytes(),
        },
        Case {
            name: "IPv6 closed port",
            reason: "port_closed",
            frame: Packet::udp6("2001:db8:1::12", 1234, HOST6, 9999).payload(&[0; 64]).bytes(),
        },
        Case {
            name: "IPv6 ext headers, allowed SIP",
            reason: "port_open",
            frame: Packet::udp6("2001:db8:1::13", 5060, HOST6, 5060)
                .ext(Ext::HopByHop(0))
                .ext(Ext::DestOpts(0))
                .payload(&reg)
                .bytes(),
        },
        Case {
            name: "TCP SYN to closed port",
            reason: "port_closed",
            frame: Packet::tcp4([192, 0, 2, 15], 40000, HOST, 80, TCP_SYN).bytes(),
        },
        Case { name: "first fragment", reason: "port_open", frame: frags[0].clone() },
        Case { name: "non-first fragment", reason: "port_open", frame: frags[1].clone() },
        Case {
            name: "refused spoofed packet (unknown source, class budget spent)",
            reason: "unknown_over_budget",
            frame: Packet::udp4([192, 0, 2, 40], 40000, HOST, 6001).payload(&[0; 172]).bytes(),
        },
        Case {
            name: "allowed RTP-sized packet, unknown source within its class budget",
            reason: "port_open",
            frame: Packet::udp4([192, 0, 2, 41], 40000, HOST, 6002).payload(&[0; 172]).bytes(),
        },
        Case {
            name: "RTP admitted by a pinhole (media in pinhole mode)",
            reason: "pinhole",
            frame: Packet::udp4(PINHOLE_PEER, 40000, HOST, 7000).payload(&[0; 172]).bytes(),
        },
        Case {
            name: "RTP without a pinhole (media in pinhole mode)",
            reason: "pinhole_closed",
            frame: Packet::udp4([192, 0, 2, 43], 40000, HOST, 7000).payload(&[0; 172]).bytes(),
        },
        Case { name: "allowed SIP, known peer", reason: "port_open", frame: sip(KNOWN_PEER) },
        Case {
            name: "allowed RTP, known peer",
            reason: "port_open",
            frame: Packet::udp4(KNOWN_PEER, 40000, HOST, 12000).payload(&[0; 172]).bytes(),
        },
        // From here on the ban table holds a ban, so every packet also looks it up.
        Case { name: "ban hit", reason: "banned", frame: sip([192, 0, 2, 13]) },
        Case { name: "allowed SIP, bans present", reason: "port_open", frame: sip([192, 0, 2, 10]) },
        Case {
            name: "closed port, bans present",
            reason: "port_closed",
            frame: Packet::udp4([192, 0, 2, 12], 1234, HOST, 9999).payload(&[0; 64]).bytes(),
        },
    ]
}

/// A phone that proved its address (digest challenge answered), as the data plane learns it.
pub const KNOWN_PEER: [u8; 4] = [192, 0, 2, 30];
/// The peer of a live call on local port 7000 (a pinhole as the learner opens it).
pub const PINHOLE_PEER: [u8; 4] = [192, 0, 2, 42];

/// Prepare state some paths need (a remembered first fragment, a known peer).
pub fn prepare(h: &mut Harness, cases: &[Case]) {
    let now = monotonic_ns();
    let peer = KnownPeer { seen_ns: now, since_ns: now, proof: known::PROOF_SIP_DIGEST, ..KnownPeer::default() };
    h.dp.known_insert(&v4_mapped(KNOWN_PEER), &peer).expect("known insert");
    let pinhole = common::Pinhole {
        seen_ns: now,
        until_ns: 0,
        idle_ns: 3_600_000_000_000,
        peer_port: 0,
        flags: common::PINHOLE_OPEN_SDP,
        _pad: 0,
    };
    h.dp.pinhole_insert(&voipwall::pinholes::key_of(PINHOLE_PEER.into(), 7000), &pinhole).expect("pinhole insert");
    for c in cases {
        // The first fragment must be remembered before the non-first one is measured.
        if c.name == "first fragment" {
            h.run(&c.frame);
        }
    }
}

/// Two paths measured side by side: in every round one right after the other (the order
/// alternating), and the ratio taken per round, so the machine's drift between rounds cancels.
#[derive(Clone, Debug, Serialize)]
pub struct PairedRow {
    pub what: String,
    pub a: String,
    pub b: String,
    pub a_ns: Stat,
    pub b_ns: Stat,
    /// a / b, per round.
    pub ratio: Stat,
}

/// The side-by-side comparisons the targets are judged on: (what, path a, path b).
pub const PAIRS: [(&str, &str, &str); 5] = [
    (
        "1400-byte INVITE: User-Agent scan / the same frame on a plain port",
        "1400-byte INVITE, User-Agent scan (clean)",
        "1400-byte INVITE to an open non-SIP port (plain allowed path)",
    ),
    (
        "refused spoofed packet / closed-port drop",
        "refused spoofed packet (unknown source, class budget spent)",
        "closed port",
    ),
    ("known peer's RTP / RTP without known peers", "allowed RTP, known peer", "allowed RTP"),
    ("known peer's SIP / SIP without known peers", "allowed SIP, known peer", "allowed SIP, unknown source (warm)"),
    (
        "RTP admitted by a pinhole / RTP on an open media port",
        "RTP admitted by a pinhole (media in pinhole mode)",
        "allowed RTP",
    ),
];

/// The per-path table, whether the early drops (closed port, block list) left the rate table
/// untouched, and the side-by-side comparisons.
pub fn run(settings: &Settings, baseline: &Baseline) -> (Vec<PathRow>, bool, Vec<PairedRow>) {
    let mut h = Harness::new_with_capacity(POLICY, settings.capacity());
    let cases = cases();
    prepare(&mut h, &cases);
    let mut rows = Vec::new();
    let mut early_untouched = true;
    for case in &cases {
        let early = matches!(case.reason, "port_closed" | "block_list");
        let created_before = h.dp.stats().expect("stats")[common::stat::RATES_CREATED as usize];
        if case.name == "ban hit" {
            let far = monotonic_ns() + 86_400_000_000_000;
            h.dp.ban_insert(
                &v4_mapped([192, 0, 2, 13]),
                &BanEntry { expires_ns: far, rate_pps: 0, class: 0, level: 1, flags: 0, _pad: Default::default() },
            )
            .expect("ban insert");
        }
        if matches!(case.reason, "rate_limited" | "unknown_over_budget") {
            // Spend the one-packet burst now: earlier cases took longer than the refill time.
            h.run(&case.frame);
        }
        // The exact reason is asserted once (cheaply) so a benchmark can never measure the
        // wrong path.
        let out = h.run(&case.frame);
        assert_eq!(common::reason::NAMES[out.reason as usize], case.reason, "{}: measured path is {}", case.name, out);
        let mut ours = Vec::new();
        let mut empty = Vec::new();
        for _ in 0..settings.rounds {
            empty.push(baseline.ns(&case.frame, settings.repeat));
            ours.push(ns(&h, &case.frame, settings.repeat));
        }
        if early {
            early_untouched &= h.dp.stats().expect("stats")[common::stat::RATES_CREATED as usize] == created_before;
        }
        let ns = median_spread(&ours);
        let empty_ns = median_spread(&empty);
        rows.push(PathRow {
            path: case.name.to_string(),
            reason: case.reason.to_string(),
            ratio: ns.median / empty_ns.median,
            ns,
            empty_ns,
        });
    }
    let frame = |name: &str| &cases.iter().find(|c| c.name == name).expect("a measured path").frame;
    let mut paired: Vec<PairedRow> = PAIRS
        .iter()
        .map(|(what, a, b)| {
            let (fa, fb) = (frame(a), frame(b));
            let (a_ns, b_ns, ratio) = side_by_side(
                settings.rounds.max(5) * 2,
                || ns(&h, fa, settings.repeat),
                || ns(&h, fb, settings.repeat),
            );
            PairedRow { what: (*what).to_string(), a: (*a).to_string(), b: (*b).to_string(), a_ns, b_ns, ratio }
        })
        .collect();
    paired.extend(capture_pairs(settings, frame("closed port")));
    (rows, early_untouched, paired)
}

/// The closed-port drop with `[capture]` (drop samples) on, against the same drop without it,
/// side by side: sampling other reasons (the drop path tests one bit), and sampling this reason
/// with its per-second budget spent (a flood: the budget read on every drop).
fn capture_pairs(settings: &Settings, closed: &[u8]) -> Vec<PairedRow> {
    let off = Harness::new_with_capacity(POLICY, settings.capacity());
    let with = |reasons: &str| {
        let text = format!("{POLICY}\n[capture]\npps = 1\nreasons = [{reasons}]\npcap = \"/nonexistent\"\n");
        Harness::new_with_capacity(&text, settings.capacity())
    };
    let other = with("\"sip_user_agent\"");
    let sampled = with("\"port_closed\"");
    // Spend this reason's budget (one sample per second): the measured drops are then refused
    // samples, as during a flood.
    for _ in 0..3 {
        sampled.run(closed);
    }
    [
        (
            "closed-port drop: [capture] of other reasons / capture off",
            "closed port, [capture] of other reasons",
            &other,
        ),
        (
            "closed-port drop: sampled reason over its cap / capture off",
            "closed port, sampled, over the per-second cap",
            &sampled,
        ),
    ]
    .into_iter()
    .map(|(what, a, h)| {
        let (a_ns, b_ns, ratio) = side_by_side(
            settings.rounds.max(5) * 2,
            || ns(h, closed, settings.repeat),
            || ns(&off, closed, settings.repeat),
        );
        PairedRow { what: what.to_string(), a: a.to_string(), b: "closed port".to_string(), a_ns, b_ns, ratio }
    })
    .collect()
}

fn ns(h: &Harness, frame: &[u8], repeat: u32) -> f64 {
    let (_, d): (u32, Duration) = h.dp.test_run(frame, repeat).expect("test_run");
    d.as_nanos() as f64
}
