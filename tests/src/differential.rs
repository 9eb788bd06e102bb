//! The differential run: generated policies and structure-aware frames through the kernel
//! program (BPF_PROG_TEST_RUN) and through [`crate::model`], stopping at the first frame whose
//! action, verdict or reason differ. A difference is shrunk (earlier frames dropped when it does
//! not need them, the frame cut as short as it still differs) and written as a named
//! regression case, which the test suite replays.
//!
//! Frames: Ethernet with 0-3 VLAN tags (802.1Q and 802.1ad) or another EtherType; IPv4 with
//! options, any fragment bits, consistent or broken total length; IPv6 with chains of
//! hop-by-hop, routing, destination-options and fragment headers; TCP with any data offset and
//! flags, UDP, ICMP and ICMPv6 of any type, other protocols; SIP requests from
//! [`crate::sipgen`] or random payloads; truncated at any byte. Later fragments follow first
//! fragments seen a few frames earlier. Sources come from the policy's allow and block lists,
//! its sets, the bans, or anywhere.

use std::{collections::BTreeMap, net::IpAddr};

use common::{BanEntry, PORT_OPEN, PORT_SIP, PROTO_SLOT_TCP, SOURCE_ALLOW, SOURCE_BLOCK, reason, verdict};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use voipwall::policy::{self, Capacity, CompiledPolicy};

use crate::{
    Harness,
    bench::scale::Rng,
    model::{Expect, Lists, Model},
    sipgen, test_capacity,
};

const ROLES: &[&str] = &[
    "voip-edge",
    "asterisk-dialer",
    "portsip-pbx",
    "portsip-sbc",
    "portaswitch-sip-processing",
    "portaswitch-web",
    "pbxtra",
];
const HOST4: [u8; 4] = [10, 0, 0, 1];
const HOST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn chance(rng: &mut Rng, percent: u64) -> bool {
    below(rng, 100) < percent
}

fn cidr(rng: &mut Rng, v6: bool) -> IpNet {
    if v6 {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[2] = 0x0d;
        a[3] = 0xb8;
        for b in &mut a[4..] {
            *b = below(rng, 4) as u8;
        }
        let len = [32u8, 48, 56, 64, 96, 128][below(rng, 6) as usize];
        IpNet::new(IpAddr::from(a), len).unwrap().trunc()
    } else {
        // A small address space, so lists, sets and sources overlap often.
        let a = [198, 18 + below(rng, 2) as u8, below(rng, 4) as u8, below(rng, 256) as u8];
        let len = [15u8, 16, 20, 23, 24, 25, 28, 31, 32][below(rng, 9) as usize];
        IpNet::new(IpAddr::from(a), len).unwrap().trunc()
    }
}

fn inside(rng: &mut Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = if n.prefix_len() == 32 { 0 } else { (rng.next_u64() as u32) >> n.prefix_len() };
            IpAddr::from((u32::from(n.network()) | host).to_be_bytes())
        }
        IpNet::V6(n) => {
            let host = if n.prefix_len() == 128 {
                0
            } else {
                (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())) >> n.prefix_len()
            };
            IpAddr::from((u128::from(n.network()) | host).to_be_bytes())
        }
    }
}

fn toml_list(nets: &[IpNet]) -> String {
    nets.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// A policy text: roles, lists, extra rules (some restricted to sets, some with a rate class),
/// sets, the SIP checks of the grammar test. Limits are generous with the unknown-source
/// budgets off, or `tight`: one or two levels of 1 and 2 packets per second with bursts of a
/// few packets, police-only or banning, budgets of a few packets (or off), a tight echo class
/// and budget, method limits, User-Agent bans (see `crate::model` on time).
pub fn policy_text(rng: &mut Rng, tight: bool) -> String {
    let mut roles: Vec<&str> = (0..1 + below(rng, 2)).map(|_| ROLES[below(rng, ROLES.len() as u64) as usize]).collect();
    roles.dedup();
    let mut lists: Vec<IpNet> = Vec::new();
    let mut pick = |rng: &mut Rng, n: u64| -> Vec<IpNet> {
        let mut out = Vec::new();
        for _ in 0..n {
            let v6 = chance(rng, 30);
            let c = cidr(rng, v6);
            if !lists.contains(&c) {
                lists.push(c);
                out.push(c);
            }
        }
        out
    };
    let (na, nb) = (below(rng, 4), below(rng, 8));
    let allow = pick(rng, na);
    let block = pick(rng, nb);
    let mut text = format!(
        "roles = [{}]\nallow = [{}]\nblock = [{}]\n",
        roles.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", "),
        toml_list(&allow),
        toml_list(&block)
    );
    for i in 0..below(rng, 4) {
        let proto = ["udp", "tcp", "tcp+udp"][below(rng, 3) as usize];
        let lo = [5060u64, 5061, 5080, 7000, 12000, 1 + below(rng, 65000)][below(rng, 6) as usize];
        let hi = lo + if chance(rng, 50) { 0 } else { below(rng, 200) };
        let hi = hi.min(65535);
        text.push_str(&format!("[[rule]]\nname = \"r{i}\"\nproto = \"{proto}\"\nports = [\"{lo}-{hi}\"]\n"));
        if chance(rng, 60) {
            let from = ["\"carriers\"", "\"admins\"", "\"cluster\""][below(rng, 3) as usize];
            text.push_str(&format!("from = [{from}]\n"));
        }
        if chance(rng, 20) {
            text.push_str("action = \"close\"\n");
        } else if chance(rng, 40) {
            let limit = ["signaling", "media", "web"][below(rng, 3) as usize];
            text.push_str(&format!("limit = \"{limit}\"\n"));
        }
    }
    text.push_str("[sets]\n");
    for set in ["carriers", "admins", "cluster"] {
        let n = below(rng, 4);
        let nets: Vec<IpNet> = (0..n)
            .map(|_| {
                let v6 = chance(rng, 30);
                cidr(rng, v6)
            })
            .collect();
        text.push_str(&format!("{set} = [{}]\n", toml_list(&nets)));
    }
    let ban = |rng: &mut Rng| if chance(rng, 50) { "0" } else { "1h" };
    let budget = |rng: &mut Rng, most: u64| format!("{{ pps = 1, burst = {} }}", 1 + below(rng, most));
    // With method limits, the SIP ports' class is roomy enough for them to be reached.
    let methods = tight && chance(rng, 80);
    for class in ["signaling", "media", "web"] {
        if !tight {
            text.push_str(&format!(
                "[limit.{class}]\nlevels = [{{ pps = 1000000, burst = 1000000, ban = \"1h\" }}]\nunknown = \"off\"\n"
            ));
            continue;
        }
        if methods && class == "signaling" {
            let (b1, budget) = (20 + below(rng, 40), budget(rng, 200));
            let unknown = if chance(rng, 50) { "\"off\"" } else { budget.as_str() };
            text.push_str(&format!("[limit.{class}]\nlevels = [{{ pps = 1, burst = {b1} }}]\nunknown = {unknown}\n"));
            continue;
        }
        let b1 = 1 + below(rng, 6);
        let mut levels = format!("{{ pps = 1, burst = {b1}, ban = \"{}\" }}", ban(rng));
        if chance(rng, 50) {
            levels.push_str(&format!(", {{ pps = 2, burst = {}, ban = \"{}\" }}", 1 + below(rng, 10), ban(rng)));
        }
        let most = if chance(rng, 50) { 10 } else { 200 };
        let unknown = if chance(rng, 40) { "\"off\"".to_string() } else { budget(rng, most) };
        text.push_str(&format!("[limit.{class}]\nlevels = [{levels}]\nunknown = {unknown}\n"));
    }
    let prefix = [48, 56, 64, 128][below(rng, 4) as usize];
    let dry = chance(rng, 15);
    let window = [1472, 256, 600][below(rng, 3) as usize];
    let patterns = sipgen::PATTERNS.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    let (echo, echo_unknown, ua_ban) = if tight {
        (budget(rng, 5), budget(rng, 10), ban(rng))
    } else {
        ("{ pps = 1000000, burst = 1000000 }".to_string(), "{ pps = 1000000, burst = 1000000 }".to_string(), "0")
    };
    text.push_str(&format!(
        "[options]\nipv6_prefix = {prefix}\ndry_run = {dry}\nicmp_echo = {echo}\nicmp_echo_unknown = {echo_unknown}\n[sip]\nua_ban = \"{ua_ban}\"\nua_window = {window}\nua_block = [{patterns}]\nunanswered_challenges = {{ count = 0 }}\n"
    ));
    if methods {
        text.push_str("[sip.methods]\n");
        for method in ["REGISTER", "INVITE", "OPTIONS", "other"] {
            if chance(rng, 75) {
                let (b, ban) = (if chance(rng, 70) { 1 } else { 2 + below(rng, 3) }, ban(rng));
                text.push_str(&format!("{method} = {{ pps = 1, burst = {b}, ban = \"{ban}\" }}\n"));
            }
        }
    }
    text
}

/// Frames for one policy.
pub struct Frames {
    rng: Rng,
    sources: Vec<IpNet>,
    bans: Vec<IpAddr>,
    /// Open ports, SIP ports and ports open only to sets, per protocol slot (TCP, UDP).
    ports: [Vec<u16>; 2],
    sip_ports: [Vec<u16>; 2],
    restricted: [Vec<u16>; 2],
    /// Recent first fragments: (IPv6, source, proto, id).
    firsts: Vec<(bool, IpAddr, u8, u32)>,
    /// Recent flows the host opened: (remote, remote port, local port, proto).
    flows: Vec<(IpAddr, u16, u16, u8)>,
    /// Under a tight policy, most sources come from this small pool, so that one source's
    /// packets meet its rate levels and the host's TCP segments make pool members known.
    pool: Vec<IpAddr>,
}

impl Frames {
    pub fn new(seed: u64, compiled: &CompiledPolicy, bans: &[IpAddr], tight: bool) -> Self {
        let mut sources: Vec<IpNet> = compiled.allow.iter().chain(&compiled.block).copied().collect();
        sources.extend(compiled.sets_v4.iter().map(|(n, _)| IpNet::V4(*n)));
        sources.extend(compiled.sets_v6.iter().map(|(n, _)| IpNet::V6(*n)));
        let (mut ports, mut sip_ports, mut restricted) = <([Vec<u16>; 2], [Vec<u16>; 2], [Vec<u16>; 2])>::default();
        for (i, rule) in compiled.ports.iter().enumerate() {
            let (slot, port) = (i >> 16 & 1, i as u16);
            if rule.flags & PORT_OPEN != 0 {
                ports[slot].push(port);
                if rule.sets != 0 {
                    restricted[slot].push(port);
                }
            }
            if rule.flags & PORT_SIP != 0 {
                sip_ports[slot].push(port);
            }
        }
        let mut frames = Self {
            rng: Rng::new(seed),
            sources,
            bans: bans.to_vec(),
            ports,
            sip_ports,
            restricted,
            firsts: Vec::new(),
            flows: Vec::new(),
            pool: Vec::new(),
        };
        if tight {
            // A few sources (each meets its levels and the method limits) or a crowd (the
            // budgets).
            let n = if chance(&mut frames.rng, 50) {
                2 + below(&mut frames.rng, 6)
            } else {
                8 + below(&mut frames.rng, 24)
            };
            frames.pool = (0..n)
                .map(|_| {
                    let v6 = chance(&mut frames.rng, 40);
                    frames.any_source(v6)
                })
                .collect();
        }
        frames
    }

    /// Frames for a tight policy (only such a policy has a source pool).
    fn tight(&self) -> bool {
        !self.pool.is_empty()
    }

    fn source(&mut self, v6: bool) -> IpAddr {
        if chance(&mut self.rng, 85) {
            let pool: Vec<IpAddr> = self.pool.iter().filter(|a| a.is_ipv6() == v6).copied().collect();
            if !pool.is_empty() {
                return pool[below(&mut self.rng, pool.len() as u64) as usize];
            }
        }
        self.any_source(v6)
    }

    /// A source from the policy's lists and sets, the bans, or anywhere.
    fn any_source(&mut self, v6: bool) -> IpAddr {
        let rng = &mut self.rng;
        let want = |a: &IpAddr| a.is_ipv6() == v6;
        match below(rng, 10) {
            0..=2 => {
                let nets: Vec<IpNet> =
                    self.sources.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).copied().collect();
                if !nets.is_empty() {
                    let n = nets[below(rng, nets.len() as u64) as usize];
                    return inside(rng, &n);
                }
            }
            5 => {
                let bans: Vec<IpAddr> = self.bans.iter().filter(|a| want(a)).copied().collect();
                if !bans.is_empty() {
                    return bans[below(rng, bans.len() as u64) as usize];
                }
            }
            _ => {}
        }
        let net = cidr(rng, v6);
        inside(rng, &net)
    }

    fn dport(&mut self, tcp: bool) -> u16 {
        let slot = if tcp { PROTO_SLOT_TCP } else { common::PROTO_SLOT_UDP } as usize;
        let tight = self.tight();
        let rng = &mut self.rng;
        let from = |l: &[u16], rng: &mut Rng| -> Option<u16> {
            (!l.is_empty()).then(|| l[below(rng, l.len() as u64) as usize])
        };
        // Under tight limits, SIP ports more often, to meet the method limits.
        let sip = if tight { 6 } else { 3 };
        match below(rng, 10 + sip - 3) {
            n if n < sip => from(&self.sip_ports[slot], rng),
            n if n < sip + 2 => from(&self.restricted[slot], rng),
            n if n < sip + 4 => from(&self.ports[slot], rng),
            _ => None,
        }
        .unwrap_or_else(|| below(rng, 65536) as u16)
    }

    fn payload(&mut self) -> Vec<u8> {
        // Under tight limits, SIP requests more often, many of them plain ones, to meet the
        // method limits.
        let sip = if self.tight() { 5 } else { 3 };
        match below(&mut self.rng, 10) {
            n if n <= sip && self.tight() && chance(&mut self.rng, 50) => sipgen::plain(&mut self.rng),
            n if n <= sip => sipgen::request(&mut self.rng).bytes,
            4..=7 => (0..below(&mut self.rng, 200)).map(|_| self.rng.next_u64() as u8).collect(),
            _ => Vec::new(),
        }
    }

    /// The next frame and its direction (`true`: sent by the host, through the egress
    /// program): mostly arriving frames, sometimes the host opening a flow, sometimes a reply
    /// to a flow it opened.
    pub fn step(&mut self) -> (bool, Vec<u8>) {
        match below(&mut self.rng, 100) {
            0..=7 => {
                let v6 = chance(&mut self.rng, 40);
                let remote = self.source(v6);
                let proto = if chance(&mut self.rng, 50) { 17 } else { 6 };
                let listening = if self.tight() { 5 } else { 2 };
                let lport = match below(&mut self.rng, 10) {
                    n if n < listening => self.dport(proto == 6),
                    _ => 32768 + below(&mut self.rng, 28000) as u16,
                };
                let rport = [5060, 53, 443, below(&mut self.rng, 65536) as u16][below(&mut self.rng, 4) as usize];
                let flags = [0x02u8, 0x12, 0x10, 0x18, self.rng.next_u64() as u8][below(&mut self.rng, 5) as usize];
                let local = if v6 { IpAddr::from(HOST6) } else { IpAddr::from(HOST4) };
                self.flows.push((remote, rport, lport, proto));
                if self.flows.len() > 16 {
                    self.flows.remove(0);
                }
                (true, simple(local, remote, proto, lport, rport, flags))
            }
            8..=15 if !self.flows.is_empty() => {
                let (remote, rport, lport, proto) = self.flows[below(&mut self.rng, self.flows.len() as u64) as usize];
                let local = if remote.is_ipv6() { IpAddr::from(HOST6) } else { IpAddr::from(HOST4) };
                let flags = [0x12u8, 0x10, 0x04, self.rng.next_u64() as u8][below(&mut self.rng, 4) as usize];
                (false, simple(remote, local, proto, rport, lport, flags))
            }
            _ => (false, self.frame()),
        }
    }

    /// The next arriving frame.
    pub fn frame(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let tags = match below(rng, 100) {
            0..=79 => 0,
            80..=89 => 1,
            90..=97 => 2,
            _ => 3,
        };
        for _ in 0..tags {
            f.extend_from_slice(if chance(rng, 50) { &[0x81, 0x00] } else { &[0x88, 0xa8] });
            f.extend_from_slice(&(below(rng, 4096) as u16).to_be_bytes());
        }
        let kind = below(rng, 100);
        if kind >= 95 {
            f.extend_from_slice(&[[0x08, 0x06], [0x88, 0xcc], [0x86, 0xdd], [0x08, 0x00]][below(rng, 4) as usize]);
            let n = below(rng, 64);
            f.extend((0..n).map(|_| self.rng.next_u64() as u8));
            return self.finish(f);
        }
        let v6 = kind >= 50;
        let proto: u8 = match below(&mut self.rng, 100) {
            0..=34 => 17,
            35..=64 => 6,
            65..=77 => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            78..=80 => {
                if v6 {
                    1
                } else {
                    58
                }
            }
            _ => below(&mut self.rng, 256) as u8,
        };
        let src = self.source(v6);
        // A later fragment of a recent first fragment, a first fragment, or neither.
        let later_of = if !self.firsts.is_empty() && chance(&mut self.rng, 8) {
            let pick = below(&mut self.rng, self.firsts.len() as u64) as usize;
            Some(self.firsts[pick])
        } else {
            None
        };
        let (v6, src, proto) = later_of.map_or((v6, src, proto), |(v, s, p, _)| (v, s, p));
        let first = later_of.is_none() && chance(&mut self.rng, 8);
        let id = later_of.map_or(self.rng.next_u64() as u32, |(.., id)| id);
        let l4 = if later_of.is_some() { self.payload() } else { self.transport(proto) };
        if first {
            self.firsts.push((v6, src, proto, if v6 { id } else { id & 0xffff }));
            if self.firsts.len() > 16 {
                self.firsts.remove(0);
            }
        }
        let rng = &mut self.rng;
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut ext = Vec::new();
            let mut next = proto;
            let mut chain: Vec<u8> = (0..if chance(rng, 75) { 0 } else { 1 + below(rng, 7) })
                .map(|_| [0u8, 43, 60, 44][below(rng, 4) as usize])
                .collect();
            if first || later_of.is_some() {
                chain.push(44);
            }
            // Built from the inside out: each header names the one after it.
            for (i, &h) in chain.iter().enumerate().rev() {
                let last_frag = i == chain.len() - 1 && (first || later_of.is_some());
                let mut hdr = vec![next];
                if h == 44 {
                    let offset_flags: u16 = if last_frag {
                        if first { 1 } else { ((1 + below(rng, 100)) as u16) << 3 }
                    } else {
                        below(rng, 65536) as u16
                    };
                    hdr.push(0);
                    hdr.extend_from_slice(&offset_flags.to_be_bytes());
                    hdr.extend_from_slice(&if last_frag { id } else { rng.next_u64() as u32 }.to_be_bytes());
                } else {
                    let len = below(rng, 3) as u8;
                    hdr.push(len);
                    hdr.extend((0..(len as usize + 1) * 8 - 2).map(|_| rng.next_u64() as u8));
                }
                hdr.extend_from_slice(&ext);
                ext = hdr;
                next = h;
            }
            let plen = (ext.len() + l4.len()) as u16;
            let plen = if chance(rng, 90) { plen } else { below(rng, 65536) as u16 };
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&plen.to_be_bytes());
            f.push(next);
            f.push(64);
            f.extend_from_slice(&match src {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(_) => unreachable!(),
            });
            f.extend_from_slice(&HOST6);
            f.extend_from_slice(&ext);
            f.extend_from_slice(&l4);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let opts = if chance(rng, 85) { 0 } else { below(rng, 11) as usize * 4 };
            let ihl = 20 + opts;
            let total = (ihl + l4.len()) as u16;
            let total = if chance(rng, 90) { total } else { below(rng, 2000) as u16 };
            let frags: u16 = if first {
                0x2000
            } else if later_of.is_some() {
                (1 + below(rng, 1000)) as u16 | if chance(rng, 50) { 0x2000 } else { 0 }
            } else if chance(rng, 90) {
                0x4000
            } else {
                below(rng, 65536) as u16
            };
            let version = if chance(rng, 98) { 0x40 } else { (below(rng, 16) as u8) << 4 };
            f.push(version | (ihl / 4) as u8);
            f.push(0);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&(id as u16).to_be_bytes());
            f.extend_from_slice(&frags.to_be_bytes());
            f.push(64);
            f.push(proto);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&match src {
                IpAddr::V4(a) => a.octets(),
                IpAddr::V6(_) => unreachable!(),
            });
            f.extend_from_slice(&HOST4);
            f.extend((0..opts).map(|_| rng.next_u64() as u8));
            f.extend_from_slice(&l4);
        }
        self.finish(f)
    }

    fn transport(&mut self, proto: u8) -> Vec<u8> {
        let mut l4 = Vec::new();
        let payload = self.payload();
        let tight = self.tight();
        let rng = &mut self.rng;
        match proto {
            6 => {
                let dport = self.dport(true);
                let rng = &mut self.rng;
                l4.extend_from_slice(&(below(rng, 65536) as u16).to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend((0..8).map(|_| rng.next_u64() as u8));
                let doff = if chance(rng, 85) { 5 } else { below(rng, 16) as u8 };
                l4.push(doff << 4);
                l4.push(rng.next_u64() as u8);
                l4.extend((0..6).map(|_| rng.next_u64() as u8));
                if doff > 5 {
                    l4.extend((0..(doff as usize - 5) * 4).map(|_| rng.next_u64() as u8));
                }
            }
            17 => {
                let dport = self.dport(false);
                let rng = &mut self.rng;
                l4.extend_from_slice(&(below(rng, 65536) as u16).to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            1 | 58 => {
                // Under tight limits, echo requests often, to meet the echo class.
                let echo = if proto == 58 { 128 } else { 8 };
                let t = match below(rng, if tight { 8 } else { 4 }) {
                    4..=6 => echo,
                    0 => [0u8, 3, 8, 11, 128, 129, 133, 135, 136, 137][below(rng, 10) as usize],
                    _ => below(rng, 256) as u8,
                };
                l4.push(t);
                l4.extend((0..7).map(|_| rng.next_u64() as u8));
            }
            _ => {}
        }
        l4.extend_from_slice(&payload);
        l4
    }

    /// Truncate sometimes (at any byte, never below the 14 bytes BPF_PROG_TEST_RUN needs), and
    /// keep frames within a page.
    fn finish(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        if chance(&mut self.rng, 10) && f.len() > 14 {
            let cut = 14 + below(&mut self.rng, (f.len() - 14) as u64) as usize;
            f.truncate(cut);
        }
        f.truncate(3000);
        if f.len() < 14 {
            f.resize(14, 0);
        }
        f
    }
}

/// A well-formed TCP (flags `flags`) or UDP packet from `src`:`sport` to `dst`:`dport`.
fn simple(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    }
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend_from_slice(&l4);
    f
}

/// Frames sent by the host are kept in a case with this prefix.
pub const EGRESS: &str = "egress:";

/// A case: a policy, bans, and frames run in order through one fresh program.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    pub policy: String,
    /// Banned sources (IPv4 addresses, or IPv6 addresses masked to the policy's prefix).
    pub bans: Vec<IpAddr>,
    /// Frames, hex.
    pub frames: Vec<String>,
    /// What the kernel and the model said of the last frame when the case was found.
    #[serde(default)]
    pub found: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn capacity() -> Capacity {
    Capacity { frags: 65536, ..test_capacity() }
}

fn ban_key(a: &IpAddr, prefix: u32) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => common::addr::v4_mapped(a.octets()),
        IpAddr::V6(a) => common::addr::mask_prefix(a.octets(), prefix),
    }
}

/// A harness and a model for `policy` with `bans`.
pub fn setup(policy_text: &str, bans: &[IpAddr]) -> (Harness, Model) {
    let mut h = Harness::new_with_capacity(policy_text, capacity());
    let prefix = h.compiled.config.ipv6_prefix;
    let far = voipwall::dataplane::monotonic_ns() + 3600 * 1_000_000_000;
    let keys: Vec<[u8; 16]> = bans.iter().map(|a| ban_key(a, prefix)).collect();
    for k in &keys {
        let entry = BanEntry { expires_ns: far, rate_pps: 0, class: 0, level: 0, flags: 0, _pad: Default::default() };
        h.dp.ban_insert(k, &entry).expect("ban");
    }
    let mut lists = Lists::default();
    lists.entries.extend(h.compiled.allow.iter().map(|n| (*n, SOURCE_ALLOW)));
    lists.entries.extend(h.compiled.block.iter().map(|n| (*n, SOURCE_BLOCK)));
    let model = Model::new(h.compiled.clone(), lists, keys);
    (h, model)
}

/// Run a case's frames one by one with exact counters: the index of the first difference and
/// what each side said.
pub fn replay(case: &Case) -> Option<(usize, String)> {
    let (h, mut m) = setup(&case.policy, &case.bans);
    for (i, f) in case.frames.iter().enumerate() {
        if let Some(out) = f.strip_prefix(EGRESS) {
            let frame = unhex(out);
            m.egress(&frame);
            h.dp.test_run_egress(&frame).expect("egress test_run");
            continue;
        }
        let frame = unhex(f);
        let want = m.run(&frame);
        match h.try_run(&frame) {
            Ok(got) if got.action == want.action && got.verdict == want.verdict && got.reason == want.reason => {}
            Ok(got) => return Some((i, format!("kernel {got}, model {}", describe(&want)))),
            Err(e) => return Some((i, format!("kernel: {e}; model {}", describe(&want)))),
        }
    }
    None
}

pub fn describe(e: &Expect) -> String {
    format!(
        "{} counted as {}/{}",
        if e.action == crate::XDP_DROP { "XDP_DROP" } else { "XDP_PASS" },
        verdict::NAMES[e.verdict as usize],
        reason::NAMES[e.reason as usize]
    )
}

/// Totals of a run.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub policies: u64,
    pub frames: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Later fragments that inherited their first fragment's outcome.
    pub inherited: u64,
    /// Frames the host sent (through the egress program), included in `frames`.
    pub egress: u64,
    /// Policies with tight limits, and the frames they ran.
    pub tight: u64,
    pub tight_frames: u64,
    /// Bans the program raised itself (or would have, in dry run), and peers it learned.
    pub bans_raised: u64,
    pub learned: u64,
}

/// A tight policy's run ends this long after its first frame: well within the 500 ms in which
/// its fastest bucket (2 packets per second) earns back a packet, so no bucket refills while
/// the model's time stands still.
const TIGHT_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// At most this many frames per tight policy (its run must fit [`TIGHT_WINDOW`]).
const TIGHT_FRAMES: usize = 1500;

/// One generated policy (with tight limits if `tight`, drawn from the seed if `None`) with
/// `frames` frames (at most [`TIGHT_FRAMES`] under tight limits), checked in batches: every frame's XDP action, and
/// per batch the counters each (verdict, reason) moved against the model's. On a difference
/// the batch is replayed frame by frame; the shrunk case is returned.
pub fn run_policy(seed: u64, frames: usize, tight: Option<bool>, totals: &mut Totals) -> Result<(), Case> {
    let mut rng = Rng::new(seed);
    let drawn = chance(&mut rng, 40);
    let tight = tight.unwrap_or(drawn);
    let frames = if tight { frames.min(TIGHT_FRAMES) } else { frames };
    let text = loop {
        let t = policy_text(&mut rng, tight);
        if policy::parse("generated.toml", &t).is_ok() {
            break t;
        }
    };
    let (_, compiled) = policy::parse("generated.toml", &text).expect("checked");
    let bans: Vec<IpAddr> = (0..below(&mut rng, 4))
        .map(|_| {
            let v6 = chance(&mut rng, 30);
            let net = cidr(&mut rng, v6);
            inside(&mut rng, &net)
        })
        .collect();
    let (h, mut m) = setup(&text, &bans);
    let mut frames_gen = Frames::new(rng.next_u64(), &compiled, &bans, tight);
    let mut all: Vec<(bool, Vec<u8>)> = Vec::with_capacity(frames);
    totals.policies += 1;
    totals.tight += tight as u64;
    const BATCH: usize = 128;
    let mut done = 0;
    let started = std::time::Instant::now();
    while done < frames && !(tight && started.elapsed() > TIGHT_WINDOW) {
        let before = h.dp.counters().expect("counters");
        let mut want: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        let mut bad = None;
        let start = all.len();
        for _ in 0..BATCH.min(frames - done) {
            let (egress, f) = frames_gen.step();
            if egress {
                m.egress(&f);
                h.dp.test_run_egress(&f).expect("egress test_run");
                all.push((true, f));
                totals.egress += 1;
                continue;
            }
            let e = m.run(&f);
            let (action, _) = h.dp.test_run(&f, 1).expect("test_run");
            all.push((false, f));
            *want.entry((e.verdict, e.reason)).or_default() += 1;
            *totals.by_reason.entry(reason::NAMES[e.reason as usize]).or_default() += 1;
            if action != e.action && bad.is_none() {
                bad = Some(all.len() - 1);
            }
        }
        done += all.len() - start;
        totals.frames += (all.len() - start) as u64;
        totals.tight_frames += if tight { (all.len() - start) as u64 } else { 0 };
        let after = h.dp.counters().expect("counters");
        let got: BTreeMap<(u32, u32), u64> =
            crate::diff(&before, &after).into_iter().map(|(v, r, p, _)| ((v, r), p)).collect();
        if bad.is_some() || got != want {
            let case = Case {
                policy: text.clone(),
                bans: bans.clone(),
                frames: all.iter().map(|(e, f)| if *e { format!("{EGRESS}{}", hex(f)) } else { hex(f) }).collect(),
                found: String::new(),
            };
            return Err(shrink(case));
        }
    }
    totals.inherited += m.inherited;
    totals.bans_raised += m.bans_raised;
    totals.learned += m.learned;
    Ok(())
}

/// The smallest case that still differs: the frames after the first difference dropped, the
/// earlier ones dropped when the difference does not need them, the frame cut short while it
/// still differs.
pub fn shrink(mut case: Case) -> Case {
    let Some((i, _)) = replay(&case) else {
        case.found = "differed in a batch but not frame by frame".into();
        return case;
    };
    case.frames.truncate(i + 1);
    let alone = Case { frames: vec![case.frames[i].clone()], ..case.clone() };
    if replay(&alone).is_some() {
        case = alone;
    }
    // Cut the last frame while it still differs (one program per try: bounded).
    let last = case.frames.len() - 1;
    let mut bytes = unhex(&case.frames[last]);
    let mut step = bytes.len() / 2;
    while step > 0 && bytes.len() > 14 {
        let shorter = &bytes[..bytes.len().saturating_sub(step).max(14)];
        let mut tried = case.clone();
        tried.frames[last] = hex(shorter);
        if replay(&tried).is_some() {
            bytes = shorter.to_vec();
            case = tried;
        } else {
            step /= 2;
        }
    }
    case.found = replay(&case).map(|(_, s)| s).unwrap_or_default();
    case
}

/// The regression cases kept in the repository.
pub fn regressions() -> Vec<(String, Case)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions/dataplane");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).expect("read case");
                let case: Case = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), case));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
