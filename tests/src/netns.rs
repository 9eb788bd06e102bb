//! Network namespaces and veth pairs created by a test and removed on drop, even when the test
//! fails (aya's `test_helpers.rs` and bpfman's integration tests do the same). Never touches the
//! host's own interfaces.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A uniquely named network namespace, deleted on drop (which also deletes its veths).
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// `vw<tag><pid><n>`: unique per process and call.
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("vw{tag}{}x{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.sh("ip link set lo up");
        // br_netfilter is built in on this machine kind: keep bridges from filtering frames.
        ns.sh_quiet("sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0");
        ns
    }

    /// Run a shell command inside the namespace; panic with its output if it fails.
    #[track_caller]
    pub fn sh(&self, cmd: &str) -> String {
        let out = run_ok(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a shell command inside the namespace, ignoring failure.
    pub fn sh_quiet(&self, cmd: &str) -> Output {
        Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]).output().expect("spawn ip netns exec")
    }

    /// Run `f` on a thread whose network namespace is this one (sockets it opens, interfaces it
    /// names and programs it attaches are in the namespace).
    pub fn enter<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        enter_named(&self.name, f)
    }
}

/// [`NetNs::enter`] by the namespace's name (for threads that outlive a borrow of it).
pub fn enter_named<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/var/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A veth pair with one end in each namespace.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    run_ok(
        Command::new("ip")
            .args(["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name]),
    );
    a.sh(&format!("ip link set {a_if} up"));
    b.sh(&format!("ip link set {b_if} up"));
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two namespaces joined by a veth pair: `server` (`vs<n>`, 10.77.n.1/24, fd77:n::1/64) and
/// `client` (`vc<n>`, 10.77.n.2-9/24, fd77:n::2-9/64). Interface names are unique per topology.
pub struct Pair {
    pub server: NetNs,
    pub client: NetNs,
    pub server_if: String,
    pub client_if: String,
    pub net: u8,
}

impl Pair {
    pub fn new() -> Self {
        let server = NetNs::new("s");
        let client = NetNs::new("c");
        // Addresses only need to be unique inside the pair's own namespaces.
        let n = (NEXT.fetch_add(1, Ordering::Relaxed) % 250 + 1) as u8;
        let server_if = short_if("vs", &server.name);
        let client_if = short_if("vc", &client.name);
        veth(&server, &server_if, &client, &client_if);
        server.sh(&format!(
            "ip addr add 10.77.{n}.1/24 dev {server_if} && ip -6 addr add fd77:{n}::1/64 dev {server_if} nodad"
        ));
        let mut extra = String::new();
        for host in 2..=9 {
            extra.push_str(&format!("ip addr add 10.77.{n}.{host}/24 dev {client_if} && ip -6 addr add fd77:{n}::{host}/64 dev {client_if} nodad && "));
        }
        extra.push_str("true");
        client.sh(&extra);
        Self { server, client, server_if, client_if, net: n }
    }

    pub fn server_v4(&self) -> String {
        format!("10.77.{}.1", self.net)
    }

    pub fn client_v4(&self, host: u8) -> String {
        format!("10.77.{}.{host}", self.net)
    }

    pub fn server_v6(&self) -> String {
        format!("fd77:{}::1", self.net)
    }

    pub fn client_v6(&self, host: u8) -> String {
        format!("fd77:{}::{host}", self.net)
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// An interface name under the kernel's 15-character limit, unique like the namespace name.
fn short_if(prefix: &str, ns_name: &str) -> String {
    let tail: String = ns_name.chars().filter(|c| c.is_ascii_digit() || *c == 'x').collect();
    let mut name = format!("{prefix}{tail}");
    name.truncate(15);
    name
}

/// The MAC address of an interface in a namespace.
pub fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.sh(&format!("ip -o link show dev {iface}"));
    let at = out.find("link/ether ").unwrap_or_else(|| panic!("no MAC in: {out}"));
    let text = &out[at + "link/ether ".len()..at + "link/ether ".len() + 17];
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    mac
}

/// Sends arbitrary Ethernet frames out of an interface (AF_PACKET), so crafted packets
/// (truncated, fragments, any protocol) cross the real veth into the filtered end.
pub struct Injector {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
    src: [u8; 6],
    dst: [u8; 6],
}

impl Injector {
    /// Frames go out of `iface` in `ns`, addressed to `dst` (the peer's MAC).
    pub fn open(ns: &NetNs, iface: &str, dst: [u8; 6]) -> Self {
        let src = mac_of(ns, iface);
        let name = iface.to_string();
        ns.enter(move || {
            use std::os::fd::FromRawFd as _;
            let c = std::ffi::CString::new(name.clone()).unwrap();
            // SAFETY: plain socket calls with valid arguments; the fd is owned below.
            unsafe {
                let ifindex = libc::if_nametoindex(c.as_ptr()) as i32;
                assert!(ifindex > 0, "no interface {name}");
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32);
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                Self { fd: std::os::fd::OwnedFd::from_raw_fd(fd), ifindex, src, dst }
            }
        })
    }

    /// Send `frame` with its MAC addresses replaced by this link's.
    pub fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd as _;
        let mut f = frame.to_vec();
        f[0..6].copy_from_slice(&self.dst);
        f[6..12].copy_from_slice(&self.src);
        // SAFETY: a zeroed sockaddr_ll filled with the interface index, and a valid buffer.
        unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = self.ifindex;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&self.dst);
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(n, f.len() as isize, "AF_PACKET send: {}", std::io::Error::last_os_error());
        }
    }
}
