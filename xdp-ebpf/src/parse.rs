//! Header parsing, one function per layer advancing a byte offset (xdp-tools'
//! `parsing_helpers.h` shape). Shared by the XDP ingress program and the TC egress program.
//!
//! Every read goes through [`ptr_at`], which is also the bounds check the verifier needs. Any
//! header that is cut short, or whose length fields do not fit the frame, is an `Err(())`, which
//! the callers turn into the `malformed` reason.
//!
//! network-types' structs give the header layouts; their enum-typed fields (`IpProto`,
//! `EtherType` inside `VlanHdr`) are never read, because a wire value without a matching variant
//! would be undefined behaviour. Those bytes are read as integers at their offsets instead.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use common::{MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, addr::v4_mapped};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

// EtherTypes (IEEE 802 numbers, as in `linux/if_ether.h`).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag and 802.1ad service tag, 4 bytes each.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_TAG_LEN: usize = 4;

// Upper-layer protocols the decision chain reads (IANA protocol numbers).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Not a fragment, or an IPv6 atomic fragment (offset 0, no more fragments).
pub const FRAG_NONE: u8 = 0;
/// Offset 0 with more fragments: carries the transport header.
pub const FRAG_FIRST: u8 = 1;
/// Offset > 0: no transport header, inherits the first fragment's verdict.
pub const FRAG_LATER: u8 = 2;

/// TCP flag bits (RFC 9293 section 3.1).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The bytes of a frame: `start..end` of the XDP buffer or of the TC socket buffer's linear
/// part. Taken from the context in the entry point and passed down as two plain words: handing a
/// context to a non-inlined function lets LLVM re-derive `data_end` there with a zero-extension,
/// and the verifier forbids arithmetic on `pkt_end`.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn of_xdp(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn of_tc(ctx: &TcContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end() }
    }
}

/// The one way to touch packet memory: a pointer to a `T` at `offset`, or `Err` if it does not
/// fit. The comparison against `end` is what lets the verifier accept the later dereference.
#[inline(always)]
pub fn ptr_at<T>(frame: &Frame, offset: usize) -> Result<*const T, ()> {
    let start = frame.start;
    let end = frame.end;
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

/// What the decision chain needs to know about an IP packet.
///
/// 8-byte aligned and exactly 48 bytes: LLVM's BPF backend then zeroes it with six 8-byte
/// stores; an odd size or alignment made it call a byte-by-byte `memset` loop, which was most of
/// the parser's cost.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Packet {
    /// Source address, network byte order, IPv4-mapped for IPv4.
    pub src: [u8; 16],
    /// Destination address, same encoding.
    pub dst: [u8; 16],
    /// IPv4 identification or IPv6 fragment identification, host byte order.
    pub frag_id: u32,
    /// Transport ports, host byte order (0 for ICMP and non-first fragments).
    pub sport: u16,
    pub dport: u16,
    /// Offset of the transport payload from the frame start (0 when unknown).
    pub payload_off: u16,
    pub ipv6: bool,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// ICMP/ICMPv6 type.
    pub icmp_type: u8,
    pub tcp_flags: u8,
    /// `FRAG_*`.
    pub frag: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<Packet>() == 48);

impl Packet {
    /// An empty packet for [`parse`] to fill.
    #[inline(always)]
    pub const fn empty() -> Self {
        Self {
            src: [0; 16],
            dst: [0; 16],
            frag_id: 0,
            sport: 0,
            dport: 0,
            payload_off: 0,
            ipv6: false,
            proto: 0,
            icmp_type: 0,
            tcp_flags: 0,
            frag: FRAG_NONE,
            _pad: 0,
        }
    }

    /// The IPv4 source address (only meaningful when `!ipv6`).
    #[inline(always)]
    pub fn src_v4(&self) -> [u8; 4] {
        [self.src[12], self.src[13], self.src[14], self.src[15]]
    }
}

/// What [`parse`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// ARP, LLDP and every other non-IP frame.
    NonIp,
    /// IPv4 or IPv6: the packet was filled in.
    Ip,
}

/// Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags, then IPv4 or IPv6, into `pkt`.
///
/// Not inlined, and filling a caller-owned `Packet` instead of returning one: the parser's
/// temporaries then live in its own stack frame, not in the entry point's (the verifier allows
/// 512 bytes for the whole call chain).
#[inline(never)]
pub fn parse(start: usize, end: usize, pkt: &mut Packet) -> Result<Parsed, ()> {
    let frame = &Frame { start, end };
    let eth: *const EthHdr = ptr_at(frame, 0)?;
    // SAFETY: `ptr_at` checked that a whole EthHdr is inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: *const [u8; VLAN_TAG_LEN] = ptr_at(frame, off)?;
        // SAFETY: bounds checked by `ptr_at`.
        let tag = unsafe { *tag };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_TAG_LEN;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(frame, off, pkt).map(|()| Parsed::Ip),
        ETH_P_IPV6 => parse_ipv6(frame, off, pkt).map(|()| Parsed::Ip),
        // A third tag hides an IP packet we cannot see: refuse it rather than pass it blind.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => Ok(Parsed::NonIp),
    }
}

/// The frame most traffic is: untagged Ethernet, then IPv4 without options and not a fragment.
/// Read inline by the entry point, which then skips the call to [`parse`] (a BPF-to-BPF call
/// and return cost more than the reads on CPUs whose returns go through a return thunk).
/// `pkt` must be [`Packet::empty`]. `None` for any other frame, with nothing written, which
/// [`parse`] then reads from the start; otherwise what [`parse`] would answer, `pkt` filled as
/// it fills it (the transport header by the same [`parse_l4`]). The test suite's generated
/// frames (any IHL, TCP data offset, fragment bits, cut at any byte) check that both ways agree
/// with the model parser.
#[inline(always)]
pub fn plain_ipv4(start: usize, end: usize, pkt: &mut Packet) -> Option<Result<(), ()>> {
    const L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;
    if start + L4 > end {
        return None;
    }
    let eth = start as *const EthHdr;
    let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
    // SAFETY: the bytes checked above hold the Ethernet and IPv4 headers read below.
    unsafe {
        if u16::from_be((*eth).ether_type) != ETH_P_IP || (*ip).vihl != 0x45 {
            return None;
        }
        let tot_len = u16::from_be_bytes((*ip).tot_len) as usize;
        if tot_len < Ipv4Hdr::LEN
            || start + EthHdr::LEN + tot_len > end
            || u16::from_be_bytes((*ip).frags) & 0x3fff != 0
        {
            return None;
        }
        // IPv4-mapped (`::ffff:a.b.c.d`): the empty packet's first ten bytes are already zero.
        let mapped = |a: [u8; 4]| u64::from_le_bytes([0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]);
        *(pkt.src.as_mut_ptr().add(8) as *mut u64) = mapped((*ip).src_addr);
        *(pkt.dst.as_mut_ptr().add(8) as *mut u64) = mapped((*ip).dst_addr);
        pkt.proto = *(ip as *const u8).add(9);
        pkt.frag_id = u16::from_be_bytes((*ip).id) as u32;
    }
    Some(parse_l4(&Frame { start, end }, L4, pkt))
}

/// IPv4 with any IHL (options are skipped, RFC 791 section 3.1).
#[inline(always)]
fn parse_ipv4(frame: &Frame, l3: usize, pkt: &mut Packet) -> Result<(), ()> {
    let ip: *const Ipv4Hdr = ptr_at(frame, l3)?;
    // SAFETY: a whole Ipv4Hdr is inside the frame; only integer fields are read.
    let (vihl, tot_len, id, frags, src, dst) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).id),
            u16::from_be_bytes((*ip).frags),
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    // SAFETY: byte 9 (protocol) is inside the checked header.
    let proto = unsafe { *(ip as *const u8).add(9) };
    if vihl >> 4 != 4 {
        return Err(());
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < Ipv4Hdr::LEN || tot_len < ihl || frame.start + l3 + tot_len > frame.end {
        return Err(());
    }
    pkt.src = v4_mapped(src);
    pkt.dst = v4_mapped(dst);
    pkt.ipv6 = false;
    pkt.proto = proto;
    pkt.frag_id = id as u32;
    let offset = frags & 0x1fff;
    let more = frags & 0x2000 != 0;
    pkt.frag = if offset != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    if pkt.frag == FRAG_LATER {
        return Ok(());
    }
    parse_l4(frame, l3 + ihl, pkt)
}

/// IPv6, skipping hop-by-hop, routing, destination-options and fragment headers (RFC 8200
/// section 4), at most [`MAX_IPV6_EXT_HEADERS`] of them.
#[inline(always)]
fn parse_ipv6(frame: &Frame, l3: usize, pkt: &mut Packet) -> Result<(), ()> {
    let ip: *const Ipv6Hdr = ptr_at(frame, l3)?;
    // SAFETY: a whole Ipv6Hdr is inside the frame; only integer fields are read.
    let (vcf0, payload_len, src, dst) =
        unsafe { ((*ip).vcf[0], u16::from_be_bytes((*ip).payload_len) as usize, (*ip).src_addr, (*ip).dst_addr) };
    // SAFETY: byte 6 (next header) is inside the checked header.
    let mut next = unsafe { *(ip as *const u8).add(6) };
    if vcf0 >> 4 != 6 {
        return Err(());
    }
    // Payload length 0 is only legal with a jumbo payload option (RFC 2675), which cannot
    // occur on Ethernet; the transport checks below still bound every read.
    if payload_len != 0 && frame.start + l3 + Ipv6Hdr::LEN + payload_len > frame.end {
        return Err(());
    }
    pkt.src = src;
    pkt.dst = dst;
    pkt.ipv6 = true;
    let mut off = l3 + Ipv6Hdr::LEN;
    let mut seen = 0;
    while seen < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h: *const [u8; 2] = ptr_at(frame, off)?;
                // SAFETY: bounds checked by `ptr_at`.
                let h = unsafe { *h };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let h: *const [u8; 8] = ptr_at(frame, off)?;
                // SAFETY: bounds checked by `ptr_at`.
                let h = unsafe { *h };
                next = h[0];
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                pkt.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                pkt.frag = if offset_flags >> 3 != 0 {
                    FRAG_LATER
                } else if offset_flags & 1 != 0 {
                    FRAG_FIRST
                } else {
                    FRAG_NONE
                };
                off += 8;
                if pkt.frag == FRAG_LATER {
                    // What follows is the middle of the datagram, not a header.
                    pkt.proto = next;
                    return Ok(());
                }
            }
            _ => break,
        }
        seen += 1;
    }
    if is_ipv6_ext_header(next) {
        // More extension headers than we are willing to walk.
        return Err(());
    }
    pkt.proto = next;
    parse_l4(frame, off, pkt)
}

/// IPv6 extension headers skipped on the way to the upper layer (RFC 8200 section 4.1).
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

#[inline(always)]
const fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT)
}

/// TCP, UDP, ICMP and ICMPv6 headers; other protocols carry nothing we read.
#[inline(always)]
fn parse_l4(frame: &Frame, off: usize, pkt: &mut Packet) -> Result<(), ()> {
    match pkt.proto {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(frame, off)?;
            // SAFETY: a whole TcpHdr is inside the frame; bytes 12 and 13 are data offset and
            // flags.
            let (sport, dport, doff, flags) = unsafe {
                (
                    u16::from_be_bytes((*tcp).source),
                    u16::from_be_bytes((*tcp).dest),
                    ((*(tcp as *const u8).add(12) >> 4) as usize) * 4,
                    *(tcp as *const u8).add(13),
                )
            };
            if doff < TcpHdr::LEN || frame.start + off + doff > frame.end {
                return Err(());
            }
            pkt.sport = sport;
            pkt.dport = dport;
            pkt.tcp_flags = flags;
            pkt.payload_off = (off + doff) as u16;
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(frame, off)?;
            // SAFETY: a whole UdpHdr is inside the frame.
            let (sport, dport) = unsafe { (u16::from_be_bytes((*udp).src), u16::from_be_bytes((*udp).dst)) };
            pkt.sport = sport;
            pkt.dport = dport;
            pkt.payload_off = (off + UdpHdr::LEN) as u16;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Every ICMP and ICMPv6 message starts with an 8-byte header (RFC 792, RFC 4443).
            let icmp: *const [u8; 8] = ptr_at(frame, off)?;
            // SAFETY: bounds checked by `ptr_at`.
            pkt.icmp_type = unsafe { (*icmp)[0] };
        }
        _ => {}
    }
    Ok(())
}
