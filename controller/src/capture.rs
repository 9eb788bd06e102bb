//! Drop samples (`[capture]`) from the `CAPTURE` ring buffer to where VoIP people look: pcapng
//! files (one per interface, rotated by size) whose every packet carries its drop reason as a
//! comment (`tshark -Y 'frame.comment contains "sip_user_agent"'`), and HEP3 to a collector
//! (HOMER, or `sngrep -L udp:ADDR:PORT`) for the SIP messages among them, with the drop reason
//! as the HEP correlation id (chunk 0x0011), so a collector groups them by reason.
//!
//! The program already limits samples to `pps` per reason and second; this side only writes.

use std::{
    fs::{self, File},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
};

use common::{CaptureRecord, reason};
use tracing::warn;

use crate::{paths, policy::capture::Capture};

/// One sample as the writers see it.
pub struct Sample<'a> {
    /// Unix time, microseconds.
    pub unix_us: u64,
    pub reason: u32,
    pub orig_len: u32,
    pub frame: &'a [u8],
}

impl<'a> Sample<'a> {
    /// A record of the ring buffer; `None` for a record of another size or a bad length.
    pub fn of(rec: &'a CaptureRecord, unix_us: u64) -> Option<Self> {
        let n = rec.cap_len as usize;
        (n <= rec.data.len() && (rec.reason as usize) < reason::NAMES.len()).then(|| Self {
            unix_us,
            reason: rec.reason,
            orig_len: rec.len,
            frame: &rec.data[..n],
        })
    }

    fn reason_name(&self) -> &'static str {
        reason::NAMES[self.reason as usize]
    }
}

/// The writers of one interface's `[capture]`.
pub struct Sink {
    pub config: Capture,
    pcap: Option<Pcap>,
    hep: Option<UdpSocket>,
    /// Failures are logged at most once a minute, with how many were not.
    last_warn: Option<std::time::Instant>,
    suppressed: u64,
}

impl Sink {
    pub fn new(iface: &str, config: Capture) -> Self {
        let pcap = config.pcap.as_ref().map(|dir| Pcap::new(dir, iface, config.rotate_bytes, config.keep));
        let hep = config.hep.and_then(|a| {
            let bind: SocketAddr = if a.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
            UdpSocket::bind(bind).map_err(|e| warn!(error = %e, "capture: HEP socket unavailable")).ok()
        });
        Self { config, pcap, hep, last_warn: None, suppressed: 0 }
    }

    pub fn write(&mut self, s: &Sample) {
        let mut failed = Vec::new();
        if let Some(p) = &mut self.pcap
            && let Err(e) = p.write(s)
        {
            failed.push(format!("writing {}: {e}", p.current().display()));
        }
        if let (Some(sock), Some(to)) = (&self.hep, self.config.hep)
            && let Some(msg) = hep3(s, self.config.hep_id)
            && let Err(e) = sock.send_to(&msg, to)
        {
            failed.push(format!("sending HEP to {to}: {e}"));
        }
        for f in failed {
            if self.last_warn.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                warn!(suppressed = self.suppressed, "capture: {f}");
                self.last_warn = Some(std::time::Instant::now());
                self.suppressed = 0;
            } else {
                self.suppressed += 1;
            }
        }
    }
}

/// pcapng with rotation: `DIR/IFACE.pcapng`, moved to `.1`, `.2` ... when full.
struct Pcap {
    dir: PathBuf,
    name: String,
    rotate_bytes: u64,
    keep: u32,
    file: Option<File>,
    written: u64,
}

impl Pcap {
    fn new(dir: &Path, iface: &str, rotate_bytes: u64, keep: u32) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: format!("{}.pcapng", paths::encode_iface(iface)),
            rotate_bytes,
            keep,
            file: None,
            written: 0,
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}.{n}", self.name))
    }

    /// Move the current file to `.1` (and older ones up, the oldest beyond `keep` away).
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let _ = fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        if self.current().exists() {
            fs::rename(self.current(), self.rotated(1))?;
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            fs::create_dir_all(&self.dir)?;
            // A new file per daemon start: what an earlier run wrote moves to `.1`.
            self.rotate()?;
            let mut f = File::create(self.current())?;
            let head = [section_header(), interface_description()].concat();
            f.write_all(&head)?;
            self.written = head.len() as u64;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened"))
    }

    fn write(&mut self, s: &Sample) -> std::io::Result<()> {
        if self.file.is_some() && self.written >= self.rotate_bytes {
            self.rotate()?;
        }
        let block = enhanced_packet(s, &format!("voipwall drop: {}", s.reason_name()));
        self.open()?.write_all(&block)?;
        self.written += block.len() as u64;
        Ok(())
    }
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

/// A pcapng block: type, total length, body, total length.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let len = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn section_header() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    block(0x0A0D_0D0A, &body)
}

fn interface_description() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u16.to_le_bytes()); // LINKTYPE_ETHERNET
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(common::CAPTURE_SNAP as u32).to_le_bytes());
    block(1, &body)
}

/// An enhanced packet block (microsecond timestamps, the default resolution) with a comment.
fn enhanced_packet(s: &Sample, comment: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&((s.unix_us >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(s.unix_us as u32).to_le_bytes());
    body.extend_from_slice(&(s.frame.len() as u32).to_le_bytes());
    body.extend_from_slice(&s.orig_len.max(s.frame.len() as u32).to_le_bytes());
    body.extend_from_slice(s.frame);
    pad4(&mut body);
    body.extend_from_slice(&1u16.to_le_bytes()); // opt_comment
    body.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    body.extend_from_slice(comment.as_bytes());
    pad4(&mut body);
    body.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
    block(6, &body)
}

/// Addresses, ports and payload of an Ethernet frame carrying UDP or TCP.
struct Flow<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    payload: &'a [u8],
}

fn flow(f: &[u8]) -> Option<Flow<'_>> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        off += 4;
        ethertype = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
    }
    let ip = f.get(off + 2..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            // A fragment other than the first has no transport header.
            if u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff != 0 {
                return None;
            }
            let a = |o: usize| -> Option<IpAddr> {
                Some(IpAddr::V4(Ipv4Addr::new(*ip.get(o)?, *ip.get(o + 1)?, *ip.get(o + 2)?, *ip.get(o + 3)?)))
            };
            (a(12)?, a(16)?, *ip.get(9)?, ip.get(ihl..)?)
        }
        0x86dd => {
            let a = |o: usize| -> Option<IpAddr> {
                let b: [u8; 16] = ip.get(o..o + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            (a(8)?, a(24)?, *ip.get(6)?, ip.get(40..)?)
        }
        _ => return None,
    };
    let port = |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*l4.get(o)?, *l4.get(o + 1)?])) };
    let payload = match proto {
        17 => l4.get(8..)?,
        6 => l4.get(((*l4.get(12)? >> 4) as usize) * 4..)?,
        _ => return None,
    };
    Some(Flow { src, dst, proto, sport: port(0)?, dport: port(2)?, payload })
}

/// A SIP request or response line starts the payload.
fn is_sip(p: &[u8]) -> bool {
    let line = p.split(|&b| b == b'\n').next().unwrap_or_default();
    line.starts_with(b"SIP/2.0 ") || line.windows(8).any(|w| w.eq_ignore_ascii_case(b" SIP/2.0"))
}

fn chunk(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes()); // generic vendor
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((6 + value.len()) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The HEP3 message of a sample that carries SIP; `None` for anything else.
pub fn hep3(s: &Sample, agent_id: u32) -> Option<Vec<u8>> {
    let f = flow(s.frame)?;
    if !is_sip(f.payload) {
        return None;
    }
    let mut c = Vec::new();
    chunk(&mut c, 0x0001, &[if f.src.is_ipv4() { 2 } else { 10 }]);
    chunk(&mut c, 0x0002, &[f.proto]);
    match (f.src, f.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            chunk(&mut c, 0x0003, &a.octets());
            chunk(&mut c, 0x0004, &b.octets());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            chunk(&mut c, 0x0005, &a.octets());
            chunk(&mut c, 0x0006, &b.octets());
        }
        _ => return None,
    }
    chunk(&mut c, 0x0007, &f.sport.to_be_bytes());
    chunk(&mut c, 0x0008, &f.dport.to_be_bytes());
    chunk(&mut c, 0x0009, &((s.unix_us / 1_000_000) as u32).to_be_bytes());
    chunk(&mut c, 0x000a, &((s.unix_us % 1_000_000) as u32).to_be_bytes());
    chunk(&mut c, 0x000b, &[1]); // SIP
    chunk(&mut c, 0x000c, &agent_id.to_be_bytes());
    chunk(&mut c, 0x0011, format!("voipwall-drop:{}", s.reason_name()).as_bytes());
    chunk(&mut c, 0x000f, f.payload);
    let mut msg = Vec::with_capacity(6 + c.len());
    msg.extend_from_slice(b"HEP3");
    msg.extend_from_slice(&((6 + c.len()) as u16).to_be_bytes());
    msg.extend_from_slice(&c);
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register_frame() -> Vec<u8> {
        let sip = b"REGISTER sip:pbx SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n";
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + sip.len()) as u16;
        f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1]);
        f.extend_from_slice(&5070u16.to_be_bytes());
        f.extend_from_slice(&5060u16.to_be_bytes());
        f.extend_from_slice(&((8 + sip.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(sip);
        f
    }

    #[test]
    fn hep3_carries_addresses_ports_reason_and_the_sip_message() {
        let frame = register_frame();
        let s = Sample { unix_us: 1_700_000_000_123_456, reason: reason::SIP_USER_AGENT, orig_len: 0, frame: &frame };
        let m = hep3(&s, 2001).expect("SIP");
        assert_eq!(&m[..4], b"HEP3");
        assert_eq!(u16::from_be_bytes([m[4], m[5]]) as usize, m.len());
        let mut chunks = std::collections::BTreeMap::new();
        let mut o = 6;
        while o < m.len() {
            let kind = u16::from_be_bytes([m[o + 2], m[o + 3]]);
            let len = u16::from_be_bytes([m[o + 4], m[o + 5]]) as usize;
            chunks.insert(kind, m[o + 6..o + len].to_vec());
            o += len;
        }
        assert_eq!(o, m.len());
        assert_eq!(chunks[&3], [192, 0, 2, 7]);
        assert_eq!(chunks[&8], 5060u16.to_be_bytes());
        assert_eq!(chunks[&9], 1_700_000_000u32.to_be_bytes());
        assert_eq!(chunks[&0x11], b"voipwall-drop:sip_user_agent");
        assert!(chunks[&0xf].starts_with(b"REGISTER sip:pbx SIP/2.0"));
        let mut rtp = frame[..42].to_vec();
        rtp.extend_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xff, 0xfe]);
        let s = Sample { frame: &rtp, ..s };
        assert!(hep3(&s, 1).is_none(), "not SIP: no HEP");
    }

    #[test]
    fn pcapng_blocks_are_aligned_and_self_describing() {
        let frame = register_frame();
        let s = Sample { unix_us: 1, reason: reason::BLOCK_LIST, orig_len: 2000, frame: &frame };
        for b in [section_header(), interface_description(), enhanced_packet(&s, "voipwall drop: block_list")] {
            assert!(b.len().is_multiple_of(4));
            let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, b.len());
            assert_eq!(&b[len - 4..], &b[4..8]);
        }
    }
}
