//! The real `voipwall` binary as a daemon inside a test namespace, driven through its real
//! control socket. Pins live on a private bpffs mounted under /tmp, which `ip netns exec` does
//! not hide (it remounts only /sys), so a restarted daemon sees its predecessor's pins.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, Pair};

/// The `voipwall` binary under test: `$VOIPWALL_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VOIPWALL_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/voipwall");
    assert!(p.exists(), "{} is missing: run `cargo build -p controller` or `cargo xtask test`", p.display());
    p
}

/// The same `voipwall` built with a changed map layout (the `layout-canary` feature), for the
/// upgrade tests: `$VOIPWALL_CANARY_BIN` (set by `cargo xtask test`), else
/// `target/debug/voipwall-layout-canary`.
pub fn canary_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VOIPWALL_CANARY_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/voipwall-layout-canary");
    assert!(p.exists(), "{} is missing: `cargo xtask test` builds it", p.display());
    p
}

/// A private bpffs mount and state folder that outlive daemon restarts within one test.
pub struct Env {
    pub root: PathBuf,
    pub pins: PathBuf,
    pub state: PathBuf,
    /// Where the bpffs is mounted (`pins` or a folder above it).
    mount: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        Self::with_layout("bpffs", "bpffs", "state")
    }

    /// The packaged layout below the temp root, for a scratch-root install: a bpffs on
    /// `sys/fs/bpf`, pins in `sys/fs/bpf/voipwall`, state in `var/lib/voipwall`.
    pub fn debian_layout() -> Self {
        Self::with_layout("sys/fs/bpf", "sys/fs/bpf/voipwall", "var/lib/voipwall")
    }

    fn with_layout(mount: &str, pins: &str, state: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let root =
            std::env::temp_dir().join(format!("vwtest-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let (mount, pins, state) = (root.join(mount), root.join(pins), root.join(state));
        std::fs::create_dir_all(&mount).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let st = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount).status().unwrap();
        assert!(st.success(), "mounting a test bpffs at {}", mount.display());
        std::fs::create_dir_all(&pins).unwrap();
        Self { root, pins, state, mount }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("ctl.sock")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A running daemon (killed on drop if still running).
pub struct Daemon {
    child: Option<Child>,
    pub iface: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    ns: String,
}

impl Daemon {
    /// `voipwall --iface IFACE --socket ... run --pin-dir ... --state-dir ... EXTRA` in the
    /// server namespace; returns once the control socket answers.
    #[track_caller]
    pub fn start(pair: &Pair, env: &Env, extra: &[&str]) -> Self {
        match Self::try_start(pair, env, extra) {
            Ok(d) => d,
            Err(log) => panic!("daemon did not start:\n{log}"),
        }
    }

    /// Start; `Err(log)` if it exits before answering.
    pub fn try_start(pair: &Pair, env: &Env, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_on(&pair.server, &pair.server_if, env, extra)
    }

    /// [`Daemon::start`] on any interface of any test namespace.
    #[track_caller]
    pub fn start_on(ns: &NetNs, iface: &str, env: &Env, extra: &[&str]) -> Self {
        match Self::try_start_on(ns, iface, env, extra) {
            Ok(d) => d,
            Err(log) => panic!("daemon did not start:\n{log}"),
        }
    }

    /// Start on `iface` in `ns`; `Err(log)` if it exits before answering.
    pub fn try_start_on(ns: &NetNs, iface: &str, env: &Env, extra: &[&str]) -> Result<Self, String> {
        Self::try_start_bin(&binary(), ns, iface, env, extra)
    }

    /// [`Daemon::try_start_on`] with another build of `voipwall` (an upgrade or a downgrade).
    pub fn try_start_bin(bin: &Path, ns: &NetNs, iface: &str, env: &Env, extra: &[&str]) -> Result<Self, String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let log = env.root.join(format!("daemon-{}.log", N.fetch_add(1, Ordering::Relaxed)));
        let socket = env.socket();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(["--iface", iface, "--socket"])
            .arg(&socket)
            .arg("run")
            .arg("--pin-dir")
            .arg(&env.pins)
            .arg("--state-dir")
            .arg(&env.state)
            .args(["--stats-interval", "0"])
            .args(extra)
            .env_remove("SSH_CONNECTION")
            .env_remove("SSH_CLIENT")
            .env("VOIPWALL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn voipwall run");
        let mut d = Self { child: Some(child), iface: iface.to_string(), socket, log, ns: ns.name.clone() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                d.child = None;
                return Err(format!("exited with {status}\n{}", d.log_text()));
            }
            if d.socket.exists() && d.cli(&["status"]).status.success() {
                return Ok(d);
            }
            assert!(Instant::now() < deadline, "daemon not ready after 30 s:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Run `voipwall --iface IFACE --socket SOCKET ARGS` from the host (the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(["--iface", &self.iface, "--socket"])
            .arg(&self.socket)
            .args(args)
            .env_remove("SSH_CONNECTION")
            .env_remove("SSH_CLIENT")
            .output()
            .expect("run voipwall")
    }

    /// [`Daemon::cli`] that must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "voipwall {} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `--json` output of a read-only verb.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("voipwall {}: not JSON ({e}):\n{text}", a.join(" ")))
    }

    /// Packets the data plane dropped for `reason`, from `voipwall stats --json`.
    #[track_caller]
    pub fn dropped(&self, reason: &str) -> u64 {
        self.json(&["stats"])["counters"]
            .as_array()
            .expect("stats has counters")
            .iter()
            .filter(|c| c["verdict"] == "drop" && c["reason"] == reason)
            .map(|c| c["packets"].as_u64().unwrap_or(0))
            .sum()
    }

    /// SIGKILL: nothing runs on the way out.
    pub fn kill9(mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// SIGTERM and wait for the exit; the daemon's exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal_and_wait(libc::SIGTERM).expect("running")
    }

    /// Send a signal to the daemon itself (the child of `ip netns exec`, which execs it).
    pub fn signal(&self, sig: i32) {
        // SAFETY: a signal to a process this test started, by its PID.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    fn signal_and_wait(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: as above.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The attached XDP program id as `ip link` reports it.
    pub fn attached_program_id(pair: &Pair) -> Option<u32> {
        let out = pair.server.sh(&format!("ip -d link show dev {}", pair.server_if));
        let at = out.find("prog/xdp id ")?;
        out[at + "prog/xdp id ".len()..].split_whitespace().next()?.parse().ok()
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Tests that want the program to stay attached call `kill9` first; a daemon still
        // running here is stopped cleanly so it detaches.
        let _ = self.signal_and_wait(libc::SIGTERM);
    }
}

/// Whether one UDP datagram from the pair's client address `src_host` reaches the server on
/// `port` (a socket bound there receives it within 300 ms).
pub fn udp_reaches(pair: &Pair, src_host: u8, port: u16) -> bool {
    let rx = pair.server.enter(|| UdpSocket::bind(format!("{}:{port}", pair.server_v4()))).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let tx = pair.client.enter(|| UdpSocket::bind(format!("{}:0", pair.client_v4(src_host)))).unwrap();
    tx.send_to(b"probe", format!("{}:{port}", pair.server_v4())).unwrap();
    rx.recv(&mut [0u8; 16]).is_ok()
}

/// A UDP flow with sequence numbers: `pps` datagrams per second from `src` in `from` to `dst`
/// until stopped, counted on arrival by a receiver bound in `to`.
pub struct Flow {
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<Vec<u64>>>,
}

impl Flow {
    pub fn start(from: &NetNs, src: &str, to: &NetNs, dst: &str, pps: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rx = to.enter(|| UdpSocket::bind(dst)).unwrap_or_else(|e| panic!("bind {dst}: {e}"));
        rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let tx = from.enter(|| UdpSocket::bind(src)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
        let target: std::net::SocketAddr = dst.parse().unwrap();
        let s2 = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) if n >= 8 => {
                        seen.push(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                        quiet_since = None;
                    }
                    _ => {
                        if s2.load(Ordering::Relaxed) {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if q.elapsed() > Duration::from_millis(400) {
                                break;
                            }
                        }
                    }
                }
            }
            seen
        });
        let s3 = stop.clone();
        let sender = std::thread::spawn(move || {
            let gap = Duration::from_nanos(1_000_000_000 / pps.max(1));
            let start = Instant::now();
            let mut seq = 0u64;
            // Bounded: a flow never runs past two minutes even if the test forgets to stop it.
            while !s3.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                let _ = tx.send_to(&seq.to_be_bytes(), target);
                seq += 1;
                pace(start, seq, gap);
            }
            seq
        });
        Self { stop, sender: Some(sender), receiver: Some(receiver) }
    }

    /// Stop; (sent, received sequence numbers).
    pub fn finish(mut self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().unwrap().join().unwrap();
        let mut got = self.receiver.take().unwrap().join().unwrap();
        got.sort_unstable();
        got.dedup();
        (sent, got)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleep until the `n`-th send of a generator started at `start` is due, one per `interval`
/// (a fixed schedule, so a late send does not push back the ones after it).
pub fn pace(start: Instant, n: u64, interval: Duration) {
    let due = start + Duration::from_nanos((n as u128 * interval.as_nanos()).min(u64::MAX as u128) as u64);
    if let Some(wait) = due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// Sequence numbers in `0..sent` missing from `got`.
pub fn missing(sent: u64, got: &[u64]) -> Vec<u64> {
    let mut m = Vec::new();
    let mut it = got.iter().peekable();
    for s in 0..sent {
        while it.peek().is_some_and(|&&g| g < s) {
            it.next();
        }
        if it.peek() != Some(&&s) {
            m.push(s);
        }
    }
    m
}
