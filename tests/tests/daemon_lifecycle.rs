//! The daemon's promises over time: fail-static across kill -9 with adoption, persistence across
//! restarts, atomic reloads under traffic, commit-confirmed rollback, the lockout guard.

use std::time::Duration;

use tests::{
    bpf_available,
    daemon::{Daemon, Env, Flow, missing, udp_reaches},
    netns::Pair,
};

/// Voip-edge with SIP limits high enough for the test flows.
const POLICY_A: &str = r#"
roles = ["voip-edge"]
[limit.signaling]
levels = [{ pps = 20000, burst = 20000, ban = "1h" }]
"#;

/// Other roles and rules, but 5060/udp still open to the same flow.
const POLICY_B: &str = r#"
roles = ["asterisk-dialer"]
[[rule]]
name = "ssh"
proto = "tcp"
ports = ["22"]
[[rule]]
name = "extra"
proto = "udp"
ports = ["7000-7100"]
[limit.signaling]
levels = [{ pps = 20000, burst = 20000, ban = "1h" }]
"#;

#[test]
#[ignore = "needs root and BPF"]
fn kill_9_keeps_filtering_and_the_restart_adopts_without_detaching() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("a.toml", POLICY_A);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    d.ok(&["block", &pair.client_v4(3)]);
    let id_before = Daemon::attached_program_id(&pair).expect("attached");

    // A steady allowed flow and a blocked sender, across kill -9 and restart.
    let good = Flow::start(
        &pair.client,
        &format!("{}:40001", pair.client_v4(2)),
        &pair.server,
        &format!("{}:5060", pair.server_v4()),
        500,
    );
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    assert_eq!(Daemon::attached_program_id(&pair), Some(id_before), "still attached after kill -9");
    // 12000/udp: an RTP port of voip-edge (5060 is taken by the flow's receiver).
    assert!(!udp_reaches(&pair, 3, 12000), "blocked source stays blocked with no daemon");
    assert!(udp_reaches(&pair, 4, 12000), "open ports stay open with no daemon");
    assert!(!udp_reaches(&pair, 4, 9999), "closed ports stay closed with no daemon");
    std::thread::sleep(Duration::from_millis(500));

    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    assert!(d.log_text().contains("adopted the attached program without detaching"), "{}", d.log_text());
    assert_eq!(Daemon::attached_program_id(&pair), Some(id_before), "adoption keeps the same program id");
    let status = d.json(&["status"]);
    assert_eq!(status["adopted"], true);
    assert_eq!(status["program_id"], id_before);
    std::thread::sleep(Duration::from_millis(300));
    let (sent, got) = good.finish();
    let lost = missing(sent, &got);
    assert!(
        lost.is_empty(),
        "the allowed flow lost {} of {sent} packets across kill -9 and restart: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(!udp_reaches(&pair, 3, 12000), "still blocked after the restart");
    assert_eq!(d.json(&["list", "blocked"])["blocked"][0]["cidr"], format!("{}/32", pair.client_v4(3)));

    // SIGTERM without --keep-attached detaches.
    assert!(d.stop().success());
    assert_eq!(Daemon::attached_program_id(&pair), None, "SIGTERM detaches");
}

#[test]
#[ignore = "needs root and BPF"]
fn keep_attached_leaves_the_program_and_bans_survive_a_restart() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write(
        "p.toml",
        "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{ pps = 20, burst = 20, ban = \"1h\" }]\n",
    );
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--keep-attached", "--policy", policy.to_str().unwrap()]);
    d.ok(&["block", &pair.client_v4(3), "--ttl", "1h", "--reason", "persist me"]);
    d.ok(&["allow", &pair.client_v4(4)]);
    for _ in 0..40 {
        udp_reaches(&pair, 5, 5060);
    }
    assert_eq!(d.json(&["list", "banned"])["banned"].as_array().unwrap().len(), 1);
    let id = Daemon::attached_program_id(&pair);
    assert!(d.stop().success());
    assert_eq!(Daemon::attached_program_id(&pair), id, "--keep-attached leaves the program attached");

    // Wipe the pinned maps: the restarted daemon must restore lists and bans from the state dir.
    let pin_dir = std::fs::read_dir(&env.pins).unwrap().next().unwrap().unwrap().path();
    for e in std::fs::read_dir(&pin_dir).unwrap() {
        let _ = std::fs::remove_file(e.unwrap().path());
    }
    assert_eq!(Daemon::attached_program_id(&pair), None, "unpinning everything detached it");
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    let list = d.json(&["list"]);
    assert_eq!(list["blocked"][0]["reason"], "persist me", "{list}");
    assert!(list["blocked"][0]["expires"].as_u64().unwrap() > 0);
    assert_eq!(list["allowed"][0]["cidr"], format!("{}/32", pair.client_v4(4)));
    assert_eq!(list["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)), "the ban was restored: {list}");
    assert!(!udp_reaches(&pair, 3, 5060), "restored block enforced");
    assert!(udp_reaches(&pair, 4, 9999), "restored allow enforced");
    assert!(!udp_reaches(&pair, 5, 5060), "restored ban enforced");
    assert!(udp_reaches(&pair, 2, 5060), "others pass");
}

#[test]
#[ignore = "needs root and BPF"]
fn reload_under_a_steady_flow_drops_nothing_both_policies_allow() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let a = env.write("a.toml", POLICY_A);
    let b = env.write("b.toml", POLICY_B);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", a.to_str().unwrap()]);
    let flow = Flow::start(
        &pair.client,
        &format!("{}:40001", pair.client_v4(2)),
        &pair.server,
        &format!("{}:5060", pair.server_v4()),
        2000,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut generations = Vec::new();
    for i in 0..6 {
        let p = if i % 2 == 0 { &b } else { &a };
        d.ok(&["reload", "--policy", p.to_str().unwrap()]);
        generations.push(d.json(&["status"])["policy"]["generation"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(250));
    }
    let (sent, got) = flow.finish();
    let lost = missing(sent, &got);
    assert!(sent > 2000, "the flow ran ({sent} sent)");
    assert!(
        lost.is_empty(),
        "{} of {sent} packets lost during 6 reloads: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(generations.windows(2).all(|w| w[0] != w[1]), "every reload flipped the generation: {generations:?}");
    // The reloads took effect: B opened 7000/udp, A closes it again.
    d.ok(&["reload", "--policy", b.to_str().unwrap()]);
    assert!(udp_reaches(&pair, 2, 7050));
    d.ok(&["reload", "--policy", a.to_str().unwrap()]);
    assert!(!udp_reaches(&pair, 2, 7050));
    let status = d.json(&["status"]);
    assert_eq!(status["reloads"]["ok"], 8);
}

#[test]
#[ignore = "needs root and BPF"]
fn a_broken_reload_keeps_the_running_policy() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let a = env.write("a.toml", POLICY_A);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", a.to_str().unwrap()]);
    let sha = d.json(&["status"])["policy"]["sha256"].clone();
    std::fs::write(&a, "roles = [\"voip-edge\"]\n[[rule]]\nname = \"x\"\nproto = \"udp\"\nports = [\"70000\"]\n")
        .unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.toml:5:") && err.contains("70000"), "names the line: {err}");
    let status = d.json(&["status"]);
    assert_eq!(status["policy"]["sha256"], sha, "old policy still in force");
    assert_eq!(status["reloads"]["error"], 1);
    assert!(udp_reaches(&pair, 2, 5060));
    // SIGHUP with the file still broken changes nothing either; fixed, it applies.
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.json(&["status"])["policy"]["sha256"], sha);
    std::fs::write(&a, POLICY_B).unwrap();
    d.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(d.json(&["status"])["policy"]["roles"][0], "asterisk-dialer", "SIGHUP reloads");
}

#[test]
#[ignore = "needs root and BPF"]
fn commit_confirmed_rolls_back_unless_confirmed() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let a = env.write("a.toml", POLICY_A);
    let b = env.write("b.toml", POLICY_B);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", a.to_str().unwrap()]);
    let out = d.ok(&["reload", "--policy", b.to_str().unwrap(), "--confirm-within", "2s"]);
    assert!(out.contains("rolls back"), "{out}");
    assert!(udp_reaches(&pair, 2, 7050), "the new policy is live at once");
    assert!(d.json(&["status"])["policy"]["pending_confirmation"].as_f64().is_some());
    std::thread::sleep(Duration::from_millis(3500));
    assert!(!udp_reaches(&pair, 2, 7050), "not confirmed: rolled back to A");
    let status = d.json(&["status"]);
    assert_eq!(status["policy"]["path"], a.display().to_string());
    assert_eq!(status["reloads"]["rolled_back"], 1);
    assert!(d.log_text().contains("rolled back"));

    d.ok(&["reload", "--policy", b.to_str().unwrap(), "--confirm-within", "2s"]);
    d.ok(&["confirm"]);
    std::thread::sleep(Duration::from_millis(3000));
    assert!(udp_reaches(&pair, 2, 7050), "confirmed: B stays");
    assert_eq!(d.json(&["status"])["reloads"]["rolled_back"], 1);
    assert_eq!(d.cli(&["confirm"]).status.code(), Some(2), "nothing left to confirm");
}

#[test]
#[ignore = "needs root and BPF"]
fn lockout_guard_at_run_and_reload() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let lockout = env.write("lockout.toml", "roles = [\"portsip-pbx\"]\n");
    match Daemon::try_start(&pair, &env, &["--metrics", "off", "--policy", lockout.to_str().unwrap()]) {
        Ok(_) => panic!("run must refuse a policy that closes SSH to everyone"),
        Err(log) => assert!(log.contains("exit status: 2") && log.contains("--allow-lockout"), "{log}"),
    }
    assert_eq!(Daemon::attached_program_id(&pair), None, "nothing was attached");
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", lockout.to_str().unwrap(), "--allow-lockout"]);
    assert!(udp_reaches(&pair, 2, 5060), "--allow-lockout runs it");
    d.stop();

    let a = env.write("a.toml", POLICY_A);
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", a.to_str().unwrap()]);
    let out = d.cli(&["reload", "--policy", lockout.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSH"));
    assert_eq!(d.json(&["status"])["policy"]["path"], a.display().to_string());
    // Admins set, but not the caller: the caller-aware guard refuses too.
    let admins = env.write("admins.toml", "roles = [\"portsip-pbx\"]\n[sets]\nadmins = [\"192.0.2.0/24\"]\n");
    let out = std::process::Command::new(tests::daemon::binary())
        .args(["--iface", &d.iface, "--socket"])
        .arg(&d.socket)
        .args(["reload", "--policy", admins.to_str().unwrap()])
        .env("SSH_CONNECTION", "198.51.100.9 50000 10.0.0.1 22")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("your SSH session"));
    d.ok(&["reload", "--policy", lockout.to_str().unwrap(), "--allow-lockout"]);
    assert_eq!(d.json(&["status"])["policy"]["path"], lockout.display().to_string());
}

/// `voipwall --iface IFACE detach EXTRA` with the test's pin and state folders.
fn detach(pair: &Pair, env: &Env, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(tests::daemon::binary())
        .args(["--iface", &pair.server_if, "--socket"])
        .arg(env.socket())
        .arg("detach")
        .arg("--pin-dir")
        .arg(&env.pins)
        .arg("--state-dir")
        .arg(&env.state)
        .args(extra)
        .output()
        .expect("run voipwall detach");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `voipwall detach`: refused while a daemon runs; `--stop` stops it first; after a
/// `--keep-attached` stop it unpins the links (the program detaches: closed ports reach the stack
/// again), and `--purge` also removes the pinned maps and the state.
#[test]
#[ignore = "needs root and BPF"]
fn detach_takes_voipwall_off_the_interface_and_purge_leaves_nothing() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY_A);
    let args = ["--metrics", "off", "--keep-attached", "--policy", policy.to_str().unwrap()];
    let pins = voipwall::paths::pin_dir(&env.pins, &pair.server_if);
    let state = voipwall::paths::state_dir(&env.state, &pair.server_if);

    let d = Daemon::start(&pair, &env, &args);
    let id = Daemon::attached_program_id(&pair);
    assert!(id.is_some());
    let (ok, out, err) = detach(&pair, &env, &["--purge"]);
    assert!(!ok, "refused while the daemon runs: {out}{err}");
    assert!(err.contains("daemon runs for") && err.contains("--stop"), "{err}");
    assert_eq!(Daemon::attached_program_id(&pair), id, "a refused detach changes nothing");
    assert!(d.cli(&["status"]).status.success(), "the daemon still answers");

    let (ok, out, err) = detach(&pair, &env, &["--stop"]);
    assert!(ok, "{out}{err}\n{}", d.log_text());
    assert!(out.contains(&format!("stopped the daemon (pid {})", d.pid())), "{out}");
    assert!(out.contains("detached the XDP program"), "{out}");
    assert_eq!(Daemon::attached_program_id(&pair), None, "detached");
    assert!(pins.exists() && state.exists(), "without --purge the maps and state stay");
    drop(d);

    // Again with state, stopped with --keep-attached: the program keeps filtering until detach.
    let d = Daemon::start(&pair, &env, &args);
    d.ok(&["block", &pair.client_v4(3), "--ttl", "1h"]);
    assert!(d.stop().success());
    assert!(Daemon::attached_program_id(&pair).is_some(), "--keep-attached");
    assert!(!udp_reaches(&pair, 4, 9999), "closed port closed while attached");
    let (ok, out, err) = detach(&pair, &env, &["--purge"]);
    assert!(ok, "{out}{err}");
    for line in
        ["detached the XDP program", "detached the TC egress program", "removed the pinned maps", "removed the state"]
    {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert_eq!(Daemon::attached_program_id(&pair), None);
    assert!(!pins.exists(), "pins removed");
    assert!(!state.exists(), "state removed");
    assert!(udp_reaches(&pair, 4, 9999), "nothing filters the interface any more");
    assert!(udp_reaches(&pair, 3, 12000), "the blocked source went with the maps");

    let (ok, out, _) = detach(&pair, &env, &["--purge"]);
    assert!(ok && out.contains("nothing of voipwall on"), "{out}");
}
