//! Shared helpers of voipwall's integration tests: the root/BPF gate, a packet builder, a
//! BPF_PROG_TEST_RUN harness that asserts the exact reason counter, and a network-namespace
//! guard.

pub mod bench;
pub mod crowdsec;
pub mod daemon;
pub mod differential;
pub mod model;
pub mod netns;
pub mod packet;
pub mod pbx;
pub mod sipgen;
pub mod site;
pub mod voip;

use aya::maps::MapData;
use common::{BanEvent, reason, verdict};
use voipwall::{
    dataplane::{Counters, Dataplane, LoadOptions},
    policy::{self, Capacity, CompiledPolicy},
    sources::{ListKind, Lists, SourceTables},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// True when the test may use BPF. Without root it skips with a message, except under
/// `CI=true`, where it fails: CI must never count a skipped test as a pass.
pub fn bpf_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("CI=true: this test needs root and BPF, but runs as uid {uid}");
    }
    eprintln!("SKIPPED: needs root and BPF (set CI=true to make this a failure)");
    false
}

/// Small maps: many harnesses run in parallel.
pub fn test_capacity() -> Capacity {
    Capacity {
        allow: 1024,
        block_v4: 4096,
        block_v6: 1024,
        sets: 1024,
        bans: 1024,
        rates: 4096,
        flows: 1024,
        frags: 256,
        sip_peers: 1024,
        known: 1024,
    }
}

/// What one packet got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub action: u32,
    pub verdict: u32,
    pub reason: u32,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let action = match self.action {
            XDP_PASS => "XDP_PASS",
            XDP_DROP => "XDP_DROP",
            XDP_ABORTED => "XDP_ABORTED",
            _ => "XDP_?",
        };
        write!(
            f,
            "{action} counted as {}/{}",
            verdict::NAMES[self.verdict as usize],
            reason::NAMES.get(self.reason as usize).unwrap_or(&"?")
        )
    }
}

/// A loaded (not attached) data plane with a policy applied.
///
/// Its verdict checks ([`Harness::expect`]) work as a table: a case that fails is recorded with
/// its name and the following cases still run; when the harness is dropped, every failed case
/// is reported at once (the test fails with all their names).
pub struct Harness {
    pub dp: Dataplane,
    /// The allow/block list tries, taken over from `dp` as the daemon does.
    pub sources: SourceTables,
    pub compiled: CompiledPolicy,
    events: Option<aya::maps::RingBuf<MapData>>,
    cases: std::cell::Cell<usize>,
    failures: std::cell::RefCell<Vec<String>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failures = self.failures.take();
        if failures.is_empty() {
            return;
        }
        const SHOWN: usize = 40;
        let mut report = format!("{} of {} cases failed:", failures.len(), self.cases.get());
        for f in failures.iter().take(SHOWN) {
            report.push_str("\n  ");
            report.push_str(f);
        }
        if failures.len() > SHOWN {
            report.push_str(&format!("\n  ... and {} more", failures.len() - SHOWN));
        }
        if std::thread::panicking() {
            // Another assertion already fails the test; still show the table's failures.
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

impl Harness {
    /// Load the object through the verifier and apply `policy_text` (and its static lists).
    pub fn new(policy_text: &str) -> Self {
        Self::new_with_capacity(policy_text, test_capacity())
    }

    /// [`Harness::new`] with chosen map sizes.
    pub fn new_with_capacity(policy_text: &str, capacity: Capacity) -> Self {
        let (_, compiled) = policy::parse("harness.toml", policy_text).unwrap_or_else(|e| panic!("{e}"));
        let mut dp = Dataplane::load(&LoadOptions { pin_dir: None, capacity })
            .unwrap_or_else(|e| panic!("loading the data plane failed: {e}"));
        dp.apply_policy(&compiled).unwrap_or_else(|e| panic!("apply_policy: {e}"));
        let mut sources = SourceTables::new(dp.take_source_maps().expect("source maps"));
        write_static_lists(&mut sources, &compiled);
        let events = dp.take_events();
        Self { dp, sources, compiled, events, cases: Default::default(), failures: Default::default() }
    }

    /// Re-apply a new policy text (a reload).
    pub fn reload(&mut self, policy_text: &str) {
        let (_, compiled) = policy::parse("harness.toml", policy_text).unwrap_or_else(|e| panic!("{e}"));
        self.dp.apply_policy(&compiled).unwrap_or_else(|e| panic!("apply_policy: {e}"));
        self.compiled = compiled;
    }

    /// Run one frame and find the one counter it moved: `Err` says what went wrong.
    pub fn try_run(&self, frame: &[u8]) -> Result<Outcome, String> {
        let before = self.dp.counters().expect("read counters");
        let (action, _) = self.dp.test_run(frame, 1).unwrap_or_else(|e| panic!("test_run: {e}"));
        let after = self.dp.counters().expect("read counters");
        let moved = diff(&before, &after);
        match moved.as_slice() {
            [(v, r, 1, bytes)] if *bytes == frame.len() as u64 => Ok(Outcome { action, verdict: *v, reason: *r }),
            _ => Err(format!(
                "one packet must move exactly one counter by one packet and {} bytes; moved {moved:?} (action {action})",
                frame.len()
            )),
        }
    }

    /// Run one frame and find the one counter it moved (panics if not exactly one moved).
    #[track_caller]
    pub fn run(&self, frame: &[u8]) -> Outcome {
        self.try_run(frame).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Check one frame's action and exact reason counter. A mismatch is recorded under `what`
    /// (see [`Harness`]) and the outcome returned all the same.
    #[track_caller]
    pub fn expect(&self, what: &str, frame: &[u8], action: u32, reason_name: &str) -> Outcome {
        let reason = reason::from_name(reason_name).unwrap_or_else(|| panic!("no reason `{reason_name}`"));
        let want_verdict = if !reason::is_drop(reason) {
            verdict::PASS
        } else if action == XDP_PASS {
            verdict::WOULD_DROP
        } else {
            verdict::DROP
        };
        let want = Outcome { action, verdict: want_verdict, reason };
        self.cases.set(self.cases.get() + 1);
        let at = std::panic::Location::caller();
        match self.try_run(frame) {
            Ok(out) if out == want => out,
            Ok(out) => {
                self.failures.borrow_mut().push(format!("{what} ({at}): expected {want}, got {out}"));
                out
            }
            Err(e) => {
                self.failures.borrow_mut().push(format!("{what} ({at}): {e}"));
                want
            }
        }
    }

    /// Per-rule counters of the rule called `name`: `[pass, drop, would_drop]` packets.
    pub fn rule_packets(&self, name: &str) -> [u64; 3] {
        let id = self
            .compiled
            .rule_names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no rule `{name}` in {:?}", self.compiled.rule_names));
        let all = self.dp.rule_counters(id + 1).unwrap();
        [all[id][0].packets, all[id][1].packets, all[id][2].packets]
    }

    /// Ban events emitted so far.
    pub fn drain_events(&mut self) -> Vec<BanEvent> {
        let mut out = Vec::new();
        if let Some(rb) = self.events.as_mut() {
            while let Some(item) = rb.next() {
                assert_eq!(item.len(), std::mem::size_of::<BanEvent>(), "event size");
                // SAFETY: the ring buffer item holds exactly one BanEvent written by the kernel.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const BanEvent) });
            }
        }
        out
    }
}

/// Put a compiled policy's allow and block lists into the source tries, as the daemon would.
pub fn write_static_lists(tables: &mut SourceTables, compiled: &CompiledPolicy) {
    let mut lists = Lists::default();
    let mut diff = lists.set_policy(ListKind::Allow, &compiled.allow);
    diff.extend(lists.set_policy(ListKind::Block, &compiled.block));
    for c in diff.all() {
        tables.write(c).unwrap_or_else(|e| panic!("writing {c:?}: {e}"));
    }
}

/// Counters that changed: (verdict, reason, packets delta, bytes delta).
pub fn diff(before: &Counters, after: &Counters) -> Vec<(u32, u32, u64, u64)> {
    let mut out = Vec::new();
    for v in 0..verdict::COUNT {
        for r in 0..reason::COUNT {
            let (b, a) = (before.get(v, r), after.get(v, r));
            if a.packets != b.packets || a.bytes != b.bytes {
                out.push((v, r, a.packets - b.packets, a.bytes - b.bytes));
            }
        }
    }
    out
}

/// `promtool check metrics` on a scrape (`dir` holds the file it reads); panics with promtool's
/// words and the scrape if it refuses it.
#[track_caller]
pub fn promtool_check_metrics(dir: &std::path::Path, text: &str) {
    let path = dir.join("metrics.txt");
    std::fs::write(&path, text).expect("write the scrape");
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).expect("open the scrape"))
        .output()
        .expect("promtool (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
