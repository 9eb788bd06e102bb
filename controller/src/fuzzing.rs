//! Entry points for the fuzz targets (`fuzz/`, run by `cargo xtask fuzz`) and for the replay of
//! their corpora in the test suite: every parser that takes input from outside the process, each
//! fed arbitrary bytes. Each must return (an error is fine) and never panic; where a parser's
//! result has a property that is cheap to state, it is checked too.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use ipnet::IpNet;

use crate::{
    bans::BanRecord,
    control::Request,
    fleet::{Fleet, Protected, lapi},
    peers::KnownRecord,
    policy::{self, fleet::Crowdsec},
    sources::{FleetEntry, ListOp, Lists, PersistedLists},
};

/// A target: arbitrary bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// The targets, by name: what `cargo xtask fuzz TARGET` and the corpus folders are called.
pub const TARGETS: &[(&str, Target)] = &[
    ("policy", policy_file),
    ("request", control_request),
    ("cidr_file", cidr_file),
    ("state", state_files),
    ("lapi", lapi_answer),
    ("sip", sip_message),
    ("sdp", call_signaling),
];

/// A policy file: parsed and compiled.
pub fn policy_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((_, compiled)) = policy::parse("fuzz.toml", text) {
        // Every CIDR it lists is one the CLI accepts too.
        for net in compiled.allow.iter().chain(&compiled.block) {
            assert!(policy::parse_cidr(&net.to_string()).is_ok(), "{net}");
        }
    }
}

/// A control-socket request line, and the arguments a request carries (CIDRs, durations).
pub fn control_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<Request>(data) else { return };
    match req {
        Request::Block(c) | Request::Unblock(c) | Request::Allow(c) | Request::Disallow(c) => {
            for cidr in &c.cidrs {
                let _ = policy::parse_cidr(cidr);
            }
            if let Some(t) = &c.ttl {
                let _ = policy::parse_duration(t);
            }
        }
        Request::Reload { confirm_within: Some(d), .. } => {
            let _ = policy::parse_duration(&d);
        }
        Request::Explain { source, .. } => {
            let _ = source.parse::<IpAddr>();
        }
        _ => {}
    }
}

/// A `--file` of CIDRs, as `voipwall block --file` reads it.
pub fn cidr_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(nets) = crate::firewall::cidr_lines(&text, "fuzz.txt") {
        assert!(nets.windows(2).all(|w| w[0] < w[1]), "sorted and without duplicates");
    }
}

/// The state files read at start-up (lists snapshot, journal records, bans, known peers, fleet
/// entries); readable lists and journal records are restored and replayed as the daemon does.
pub fn state_files(data: &[u8]) {
    if let Ok(persisted) = serde_json::from_slice::<PersistedLists>(data) {
        let lists = Lists::restore(persisted, 1_000);
        let _ = lists.kernel();
    }
    let mut persisted = PersistedLists::default();
    for line in data.split(|&c| c == b'\n') {
        if let Ok(op) = serde_json::from_slice::<ListOp>(line) {
            persisted.apply(op);
        }
    }
    let _ = Lists::restore(persisted, 1_000);
    let _ = serde_json::from_slice::<Vec<BanRecord>>(data);
    let _ = serde_json::from_slice::<Vec<KnownRecord>>(data);
    let _ = serde_json::from_slice::<Vec<(IpNet, FleetEntry)>>(data);
}

/// A CrowdSec LAPI decisions answer, parsed and planned against an empty fleet.
pub fn lapi_answer(data: &[u8]) {
    let Ok(stream) = lapi::parse_stream(data) else { return };
    let fleet = Fleet::new(Arc::new(Crowdsec {
        url: "http://127.0.0.1:8080".into(),
        api_key_file: None,
        machine_file: None,
        pull: true,
        push: false,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        resync: Duration::from_secs(300),
        origins: Vec::new(),
        scenarios: Vec::new(),
        ca_file: None,
        insecure_skip_verify: false,
        push_queue: 10,
    }));
    let protected = Protected { addrs: vec!["10.0.0.1".parse().expect("literal")], nets: Vec::new() };
    let (_, change) = fleet.plan(&stream, true, 1_000, &protected, &BTreeMap::new());
    for (net, entry) in &change.add {
        assert!(!net.contains(&protected.addrs[0]), "a protected address is never blocked: {net}");
        assert!(entry.expires > 1_000, "{net} expires in the past");
    }
}

/// A SIP message through the reference grammar the program is tested against.
pub fn sip_message(data: &[u8]) {
    use common::sip::grammar;
    for window in [data.len(), 64, 512] {
        let _ = grammar::read(data, window, true);
    }
    let _ = grammar::status_code(data);
    let _ = grammar::method_class(data);
}

/// A SIP message as the pinhole learner reads it (headers, SDP), then through the call state
/// in both directions: whatever it opens is a port in pinhole mode (RTP) or the RTCP port of
/// one, and whatever it closes was opened.
pub fn call_signaling(data: &[u8]) {
    use crate::pinholes::{
        calls::{Calls, Change, Direction, Local},
        message,
    };
    let Some(msg) = message::parse(data) else { return };
    let rtp = |p: u16| (10000..=20000).contains(&p);
    let local = Local { pinhole_port: &rtp, addresses: &["2001:db8::10".parse().expect("literal")] };
    let (host, peer): (IpAddr, IpAddr) =
        ("192.0.2.10".parse().expect("literal"), "198.51.100.7".parse().expect("literal"));
    let mut calls = Calls::new(4);
    let mut open = std::collections::BTreeSet::new();
    for dir in [Direction::In, Direction::Out, Direction::Out, Direction::In] {
        let (src, dst) = if dir == Direction::In { (peer, host) } else { (host, peer) };
        for change in calls.observe(dir, src, dst, &msg, &local) {
            match change {
                Change::Open { key, flags, .. } => {
                    assert!(
                        rtp(key.1) || flags & common::PINHOLE_RTCP != 0,
                        "an RTP pinhole on {} outside the pinhole ports",
                        key.1
                    );
                    open.insert(key);
                }
                Change::Close { key, .. } => assert!(open.remove(&key), "closed {key:?}, never opened"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The checked-in corpora and regression inputs replay here as well (`tests/fuzz_corpora`
    /// covers the whole tree); this only checks that every target has a seed folder.
    #[test]
    fn every_target_has_a_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (name, _) in super::TARGETS {
            let dir = root.join(name);
            let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert!(n > 0, "no seeds in {}", dir.display());
        }
    }
}
