//! A real CrowdSec Local API for the fleet tests (Debian's `crowdsec`, run offline: no central
//! API, no parsers, SQLite under the test's own folder), the fleet topology around it, and a
//! fault-injecting HTTP proxy for the error cases the real LAPI cannot produce.
//!
//! Topology ([`FleetSite`]): a `lapi` namespace holding a bridge, the LAPI on the bridge's
//! address; per host, a [`Pair`] (the host with voipwall on its public veth, and an injector
//! namespace in front of it) plus a management veth from the host to the bridge. No namespace
//! has a route to anything else.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    daemon::{Daemon, Env},
    netns::{Injector, NetNs, Pair, enter_named, mac_of, veth},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `crowdsec -c CONFIG -no-cs -no-capi` in a namespace; killed on drop.
pub struct Lapi {
    ns_name: String,
    pub dir: PathBuf,
    config: PathBuf,
    pub listen: String,
    child: Option<Child>,
}

impl Lapi {
    /// Write a configuration under `dir` (database, logs, credentials of a `cli` machine for
    /// `cscli decisions`), then start the LAPI on `listen` inside `ns`.
    pub fn start(ns: &NetNs, listen: &str, dir: &Path) -> Self {
        crate::voip::require("crowdsec");
        let d = dir.display();
        for sub in ["etc", "data", "hub", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for f in ["profiles.yaml", "simulation.yaml"] {
            std::fs::copy(Path::new("/etc/crowdsec").join(f), dir.join("etc").join(f))
                .unwrap_or_else(|e| panic!("/etc/crowdsec/{f} (Debian package crowdsec): {e}"));
        }
        let config = dir.join("etc/config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: file\n  log_level: info\n  log_dir: {d}/log/\n  working_dir: .\nconfig_paths:\n  config_dir: {d}/etc/\n  data_dir: {d}/data/\n  simulation_path: {d}/etc/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/etc/notifications/\n  plugin_dir: /usr/lib/crowdsec/plugins/\ncrowdsec_service:\n  acquisition_path: {d}/etc/acquis.yaml\ncscli:\n  output: human\ndb_config:\n  log_level: info\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\napi:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {d}/etc/local_api_credentials.yaml\n  server:\n    log_level: info\n    listen_uri: {listen}\n    profiles_path: {d}/etc/profiles.yaml\n    trusted_ips:\n      - 127.0.0.1\nprometheus:\n  enabled: false\n"
            ),
        )
        .unwrap();
        let mut lapi =
            Self { ns_name: ns.name.clone(), dir: dir.to_path_buf(), config, listen: listen.to_string(), child: None };
        let creds = dir.join("etc/local_api_credentials.yaml");
        lapi.cscli(&["machines", "add", "cli", "--auto", "-f", creds.to_str().unwrap()]);
        lapi.restart();
        lapi
    }

    /// Start the LAPI (again), and wait until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.join("log/stdout.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns_name,
                "crowdsec",
                "-c",
                self.config.to_str().unwrap(),
                "-no-cs",
                "-no-capi",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crowdsec");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr: SocketAddr = self.listen.parse().unwrap();
        let up = loop {
            let ok =
                enter_named(&self.ns_name, || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
            if ok || Instant::now() > deadline {
                break ok;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(up, "the LAPI never listened on {}:\n{}", self.listen, self.log_text());
    }

    /// SIGKILL the LAPI (by PID) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs crowdsec: the child's PID is crowdsec's.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The LAPI's process (`ip netns exec` execs crowdsec, so the child is crowdsec).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `cscli -c CONFIG ARGS` inside the namespace; panics with its output if it fails.
    #[track_caller]
    pub fn cscli(&self, args: &[&str]) -> String {
        self.try_cscli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::cscli`], its failure as text.
    pub fn try_cscli(&self, args: &[&str]) -> Result<String, String> {
        self.try_cscli_within(0, args)
    }

    /// [`Self::try_cscli`], ended (as a failure) after `secs` seconds unless 0.
    pub fn try_cscli_within(&self, secs: u32, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "timeout", &secs.to_string(), "cscli", "-c"])
            .arg(self.config.to_str().unwrap())
            .args(args)
            .output()
            .expect("spawn cscli");
        if !out.status.success() {
            return Err(format!(
                "cscli {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A bouncer key (`cscli bouncers add NAME -o raw`) written to `file`.
    pub fn bouncer(&self, name: &str, file: &Path) {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        std::fs::write(file, key.trim()).unwrap();
    }

    /// A machine (`cscli machines add NAME --password P -f FILE`).
    pub fn machine(&self, name: &str, file: &Path) {
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            &format!("pw-{name}-0123456789"),
            "-f",
            file.to_str().unwrap(),
        ]);
    }

    pub fn log_text(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("log/stdout.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.join("log/crowdsec.log")).unwrap_or_default());
        let tail: Vec<&str> = s.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One host of the fleet: voipwall's namespace pair and its management address.
pub struct FleetHost {
    pub pair: Pair,
    pub inj: Injector,
    pub host: [u8; 4],
    pub mgmt: String,
}

/// The LAPI's namespace (with its bridge) and the hosts around it.
pub struct FleetSite {
    pub hosts: Vec<FleetHost>,
    pub lapi_ns: NetNs,
    pub lapi_ip: String,
}

impl FleetSite {
    pub fn new(hosts: usize) -> Self {
        let n = (NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 100) % 200 + 20;
        let lapi_ns = NetNs::new("lapi");
        let lapi_ip = format!("10.98.{n}.1");
        lapi_ns.sh(&format!("ip link add br0 type bridge && ip addr add {lapi_ip}/24 dev br0 && ip link set br0 up"));
        let hosts = (0..hosts)
            .map(|i| {
                let pair = Pair::new();
                for (ns, iface) in [(&pair.server, &pair.server_if), (&pair.client, &pair.client_if)] {
                    ns.sh(&format!("sysctl -qw net.ipv6.conf.{iface}.disable_ipv6=1"));
                }
                let tag = pair.server.name.trim_start_matches("vw").replace('s', "");
                let (m, p) = (format!("mg{tag}"), format!("pm{tag}"));
                let (m, p) = (m[..m.len().min(15)].to_string(), p[..p.len().min(15)].to_string());
                veth(&pair.server, &m, &lapi_ns, &p);
                lapi_ns.sh(&format!("ip link set {p} master br0"));
                let mgmt = format!("10.98.{n}.{}", 10 + i);
                pair.server.sh(&format!("ip addr add {mgmt}/24 dev {m}"));
                let inj = Injector::open(&pair.client, &pair.client_if, mac_of(&pair.server, &pair.server_if));
                let host: [u8; 4] =
                    pair.server_v4().split('.').map(|o| o.parse().unwrap()).collect::<Vec<u8>>().try_into().unwrap();
                FleetHost { pair, inj, host, mgmt }
            })
            .collect();
        Self { hosts, lapi_ns, lapi_ip }
    }
}

/// What the fault proxy does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the LAPI.
    Pass,
    /// HTTP 500 with a short body.
    ServerError,
    /// HTTP 200 with an HTML page.
    Garbage,
    /// HTTP 200 with JSON of another shape.
    WrongShape,
    /// HTTP 200 with JSON cut in the middle.
    Truncated,
    /// Read the request, answer nothing for 3 s, close.
    Hang,
}

/// An HTTP proxy in a namespace in front of the LAPI, one request per connection, that answers
/// with a [`Fault`] instead when told to. Counts the requests it saw in each mode.
pub struct FaultProxy {
    pub mode: Arc<Mutex<Fault>>,
    pub seen: Arc<Mutex<Vec<Fault>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub listen: String,
}

impl FaultProxy {
    pub fn start(ns: &NetNs, listen: &str, upstream: &str) -> Self {
        let listener = ns.enter(|| TcpListener::bind(listen)).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let mode = Arc::new(Mutex::new(Fault::Pass));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, st) = (mode.clone(), seen.clone(), stop.clone());
        let upstream: SocketAddr = upstream.parse().unwrap();
        let ns_name = ns.name.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: ten minutes at most even if never stopped.
            while !st.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let fault = *m.lock().unwrap();
                        s.lock().unwrap().push(fault);
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
                        // The upstream connection must be made inside the namespace.
                        enter_named(&ns_name, || serve(client, fault, upstream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { mode, seen, stop, handle: Some(handle), listen: listen.to_string() }
    }

    pub fn set(&self, f: Fault) {
        *self.mode.lock().unwrap() = f;
    }

    /// Requests answered with `f` so far.
    pub fn count(&self, f: Fault) -> usize {
        self.seen.lock().unwrap().iter().filter(|x| **x == f).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Read one HTTP request (headers and a Content-Length body).
fn read_request(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = c.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
    }
}

fn serve(mut client: TcpStream, fault: Fault, upstream: SocketAddr) {
    let Some(req) = read_request(&mut client) else { return };
    let answer = |body: &str, status: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let out = match fault {
        Fault::Pass => {
            // One request per upstream connection: ask the LAPI to close after answering.
            let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let mut fwd = req[..end].to_vec();
            fwd.extend_from_slice(b"\r\nConnection: close");
            fwd.extend_from_slice(&req[end..]);
            let Ok(mut up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else { return };
            let _ = up.set_read_timeout(Some(Duration::from_secs(30)));
            if up.write_all(&fwd).is_err() {
                return;
            }
            let mut resp = Vec::new();
            let _ = up.read_to_end(&mut resp);
            resp
        }
        Fault::ServerError => answer("{\"message\":\"internal error\"}", "500 Internal Server Error").into_bytes(),
        Fault::Garbage => answer("<html><body>502 Bad Gateway</body></html>", "200 OK").into_bytes(),
        Fault::WrongShape => answer("{\"decisions\":[{\"value\":\"192.0.2.1\"}]}", "200 OK").into_bytes(),
        Fault::Truncated => {
            let body = "{\"new\":[{\"id\":1,\"type\":\"ban\",\"scope\":\"Ip\",\"val";
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\nConnection: close\r\n\r\n{body}")
                .into_bytes()
        }
        Fault::Hang => {
            std::thread::sleep(Duration::from_secs(3));
            return;
        }
    };
    let _ = client.write_all(&out);
}

/// The hosts' pull interval.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Fields drop in order: daemons, their folders, the proxy, the LAPI, then the namespaces.
pub struct Fleet {
    pub daemons: Vec<Daemon>,
    pub envs: Vec<Env>,
    pub proxy: Option<FaultProxy>,
    pub lapi: Lapi,
    pub lapi_env: Env,
    pub site: FleetSite,
}

impl Fleet {
    /// A LAPI and `n` hosts; with `proxy`, the hosts reach the LAPI through the fault proxy.
    pub fn start(n: usize, proxy: bool, timeout: &str) -> Self {
        Self::start_with(n, proxy, timeout, INTERVAL)
    }

    pub fn start_with(n: usize, proxy: bool, timeout: &str, interval: Duration) -> Self {
        Self::start_full(n, proxy, timeout, interval, "5m")
    }

    pub fn start_full(n: usize, proxy: bool, timeout: &str, interval: Duration, resync: &str) -> Self {
        let site = FleetSite::new(n);
        let lapi_env = Env::new();
        let listen = format!("{}:8080", site.lapi_ip);
        let lapi = Lapi::start(&site.lapi_ns, &listen, &lapi_env.root.join("lapi"));
        let proxy = proxy.then(|| FaultProxy::start(&site.lapi_ns, &format!("{}:8081", site.lapi_ip), &listen));
        let url = proxy.as_ref().map_or(lapi.url(), |p| format!("http://{}", p.listen));
        let mut envs = Vec::new();
        let mut daemons = Vec::new();
        for (i, h) in site.hosts.iter().enumerate() {
            let env = Env::new();
            let name = format!("host{i}");
            let key = env.root.join("bouncer.key");
            let machine = env.root.join("machine.yaml");
            lapi.bouncer(&name, &key);
            lapi.machine(&name, &machine);
            let policy = env.write(
                "policy.toml",
                &format!(
                    "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{{ pps = 1, burst = 5, ban = \"10m\" }}]\nunknown = \"off\"\n[fleet.crowdsec]\nurl = \"{url}\"\napi_key_file = \"{}\"\nmachine_file = \"{}\"\ninterval = \"{}ms\"\ntimeout = \"{timeout}\"\nresync = \"{resync}\"\n",
                    key.display(),
                    machine.display(),
                    interval.as_millis()
                ),
            );
            daemons.push(Daemon::start(
                &h.pair,
                &env,
                &["--metrics", "127.0.0.1:9947", "--policy", policy.to_str().unwrap()],
            ));
            envs.push(env);
        }
        Self { daemons, envs, proxy, lapi, lapi_env, site }
    }

    /// The fleet entries a host holds (CIDRs).
    pub fn entries(&self, host: usize) -> BTreeSet<String> {
        let v = self.daemons[host].json(&["list", "blocked"]);
        v["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["origin"].as_str().unwrap_or("").contains("fleet"))
            .map(|r| r["cidr"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn fleet_status(&self, host: usize) -> serde_json::Value {
        self.daemons[host].json(&["fleet", "status"])["fleet"].clone()
    }

    /// Wait until `cond` holds for every host (or `limit` passes): how long it took.
    pub fn wait_all(&self, limit: Duration, what: &str, cond: impl Fn(&BTreeSet<String>) -> bool) -> Duration {
        let t = Instant::now();
        loop {
            if (0..self.daemons.len()).all(|h| cond(&self.entries(h))) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "{what}: not on every host after {limit:?}: {:?}\nhost0 fleet: {}\nLAPI log:\n{}",
                (0..self.daemons.len()).map(|h| self.entries(h)).collect::<Vec<_>>(),
                self.fleet_status(0),
                self.lapi.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics(&self, host: usize) -> String {
        self.site.hosts[host].pair.server.sh("curl -sf 127.0.0.1:9947/metrics")
    }

    /// Packets a host dropped for `reason`.
    pub fn dropped(&self, host: usize, reason: &str) -> u64 {
        self.daemons[host].dropped(reason)
    }
}
