//! The SIP checks read RFC 3261's grammar, not the common spelling: the evasions an attacker
//! writes (blank runs before the colon, token methods in any case, other versions, trailing
//! blanks, folded values), the bounds (what lies past them is suspect, not "no header"), and a
//! differential run of generated messages against the plain-Rust reading in
//! `common::sip::grammar`.

use common::{
    sip::{
        self,
        grammar::{self, Reading, UaVerdict},
    },
    stat,
};
use tests::{
    Harness, XDP_DROP, XDP_PASS,
    bench::scale::Rng,
    bpf_available,
    packet::{Packet, TCP_ACK},
    sipgen,
};

const HOST: [u8; 4] = [10, 0, 0, 1];
const HOST6: &str = "2001:db8:feed::1";
const SCANNER: [u8; 4] = [192, 0, 2, 66];
const SCANNER6: &str = "2001:db8:bad::66";

/// Generous packet rates and no budget for unknown sources (the SIP checks are under test), the
/// default User-Agent list and drop-only matches, so one source can be probed many times.
const POLICY: &str = r#"
roles = ["voip-edge"]

[limit.signaling]
levels = [{ pps = 100000, burst = 100000, ban = "1h" }]
unknown = "off"

[sip]
ua_ban = "0"
"#;

const TAIL: &str =
    "Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK1\r\nCall-ID: 1@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

fn msg(request_line: &str, headers: &str) -> Vec<u8> {
    format!("{request_line}\r\n{headers}{TAIL}").into_bytes()
}

/// The same payload as IPv4 and IPv6, UDP and the first segment of a TCP connection.
fn framings(payload: &[u8]) -> [(&'static str, Vec<u8>); 4] {
    [
        ("IPv4/UDP", Packet::udp4(SCANNER, 5060, HOST, 5060).payload(payload).bytes()),
        ("IPv6/UDP", Packet::udp6(SCANNER6, 5060, HOST6, 5060).payload(payload).bytes()),
        ("IPv4/TCP", Packet::tcp4(SCANNER, 40001, HOST, 5060, TCP_ACK).payload(payload).bytes()),
        ("IPv6/TCP", Packet::tcp6(SCANNER6, 40001, HOST6, 5060, TCP_ACK).payload(payload).bytes()),
    ]
}

fn stat_of(h: &Harness, slot: u32) -> u64 {
    h.dp.stats().expect("stats")[slot as usize]
}

/// Each form an attacker can write a listed User-Agent in, legal by RFC 3261 (or tolerated by
/// servers, which answer it): dropped as `sip_user_agent` over IPv4 and IPv6, UDP and TCP.
#[test]
#[ignore = "needs root and BPF"]
fn every_legal_spelling_of_a_listed_user_agent_drops() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let ok = "OPTIONS sip:100@example.com SIP/2.0";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("the usual spelling", msg(ok, "User-Agent: friendly-scanner\r\n")),
        ("three blanks before the colon", msg(ok, "User-Agent   : sipvicious\r\n")),
        ("tabs and spaces before the colon", msg(ok, "User-Agent \t \t: sipvicious\r\n")),
        ("60 blanks before the colon", msg(ok, &format!("User-Agent{}: sipvicious\r\n", " ".repeat(60)))),
        ("128 blanks before the colon (the bound)", msg(ok, &format!("User-Agent{}: sipvicious\r\n", " ".repeat(128)))),
        ("no blank after the colon", msg(ok, "User-Agent:sipvicious\r\n")),
        ("header name in upper case", msg(ok, "USER-AGENT: friendly-scanner\r\n")),
        ("value folded onto the next line", msg(ok, "User-Agent:\r\n   friendly-scanner\r\n")),
        ("value split by a fold", msg(ok, "User-Agent: sip\r\n\tvicious sipvicious\r\n")),
        ("lower-case method", msg("options sip:100@example.com SIP/2.0", "User-Agent: friendly-scanner\r\n")),
        ("method starting with a digit", msg("1NVITE sip:100@example.com SIP/2.0", "User-Agent: friendly-scanner\r\n")),
        (
            "extension method of token characters",
            msg("X.Y!%*_+`'~ sip:100@example.com SIP/2.0", "User-Agent: friendly\r\n"),
        ),
        (
            "tabs between the request-line fields",
            msg("OPTIONS\tsip:100@example.com\tSIP/2.0", "User-Agent: friendly\r\n"),
        ),
        ("a trailing blank after the version", msg("OPTIONS sip:100@example.com SIP/2.0 ", "User-Agent: friendly\r\n")),
        (
            "trailing tabs after the version",
            msg("OPTIONS sip:100@example.com SIP/2.0\t\t\t", "User-Agent: friendly\r\n"),
        ),
        ("version SIP/3.0", msg("OPTIONS sip:100@example.com SIP/3.0", "User-Agent: friendly\r\n")),
        ("version in lower case", msg("OPTIONS sip:100@example.com sip/2.0", "User-Agent: friendly\r\n")),
        (
            "bare LF line ends",
            b"OPTIONS sip:100@example.com SIP/2.0\nUser-Agent: friendly\nContent-Length: 0\n\n".to_vec(),
        ),
    ];
    for (what, payload) in &cases {
        for (framing, frame) in framings(payload) {
            h.expect(&format!("{what} ({framing})"), &frame, XDP_DROP, "sip_user_agent");
        }
    }
}

/// Credentials written with blank runs and in any case still count as answers to a challenge;
/// a lower-case `register` still meets the REGISTER limit.
#[test]
#[ignore = "needs root and BPF"]
fn credentials_and_methods_read_by_the_grammar() {
    if !bpf_available() {
        return;
    }
    let policy = format!("{POLICY}\n[sip.methods]\nREGISTER = {{ pps = 1, burst = 2 }}\n");
    let h = Harness::new(&policy);
    for (i, hdr) in
        ["Authorization   : Digest x", "proxy-authorization\t: Digest y", "AUTHORIZATION:Digest z"].iter().enumerate()
    {
        let before = stat_of(&h, stat::SIP_AUTH_ANSWERS);
        let frame = Packet::udp4([192, 0, 2, 70 + i as u8], 5060, HOST, 5060)
            .payload(&msg("INVITE sip:200@example.com SIP/2.0", &format!("{hdr}\r\n")))
            .bytes();
        h.expect(hdr, &frame, XDP_PASS, "port_open");
        assert_eq!(stat_of(&h, stat::SIP_AUTH_ANSWERS), before + 1, "{hdr:?} counts as an answer");
    }
    let reg =
        Packet::udp4([192, 0, 2, 80], 5060, HOST, 5060).payload(&msg("register sip:example.com SIP/2.0", "")).bytes();
    h.expect("lower-case register 1", &reg, XDP_PASS, "port_open");
    h.expect("lower-case register 2", &reg, XDP_PASS, "port_open");
    h.expect("lower-case register 3: over the REGISTER limit", &reg, XDP_DROP, "sip_method_rate_limited");
}

/// Past a bound nothing is taken for "no header": too many blanks or an overlong User-Agent
/// drop as `sip_evasion`; headers that run past the window pass and are counted.
#[test]
#[ignore = "needs root and BPF"]
fn past_the_bounds_messages_drop_as_evasion_or_count_as_incomplete() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    let ok = "OPTIONS sip:100@example.com SIP/2.0";
    for (what, payload) in [
        ("129 blanks before the colon", msg(ok, &format!("User-Agent{}: Linphone\r\n", " ".repeat(129)))),
        ("300 blanks before an Authorization colon", msg(ok, &format!("Authorization{}: x\r\n", "\t".repeat(300)))),
        ("129 blanks after the version", msg(&format!("{ok}{}", " ".repeat(129)), "")),
        ("a 600-byte User-Agent", msg(ok, &format!("User-Agent: {}\r\n", "a".repeat(600)))),
        (
            "a listed name after 520 bytes of User-Agent",
            msg(ok, &format!("User-Agent: {}friendly\r\n", "a".repeat(520))),
        ),
    ] {
        for (framing, frame) in framings(&payload) {
            h.expect(&format!("{what} ({framing})"), &frame, XDP_DROP, "sip_evasion");
        }
    }
    h.expect(
        "a listed name within the first 512 bytes",
        &framings(&msg(ok, &format!("User-Agent: {}friendly\r\n", "a".repeat(400))))[0].1,
        XDP_DROP,
        "sip_user_agent",
    );
    let small = POLICY.replace("ua_ban = \"0\"", "ua_ban = \"0\"\nua_window = 256");
    let h = Harness::new(&small);
    let pad: String = (0..12).map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(30))).collect();
    for (what, payload, incomplete) in [
        ("a User-Agent past the window", msg(ok, &format!("{pad}User-Agent: friendly\r\n")), 1),
        ("a request line longer than the window", msg(&format!("OPTIONS sip:{} SIP/2.0", "a".repeat(300)), ""), 1),
        ("a User-Agent value cut by the window", msg(ok, &format!("{}User-Agent: {}", &pad[..150], "b".repeat(80))), 1),
        ("a whole message inside the window", msg(ok, "User-Agent: Linphone\r\n"), 0),
    ] {
        let before = stat_of(&h, stat::SIP_INCOMPLETE);
        h.expect(what, &framings(&payload)[0].1, XDP_PASS, "port_open");
        assert_eq!(stat_of(&h, stat::SIP_INCOMPLETE), before + incomplete, "{what}: incomplete counter");
    }
}

/// Responses the host sends are read by the same grammar: any case of `SIP/`, any version, an
/// empty reason phrase.
#[test]
#[ignore = "needs root and BPF"]
fn egress_status_lines_by_the_grammar() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(POLICY);
    for (i, line) in
        ["sip/2.0 401 Unauthorized", "SIP/2.1 407 Proxy Authentication Required", "SIP/2.0 401"].iter().enumerate()
    {
        let before = stat_of(&h, stat::SIP_CHALLENGES);
        let resp = Packet::udp4(HOST, 5060, [192, 0, 2, 90 + i as u8], 5060)
            .payload(format!("{line}\r\nVia: SIP/2.0/UDP x\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .bytes();
        h.dp.test_run_egress(&resp).expect("egress");
        assert_eq!(stat_of(&h, stat::SIP_CHALLENGES), before + 1, "{line:?} is a challenge");
    }
}

/// What the grammar says the program must do with a payload: the reason, and whether it counts
/// as incomplete.
fn expected(payload: &[u8], window: usize) -> (&'static str, u64, u64) {
    match grammar::read(payload, window, true) {
        Reading::NotRequest => ("port_open", 0, 0),
        Reading::LineTooLong => ("port_open", 1, 0),
        Reading::Evasion => ("sip_evasion", 0, 0),
        Reading::Request(r) => {
            let answers = r.credentials as u64;
            match r.user_agent {
                None => ("port_open", r.incomplete() as u64, answers),
                Some(ua) => {
                    let value: Vec<u8> = grammar::ua_bytes(payload, &ua).collect();
                    match ua.verdict(sipgen::listed(&value)) {
                        UaVerdict::Listed => ("sip_user_agent", 0, 0),
                        UaVerdict::Overlong => ("sip_evasion", 0, 0),
                        UaVerdict::Cut => ("port_open", 1, answers),
                        UaVerdict::Clean => ("port_open", 0, answers),
                    }
                }
            }
        }
    }
}

/// Generated messages through the kernel program and through the grammar: the same verdict,
/// the same incomplete count and the same credentials count for every one.
#[test]
#[ignore = "needs root and BPF"]
fn generated_messages_agree_with_the_grammar() {
    if !bpf_available() {
        return;
    }
    let list = sipgen::PATTERNS.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    // More with VOIPWALL_SIP_MESSAGES (per window) and another seed with VOIPWALL_SIP_SEED.
    let per_window: usize = std::env::var("VOIPWALL_SIP_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2500);
    let seed: u64 = std::env::var("VOIPWALL_SIP_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(17);
    let mut rng = Rng::new(seed);
    let mut mismatches = Vec::new();
    let mut seen = [0usize; 3];
    let mut total = 0;
    for window in [1472usize, 256] {
        let policy = POLICY.replace(
            "ua_ban = \"0\"",
            &format!(
                "ua_ban = \"0\"\nua_window = {window}\nua_block = [{list}]\nunanswered_challenges = {{ count = 0 }}"
            ),
        );
        let h = Harness::new(&policy);
        for i in 0..per_window {
            let g = sipgen::request(&mut rng);
            let payload = &g.bytes;
            let (want, want_incomplete, want_answers) = expected(payload, window);
            let frame = match i % 3 {
                0 => Packet::udp4(SCANNER, 5060, HOST, 5060).payload(payload).bytes(),
                1 => Packet::udp6(SCANNER6, 5060, HOST6, 5060).payload(payload).bytes(),
                _ => Packet::tcp4(SCANNER, 40001, HOST, 5060, TCP_ACK).payload(payload).bytes(),
            };
            let (inc0, ans0) = (stat_of(&h, stat::SIP_INCOMPLETE), stat_of(&h, stat::SIP_AUTH_ANSWERS));
            let got = h.try_run(&frame).map(|o| common::reason::NAMES[o.reason as usize]);
            let (inc, ans) = (stat_of(&h, stat::SIP_INCOMPLETE) - inc0, stat_of(&h, stat::SIP_AUTH_ANSWERS) - ans0);
            total += 1;
            seen[match want {
                "sip_user_agent" => 0,
                "sip_evasion" => 1,
                _ => 2,
            }] += 1;
            if got.as_deref() != Ok(want) || inc != want_incomplete || ans != want_answers {
                mismatches.push(format!(
                    "window {window}, message {i}: kernel {got:?} incomplete {inc} answers {ans}; grammar {want} incomplete {want_incomplete} answers {want_answers}\n    {:?}",
                    String::from_utf8_lossy(&payload[..payload.len().min(400)])
                ));
            }
        }
    }
    eprintln!(
        "figure: {total} generated messages: {} listed, {} evasive, {} passed; {} disagreements",
        seen[0],
        seen[1],
        seen[2],
        mismatches.len()
    );
    assert!(seen.iter().all(|&n| n > 100), "the generator covers every outcome: {seen:?}");
    assert!(
        mismatches.is_empty(),
        "{} of {total} disagree:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(10)].join("\n")
    );
}

/// The method words the program compares agree with the grammar's method class.
#[test]
fn method_words_agree_with_the_grammar() {
    let mut rng = Rng::new(3);
    for _ in 0..5000 {
        let g = sipgen::request(&mut rng);
        let mut nine = [0u8; 9];
        let n = g.bytes.len().min(9);
        nine[..n].copy_from_slice(&g.bytes[..n]);
        let line_end = g.bytes.iter().position(|&b| b == b'\n').unwrap_or(g.bytes.len());
        let first = &g.bytes[..line_end];
        // Only first lines of 9 bytes or more reach the method check.
        if first.len() >= 9 {
            let word = sip::method(u64::from_le_bytes(nine[..8].try_into().unwrap()), nine[8]);
            assert_eq!(word, grammar::method_class(first), "{:?}", String::from_utf8_lossy(first));
        }
    }
}
