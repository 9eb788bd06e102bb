//! BPF_PROG_TEST_RUN cases for the SIP-aware checks with real SIP messages: the User-Agent scan
//! (position, case, window, folded and compact headers, truncation, non-SIP payloads, TCP), the
//! per-method limits, and the egress program's reading of the host's own responses.

use common::{BAN_DRY_RUN, addr::v4_mapped, sip, stat};
use tests::{
    Harness, XDP_DROP, XDP_PASS,
    bench::paths::invite_1400,
    bpf_available,
    packet::{Packet, TCP_ACK},
};

const HOST: [u8; 4] = [10, 0, 0, 1];
const HOST6: &str = "2001:db8:feed::1";
const PHONE: [u8; 4] = [192, 0, 2, 20];
const SCANNER: [u8; 4] = [192, 0, 2, 66];
const ALLOWED: [u8; 4] = [198, 51, 100, 10];

/// voip-edge with generous packet rates (the SIP checks are under test, not the rate classes),
/// the default User-Agent list, and drop-only User-Agent matches so one source can be probed
/// many times.
const POLICY: &str = r#"
roles = ["voip-edge"]
allow = ["198.51.100.10/32"]

[limit.signaling]
levels = [{ pps = 100000, burst = 100000, ban = "1h" }]

[sip]
ua_ban = "0"
"#;

/// A request with CRLF line ends: the request line, `headers`, the empty line, `body`.
fn request(method: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut m = format!("{method} sip:100@voip.example.com SIP/2.0\r\n");
    for h in headers {
        m.push_str(h);
        m.push_str("\r\n");
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.into_bytes()
}

/// The headers of a typical REGISTER, with `ua` (a full header line) at `at`.
fn register_with(ua: &str, at: usize) -> Vec<u8> {
    let mut headers = vec![
        "Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK776asdhds;rport",
        "Max-Forwards: 70",
        "From: <sip:100@voip.example.com>;tag=1928301774",
        "To: <sip:100@voip.example.com>",
        "Call-ID: a84b4c76e66710@192.0.2.20",
        "CSeq: 1 REGISTER",
        "Contact: <sip:100@192.0.2.20:5060>",
        "Expires: 3600",
        "Content-Length: 0",
    ];
    headers.insert(at.min(headers.len()), ua);
    request("REGISTER", &headers, "")
}

fn udp(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    Packet::udp4(src, 5060, HOST, 5060).payload(payload).bytes()
}

fn harness(policy: &str) -> Option<Harness> {
    bpf_available().then(|| Harness::new(policy))
}

#[test]
#[ignore = "needs root and BPF"]
fn listed_user_agents_drop_wherever_the_header_is() {
    let Some(h) = harness(POLICY) else { return };
    h.expect(
        "a phone's REGISTER",
        &udp(PHONE, &register_with("User-Agent: Yealink SIP-T46S 66.86.0.15", 3)),
        XDP_PASS,
        "port_open",
    );
    for at in [0, 4, 9] {
        let msg = register_with("User-Agent: friendly-scanner", at);
        h.expect(&format!("scanner UA as header {at}"), &udp(SCANNER, &msg), XDP_DROP, "sip_user_agent");
    }
    for line in [
        "user-agent: sipvicious 0.3.4",
        "USER-AGENT: sipcli/v1.8",
        "User-Agent :VaxSIPUserAgent/3.1",
        "User-Agent\t:  pplsip",
        "User-Agent: Mozilla/5.0 (SIPVICIOUS probe)",
    ] {
        h.expect(line, &udp(SCANNER, &register_with(line, 5)), XDP_DROP, "sip_user_agent");
    }
    // Every method is scanned, not only REGISTER.
    for method in ["INVITE", "OPTIONS", "SUBSCRIBE"] {
        let msg =
            request(method, &["Via: SIP/2.0/UDP 192.0.2.66", "User-Agent: friendly-scanner", "Content-Length: 0"], "");
        h.expect(method, &udp(SCANNER, &msg), XDP_DROP, "sip_user_agent");
    }
    // A bare LF line end still ends the request line.
    let lf = b"OPTIONS sip:x SIP/2.0\nUser-Agent: sipvicious\n\n";
    h.expect("LF line ends", &udp(SCANNER, lf), XDP_DROP, "sip_user_agent");
    // IPv6 source.
    let v6 = Packet::udp6("2001:db8:66::1", 5060, HOST6, 5060)
        .payload(&register_with("User-Agent: friendly-scanner", 2))
        .bytes();
    h.expect("IPv6 scanner", &v6, XDP_DROP, "sip_user_agent");
}

#[test]
#[ignore = "needs root and BPF"]
fn other_headers_folds_and_bodies_do_not_confuse_the_scan() {
    let Some(h) = harness(POLICY) else { return };
    for (what, line) in [
        ("compact From", "f: <sip:friendly-scanner@example.com>;tag=1"),
        ("compact To", "t: sipvicious <sip:100@example.com>"),
        ("compact Contact", "m: <sip:sipcli@192.0.2.66>"),
        ("X- header", "X-User-Agent: friendly-scanner"),
        ("longer name", "User-Agents: friendly-scanner"),
        ("name without colon", "User-Agent friendly-scanner"),
        ("Server header", "Server: friendly-scanner"),
        ("Subject", "Subject: User-Agent: friendly-scanner"),
    ] {
        h.expect(what, &udp(PHONE, &register_with(line, 3)), XDP_PASS, "port_open");
    }
    // A continuation line of another header is not a header, whatever it says.
    let folded = request(
        "REGISTER",
        &["Via: SIP/2.0/UDP 192.0.2.20", "Subject: hello", " User-Agent: friendly-scanner", "User-Agent: Yealink"],
        "",
    );
    h.expect("folded line starting with User-Agent", &udp(PHONE, &folded), XDP_PASS, "port_open");
    // But a User-Agent value folded over two lines is one value.
    let folded_ua = request(
        "REGISTER",
        &["Via: SIP/2.0/UDP 192.0.2.66", "User-Agent: Mozilla", "\tsipvicious", "Content-Length: 0"],
        "",
    );
    h.expect("User-Agent value with a continuation line", &udp(SCANNER, &folded_ua), XDP_DROP, "sip_user_agent");
    // Only the first User-Agent counts (RFC 3261 allows one).
    let two = request("REGISTER", &["User-Agent: Yealink", "User-Agent: friendly-scanner"], "");
    h.expect("second User-Agent", &udp(PHONE, &two), XDP_PASS, "port_open");
    // The body is not headers.
    let body =
        request("MESSAGE", &["Content-Type: text/plain", "Content-Length: 30"], "User-Agent: friendly-scanner\r\n");
    h.expect("User-Agent text in the body", &udp(PHONE, &body), XDP_PASS, "port_open");
    // Near-miss values.
    h.expect("near miss", &udp(PHONE, &register_with("User-Agent: sipvic ious / friend ly", 2)), XDP_PASS, "port_open");
}

#[test]
#[ignore = "needs root and BPF"]
fn values_the_prefilter_cannot_clear_reach_the_automaton() {
    let Some(h) = harness(POLICY) else { return };
    let ua = &h.compiled.ua;
    // A value holding a key pair of the default list yet matching no pattern: the prefilter
    // sends it to the automaton, which lets it pass.
    let near: Vec<String> = ["ndl", "nn", "pc", "pv", "ax", "xs", "pp", "pl", "ls", "dl", "ly", "sc", "va"]
        .iter()
        .map(|k| format!("Phone {k} 1.0"))
        .filter(|v| ua.prefilter_hit(v.as_bytes()) && !ua.matches(v.as_bytes()))
        .collect();
    assert!(!near.is_empty(), "no sample value holds a key pair of the default list");
    for v in &near {
        h.expect(v, &udp(PHONE, &register_with(&format!("User-Agent: {v}"), 2)), XDP_PASS, "port_open");
    }
    // Values whose one line the prefilter cannot read to its end: a lone CR inside (the
    // automaton reads past it) or a fold.
    let lone_cr = register_with("User-Agent: Phone friend\rly-scanner", 2);
    h.expect("lone CR inside a listed value", &udp(SCANNER, &lone_cr), XDP_DROP, "sip_user_agent");
    let clean_cr = register_with("User-Agent: Phone 1.0\rbeta", 2);
    h.expect("lone CR inside a clean value", &udp(PHONE, &clean_cr), XDP_PASS, "port_open");
    let folded = request("REGISTER", &["User-Agent: Phone", " friendly-scanner", "Content-Length: 0"], "");
    h.expect("listed value after a fold", &udp(SCANNER, &folded), XDP_DROP, "sip_user_agent");
    let folded_clean = request("REGISTER", &["User-Agent: Phone", " 1.0", "Content-Length: 0"], "");
    h.expect("clean value with a fold", &udp(PHONE, &folded_clean), XDP_PASS, "port_open");
    // Longer than one prefilter step (32 bytes), clean and listed at the far end.
    let long = format!("User-Agent: {}", "Yealink SIP-T46S 66.86.0.15 ".repeat(6));
    h.expect("long clean value", &udp(PHONE, &register_with(&long, 2)), XDP_PASS, "port_open");
    let long_listed = format!("{long}pplsip");
    h.expect(
        "long value, listed at its end",
        &udp(SCANNER, &register_with(&long_listed, 2)),
        XDP_DROP,
        "sip_user_agent",
    );
}

#[test]
#[ignore = "needs root and BPF"]
fn the_user_agent_is_found_after_any_run_of_other_headers() {
    // The walk searches the header block many words at a time: whatever the length of the
    // lines before it (one long header, or many short ones none of which starts with a letter
    // the walk visits), the User-Agent line, and the empty line after it, are found at every
    // byte offset, as are lines that start exactly at a search block's edges.
    let Some(h) = harness(POLICY) else { return };
    for len in 0..=700usize {
        let filler = format!("X-Filler: {}", "f".repeat(len));
        let one = request("OPTIONS", &[&filler, "User-Agent: sipvicious", "Content-Length: 0"], "");
        h.expect(&format!("after a {len}-byte header"), &udp(SCANNER, &one), XDP_DROP, "sip_user_agent");
        let lines: Vec<String> = (0..len / 10).map(|i| format!("Via: {i}")).collect();
        let mut headers: Vec<&str> = lines.iter().map(String::as_str).collect();
        let pad = "z".repeat(len % 10);
        let last = format!("Max-Forwards: 7{pad}");
        headers.push(&last);
        headers.push("User-Agent: friendly-scanner");
        let many = request("REGISTER", &headers, "");
        h.expect(
            &format!("after {} short headers", headers.len() - 1),
            &udp(SCANNER, &many),
            XDP_DROP,
            "sip_user_agent",
        );
        // And a harmless User-Agent at the same place passes.
        let fine = request("OPTIONS", &[&filler, "User-Agent: Yealink", "Content-Length: 0"], "");
        h.expect(&format!("harmless, after a {len}-byte header"), &udp(PHONE, &fine), XDP_PASS, "port_open");
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn the_window_bounds_the_scan() {
    let Some(mut h) = harness(POLICY) else { return };
    // The User-Agent sits past byte 700 of the payload.
    let msg = invite_1400("friendly-scanner");
    let at = msg.windows(10).position(|w| w == b"User-Agent").unwrap();
    assert!(at > 700 && msg.len() > 1000, "UA at {at} of {}", msg.len());
    h.expect("default window (1472 bytes) reaches it", &udp(SCANNER, &msg), XDP_DROP, "sip_user_agent");
    h.reload(&POLICY.replace("ua_ban = \"0\"", "ua_ban = \"0\"\nua_window = 512"));
    h.expect("a 512-byte window does not", &udp(SCANNER, &msg), XDP_PASS, "port_open");
    // A window ending inside the value sees what is inside it: no match on a cut pattern, a
    // match once the pattern is whole (the line need not end inside the window).
    let msg = invite_1400("sipvicious-2.0");
    let cut = at as u32 + "User-Agent: sipvic".len() as u32;
    h.reload(&POLICY.replace("ua_ban = \"0\"", &format!("ua_ban = \"0\"\nua_window = {cut}")));
    h.expect("window ending inside the pattern", &udp(SCANNER, &msg), XDP_PASS, "port_open");
    h.reload(&POLICY.replace("ua_ban = \"0\"", &format!("ua_ban = \"0\"\nua_window = {}", cut + 4)));
    h.expect("window just past the pattern", &udp(SCANNER, &msg), XDP_DROP, "sip_user_agent");
    // Patterns can be anchored, and the list replaced.
    h.reload(&POLICY.replace("ua_ban = \"0\"", "ua_ban = \"0\"\nua_block = [\"^evil\", \"dialer-x\"]"));
    h.expect(
        "anchored, at the start",
        &udp(SCANNER, &register_with("User-Agent: EvilPhone 1.0", 1)),
        XDP_DROP,
        "sip_user_agent",
    );
    h.expect(
        "anchored, later in the value",
        &udp(PHONE, &register_with("User-Agent: NotEvil 1.0", 1)),
        XDP_PASS,
        "port_open",
    );
    h.expect("replaced list", &udp(PHONE, &register_with("User-Agent: friendly-scanner", 1)), XDP_PASS, "port_open");
    h.expect("new pattern", &udp(SCANNER, &register_with("User-Agent: acme dialer-x", 1)), XDP_DROP, "sip_user_agent");
    h.reload(&POLICY.replace("ua_ban = \"0\"", "ua_ban = \"0\"\nua_block = []"));
    h.expect(
        "empty list: no User-Agent check",
        &udp(SCANNER, &register_with("User-Agent: friendly-scanner", 1)),
        XDP_PASS,
        "port_open",
    );
}

#[test]
#[ignore = "needs root and BPF"]
fn truncated_and_non_sip_payloads_pass_untouched() {
    let Some(h) = harness(POLICY) else { return };
    let full = register_with("User-Agent: sipvicious", 8);
    h.expect("full message first (fills the scratch buffer)", &udp(SCANNER, &full), XDP_DROP, "sip_user_agent");
    let at = full.windows(6).position(|w| w == b"sipvic").unwrap();
    // The same message cut inside the value: the scratch buffer still holds the previous
    // message's "ious\r\n..." right after the cut, and must not be read.
    h.expect("cut inside the value", &udp(SCANNER, &full[..at + 6]), XDP_PASS, "port_open");
    h.expect("cut right after the value", &udp(SCANNER, &full[..at + 10]), XDP_DROP, "sip_user_agent");
    h.expect("cut before the header", &udp(SCANNER, &full[..at - 14]), XDP_PASS, "port_open");
    h.expect("cut inside the request line", &udp(SCANNER, &full[..20]), XDP_PASS, "port_open");
    h.expect("header name cut", &udp(SCANNER, b"OPTIONS sip:x SIP/2.0\r\nUser-Ag"), XDP_PASS, "port_open");
    for (what, payload) in [
        ("CRLF keep-alive", b"\r\n\r\n".to_vec()),
        ("empty", Vec::new()),
        (
            "STUN binding request",
            vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ),
        ("binary junk", (0..400u32).map(|i| (i * 37 % 251) as u8).collect()),
        ("HTTP on the SIP port", b"GET / HTTP/1.1\r\nUser-Agent: friendly-scanner\r\n\r\n".to_vec()),
        ("request line without SIP/2.0", b"REGISTER sip:x HTTP/1.1\r\nUser-Agent: sipvicious\r\n\r\n".to_vec()),
        ("a response (not inspected)", b"SIP/2.0 200 OK\r\nUser-Agent: friendly-scanner\r\n\r\n".to_vec()),
        ("newlines only", vec![b'\n'; 300]),
        ("one 1400-byte line", vec![b'A'; 1400]),
    ] {
        h.expect(what, &udp(SCANNER, &payload), XDP_PASS, "port_open");
    }
    // Non-SIP ports are not inspected at all (RTP on voip-edge).
    let rtp =
        Packet::udp4(SCANNER, 40000, HOST, 12000).payload(&register_with("User-Agent: friendly-scanner", 0)).bytes();
    h.expect("SIP text on an RTP port", &rtp, XDP_PASS, "port_open");
}

#[test]
#[ignore = "needs root and BPF"]
fn tcp_segments_that_begin_a_message_are_inspected() {
    let Some(h) = harness(POLICY) else { return };
    let msg = register_with("User-Agent: friendly-scanner", 2);
    let seg = Packet::tcp4(SCANNER, 40001, HOST, 5060, TCP_ACK).payload(&msg).bytes();
    h.expect("TCP segment starting a REGISTER", &seg, XDP_DROP, "sip_user_agent");
    let middle = &msg[40..];
    let seg = Packet::tcp4(SCANNER, 40001, HOST, 5060, TCP_ACK).payload(middle).bytes();
    h.expect("TCP segment from the middle of a message", &seg, XDP_PASS, "port_open");
    // 5061 is SIP over TLS on voip-edge: only packet-level checks.
    let tls = Packet::tcp4(SCANNER, 40001, HOST, 5061, TCP_ACK).payload(&msg).bytes();
    h.expect("the TLS port is not inspected", &tls, XDP_PASS, "port_open");
}

#[test]
#[ignore = "needs root and BPF"]
fn a_user_agent_match_can_ban_and_dry_run_only_reports() {
    let Some(mut h) = harness(&POLICY.replace("ua_ban = \"0\"", "ua_ban = \"1h\"")) else { return };
    let scan = udp(SCANNER, &register_with("User-Agent: friendly-scanner", 1));
    h.expect("the match", &scan, XDP_DROP, "sip_user_agent");
    let clean = udp(SCANNER, &register_with("User-Agent: Yealink", 1));
    h.expect("then everything from it is banned", &clean, XDP_DROP, "banned");
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].class, sip::CLASS_USER_AGENT);
    assert_eq!(h.compiled.class_name(events[0].class), "sip-user-agent");
    assert_eq!(events[0].addr, v4_mapped(SCANNER));
    let entry = h.dp.ban_get(&v4_mapped(SCANNER)).unwrap().expect("ban inserted");
    assert_eq!(entry.class, sip::CLASS_USER_AGENT);
    h.expect(
        "the allow list bypasses the check",
        &udp(ALLOWED, &register_with("User-Agent: friendly-scanner", 1)),
        XDP_PASS,
        "allow_list",
    );

    let mut dry = Harness::new(&POLICY.replace("ua_ban = \"0\"", "ua_ban = \"1h\"\n[options]\ndry_run = true"));
    dry.expect("dry run: would drop", &scan, XDP_PASS, "sip_user_agent");
    dry.expect("dry run: again, not banned", &scan, XDP_PASS, "sip_user_agent");
    let events = dry.drain_events();
    assert_eq!(events.len(), 1, "one would-be ban per ban period: {events:?}");
    assert!(events[0].flags & BAN_DRY_RUN != 0);
    assert!(dry.dp.ban_get(&v4_mapped(SCANNER)).unwrap().is_none());
}

#[test]
#[ignore = "needs root and BPF"]
fn method_limits_cut_a_registration_storm_but_not_calls() {
    let policy = format!(
        "{POLICY}\n[sip.methods]\nREGISTER = {{ pps = 1, burst = 5 }}\nOPTIONS = {{ levels = [{{ pps = 1, burst = 2, ban = \"10m\" }}] }}\n"
    );
    let Some(mut h) = harness(&policy) else { return };
    let reg = udp(PHONE, &register_with("User-Agent: Yealink", 1));
    for i in 0..5 {
        h.expect(&format!("REGISTER {i} within the burst"), &reg, XDP_PASS, "port_open");
    }
    h.expect("REGISTER over the limit", &reg, XDP_DROP, "sip_method_rate_limited");
    let invite = udp(PHONE, &request("INVITE", &["User-Agent: Yealink", "Content-Length: 0"], ""));
    let bye = udp(PHONE, &request("BYE", &["User-Agent: Yealink"], ""));
    for i in 0..10 {
        h.expect(&format!("INVITE {i}: no INVITE limit"), &invite, XDP_PASS, "port_open");
        h.expect(&format!("BYE {i}: in-dialog methods untouched"), &bye, XDP_PASS, "port_open");
    }
    h.expect(
        "responses are not requests",
        &udp(PHONE, b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n"),
        XDP_PASS,
        "port_open",
    );
    h.expect("REGISTER still over", &reg, XDP_DROP, "sip_method_rate_limited");
    h.expect(
        "another phone's REGISTER",
        &udp([192, 0, 2, 21], &register_with("User-Agent: Yealink", 1)),
        XDP_PASS,
        "port_open",
    );
    // OPTIONS: a level with a ban.
    let opt = udp(SCANNER, &request("OPTIONS", &["User-Agent: Yealink"], ""));
    h.expect("OPTIONS 1", &opt, XDP_PASS, "port_open");
    h.expect("OPTIONS 2", &opt, XDP_PASS, "port_open");
    h.expect("OPTIONS 3 crosses the level and bans", &opt, XDP_DROP, "sip_method_rate_limited");
    h.expect("then banned", &opt, XDP_DROP, "banned");
    let ev = h.drain_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(h.compiled.class_name(ev[0].class), "sip-OPTIONS");
}

/// A response the host's SIP server sends to `to` (egress, from 5060).
fn response(to: [u8; 4], status: &str) -> Vec<u8> {
    let text = format!(
        "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP {}.{}.{}.{}:5060\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        to[0], to[1], to[2], to[3]
    );
    Packet::udp4(HOST, 5060, to, 5060).payload(text.as_bytes()).bytes()
}

fn stats(h: &Harness) -> (u64, u64, u64) {
    let s = h.dp.stats().unwrap();
    (s[stat::SIP_CHALLENGES as usize], s[stat::SIP_AUTH_FAILURES as usize], s[stat::SIP_AUTH_ANSWERS as usize])
}

#[test]
#[ignore = "needs root and BPF"]
fn egress_reads_responses_and_bans_after_failed_authentications() {
    let policy = POLICY.replace("ua_ban = \"0\"", "ua_ban = \"0\"\nfailed_auth = { count = 3, ban = \"1h\" }\nunanswered_challenges = { count = 4, ban = \"30m\" }");
    let Some(mut h) = harness(&policy) else { return };
    let client = [192, 0, 2, 30];
    let key = v4_mapped(client);
    let with_auth = udp(
        client,
        &register_with(
            "Authorization: Digest username=\"100\", realm=\"voip\", nonce=\"abc\", uri=\"sip:voip\", response=\"0123\"",
            3,
        ),
    );
    let egress = |h: &Harness, status: &str| {
        assert_eq!(h.dp.test_run_egress(&response(client, status)).unwrap(), -1, "egress never drops (TC_ACT_UNSPEC)");
    };

    // Non-SIP and provisional responses change nothing.
    egress(&h, "100 Trying");
    assert!(h.dp.sip_peer(&key).unwrap().is_none(), "no counters for a provisional response");
    let junk = Packet::udp4(HOST, 5060, client, 5060).payload(b"\x00\x01binary keepalive").bytes();
    h.dp.test_run_egress(&junk).unwrap();
    let http = Packet::udp4(HOST, 5060, client, 5060).payload(b"HTTP/1.1 401 Unauthorized\r\n\r\n").bytes();
    h.dp.test_run_egress(&http).unwrap();
    assert_eq!(stats(&h), (0, 0, 0));

    // REGISTER -> 401 (a challenge) -> REGISTER with credentials -> 200 (success).
    egress(&h, "401 Unauthorized");
    assert_eq!(stats(&h), (1, 0, 0), "a 401 to a request without credentials is a challenge");
    h.expect("credentials", &with_auth, XDP_PASS, "port_open");
    assert_eq!(stats(&h).2, 1, "the answer is counted");
    egress(&h, "200 OK");
    let p = h.dp.sip_peer(&key).unwrap().unwrap();
    assert_eq!((p.challenges, p.answers, p.failures, p.pending), (1, 1, 0, 0), "{p:?}");

    // Wrong passwords: credentials answered by 401, 407 and 403.
    for status in ["401 Unauthorized", "407 Proxy Authentication Required"] {
        h.expect("credentials", &with_auth, XDP_PASS, "port_open");
        egress(&h, status);
    }
    let p = h.dp.sip_peer(&key).unwrap().unwrap();
    assert_eq!(p.failures, 2, "{p:?}");
    assert!(h.drain_events().is_empty(), "no ban below the count");
    egress(&h, "403 Forbidden");
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "the third failure bans: {events:?}");
    assert_eq!(h.compiled.class_name(events[0].class), "sip-failed-auth");
    assert_eq!(events[0].rate_pps, 3, "the event carries the count");
    assert_eq!(events[0].addr, key);
    h.expect("the client is banned", &with_auth, XDP_DROP, "banned");
    let ban = h.dp.ban_get(&key).unwrap().unwrap();
    let left = ban.expires_ns.saturating_sub(voipwall::dataplane::monotonic_ns());
    assert!(left > 3_500_000_000_000 && left <= 3_600_000_000_000, "a 1 h ban, {left} ns left");

    // A client that never answers its challenges.
    let flooder = [192, 0, 2, 31];
    for i in 0..3 {
        h.dp.test_run_egress(&response(flooder, "407 Proxy Authentication Required")).unwrap();
        assert!(h.drain_events().is_empty(), "challenge {i}");
    }
    h.dp.test_run_egress(&response(flooder, "401 Unauthorized")).unwrap();
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(h.compiled.class_name(events[0].class), "sip-unanswered-challenges");
    assert_eq!(events[0].rate_pps, 4);
    let ban = h.dp.ban_get(&v4_mapped(flooder)).unwrap().unwrap();
    let left = ban.expires_ns.saturating_sub(voipwall::dataplane::monotonic_ns());
    assert!(left > 1_700_000_000_000 && left <= 1_800_000_000_000, "a 30 min ban, {left} ns left");

    // Allow-listed peers are never counted; responses from non-SIP ports are not read.
    for _ in 0..10 {
        h.dp.test_run_egress(&response(ALLOWED, "403 Forbidden")).unwrap();
    }
    assert!(h.dp.sip_peer(&v4_mapped(ALLOWED)).unwrap().is_none());
    let other = [192, 0, 2, 32];
    let https = Packet::udp4(HOST, 443, other, 5060).payload(b"SIP/2.0 403 Forbidden\r\n\r\n").bytes();
    for _ in 0..10 {
        h.dp.test_run_egress(&https).unwrap();
    }
    assert!(h.dp.sip_peer(&v4_mapped(other)).unwrap().is_none());
    assert!(h.drain_events().is_empty());
}

#[test]
#[ignore = "needs root and BPF"]
fn the_detection_period_resets_the_counts() {
    let policy = POLICY.replace(
        "ua_ban = \"0\"",
        "ua_ban = \"0\"\ndetection_period = \"1s\"\nfailed_auth = { count = 2, ban = \"1h\" }",
    );
    let Some(mut h) = harness(&policy) else { return };
    let client = [192, 0, 2, 40];
    h.dp.test_run_egress(&response(client, "403 Forbidden")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    h.dp.test_run_egress(&response(client, "403 Forbidden")).unwrap();
    assert!(h.drain_events().is_empty(), "two failures in two periods do not ban");
    h.dp.test_run_egress(&response(client, "403 Forbidden")).unwrap();
    assert_eq!(h.drain_events().len(), 1, "two in one period do");
}
