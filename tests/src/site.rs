//! The end-to-end topology and its traffic tools. A `pbx` namespace whose public veth carries
//! voipwall is joined through a bridge (in a namespace of its own, with `bridge-nf-call-*` off)
//! to `phone`, `carrier`, `admin` and `attacker` namespaces, each with IPv4 and IPv6 addresses.
//! Everything is created by the test and removed on drop; every generator is bounded in count
//! and time.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    daemon::pace,
    netns::{NetNs, veth},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One namespace on the bridge.
pub struct Host {
    pub ns: NetNs,
    /// Its interface towards the bridge.
    pub iface: String,
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

impl Host {
    pub fn ip(&self) -> &str {
        &self.v4[0]
    }

    pub fn ip6(&self) -> &str {
        &self.v6[0]
    }
}

pub struct Site {
    pub pbx: Host,
    pub phone: Host,
    pub carrier: Host,
    pub admin: Host,
    /// Six addresses, all inside [`Site::attacker_range`].
    pub attacker: Host,
    /// Holds the bridge; declared last so it goes after the hosts.
    pub switch: NetNs,
    pub net: u8,
}

impl Site {
    pub fn new() -> Self {
        let n = (NEXT.fetch_add(1, Ordering::Relaxed) % 200 + 20) as u8;
        let switch = NetNs::new("sw");
        switch.sh("ip link add br0 type bridge && ip link set br0 up");
        let mk = |tag: &str, hosts: &[u8]| -> Host {
            let ns = NetNs::new(tag);
            let iface = format!("{tag}{n}");
            let port = format!("p{tag}{n}");
            veth(&ns, &iface, &switch, &port);
            switch.sh(&format!("ip link set {port} master br0"));
            let v4: Vec<String> = hosts.iter().map(|h| format!("10.99.{n}.{h}")).collect();
            let v6: Vec<String> = hosts.iter().map(|h| format!("fd99:{n}::{h}")).collect();
            let mut cmd = String::new();
            for (a, b) in v4.iter().zip(&v6) {
                cmd.push_str(&format!("ip addr add {a}/24 dev {iface} && ip -6 addr add {b}/64 dev {iface} nodad && "));
            }
            cmd.push_str("true");
            ns.sh(&cmd);
            Host { ns, iface, v4, v6 }
        };
        let pbx = mk("pbx", &[1]);
        // The pbx tells replies from RTP apart: its own ephemeral ports stay out of every RTP
        // range (Linux's default 32768-60999 overlaps 35000-65000). ICMP errors are not rate
        // limited, so a port sweep sees every closed port it reaches.
        pbx.ns.sh(
            "sysctl -qw net.ipv4.ip_local_port_range='61000 61999' net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0",
        );
        pbx.ns.sh_quiet("sysctl -qw net.ipv4.icmp_msgs_per_sec=1000000 net.ipv4.icmp_msgs_burst=1000000");
        let phone = mk("ph", &[2]);
        let carrier = mk("ca", &[3]);
        let admin = mk("ad", &[4]);
        let attacker = mk("at", &[65, 66, 67, 68, 69, 70]);
        // Neighbours resolved up front, so the first packets of a test are not ARP-bound.
        for h in [&phone, &carrier, &admin, &attacker] {
            h.ns.sh_quiet(&format!("ping -c1 -W1 {} >/dev/null; ping -6 -c1 -W1 {} >/dev/null", pbx.ip(), pbx.ip6()));
        }
        Self { pbx, phone, carrier, admin, attacker, switch, net: n }
    }

    /// The attacker's addresses as one CIDR.
    pub fn attacker_range(&self) -> String {
        format!("10.99.{}.64/27", self.net)
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// A call's media: RTP at 50 packets/s (20 ms of G.711) from `local` to an echo at `remote`,
/// counting which packets came back.
pub struct RtpCall {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<Vec<u64>>>,
}

/// What came back.
#[derive(Debug)]
pub struct RtpStats {
    pub sent: u64,
    pub received: u64,
    pub lost: Vec<u64>,
}

impl RtpStats {
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 { 100.0 } else { 100.0 * self.lost.len() as f64 / self.sent as f64 }
    }
}

impl RtpCall {
    pub fn start(ns: &NetNs, local: &str, remote: &str) -> Self {
        let sock = ns.enter(|| UdpSocket::bind(local)).unwrap_or_else(|e| panic!("bind {local}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let target: SocketAddr = remote.parse().unwrap();
        let rx = sock.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let sender = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            let mut pkt = [0u8; 172];
            // Bounded: two minutes at most even if the test never stops it.
            while !s1.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                // RTP v2, PT 0 (PCMU), sequence, timestamp, SSRC; the payload starts with the
                // full sequence number.
                pkt[0] = 0x80;
                pkt[1] = 0;
                pkt[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
                pkt[4..8].copy_from_slice(&((seq * 160) as u32).to_be_bytes());
                pkt[8..12].copy_from_slice(&0x766f_6970u32.to_be_bytes());
                pkt[12..20].copy_from_slice(&seq.to_be_bytes());
                let _ = sock.send_to(&pkt, target);
                seq += 1;
                pace(start, seq, Duration::from_millis(20));
            }
            seq
        });
        let s2 = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            let mut quiet: Option<Instant> = None;
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) if n >= 20 => {
                        got.push(u64::from_be_bytes(buf[12..20].try_into().unwrap()));
                        quiet = None;
                    }
                    _ => {
                        if s2.load(Ordering::Relaxed)
                            && quiet.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(300)
                        {
                            break;
                        }
                    }
                }
            }
            got
        });
        Self { stop, sender: Some(sender), receiver: Some(receiver) }
    }

    pub fn finish(mut self) -> RtpStats {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().unwrap().join().unwrap();
        let mut got = self.receiver.take().unwrap().join().unwrap();
        got.sort_unstable();
        got.dedup();
        let lost = crate::daemon::missing(sent, &got);
        RtpStats { sent, received: got.len() as u64, lost }
    }
}

impl Drop for RtpCall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A media server's RTP socket that answers only the peer it negotiated with, as Asterisk's
/// `strictrtp` or rtpengine do: it echoes datagrams from `peer` and counts the others (the
/// spoofed datagrams that reached it). Bounded: stops when dropped, or after two minutes.
pub struct StrictEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl StrictEcho {
    pub fn start(ns: &NetNs, local: &str, peer: &str) -> Self {
        let sock = ns.enter(|| UdpSocket::bind(local)).unwrap_or_else(|e| panic!("bind {local}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let peer: std::net::IpAddr = peer.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut others = 0u64;
            let mut buf = [0u8; 2048];
            while !s1.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if from.ip() == peer {
                        let _ = sock.send_to(&buf[..n], from);
                    } else {
                        others += 1;
                    }
                }
            }
            others
        });
        Self { stop, handle: Some(handle) }
    }

    /// Stop: how many datagrams came from others than the peer.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for StrictEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// UDP datagrams from `sources` (round robin) to `dst` at `pps` for at most `duration`, until
/// stopped. Payloads are `payload` with `{n}` replaced by a running number.
pub struct Flood {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
    pub started: Instant,
}

impl Flood {
    pub fn start(ns: &NetNs, sources: &[String], dst: &str, payload: &str, pps: u64, duration: Duration) -> Self {
        let socks: Vec<UdpSocket> = sources
            .iter()
            .map(|s| ns.enter(|| UdpSocket::bind(format!("{s}:0"))).unwrap_or_else(|e| panic!("bind {s}: {e}")))
            .collect();
        let target: SocketAddr = dst.parse().unwrap();
        let payload = payload.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let gap = Duration::from_nanos(1_000_000_000 / pps.max(1));
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) && started.elapsed() < duration {
                let msg = payload.replace("{n}", &n.to_string());
                let _ = socks[(n % socks.len() as u64) as usize].send_to(msg.as_bytes(), target);
                n += 1;
                pace(started, n, gap);
            }
            n
        });
        Self { stop, handle: Some(handle), started }
    }

    /// Stop; datagrams sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A UDP sink that remembers when the last datagram arrived from each source.
pub struct Sink {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub last: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, u64)>>>,
}

impl Sink {
    pub fn start(ns: &NetNs, addr: &str) -> Self {
        let sock = ns.enter(|| UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let last: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, u64)>>> = Arc::default();
        let (s, l) = (stop.clone(), last.clone());
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let now = Instant::now();
                    let mut m = l.lock().unwrap();
                    let e = m.entry(from.ip()).or_insert((now, 0));
                    *e = (now, e.1 + 1);
                }
            }
        });
        Self { stop, handle: Some(handle), last }
    }

    /// The last arrival from any of `sources`, and how many arrived from them.
    pub fn last_from(&self, sources: &[String]) -> (Option<Instant>, u64) {
        let m = self.last.lock().unwrap();
        let mut last = None;
        let mut count = 0;
        for s in sources {
            if let Some((t, c)) = m.get(&s.parse::<std::net::IpAddr>().unwrap()) {
                last = Some(last.map_or(*t, |l: Instant| l.max(*t)));
                count += c;
            }
        }
        (last, count)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn raw_socket(proto: i32) -> OwnedFd {
    // SAFETY: plain socket call; the fd is owned on return.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh, valid fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A 16 MiB receive buffer (SO_RCVBUFFORCE, as root), so a sweep's answers wait for a collector
/// that the scheduler holds back instead of being dropped.
fn big_receive_buffer(fd: i32) {
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a valid int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
}

fn recv_timeout(fd: &OwnedFd, ms: i64) {
    let tv = libc::timeval { tv_sec: 0, tv_usec: (ms * 1000) as libc::suseconds_t };
    // SAFETY: setsockopt with a valid timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

fn send_to_v4(fd: &OwnedFd, data: &[u8], dst: Ipv4Addr, port: u16) {
    // SAFETY: a zeroed sockaddr_in filled in, and a valid buffer.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from(dst).to_be();
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
    }
}

/// Probes every port with `probe`, then again those that did not answer, `rounds` times in all,
/// as a port scanner retransmits: a probe or its answer lost while the machine is busy (a full
/// veth ring, a socket buffer the collector was too slow to drain) is then not taken for a
/// filtered port. A retry can only add ports that answer, never hide an extra one.
fn sweep_rounds(rounds: usize, probe: impl Fn(&[u16]) -> BTreeSet<u16>) -> BTreeSet<u16> {
    let mut found = BTreeSet::new();
    for _ in 0..rounds.max(1) {
        let silent: Vec<u16> = (1..=u16::MAX).filter(|p| !found.contains(p)).collect();
        found.extend(probe(&silent));
    }
    found
}

/// Every TCP port of `dst` that answers a SYN from `src` (SYN-ACK or RST: the SYN got through),
/// sending at `pps`; unanswered ports are probed again, `rounds` probes in all.
pub fn tcp_sweep(ns: &NetNs, src: &str, dst: &str, pps: u64, rounds: usize) -> BTreeSet<u16> {
    sweep_rounds(rounds, |ports| tcp_probe_ports(ns, src, dst, pps, ports))
}

fn tcp_probe_ports(ns: &NetNs, src: &str, dst: &str, pps: u64, ports: &[u16]) -> BTreeSet<u16> {
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    const SPORT: u16 = 41234;
    ns.enter(move || {
        let tx = raw_socket(libc::IPPROTO_TCP);
        let rx = raw_socket(libc::IPPROTO_TCP);
        recv_timeout(&rx, 100);
        big_receive_buffer(rx.as_raw_fd());
        let done = Arc::new(AtomicBool::new(false));
        let d2 = done.clone();
        let collector = std::thread::spawn(move || {
            let mut found = BTreeSet::new();
            let mut buf = [0u8; 1500];
            let mut quiet: Option<Instant> = None;
            loop {
                // SAFETY: reading into a valid buffer.
                let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n >= 40 {
                    let ihl = ((buf[0] & 0xf) * 4) as usize;
                    let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                    let t = &buf[ihl..n as usize];
                    let (sport, dport, flags) =
                        (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]), t[13]);
                    if from == dst && dport == SPORT && (flags & 0x12 == 0x12 || flags & 0x04 != 0) {
                        found.insert(sport);
                    }
                    continue;
                }
                if d2.load(Ordering::Relaxed)
                    && quiet.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(1500)
                {
                    break;
                }
            }
            found
        });
        let start = Instant::now();
        for (i, &port) in ports.iter().enumerate() {
            let mut seg = [0u8; 20];
            seg[0..2].copy_from_slice(&SPORT.to_be_bytes());
            seg[2..4].copy_from_slice(&port.to_be_bytes());
            seg[4..8].copy_from_slice(&0x1000_0000u32.wrapping_add(port as u32).to_be_bytes());
            seg[12] = 5 << 4;
            seg[13] = 0x02;
            seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let mut pseudo = Vec::with_capacity(32);
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&seg);
            let c = crate::packet::checksum(&pseudo, 0);
            seg[16..18].copy_from_slice(&c.to_be_bytes());
            send_to_v4(&tx, &seg, dst, 0);
            pace(start, i as u64 + 1, Duration::from_nanos(1_000_000_000 / pps.max(1)));
        }
        done.store(true, Ordering::Relaxed);
        collector.join().unwrap()
    })
}

/// Every UDP port of `dst` that a datagram from `src` reaches: the host answers an ICMP port
/// unreachable (or a reply) for it. Unanswered ports are probed again, `rounds` probes in all.
pub fn udp_sweep(ns: &NetNs, src: &str, dst: &str, pps: u64, rounds: usize) -> BTreeSet<u16> {
    sweep_rounds(rounds, |ports| udp_probe_ports(ns, src, dst, pps, ports))
}

fn udp_probe_ports(ns: &NetNs, src: &str, dst: &str, pps: u64, ports: &[u16]) -> BTreeSet<u16> {
    let (srca, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    const SPORT: u16 = 41235;
    ns.enter(move || {
        let tx = UdpSocket::bind((srca, SPORT)).expect("bind the sweep socket");
        let rx = raw_socket(libc::IPPROTO_ICMP);
        recv_timeout(&rx, 100);
        big_receive_buffer(rx.as_raw_fd());
        big_receive_buffer(tx.as_raw_fd());
        tx.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let replies = tx.try_clone().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (d2, d3) = (done.clone(), done.clone());
        let icmp = std::thread::spawn(move || {
            let mut found = BTreeSet::new();
            let mut buf = [0u8; 1500];
            let mut quiet: Option<Instant> = None;
            loop {
                // SAFETY: reading into a valid buffer.
                let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as usize;
                if n != usize::MAX && n > 28 + 28 {
                    let ihl = ((buf[0] & 0xf) * 4) as usize;
                    let icmp = &buf[ihl..n];
                    if icmp[0] == 3 && icmp[1] == 3 {
                        let inner = &icmp[8..];
                        let iihl = ((inner[0] & 0xf) * 4) as usize;
                        let udp = &inner[iihl..];
                        let (sport, dport) =
                            (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
                        if sport == SPORT {
                            found.insert(dport);
                        }
                    }
                    continue;
                }
                if d2.load(Ordering::Relaxed)
                    && quiet.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(1500)
                {
                    break;
                }
            }
            found
        });
        let answers = std::thread::spawn(move || {
            let mut found = BTreeSet::new();
            let mut buf = [0u8; 1500];
            let mut quiet: Option<Instant> = None;
            loop {
                match replies.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        found.insert(from.port());
                    }
                    Err(_) => {
                        if d3.load(Ordering::Relaxed)
                            && quiet.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(1500)
                        {
                            break;
                        }
                    }
                }
            }
            found
        });
        let start = Instant::now();
        for (i, &port) in ports.iter().enumerate() {
            let _ = tx.send_to(b"?", (dst, port));
            pace(start, i as u64 + 1, Duration::from_nanos(1_000_000_000 / pps.max(1)));
        }
        done.store(true, Ordering::Relaxed);
        let mut found = icmp.join().unwrap();
        found.extend(answers.join().unwrap());
        found
    })
}

/// Counts, with nftables in `ns` (an independent witness, after XDP), the UDP datagrams to
/// `port` from any source but `legit`: the flood packets that passed XDP.
pub struct PassedCounter<'a> {
    ns: &'a NetNs,
}

impl<'a> PassedCounter<'a> {
    pub fn new(ns: &'a NetNs, port: u16, legit: &[&str]) -> Self {
        let (v4, v6): (Vec<&str>, Vec<&str>) = legit.iter().partition(|a| !a.contains(':'));
        let set = |l: &[&str]| if l.is_empty() { "{ 0.0.0.0 }".to_string() } else { format!("{{ {} }}", l.join(", ")) };
        let set6 = |l: &[&str]| if l.is_empty() { "{ ::1 }".to_string() } else { format!("{{ {} }}", l.join(", ")) };
        ns.sh(&format!(
            "nft -f - <<'EOF'\ntable inet vwpassed {{\n counter passed {{ }}\n chain pre {{\n  type filter hook prerouting priority -300;\n  ip saddr != {} udp dport {port} counter name passed\n  ip6 saddr != {} udp dport {port} counter name passed\n }}\n}}\nEOF",
            set(&v4),
            set6(&v6)
        ));
        Self { ns }
    }

    pub fn packets(&self) -> u64 {
        let out = self.ns.sh("nft list counter inet vwpassed passed");
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in: {out}"))
    }
}

/// Whether a UDP datagram from `src` to `dst:port` reaches the host: it answers, or its ICMP
/// port unreachable comes back (three tries, 400 ms each).
pub fn udp_probe(ns: &NetNs, src: &str, dst: &str, port: u16) -> bool {
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    ns.enter(move || {
        let s = UdpSocket::bind((src, 0)).expect("bind the probe socket");
        s.connect((dst, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
        let mut buf = [0u8; 1500];
        (0..3).any(|_| {
            let _ = s.send(b"probe");
            match s.recv(&mut buf) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            }
        })
    })
}

/// A random-source flood from trafgen (Debian's `netsniff-ng`): one frame template whose source
/// address (and source port) is random in every packet, checksums recomputed by trafgen, sent
/// out of `iface` in `ns` as fast as trafgen goes (or at `pps`), bounded by a packet count and by
/// `timeout(1)`.
pub struct Trafgen {
    child: Option<std::process::Child>,
    out: std::path::PathBuf,
    pub started: Instant,
}

/// What a [`Trafgen`] flood carries.
pub enum Spoofed<'a> {
    /// UDP from random IPv4 sources to `dst:port`.
    Udp4 { dst: &'a str, port: u16 },
    /// UDP from random IPv6 /64s to `dst:port`.
    Udp6 { dst: &'a str, port: u16 },
    /// UDP from random IPv4 sources to every port of `dst` in `lo..=hi`, in turn.
    Udp4Range { dst: &'a str, lo: u16, hi: u16 },
    /// TCP SYNs from random IPv4 sources inside 198.18.0.0/16 (so the receiver can route its
    /// SYN-ACKs into a sink) to `dst:port`.
    Syn4 { dst: &'a str, port: u16 },
}

/// A [`Trafgen`] flood: what, with which UDP payload, how many packets at most, how fast
/// (`None`: as fast as trafgen goes) and for how long at most.
pub struct FloodSpec<'a> {
    pub what: Spoofed<'a>,
    pub payload: &'a [u8],
    pub count: u64,
    pub pps: Option<u64>,
    pub limit: Duration,
}

impl Trafgen {
    /// Start a flood out of `iface` in `ns` towards `dst_mac`; its files go to `dir`.
    pub fn start(ns: &NetNs, iface: &str, dst_mac: [u8; 6], spec: FloodSpec, dir: &std::path::Path) -> Self {
        let FloodSpec { what, payload, count, pps, limit } = spec;
        let bytes: Vec<String> = payload.iter().map(|b| format!("0x{b:02x}")).collect();
        let body = if bytes.is_empty() { String::new() } else { format!(", {}", bytes.join(", ")) };
        let mac = dst_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let l34 = match what {
            Spoofed::Udp4 { dst, port } => {
                format!("ipv4(sa=drnd(), da={dst}, ttl=64), udp(sp=drnd(1024, 65535), dp={port})")
            }
            Spoofed::Udp6 { dst, port } => format!(
                "ipv6(sa=2001:db8::1, sa[0:4]=drnd(), sa[4:4]=drnd(), da={dst}, hl=64), udp(sp=drnd(1024, 65535), dp={port})"
            ),
            Spoofed::Udp4Range { dst, lo, hi } => {
                format!("ipv4(sa=drnd(), da={dst}, ttl=64), udp(sp=drnd(1024, 65535), dp=dinc({lo}, {hi}))")
            }
            Spoofed::Syn4 { dst, port } => format!(
                "ipv4(sa=198.18.0.1, sa[2:2]=drnd(), da={dst}, ttl=64), tcp(sp=drnd(1024, 65535), dp={port}, seq=drnd(), syn, win=64240)"
            ),
        };
        let cfg = format!("{{ eth(da={mac}), {l34}{body} }}\n");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("trafgen-{n}.cfg"));
        std::fs::write(&path, cfg).unwrap();
        let out = dir.join(format!("trafgen-{n}.out"));
        let mut cmd = std::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &ns.name,
            "timeout",
            "-s",
            "INT",
            "-k",
            "2",
            &limit.as_secs().max(1).to_string(),
            "trafgen",
        ])
        .args(["-o", iface, "-i"])
        .arg(&path)
        .args(["-n", &count.to_string(), "--cpus", "1"]);
        // `-t 0`: sendto(2) per packet, which waits while the veth's ring is full; the TX_RING
        // path gives up with EAGAIN when the receiver's XDP program applies backpressure.
        cmd.args(["-t", "0"]);
        if let Some(pps) = pps {
            cmd.args(["-b", &format!("{pps}pps")]);
        }
        // trafgen prints its summary on stdout or stderr depending on how it ended: both go
        // to the file.
        let file = std::fs::File::create(&out).unwrap();
        let child = cmd.stdout(file.try_clone().unwrap()).stderr(file).spawn().expect("spawn trafgen");
        Self { child: Some(child), out, started: Instant::now() }
    }

    /// Wait for the flood to end: packets sent.
    pub fn wait(mut self) -> u64 {
        let _ = self.child.take().expect("child").wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let sent = text
            .lines()
            .find(|l| l.contains("packets outgoing"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        sent.unwrap_or_else(|| panic!("trafgen printed no packet count:\n{text}"))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The `ip netns exec` child runs timeout(1), which ends trafgen.
            // SAFETY: signalling a child this test spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}
