//! A small packet builder for verdict tests: Ethernet, VLAN tags, IPv4 (with options and
//! fragments), IPv6 (with extension headers and fragments), TCP, UDP, ICMP, ICMPv6.
//! Checksums are filled in, so the same bytes are valid on a real interface.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Transport layer.
#[derive(Clone, Debug)]
pub enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Icmp {
        icmp_type: u8,
        code: u8,
    },
    /// Any other protocol number, with no header of its own.
    Raw {
        proto: u8,
    },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_RST: u8 = 0x04;

#[derive(Clone, Debug)]
pub enum Ip {
    V4 { src: Ipv4Addr, dst: Ipv4Addr, options: Vec<u8>, id: u16 },
    V6 { src: Ipv6Addr, dst: Ipv6Addr, ext: Vec<Ext> },
}

/// An IPv6 extension header placed before the transport header.
#[derive(Clone, Debug)]
pub enum Ext {
    HopByHop(usize),
    Routing(usize),
    DestOpts(usize),
    /// An atomic fragment header (offset 0, M = 0).
    AtomicFragment,
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub vlans: Vec<(u16, u16)>,
    pub ether_type: Option<u16>,
    pub ip: Ip,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(Ip::v4(src, dst), L4::Udp { sport, dport })
    }

    pub fn tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(Ip::v4(src, dst), L4::Tcp { sport, dport, flags })
    }

    pub fn icmp4(src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> Self {
        Self::new(Ip::v4(src, dst), L4::Icmp { icmp_type, code: 0 })
    }

    pub fn udp6(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self::new(Ip::v6(src, dst), L4::Udp { sport, dport })
    }

    pub fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Self::new(Ip::v6(src, dst), L4::Tcp { sport, dport, flags })
    }

    pub fn icmp6(src: &str, dst: &str, icmp_type: u8) -> Self {
        Self::new(Ip::v6(src, dst), L4::Icmp { icmp_type, code: 0 })
    }

    pub fn new(ip: Ip, l4: L4) -> Self {
        Self { vlans: Vec::new(), ether_type: None, ip, l4, payload: b"voipwall test".to_vec() }
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        if let Ip::V4 { options: o, .. } = &mut self.ip {
            *o = options.to_vec();
        }
        self
    }

    pub fn ipv4_id(mut self, new_id: u16) -> Self {
        if let Ip::V4 { id, .. } = &mut self.ip {
            *id = new_id;
        }
        self
    }

    pub fn ext(mut self, e: Ext) -> Self {
        if let Ip::V6 { ext, .. } = &mut self.ip {
            ext.push(e);
        }
        self
    }

    fn proto(&self) -> u8 {
        match (&self.l4, &self.ip) {
            (L4::Udp { .. }, _) => 17,
            (L4::Tcp { .. }, _) => 6,
            (L4::Icmp { .. }, Ip::V4 { .. }) => 1,
            (L4::Icmp { .. }, Ip::V6 { .. }) => 58,
            (L4::Raw { proto }, _) => *proto,
        }
    }

    /// Transport header plus payload, with checksum.
    fn transport(&self) -> Vec<u8> {
        let mut t = match self.l4 {
            L4::Udp { sport, dport } => {
                let len = (8 + self.payload.len()) as u16;
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(len.to_be_bytes());
                h.extend([0, 0]);
                h
            }
            L4::Tcp { sport, dport, flags } => {
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(1u32.to_be_bytes());
                h.extend(if flags & TCP_ACK != 0 { 1u32 } else { 0 }.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend(64240u16.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                h
            }
            L4::Icmp { icmp_type, code } => vec![icmp_type, code, 0, 0, 0, 1, 0, 1],
            L4::Raw { .. } => Vec::new(),
        };
        t.extend(&self.payload);
        let csum_at = match self.l4 {
            L4::Udp { .. } => Some(6),
            L4::Tcp { .. } => Some(16),
            L4::Icmp { .. } => Some(2),
            L4::Raw { .. } => None,
        };
        if let Some(at) = csum_at {
            let mut sum = 0u32;
            let icmpv4 = matches!((&self.l4, &self.ip), (L4::Icmp { .. }, Ip::V4 { .. }));
            if !icmpv4 {
                sum = self.pseudo_header_sum(t.len());
            }
            let c = checksum(&t, sum);
            let c = if c == 0 && matches!(self.l4, L4::Udp { .. }) { 0xffff } else { c };
            t[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        t
    }

    fn pseudo_header_sum(&self, len: usize) -> u32 {
        let mut b = Vec::new();
        match &self.ip {
            Ip::V4 { src, dst, .. } => {
                b.extend(src.octets());
                b.extend(dst.octets());
                b.extend([0, self.proto()]);
                b.extend((len as u16).to_be_bytes());
            }
            Ip::V6 { src, dst, .. } => {
                b.extend(src.octets());
                b.extend(dst.octets());
                b.extend((len as u32).to_be_bytes());
                b.extend([0, 0, 0, self.proto()]);
            }
        }
        sum16(&b, 0)
    }

    fn ethernet(&self, l3_type: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend([0x02, 0, 0, 0, 0, 0x02]);
        f.extend([0x02, 0, 0, 0, 0, 0x01]);
        for &(tpid, vid) in &self.vlans {
            f.extend(tpid.to_be_bytes());
            f.extend(vid.to_be_bytes());
        }
        f.extend(self.ether_type.unwrap_or(l3_type).to_be_bytes());
        f
    }

    /// The whole frame.
    pub fn bytes(&self) -> Vec<u8> {
        let transport = self.transport();
        match &self.ip {
            Ip::V4 { .. } => {
                let mut f = self.ethernet(ETH_P_IP);
                f.extend(self.ipv4_header(transport.len(), 0, false));
                f.extend(transport);
                f
            }
            Ip::V6 { .. } => {
                let mut f = self.ethernet(ETH_P_IPV6);
                let (ext, first) = self.ipv6_ext_bytes(None);
                f.extend(self.ipv6_header(ext.len() + transport.len(), first));
                f.extend(ext);
                f.extend(transport);
                f
            }
        }
    }

    /// The frame split into IP fragments whose payloads hold at most `chunk` bytes (a multiple
    /// of 8) of the transport datagram.
    pub fn fragments(&self, chunk: usize, frag_id: u32) -> Vec<Vec<u8>> {
        assert!(chunk.is_multiple_of(8) && chunk > 0);
        let transport = self.transport();
        let mut out = Vec::new();
        let mut off = 0;
        while off < transport.len() {
            let end = (off + chunk).min(transport.len());
            let more = end < transport.len();
            let piece = &transport[off..end];
            match &self.ip {
                Ip::V4 { .. } => {
                    let mut f = self.ethernet(ETH_P_IP);
                    let mut me = self.clone();
                    if let Ip::V4 { id, .. } = &mut me.ip {
                        *id = frag_id as u16;
                    }
                    f.extend(me.ipv4_header(piece.len(), (off / 8) as u16, more));
                    f.extend(piece);
                    out.push(f);
                }
                Ip::V6 { .. } => {
                    let mut f = self.ethernet(ETH_P_IPV6);
                    let (ext, first) = self.ipv6_ext_bytes(Some(((off / 8) as u16, more, frag_id)));
                    f.extend(self.ipv6_header(ext.len() + piece.len(), first));
                    f.extend(ext);
                    f.extend(piece);
                    out.push(f);
                }
            }
            off = end;
        }
        out
    }

    fn ipv4_header(&self, payload_len: usize, frag_off8: u16, more: bool) -> Vec<u8> {
        let Ip::V4 { src, dst, options, id } = &self.ip else { unreachable!() };
        let mut opts = options.clone();
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
        let ihl = 5 + opts.len() / 4;
        let mut h = vec![(4 << 4) | ihl as u8, 0];
        h.extend(((ihl * 4 + payload_len) as u16).to_be_bytes());
        h.extend(id.to_be_bytes());
        h.extend((frag_off8 | if more { 0x2000 } else { 0 }).to_be_bytes());
        h.extend([64, self.proto(), 0, 0]);
        h.extend(src.octets());
        h.extend(dst.octets());
        h.extend(opts);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn ipv6_header(&self, payload_len: usize, next: u8) -> Vec<u8> {
        let Ip::V6 { src, dst, .. } = &self.ip else { unreachable!() };
        let mut h = vec![0x60, 0, 0, 0];
        h.extend((payload_len as u16).to_be_bytes());
        h.push(next);
        h.push(64);
        h.extend(src.octets());
        h.extend(dst.octets());
        h
    }

    /// Extension headers (with an optional trailing fragment header) and the first next-header
    /// value.
    fn ipv6_ext_bytes(&self, frag: Option<(u16, bool, u32)>) -> (Vec<u8>, u8) {
        let Ip::V6 { ext, .. } = &self.ip else { unreachable!() };
        let mut kinds: Vec<(u8, Vec<u8>)> = Vec::new();
        for e in ext {
            let (t, body_units) = match e {
                Ext::HopByHop(n) => (0u8, *n),
                Ext::Routing(n) => (43, *n),
                Ext::DestOpts(n) => (60, *n),
                Ext::AtomicFragment => (44, 0),
            };
            let mut body = vec![0u8; 8 + 8 * body_units];
            if t == 44 {
                body = vec![0u8; 8];
            } else {
                body[1] = body_units as u8;
                if t == 43 {
                    body[2] = 0; // routing type 0 fields, segments left 0
                } else {
                    // PadN option filling the header.
                    body[2] = 1;
                    body[3] = (body.len() - 4) as u8;
                }
            }
            kinds.push((t, body));
        }
        if let Some((off8, more, id)) = frag {
            let mut body = vec![0u8; 8];
            body[2..4].copy_from_slice(&((off8 << 3) | more as u16).to_be_bytes());
            body[4..8].copy_from_slice(&id.to_be_bytes());
            kinds.push((44, body));
        }
        let mut out = Vec::new();
        let first = kinds.first().map_or(self.proto(), |k| k.0);
        for i in 0..kinds.len() {
            let next = kinds.get(i + 1).map_or(self.proto(), |k| k.0);
            let mut body = kinds[i].1.clone();
            body[0] = next;
            out.extend(body);
        }
        (out, first)
    }
}

impl Ip {
    pub fn v4(src: [u8; 4], dst: [u8; 4]) -> Self {
        Ip::V4 { src: src.into(), dst: dst.into(), options: Vec::new(), id: 0x1234 }
    }

    pub fn v6(src: &str, dst: &str) -> Self {
        Ip::V6 { src: src.parse().expect("IPv6 src"), dst: dst.parse().expect("IPv6 dst"), ext: Vec::new() }
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x01]);
    f.extend(ETH_P_ARP.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend([0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    f.extend([0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    f
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += word as u32;
    }
    sum
}

/// RFC 1071 internet checksum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = sum16(data, initial);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = Packet::udp4([192, 0, 2, 1], 5060, [192, 0, 2, 2], 5060).ipv4_options(&[1, 1, 1, 1]).bytes();
        let ihl = (p[14] & 0x0f) as usize * 4;
        assert_eq!(ihl, 24);
        assert_eq!(checksum(&p[14..14 + ihl], 0), 0);
    }

    #[test]
    fn fragments_reassemble_to_the_datagram() {
        let pkt = Packet::udp4([192, 0, 2, 1], 5060, [192, 0, 2, 2], 5060).payload(&[7u8; 3000]);
        let frags = pkt.fragments(1480, 77);
        assert_eq!(frags.len(), 3);
        let whole: Vec<u8> = frags.iter().flat_map(|f| f[14 + 20..].to_vec()).collect();
        assert_eq!(whole.len(), 8 + 3000);
        let v6 = Packet::udp6("2001:db8::1", 5060, "2001:db8::2", 5060).payload(&[7u8; 3000]).fragments(1232, 9);
        assert_eq!(v6.len(), 3);
        assert_eq!(v6[0][14 + 6], 44, "fragment header follows the IPv6 header");
    }
}
