//! The controller's speed: bulk and single list changes, reloads, scrape latency with empty and
//! full maps, and the daemon's memory, all against the real binary in a test namespace.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use common::{RateKey, RateState, addr::v4_mapped};
use serde::Serialize;
use voipwall::{control, firewall::ListChange, paths};

use crate::{
    bench::{
        Mode, Settings, Stat, median_spread,
        scale::{Rng, block_feed},
    },
    daemon::{Daemon, Env},
    netns::Pair,
};

#[derive(Clone, Debug, Serialize)]
pub struct ControllerResults {
    /// CIDRs in the bulk load.
    pub bulk_entries: usize,
    /// `voipwall block --file` wall time of every bulk load, each into a freshly started
    /// daemon, seconds.
    pub bulk: Stat,
    pub bulk_loads: usize,
    /// Where a bulk load's time goes, medians over the loads, from the daemon's own
    /// `list change timing` log line (every load must log one).
    pub bulk_phases: BulkPhases,
    /// One `voipwall block CIDR` command, process start to exit (the change is in force before
    /// it returns), ms.
    pub cli_block_ms: Stat,
    /// The same request over the control socket without starting a process, ms.
    pub socket_block_ms: Stat,
    /// Single-CIDR block requests sent one after another over the socket (each journalled and
    /// fsynced before its reply), after the bulk load.
    pub single_entries: usize,
    pub single_secs: f64,
    /// `voipwall reload` (voip-edge), ms.
    pub reload_ms: Stat,
    /// `/metrics` with empty maps, ms.
    pub scrape_empty_ms: Stat,
    /// `/metrics` with the bulk list and a full rate table, ms.
    pub scrape_full_ms: Stat,
    pub scrape_ratio: f64,
    /// Entries put in the rate table before the full scrape.
    pub rate_entries: u64,
    /// Daemon resident memory at default capacities, MiB.
    pub rss_default_mib: f64,
    /// BPF memory charged for the daemon's maps at default capacities (fdinfo memlock), MiB.
    pub maps_default_mib: f64,
    /// Resident memory with the bulk list loaded, MiB.
    pub rss_full_mib: f64,
    pub maps_full_mib: f64,
}

/// The phases of a bulk list change as the daemon logs them (`list change timing`), seconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BulkPhases {
    /// Inside the daemon, request to reply.
    pub total: f64,
    /// Reading and parsing the file.
    pub parse: f64,
    /// Updating the lists (the controller's model).
    pub lists: f64,
    /// The kernel writes, of which the trie inserts (their own thread) and the IPv4 levels
    /// (computed and written beside them).
    pub kernel: f64,
    pub trie: f64,
    pub levels: f64,
    /// Serializing and fsyncing the snapshot (another thread, during the kernel writes).
    pub snapshot: f64,
}

impl BulkPhases {
    /// The last `list change timing` line of a daemon log.
    pub fn from_log(log: &str) -> Option<Self> {
        let line = log.lines().rev().find(|l| l.contains("list change timing"))?;
        let field = |name: &str| -> Option<f64> {
            let at = line.find(&format!("{name}="))? + name.len() + 1;
            let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<f64>().ok().map(|ms| ms / 1e3)
        };
        Some(Self {
            total: field("total_ms")?,
            parse: field("parse_ms")?,
            lists: field("lists_ms")?,
            kernel: field("kernel_ms")?,
            trie: field("trie_ms")?,
            levels: field("levels_ms")?,
            snapshot: field("snapshot_ms")?,
        })
    }

    /// The phases in one line, for the report.
    pub fn describe(&self) -> String {
        format!(
            "{:.2} s in the daemon: file {:.2} s, lists {:.2} s, kernel writes {:.2} s (trie {:.2} s on its own thread, levels {:.2} s beside it), snapshot {:.2} s (a third thread, meanwhile)",
            self.total, self.parse, self.lists, self.kernel, self.trie, self.levels, self.snapshot
        )
    }

    /// Field by field medians.
    fn median(all: &[Self]) -> Self {
        let m = |f: fn(&Self) -> f64| median_spread(&all.iter().map(f).collect::<Vec<_>>()).median;
        Self {
            total: m(|p| p.total),
            parse: m(|p| p.parse),
            lists: m(|p| p.lists),
            kernel: m(|p| p.kernel),
            trie: m(|p| p.trie),
            levels: m(|p| p.levels),
            snapshot: m(|p| p.snapshot),
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Sum of `memlock` over the process's BPF map file descriptors.
fn maps_mib(pid: u32) -> f64 {
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("map_type:") {
                total += text
                    .lines()
                    .find_map(|l| l.strip_prefix("memlock:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total as f64 / (1024.0 * 1024.0)
}

fn scrape_ms(pair: &Pair, n: usize) -> Stat {
    let times: Vec<f64> = pair.server.enter(|| {
        (0..n)
            .map(|_| {
                let start = Instant::now();
                let mut s = TcpStream::connect("127.0.0.1:9947").expect("connect /metrics");
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").expect("request");
                let mut body = Vec::new();
                s.read_to_end(&mut body).expect("response");
                assert!(body.starts_with(b"HTTP/1.1 200"), "scrape failed");
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    });
    median_spread(&times)
}

fn timed<F: FnMut()>(mut f: F) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

pub fn run(settings: &Settings) -> ControllerResults {
    // The smoke size is still a bulk change (written as a snapshot, so the phases are logged).
    let (bulk_n, singles, scrapes) = match settings.mode {
        Mode::Smoke => (2_000, 5, 3),
        Mode::Quick => (100_000, 30, 10),
        Mode::Full => (1_000_000, 100, 20),
    };
    let bulk_rounds = match settings.mode {
        Mode::Smoke | Mode::Quick => 2,
        Mode::Full => 3,
    };
    let mut rng = Rng::new(21);
    let feed = block_feed(bulk_n, &mut rng);
    let text: String = feed.iter().map(|n| format!("{n}\n")).collect();
    let bulk_load = |d: &Daemon, env: &Env| {
        let file = env.write("feed.txt", &text);
        let secs = timed(|| {
            d.ok(&["block", "--file", file.to_str().expect("utf8"), "--reason", "bench feed"]);
        }) / 1e3;
        (secs, BulkPhases::from_log(&d.log_text()))
    };
    // Bulk loads into fresh daemons for the spread; the last one is the daemon measured below.
    let (mut bulk, mut phases): (Vec<f64>, Vec<Option<BulkPhases>>) = (1..bulk_rounds)
        .map(|_| {
            let (pair, env) = (Pair::new(), Env::new());
            let d = Daemon::start(&pair, &env, &[]);
            std::thread::sleep(Duration::from_millis(300));
            bulk_load(&d, &env)
        })
        .unzip();
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "127.0.0.1:9947"]);
    std::thread::sleep(Duration::from_millis(300));
    let rss_default_mib = rss_mib(d.pid());
    let maps_default_mib = maps_mib(d.pid());
    let scrape_empty_ms = scrape_ms(&pair, scrapes);

    // Bulk: one `block --file` with a feed-like mix of prefixes.
    let (secs, logged) = bulk_load(&d, &env);
    bulk.push(secs);
    phases.push(logged);
    let bulk = median_spread(&bulk);
    let Some(phases) = phases.into_iter().collect::<Option<Vec<_>>>() else {
        panic!("a bulk load did not log its `list change timing` line:\n{}", d.log_text())
    };
    let bulk_phases = BulkPhases::median(&phases);

    // Single changes: through the CLI (a process each) and straight over the socket.
    let cli: Vec<f64> = (0..singles)
        .map(|i| {
            let cidr = format!("203.0.113.{}/32", i % 250);
            let t = timed(|| {
                d.ok(&["block", &cidr]);
            });
            d.ok(&["unblock", &cidr]);
            t
        })
        .collect();
    let sock: Vec<f64> = (0..singles)
        .map(|i| {
            let req = control::Request::Block(ListChange {
                cidrs: vec![format!("198.51.100.{}/32", i % 250)],
                ..Default::default()
            });
            let t = timed(|| {
                let r = control::call(&d.socket, &req, Duration::from_secs(30)).expect("socket call");
                assert!(r.ok, "{:?}", r.error);
            });
            let undo = control::Request::Unblock(ListChange {
                cidrs: vec![format!("198.51.100.{}/32", i % 250)],
                ..Default::default()
            });
            control::call(&d.socket, &undo, Duration::from_secs(30)).expect("socket call");
            t
        })
        .collect();
    // Many single changes in a row: the one-at-a-time way to load a list.
    let single_entries = match settings.mode {
        Mode::Smoke => 50,
        Mode::Quick => 500,
        Mode::Full => 5_000,
    };
    let single_secs = timed(|| {
        for i in 0..single_entries {
            let cidr = format!("240.0.{}.{}/32", i / 256, i % 256);
            let r = control::call(
                &d.socket,
                &control::Request::Block(ListChange { cidrs: vec![cidr], ..Default::default() }),
                Duration::from_secs(30),
            )
            .expect("socket call");
            assert!(r.ok, "{:?}", r.error);
        }
    }) / 1e3;
    let reload: Vec<f64> = (0..singles.min(10))
        .map(|_| {
            timed(|| {
                d.ok(&["reload"]);
            })
        })
        .collect();

    // Fill the rate table through its pin, as a spoofed flood would.
    let rates_pin = paths::pin_dir(&env.pins, &pair.server_if).join(common::maps::RATES);
    let mut rates: HashMap<MapData, RateKey, RateState> =
        HashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(Path::new(&rates_pin)).expect("RATES pin")))
            .expect("hash map");
    let cap = common::capacity::RATES as u64;
    let want = if settings.mode == Mode::Smoke { 2_000 } else { cap };
    let mut rate_entries = 0u64;
    while rate_entries < want {
        if rates.insert(RateKey { addr: v4_mapped(rng.addr()), class: 1 }, RateState::default(), 0).is_ok() {
            rate_entries += 1;
        }
    }
    let scrape_full_ms = scrape_ms(&pair, scrapes);
    let rss_full_mib = rss_mib(d.pid());
    let maps_full_mib = maps_mib(d.pid());
    ControllerResults {
        bulk_entries: bulk_n,
        bulk,
        bulk_loads: bulk_rounds,
        bulk_phases,
        cli_block_ms: median_spread(&cli),
        socket_block_ms: median_spread(&sock),
        single_entries,
        single_secs,
        reload_ms: median_spread(&reload),
        scrape_ratio: scrape_full_ms.median / scrape_empty_ms.median,
        scrape_empty_ms,
        scrape_full_ms,
        rate_entries,
        rss_default_mib,
        maps_default_mib,
        rss_full_mib,
        maps_full_mib,
    }
}
