//! The fleet under load: one CrowdSec LAPI (Debian's `crowdsec`, offline), simulated bouncers
//! with their own keys polling it every second as real bouncers do, and the real voipwall hosts.
//! A batch of decisions is imported with `cscli decisions import`; measured: how long until every
//! host's data plane and every simulated bouncer holds all of them, and the CPU time and peak
//! memory of the LAPI and of each voipwall daemon over the run.

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Mode, Settings};
use crate::{
    crowdsec::{Fleet, INTERVAL},
    netns::enter_named,
};

#[derive(Clone, Debug, Serialize)]
pub struct FleetBench {
    pub decisions: u32,
    pub bouncers: usize,
    pub hosts: usize,
    /// `cscli decisions import` (all files), seconds.
    pub import_s: f64,
    /// When the import ended, from the start of the run.
    pub import_end_s: f64,
    /// Files the LAPI refused with "database is locked" and that were sent again, and files
    /// still refused after 60 tries.
    pub import_retries: u32,
    pub import_failed_files: u32,
    /// Files not sent because the import had run for [`IMPORT_LIMIT`] already.
    pub import_unsent_files: u32,
    /// The decisions everyone had to hold (those of the files imported).
    pub expected: u32,
    /// From the start of the import until each host's data plane held every decision.
    pub host_converge_s: Vec<f64>,
    /// The same for the simulated bouncers: median and slowest.
    pub bouncer_converge_p50_s: f64,
    pub bouncer_converge_max_s: f64,
    /// Simulated bouncers that never held all of them within the limit.
    pub bouncers_short: usize,
    /// CPU seconds over the run (user + system) and peak resident memory, MB.
    pub lapi_cpu_s: f64,
    pub lapi_rss_mb: f64,
    pub voipwall_cpu_s: Vec<f64>,
    pub voipwall_rss_mb: Vec<f64>,
    /// The voipwall hosts' pull interval and the simulated bouncers'.
    pub interval_s: f64,
    pub bouncer_interval_s: f64,
}

/// The simulated bouncers' poll interval: CrowdSec's firewall bouncer's default.
pub const BOUNCER_INTERVAL: Duration = Duration::from_secs(10);

/// CPU seconds (user + system) of a process.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Peak resident memory of a process, MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One GET of the decision stream over a fresh connection: the `value`s of new decisions.
fn pull(addr: SocketAddr, key: &str, startup: bool) -> Option<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(
        s,
        "GET /v1/decisions/stream?startup={startup} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\nUser-Agent: bench-bouncer\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let at = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&resp[..at]).to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(&resp[at..]) } else { resp[at..].to_vec() };
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(
        v["new"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d["value"].as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    )
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if len == 0 {
            break;
        }
        let start = end + 2;
        if b.len() < start + len {
            break;
        }
        out.extend_from_slice(&b[start..start + len]);
        b = &b[(start + len + 2).min(b.len())..];
    }
    out
}

/// Decisions per imported file.
const IMPORT_FILE: u32 = 5_000;
/// How long the import may run before the files left are not sent, and how long one file's
/// `cscli decisions import` may take before it counts as failed: CrowdSec 1.4.6 on SQLite can
/// slow down to minutes per file under load, and the bench must end.
const IMPORT_LIMIT: Duration = Duration::from_secs(600);
const FILE_LIMIT_S: u32 = 300;

pub fn run(settings: &Settings) -> FleetBench {
    let (decisions, bouncers, hosts) = match settings.mode {
        Mode::Smoke => (1_000u32, 5usize, 1usize),
        Mode::Quick => (20_000, 20, 3),
        Mode::Full => (100_000, 50, 3),
    };
    // CrowdSec's firewall bouncer polls every 10 s by default (`update_frequency`); the smoke
    // run only proves the harness and polls every second to stay short.
    let bouncer_interval = if settings.mode == Mode::Smoke { INTERVAL } else { BOUNCER_INTERVAL };
    let f = Fleet::start_full(hosts, false, "10s", INTERVAL, "30s");
    let addr: SocketAddr = f.lapi.listen.parse().unwrap();
    let keys: Vec<String> = (0..bouncers)
        .map(|i| f.lapi.cscli(&["bouncers", "add", &format!("sim{i}"), "-o", "raw"]).trim().to_string())
        .collect();
    let lapi_pid = f.lapi.pid();
    let pids: Vec<u32> = f.daemons.iter().map(|d| d.pid()).collect();
    let (lapi_cpu0, cpu0): (f64, Vec<f64>) = (cpu_s(lapi_pid), pids.iter().map(|p| cpu_s(*p)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // How long after the import ended everyone may take.
    let limit = Duration::from_secs(300);
    let import_end = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let past_limit = {
        let import_end = import_end.clone();
        move || import_end.lock().unwrap().is_some_and(|t: Instant| t.elapsed() > limit)
    };
    // The simulated bouncers behave as CrowdSec's own bouncers do: one startup pull, then
    // deltas every interval, each until it holds every decision (or the limit).
    let sims: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let (ns, stop, past_limit) = (f.site.lapi_ns.name.clone(), stop.clone(), past_limit.clone());
            std::thread::spawn(move || {
                enter_named(&ns, || {
                    let mut have: HashSet<String> = HashSet::new();
                    let mut first = true;
                    while !stop.load(Ordering::Relaxed) && !past_limit() {
                        if let Some(new) = pull(addr, &key, first) {
                            first = false;
                            have.extend(new);
                            if have.len() >= decisions as usize {
                                return Some(started.elapsed());
                            }
                        }
                        std::thread::sleep(bouncer_interval);
                    }
                    None
                })
            })
        })
        .collect();
    // The import, in files of 5 000: CrowdSec 1.4.6 on SQLite answers "database is locked" to
    // an import whose transaction overlaps the bouncers' polls (each poll writes the bouncer's
    // last pull), and larger files fail more often. A refused file is retried (up to 60 times,
    // a second apart); a file that fails otherwise or takes longer than FILE_LIMIT_S counts as
    // failed; every count is reported.
    let t = Instant::now();
    let (mut retries, mut failed_files, mut unsent_files) = (0u32, 0u32, 0u32);
    for (k, start) in (0..decisions).step_by(IMPORT_FILE as usize).enumerate() {
        if t.elapsed() > IMPORT_LIMIT {
            unsent_files += 1;
            continue;
        }
        let mut csv = String::from("duration,scope,value\n");
        for i in start..(start + IMPORT_FILE).min(decisions) {
            csv.push_str(&format!("4h,ip,{}\n", std::net::Ipv4Addr::from(0x6440_0000u32 + i)));
        }
        let file = f.envs[0].write(&format!("bench-import-{k}.csv"), &csv);
        for attempt in 0.. {
            match f.lapi.try_cscli_within(FILE_LIMIT_S, &["decisions", "import", "-i", file.to_str().unwrap()]) {
                Ok(_) => break,
                Err(e) if attempt < 60 && e.contains("database is locked") => {
                    retries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(_) => {
                    failed_files += 1;
                    break;
                }
            }
        }
    }
    let import_s = t.elapsed().as_secs_f64();
    let import_end_s = started.elapsed().as_secs_f64();
    *import_end.lock().unwrap() = Some(Instant::now());
    let expected = decisions - ((failed_files + unsent_files) * IMPORT_FILE).min(decisions);
    let mut host_converge_s = Vec::new();
    for h in 0..hosts {
        loop {
            let n = f.fleet_status(h)["entries"].as_u64().unwrap_or(0);
            if n >= u64::from(expected) {
                host_converge_s.push(started.elapsed().as_secs_f64());
                break;
            }
            if past_limit() {
                host_converge_s.push(f64::NAN);
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    // Stock bouncers pull only deltas after their first pull, so one that missed a decision
    // never gets it: give them a minute after the hosts converged, then count who is short.
    let grace = Instant::now();
    while sims.iter().any(|h| !h.is_finished()) && grace.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let mut sim: Vec<f64> = sims.into_iter().filter_map(|h| h.join().ok().flatten()).map(|d| d.as_secs_f64()).collect();
    let bouncers_short = bouncers - sim.len();
    sim.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let lapi_cpu_s = cpu_s(lapi_pid) - lapi_cpu0;
    FleetBench {
        decisions,
        bouncers,
        hosts,
        import_s,
        import_end_s,
        import_retries: retries,
        import_failed_files: failed_files,
        import_unsent_files: unsent_files,
        expected,
        host_converge_s,
        bouncer_converge_p50_s: sim.get(sim.len() / 2).copied().unwrap_or(f64::NAN),
        bouncer_converge_max_s: sim.last().copied().unwrap_or(f64::NAN),
        bouncers_short,
        lapi_cpu_s,
        lapi_rss_mb: peak_rss_mb(lapi_pid),
        voipwall_cpu_s: pids.iter().zip(&cpu0).map(|(p, c0)| cpu_s(*p) - c0).collect(),
        voipwall_rss_mb: pids.iter().map(|p| peak_rss_mb(*p)).collect(),
        interval_s: INTERVAL.as_secs_f64(),
        bouncer_interval_s: bouncer_interval.as_secs_f64(),
    }
}
