//! BPF_PROG_TEST_RUN cases for media in pinhole mode: the drop reason, admission by a live
//! pinhole, port latching, expiry, return traffic, the full-table fallback, the provisional
//! pinholes the egress program opens from the host's own SDP, and the signaling the programs
//! copy out for the learner, fed back through the learner (every SDP form it
//! reads, in both directions and both families) until the media it opened passes.

use common::{PINHOLE_OPEN_MANUAL, Pinhole, SignalRecord};
use tests::{Harness, XDP_DROP, XDP_PASS, bpf_available, packet::Packet};
use voipwall::{
    dataplane::monotonic_ns,
    pinholes::{Pinholes, key_of},
    policy,
};

const HOST: [u8; 4] = [10, 0, 0, 1];
const HOST6: &str = "2001:db8:feed::1";
const PHONE: [u8; 4] = [192, 0, 2, 20];
const OTHER: [u8; 4] = [192, 0, 2, 66];

/// voip-edge with its RTP ranges (10000-20000 and 35000-65000/udp) in pinhole mode; 30000-30100 in pinhole mode
/// with the full-table fallback; 40000 open as before.
const POLICY: &str = r#"
roles = ["voip-edge"]

[media]
mode = "pinhole"
idle = "30s"
grace = "2s"

[[rule]]
name = "rtp-fallback"
proto = "udp"
ports = ["30000-30100"]
limit = "media"
pinhole_full = "limit"

[[rule]]
name = "plain-media"
proto = "udp"
ports = ["40000"]
limit = "media"
media = "open"
"#;

fn rtp(src: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    Packet::udp4(src, sport, HOST, dport).payload(&[0x80, 0, 0, 1, 0, 0, 0, 0]).bytes()
}

fn manual(now: u64) -> Pinhole {
    Pinhole { seen_ns: now, until_ns: 0, idle_ns: 0, peer_port: 0, flags: PINHOLE_OPEN_MANUAL, _pad: 0 }
}

#[test]
#[ignore = "needs root and BPF"]
fn pinhole_ports_admit_only_live_pinholes_and_latch_the_peer_port() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    h.expect("RTP without a pinhole", &rtp(PHONE, 4000, 12000), XDP_DROP, "pinhole_closed");
    h.expect("a port in open mode", &rtp(PHONE, 4000, 40000), XDP_PASS, "port_open");
    let key = key_of(std::net::IpAddr::from(PHONE), 12000);
    h.dp.pinhole_insert(&key, &manual(monotonic_ns())).unwrap();
    h.expect("the pinhole's peer", &rtp(PHONE, 4000, 12000), XDP_PASS, "pinhole");
    assert_eq!(h.dp.pinhole_get(&key).unwrap().unwrap().peer_port, 4000, "latched on the first packet");
    h.expect("same peer, latched port", &rtp(PHONE, 4000, 12000), XDP_PASS, "pinhole");
    h.expect("same peer, another source port", &rtp(PHONE, 4002, 12000), XDP_DROP, "pinhole_closed");
    h.expect("another address, the call's port", &rtp(OTHER, 4000, 12000), XDP_DROP, "pinhole_closed");
    h.expect("the peer, another local port", &rtp(PHONE, 4000, 12002), XDP_DROP, "pinhole_closed");
    assert_eq!(h.rule_packets("voip-edge/rtp-asterisk")[..2], [2, 4], "counted on the RTP rule");

    // Expiry: idle (no packet for idle_ns) and a hard end (grace or TTL).
    let now = monotonic_ns();
    let idle = Pinhole { seen_ns: now - 5_000_000_000, idle_ns: 1_000_000_000, ..manual(now) };
    h.dp.pinhole_insert(&key, &idle).unwrap();
    h.expect("idle pinhole", &rtp(PHONE, 4000, 12000), XDP_DROP, "pinhole_closed");
    // (The data plane reads the coarse clock, up to a tick behind: end well before now.)
    let ended = Pinhole { until_ns: now - 100_000_000, ..manual(now) };
    h.dp.pinhole_insert(&key, &ended).unwrap();
    h.expect("past its end", &rtp(PHONE, 4000, 12000), XDP_DROP, "pinhole_closed");
    // Set-up allowance: seen in the future, no packet yet.
    let waiting = Pinhole { seen_ns: now + 60_000_000_000, idle_ns: 1_000_000_000, ..manual(now) };
    h.dp.pinhole_insert(&key, &waiting).unwrap();
    h.expect("within the set-up allowance", &rtp(PHONE, 4000, 12000), XDP_PASS, "pinhole");

    // IPv6.
    let peer6 = "2001:db8:77::5";
    let v6 = Packet::udp6(peer6, 5004, HOST6, 12010).payload(&[0x80; 12]).bytes();
    h.expect("IPv6 without a pinhole", &v6, XDP_DROP, "pinhole_closed");
    h.dp.pinhole_insert(&key_of(peer6.parse().unwrap(), 12010), &manual(monotonic_ns())).unwrap();
    h.expect("IPv6 with a pinhole", &v6, XDP_PASS, "pinhole");
}

#[test]
#[ignore = "needs root and BPF"]
fn replies_to_media_the_host_sent_pass_and_a_full_table_falls_back_where_asked() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    // The host sends RTP first from a pinhole-mode port: the reply passes as return traffic.
    h.dp.test_run_egress(&Packet::udp4(HOST, 12100, OTHER, 7000).bytes()).unwrap();
    h.expect("reply to the host's media", &rtp(OTHER, 7000, 12100), XDP_PASS, "return_traffic");
    h.expect("from another port of that peer", &rtp(OTHER, 7002, 12100), XDP_DROP, "pinhole_closed");

    h.expect("fallback rule, table not full", &rtp(PHONE, 4000, 30000), XDP_DROP, "pinhole_closed");
    h.dp.set_pinholes_full(true).unwrap();
    h.expect("fallback rule, table full", &rtp(PHONE, 4000, 30000), XDP_PASS, "port_open");
    h.expect("drop rule, table full", &rtp(PHONE, 4000, 12000), XDP_DROP, "pinhole_closed");
    // A reload keeps the state the controller wrote.
    h.reload(POLICY);
    h.expect("fallback after a reload", &rtp(PHONE, 4000, 30000), XDP_PASS, "port_open");
    h.dp.set_pinholes_full(false).unwrap();
    h.expect("table no longer full", &rtp(PHONE, 4000, 30000), XDP_DROP, "pinhole_closed");
}

/// A SIP message over UDP with an SDP body (when `sdp` is not empty).
fn sip_message(first: &str, call: &str, cseq: &str, sdp: &str) -> Vec<u8> {
    let ct = if sdp.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
    format!(
        "{first}\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: {call}\r\nCSeq: {cseq}\r\n{ct}Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// (what, the phone's SDP, the host's answer, media that must pass afterwards as (source,
/// source port, local port)).
type Call = (&'static str, String, String, Vec<([u8; 4], u16, u16)>);

fn drain(rb: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<SignalRecord> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert_eq!(item.len(), size_of::<SignalRecord>());
        // SAFETY: the kernel wrote exactly one SignalRecord into this record.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const SignalRecord) });
    }
    out
}

#[test]
#[ignore = "needs root and BPF"]
fn signaling_is_copied_out_and_the_learner_opens_the_calls_media() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let (policy, compiled) = policy::parse("harness.toml", POLICY).unwrap();
    let mut rb = h.dp.take_signaling().expect("signaling ring buffer");
    let mut learner = Pinholes::new();
    let feed = |h: &mut Harness, learner: &mut Pinholes, rb: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let recs = drain(rb);
        for r in &recs {
            learner.on_signal(r, &mut h.dp, &policy, &compiled);
        }
        recs.len()
    };

    // Not copied: REGISTER and OPTIONS, and anything to a port that is not SIP.
    let register = sip_message("REGISTER sip:x SIP/2.0", "r1", "1 REGISTER", "");
    h.expect("REGISTER", &Packet::udp4(PHONE, 5060, HOST, 5060).payload(&register).bytes(), XDP_PASS, "port_open");
    assert_eq!(feed(&mut h, &mut learner, &mut rb), 0, "REGISTER is not copied");

    // Every SDP form, one call each.
    let calls: [Call; 4] = [
        (
            "session-level c=, RTCP on port + 1",
            "v=0\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n".into(),
            "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 12000 RTP/AVP 0\r\n".into(),
            vec![(PHONE, 4000, 12000), (PHONE, 4001, 12001)],
        ),
        (
            "media-level c= overrides; a=rtcp with its own address",
            "v=0\r\nc=IN IP4 192.0.2.99\r\nt=0 0\r\nm=audio 4100 RTP/AVP 0\r\nc=IN IP4 192.0.2.21\r\na=rtcp:4111 IN IP4 192.0.2.22\r\n".into(),
            "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 12100 RTP/AVP 0\r\na=rtcp:12150\r\n".into(),
            vec![([192, 0, 2, 21], 4100, 12100), ([192, 0, 2, 22], 4111, 12150)],
        ),
        (
            "two m= lines, the second rejected by the phone",
            "v=0\r\nc=IN IP4 192.0.2.23\r\nt=0 0\r\nm=audio 4200 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n".into(),
            "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 12200 RTP/AVP 0\r\nm=video 12202 RTP/AVP 96\r\n".into(),
            vec![([192, 0, 2, 23], 4200, 12200)],
        ),
        (
            "private address behind NAT: the signaling source is admitted",
            "v=0\r\nc=IN IP4 172.16.5.5\r\nt=0 0\r\nm=audio 4300 RTP/AVP 0\r\n".into(),
            "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 12300 RTP/AVP 0\r\n".into(),
            vec![(PHONE, 31000, 12300)],
        ),
    ];
    for (i, (what, offer, answer, media)) in calls.iter().enumerate() {
        let id = format!("call{i}");
        for (src, sport, dport) in media {
            h.expect(what, &rtp(*src, *sport, *dport), XDP_DROP, "pinhole_closed");
        }
        let invite = sip_message("INVITE sip:100@10.0.0.1 SIP/2.0", &id, "1 INVITE", offer);
        h.expect(what, &Packet::udp4(PHONE, 5060, HOST, 5060).payload(&invite).bytes(), XDP_PASS, "port_open");
        let ok = sip_message("SIP/2.0 200 OK", &id, "1 INVITE", answer);
        h.dp.test_run_egress(&Packet::udp4(HOST, 5060, PHONE, 5060).payload(&ok).bytes()).unwrap();
        if i == 0 {
            // Before the controller reads anything, the egress program opened the answer's
            // port to where the answer went (the peer may send media as soon as it reads it).
            h.expect("provisional pinhole, before the learner", &rtp(PHONE, 4000, 12000), XDP_PASS, "pinhole");
            h.expect("provisional RTCP pinhole", &rtp(PHONE, 4001, 12001), XDP_PASS, "pinhole");
            h.expect(
                "provisional: only to where the answer went",
                &rtp(OTHER, 4000, 12000),
                XDP_DROP,
                "pinhole_closed",
            );
        }
        assert_eq!(feed(&mut h, &mut learner, &mut rb), 2, "{what}: INVITE in, 200 out");
        for (src, sport, dport) in media {
            h.expect(what, &rtp(*src, *sport, *dport), XDP_PASS, "pinhole");
        }
        h.expect(what, &rtp(OTHER, 4000, media[0].2), XDP_DROP, "pinhole_closed");
    }
    // The rejected video stream opened nothing.
    h.expect("rejected stream", &rtp([192, 0, 2, 23], 4202, 12202), XDP_DROP, "pinhole_closed");

    // A re-INVITE from the host moves call0's media port.
    let moved = "v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 12400 RTP/AVP 0\r\n";
    let reinvite = sip_message("INVITE sip:a@192.0.2.20 SIP/2.0", "call0", "2 INVITE", moved);
    h.dp.test_run_egress(&Packet::udp4(HOST, 5060, PHONE, 5060).payload(&reinvite).bytes()).unwrap();
    assert_eq!(feed(&mut h, &mut learner, &mut rb), 1);
    h.expect("new port after the re-INVITE", &rtp(PHONE, 4000, 12400), XDP_PASS, "pinhole");
    let old = h.dp.pinhole_get(&key_of(std::net::IpAddr::from(PHONE), 12000)).unwrap().unwrap();
    assert!(old.until_ns != 0, "the old port closes after the grace");

    // BYE closes; after the grace the sweep removes the pinholes and the port drops.
    let bye = sip_message("BYE sip:100@10.0.0.1 SIP/2.0", "call1", "2 BYE", "");
    h.expect("BYE", &Packet::udp4(PHONE, 5060, HOST, 5060).payload(&bye).bytes(), XDP_PASS, "port_open");
    assert_eq!(feed(&mut h, &mut learner, &mut rb), 1);
    h.expect("within the grace", &rtp([192, 0, 2, 21], 4100, 12100), XDP_PASS, "pinhole");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    learner.sweep(&mut h.dp);
    h.expect("after the grace", &rtp([192, 0, 2, 21], 4100, 12100), XDP_DROP, "pinhole_closed");
    assert!(h.dp.pinhole_get(&key_of("192.0.2.21".parse().unwrap(), 12100)).unwrap().is_none());
    assert_eq!(learner.closed.values().sum::<u64>(), 2 + 4, "2 moved, 4 by BYE");

    // IPv6 signaling and media.
    let offer6 = "v=0\r\nc=IN IP6 2001:db8:77::5\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
    let answer6 = "v=0\r\nc=IN IP6 2001:db8:feed::1\r\nt=0 0\r\nm=audio 12500 RTP/AVP 0\r\n";
    let inv6 = sip_message("INVITE sip:100@[2001:db8:feed::1] SIP/2.0", "v6", "1 INVITE", offer6);
    h.expect(
        "IPv6 INVITE",
        &Packet::udp6("2001:db8:77::5", 5060, HOST6, 5060).payload(&inv6).bytes(),
        XDP_PASS,
        "port_open",
    );
    let ok6 = sip_message("SIP/2.0 200 OK", "v6", "1 INVITE", answer6);
    h.dp.test_run_egress(&Packet::udp6(HOST6, 5060, "2001:db8:77::5", 5060).payload(&ok6).bytes()).unwrap();
    assert_eq!(feed(&mut h, &mut learner, &mut rb), 2);
    let media6 = Packet::udp6("2001:db8:77::5", 5004, HOST6, 12500).payload(&[0x80; 12]).bytes();
    h.expect("IPv6 media of the call", &media6, XDP_PASS, "pinhole");
    assert!(learner.opened >= 14, "opened {}", learner.opened);
}

/// The other messages that carry SDP: a 183 with the host's early-media answer, a late offer
/// (the host offers in its 200, the phone answers in the ACK), and UPDATE and PRACK bodies that
/// move the phone's media address. Each is copied out by the programs, read by the learner, and
/// the media it names passes (and what it no longer names closes).
#[test]
#[ignore = "needs root and BPF"]
fn early_media_late_offers_update_and_prack_bodies() {
    if !bpf_available() {
        return;
    }
    let mut h = Harness::new(POLICY);
    let (policy, compiled) = policy::parse("harness.toml", POLICY).unwrap();
    let mut rb = h.dp.take_signaling().expect("signaling ring buffer");
    let mut learner = Pinholes::new();
    let sdp = |addr: &str, port: u16| format!("v=0\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n");
    let inbound = |h: &mut Harness, msg: Vec<u8>| {
        h.expect("signaling in", &Packet::udp4(PHONE, 5060, HOST, 5060).payload(&msg).bytes(), XDP_PASS, "port_open");
    };
    let outbound = |h: &mut Harness, msg: Vec<u8>| {
        h.dp.test_run_egress(&Packet::udp4(HOST, 5060, PHONE, 5060).payload(&msg).bytes()).unwrap();
    };
    let mut feed = |h: &mut Harness| {
        for r in drain(&mut rb) {
            learner.on_signal(&r, &mut h.dp, &policy, &compiled);
        }
    };

    // Early media: the host answers the offer in a 183; the phone's media passes before any 200.
    inbound(&mut h, sip_message("INVITE sip:100@10.0.0.1 SIP/2.0", "early", "1 INVITE", &sdp("192.0.2.30", 4000)));
    outbound(&mut h, sip_message("SIP/2.0 183 Session Progress", "early", "1 INVITE", &sdp("10.0.0.1", 12600)));
    feed(&mut h);
    h.expect("early media from the SDP address", &rtp([192, 0, 2, 30], 4000, 12600), XDP_PASS, "pinhole");

    // A late offer: no SDP in the INVITE, the host offers in its 200, the phone answers in ACK.
    inbound(&mut h, sip_message("INVITE sip:100@10.0.0.1 SIP/2.0", "late", "1 INVITE", ""));
    outbound(&mut h, sip_message("SIP/2.0 200 OK", "late", "1 INVITE", &sdp("10.0.0.1", 12700)));
    feed(&mut h);
    h.expect("before the ACK's answer", &rtp([192, 0, 2, 31], 4100, 12700), XDP_DROP, "pinhole_closed");
    inbound(&mut h, sip_message("ACK sip:100@10.0.0.1 SIP/2.0", "late", "1 ACK", &sdp("192.0.2.31", 4100)));
    feed(&mut h);
    h.expect("the answer in the ACK", &rtp([192, 0, 2, 31], 4100, 12700), XDP_PASS, "pinhole");

    // UPDATE and PRACK bodies move the phone's media address: the old one closes (after the
    // grace), the new one opens.
    inbound(&mut h, sip_message("UPDATE sip:100@10.0.0.1 SIP/2.0", "late", "2 UPDATE", &sdp("192.0.2.32", 4200)));
    feed(&mut h);
    h.expect("UPDATE's new address", &rtp([192, 0, 2, 32], 4200, 12700), XDP_PASS, "pinhole");
    let old = h.dp.pinhole_get(&key_of("192.0.2.31".parse().unwrap(), 12700)).unwrap().unwrap();
    assert!(old.until_ns != 0, "the address the UPDATE replaced closes after the grace");
    inbound(&mut h, sip_message("PRACK sip:100@10.0.0.1 SIP/2.0", "early", "2 PRACK", &sdp("192.0.2.33", 4300)));
    feed(&mut h);
    h.expect("PRACK's new address", &rtp([192, 0, 2, 33], 4300, 12600), XDP_PASS, "pinhole");
    assert_eq!(
        learner.closed.get(&voipwall::pinholes::calls::Cause::Moved).copied(),
        Some(4),
        "RTP and RTCP of two moves"
    );
}
