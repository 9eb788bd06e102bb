//! `voipwall explain` against the live maps of a daemon on a veth pair: every step of the
//! decision and every reason it can end with, in text and JSON, each checked against what the
//! data plane does to a real packet where a packet can show it.

use std::{net::UdpSocket, time::Duration};

use serde_json::Value;
use tests::{
    bpf_available,
    daemon::{Daemon, Env},
    netns::{NetNs, Pair},
};

fn bind(ns: &NetNs, addr: String) -> UdpSocket {
    let s = ns.enter(|| UdpSocket::bind(&addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

/// Send `n` datagrams from client host `src` to `port` on the server, back to back.
fn send(pair: &Pair, src: u8, port: u16, n: usize) {
    let tx = bind(&pair.client, format!("{}:0", pair.client_v4(src)));
    for _ in 0..n {
        tx.send_to(b"probe", format!("{}:{port}", pair.server_v4())).unwrap();
    }
}

/// One datagram from `src` reaches a socket on `port`.
fn reaches(pair: &Pair, src: u8, port: u16) -> bool {
    let rx = bind(&pair.server, format!("{}:{port}", pair.server_v4()));
    send(pair, src, port, 1);
    let mut buf = [0u8; 16];
    rx.recv(&mut buf).is_ok()
}

/// `explain SOURCE PROTO PORT --json`: the one port's verdict.
fn port(d: &Daemon, src: &str, proto: &str, port: u16) -> Value {
    let v = d.json(&["explain", src, proto, &port.to_string()]);
    assert_eq!(v["ports"].as_array().map(Vec::len), Some(1), "{v}");
    v["ports"][0].clone()
}

fn steps(p: &Value) -> Vec<(String, String)> {
    p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s["result"].as_str().unwrap().to_string()))
        .collect()
}

fn has_step(p: &Value, step: &str, result: &str) -> bool {
    steps(p).iter().any(|(s, r)| s == step && r == result)
}

fn detail<'a>(p: &'a Value, step: &str) -> &'a str {
    p["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).and_then(|s| s["detail"].as_str()).unwrap_or("")
}

#[test]
#[ignore = "needs root and BPF"]
fn explain_names_every_step_and_reason_from_the_live_maps() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write(
        "p.toml",
        &format!(
            r#"roles = ["voip-edge"]
[sets]
carriers = ["{}/32"]
[[rule]]
name = "admin-web"
proto = "tcp"
ports = ["8080"]
from = ["carriers"]
[[rule]]
name = "slow"
proto = "udp"
ports = ["7000"]
limit = "slow"
[[rule]]
name = "tiny"
proto = "udp"
ports = ["7001"]
limit = "tiny"
[limit.slow]
levels = [{{ pps = 1, burst = 2 }}]
unknown = "off"
[limit.tiny]
levels = [{{ pps = 1000 }}]
unknown = {{ pps = 1, burst = 1 }}
[limit.signaling]
levels = [{{ pps = 5, burst = 5, ban = "1h" }}]
unknown = "off"
"#,
            pair.client_v4(5)
        ),
    );
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    let c = |h: u8| pair.client_v4(h);

    // A source on no list, an open SIP port: every step, in the data plane's order.
    let p = port(&d, &c(2), "udp", 5060);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("pass"), Some("port_open")), "{p}");
    let names: Vec<String> = steps(&p).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["allow_list", "block_list", "ban", "port", "known_peer", "rate", "sip"], "{p}");
    assert!(detail(&p, "port").contains("\"voip-edge/sip\""), "{p}");
    assert!(detail(&p, "sip").contains("User-Agent pattern"), "{p}");
    assert!(reaches(&pair, 2, 5060));
    let text = d.ok(&["explain", &c(2), "udp", "5060"]);
    for want in [
        "source ",
        "5060/udp (rule \"voip-edge/sip\")",
        "1. allow_list: no match",
        "sip: applies",
        "verdict: pass (port_open)",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }

    // Allow and block lists, with who and why.
    d.ok(&["allow", &c(4), "--reason", "office"]);
    d.ok(&["block", &c(3), "--reason", "scanner", "--ttl", "1h"]);
    let p = port(&d, &c(4), "udp", 9999);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("pass"), Some("allow_list")), "{p}");
    assert!(detail(&p, "allow_list").contains("reason \"office\""), "{p}");
    assert!(reaches(&pair, 4, 9999), "the allow list passes even a closed port");
    let p = port(&d, &c(3), "udp", 5060);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("drop"), Some("block_list")), "{p}");
    assert!(
        detail(&p, "block_list").contains("reason \"scanner\"") && detail(&p, "block_list").contains("expires"),
        "{p}"
    );
    assert!(!reaches(&pair, 3, 5060));
    let v = d.json(&["explain", &c(3), "udp", "5060"]);
    assert_eq!(v["list"], "block");
    assert_eq!(v["entries"][0]["list"], "block");
    assert_eq!(v["entries"][0]["cidr"], format!("{}/32", c(3)));

    // A ban the program issued: class, level, until.
    send(&pair, 6, 5060, 40);
    std::thread::sleep(Duration::from_millis(300));
    let p = port(&d, &c(6), "udp", 5060);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("drop"), Some("banned")), "{p}");
    assert!(detail(&p, "ban").contains("class signaling level 1"), "{p}");
    assert!(!reaches(&pair, 6, 5060));
    assert_eq!(d.json(&["explain", &c(6)])["ban"]["class"], "signaling");

    // Port policy: closed, open only to a set, open to a set member (a known peer by its set).
    let p = port(&d, &c(2), "udp", 9999);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("drop"), Some("port_closed")), "{p}");
    assert!(!reaches(&pair, 2, 9999));
    let p = port(&d, &c(2), "tcp", 8080);
    assert_eq!(p["reason"], "source_not_allowed", "{p}");
    assert!(has_step(&p, "source_sets", "drop"), "{p}");
    let p = port(&d, &c(5), "tcp", 8080);
    assert_eq!(p["reason"], "port_open", "{p}");
    assert!(has_step(&p, "source_sets", "match"), "{p}");
    assert_eq!(d.json(&["explain", &c(5)])["sets"][0], "carriers");

    // Rate state: a police-only level the source is over right now.
    send(&pair, 7, 7000, 12);
    std::thread::sleep(Duration::from_millis(100));
    let p = port(&d, &c(7), "udp", 7000);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("drop"), Some("rate_limited")), "{p}");
    assert!(detail(&p, "rate").contains("over it now"), "{p}");
    assert!(!reaches(&pair, 7, 7000), "the data plane agrees: still over the level");
    let p = port(&d, &c(2), "udp", 7000);
    assert_eq!(p["reason"], "port_open", "another source has its own bucket: {p}");

    // The unknown sources' shared budget, spent by one of them, refuses another.
    send(&pair, 8, 7001, 20);
    std::thread::sleep(Duration::from_millis(100));
    let p = port(&d, &c(9), "udp", 7001);
    assert_eq!((p["verdict"].as_str(), p["reason"].as_str()), (Some("drop"), Some("unknown_over_budget")), "{p}");
    assert!(has_step(&p, "known_peer", "drop"), "{p}");
    assert!(!reaches(&pair, 9, 7001));
    let p = port(&d, &c(5), "udp", 7001);
    assert_eq!(p["reason"], "port_open", "a set member does not draw from it: {p}");
    assert!(has_step(&p, "known_peer", "match"), "{p}");

    // A known peer that proved itself: its proof is named.
    assert!(reaches(&pair, 5, 7001));
    let v = d.json(&["explain", &c(5), "udp", "7001"]);
    assert_eq!(v["known"]["proof"], "set", "{v}");
    assert!(detail(&v["ports"][0], "known_peer").contains("proved its address (set)"), "{v}");

    // Without a port: every open range, none that is closed.
    let v = d.json(&["explain", &c(2)]);
    let ports: Vec<(String, String)> = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["proto"].as_str().unwrap().to_string(), p["ports"].as_str().unwrap().to_string()))
        .collect();
    for want in [("udp", "5060"), ("udp", "7000"), ("udp", "10000-20000"), ("tcp", "22"), ("tcp", "8080")] {
        assert!(ports.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {ports:?}");
    }
    assert!(!ports.iter().any(|(p, r)| p == "udp" && r == "9999"), "{ports:?}");
    let text = d.ok(&["explain", &c(3)]);
    assert_eq!(text.matches("verdict: drop (block_list)").count(), ports.len(), "{text}");

    // Bad input changes nothing and says what is wrong (exit 2).
    for bad in [vec!["explain", "not-an-address"], vec!["explain", &c(2), "icmp", "1"], vec!["explain", &c(2), "udp"]] {
        let out = d.cli(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
