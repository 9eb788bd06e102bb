//! A generator of SIP requests that stress the grammar the data plane reads: token methods in
//! any case, blank runs (spaces and tabs) around colons and fields, folded values, header-name
//! case, compact forms, version strings, CRLF or bare LF, bodies that look like headers,
//! padding that pushes headers past the window, overlong values, truncation. Deterministic for
//! a seed, so a failure can be replayed.

use crate::bench::scale::Rng;

/// Patterns the differential policy blocks (one anchored).
pub const PATTERNS: [&str; 3] = ["friendly", "sipvicious", "^evil"];

/// Does the block list hold `value` (as `common::sip::grammar::ua_bytes` yields it)? The
/// reference for the kernel's automaton: case-insensitive substring, `^` anchors at the start.
pub fn listed(value: &[u8]) -> bool {
    let v = value.to_ascii_lowercase();
    PATTERNS.iter().any(|p| match p.strip_prefix('^') {
        Some(p) => v.starts_with(p.as_bytes()),
        None => v.windows(p.len()).any(|w| w == p.as_bytes()),
    })
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn chance(rng: &mut Rng, one_in: u64) -> bool {
    rng.next_u64().is_multiple_of(one_in)
}

/// A run of `n` blanks, spaces and tabs mixed.
fn blanks(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| if chance(rng, 3) { '\t' } else { ' ' }).collect()
}

/// A short blank run (usually 0 or 1; sometimes many, sometimes around the bound).
fn blank_run(rng: &mut Rng) -> String {
    let n = match rng.next_u64() % 20 {
        0 => 127 + (rng.next_u64() % 4) as usize,
        1 => 200,
        2..=4 => 2 + (rng.next_u64() % 6) as usize,
        5..=9 => 1,
        _ => 0,
    };
    blanks(rng, n)
}

/// A header name in random case.
fn case_mix(rng: &mut Rng, name: &str) -> String {
    match rng.next_u64() % 4 {
        0 => name.to_ascii_lowercase(),
        1 => name.to_ascii_uppercase(),
        2 => {
            name.chars().map(|c| if chance(rng, 2) { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()
        }
        _ => name.to_string(),
    }
}

/// One generated request and the window to inspect it with.
pub struct Generated {
    pub bytes: Vec<u8>,
}

/// A plain, well-formed request of a common method (the ones method limits count).
pub fn plain(rng: &mut Rng) -> Vec<u8> {
    let method = pick(rng, &["REGISTER", "INVITE", "OPTIONS", "BYE", "MESSAGE"]);
    format!(
        "{method} sip:100@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK776asdhds\r\n\
         From: <sip:100@example.com>;tag=1\r\nTo: <sip:100@example.com>\r\nCall-ID: a84b4c76e66710\r\n\
         CSeq: 1 {method}\r\nUser-Agent: Linphone/5.2.0\r\n\r\n"
    )
    .into_bytes()
}

/// Generate a request (or something close to one).
pub fn request(rng: &mut Rng) -> Generated {
    let eol = if chance(rng, 5) { "\n" } else { "\r\n" };
    let method = match rng.next_u64() % 10 {
        0 => "register".to_string(),
        1 => "Invite".to_string(),
        2 => "X-Custom.1!%*_+`'~".to_string(),
        3 => pick(rng, &["@PTIONS", "SIP/2.0", "\u{1}BYE", " OPTIONS"]).to_string(),
        _ => pick(rng, &["REGISTER", "INVITE", "OPTIONS", "BYE", "ACK", "SUBSCRIBE", "MESSAGE"]).to_string(),
    };
    let version = match rng.next_u64() % 12 {
        0 => "sip/2.0",
        1 => "SIP/3.0",
        2 => "HTTP/1.1",
        3 => "SIP/12345678901234",
        4 => "SIP/",
        _ => "SIP/2.0",
    };
    let uri =
        if chance(rng, 40) { format!("sip:{}@example.com", "a".repeat(1100)) } else { "sip:100@example.com".into() };
    let mut sep = || {
        let n = 1 + (rng.next_u64() % 3) as usize;
        if chance(rng, 4) { blanks(rng, n) } else { " ".into() }
    };
    let (sep1, sep2) = (sep(), sep());
    let trailing = if chance(rng, 6) { blank_run(rng) } else { String::new() };
    let mut m = format!("{method}{sep1}{uri}{sep2}{version}{trailing}{eol}");
    let mut headers: Vec<String> = vec![
        "Via: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bK776asdhds".into(),
        format!("{}: <sip:100@example.com>;tag=1928301774", pick(rng, &["From", "f"])),
        format!("{}: <sip:100@example.com>", pick(rng, &["To", "t"])),
        format!("{}: a84b4c76e66710@192.0.2.20", pick(rng, &["Call-ID", "i"])),
        "CSeq: 1 REGISTER".into(),
    ];
    if chance(rng, 3) {
        headers.push(format!("X-Note: a{eol} User-Agent: friendly-scanner"));
    }
    if chance(rng, 8) {
        // Padding that pushes what follows past a small window.
        for i in 0..(10 + rng.next_u64() % 60) {
            headers.push(format!("X-Pad-{i}: {}", "p".repeat(20)));
        }
    }
    if !chance(rng, 6) {
        let name = case_mix(rng, "User-Agent");
        let value = match rng.next_u64() % 9 {
            0 => "friendly-scanner".to_string(),
            1 => "SIPVicious 0.3".to_string(),
            2 => "evil-bot/1".to_string(),
            3 => "not-evil/1".to_string(),
            4 => format!("sip{eol}{}vicious", if chance(rng, 2) { " " } else { "\t" }),
            5 => format!("{}friendly", "a".repeat(490 + (rng.next_u64() % 40) as usize)),
            6 => "a".repeat(600),
            7 => format!("{eol}  friendly"),
            _ => "Linphone/5.2.0 (belle-sip/5.2)".to_string(),
        };
        let (before, after) = (blank_run(rng), blank_run(rng));
        let at = (rng.next_u64() % (headers.len() as u64 + 1)) as usize;
        headers.insert(at, format!("{name}{before}:{after}{value}"));
    }
    if chance(rng, 3) {
        let name = pick(rng, &["Authorization", "Proxy-Authorization"]);
        let name = case_mix(rng, name);
        headers.push(format!("{name}{}: Digest username=\"100\"", blank_run(rng)));
    }
    for h in &headers {
        m.push_str(h);
        m.push_str(eol);
    }
    if !chance(rng, 10) {
        m.push_str(eol);
        if chance(rng, 3) {
            m.push_str(&format!("v=0{eol}User-Agent: friendly{eol}"));
        }
    }
    let mut bytes = m.into_bytes();
    // What a BPF_PROG_TEST_RUN frame holds (a page, less headroom).
    bytes.truncate(3000);
    if chance(rng, 10) {
        let cut = (rng.next_u64() as usize) % bytes.len().max(1);
        bytes.truncate(cut.max(1));
    }
    Generated { bytes }
}
