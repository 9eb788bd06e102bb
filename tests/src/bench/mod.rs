//! The benchmark suite behind `cargo xtask bench` (the `bench` binary). Every figure is a
//! median over rounds with its spread, and every cost is also given as a ratio to a baseline
//! measured in the same run, because the machines are shared and noisy.

pub mod controller;
pub mod e2e;
pub mod fleet;
pub mod ops;
pub mod paths;
pub mod peers;
pub mod report;
pub mod scale;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use serde::Serialize;
use voipwall::{dataplane::BENCH_OBJECT, policy::Capacity};

/// How hard to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Settings {
    /// `test_run` repetitions per measurement.
    pub repeat: u32,
    /// Rounds (each measures baseline and subject once).
    pub rounds: usize,
    pub mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Seconds: proves the harness works (part of `cargo xtask test`).
    Smoke,
    /// Under two minutes.
    Quick,
    /// The full suite (under fifteen minutes).
    Full,
}

impl Settings {
    pub fn new(mode: Mode) -> Self {
        match mode {
            Mode::Smoke => Self { repeat: 2_000, rounds: 2, mode },
            Mode::Quick => Self { repeat: 200_000, rounds: 5, mode },
            Mode::Full => Self { repeat: 1_000_000, rounds: 10, mode },
        }
    }

    pub fn capacity(&self) -> Capacity {
        Capacity { rates: 1 << 20, block_v4: 1 << 21, ..Capacity::default() }
    }
}

/// Median and spread of a sample.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median.
    pub spread: f64,
}

pub fn median_spread(xs: &[f64]) -> Stat {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let (min, max) = (v[0], v[n - 1]);
    Stat { median, min, max, spread: if median > 0.0 { (max - min) / median } else { 0.0 } }
}

/// Two measurements taken side by side: in every round one right after the other (the order
/// alternating), `rounds` times; medians and spreads of each, and of their ratio per round, so
/// the machine's drift between rounds cancels.
pub fn side_by_side(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> (Stat, Stat, Stat) {
    let (mut va, mut vb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = a();
            (x, b())
        } else {
            let y = b();
            (a(), y)
        };
        va.push(x);
        vb.push(y);
        ratio.push(x / y.max(0.1));
    }
    (median_spread(&va), median_spread(&vb), median_spread(&ratio))
}

/// The benchmark programs (the empty baseline and single-operation programs), loaded in this
/// process.
pub struct Baseline {
    pub ebpf: Ebpf,
}

impl Baseline {
    pub fn load() -> Self {
        let mut ebpf = aya::EbpfLoader::new().load(BENCH_OBJECT).expect("loading the benchmark programs");
        for name in [
            "bench_empty",
            "bench_sink",
            "bench_parse",
            "bench_lpm",
            "bench_hash",
            "bench_lru",
            "bench_array",
            "bench_clock",
            "bench_redirect",
            "bench_drop",
            "bench_gate_read",
            "bench_mid_read",
        ] {
            let prog: &mut Xdp = ebpf.program_mut(name).unwrap_or_else(|| panic!("{name}")).try_into().expect("XDP");
            prog.load().unwrap_or_else(|e| panic!("verifier refused {name}: {e}"));
        }
        Self { ebpf }
    }

    /// Kernel-reported ns per run of the empty program on `frame`.
    pub fn ns(&self, frame: &[u8], repeat: u32) -> f64 {
        self.program_ns("bench_empty", frame, repeat)
    }

    /// Kernel-reported ns per run of one benchmark program.
    pub fn program_ns(&self, name: &str, frame: &[u8], repeat: u32) -> f64 {
        let prog: &Xdp = self.ebpf.program(name).unwrap_or_else(|| panic!("{name}")).try_into().expect("XDP");
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat, ..Default::default() })
            .unwrap_or_else(|e| panic!("test_run of {name}: {e}"));
        r.duration.as_nanos() as f64
    }
}

/// Run this thread on one CPU (test_run executes on the calling CPU).
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// While alive, this thread (and what it starts: the daemons of the controller and fleet
/// sections) may run on every CPU, as a deployed daemon does; dropping it restores the pin.
pub struct Unpinned(libc::cpu_set_t);

impl Unpinned {
    pub fn new() -> Self {
        // SAFETY: cpu_set_t values of their own size; the calls only read and write them.
        unsafe {
            let mut saved: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved);
            let mut all: libc::cpu_set_t = std::mem::zeroed();
            let online = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
            for c in 0..online.min(libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(c, &mut all);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &all);
            Self(saved)
        }
    }
}

impl Default for Unpinned {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Unpinned {
    fn drop(&mut self) {
        // SAFETY: the set saved by `new`, passed with its size.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}
