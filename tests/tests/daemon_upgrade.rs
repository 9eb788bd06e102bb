//! Upgrades and downgrades without a gap: a daemon built with another map layout (the
//! `layout-canary` feature: `BanEntry` 8 bytes longer, `LAYOUT_VERSION` one higher) takes over
//! the pinned program and maps of a running one under traffic, and back again; a layout it
//! cannot carry is refused with the old program still enforcing.

use std::{path::PathBuf, process::Command, time::Duration};

use aya::maps::MapData;
use tests::{
    bpf_available,
    daemon::{Daemon, Env, Flow, binary, canary_binary, missing, udp_reaches},
    netns::Pair,
};

/// Media (12000/udp) open to all; signaling limited hard so a ban is easy to raise.
const POLICY: &str = r#"
roles = ["voip-edge"]
[limit.signaling]
levels = [{ pps = 20, burst = 20, ban = "1h" }]
"#;

fn pin_dir(env: &Env) -> PathBuf {
    std::fs::read_dir(&env.pins).unwrap().next().expect("a pin folder per interface").unwrap().path()
}

/// Value size of the pinned `BANS` map: 16 bytes in the default layout, 24 in the canary's.
fn bans_value_size(env: &Env) -> u32 {
    MapData::from_pin(pin_dir(env).join(common::maps::BANS)).unwrap().info().unwrap().value_size()
}

/// Pin a new map at `path` with bpftool (the shape another version could have left).
fn pin_map(path: &std::path::Path, kind: &str, key: u32, value: u32) {
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(path)
        .args(["type", kind, "key", &key.to_string(), "value", &value.to_string(), "entries", "64", "name", "BANS"])
        .output()
        .expect("bpftool (the bootstrap installs it)");
    assert!(out.status.success(), "bpftool map create: {}", String::from_utf8_lossy(&out.stderr));
}

fn start(bin: &std::path::Path, pair: &Pair, env: &Env, policy: &str) -> Daemon {
    let extra = ["--metrics", "off", "--keep-attached", "--policy", policy];
    Daemon::try_start_bin(bin, &pair.server, &pair.server_if, env, &extra)
        .unwrap_or_else(|log| panic!("{} did not start:\n{log}", bin.display()))
}

/// One switch from the running daemon to `next` while an allowed flow (12000/udp) and a flow
/// to a closed port (9999/udp) run: nothing of the first lost, nothing of the second delivered,
/// and every packet of the second counted (by the old program or the new one) in the counters
/// the new daemon reads.
fn switch_under_traffic(pair: &Pair, env: &Env, running: Daemon, next: &std::path::Path, policy: &str) -> Daemon {
    let closed_before = running.dropped("port_closed");
    let allowed = Flow::start(
        &pair.client,
        &format!("{}:40001", pair.client_v4(2)),
        &pair.server,
        &format!("{}:12000", pair.server_v4()),
        1000,
    );
    let closed = Flow::start(
        &pair.client,
        &format!("{}:40002", pair.client_v4(4)),
        &pair.server,
        &format!("{}:9999", pair.server_v4()),
        1000,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(running.stop().success(), "the old daemon stops cleanly (--keep-attached)");
    std::thread::sleep(Duration::from_millis(200));
    let d = start(next, pair, env, policy);
    std::thread::sleep(Duration::from_millis(300));
    let (sent, got) = allowed.finish();
    let lost = missing(sent, &got);
    let (closed_sent, closed_got) = closed.finish();
    println!(
        "figure: switch to {}: allowed flow {} of {sent} delivered; closed port {} of {closed_sent} delivered",
        next.file_name().unwrap().to_string_lossy(),
        got.len(),
        closed_got.len()
    );
    assert!(lost.is_empty(), "the allowed flow lost {} of {sent}: {:?}", lost.len(), &lost[..lost.len().min(20)]);
    assert!(closed_got.is_empty(), "{} packets reached a closed port during the switch", closed_got.len());
    let closed_after = d.dropped("port_closed");
    assert!(
        closed_after >= closed_before + closed_sent,
        "counters carried across the switch: {closed_before} before + {closed_sent} sent, {closed_after} counted"
    );
    d
}

#[test]
#[ignore = "needs root and BPF"]
fn a_changed_layout_takes_over_under_traffic_and_back_keeping_lists_and_bans() {
    if !bpf_available() {
        return;
    }
    let (old, new) = (binary(), canary_binary());
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let policy = policy.to_str().unwrap();

    let d = start(&old, &pair, &env, policy);
    d.ok(&["block", &pair.client_v4(3), "--reason", "kept across versions"]);
    for _ in 0..40 {
        udp_reaches(&pair, 5, 5060);
    }
    let banned = d.json(&["list", "banned"]);
    assert_eq!(banned["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)), "{banned}");
    assert_eq!(bans_value_size(&env), 16);
    let old_id = Daemon::attached_program_id(&pair).expect("attached");
    let old_version = d.json(&["status"])["layout_version"].as_u64().unwrap();

    // Upgrade: the canary build migrates BANS (16 -> 24-byte values) and swaps the programs.
    let d = switch_under_traffic(&pair, &env, d, &new, policy);
    let log = d.log_text();
    assert!(log.contains("migrated the pinned maps to this version's layout"), "{log}");
    assert!(log.contains("BANS (key 16/value 16/"), "the migration names what moved: {log}");
    assert!(log.contains("COUNTERS (key 4/value 16/96 entries -> 4/16/128"), "{log}");
    assert!(log.contains("replaced its program without detaching"), "{log}");
    let status = d.json(&["status"]);
    let new_id = Daemon::attached_program_id(&pair).expect("still attached");
    assert_ne!(new_id, old_id, "the new build's program runs");
    assert_eq!(status["program_id"], new_id);
    assert_eq!(status["replaced_program"], old_id);
    assert_eq!(status["layout_version"], old_version + 1);
    assert_eq!(bans_value_size(&env), 24, "the pinned BANS is the new layout's");
    assert!(!pin_dir(&env).join("staged").exists(), "nothing left staged");
    let list = d.json(&["list"]);
    assert_eq!(list["blocked"][0]["reason"], "kept across versions", "{list}");
    assert_eq!(list["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)), "the ban came over: {list}");
    assert!(!udp_reaches(&pair, 3, 12000), "the block is enforced by the new program");
    assert!(!udp_reaches(&pair, 5, 12000), "the carried ban is enforced by the new program");
    assert!(udp_reaches(&pair, 6, 12000), "open ports stay open");
    assert!(!udp_reaches(&pair, 6, 9999), "closed ports stay closed");

    // A restart of the same build keeps its program (same code: nothing to replace).
    assert!(d.stop().success());
    let d = start(&new, &pair, &env, policy);
    assert!(d.log_text().contains("adopted the attached program without detaching"), "{}", d.log_text());
    assert_eq!(Daemon::attached_program_id(&pair), Some(new_id));

    // A daemon that died after the swap but before moving the new maps into place: the attached
    // program's BANS is still in `staged/`, an old-layout BANS at the pin. The next start moves
    // the staged one into place rather than migrating the stale one again.
    assert!(d.stop().success());
    let dir = pin_dir(&env);
    std::fs::create_dir(dir.join("staged")).unwrap();
    std::fs::rename(dir.join(common::maps::BANS), dir.join("staged").join(common::maps::BANS)).unwrap();
    pin_map(&dir.join(common::maps::BANS), "lru_hash", 16, 16);
    let d = start(&new, &pair, &env, policy);
    let log = d.log_text();
    assert!(log.contains("finished a migration a previous daemon left after its swap"), "{log}");
    assert!(!log.contains("migrated the pinned maps"), "nothing left to migrate: {log}");
    assert_eq!(bans_value_size(&env), 24);
    assert!(!dir.join("staged").exists());
    assert_eq!(d.json(&["list", "banned"])["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)));

    // Downgrade: back to 16-byte values (the canary's extra bytes are zero, so nothing is lost).
    let d = switch_under_traffic(&pair, &env, d, &old, policy);
    assert!(d.log_text().contains("migrated the pinned maps"), "{}", d.log_text());
    assert_eq!(bans_value_size(&env), 16);
    assert_eq!(d.json(&["status"])["layout_version"], old_version);
    let list = d.json(&["list"]);
    assert_eq!(list["banned"][0]["cidr"], format!("{}/32", pair.client_v4(5)), "{list}");
    assert!(!udp_reaches(&pair, 3, 12000) && !udp_reaches(&pair, 5, 12000), "block and ban still enforced");
    assert!(d.stop().success());
}

#[test]
#[ignore = "needs root and BPF"]
fn a_layout_that_cannot_be_carried_is_refused_and_the_old_program_keeps_enforcing() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write("p.toml", POLICY);
    let policy = policy.to_str().unwrap();
    let d = start(&binary(), &pair, &env, policy);
    d.ok(&["block", &pair.client_v4(3)]);
    let id = Daemon::attached_program_id(&pair).expect("attached");
    assert!(d.stop().success());

    // A migration a daemon left before its swap: removed at the next start.
    let dir = pin_dir(&env);
    std::fs::create_dir(dir.join("staged")).unwrap();
    pin_map(&dir.join("staged").join(common::maps::BANS), "lru_hash", 16, 24);
    let d = start(&binary(), &pair, &env, policy);
    assert!(d.log_text().contains("a migration a previous daemon left before its swap"), "{}", d.log_text());
    assert!(!dir.join("staged").exists());
    assert_eq!(Daemon::attached_program_id(&pair), Some(id), "same build: the program is kept");
    assert!(d.stop().success());

    // A version this build does not know: its BANS is keyed by 20 bytes.
    let bans = dir.join(common::maps::BANS);
    std::fs::remove_file(&bans).unwrap();
    pin_map(&bans, "hash", 20, 16);

    let err = Daemon::try_start_bin(
        &binary(),
        &pair.server,
        &pair.server_if,
        &env,
        &["--metrics", "off", "--keep-attached", "--policy", policy],
    )
    .err()
    .expect("the daemon refuses a layout it cannot carry");
    assert!(err.contains("cannot carry pinned map BANS"), "{err}");
    assert!(err.contains("key changed from 20 to 16 bytes"), "{err}");
    assert!(err.contains("keeps enforcing"), "the message says nothing changed: {err}");
    assert_eq!(Daemon::attached_program_id(&pair), Some(id), "the old program stays attached");
    assert!(!pin_dir(&env).join("staged").exists(), "the staged maps are removed");
    assert!(!udp_reaches(&pair, 3, 12000), "the old program still blocks");
    assert!(udp_reaches(&pair, 4, 12000) && !udp_reaches(&pair, 4, 9999), "and still filters ports");
    // Leave the interface clean: unpinning the links detaches the programs.
    for link in ["link_xdp", "link_tc"] {
        std::fs::remove_file(pin_dir(&env).join(link)).unwrap();
    }
    assert_eq!(Daemon::attached_program_id(&pair), None);
}
