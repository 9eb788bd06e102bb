//! `voipwall run`: startup checks, the fw, and the services around it (control socket, ban
//! events, aya-log, sweeper, counters, metrics, signals), all stopped through one shutdown
//! channel (bpfman's `serve.rs` shape).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use common::{BanEvent, reason, verdict};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    control,
    dataplane::XdpModeChoice,
    firewall::{Firewall, OpError, ReloadRequest, StartOptions},
    fleet::lapi,
    metrics, paths,
    policy::fleet::Crowdsec,
    system,
};

/// Flags of `voipwall run`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    pub iface: String,
    pub policy: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    pub socket: Option<PathBuf>,
    pub dry_run: bool,
    pub xdp_mode: XdpModeChoice,
    pub keep_attached: bool,
    pub allow_lockout: bool,
    /// Move unreadable state files aside and rebuild from the pinned maps.
    pub recover: bool,
    pub metrics: Option<SocketAddr>,
    /// Print a counter summary this often (0 = only at exit).
    pub stats_interval: Duration,
}

/// Why the daemon stopped with an error, and its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    pub code: i32,
    pub message: String,
}

impl RunError {
    fn runtime(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
}

impl From<OpError> for RunError {
    fn from(e: OpError) -> Self {
        Self { code: e.exit_code(), message: e.to_string() }
    }
}

pub fn run(args: RunArgs) -> Result<(), RunError> {
    bound_malloc_arenas();
    system::require_root().map_err(|e| RunError::runtime(e.to_string()))?;
    system::require_interface(&args.iface).map_err(|e| RunError { code: 2, message: e.to_string() })?;
    if system::ensure_bpffs(&args.pin_root).map_err(|e| RunError::runtime(e.to_string()))? {
        info!(path = paths::BPFFS, "mounted bpffs");
    }
    let socket = args.socket.clone().unwrap_or_else(|| paths::socket_path(&args.iface));
    let lock_path = socket.with_extension("lock");
    let _lock = system::lock_interface(&lock_path, &args.iface).map_err(|e| RunError::runtime(e.to_string()))?;

    let opts = StartOptions {
        iface: args.iface.clone(),
        policy_path: args.policy.clone(),
        state_dir: paths::state_dir(&args.state_dir, &args.iface),
        pin_dir: paths::pin_dir(&args.pin_root, &args.iface),
        force_dry_run: args.dry_run,
        xdp_mode: args.xdp_mode,
        allow_lockout: args.allow_lockout,
        recover: args.recover,
    };
    let mut fw = Firewall::start(&opts)?;
    let events = fw.dataplane_mut().take_events();
    let capture = fw.dataplane_mut().take_capture();
    let signaling = fw.dataplane_mut().take_signaling();
    let program_id = fw.attachment().map(|a| a.program_id);
    let fw = Arc::new(Mutex::new(fw));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Reloads, list changes and metrics run on blocking threads; a handful is plenty, and
        // a bounded pool keeps the number of threads (and their stacks) flat under load.
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|e| RunError::runtime(format!("tokio runtime: {e}")))?;
    let result = rt.block_on(serve(args.clone(), socket.clone(), fw.clone(), [events, capture, signaling], program_id));
    let keep = args.keep_attached;
    {
        let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
        print_counters(&fw);
        fw.shutdown(keep);
    }
    let _ = std::fs::remove_file(&socket);
    result
}

async fn serve(
    args: RunArgs,
    socket: PathBuf,
    fw: Arc<Mutex<Firewall>>,
    [events, capture, signaling]: [Option<RingBuf<MapData>>; 3],
    program_id: Option<u32>,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener =
        control::bind(&socket).map_err(|e| RunError::runtime(format!("control socket {}: {e}", socket.display())))?;
    info!(socket = %socket.display(), "control socket ready");
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(control::serve(listener, fw.clone(), stop_rx.clone())));
    if let Some(rb) = events {
        tasks.push(tokio::spawn(ban_events(rb, fw.clone(), stop_rx.clone())));
    }
    if let Some(rb) = capture {
        tasks.push(tokio::spawn(drop_samples(rb, args.iface.clone(), fw.clone(), stop_rx.clone())));
    }
    if let Some(rb) = signaling {
        tasks.push(tokio::spawn(call_signaling(rb, fw.clone(), stop_rx.clone())));
    }
    if let Some(id) = program_id {
        tasks.push(tokio::spawn(ebpf_logs(id, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(sweeper(fw.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(fleet_pull(fw.clone(), stop_rx.clone())));
    tasks.push(tokio::spawn(fleet_push(fw.clone(), stop_rx.clone())));
    if !args.stats_interval.is_zero() {
        tasks.push(tokio::spawn(counter_lines(fw.clone(), args.stats_interval, stop_rx.clone())));
    }
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::runtime(format!("metrics listener {addr}: {e}")))?;
        info!(%addr, "serving /metrics and /healthz");
        tasks.push(tokio::spawn(metrics::serve(listener, fw.clone(), stop_rx.clone())));
    }

    let mut hup = signal(SignalKind::hangup()).map_err(|e| RunError::runtime(e.to_string()))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| RunError::runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| RunError::runtime(e.to_string()))?;
    info!(iface = %args.iface, "voipwall running");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let fw = fw.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = fw.reload(ReloadRequest::default()) {
                        error!(error = %e, "SIGHUP reload failed; the previous policy keeps running");
                    }
                }).await;
            }
            _ = term.recv() => { info!("SIGTERM"); break; }
            _ = int.recv() => { info!("SIGINT"); break; }
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    Ok(())
}

/// Call `on_ready` with `inner` each time its file descriptor turns readable, until `stop`
/// flips. `what` names the source in the log line if it cannot be watched.
async fn on_readable<T: std::os::fd::AsRawFd>(
    inner: T,
    what: &str,
    mut stop: watch::Receiver<bool>,
    mut on_ready: impl FnMut(&mut T),
) {
    let raw = inner.as_raw_fd();
    // SAFETY: `inner` (a ring buffer or the aya-log reader) owns its fd for as long as the
    // AsyncFd lives and always returns that same fd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %std::io::Error::from(e), fd = raw, "{what} unavailable");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            guard = fd.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                on_ready(guard.get_inner_mut());
                guard.clear_ready();
            }
        }
    }
}

/// Drain the ban event ring buffer into the firewall (log line, mirror, metrics).
async fn ban_events(rb: RingBuf<MapData>, fw: Arc<Mutex<Firewall>>, stop: watch::Receiver<bool>) {
    on_readable(rb, "ban events", stop, |rb| {
        let mut batch = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() == std::mem::size_of::<BanEvent>() {
                // SAFETY: the kernel wrote exactly one BanEvent into this record.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const BanEvent) });
            }
        }
        if !batch.is_empty() {
            let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
            for ev in &batch {
                fw.on_ban_event(ev);
            }
        }
    })
    .await;
}

/// Drain the drop-sample ring buffer into the `[capture]` writers of the policy in force (a
/// reload that changes `[capture]` gets new writers with the next sample).
async fn drop_samples(rb: RingBuf<MapData>, iface: String, fw: Arc<Mutex<Firewall>>, stop: watch::Receiver<bool>) {
    let mut sink: Option<crate::capture::Sink> = None;
    on_readable(rb, "drop samples", stop, |rb| {
        let config = fw.lock().unwrap_or_else(|p| p.into_inner()).capture_config();
        match config {
            None => sink = None,
            Some(c) if sink.as_ref().is_none_or(|s| s.config != c) => sink = Some(crate::capture::Sink::new(&iface, c)),
            Some(_) => {}
        }
        let offset_us = crate::state::unix_now_us().saturating_sub(crate::dataplane::monotonic_ns() / 1000);
        while let Some(item) = rb.next() {
            if item.len() != std::mem::size_of::<common::CaptureRecord>() {
                continue;
            }
            // SAFETY: the kernel wrote exactly one CaptureRecord into this record.
            let rec = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const common::CaptureRecord) };
            if let (Some(sink), Some(sample)) =
                (sink.as_mut(), crate::capture::Sample::of(&rec, rec.ts_ns / 1000 + offset_us))
            {
                sink.write(&sample);
            }
        }
    })
    .await;
}

/// Drain the call-signaling ring buffer into the pinhole learner.
async fn call_signaling(rb: RingBuf<MapData>, fw: Arc<Mutex<Firewall>>, stop: watch::Receiver<bool>) {
    on_readable(rb, "call signaling", stop, |rb| {
        let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(item) = rb.next() {
            if item.len() != std::mem::size_of::<common::SignalRecord>() {
                continue;
            }
            // SAFETY: the kernel wrote exactly one SignalRecord into this record.
            let rec = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const common::SignalRecord) };
            fw.on_signal(&rec);
        }
    })
    .await;
}

/// aya-log records from the program, bridged into `tracing` through the `log` facade.
async fn ebpf_logs(program_id: u32, stop: watch::Receiver<bool>) {
    match aya_log::EbpfLogger::init_from_id(program_id) {
        Ok(logger) => on_readable(logger, "eBPF log records", stop, |l| l.flush()).await,
        Err(e) => warn!(error = %e, "eBPF log records unavailable"),
    }
}

/// Every second: expire bans and list entries, roll back unconfirmed reloads.
async fn sweeper(fw: Arc<Mutex<Firewall>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let fw = fw.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
                    fw.rollback_if_due(Instant::now());
                    fw.sweep();
                }).await;
            }
        }
    }
}

/// The wait before the next try after `failures` failures in a row: the interval, doubling up
/// to 8 intervals and at most 10 s.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let cap = (interval * 8).min(Duration::from_secs(10)).max(interval);
    (interval * 2u32.saturating_pow(failures.min(6))).min(cap)
}

/// The longest a whole-set answer is waited for.
const FULL_SET_TIMEOUT_MAX: Duration = Duration::from_secs(120);

/// The time the next whole-set pull gets after one that took `current` and `timed_out`: a LAPI
/// that needs longer than `timeout` to write every decision (a large set on a busy LAPI) is
/// given twice as long each time, up to [`FULL_SET_TIMEOUT_MAX`]. Abandoning the answer and
/// asking again would only repeat the LAPI's work and never succeed.
fn next_full_timeout(current: Duration, timed_out: bool) -> Duration {
    if timed_out { (current * 2).min(FULL_SET_TIMEOUT_MAX).max(current) } else { current }
}

/// Pull the fleet's decisions every `interval` while the policy has `[fleet.crowdsec]` with
/// `pull`. The HTTP call and the kernel writes run on blocking threads.
async fn fleet_pull(fw: Arc<Mutex<Firewall>>, mut stop: watch::Receiver<bool>) {
    let mut client: Option<(Arc<Crowdsec>, Arc<lapi::Client>)> = None;
    let mut full_timeout = Duration::ZERO;
    loop {
        let started = tokio::time::Instant::now();
        let config = fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_config();
        let wait = match config {
            Some((cfg, startup, _)) if cfg.pull => {
                if client.as_ref().is_none_or(|(c, _)| !Arc::ptr_eq(c, &cfg)) {
                    full_timeout = cfg.timeout;
                    client = match lapi::Client::new(&cfg) {
                        Ok(c) => Some((cfg.clone(), Arc::new(c))),
                        Err(e) => {
                            fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_pulled(&cfg, startup, Err(e), "config");
                            None
                        }
                    };
                }
                if let Some((_, c)) = &client {
                    let c = c.clone();
                    let timeout = if startup { full_timeout } else { cfg.timeout };
                    let answer = tokio::task::spawn_blocking(move || c.stream(startup, timeout)).await;
                    let (result, kind) = match answer {
                        Ok(Ok(s)) => (Ok(s), ""),
                        Ok(Err(e)) => (Err(e.to_string()), e.kind()),
                        Err(e) => (Err(e.to_string()), "internal"),
                    };
                    if startup {
                        full_timeout = next_full_timeout(full_timeout, kind == "timeout");
                    }
                    let fw = fw.clone();
                    let cfg2 = cfg.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_pulled(&cfg2, startup, result, kind);
                    })
                    .await;
                }
                let failures = fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_config().map_or(0, |c| c.2);
                // One pull per interval, the pull's own time included.
                backoff(cfg.interval, failures).saturating_sub(started.elapsed())
            }
            _ => {
                client = None;
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Send this host's bans to the LAPI as alerts, in batches, while the policy has
/// `[fleet.crowdsec]` with `push`. The data plane never waits on it: bans queue in the fleet.
async fn fleet_push(fw: Arc<Mutex<Firewall>>, mut stop: watch::Receiver<bool>) {
    const BATCH: usize = 100;
    let mut client: Option<(Arc<Crowdsec>, lapi::Client)> = None;
    let mut failures = 0u32;
    loop {
        let (cfg, alerts) = fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_take(BATCH);
        // A new ban waits at most this long for its push.
        let mut wait = Duration::from_millis(50);
        if let Some(cfg) = cfg
            && !alerts.is_empty()
        {
            if client.as_ref().is_none_or(|(c, _)| !Arc::ptr_eq(c, &cfg)) {
                client = lapi::Client::new(&cfg).map(|c| (cfg.clone(), c)).ok();
            }
            let full = alerts.len() == BATCH;
            let result = match client.take() {
                Some((cfg_of, mut c)) => {
                    let batch = alerts.clone();
                    match tokio::task::spawn_blocking(move || {
                        let r = c.push(&batch);
                        (c, r)
                    })
                    .await
                    {
                        Ok((c, r)) => {
                            client = Some((cfg_of, c));
                            r
                        }
                        Err(e) => Err(lapi::LapiError::Config(e.to_string())),
                    }
                }
                None => {
                    Err(lapi::LapiError::Config(lapi::Client::new(&cfg).err().unwrap_or_else(|| "no client".into())))
                }
            };
            let ok = result.is_ok();
            fw.lock().unwrap_or_else(|p| p.into_inner()).fleet_pushed(alerts, result);
            if ok {
                failures = 0;
                if full {
                    wait = Duration::ZERO;
                }
            } else {
                failures = failures.saturating_add(1);
                wait = backoff(cfg.interval, failures);
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn counter_lines(fw: Arc<Mutex<Firewall>>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                let fw = fw.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(c) = fw.counters() {
                    let mut parts = Vec::new();
                    for v in 0..verdict::COUNT {
                        for r in 0..reason::COUNT {
                            let p = c.get(v, r).packets;
                            if p > 0 {
                                parts.push(format!("{}/{}={p}", verdict::NAMES[v as usize], reason::NAMES[r as usize]));
                            }
                        }
                    }
                    info!(target: "voipwall::counters", counters = %parts.join(" "), "counters");
                }
            }
        }
    }
}

fn print_counters(fw: &Firewall) {
    match fw.stats() {
        Ok(reply) => println!("{}", reply.text),
        Err(e) => error!(error = %e, "reading counters failed"),
    }
}

/// glibc gives each new thread its own malloc arena (up to 8 per core) and keeps what an arena
/// once held: a daemon whose blocking threads come and go then grows in steps under load (a
/// soak showed +29 MiB in 10 minutes, in steps, while the CPU was contended). Two arenas keep
/// the resident size flat; the daemon's allocations are not contended enough to need more.
fn bound_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_set_that_timed_out_gets_twice_as_long_up_to_the_cap() {
        let five = Duration::from_secs(5);
        assert_eq!(next_full_timeout(five, false), five);
        assert_eq!(next_full_timeout(five, true), Duration::from_secs(10));
        let mut t = five;
        for _ in 0..10 {
            t = next_full_timeout(t, true);
        }
        assert_eq!(t, FULL_SET_TIMEOUT_MAX);
        // A configured timeout above the cap is never shortened.
        let long = Duration::from_secs(300);
        assert_eq!(next_full_timeout(long, true), long);
    }

    #[test]
    fn backoff_doubles_up_to_eight_intervals_and_ten_seconds() {
        let s = Duration::from_secs(1);
        assert_eq!(backoff(s, 0), s);
        assert_eq!(backoff(s, 1), 2 * s);
        assert_eq!(backoff(s, 3), 8 * s);
        assert_eq!(backoff(s, 9), 8 * s);
        assert_eq!(backoff(Duration::from_secs(5), 3), Duration::from_secs(10));
    }
}
