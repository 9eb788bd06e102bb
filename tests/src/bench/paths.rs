//! Per-path cost: BPF_PROG_TEST_RUN of the real program on one packet per path, alternating with
//! the empty XDP_PASS program in the same process, on a pinned CPU; medians and spread of
//! rounds, and the ratio to the empty program measured in the same round.

use std::time::Duration;

use common::{BanEntry, addr::v4_mapped};
use serde::Serialize;
use voipwall::dataplane::monotonic_ns;

use crate::{
    Harness,
    bench::{Baseline, Settings, Stat, median_spread},
    packet::{Ext, Packet, TCP_SYN},
};

pub const HOST: [u8; 4] = [10, 0, 0, 1];
pub const HOST6: &str = "2001:db8:feed::1";

/// A policy whose limits never trigger on the measured packets (huge bursts), plus a
/// police-only class that is always exceeded, so every path is measured steady-state.
pub const POLICY: &str = r#"
roles = ["voip-edge"]
allow = ["198.51.100.10/32"]
block = ["203.0.113.0/24"]

[[rule]]
name = "policed"
proto = "udp"
ports = ["6000"]
limit = "always-over"

[limit.signaling]
levels = [{ pps = 1000000, burst = 100000000, ban = "1h" }]

[limit.media]
levels = [{ pps = 1000000, burst = 100000000 }]

[limit.always-over]
levels = [{ pps = 1, burst = 1 }]
"#;

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
    let sip = |src: [u8; 4]| Packet::udp4(src, 5060, HOST, 5060).payload(&[b'x'; 400]).bytes();
    let frags = Packet::udp4([192, 0, 2, 50], 5060, HOST, 5060).payload(&[b'x'; 3000]).fragments(1480, 7);
    vec![
        Case { name: "allowed SIP, unknown source (warm)", reason: "port_open", frame: sip([192, 0, 2, 10]) },
        Case { name: "allowed RTP", reason: "port_open", frame: Packet::udp4([192, 0, 2, 11], 40000, HOST, 12000).payload(&[0; 172]).bytes() },
        Case { name: "closed port", reason: "port_closed", frame: Packet::udp4([192, 0, 2, 12], 1234, HOST, 9999).payload(&[0; 64]).bytes() },
        Case { name: "block-list hit", reason: "block_list", frame: sip([203, 0, 113, 5]) },
        Case { name: "allow-list hit", reason: "allow_list", frame: sip([198, 51, 100, 10]) },
        Case { name: "rate-limited drop", reason: "rate_limited", frame: Packet::udp4([192, 0, 2, 14], 1, HOST, 6000).payload(&[0; 64]).bytes() },
        Case { name: "IPv6 allowed SIP", reason: "port_open", frame: Packet::udp6("2001:db8:1::10", 5060, HOST6, 5060).payload(&[b'x'; 400]).bytes() },
        Case { name: "IPv6 closed port", reason: "port_closed", frame: Packet::udp6("2001:db8:1::12", 1234, HOST6, 9999).payload(&[0; 64]).bytes() },
        Case { name: "IPv6 ext headers, allowed SIP", reason: "port_open", frame: Packet::udp6("2001:db8:1::13", 5060, HOST6, 5060).ext(Ext::HopByHop(0)).ext(Ext::DestOpts(0)).payload(&[b'x'; 400]).bytes() },
        Case { name: "TCP SYN to closed port", reason: "port_closed", frame: Packet::tcp4([192, 0, 2, 15], 40000, HOST, 80, TCP_SYN).bytes() },
        Case { name: "first fragment", reason: "port_open", frame: frags[0].clone() },
        Case { name: "non-first fragment", reason: "port_open", frame: frags[1].clone() },
        // From here on the ban table holds a ban, so every packet also looks it up.
        Case { name: "ban hit", reason: "banned", frame: sip([192, 0, 2, 13]) },
        Case { name: "allowed SIP, bans present", reason: "port_open", frame: sip([192, 0, 2, 10]) },
        Case { name: "closed port, bans present", reason: "port_closed", frame: Packet::udp4([192, 0, 2, 12], 1234, HOST, 9999).payload(&[0; 64]).bytes() },
    ]
}

/// Prepare state some paths need (a remembered first fragment).
pub fn prepare(h: &mut Harness, cases: &[Case]) {
    for c in cases {
        // The first fragment must be remembered before the non-first one is measured.
        if c.name == "first fragment" {
            h.run(&c.frame);
        }
    }
}

/// The per-path table, and whether the early drops (closed port, block list) left the rate
/// table untouched.
pub fn run(settings: &Settings, baseline: &Baseline) -> (Vec<PathRow>, bool) {
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
            h.dp.ban_insert(&v4_mapped([192, 0, 2, 13]), &BanEntry { expires_ns: far, rate_pps: 0, class: 0, level: 1, flags: 0, _pad: 0 })
                .expect("ban insert");
        }
        if case.reason == "rate_limited" {
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
        rows.push(PathRow { path: case.name.to_string(), reason: case.reason.to_string(), ratio: ns.median / empty_ns.median, ns, empty_ns });
    }
    (rows, early_untouched)
}

fn ns(h: &Harness, frame: &[u8], repeat: u32) -> f64 {
    let (_, d): (u32, Duration) = h.dp.test_run(frame, repeat).expect("test_run");
    d.as_nanos() as f64
}
