//! A plain-Rust model of the data plane's decision chain: what the XDP program must do with a
//! frame, written from the rules (README "What it does to a packet"), not from the program.
//!
//! It reads the compiled policy the controller hands the kernel (port table, source sets with
//! their folded masks, the configuration), the allow/block lists as CIDRs (answered by longest
//! prefix, where the program uses its /16 gate, /24 slots and host blocks), and the bans. Its
//! state is the first fragments it has seen. What it does not model, and so what the
//! differential run keeps out of play: rate limits and the unknown-source budgets (the
//! generated policies make them generous and turn the budgets off), return traffic (no egress
//! runs, so no flow exists), SIP method limits and challenge counting, and time (fragments are
//! followed within a run far shorter than the fragment timeout).

use std::collections::HashMap;

use common::{
    MAX_FRAGMENTS_PER_DATAGRAM, POLICY_DRY_RUN, PORT_OPEN, PORT_SIP, PROTO_SLOT_TCP, PROTO_SLOT_UDP, port_slot, reason,
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

/// The model: a policy, lists, bans, the first fragments seen and the flows the host opened.
pub struct Model {
    pub compiled: CompiledPolicy,
    pub lists: Lists,
    /// Ban keys (the source as bans see it), all unexpired.
    pub bans: Vec<[u8; 16]>,
    frags: HashMap<FragKey, (u32, u32)>,
    /// Later fragments that inherited a first fragment's outcome.
    pub inherited: u64,
    flows: std::collections::HashSet<FlowKey>,
    /// (protocol slot, local port) the host opened a flow from.
    flow_ports: std::collections::HashSet<(u32, u16)>,
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
        }
    }

    /// Forget the fragments and flows seen (a fresh program state).
    pub fn reset(&mut self) {
        self.frags.clear();
        self.flows.clear();
        self.flow_ports.clear();
    }

    /// A frame the host sends (TC egress): a UDP datagram or TCP SYN from a local port the
    /// policy does not open opens a flow; a later packet of a known flow keeps it open.
    pub fn egress(&mut self, frame: &[u8]) {
        let Parsed::Ip(p) = parse(frame) else { return };
        let slot = match p.proto {
            6 => PROTO_SLOT_TCP,
            17 => PROTO_SLOT_UDP,
            _ => return,
        };
        if p.frag == Frag::Later || self.compiled.ports[port_slot(slot, p.sport)].flags & PORT_OPEN != 0 {
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
            1 if !p.ipv6 => icmp(p.icmp_type, false),
            58 if p.ipv6 => icmp(p.icmp_type, true),
            _ => reason::PROTOCOL_CLOSED,
        };
        if p.frag == Frag::First {
            self.frags.insert(fkey, (r, 0));
        }
        r
    }

    fn source_key(&self, p: &Pkt) -> [u8; 16] {
        if !p.ipv6 {
            return p.src;
        }
        common::addr::mask_prefix(p.src, self.compiled.config.ipv6_prefix)
    }

    fn port(&self, frame: &[u8], p: &Pkt, slot: u32) -> u32 {
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
        let window = self.compiled.config.sip_window as usize;
        if rule.flags & PORT_SIP != 0 && window != 0 {
            return sip(&frame[p.payload_off.min(frame.len())..], window);
        }
        reason::PORT_OPEN
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

/// ICMP: errors, echo replies and neighbour discovery pass; echo requests pass (their limit is
/// generous here); the rest is denied.
fn icmp(t: u8, v6: bool) -> u32 {
    let pass = if v6 { matches!(t, 1..=3 | 128 | 129 | 133..=137) } else { matches!(t, 0 | 3 | 8 | 11) };
    if pass { reason::ICMP } else { reason::ICMP_DENIED }
}

/// The SIP checks by RFC 3261's grammar, with the generated policies' User-Agent list.
pub fn sip(payload: &[u8], window: usize) -> u32 {
    match grammar::read(payload, window, true) {
        Reading::NotRequest | Reading::LineTooLong => reason::PORT_OPEN,
        Reading::Evasion => reason::SIP_EVASION,
        Reading::Request(r) => match r.user_agent {
            None => reason::PORT_OPEN,
            Some(ua) => {
                let value: Vec<u8> = grammar::ua_bytes(payload, &ua).collect();
                match ua.verdict(sipgen::listed(&value)) {
                    UaVerdict::Listed => reason::SIP_USER_AGENT,
                    UaVerdict::Overlong => reason::SIP_EVASION,
                    UaVerdict::Cut | UaVerdict::Clean => reason::PORT_OPEN,
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

    #[test]
    fn icmp_tables() {
        assert_eq!(icmp(8, false), reason::ICMP);
        assert_eq!(icmp(13, false), reason::ICMP_DENIED);
        assert_eq!(icmp(135, true), reason::ICMP);
        assert_eq!(icmp(130, true), reason::ICMP_DENIED);
    }
}
