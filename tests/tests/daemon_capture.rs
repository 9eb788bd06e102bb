//! Drop samples (`[capture]`): drops of four reasons land in the pcapng file with their reason,
//! as Wireshark's `tshark` decodes it; a dropped SIP REGISTER arrives as HEP3 at a collector in
//! the client namespace with the reason; the per-second cap holds under a flood.

use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use tests::{
    bpf_available,
    daemon::{Daemon, Env},
    netns::{NetNs, Pair},
};

fn bind(ns: &NetNs, addr: String) -> UdpSocket {
    let s = ns.enter(|| UdpSocket::bind(&addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(2000))).unwrap();
    s
}

fn send(pair: &Pair, src: u8, port: u16, payload: &[u8], n: usize) {
    let tx = bind(&pair.client, format!("{}:0", pair.client_v4(src)));
    for _ in 0..n {
        tx.send_to(payload, format!("{}:{port}", pair.server_v4())).unwrap();
    }
}

/// (type, value) of every HEP3 chunk.
fn hep_chunks(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
    assert_eq!(&m[..4], b"HEP3", "a HEP3 message");
    assert_eq!(u16::from_be_bytes([m[4], m[5]]) as usize, m.len(), "HEP3 length");
    let mut out = Vec::new();
    let mut o = 6;
    while o + 6 <= m.len() {
        let kind = u16::from_be_bytes([m[o + 2], m[o + 3]]);
        let len = u16::from_be_bytes([m[o + 4], m[o + 5]]) as usize;
        assert!(len >= 6 && o + len <= m.len(), "chunk at {o}");
        out.push((kind, m[o + 6..o + len].to_vec()));
        o += len;
    }
    out
}

#[test]
#[ignore = "needs root and BPF"]
fn drop_samples_reach_pcapng_and_hep_with_their_reason_under_a_cap() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let dir = env.root.join("captures");
    let collector = bind(&pair.client, format!("{}:9060", pair.client_v4(9)));
    let policy = env.write(
        "p.toml",
        &format!(
            "roles = [\"voip-edge\"]\nblock = [\"{}/32\"]\n[capture]\npps = 5\npcap = \"{}\"\nhep = \"{}:9060\"\nhep_id = 77\n",
            pair.client_v4(3),
            dir.display(),
            pair.client_v4(9)
        ),
    );
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);

    // Four reasons: block_list, port_closed, sip_user_agent (which bans), then banned.
    send(&pair, 3, 5060, b"blocked", 1);
    send(&pair, 2, 9999, b"closed", 1);
    let register = format!(
        "REGISTER sip:{0} SIP/2.0\r\nVia: SIP/2.0/UDP {1}:5070;branch=z9hG4bK1\r\nFrom: <sip:100@{0}>;tag=1\r\nTo: <sip:100@{0}>\r\nCall-ID: cap-1\r\nCSeq: 1 REGISTER\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
        pair.server_v4(),
        pair.client_v4(4)
    );
    send(&pair, 4, 5060, register.as_bytes(), 1);
    std::thread::sleep(Duration::from_millis(100));
    send(&pair, 4, 5060, b"after the ban", 1);

    // The REGISTER as HEP3, with the reason.
    let mut buf = [0u8; 4096];
    let n = collector.recv(&mut buf).expect("a HEP3 message at the collector");
    let chunks = hep_chunks(&buf[..n]);
    let get = |k: u16| chunks.iter().find(|c| c.0 == k).map(|c| c.1.clone()).unwrap_or_default();
    assert_eq!(get(0x11), b"voipwall-drop:sip_user_agent", "reason as the correlation id");
    assert!(get(0x0f).starts_with(b"REGISTER sip:"), "the SIP message is the payload");
    assert_eq!(get(0x03), pair.client_v4(4).parse::<std::net::Ipv4Addr>().unwrap().octets());
    assert_eq!(get(0x08), 5060u16.to_be_bytes());
    assert_eq!(get(0x0c), 77u32.to_be_bytes());

    // A flood of one reason: no more than the cap.
    let started = Instant::now();
    send(&pair, 5, 9998, b"flood", 3000);
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.stop().success());

    let file = dir.join(format!("{}.pcapng", pair.server_if));
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-T", "fields", "-e", "frame.comment", "-e", "ip.src", "-e", "udp.dstport"])
        .output()
        .expect("tshark (Debian's tshark)");
    assert!(out.status.success(), "tshark -r {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let has = |reason: &str, src: u8, port: &str| {
        rows.iter().any(|r| {
            r.len() >= 3 && r[0] == format!("voipwall drop: {reason}") && r[1] == pair.client_v4(src) && r[2] == port
        })
    };
    assert!(has("block_list", 3, "5060"), "{text}");
    assert!(has("port_closed", 2, "9999"), "{text}");
    assert!(has("sip_user_agent", 4, "5060"), "{text}");
    assert!(has("banned", 4, "5060"), "{text}");
    let flood = rows.iter().filter(|r| r.len() >= 3 && r[2] == "9998").count();
    // 5 per second with a burst of 5, over the flood's duration (rounded up) and the second
    // the closed-port sample above already drew from.
    let cap = 5 + 5 * (secs.ceil() as usize + 1);
    eprintln!("figure: capture: 3000 closed-port packets in {secs:.2} s, {flood} sampled (cap {cap})");
    assert!(flood >= 1 && flood <= cap, "{flood} samples of the flood, cap {cap}");
}
