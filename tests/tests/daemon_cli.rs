//! Every operator verb through the real control socket, each checked by what the data plane
//! then does to real packets, not only by the daemon's reply.

use std::{net::UdpSocket, path::Path, process::Command, time::Duration};

use tests::{
    bpf_available,
    daemon::{Daemon, Env, binary, udp_reaches},
    netns::{NetNs, Pair},
};

fn bind(ns: &NetNs, addr: String) -> UdpSocket {
    let s = ns.enter(|| UdpSocket::bind(&addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
#[ignore = "needs root and BPF"]
fn block_unblock_allow_disallow_change_real_traffic() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    assert!(udp_reaches(&pair, 2, 5060), "baseline: SIP reachable");
    assert!(!udp_reaches(&pair, 2, 9999), "baseline: 9999 closed");

    let client = pair.client_v4(2);
    let out = d.ok(&["block", &format!("{client}/32"), "--reason", "scanner seen in logs"]);
    assert!(out.contains("blocked"), "{out}");
    assert!(!udp_reaches(&pair, 2, 5060), "blocked source dropped right after `block` returned");
    assert!(udp_reaches(&pair, 3, 5060), "another source unaffected");
    let list = d.json(&["list", "blocked"]);
    let row = &list["blocked"][0];
    assert_eq!(row["cidr"], format!("{client}/32"));
    assert_eq!(row["origin"], "manual");
    assert_eq!(row["reason"], "scanner seen in logs");
    assert!(row["who"].as_str().unwrap().contains("uid 0"), "{row}");
    assert!(row["expires"].is_null());

    d.ok(&["unblock", &format!("{client}/32")]);
    assert!(udp_reaches(&pair, 2, 5060), "unblocked source passes again");
    assert_eq!(d.json(&["list", "blocked"])["blocked"].as_array().unwrap().len(), 0);

    d.ok(&["allow", &pair.client_v4(4), "--reason", "office"]);
    assert!(udp_reaches(&pair, 4, 9999), "allowed source bypasses the closed port");
    assert!(!udp_reaches(&pair, 5, 9999), "others still dropped");
    assert_eq!(d.json(&["list", "allowed"])["allowed"][0]["cidr"], format!("{}/32", pair.client_v4(4)));
    d.ok(&["disallow", &pair.client_v4(4)]);
    assert!(!udp_reaches(&pair, 4, 9999), "disallowed source dropped again");

    // IPv6 through the same verbs.
    let rx6 = bind(&pair.server, format!("[{}]:5060", pair.server_v6()));
    let tx6 = bind(&pair.client, format!("[{}]:0", pair.client_v6(2)));
    tx6.send_to(b"v6", format!("[{}]:5060", pair.server_v6())).unwrap();
    assert!(rx6.recv(&mut [0u8; 8]).is_ok(), "IPv6 baseline (also resolves the neighbour)");
    d.ok(&["block", &format!("{}/128", pair.client_v6(2))]);
    tx6.send_to(b"v6", format!("[{}]:5060", pair.server_v6())).unwrap();
    assert!(rx6.recv(&mut [0u8; 8]).is_err(), "blocked IPv6 source dropped");
    d.ok(&["unblock", &format!("{}/128", pair.client_v6(2))]);
    // While blocked, even its neighbour solicitations were dropped (everything from a blocked
    // source is); the client may need a moment to re-resolve the server.
    let passed = (0..10).any(|_| {
        tx6.send_to(b"v6", format!("[{}]:5060", pair.server_v6())).unwrap();
        rx6.recv(&mut [0u8; 8]).is_ok()
    });
    assert!(passed, "unblocked IPv6 source passes");
}

#[test]
#[ignore = "needs root and BPF"]
fn ttl_entries_expire_by_themselves() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    d.ok(&["block", &pair.client_v4(2), "--ttl", "2s"]);
    d.ok(&["allow", &pair.client_v4(3), "--ttl", "2s"]);
    assert!(!udp_reaches(&pair, 2, 5060));
    assert!(udp_reaches(&pair, 3, 9999));
    let exp = d.json(&["list"])["blocked"][0]["expires"].as_u64().unwrap();
    assert!(exp > 0);
    std::thread::sleep(Duration::from_millis(3500));
    assert!(udp_reaches(&pair, 2, 5060), "block expired after its TTL");
    assert!(!udp_reaches(&pair, 3, 9999), "allow expired after its TTL");
    let list = d.json(&["list"]);
    assert_eq!(list["blocked"].as_array().unwrap().len(), 0, "{list}");
    assert_eq!(list["allowed"].as_array().unwrap().len(), 0, "{list}");
    assert!(d.log_text().contains("list entry expired"), "expiry is logged");
}

#[test]
#[ignore = "needs root and BPF"]
fn bad_input_exits_2_and_changes_nothing() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    d.ok(&["block", "192.0.2.0/24"]);
    for args in [
        vec!["block", "not-a-cidr"],
        vec!["block", "192.0.2.0/33"],
        vec!["block", "10.0.0.1/8"],
        vec!["block", "198.51.100.0/24", "--ttl", "soon"],
        vec!["block", "198.51.100.0/24", "bogus"],
        vec!["unblock", "203.0.113.0/24"],
        vec!["disallow", "203.0.113.7"],
        vec!["list", "everything"],
        vec!["reload", "--confirm-within", "whenever"],
        vec!["confirm"],
        vec!["frobnicate"],
    ] {
        let out = d.cli(&args);
        assert_eq!(
            code(&out),
            2,
            "voipwall {} must exit 2; stderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "voipwall {}: says what is wrong", args.join(" "));
    }
    // Nothing changed: one blocked entry, still enforced.
    let list = d.json(&["list", "blocked"]);
    assert_eq!(list["blocked"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["blocked"][0]["cidr"], "192.0.2.0/24");
    assert!(udp_reaches(&pair, 2, 5060));

    // Guards: the host's own address, and the caller's SSH client.
    let own = format!("10.77.{}.0/24", pair.net);
    let out = d.cli(&["block", &own]);
    assert_eq!(code(&out), 2, "blocking the host's own range is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("own address"));
    assert!(udp_reaches(&pair, 2, 5060), "refused block changed nothing");
    let out = Command::new(binary())
        .args(["--iface", &d.iface, "--socket"])
        .arg(&d.socket)
        .args(["block", "198.51.100.0/24"])
        .env("SSH_CONNECTION", "198.51.100.77 50000 10.0.0.1 22")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "blocking the caller's SSH client is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSH client"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary())
        .args(["--iface", &d.iface, "--socket"])
        .arg(&d.socket)
        .args(["block", "198.51.100.0/24", "--force"])
        .env("SSH_CONNECTION", "198.51.100.77 50000 10.0.0.1 22")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "--force overrides");

    // An unreachable daemon is a runtime failure: exit 1.
    let out = Command::new(binary()).args(["--socket", "/nonexistent/vw.sock", "status"]).output().unwrap();
    assert_eq!(code(&out), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
#[ignore = "needs root and BPF"]
fn stats_top_status_policy_show_and_roles() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write(
        "p.toml",
        "roles = [\"voip-edge\"]\n[limit.signaling]\nlevels = [{ pps = 50, burst = 50, ban = \"1h\" }]\n",
    );
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    // Some traffic: 3 packets to a closed port, then a flood that gets banned.
    for _ in 0..3 {
        udp_reaches(&pair, 2, 9999);
    }
    let tx = bind(&pair.client, format!("{}:0", pair.client_v4(5)));
    let _rx = bind(&pair.server, format!("{}:5060", pair.server_v4()));
    for i in 0..200u32 {
        tx.send_to(&i.to_be_bytes(), format!("{}:5060", pair.server_v4())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    let stats = d.json(&["stats"]);
    let closed =
        stats["counters"].as_array().unwrap().iter().find(|c| c["reason"] == "port_closed").expect("port_closed row");
    assert_eq!(closed["verdict"], "drop");
    assert!(closed["packets"].as_u64().unwrap() >= 3, "{closed}");
    let sip = stats["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "voip-edge/sip").expect("rule row");
    assert!(sip["pass"].as_u64().unwrap() >= 50 && sip["drop"].as_u64().unwrap() >= 1, "{sip}");
    assert!(d.ok(&["stats"]).contains("port_closed"));

    let top = d.json(&["top"]);
    let first = &top["sources"][0];
    assert_eq!(first["source"], format!("{}/32", pair.client_v4(5)), "the flooder tops the list: {top}");
    assert_eq!(first["class"], "signaling");

    let banned = d.json(&["list", "banned"]);
    assert_eq!(banned["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)), "{banned}");
    assert_eq!(banned["banned"][0]["origin"], "auto");
    assert_eq!(banned["banned"][0]["level"], 1);
    assert!(d.log_text().contains("banned"), "each ban is a log line");

    let status = d.json(&["status"]);
    assert_eq!(status["iface"], pair.server_if);
    assert_eq!(status["attached"], true);
    assert!(["native", "generic"].contains(&status["xdp_mode"].as_str().unwrap()));
    assert_eq!(status["policy"]["path"], policy.display().to_string());
    assert_eq!(status["policy"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(status["policy"]["roles"][0], "voip-edge");
    assert_eq!(status["dry_run"], false);
    let maps = status["maps"].as_array().unwrap();
    let bans = maps.iter().find(|m| m["map"] == "BANS").unwrap();
    assert_eq!(bans["entries"], 1);
    assert!(bans["capacity"].as_u64().unwrap() > 0);

    let show = d.json(&["policy", "show"]);
    assert_eq!(show["sha256"], status["policy"]["sha256"]);
    assert!(show["rules"].as_array().unwrap().iter().any(|r| r == "voip-edge/sip"));
    assert!(d.ok(&["policy", "show"]).contains("roles = [\"voip-edge\"]"));

    // Local verbs.
    let roles = d.ok(&["roles"]);
    for r in ["voip-edge", "portsip-pbx", "asterisk-dialer", "pbxtra", "portaswitch-sip-processing"] {
        assert!(roles.contains(r), "{r} in `voipwall roles`");
    }
    let pbx = d.ok(&["roles", "portsip-pbx"]);
    assert!(
        pbx.contains("admins") && pbx.contains("fill") && pbx.contains("source: PortSIP PBX: Security Features"),
        "{pbx}"
    );
    assert_eq!(code(&d.cli(&["roles", "nope"])), 2);
}

#[test]
fn policy_check_rejects_every_broken_file_naming_its_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/broken");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let line: usize = text.lines().find_map(|l| l.strip_prefix("# expect-line: ")).unwrap().trim().parse().unwrap();
        let out = Command::new(binary()).args(["policy", "check"]).arg(&path).output().unwrap();
        assert_eq!(code(&out), 2, "{} must be rejected with exit 2", path.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:{line}:", path.display())),
            "{}: the message names line {line}:\n{err}",
            path.display()
        );
        assert!(err.contains("help:"), "{}: says what to write instead:\n{err}", path.display());
        n += 1;
    }
    assert!(n >= 20);
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/good/readme-example.toml");
    let out = Command::new(binary()).args(["policy", "check"]).arg(&good).output().unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let lockout = std::env::temp_dir().join(format!("vw-lockout-{}.toml", std::process::id()));
    std::fs::write(&lockout, "roles = [\"portsip-pbx\"]\n").unwrap();
    let out = Command::new(binary()).args(["policy", "check"]).arg(&lockout).output().unwrap();
    assert_eq!(code(&out), 0, "a lockout policy is valid; check only warns");
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed to every source"));
    let _ = std::fs::remove_file(lockout);
}

/// `block --file` imports a feed in one change (batched kernel inserts, a fsynced snapshot);
/// later single changes go to the journal; after kill -9 the restarted daemon has all of it.
/// A feed with one bad line names the line and changes nothing.
#[test]
#[ignore = "needs root and BPF"]
fn bulk_file_import_and_journal_survive_kill_9() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    // 3000 /32s in 100.64.0.0/10, a /20 and the test client, with comments and blank lines.
    let mut feed = String::from("# a feed\n\n");
    for i in 0..3000u32 {
        let a = 0x6440_0000u32 + i * 7;
        feed.push_str(&format!("{}/32  # entry {i}\n", std::net::Ipv4Addr::from(a)));
    }
    feed.push_str("100.127.0.0/20\n");
    feed.push_str(&format!("{}\n", pair.client_v4(2)));
    let file = env.write("feed.txt", &feed);
    let out = d.ok(&["block", "--file", file.to_str().unwrap(), "--reason", "feed"]);
    assert!(out.contains("3002"), "{out}");
    assert!(!udp_reaches(&pair, 2, 5060), "a feed entry is enforced when the command returns");
    assert!(udp_reaches(&pair, 3, 5060), "others pass");
    // The daemon says where the bulk change's time went, one line with every phase.
    let log = d.log_text();
    let timing: Vec<&str> = log.lines().filter(|l| l.contains("list change timing")).collect();
    assert_eq!(timing.len(), 1, "one timing line for the bulk change:\n{log}");
    assert!(timing[0].contains("count=3002"), "{}", timing[0]);
    let phases = tests::bench::controller::BulkPhases::from_log(&log).expect("every phase logged");
    // (Each phase is rounded to a millisecond on its own.)
    assert!(phases.total >= phases.kernel && phases.total + 0.002 >= phases.parse + phases.lists, "{phases:?}");

    // A feed with a bad line: exit 2 naming file and line, nothing applied.
    let bad = env.write("bad.txt", "198.51.100.0/24\n198.51.100.300/32\n");
    let out = d.cli(&["block", "--file", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.txt:2"), "names the line: {err}");
    let list = d.json(&["list", "blocked"]);
    assert_eq!(list["blocked"].as_array().unwrap().len(), 3002, "the bad feed added nothing");

    // Journalled single changes on top of the snapshot (no timing line: no snapshot written).
    d.ok(&["block", &pair.client_v4(3)]);
    d.ok(&["unblock", "100.64.0.0/32"]);
    assert_eq!(d.log_text().matches("list change timing").count(), 1, "{}", d.log_text());
    d.kill9();
    let d = Daemon::start(&pair, &env, &["--metrics", "off"]);
    let list = d.json(&["list", "blocked"]);
    let rows = list["blocked"].as_array().unwrap();
    assert_eq!(rows.len(), 3002, "snapshot + journal restored: 3002 + 1 - 1");
    assert!(rows.iter().any(|r| r["cidr"] == format!("{}/32", pair.client_v4(3))));
    assert!(!rows.iter().any(|r| r["cidr"] == "100.64.0.0/32"));
    assert!(rows.iter().any(|r| r["cidr"] == "100.127.0.0/20" && r["reason"] == "feed"));
    assert!(!udp_reaches(&pair, 2, 5060), "feed entry enforced after the restart");
    assert!(!udp_reaches(&pair, 3, 5060), "journalled entry enforced after the restart");
    assert!(udp_reaches(&pair, 4, 5060), "others pass");
}

/// `pinhole add/del/list` on a port in pinhole mode: each checked by what real packets then do,
/// and the exit codes of bad requests (2, nothing changed).
#[test]
#[ignore = "needs root and BPF"]
fn pinhole_add_del_list_open_and_close_media_ports() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("p.toml", "roles = [\"voip-edge\"]\n[media]\nmode = \"pinhole\"\n");
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    let peer = pair.client_v4(4);
    assert!(!udp_reaches(&pair, 4, 12000), "a media port in pinhole mode is closed without a pinhole");
    assert!(d.ok(&["pinhole", "add", &peer, "12000"]).contains("open until deleted"));
    assert!(udp_reaches(&pair, 4, 12000), "the pinhole's peer reaches the port");
    assert!(!udp_reaches(&pair, 5, 12000), "another source does not");
    let list = d.json(&["pinhole", "list"]);
    let rows = list["pinholes"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list:#}");
    assert_eq!(rows[0]["peer"], peer);
    assert_eq!(rows[0]["local_port"], 12000);
    assert_eq!(rows[0]["opened_by"], serde_json::json!(["manual"]));
    assert_eq!(rows[0]["state"], "active", "latched by the probe: {list:#}");
    assert!(d.ok(&["pinhole", "list"]).contains(&peer));
    assert!(d.ok(&["explain", &peer, "udp", "12000"]).contains("live pinhole"));

    d.ok(&["pinhole", "del", &peer, "12000"]);
    assert!(!udp_reaches(&pair, 4, 12000), "deleted: closed again");
    assert!(d.ok(&["pinhole", "list"]).contains("no pinholes"));

    // A TTL: open, then closed by the data plane when it runs out.
    d.ok(&["pinhole", "add", &peer, "12002", "--ttl", "1s"]);
    assert!(udp_reaches(&pair, 4, 12002));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!udp_reaches(&pair, 4, 12002), "past its TTL");

    // Bad requests: exit 2 and a message that names the problem; nothing changes.
    for (args, says) in [
        (vec!["pinhole", "add", &peer, "5060"], "not in pinhole mode"),
        (vec!["pinhole", "add", &peer, "9999"], "not in pinhole mode"),
        (vec!["pinhole", "add", &peer, "12000", "--ttl", "soon"], "--ttl"),
        (vec!["pinhole", "del", &peer, "12004"], "no pinhole"),
        (vec!["pinhole", "add", "not-an-address", "12000"], "invalid"),
    ] {
        let out = d.cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The TTL's pinhole may still be listed as expired until the once-a-second sweep.
    let list = d.json(&["pinhole", "list"]);
    let rows = list["pinholes"].as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["local_port"] == 12002 && r["state"] == "expired"),
        "the refused requests changed nothing: {list:#}"
    );
}
