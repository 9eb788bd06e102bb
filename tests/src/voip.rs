//! Real VoIP software in test namespaces: Kamailio (Debian's `kamailio`) as registrar and proxy
//! with digest authentication, and SIPp (Debian's `sip-tester`) as phones, callees and
//! attackers. Every process is started by the test, bounded in time, and ended by PID.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// The scenario files and the Kamailio template.
pub fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("voip").join(name)
}

/// `which`: the tool must be installed (`cargo xtask test` installs it). A missing tool fails
/// the test rather than skipping it.
#[track_caller]
pub fn require(tool: &str) {
    let ok = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{tool} is not installed: `cargo xtask test` installs kamailio and sip-tester (sipp)");
}

/// A Kamailio instance in a namespace, stopped on drop.
pub struct Kamailio {
    child: Option<Child>,
    pub log: PathBuf,
    pub cfg: PathBuf,
}

impl Kamailio {
    /// Start with the test template: listen on `listen` (UDP and TCP, port 5060), accept
    /// `password` for every user, send calls to `callee` (`ip:port`).
    pub fn start(ns: &NetNs, dir: &Path, listen: &[&str], password: &str, callee: &str) -> Self {
        Self::start_with(ns, dir, listen, &[5060], password, callee, callee)
    }

    /// [`Kamailio::start`] on several ports, with a callee for IPv6 callers (`[addr]:port`).
    pub fn start_with(
        ns: &NetNs,
        dir: &Path,
        listen: &[&str],
        ports: &[u16],
        password: &str,
        callee: &str,
        callee6: &str,
    ) -> Self {
        require("kamailio");
        let mut listens = String::new();
        for a in listen {
            let a = if a.contains(':') { format!("[{a}]") } else { (*a).to_string() };
            for p in ports {
                listens.push_str(&format!("listen=udp:{a}:{p}\nlisten=tcp:{a}:{p}\n"));
            }
        }
        let text = std::fs::read_to_string(asset("kamailio.cfg.in"))
            .unwrap()
            .replace("@LISTEN@", &listens)
            .replace("@PASSWORD@", password)
            .replace("@CALLEE6@", callee6)
            .replace("@CALLEE@", callee);
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join("kamailio.log");
        let run = dir.join("kamailio-run");
        std::fs::create_dir_all(&run).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "kamailio", "-DD", "-E", "-f"])
            .arg(&cfg)
            .arg("-Y")
            .arg(&run)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own process group: kamailio forks workers, and all of them go on drop.
            .process_group(0)
            .spawn()
            .expect("spawn kamailio");
        let k = Self { child: Some(child), log, cfg };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !k.log_text().contains("SO_RCVBUF is finally") {
            assert!(Instant::now() < deadline, "kamailio did not start:\n{}", k.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        k
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests Kamailio received from `ip` (its own log of every request).
    pub fn requests_from(&self, ip: &str) -> usize {
        let needle = format!(" from {ip}:");
        self.log_text().lines().filter(|l| l.contains("VWREQ") && l.contains(&needle)).count()
    }

    /// Requests of one method from `ip`.
    pub fn method_from(&self, method: &str, ip: &str) -> usize {
        let needle = format!("VWREQ {method} from {ip}:");
        self.log_text().lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_group(child);
        }
    }
}

/// End a child started in its own process group, and everything it forked: SIGTERM to the
/// group, then SIGKILL to whatever is left after a grace period.
fn stop_group(mut child: Child) {
    let pgid = child.id() as i32;
    // SAFETY: the process group of a child this test spawned with `process_group(0)`.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    // Wait for the leader to exit without reaping it: while it is a zombie its PID, and so the
    // group id, cannot be reused by anyone else.
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pgid}/stat"))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exited() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Workers may outlive the leader.
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// SIPp, bounded by its own `-timeout` and by `timeout(1)` around it.
pub struct Sipp;

impl Sipp {
    /// Run to completion in `ns`: `sipp <args> -nostdin -timeout <limit>`.
    pub fn run(ns: &NetNs, args: &[&str], limit: Duration) -> Output {
        require("sipp");
        let secs = limit.as_secs().max(1);
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "timeout", "-k", "2", &(secs + 5).to_string(), "sipp"])
            .args(args)
            .args(["-nostdin", "-timeout", &format!("{secs}s")])
            .output()
            .expect("spawn sipp")
    }

    /// Start in the background (a callee); [`Background::wait`] collects it.
    pub fn spawn(ns: &NetNs, args: &[&str], limit: Duration, log: &Path) -> Background {
        require("sipp");
        let secs = limit.as_secs().max(1);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "timeout", "-k", "2", &(secs + 5).to_string(), "sipp"])
            .args(args)
            .args(["-nostdin", "-timeout", &format!("{secs}s")])
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sipp");
        Background { child: Some(child), log: log.to_path_buf() }
    }
}

/// A background SIPp, killed on drop if still running.
pub struct Background {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Background {
    /// Wait for it to end; its exit code (0: every call succeeded).
    pub fn wait(mut self) -> i32 {
        let mut child = self.child.take().expect("child");
        child.wait().map_or(-1, |s| s.code().unwrap_or(-1))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // timeout(1) and SIPp share the group.
            stop_group(child);
        }
    }
}

/// SIPp's summary line counts from its output: (successful calls, failed calls).
pub fn sipp_calls(out: &str) -> (u64, u64) {
    let field = |name: &str| {
        out.lines()
            .rfind(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("Successful call"), field("Failed call"))
}
