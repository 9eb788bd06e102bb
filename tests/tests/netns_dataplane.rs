//! The data plane on a real interface: a veth pair between a server and a client namespace, the
//! program attached in native mode on the server's end, real sockets on both sides.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::{reason, verdict};
use tests::{bpf_available, netns::Pair, test_capacity};
use voipwall::{
    dataplane::{AttachedMode, Attachment, Dataplane, LoadOptions, XdpModeChoice},
    policy,
};

struct Setup {
    pair: Pair,
    dp: Dataplane,
    attachment: Option<Attachment>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(a) = self.attachment.take() {
            self.dp.detach(a);
        }
    }
}

/// Client hosts: .2 normal, .3 blocked, .4 allowed, .5 flooder, .6 a second normal source.
fn setup() -> Setup {
    let pair = Pair::new();
    let policy_text = format!(
        r#"
roles = ["voip-edge"]
allow = ["{allowed}/32"]
block = ["{blocked}/32"]
[limit.signaling]
levels = [{{ pps = 50, burst = 100, ban = "1h" }}, {{ pps = 5000, ban = "1h" }}]
"#,
        allowed = pair.client_v4(4),
        blocked = pair.client_v4(3)
    );
    let (_, compiled) = policy::parse("netns.toml", &policy_text).unwrap();
    let mut dp = Dataplane::load(&LoadOptions { pin_dir: None, capacity: test_capacity() }).unwrap();
    dp.apply_policy(&compiled).unwrap();
    let mut tables = voipwall::sources::SourceTables::new(dp.take_source_maps().unwrap());
    tests::write_static_lists(&mut tables, &compiled);
    let iface = pair.server_if.clone();
    let attachment = pair.server.enter(|| dp.attach(&iface, XdpModeChoice::Native, None)).unwrap();
    assert_eq!(attachment.mode, AttachedMode::Native);
    let link = pair.server.sh(&format!("ip -d link show dev {iface}"));
    assert!(link.contains("xdp") && !link.contains("xdpgeneric"), "native XDP expected on {iface}:\n{link}");
    // Neighbour discovery before the measurements (ARP passes as non_ip).
    pair.client.sh(&format!("ping -c1 -W2 {} >/dev/null", pair.server_v4()));
    Setup { pair, dp, attachment: Some(attachment) }
}

fn bind_udp(ns: &tests::netns::NetNs, addr: String) -> UdpSocket {
    let s = ns.enter(|| UdpSocket::bind(&addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// Datagrams `rx` receives within its timeout.
fn drain(rx: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = rx.recv_from(&mut buf) {
        out.push((buf[..n].to_vec(), from));
    }
    out
}

fn count(dp: &Dataplane, v: u32, r: &str) -> u64 {
    dp.counters().unwrap().get(v, reason::from_name(r).unwrap()).packets
}

#[test]
#[ignore = "needs root and BPF"]
fn open_port_reachable_closed_port_dropped_and_counted() {
    if !bpf_available() {
        return;
    }
    let s = setup();
    let p = &s.pair;
    let sip = bind_udp(&p.server, format!("{}:5060", p.server_v4()));
    let closed = bind_udp(&p.server, format!("{}:9999", p.server_v4()));
    let client = bind_udp(&p.client, format!("{}:0", p.client_v4(2)));
    let before_open = count(&s.dp, verdict::PASS, "port_open");
    let before_closed = count(&s.dp, verdict::DROP, "port_closed");
    for i in 0..5u8 {
        client.send_to(&[b'O', i], format!("{}:5060", p.server_v4())).unwrap();
        client.send_to(&[b'C', i], format!("{}:9999", p.server_v4())).unwrap();
    }
    assert_eq!(drain(&sip).len(), 5, "all 5 datagrams reach the open port");
    assert!(drain(&closed).is_empty(), "nothing reaches the closed port");
    assert_eq!(count(&s.dp, verdict::DROP, "port_closed") - before_closed, 5, "port_closed counted per packet");
    assert_eq!(count(&s.dp, verdict::PASS, "port_open") - before_open, 5);

    // TCP: 5061 is open, 80 is closed.
    let listener = p.server.enter(|| TcpListener::bind(format!("{}:5061", p.server_v4()))).unwrap();
    let _closed_listener = p.server.enter(|| TcpListener::bind(format!("{}:80", p.server_v4()))).unwrap();
    let ok = p.client.enter(|| {
        TcpStream::connect_timeout(&format!("{}:5061", p.server_v4()).parse().unwrap(), Duration::from_secs(2))
    });
    assert!(ok.is_ok(), "TCP 5061 reachable: {ok:?}");
    drop(listener);
    let refused = p.client.enter(|| {
        TcpStream::connect_timeout(&format!("{}:80", p.server_v4()).parse().unwrap(), Duration::from_millis(500))
    });
    assert!(refused.is_err(), "TCP 80 must time out, the SYN is dropped");

    // IPv6 too.
    let sip6 = bind_udp(&p.server, format!("[{}]:5060", p.server_v6()));
    let client6 = bind_udp(&p.client, format!("[{}]:0", p.client_v6(2)));
    client6.send_to(b"v6", format!("[{}]:5060", p.server_v6())).unwrap();
    assert_eq!(drain(&sip6).len(), 1);
}

#[test]
#[ignore = "needs root and BPF"]
fn blocked_source_dropped_allowed_source_bypasses() {
    if !bpf_available() {
        return;
    }
    let s = setup();
    let p = &s.pair;
    let sip = bind_udp(&p.server, format!("{}:5060", p.server_v4()));
    let closed = bind_udp(&p.server, format!("{}:9999", p.server_v4()));
    let blocked = bind_udp(&p.client, format!("{}:0", p.client_v4(3)));
    let allowed = bind_udp(&p.client, format!("{}:0", p.client_v4(4)));
    let before = count(&s.dp, verdict::DROP, "block_list");
    blocked.send_to(b"from a blocked source", format!("{}:5060", p.server_v4())).unwrap();
    assert!(drain(&sip).is_empty(), "blocked source must not reach even an open port");
    assert_eq!(count(&s.dp, verdict::DROP, "block_list") - before, 1);
    allowed.send_to(b"from an allowed source", format!("{}:9999", p.server_v4())).unwrap();
    let got = drain(&closed);
    assert_eq!(got.len(), 1, "allowed source reaches a closed port");
    assert_eq!(got[0].1.ip().to_string(), p.client_v4(4));
}

#[test]
#[ignore = "needs root and BPF"]
fn flood_above_level_one_is_banned_while_another_source_is_served() {
    if !bpf_available() {
        return;
    }
    let s = setup();
    let p = &s.pair;
    let sip = bind_udp(&p.server, format!("{}:5060", p.server_v4()));
    sip.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let flooder = bind_udp(&p.client, format!("{}:0", p.client_v4(5)));
    let good = bind_udp(&p.client, format!("{}:0", p.client_v4(6)));
    let target = format!("{}:5060", p.server_v4());
    // 1000 packets as fast as possible: far above 50 pps with a burst of 100.
    let start = Instant::now();
    for i in 0..1000u32 {
        flooder.send_to(&i.to_be_bytes(), &target).unwrap();
    }
    let flood_time = start.elapsed();
    let mut from_flooder = 0;
    let mut buf = [0u8; 64];
    while let Ok((_, from)) = sip.recv_from(&mut buf) {
        if from.ip().to_string() == p.client_v4(5) {
            from_flooder += 1;
        }
    }
    assert!(
        from_flooder <= 110,
        "at most the burst (100) plus refill gets through, got {from_flooder} in {flood_time:?}"
    );
    let bans = s.dp.bans().unwrap();
    assert_eq!(bans.len(), 1, "one ban: {bans:?}");
    assert_eq!(bans[0].1.level, 1);
    // The second source is still served, the flooder stays out.
    for i in 0..10u8 {
        good.send_to(&[i], &target).unwrap();
        flooder.send_to(&[i], &target).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = drain(&sip);
    assert_eq!(got.iter().filter(|(_, f)| f.ip().to_string() == p.client_v4(6)).count(), 10, "second source served");
    assert_eq!(got.iter().filter(|(_, f)| f.ip().to_string() == p.client_v4(5)).count(), 0, "banned source dropped");
    assert!(count(&s.dp, verdict::DROP, "banned") >= 10);
}

#[test]
#[ignore = "needs root and BPF"]
fn reply_to_an_ephemeral_port_passes_only_after_the_host_asked() {
    if !bpf_available() {
        return;
    }
    let s = setup();
    let p = &s.pair;
    // The server's "resolver client" socket on a closed port (33333/udp is closed in voip-edge).
    let asker = bind_udp(&p.server, format!("{}:33333", p.server_v4()));
    let resolver = bind_udp(&p.client, format!("{}:53", p.client_v4(2)));
    let before = count(&s.dp, verdict::DROP, "port_closed");
    resolver.send_to(b"unsolicited answer", format!("{}:33333", p.server_v4())).unwrap();
    assert!(drain(&asker).is_empty(), "an unsolicited answer is dropped");
    assert_eq!(count(&s.dp, verdict::DROP, "port_closed") - before, 1);

    asker.send_to(b"query", format!("{}:53", p.client_v4(2))).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = resolver.recv_from(&mut buf).expect("the query reaches the resolver");
    assert_eq!(&buf[..n], b"query");
    resolver.send_to(b"answer", from).unwrap();
    let got = drain(&asker);
    assert_eq!(got.len(), 1, "the answer to the host's own query passes");
    assert_eq!(got[0].0, b"answer");
    assert!(count(&s.dp, verdict::PASS, "return_traffic") >= 1);
    // Another client port is still unsolicited.
    let other = bind_udp(&p.client, format!("{}:54", p.client_v4(2)));
    other.send_to(b"spoofed answer", format!("{}:33333", p.server_v4())).unwrap();
    assert!(drain(&asker).is_empty(), "a different remote port is not the flow");
}

#[test]
#[ignore = "needs root and BPF"]
fn fragmented_sip_datagram_is_delivered_whole() {
    if !bpf_available() {
        return;
    }
    let s = setup();
    let p = &s.pair;
    let sip = bind_udp(&p.server, format!("{}:5060", p.server_v4()));
    let client = bind_udp(&p.client, format!("{}:0", p.client_v4(2)));
    let mut invite = b"INVITE sip:100@voipwall SIP/2.0\r\n".to_vec();
    invite.resize(4000, b'a');
    client.send_to(&invite, format!("{}:5060", p.server_v4())).unwrap();
    let got = drain(&sip);
    assert_eq!(got.len(), 1, "the 4000-byte INVITE (3 fragments at MTU 1500) arrives");
    assert_eq!(got[0].0, invite, "delivered whole");
    assert!(!s.dp.frags().unwrap().is_empty(), "it really was fragmented");

    let sip6 = bind_udp(&p.server, format!("[{}]:5060", p.server_v6()));
    let client6 = bind_udp(&p.client, format!("[{}]:0", p.client_v6(2)));
    client6.send_to(&invite, format!("[{}]:5060", p.server_v6())).unwrap();
    let got = drain(&sip6);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, invite);

    // To a closed port, fragments are dropped.
    let closed = bind_udp(&p.server, format!("{}:9999", p.server_v4()));
    client.send_to(&invite, format!("{}:9999", p.server_v4())).unwrap();
    assert!(drain(&closed).is_empty());
}
