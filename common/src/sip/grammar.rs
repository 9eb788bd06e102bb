//! A plain reading of a SIP request by RFC 3261's grammar (section 25), with the same bounds
//! the data plane works within: what the XDP program must conclude about a message, written as
//! straight-line byte code so that the two can be compared on generated messages.
//!
//! - `Request-Line = Method SP Request-URI SP SIP-Version CRLF`, `Method = token`. A first line
//!   is taken for a request when it starts with a token character and its last field (trailing
//!   blanks aside) begins with `SIP/` in any case: any version, since a SIP server answers even
//!   a version it does not support (505), and trailing blanks, which servers tolerate.
//! - Header lines end at LF (CRLF, or a bare LF, which servers accept); a line that begins with
//!   SP or HTAB continues the previous header (RFC 3261 7.3.1). The empty line ends the headers.
//! - `header-name HCOLON value`, `HCOLON = *( SP / HTAB ) ":" SWS`, names compared without
//!   case. `User-Agent`, `Authorization` and `Proxy-Authorization` have no compact form.
//! - The first `User-Agent` counts. Its value starts after the colon and any linear white space
//!   (`SWS`, folds included) and runs to the end of its last continuation line; a fold reads as
//!   one SP.
//!
//! Bounds (the program's loops are bounded; what lies beyond a bound is suspect, never "no
//! header"): [`BLANKS_MAX`] blanks between a header name and its colon or at the end of the
//! request line, [`UA_VALUE_MAX`] bytes of User-Agent value, [`REQUEST_LINE_MAX`] bytes of request
//! line, and the inspected window (the first `window` bytes of the payload).

use super::{METHOD_INVITE, METHOD_OPTIONS, METHOD_OTHER, METHOD_REGISTER};

/// Most blanks accepted between a header name and its colon, and after the request line's last
/// field. Real stacks write none or one; a longer run exists only to get past a filter.
pub const BLANKS_MAX: usize = 128;
/// Most bytes of a User-Agent value (after `SWS`, folds counting as they are written) matched
/// against the block list; a longer value without a match is an evasion attempt.
pub const UA_VALUE_MAX: usize = 512;
/// Longest request line read; a first line that does not end within it (or within the window)
/// cannot be classified.
pub const REQUEST_LINE_MAX: usize = 1024;
/// Longest SIP-Version field (`SIP/2.0` is 7 bytes).
pub const VERSION_MAX: usize = 16;

/// What the inspection concludes about a payload on a SIP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Not a SIP request (a response, STUN, RTP, a keep-alive, a TCP stream's middle): only
    /// the packet-level checks apply.
    NotRequest,
    /// A token at the start and no line end within [`REQUEST_LINE_MAX`] bytes or the window:
    /// a request line longer than the inspection reads. Passes, counted as incomplete.
    LineTooLong,
    /// A request written so that it cannot be inspected within the bounds: drops.
    Evasion,
    /// A request read as far as needed.
    Request(Request),
}

/// The parts of a request the checks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`super::METHOD_REGISTER`] ... [`super::METHOD_OTHER`].
    pub method: usize,
    /// The first User-Agent value.
    pub user_agent: Option<UserAgent>,
    /// An `Authorization` or `Proxy-Authorization` header is present.
    pub credentials: bool,
    /// The empty line that ends the headers was seen (within the window, before the walk
    /// stopped).
    pub headers_ended: bool,
}

impl Request {
    /// Passed without its User-Agent read: the headers ran past the window before one turned
    /// up. Counted as incomplete; a legitimate large message (a fragmented INVITE) looks the
    /// same, so it passes.
    pub const fn incomplete(&self) -> bool {
        self.user_agent.is_none() && !self.headers_ended
    }
}

/// Where a User-Agent value lies in the message, and whether all of it could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserAgent {
    /// `start..end`: from the first byte after `SWS` to the line end of its last line.
    pub start: usize,
    pub end: usize,
    /// The value reaches the end of the inspected bytes (the rest of it is unseen).
    pub cut: bool,
}

impl UserAgent {
    /// Longer than [`UA_VALUE_MAX`]: only its first bytes are matched.
    pub const fn overlong(&self) -> bool {
        self.end - self.start > UA_VALUE_MAX
    }
}

/// What the checks do with a request's User-Agent, given whether the block list matches the
/// part read ([`ua_bytes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UaVerdict {
    /// Listed: drop (`sip_user_agent`).
    Listed,
    /// Longer than the bound and not listed in the part read: drop (`sip_evasion`).
    Overlong,
    /// Cut off by the end of the inspected bytes and not listed in the part read: pass, counted
    /// as incomplete.
    Cut,
    /// Read whole, not listed.
    Clean,
}

impl UserAgent {
    pub const fn verdict(&self, listed: bool) -> UaVerdict {
        if listed {
            UaVerdict::Listed
        } else if self.overlong() {
            UaVerdict::Overlong
        } else if self.cut {
            UaVerdict::Cut
        } else {
            UaVerdict::Clean
        }
    }
}

/// RFC 3261 25.1 `token` characters.
pub const fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// SP or HTAB.
pub const fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The method class of a request line: the method (everything before the first blank)
/// compared without case. RFC 3261 makes methods case-sensitive, but a server that accepts
/// `register` must not let it dodge the REGISTER limit.
pub fn method_class(line: &[u8]) -> usize {
    let end = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
    let m = &line[..end];
    if m.eq_ignore_ascii_case(b"REGISTER") {
        METHOD_REGISTER
    } else if m.eq_ignore_ascii_case(b"INVITE") {
        METHOD_INVITE
    } else if m.eq_ignore_ascii_case(b"OPTIONS") {
        METHOD_OPTIONS
    } else {
        METHOD_OTHER
    }
}

/// The first line, `Ok(content)` without its line end, or `Err` when it does not end within
/// `limit` bytes.
fn first_line(msg: &[u8], limit: usize) -> Result<&[u8], ()> {
    // The line end must lie within the first `limit` bytes.
    let seen = &msg[..msg.len().min(limit)];
    match seen.iter().position(|&b| b == b'\n') {
        Some(lf) => Ok(seen[..lf].strip_suffix(b"\r").unwrap_or(&seen[..lf])),
        None => Err(()),
    }
}

/// Classify the request line: `Some(true)` a request, `Some(false)` not one, `None` evasive.
fn request_line(line: &[u8]) -> Option<bool> {
    if line.is_empty() || !is_token(line[0]) {
        return Some(false);
    }
    let trimmed = line.len() - line.iter().rev().take_while(|&&b| is_blank(b)).count();
    if line.len() - trimmed > BLANKS_MAX {
        return None;
    }
    let line = &line[..trimmed];
    let Some(blank) = line.iter().rposition(|&b| is_blank(b)) else { return Some(false) };
    let version = &line[blank + 1..];
    Some(version.len() <= VERSION_MAX && version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/"))
}

/// After a header name ending at `at` in `line` (a header line without its line end): the
/// position just past `HCOLON`'s colon, `Ok(None)` if the line is not that header, `Err` if the
/// blanks before the colon run past [`BLANKS_MAX`].
fn hcolon(line: &[u8], at: usize) -> Result<Option<usize>, ()> {
    let blanks = line[at..].iter().take_while(|&&b| is_blank(b)).count();
    if blanks > BLANKS_MAX {
        return Err(());
    }
    Ok((line.get(at + blanks) == Some(&b':')).then_some(at + blanks + 1))
}

/// `line` is the header `name` (compared without case): the position past its colon.
fn header(line: &[u8], name: &[u8]) -> Result<Option<usize>, ()> {
    if line.len() < name.len() || !line[..name.len()].eq_ignore_ascii_case(name) {
        return Ok(None);
    }
    hcolon(line, name.len())
}

/// Shortest payload inspected: nothing shorter can carry a request line and a header.
pub const MIN_INSPECTED: usize = 16;

/// Read a payload of a SIP port, of which the first `window` bytes are visible. The header walk
/// stops at the first User-Agent unless `watch_credentials` asks for credentials too (then it
/// stops once both are found), and always at the empty line or the window's end.
pub fn read(payload: &[u8], window: usize, watch_credentials: bool) -> Reading {
    let msg = &payload[..payload.len().min(window)];
    if msg.len() < MIN_INSPECTED || !is_token(msg[0]) || msg[..4].eq_ignore_ascii_case(b"SIP/") {
        return Reading::NotRequest;
    }
    let line = match first_line(msg, REQUEST_LINE_MAX) {
        Ok(l) => l,
        Err(()) => return Reading::LineTooLong,
    };
    match request_line(line) {
        None => return Reading::Evasion,
        Some(false) => return Reading::NotRequest,
        Some(true) => {}
    }
    let mut req = Request { method: method_class(line), user_agent: None, credentials: false, headers_ended: false };
    let mut at = msg.iter().position(|&b| b == b'\n').expect("the first line ends") + 1;
    while at < msg.len() {
        let lf = msg[at..].iter().position(|&b| b == b'\n').map(|p| at + p);
        let raw = &msg[at..lf.unwrap_or(msg.len())];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() && lf.is_some() {
            req.headers_ended = true;
            break;
        }
        if !line.first().is_some_and(|&b| is_blank(b)) {
            if req.user_agent.is_none() {
                match header(line, b"User-Agent") {
                    Err(()) => return Reading::Evasion,
                    Ok(Some(colon)) => req.user_agent = Some(UserAgent { start: at + colon, end: 0, cut: false }),
                    Ok(None) => {}
                }
            }
            for name in [&b"Authorization"[..], b"Proxy-Authorization"] {
                match header(line, name) {
                    Err(()) => return Reading::Evasion,
                    Ok(Some(_)) => req.credentials = true,
                    Ok(None) => {}
                }
            }
            if req.user_agent.is_some() && (!watch_credentials || req.credentials) {
                break;
            }
        }
        match lf {
            Some(lf) => at = lf + 1,
            None => break,
        }
    }
    if let Some(ua) = &mut req.user_agent {
        let (end, cut) = line_end(msg, ua.start);
        while ua.start < end && matches!(msg[ua.start], b' ' | b'\t' | b'\r' | b'\n') {
            ua.start += 1;
        }
        ua.end = end;
        ua.cut = cut;
    }
    Reading::Request(req)
}

/// The end of the header value starting at `start`: the line end of its last continuation line,
/// and whether the visible message ended first (the value is cut).
fn line_end(msg: &[u8], start: usize) -> (usize, bool) {
    let mut at = start;
    loop {
        match msg[at..].iter().position(|&b| b == b'\n') {
            None => return (msg.len(), true),
            Some(p) => {
                let lf = at + p;
                match msg.get(lf + 1) {
                    Some(&b) if is_blank(b) => at = lf + 1,
                    // A line end with nothing visible after it: a fold may follow unseen.
                    None => return (if lf > 0 && msg[lf - 1] == b'\r' { lf - 1 } else { lf }, true),
                    Some(_) => return (if lf > 0 && msg[lf - 1] == b'\r' { lf - 1 } else { lf }, false),
                }
            }
        }
    }
}

/// The User-Agent value as the block list sees it: CR dropped, each line end of a fold read as
/// one SP, at most [`UA_VALUE_MAX`] bytes.
pub fn ua_bytes<'a>(msg: &'a [u8], ua: &UserAgent) -> impl Iterator<Item = u8> + 'a {
    let end = ua.end.min(ua.start + UA_VALUE_MAX);
    msg[ua.start..end].iter().filter(|&&b| b != b'\r').map(|&b| if b == b'\n' { b' ' } else { b })
}

/// The status code of a response's first bytes: `SIP-Version SP Status-Code SP` (RFC 3261 25.1;
/// `SIP` in any case, any `1*DIGIT "." 1*DIGIT` version), the code followed by SP, CR or LF (an
/// empty reason phrase).
pub fn status_code(head: &[u8]) -> Option<u16> {
    if head.len() < 4 || !head[..4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    let rest = &head[4..];
    let major = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if major == 0 || rest.get(major) != Some(&b'.') {
        return None;
    }
    let rest = &rest[major + 1..];
    let minor = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if minor == 0 || rest.get(minor) != Some(&b' ') {
        return None;
    }
    let code = rest.get(minor + 1..minor + 4)?;
    if !code.iter().all(u8::is_ascii_digit) || !(b'1'..=b'6').contains(&code[0]) {
        return None;
    }
    if !matches!(rest.get(minor + 4), Some(b' ' | b'\r' | b'\n')) {
        return None;
    }
    Some(code.iter().fold(0u16, |n, d| n * 10 + (d - b'0') as u16))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String, vec::Vec};

    use super::*;

    fn req(r: Reading) -> Request {
        match r {
            Reading::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn ua(msg: &str) -> String {
        let r = req(read(msg.as_bytes(), 4096, true));
        let u = r.user_agent.expect("a User-Agent");
        String::from_utf8(ua_bytes(msg.as_bytes(), &u).collect()).unwrap()
    }

    const TAIL: &str = "Via: SIP/2.0/UDP 192.0.2.1\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn request_lines_by_the_grammar() {
        for (line, want) in [
            ("OPTIONS sip:a@b SIP/2.0", true),
            ("options sip:a@b SIP/2.0", true),
            ("X-Custom.1!%*_+`'~ sip:a@b SIP/2.0", true),
            ("OPTIONS sip:a@b sip/2.0", true),
            ("OPTIONS sip:a@b SIP/3.0", true),
            ("OPTIONS sip:a@b SIP/2.0   ", true),
            ("OPTIONS\tsip:a@b\tSIP/2.0\t", true),
            ("OPTIONS sip:a@b HTTP/1.1", false),
            ("OPTIONS sip:a@b", false),
            ("OPTIONS sip:a@b SIP/", false),
            ("OPTIONS sip:a@b SIP/12345678901234", false),
            ("GET / HTTP/1.1", false),
            ("@PTIONS sip:a@b SIP/2.0", false),
            (" OPTIONS sip:a@b SIP/2.0", false),
        ] {
            let msg = format!("{line}\r\nUser-Agent: x\r\n{TAIL}");
            let got = matches!(read(msg.as_bytes(), 4096, true), Reading::Request(_));
            assert_eq!(got, want, "{line:?}");
        }
        let blanks = " ".repeat(BLANKS_MAX + 1);
        let msg = format!("OPTIONS sip:a@b SIP/2.0{blanks}\r\n{TAIL}");
        assert_eq!(read(msg.as_bytes(), 4096, true), Reading::Evasion, "trailing blanks past the bound");
        assert_eq!(read(b"SIP/2.0 200 OK\r\nUser-Agent: x\r\n\r\n", 4096, true), Reading::NotRequest);
    }

    #[test]
    fn header_colon_and_value_by_the_grammar() {
        assert_eq!(ua(&format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent: friendly-scanner\r\n{TAIL}")), "friendly-scanner");
        assert_eq!(ua(&format!("OPTIONS sip:a SIP/2.0\r\nuser-agent   :\tfriendly\r\n{TAIL}")), "friendly");
        assert_eq!(
            ua(&format!("OPTIONS sip:a SIP/2.0\r\nUSER-AGENT:\r\n  friendly\r\n{TAIL}")),
            "friendly",
            "SWS may fold"
        );
        assert_eq!(
            ua(&format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent: sip\r\n\tvicious\r\n{TAIL}")),
            "sip \tvicious",
            "a fold reads as SP"
        );
        let n = BLANKS_MAX;
        let at_bound = format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent{}: x\r\n{TAIL}", " ".repeat(n));
        assert_eq!(ua(&at_bound), "x");
        let past = format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent{}: x\r\n{TAIL}", " ".repeat(n + 1));
        assert_eq!(read(past.as_bytes(), 4096, true), Reading::Evasion);
        // Not a User-Agent: a fold before the colon, a longer name, a continuation line, the body.
        for h in ["User-Agent\r\n : x", "User-Agents: x", "X: a\r\n User-Agent: x"] {
            let msg = format!("OPTIONS sip:a SIP/2.0\r\n{h}\r\n{TAIL}");
            assert_eq!(req(read(msg.as_bytes(), 4096, true)).user_agent, None, "{h:?}");
        }
        let body = format!("OPTIONS sip:a SIP/2.0\r\n{TAIL}User-Agent: x\r\n");
        assert_eq!(req(read(body.as_bytes(), 4096, true)).user_agent, None);
    }

    #[test]
    fn credentials_and_methods() {
        let msg = format!("register sip:a SIP/2.0\r\nProxy-Authorization \t : Digest x\r\n{TAIL}");
        let r = req(read(msg.as_bytes(), 4096, true));
        assert!(r.credentials);
        assert_eq!(r.method, METHOD_REGISTER);
        assert_eq!(method_class(b"Invite sip:a SIP/2.0"), METHOD_INVITE);
        assert_eq!(method_class(b"INVITE;x sip:a SIP/2.0"), METHOD_OTHER);
    }

    #[test]
    fn bounds_make_incomplete_or_evasive_readings() {
        // Headers past the window before any User-Agent: incomplete.
        let pad: String = (0..40).map(|i| format!("X-Pad-{i}: {}\r\n", "a".repeat(30))).collect();
        let msg = format!("OPTIONS sip:a SIP/2.0\r\n{pad}User-Agent: friendly\r\n{TAIL}");
        let r = req(read(msg.as_bytes(), 1472, true));
        assert_eq!(r.user_agent, None);
        assert!(!r.headers_ended);
        // A first line that does not end within the bound.
        let long = format!("OPTIONS sip:{} SIP/2.0\r\n{TAIL}", "a".repeat(REQUEST_LINE_MAX));
        assert_eq!(read(long.as_bytes(), 4096, true), Reading::LineTooLong);
        // An overlong value, and one cut by the window.
        let v: String = "a".repeat(UA_VALUE_MAX + 1);
        let msg = format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent: {v}\r\n{TAIL}");
        let u = req(read(msg.as_bytes(), 4096, true)).user_agent.unwrap();
        assert!(u.overlong() && !u.cut);
        assert_eq!(u.verdict(false), UaVerdict::Overlong);
        assert_eq!(u.verdict(true), UaVerdict::Listed);
        let msg = format!("OPTIONS sip:a SIP/2.0\r\nUser-Agent: {}", "b".repeat(40));
        let u = req(read(msg.as_bytes(), 4096, true)).user_agent.unwrap();
        assert!(u.cut);
        assert_eq!(u.verdict(false), UaVerdict::Cut);
        let bytes: Vec<u8> = ua_bytes(msg.as_bytes(), &u).collect();
        assert_eq!(bytes.len(), 40);
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"SIP/2.0 401 Unauthorized"), Some(401));
        assert_eq!(status_code(b"sip/2.0 200\r\n"), Some(200));
        assert_eq!(status_code(b"SIP/2.0 200OK"), None);
    }
}
