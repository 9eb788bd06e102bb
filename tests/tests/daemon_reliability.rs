//! The daemon under bad conditions: unreadable state files (fail-static, then `--recover`), a
//! control socket under abuse, and a ban storm that must not flood the log.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use tests::{
    bpf_available,
    daemon::{Daemon, Env, udp_reaches},
    netns::{Injector, Pair, mac_of},
    packet::Packet,
};

/// voip-edge; a source sending more than one SIP packet a second is banned, every source
/// counts on its own (no shared budget for unknown sources).
const POLICY: &str = r#"
roles = ["voip-edge"]
[limit.signaling]
levels = [{ pps = 1, burst = 1, ban = "1h" }]
unknown = "off"
"#;

/// Send SIP-port packets from `host` until it is banned.
fn get_banned(pair: &Pair, d: &Daemon, host: u8) {
    let tx = pair.client.enter(|| std::net::UdpSocket::bind(format!("{}:0", pair.client_v4(host)))).unwrap();
    for _ in 0..5 {
        tx.send_to(b"x", format!("{}:5060", pair.server_v4())).unwrap();
    }
    let source = pair.client_v4(host);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.json(&["list", "banned"])["banned"].to_string().contains(&source) {
        assert!(Instant::now() < deadline, "{source} not banned:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files_named(dir: &std::path::Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "needs root and BPF"]
fn an_unreadable_state_file_stops_the_start_and_recover_rebuilds_from_the_pins() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let run = ["--metrics", "off", "--policy", policy.to_str().unwrap()];
    let d = Daemon::start(&pair, &env, &run);
    let blocked = format!("{}/32", pair.client_v4(3));
    d.ok(&["block", &blocked, "--reason", "scanner"]);
    d.ok(&["block", "192.0.2.0/24"]);
    get_banned(&pair, &d, 4);
    // The bans file is written by the once-a-second sweep.
    let bans = env.state.join(&d.iface).join("bans.json");
    let bans = if bans.exists() { bans } else { env.state.join("bans.json") };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&bans).unwrap_or_default().contains(&pair.client_v4(4)) {
        assert!(Instant::now() < deadline, "bans never persisted at {}", bans.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = bans.parent().unwrap().to_path_buf();
    let program = Daemon::attached_program_id(&pair).expect("attached");
    d.kill9();

    // A journal with a damaged record in the middle (not a torn tail, which is ignored).
    let journal = state.join("lists.journal");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.lines().count() >= 2, "journal: {text}");
    text = text.replacen("\"op\"", "\"op\u{1}", 1);
    std::fs::write(&journal, &text).unwrap();
    let err = Daemon::try_start(&pair, &env, &run).err().expect("a damaged journal stops the start");
    assert!(err.contains("lists.journal") && err.contains("--recover"), "{err}");
    assert_eq!(std::fs::read_to_string(&journal).unwrap(), text, "the damaged file is left as it is");
    assert_eq!(Daemon::attached_program_id(&pair), Some(program), "the pinned program stays attached");
    assert!(!udp_reaches(&pair, 3, 12000), "the blocked source stays blocked");
    assert!(!udp_reaches(&pair, 4, 12000), "the banned source stays banned");
    assert!(udp_reaches(&pair, 5, 12000), "open ports stay open");

    let mut with_recover = run.to_vec();
    with_recover.push("--recover");
    let d = Daemon::start(&pair, &env, &with_recover);
    let aside = files_named(&state, "lists.journal.bad-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), text, "moved aside intact");
    assert!(d.log_text().contains("moved aside"), "{}", d.log_text());
    let list = d.json(&["list", "blocked"]);
    let rows = list["blocked"].as_array().unwrap();
    for cidr in [blocked.as_str(), "192.0.2.0/24"] {
        let row = rows.iter().find(|r| r["cidr"] == cidr).unwrap_or_else(|| panic!("{cidr} not rebuilt: {list}"));
        assert!(row["who"].as_str().unwrap().contains("--recover"), "{row}");
    }
    assert!(!udp_reaches(&pair, 3, 12000), "still blocked after recovery");
    // The rebuilt lists are durable: a plain restart reads them back.
    d.kill9();
    let d = Daemon::start(&pair, &env, &run);
    assert_eq!(d.json(&["list", "blocked"])["blocked"].as_array().unwrap().len(), 2);
    d.kill9();

    // A truncated bans file.
    let full = std::fs::read(&bans).unwrap();
    std::fs::write(&bans, &full[..full.len() / 2]).unwrap();
    let err = Daemon::try_start(&pair, &env, &run).err().expect("a truncated bans file stops the start");
    assert!(err.contains("bans.json") && err.contains("--recover"), "{err}");
    assert_eq!(std::fs::read(&bans).unwrap(), &full[..full.len() / 2], "left as it is");
    assert!(!udp_reaches(&pair, 4, 12000), "the ban holds in the kernel meanwhile");
    let d = Daemon::start(&pair, &env, &with_recover);
    assert_eq!(files_named(&state, "bans.json.bad-").len(), 1);
    let banned = d.json(&["list", "banned"]);
    assert!(banned.to_string().contains(&pair.client_v4(4)), "ban rebuilt from the kernel: {banned}");
    assert!(!udp_reaches(&pair, 4, 12000), "still banned");
}

/// Send `bytes` (ignoring a reset once the daemon gave up) and read the answer line.
fn exchange(socket: &std::path::Path, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    serde_json::from_str(answer.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("answer {answer:?}: {e}"))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root and BPF"]
fn the_control_socket_keeps_answering_under_abuse() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    let socket = d.socket.clone();
    let rss_before = rss_kib(d.pid());

    // Idle clients (connected, sending nothing), within the limit.
    let idle: Vec<UnixStream> = (0..40).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    // Oversized, malformed and slow requests at the same time.
    let mut abusers = Vec::new();
    for i in 0..8 {
        let socket = socket.clone();
        abusers.push(std::thread::spawn(move || {
            let big = vec![b'a'; 3 << 20];
            ("oversized", i, exchange(&socket, &big))
        }));
    }
    for i in 0..8 {
        let socket = socket.clone();
        abusers.push(std::thread::spawn(move || {
            ("malformed", i, exchange(&socket, b"{\"op\": \"block\", \"cidrs\": 7}\n"))
        }));
    }
    for i in 0..4 {
        let socket = socket.clone();
        abusers.push(std::thread::spawn(move || ("slow", i, exchange(&socket, b"{\"op\":"))));
    }
    // Others are still answered, promptly.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    d.ok(&["status"]);
    d.ok(&["block", "192.0.2.1"]);
    assert!(t.elapsed() < Duration::from_secs(2), "answers took {:?} under abuse", t.elapsed());
    for a in abusers {
        let (what, i, answer) = a.join().unwrap();
        assert_eq!(answer["ok"], false, "{what} {i}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default().to_string();
        let expected = match what {
            "oversized" => "longer than",
            "malformed" => "malformed request",
            _ => "no complete request line within",
        };
        assert!(error.contains(expected), "{what} {i}: {error}");
        assert_eq!(answer["error_kind"], "invalid", "{what} {i}: {answer}");
    }
    let grown = rss_kib(d.pid()).saturating_sub(rss_before);
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");
    println!("figure: control socket abuse: RSS grew by {grown} KiB (8 x 3 MiB, 8 malformed, 4 slow, 40 idle)");

    // Beyond the limit: the clients past the 64th are told the daemon is busy, at once.
    drop(idle);
    let clients: Vec<UnixStream> = (0..80).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut busy = 0;
    for mut s in clients {
        s.set_nonblocking(true).unwrap();
        let mut answer = [0u8; 512];
        if let Ok(n) = s.read(&mut answer)
            && String::from_utf8_lossy(&answer[..n]).contains("busy")
        {
            busy += 1;
        }
    }
    assert!((12..=16).contains(&busy), "{busy} of 80 clients were told busy (64 are served at once)");
    // Those clients gone, everything answers again.
    let deadline = Instant::now() + Duration::from_secs(8);
    while !d.cli(&["status"]).status.success() {
        assert!(Instant::now() < deadline, "status never answered again:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Root only: the socket's mode, and a client without root cannot reach it.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tests::daemon::binary())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success(), "status as nobody succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ermission denied"), "{stderr}");
}

#[test]
#[ignore = "needs root and BPF"]
fn a_ban_storm_writes_a_bounded_number_of_log_lines() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    for (ns, iface) in [(&pair.server, &pair.server_if), (&pair.client, &pair.client_if)] {
        ns.sh(&format!("sysctl -qw net.ipv6.conf.{iface}.disable_ipv6=1"));
    }
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    let inj = Injector::open(&pair.client, &pair.client_if, mac_of(&pair.server, &pair.server_if));
    let host: [u8; 4] =
        pair.server_v4().split('.').map(|o| o.parse().unwrap()).collect::<Vec<u8>>().try_into().unwrap();
    // 3000 sources outside the server's subnet (it has no route back), three packets each: each
    // is banned on its second packet.
    const SOURCES: u32 = 3000;
    let started = Instant::now();
    for i in 0..SOURCES {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let frame = Packet::udp4(src, 5060, host, 5060).payload(b"x").bytes();
        for _ in 0..3 {
            inj.send(&frame);
        }
    }
    let banned = || d.json(&["list", "banned"])["banned"].as_array().unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = loop {
        let n = banned();
        if n >= SOURCES as u64 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(total, SOURCES as u64, "every source banned and its event handled");
    // Every ban is written or counted: lines plus the counts they and the summaries carry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = d.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("voipwall::ban") && l.contains(" banned")).collect();
        let suppressed = |l: &str| -> u64 {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("suppressed="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no count in {l}"))
        };
        let carried: u64 = lines.iter().map(|l| suppressed(l)).sum();
        let summed: u64 = log.lines().filter(|l| l.contains("more `ban` log lines")).map(suppressed).sum();
        let accounted = lines.len() as u64 + carried + summed;
        if accounted == total {
            let secs = started.elapsed().as_secs() + 1;
            assert!(lines.len() as u64 <= 20 * secs, "{} ban lines in {secs} s (at most 20 per second)", lines.len());
            println!(
                "figure: ban storm: {total} bans, {} lines, {} counted in later lines, {summed} in summaries",
                lines.len(),
                carried
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{total} bans but {} lines + {carried} + {summed} counted:\n{}",
            lines.len(),
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
