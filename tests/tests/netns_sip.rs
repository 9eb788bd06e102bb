//! A real SIP server behind voipwall: Kamailio in the server namespace requires digest
//! authentication; SIPp clients in the client namespace register and call. A client that keeps
//! retrying a wrong password is banned by the egress program after the configured count of
//! failed authentications, and Kamailio sees nothing more from it, while a client with the right
//! password on another address registers and calls normally.

use std::time::{Duration, Instant};

use tests::{
    bpf_available,
    daemon::{Daemon, Env},
    netns::Pair,
    voip::{Kamailio, Sipp, asset, sipp_calls},
};

const FAILED_AUTH: usize = 5;

#[test]
#[ignore = "needs root and BPF"]
fn a_password_guesser_is_banned_and_real_phones_keep_working() {
    if !bpf_available() {
        return;
    }
    let pair = Pair::new();
    let env = Env::new();
    let policy = env.write(
        "sip.toml",
        &format!("roles = [\"voip-edge\"]\n[sip]\nfailed_auth = {{ count = {FAILED_AUTH}, ban = \"1h\" }}\n"),
    );
    let d = Daemon::start(&pair, &env, &["--metrics", "off", "--policy", policy.to_str().unwrap()]);
    let server = pair.server_v4();
    let (phone, callee, guesser) = (pair.client_v4(2), pair.client_v4(3), pair.client_v4(6));
    let k = Kamailio::start(&pair.server, &env.root, &[&server], "s3cret", &format!("{callee}:5070"));
    let target = format!("{server}:5060");
    let register = asset("register.xml");
    let register = register.to_str().unwrap();

    // The guesser: 20 registrations with a wrong password, 10 per second; each is REGISTER,
    // 401, REGISTER with credentials, 401.
    let started = Instant::now();
    let out = Sipp::run(
        &pair.client,
        &[
            &target,
            "-sf",
            register,
            "-s",
            "100",
            "-au",
            "100",
            "-ap",
            "wrong",
            "-i",
            &guesser,
            "-p",
            "5064",
            "-m",
            "20",
            "-r",
            "10",
            "-recv_timeout",
            "1500",
        ],
        Duration::from_secs(15),
    );
    let guesser_out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (ok_calls, failed_calls) = sipp_calls(&guesser_out);
    let log = d.log_text();
    let ban_line =
        log.lines().find(|l| l.contains("banned") && l.contains("class=sip-failed-auth")).unwrap_or_else(|| {
            panic!("no failed-auth ban in the daemon log after {:?}:\n{log}\nsipp:\n{guesser_out}", started.elapsed())
        });
    assert!(ban_line.contains(&format!("source={guesser}/32")), "{ban_line}");
    assert!(ban_line.contains(&format!("count={FAILED_AUTH}")), "{ban_line}");
    // Each failed attempt is two REGISTERs; the ban lands as the fifth 401 leaves the host.
    let seen = k.requests_from(&guesser);
    assert_eq!(
        seen,
        2 * FAILED_AUTH,
        "Kamailio saw {seen} requests from the guesser; {ok_calls} attempts completed, {failed_calls} failed"
    );
    assert_eq!(ok_calls as usize, FAILED_AUTH, "the attempts after the ban never got an answer");
    let banned = d.json(&["list", "banned"]);
    let row = banned["banned"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cidr"] == format!("{guesser}/32"))
        .unwrap_or_else(|| panic!("{banned}"));
    assert_eq!(row["class"], "sip-failed-auth", "{row}");

    // More attempts from the banned address reach nobody.
    let out = Sipp::run(
        &pair.client,
        &[
            &target,
            "-sf",
            register,
            "-s",
            "100",
            "-au",
            "100",
            "-ap",
            "wrong",
            "-i",
            &guesser,
            "-p",
            "5064",
            "-m",
            "3",
            "-r",
            "10",
            "-recv_timeout",
            "1000",
        ],
        Duration::from_secs(8),
    );
    assert_ne!(out.status.code(), Some(0), "a banned client gets no answer");
    assert_eq!(k.requests_from(&guesser), seen, "the server sees no further requests from the banned address");

    // A phone with the right password on another address registers and calls.
    let out = Sipp::run(
        &pair.client,
        &[
            &target,
            "-sf",
            register,
            "-s",
            "100",
            "-au",
            "100",
            "-ap",
            "s3cret",
            "-i",
            &phone,
            "-p",
            "5062",
            "-m",
            "1",
            "-recv_timeout",
            "3000",
        ],
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "the phone registers:\n{text}");
    assert_eq!(sipp_calls(&text), (1, 0));
    let uas_log = env.root.join("uas.log");
    let uas = Sipp::spawn(
        &pair.client,
        &["-sn", "uas", "-i", &callee, "-p", "5070", "-m", "1"],
        Duration::from_secs(20),
        &uas_log,
    );
    std::thread::sleep(Duration::from_millis(500));
    let call = asset("call.xml");
    let out = Sipp::run(
        &pair.client,
        &[
            &target,
            "-sf",
            call.to_str().unwrap(),
            "-s",
            "100",
            "-au",
            "100",
            "-ap",
            "s3cret",
            "-i",
            &phone,
            "-p",
            "5062",
            "-m",
            "1",
            "-d",
            "1000",
            "-recv_timeout",
            "5000",
        ],
        Duration::from_secs(15),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the phone's call completes (INVITE, 407, INVITE with credentials, 200, ACK, BYE):\n{text}"
    );
    assert_eq!(
        uas.wait(),
        0,
        "the callee answered and hung up cleanly:\n{}",
        std::fs::read_to_string(&uas_log).unwrap_or_default()
    );
    assert_eq!(k.method_from("INVITE", &phone), 2, "two INVITEs (challenged, then with credentials)");
    assert_eq!(k.method_from("BYE", &phone), 1);
    // The phone's single challenge-then-success did not count as a failure.
    assert!(!d.log_text().contains(&format!("source={phone}/32")), "the phone was never banned");
}
