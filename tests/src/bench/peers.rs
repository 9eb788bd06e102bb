//! The filter a user would run instead, on the same frames, on the same core, in the same
//! rounds: Debian's `xdp-filter` (xdp-tools). It is loaded by its own command line onto a veth
//! inside a namespace this module creates (its pins in a bpffs directory of their own, so
//! nothing else on the machine sees them), configured with `xdp-filter port` / `xdp-filter ip`,
//! and its program is then run with BPF_PROG_TEST_RUN exactly like voipwall's.
//!
//! `xdp-filter` has two policies and cannot mix them: `deny` drops everything except the ports
//! and addresses listed (an allow list of open ports, voipwall's port model), `allow` passes
//! everything except what is listed (a block list, but of single addresses: it has no CIDRs).
//! So the open-port paths are compared with a `deny` filter holding the open ports, and the
//! blocked-source path with an `allow` filter holding the blocked address; voipwall does both,
//! plus rates, bans and the SIP checks, in one program.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    process::Command,
};

use aya::programs::{ProgramFd, loaded_programs};
use serde::Serialize;

use crate::{
    Harness,
    bench::{Settings, Stat, paths, side_by_side},
    netns::NetNs,
};

/// `xdp-filter` loaded on a veth inside a namespace. xdp-filter keeps its maps and program
/// list pinned under `/sys/fs/bpf/xdp-filter` (one instance per machine), so instances are
/// loaded one after another: one measured by BPF_PROG_TEST_RUN is unloaded as soon as its
/// program is held by a file descriptor (program and maps live on with it, nothing pinned);
/// one attached for the veth runs is unloaded on drop.
pub struct XdpFilter {
    prog: ProgramFd,
    pub id: u32,
    ns: String,
    iface: String,
    attached: bool,
    /// The namespace when this filter made its own.
    _own: Option<NetNs>,
}

fn xdp_filter(ns: &str, args: &str) -> std::process::Output {
    // nsenter changes only the network namespace: `ip netns exec` would mount a fresh /sys and
    // hide the bpffs xdp-filter pins to.
    Command::new("nsenter")
        .args([&format!("--net=/var/run/netns/{ns}"), "sh", "-c", &format!("xdp-filter {args}")])
        .env("LIBXDP_SKIP_DISPATCHER", "1")
        .output()
        .expect("spawn xdp-filter")
}

impl XdpFilter {
    /// Load on `iface` in `ns` (native mode) with `policy` (`deny` or `allow`) and `features`
    /// (xdp-filter's `-f`), apply each rule (`port 5060 -p udp`, `ip 203.0.113.5 -m src`), and
    /// leave it attached until drop.
    pub fn load_on(ns: &NetNs, iface: &str, policy: &str, features: &str, rules: &[&str]) -> Self {
        Self::load(ns.name.clone(), None, iface, policy, features, rules, true)
    }

    /// The same on a veth of a namespace of its own, unloaded at once: for BPF_PROG_TEST_RUN.
    pub fn held(policy: &str, features: &str, rules: &[&str]) -> Self {
        let ns = NetNs::new("xf");
        ns.sh("ip link add xf0 type veth peer name xf1 && ip link set xf0 up && ip link set xf1 up");
        Self::load(ns.name.clone(), Some(ns), "xf0", policy, features, rules, false)
    }

    fn load(
        ns: String,
        own: Option<NetNs>,
        iface: &str,
        policy: &str,
        features: &str,
        rules: &[&str],
        keep: bool,
    ) -> Self {
        let check = |what: &str, out: std::process::Output| {
            assert!(
                out.status.success(),
                "xdp-filter {what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let load = format!("load -m native -p {policy} -f {features} {iface}");
        check(&load, xdp_filter(&ns, &load));
        let id = prog_id(&ns, iface);
        // From here on, drop unloads it even if a rule fails.
        let mut me = Self {
            prog: loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .unwrap_or_else(|| panic!("xdp-filter's program {id} is not loaded"))
                .fd()
                .expect("xdp-filter program fd"),
            id,
            ns,
            iface: iface.to_string(),
            attached: true,
            _own: own,
        };
        for rule in rules {
            check(rule, xdp_filter(&me.ns, rule));
        }
        if !keep {
            me.unload();
        }
        me
    }

    /// The name of the program xdp-filter chose for the features asked.
    pub fn program_name(&self) -> String {
        loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == self.id)
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Kernel-reported ns per run and the XDP action (1 drop, 2 pass).
    pub fn run(&self, frame: &[u8], repeat: u32) -> (u32, f64) {
        test_run_fd(self.prog.as_fd(), frame, repeat)
    }

    fn unload(&mut self) {
        if !self.attached {
            return;
        }
        self.attached = false;
        let out = xdp_filter(&self.ns, &format!("unload {}", self.iface));
        if !out.status.success() {
            // Detach by hand; xdp-filter's pins stay and say so on the next load.
            let _ = Command::new("ip").args(["-n", &self.ns, "link", "set", "dev", &self.iface, "xdp", "off"]).output();
        }
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        self.unload();
    }
}

/// The id of the XDP program attached to `iface` in namespace `ns`.
fn prog_id(ns: &str, iface: &str) -> u32 {
    let out = Command::new("ip").args(["-n", ns, "-j", "-d", "link", "show", "dev", iface]).output().expect("spawn ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let xdp = &v[0]["xdp"];
    xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"].as_array().and_then(|a| a.iter().find_map(|p| p["prog"]["id"].as_u64())))
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or_else(|| panic!("no XDP program on {iface}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `union bpf_attr` as BPF_PROG_TEST_RUN reads it (include/uapi/linux/bpf.h, `test`).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// BPF_PROG_TEST_RUN on a program aya did not load: (return value, ns per run).
pub fn test_run_fd(fd: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> (u32, f64) {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestAttr::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix whose pointers outlive the
    // call; the kernel reads `size` bytes of it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as libc::c_uint,
        )
    };
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    (attr.retval, f64::from(attr.duration))
}

/// One path, voipwall and the peer side by side.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRow {
    pub path: String,
    /// How the peer was configured for it.
    pub peer: String,
    /// The configuration the targets compare with.
    pub reference: bool,
    pub verdict: String,
    pub voipwall_ns: Stat,
    pub peer_ns: Stat,
    /// voipwall / peer, per round.
    pub ratio: Stat,
}

/// The open ports of the bench policy's role that the measured frames use, for the `deny`
/// filters (the array lookup costs the same whichever ports are listed).
const DENY_RULES: [&str; 2] = ["port 5060", "port 12000"];

/// One xdp-filter configuration: policy, features, rules, how it is described, whether the
/// targets use it, and the paths measured on it with the XDP action each must get.
type Config = (&'static str, &'static str, &'static [&'static str], &'static str, bool, &'static [(&'static str, u32)]);

/// voipwall (the per-path bench policy) and xdp-filter on the same frames: each path's frame,
/// the xdp-filter configuration that gives the same verdict, and that verdict.
pub fn run(settings: &Settings) -> Vec<PeerRow> {
    let h = Harness::new_with_capacity(paths::POLICY, settings.capacity());
    let cases = paths::cases();
    let frame = |name: &str| cases.iter().find(|c| c.name == name).expect("a measured path").frame.clone();
    // A VoIP host needs TCP and UDP ports, for which xdp-filter loads its
    // program with every feature; its UDP-only program is the fastest it has, shown for
    // reference (it would drop every TCP packet, SSH and SIP over TLS included).
    let configs: [Config; 3] = [
        (
            "deny",
            "tcp,udp",
            &DENY_RULES,
            "deny policy, tcp+udp: open ports listed",
            true,
            &[
                ("closed port", 1),
                ("allowed RTP", 2),
                ("allowed SIP, unknown source (warm)", 2),
                ("TCP SYN to closed port", 1),
            ],
        ),
        (
            "allow",
            "ipv4,ipv6",
            &["ip 203.0.113.5 -m src"],
            "allow policy, ipv4+ipv6: the blocked address listed",
            true,
            &[("block-list hit", 1)],
        ),
        (
            "deny",
            "udp",
            &DENY_RULES,
            "deny policy, udp only (its fastest program; drops all TCP)",
            false,
            &[("closed port", 1), ("allowed RTP", 2)],
        ),
    ];
    let mut out = Vec::new();
    for (policy, features, rules, how, reference, paths) in configs {
        let peer = XdpFilter::held(policy, features, rules);
        let how = format!("{how} (`{}`)", peer.program_name());
        for (name, want) in paths {
            let f = frame(name);
            let (action, _) = peer.run(&f, 1);
            assert_eq!(action, *want, "xdp-filter ({how}) gives {action} on {name}, not {want}");
            let (voipwall_ns, peer_ns, ratio) = side_by_side(
                settings.rounds.max(5) * 2,
                || h.dp.test_run(&f, settings.repeat).expect("test_run").1.as_nanos() as f64,
                || peer.run(&f, settings.repeat).1,
            );
            out.push(PeerRow {
                path: (*name).to_string(),
                peer: how.clone(),
                reference,
                verdict: if *want == 1 { "drop" } else { "pass" }.to_string(),
                voipwall_ns,
                peer_ns,
                ratio,
            });
        }
    }
    out
}
