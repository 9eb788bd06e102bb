//! A plain-Rust model of the data plane's decision chain: what the XDP program must do with a
//! frame, written from the rules (README "What it does to a packet"), not from the program.
//!
//! It reads the compiled policy the controller hands the kernel (port table, source sets with
//! their folded masks, rate classes, the configuration), the allow/block lists as CIDRs
//! (answered by longest prefix, where the program uses its /16 gate, /24 slots and host blocks),
//! and the bans. Its state is what a sequence of frames leaves behind: first fragments, the
//! flows the host opened, known peers (by set membership, or by a TCP segment the host
//! acknowledged from a listening port), each rate state's packets per level, each class's
//! unknown-source budget, and the bans the rate levels and the User-Agent check raise.
//!
//! Time stands still for the model: no bucket refills, no ban, flow, fragment or known peer
//! expires. The differential run makes that true: a policy with tight limits has levels of 1 or
//! 2 packets per second and budgets of 1, and its frames all run within a fraction of the
//! 500 ms in which the fastest of those buckets would earn back one packet; generous policies'
//! buckets never run dry. Counting is then exact: a level of burst B lets B packets through and
//! then none, a budget of burst B lets B unknown packets through and then none.
//!
//! What it does not model, and so what the differential run keeps out of play: a SIP response
//! proving its sender (no SIP request leaves the host in a run), the authentication counters
//! (nothing the host sends is a 401/403), pinholes (no policy is in pinhole mode), and map
//! capacity (a tight policy's sources come from a pool far smaller than every map).

use std::collections::HashMap;

use common::{
    MAX_FRAGMENTS_PER_DATAGRAM, POLICY_DRY_RUN, PORT_OPEN, PORT_PINHOLE, PORT_SIP, PROTO_SLOT_TCP, PROTO_SLOT_UDP,
    RateLevel, port_slot, reason,
    sip::grammar::{self, Reading, UaVerdict},
    verdict,
};
use ipnet::IpNet;
use voipwall::policy::CompiledPolicy;

use crate::sipgen;

/// XDP actions.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// What the model says about one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub action: u32,
    pub verdict: u32,
    pub reason: u32,
}

/// The parsed facts of an IP packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pkt {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ipv6: bool,
    pub proto: u8,
    pub frag: Frag,
    pub frag_id: u32,
    pub sport: u16,
    pub dport: u16,
    pub payload_off: usize,
    pub icmp_type: u8,
    pub tcp_flags: u8,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frag {
    #[default]
    None,
    First,
    Later,
}

#[derive(Debug)]
pub enum Parsed {
    NonIp,
    Malformed,
    Ip(Pkt),
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn mapped(a: &[u8]) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12..].copy_from_slice(&a[..4]);
    m
}

/// Ethernet, at most two VLAN tags, IPv4 (any IHL) or IPv6 (at most six extension headers),
/// then TCP/UDP/ICMP headers. Every header must fit the frame; IPv4's total length and IPv6's
/// payload length must fit it too.
pub fn parse(f: &[u8]) -> Parsed {
    let len = f.len();
    if len < 14 {
        return Parsed::Malformed;
    }
    let mut et = be16(f, 12);
    let mut off = 14;
    for _ in 0..2 {
        if et != 0x8100 && et != 0x88a8 {
            break;
        }
        if off + 4 > len {
            return Parsed::Malformed;
        }
        et = be16(f, off + 2);
        off += 4;
    }
    let mut p = Pkt::default();
    match et {
        0x0800 => {
            if off + 20 > len || f[off] >> 4 != 4 {
                return Parsed::Malformed;
            }
            let ihl = (f[off] & 0x0f) as usize * 4;
            let total = be16(f, off + 2) as usize;
            if ihl < 20 || total < ihl || off + total > len {
                return Parsed::Malformed;
            }
            p.src = mapped(&f[off + 12..off + 16]);
            p.dst = mapped(&f[off + 16..off + 20]);
            p.proto = f[off + 9];
            p.frag_id = be16(f, off + 4) as u32;
            let flags = be16(f, off + 6);
            p.frag = if flags & 0x1fff != 0 {
                Frag::Later
            } else if flags & 0x2000 != 0 {
                Frag::First
            } else {
                Frag::None
            };
            if p.frag == Frag::Later {
                return Parsed::Ip(p);
            }
            transport(f, off + ihl, p)
        }
        0x86dd => {
            if off + 40 > len || f[off] >> 4 != 6 {
                return Parsed::Malformed;
            }
            let plen = be16(f, off + 4) as usize;
            if plen != 0 && off + 40 + plen > len {
                return Parsed::Malformed;
            }
            p.ipv6 = true;
            p.src.copy_from_slice(&f[off + 8..off + 24]);
            p.dst.copy_from_slice(&f[off + 24..off + 40]);
            let mut next = f[off + 6];
            let mut o = off + 40;
            for _ in 0..common::MAX_IPV6_EXT_HEADERS {
                match next {
                    0 | 43 | 60 => {
                        if o + 2 > len {
                            return Parsed::Malformed;
                        }
                        next = f[o];
                        o += (f[o + 1] as usize + 1) * 8;
                    }
                    44 => {
                        if o + 8 > len {
                            return Parsed::Malformed;
                        }
                        next = f[o];
                        let offset_flags = be16(f, o + 2);
                        p.frag_id = u32::from_be_bytes([f[o + 4], f[o + 5], f[o + 6], f[o + 7]]);
                        p.frag = if offset_flags >> 3 != 0 {
                            Frag::Later
                        } else if offset_flags & 1 != 0 {
                            Frag::First
                        } else {
                            Frag::None
                        };
                        o += 8;
                        if p.frag == Frag::Later {
                            p.proto = next;
                            return Parsed::Ip(p);
                        }
                    }
                    _ => break,
                }
            }
            if matches!(next, 0 | 43 | 44 | 60) {
                return Parsed::Malformed;
            }
            p.proto = next;
            transport(f, o, p)
        }
        0x8100 | 0x88a8 => Parsed::Malformed,
        _ => Parsed::NonIp,
    }
}

fn transport(f: &[u8], o: usize, mut p: Pkt) -> Parsed {
    let len = f.len();
    match p.proto {
        6 => {
            if o + 20 > len {
                return Parsed::Malformed;
            }
            let doff = (f[o + 12] >> 4) as usize * 4;
            if doff < 20 || o + doff > len {
                return Parsed::Malformed;
            }
            p.sport = be16(f, o);
            p.dport = be16(f, o + 2);
            p.tcp_flags = f[o + 13];
            p.payload_off = o + doff;
        }
        17 => {
            if o + 8 > len {
                return Parsed::Malformed;
            }
            p.sport = be16(f, o);
            p.dport = be16(f, o + 2);
            p.payload_off = o + 8;
        }
        1 | 58 => {
            if o + 8 > len {
                return Parsed::Malformed;
            }
            p.icmp_type = f[o];
        }
        _ => {}
    }
    Parsed::Ip(p)
}

/// Allow and block entries with the list each belongs to.
#[derive(Clone, Debug, Default)]
pub struct Lists {
    pub entries: Vec<(IpNet, u32)>,
}

impl Lists {
    /// The allow list first (an allow entry covering the address wins over any block entry,
    /// however narrower), then the block list: `SOURCE_ALLOW`, `SOURCE_BLOCK`, or 0.
    pub fn lookup(&self, addr: &[u8; 16], ipv6: bool) -> u32 {
        let ip: std::net::IpAddr = if ipv6 {
            std::net::Ipv6Addr::from(*addr).into()
        } else {
            std::net::Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]).into()
        };
        let holds = |list: u32| self.entries.iter().any(|(net, v)| *v == list && net.contains(&ip));
        if holds(common::SOURCE_ALLOW) {
            common::SOURCE_ALLOW
        } else if holds(common::SOURCE_BLOCK) {
            common::SOURCE_BLOCK
        } else {
            0
        }
    }
}

/// A datagram as fragments name it: source, destination, identification, protocol.
type FragKey = ([u8; 16], [u8; 16], u32, u8);

/// A flow the host opened: remote address and port, local port, protocol.
type FlowKey = ([u8; 16], u16, [u8; 16], u16, u8);

/// A rate state: the source as bans see it, the class, and whether it is a known peer's own
/// (kept in its entry) or the shared one every other source gets.
type RateKey = ([u8; 16], u8, bool);

/// What one packet does to a rate class's levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Charge {
    Pass,
    /// Above a level without a ban time.
    Police,
    /// Above a level with a ban time (level 2 checked first).
    Ban,
}

/// The model: a policy, lists, bans, and what frames left behind.
pub struct Model {
    pub compiled: CompiledPolicy,
    pub lists: Lists,
    /// Ban keys (the source as bans see it), all unexpired: the ones given, then the ones raised.
    pub bans: Vec<[u8; 16]>,
    frags: HashMap<FragKey, (u32, u32)>,
    /// Later fragments that inherited a first fragment's outcome.
    pub inherited: u64,
    flows: std::collections::HashSet<FlowKey>,
    /// (protocol slot, local port) the host opened a flow from.
    flow_ports: std::collections::HashSet<(u32, u16)>,
    /// Known peers and the classes their two own rate states hold (0: free).
    known: HashMap<[u8; 16], [u8; 2]>,
    /// Packets each level of a rate state let through.
    rates: HashMap<RateKey, [u64; 2]>,
    /// Packets each class's unknown-source budget let through.
    budgets: HashMap<u8, u64>,
    /// Bans the program raised (rate levels, User-Agent), and would-be bans in dry run.
    pub bans_raised: u64,
    /// Sources that became known peers.
    pub learned: u64,
}

impl Model {
    pub fn new(compiled: CompiledPolicy, lists: Lists, bans: Vec<[u8; 16]>) -> Self {
        Self {
            compiled,
            lists,
            bans,
            frags: HashMap::new(),
            inherited: 0,
            flows: Default::default(),
            flow_ports: Default::default(),
            known: HashMap::new(),
            rates: HashMap::new(),
            budgets: HashMap::new(),
            bans_raised: 0,
            learned: 0,
        }
    }

    /// A frame the host sends (TC egress): a UDP datagram or TCP SYN from a local port the
    /// policy does not open opens a flow; a later packet of a known flow keeps it open. A TCP
    /// segment from a listening port that acknowledges without SYN or RST makes its
    /// destination a known peer (only a completed handshake gets one).
    pub fn egress(&mut self, frame: &[u8]) {
        let Parsed::Ip(p) = parse(frame) else { return };
        let slot = match p.proto {
            6 => PROTO_SLOT_TCP,
            17 => PROTO_SLOT_UDP,
            _ => return,
        };
        if p.frag == Frag::Later {
            return;
        }
        let flags = self.compiled.ports[port_slot(slot, p.sport)].flags;
        if flags & PORT_OPEN != 0 {
            if p.proto == 6 && flags & PORT_PINHOLE == 0 && p.tcp_flags & 0x16 == 0x10 {
                let key = self.key_of(&p.dst, p.ipv6);
                self.learn(key);
            }
            return;
        }
        let key = (p.dst, p.dport, p.src, p.sport, p.proto);
        if !self.flows.contains(&key) {
            if p.proto == 6 && p.tcp_flags & 0x12 != 0x02 {
                return;
            }
            self.flows.insert(key);
        }
        self.flow_ports.insert((slot, p.sport));
    }

    /// The outcome of `frame`, and what the model now remembers of it.
    pub fn run(&mut self, frame: &[u8]) -> Expect {
        let r = self.decide(frame);
        let dry = self.compiled.config.flags & POLICY_DRY_RUN != 0;
        if !reason::is_drop(r) {
            Expect { action: XDP_PASS, verdict: verdict::PASS, reason: r }
        } else if dry {
            Expect { action: XDP_PASS, verdict: verdict::WOULD_DROP, reason: r }
        } else {
            Expect { action: XDP_DROP, verdict: verdict::DROP, reason: r }
        }
    }

    fn decide(&mut self, frame: &[u8]) -> u32 {
        let p = match parse(frame) {
            Parsed::NonIp => return reason::NON_IP,
            Parsed::Malformed => return reason::MALFORMED,
            Parsed::Ip(p) => p,
        };
        match self.lists.lookup(&p.src, p.ipv6) {
            common::SOURCE_ALLOW => return reason::ALLOW_LIST,
            common::SOURCE_BLOCK => return reason::BLOCK_LIST,
            _ => {}
        }
        let key = self.source_key(&p);
        if self.bans.contains(&key) {
            return reason::BANNED;
        }
        let fkey = (p.src, p.dst, p.frag_id, p.proto);
        if p.frag == Frag::Later {
            return match self.frags.get_mut(&fkey) {
                Some((r, n)) if *n < MAX_FRAGMENTS_PER_DATAGRAM as u32 => {
                    *n += 1;
                    self.inherited += 1;
                    *r
                }
                _ => reason::FRAGMENT_ORPHAN,
            };
        }
        let r = match p.proto {
            6 => self.port(frame, &p, PROTO_SLOT_TCP),
            17 => self.port(frame, &p, PROTO_SLOT_UDP),
            1 if !p.ipv6 => self.icmp(&p),
            58 if p.ipv6 => self.icmp(&p),
            _ => reason::PROTOCOL_CLOSED,
        };
        if p.frag == Frag::First {
            self.frags.insert(fkey, (r, 0));
        }
        r
    }

    fn source_key(&self, p: &Pkt) -> [u8; 16] {
        self.key_of(&p.src, p.ipv6)
    }

    /// An address as bans, rates and known peers see it: IPv4 whole, IPv6 cut to the prefix.
    fn key_of(&self, a: &[u8; 16], ipv6: bool) -> [u8; 16] {
        if ipv6 { common::addr::mask_prefix(*a, self.compiled.config.ipv6_prefix) } else { *a }
    }

    fn dry_run(&self) -> bool {
        self.compiled.config.flags & POLICY_DRY_RUN != 0
    }

    /// `key` proved itself: a known peer from now on (a peer already known keeps its states).
    fn learn(&mut self, key: [u8; 16]) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(key) {
            e.insert([0; 2]);
            self.learned += 1;
        }
    }

    /// The program bans `key` (nothing is inserted in dry run; the would-be ban is counted).
    fn ban(&mut self, key: [u8; 16]) {
        self.bans_raised += 1;
        if !self.dry_run() && !self.bans.contains(&key) {
            self.bans.push(key);
        }
    }

    /// Admission of one packet to rate class `class`: `None` to go on, or the drop reason. A
    /// source in any named set (`member`: the port's sets already matched) becomes known. A
    /// known peer is charged to its own state for the class (one of two), or the shared one;
    /// an unknown source first draws from the class's budget, then is charged to its shared
    /// state.
    fn admit(&mut self, p: &Pkt, class: u8, member: bool) -> Option<u32> {
        let key = self.source_key(p);
        if !self.known.contains_key(&key) && (member || self.sets_of(p) != 0) {
            self.learn(key);
        }
        let state = match self.known.get_mut(&key) {
            Some(slots) => {
                match slots.iter().position(|&c| c == class).or_else(|| slots.iter().position(|&c| c == 0)) {
                    Some(i) => {
                        if slots[i] == 0 {
                            slots[i] = class;
                            // A fresh own state, whatever the shared one holds.
                            self.rates.remove(&(key, class, true));
                        }
                        (key, class, true)
                    }
                    None => (key, class, false),
                }
            }
            None => {
                let budget = self.compiled.classes[class as usize].unknown;
                if let Some(burst) = burst(&budget) {
                    let used = self.budgets.entry(class).or_default();
                    if *used >= burst {
                        return Some(reason::UNKNOWN_OVER_BUDGET);
                    }
                    *used += 1;
                }
                (key, class, false)
            }
        };
        self.enforce(state, reason::RATE_LIMITED)
    }

    /// Charge one packet to `state`: `None` within its levels, else `refused` (and the source
    /// banned when the level it exceeded bans).
    fn enforce(&mut self, state: RateKey, refused: u32) -> Option<u32> {
        match self.charge(state) {
            Charge::Pass => None,
            Charge::Police => Some(refused),
            Charge::Ban => {
                self.ban(state.0);
                Some(refused)
            }
        }
    }

    /// One packet against the levels of the state's class: each level with burst B lets B
    /// packets through and then none (a packet one level refuses still counts toward the
    /// other); above level 2 with a ban time bans, then above level 1 with one, else polices.
    fn charge(&mut self, state: RateKey) -> Charge {
        let levels = self.compiled.classes[state.1 as usize].levels;
        let passed = self.rates.entry(state).or_default();
        let mut within = [true; 2];
        for i in 0..2 {
            if let Some(b) = burst(&levels[i]) {
                within[i] = passed[i] < b;
                passed[i] += within[i] as u64;
            }
        }
        match within {
            [_, false] if levels[1].ban_ns > 0 => Charge::Ban,
            [false, _] if levels[0].ban_ns > 0 => Charge::Ban,
            [true, true] => Charge::Pass,
            _ => Charge::Police,
        }
    }

    /// ICMP by type: errors, echo replies and neighbour discovery pass; echo requests pass
    /// under the echo class (`icmp_rate_limited` above its level, or refused by its budget);
    /// the rest is denied.
    fn icmp(&mut self, p: &Pkt) -> u32 {
        let r = icmp(p.icmp_type, p.ipv6);
        let echo = if p.ipv6 { p.icmp_type == 128 } else { p.icmp_type == 8 };
        let class = self.compiled.config.echo_class as u8;
        if r != reason::ICMP || !echo || class == 0 {
            return r;
        }
        match self.admit(p, class, false) {
            Some(reason::RATE_LIMITED) => reason::ICMP_RATE_LIMITED,
            Some(r) => r,
            None => reason::ICMP,
        }
    }

    fn port(&mut self, frame: &[u8], p: &Pkt, slot: u32) -> u32 {
        let rule = self.compiled.ports[port_slot(slot, p.dport)];
        if rule.flags & PORT_OPEN == 0 {
            let reply = (p.src, p.sport, p.dst, p.dport, p.proto);
            if self.flow_ports.contains(&(slot, p.dport)) && self.flows.contains(&reply) {
                return reason::RETURN_TRAFFIC;
            }
            return reason::PORT_CLOSED;
        }
        if rule.sets != 0 && self.sets_of(p) & rule.sets == 0 {
            return reason::SOURCE_NOT_ALLOWED;
        }
        if rule.class != 0
            && let Some(r) = self.admit(p, rule.class, rule.sets != 0)
        {
            return r;
        }
        let window = self.compiled.config.sip_window as usize;
        if rule.flags & PORT_SIP == 0 || window == 0 {
            return reason::PORT_OPEN;
        }
        let key = self.source_key(p);
        let (r, method) = sip(&frame[p.payload_off.min(frame.len())..], window);
        if r == reason::SIP_USER_AGENT && self.compiled.config.sip_ua_ban_ns != 0 {
            self.ban(key);
        }
        let class = method.map_or(0, |m| self.compiled.config.sip_method_class[m]);
        if class != 0
            && let Some(refused) = self.enforce((key, class, false), reason::SIP_METHOD_RATE_LIMITED)
        {
            return refused;
        }
        r
    }

    /// The set mask of the longest set prefix holding the source.
    fn sets_of(&self, p: &Pkt) -> u64 {
        if p.ipv6 {
            longest(&self.compiled.sets_v6, &std::net::Ipv6Addr::from(p.src), |n, a| (n.contains(a), n.prefix_len()))
        } else {
            let a = std::net::Ipv4Addr::new(p.src[12], p.src[13], p.src[14], p.src[15]);
            longest(&self.compiled.sets_v4, &a, |n, a| (n.contains(a), n.prefix_len()))
        }
    }
}

/// The mask of the longest prefix in `nets` that holds `a` (0 if none does); `test` says
/// whether a prefix holds the address and how long it is.
fn longest<N, A>(nets: &[(N, u64)], a: &A, test: impl Fn(&N, &A) -> (bool, u8)) -> u64 {
    nets.iter()
        .filter_map(|(n, m)| match test(n, a) {
            (true, len) => Some((len, *m)),
            (false, _) => None,
        })
        .max_by_key(|&(len, _)| len)
        .map_or(0, |(_, m)| m)
}

/// Packets a level (or budget) lets through back to back; `None` when it is off.
fn burst(l: &RateLevel) -> Option<u64> {
    (l.emission_ns != 0).then(|| l.tolerance_ns / l.emission_ns + 1)
}

/// ICMP by type alone: errors, echo requests and replies, neighbour discovery pass; the rest is
/// denied.
fn icmp(t: u8, v6: bool) -> u32 {
    let pass = if v6 { matches!(t, 1..=3 | 128 | 129 | 133..=137) } else { matches!(t, 0 | 3 | 8 | 11) };
    if pass { reason::ICMP } else { reason::ICMP_DENIED }
}

/// The SIP checks by RFC 3261's grammar, with the generated policies' User-Agent list: the
/// reason, and the method of a request that passed the User-Agent check (the method limits
/// apply to it).
fn sip(payload: &[u8], window: usize) -> (u32, Option<usize>) {
    match grammar::read(payload, window, true) {
        Reading::NotRequest | Reading::LineTooLong => (reason::PORT_OPEN, None),
        Reading::Evasion => (reason::SIP_EVASION, None),
        Reading::Request(r) => match r.user_agent {
            None => (reason::PORT_OPEN, Some(r.method)),
            Some(ua) => {
                let value: Vec<u8> = grammar::ua_bytes(payload, &ua).collect();
                match ua.verdict(sipgen::listed(&value)) {
                    UaVerdict::Listed => (reason::SIP_USER_AGENT, None),
                    UaVerdict::Overlong => (reason::SIP_EVASION, None),
                    UaVerdict::Cut | UaVerdict::Clean => (reason::PORT_OPEN, Some(r.method)),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_what_does_not_fit() {
        assert!(matches!(parse(&[0; 13]), Parsed::Malformed));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(matches!(parse(&arp), Parsed::NonIp));
        let mut tagged = vec![0u8; 60];
        for at in [12, 16, 20] {
            tagged[at..at + 2].copy_from_slice(&0x8100u16.to_be_bytes());
        }
        assert!(matches!(parse(&tagged), Parsed::Malformed), "a third tag");
    }

    fn udp4(src: [u8; 4], dport: u16) -> Vec<u8> {
        crate::packet::Packet::udp4(src, 12345, [10, 0, 0, 1], dport).payload(b"ping").bytes()
    }

    fn model(text: &str) -> Model {
        let (_, compiled) = voipwall::policy::parse("model.toml", text).expect("policy");
        Model::new(compiled, Lists::default(), Vec::new())
    }

    fn reasons(m: &mut Model, frames: &[Vec<u8>]) -> Vec<&'static str> {
        frames.iter().map(|f| reason::NAMES[m.run(f).reason as usize]).collect()
    }

    #[test]
    fn levels_count_their_burst_then_police_or_ban() {
        let mut m = model(
            "[[rule]]\nname = \"app\"\nproto = \"udp\"\nports = [\"7000\"]\nlimit = \"app\"\n\
             [limit.app]\nlevels = [{ pps = 1, burst = 2, ban = \"0\" }, { pps = 2, burst = 3, ban = \"1h\" }]\nunknown = \"off\"\n",
        );
        let f = udp4([198, 18, 0, 1], 7000);
        let got = reasons(&mut m, &[f.clone(), f.clone(), f.clone(), f.clone(), f]);
        // Level 1 polices the third packet (level 2 still counts it), level 2 bans on the fourth.
        assert_eq!(got, ["port_open", "port_open", "rate_limited", "rate_limited", "banned"]);
        assert_eq!(m.bans_raised, 1);
        // Another source has its own state.
        assert_eq!(reasons(&mut m, &[udp4([198, 18, 0, 2], 7000)]), ["port_open"]);
    }

    #[test]
    fn the_budget_is_shared_by_unknown_sources_and_skipped_by_known_ones() {
        let mut m = model(
            "[[rule]]\nname = \"app\"\nproto = \"udp\"\nports = [\"7000\"]\nlimit = \"app\"\n\
             [limit.app]\nlevels = [{ pps = 1, burst = 9, ban = \"0\" }]\nunknown = { pps = 1, burst = 2 }\n\
             [sets]\ncarriers = [\"198.19.0.0/24\"]\n",
        );
        let frames: Vec<Vec<u8>> = (1..=4).map(|i| udp4([198, 18, 0, i], 7000)).collect();
        assert_eq!(reasons(&mut m, &frames), ["port_open", "port_open", "unknown_over_budget", "unknown_over_budget"]);
        // A set member is known: no budget.
        assert_eq!(reasons(&mut m, &[udp4([198, 19, 0, 7], 7000)]), ["port_open"]);
        assert_eq!(m.learned, 1);
    }

    #[test]
    fn icmp_tables() {
        assert_eq!(icmp(8, false), reason::ICMP);
        assert_eq!(icmp(13, false), reason::ICMP_DENIED);
        assert_eq!(icmp(135, true), reason::ICMP);
        assert_eq!(icmp(130, true), reason::ICMP_DENIED);
    }
}
