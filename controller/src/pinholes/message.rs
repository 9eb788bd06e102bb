//! The parts of a SIP message (RFC 3261) and its SDP body (RFC 8866) that pinholes need: the
//! first line, Call-ID, CSeq method, and per media line the connection address, the port and
//! the RTCP port (RFC 3605 `a=rtcp`). Header names are matched case-insensitively, with the
//! compact forms (`i`, `c`, `l`) and folded continuation lines; a body is read only when its
//! Content-Type is `application/sdp`.

use std::net::IpAddr;

/// The first line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Request(String),
    Response(u16),
}

/// One `m=` line with what applies to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// `audio`, `video`...
    pub media: String,
    /// The media-level `c=`, else the session-level one; `None` when neither (or unparsable).
    pub addr: Option<IpAddr>,
    /// 0: the stream is rejected or disabled.
    pub port: u16,
    /// `a=rtcp:PORT [IN IP4 ADDR]`: the RTCP port (and address) when not `port + 1`.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
}

impl Stream {
    /// The RTCP port and address: `a=rtcp`, else the next port (RFC 3550 section 11).
    pub fn rtcp(&self) -> (u16, Option<IpAddr>) {
        match self.rtcp {
            Some((port, addr)) => (port, addr.or(self.addr)),
            None => (self.port.wrapping_add(1), self.addr),
        }
    }
}

/// What a message says about a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: Start,
    pub call_id: String,
    /// The method of the CSeq header (which request a response answers).
    pub cseq_method: String,
    /// The SDP's media lines, when the message carries SDP.
    pub sdp: Option<Vec<Stream>>,
}

/// Read a SIP message; `None` when it is not one (no Call-ID, a first line that is neither a
/// request nor a status line).
pub fn parse(data: &[u8]) -> Option<Message> {
    // Split and cut on the raw bytes (Content-Length counts bytes), then read each part as text.
    let (head, body) = split_head(data);
    let head = String::from_utf8_lossy(head);
    let mut lines = unfold(&head);
    let first = lines.next()?;
    let start = start_line(&first)?;
    let (mut call_id, mut cseq_method, mut sdp_body, mut length) = (None, String::new(), false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "call-id" | "i" => call_id = Some(value.to_string()),
            "cseq" => cseq_method = value.split_whitespace().nth(1).unwrap_or("").to_ascii_uppercase(),
            "content-type" | "c" => {
                sdp_body = value.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
            }
            "content-length" | "l" => length = value.parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    let body = String::from_utf8_lossy(body);
    let call_id = call_id.filter(|c| !c.is_empty())?;
    let sdp = (sdp_body && !body.trim().is_empty()).then(|| streams(&body));
    Some(Message { start, call_id, cseq_method, sdp })
}

/// The header block and the body: split at the first empty line (CRLF CRLF, or bare LFs).
fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
        return (&data[..i], &data[i + 4..]);
    }
    if let Some(i) = data.windows(2).position(|w| w == b"\n\n") {
        return (&data[..i], &data[i + 2..]);
    }
    (data, &[])
}

/// Header lines with folded continuations (a line starting with a space or tab) joined.
fn unfold(head: &str) -> impl Iterator<Item = String> + '_ {
    let mut out: Vec<String> = Vec::new();
    for line in head.split('\n').map(|l| l.trim_end_matches('\r')) {
        match out.last_mut() {
            Some(prev) if line.starts_with([' ', '\t']) => {
                prev.push(' ');
                prev.push_str(line.trim());
            }
            _ => out.push(line.to_string()),
        }
    }
    out.into_iter()
}

fn start_line(line: &str) -> Option<Start> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("SIP/2.0") {
        let code = words.next()?.parse::<u16>().ok().filter(|c| (100..700).contains(c))?;
        return Some(Start::Response(code));
    }
    let uri = words.next()?;
    let version = words.next()?;
    (version.eq_ignore_ascii_case("SIP/2.0") && !uri.is_empty() && first.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| Start::Request(first.to_ascii_uppercase()))
}

/// The media lines of an SDP body.
fn streams(body: &str) -> Vec<Stream> {
    let mut session_addr = None;
    let mut out: Vec<Stream> = Vec::new();
    for line in body.split('\n').map(|l| l.trim_end_matches('\r').trim_start()) {
        let Some((kind, value)) = line.split_once('=') else { continue };
        match kind {
            "c" => {
                let addr = connection(value);
                match out.last_mut() {
                    Some(s) => s.addr = addr,
                    None => session_addr = addr,
                }
            }
            "m" => {
                let mut f = value.split_whitespace();
                let media = f.next().unwrap_or("").to_string();
                // `port/count` (RFC 8866 5.14): the first port.
                let port = f.next().and_then(|p| p.split('/').next()).and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
                out.push(Stream { media, addr: session_addr, port, rtcp: None });
            }
            "a" => {
                if let (Some(rest), Some(s)) = (value.strip_prefix("rtcp:"), out.last_mut()) {
                    let mut f = rest.split_whitespace();
                    if let Some(port) = f.next().and_then(|p| p.parse::<u16>().ok()) {
                        let addr = f.collect::<Vec<_>>().join(" ");
                        s.rtcp = Some((port, if addr.is_empty() { None } else { connection(&addr) }));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `IN IP4 192.0.2.1` / `IN IP6 2001:db8::1` (a multicast `/ttl` suffix dropped).
fn connection(value: &str) -> Option<IpAddr> {
    let mut f = value.split_whitespace();
    if !f.next()?.eq_ignore_ascii_case("IN") {
        return None;
    }
    let family = f.next()?.to_ascii_uppercase();
    let addr = f.next()?.split('/').next()?.parse::<IpAddr>().ok()?;
    match (family.as_str(), addr) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Some(addr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(head: &str, sdp: &str) -> Vec<u8> {
        format!("{head}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()).into_bytes()
    }

    const INVITE: &str = "INVITE sip:100@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060\r\nCall-ID: abc@198.51.100.7\r\nCSeq: 1 INVITE";

    #[test]
    fn session_and_media_level_connection_addresses() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\nm=video 40002 RTP/AVP 96\r\nc=IN IP4 198.51.100.8\r\n";
        let m = parse(&msg(INVITE, sdp)).unwrap();
        assert_eq!(m.start, Start::Request("INVITE".into()));
        assert_eq!(m.call_id, "abc@198.51.100.7");
        assert_eq!(m.cseq_method, "INVITE");
        let s = m.sdp.unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].addr, s[0].port), (Some("198.51.100.7".parse().unwrap()), 40000));
        assert_eq!((s[1].addr, s[1].port), (Some("198.51.100.8".parse().unwrap()), 40002));
        assert_eq!(s[0].rtcp(), (40001, Some("198.51.100.7".parse().unwrap())));
    }

    #[test]
    fn rtcp_attribute_ipv6_and_rejected_streams() {
        let sdp = "v=0\nc=IN IP6 2001:db8::7\nm=audio 5004 RTP/AVP 0\na=rtcp:5010 IN IP6 2001:db8::9\nm=video 0 RTP/AVP 96\nm=audio 6000/2 RTP/AVP 0\na=rtcp:6009\n";
        let m = parse(&msg(INVITE, sdp)).unwrap();
        let s = m.sdp.unwrap();
        assert_eq!(s[0].rtcp(), (5010, Some("2001:db8::9".parse().unwrap())));
        assert_eq!(s[1].port, 0, "rejected stream");
        assert_eq!(s[2].port, 6000);
        assert_eq!(s[2].rtcp(), (6009, Some("2001:db8::7".parse().unwrap())));
    }

    #[test]
    fn compact_folded_and_lower_case_headers() {
        let text = "SIP/2.0 200 OK\r\ni: x1\r\ncseq:\r\n  2 invite\r\nc: Application/SDP; charset=x\r\nl: 33\r\n\r\nc=IN IP4 192.0.2.5\r\nm=audio 7078 RTP/AVP 0\r\ntrailing garbage beyond Content-Length";
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(m.start, Start::Response(200));
        assert_eq!(m.call_id, "x1");
        assert_eq!(m.cseq_method, "INVITE");
        let s = m.sdp.unwrap();
        assert_eq!((s[0].addr, s[0].port), (Some("192.0.2.5".parse().unwrap()), 7078));
    }

    #[test]
    fn no_sdp_without_its_content_type_and_no_message_without_call_id() {
        let text = "BYE sip:a@b SIP/2.0\r\nCall-ID: z\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!((m.start, m.sdp), (Start::Request("BYE".into()), None));
        let other = "INVITE sip:a@b SIP/2.0\r\nCall-ID: z\r\nContent-Type: text/plain\r\n\r\nm=audio 1 RTP/AVP 0\r\n";
        assert_eq!(parse(other.as_bytes()).unwrap().sdp, None);
        assert_eq!(parse(b"INVITE sip:a@b SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n"), None);
        assert_eq!(parse(b"HELLO world\r\nCall-ID: z\r\n\r\n"), None);
        assert_eq!(parse(b"SIP/2.0 99 Odd\r\nCall-ID: z\r\n\r\n"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn content_length_counts_bytes_even_inside_a_character() {
        // Found by the fuzzer: a length that ends inside a multi-byte character.
        let mut m =
            b"INVITE sip:a@b SIP/2.0\r\nCall-ID: z\r\nContent-Type: application/sdp\r\nContent-Length: 26\r\n\r\n"
                .to_vec();
        m.extend_from_slice("m=audio 4000 RTP/AVP 0\r\n\u{e9}x".as_bytes());
        let s = parse(&m).unwrap().sdp.unwrap();
        assert_eq!(s[0].port, 4000);
    }

    #[test]
    fn bad_connection_lines_give_no_address() {
        let sdp = "c=IN IP4 2001:db8::1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 not-an-address\r\nm=audio 4002 RTP/AVP 0\r\nc=IN IP4 233.252.0.1/127\r\n";
        let s = parse(&msg(INVITE, sdp)).unwrap().sdp.unwrap();
        assert_eq!(s[0].addr, None, "family mismatch");
        assert_eq!(s[1].addr, Some("233.252.0.1".parse().unwrap()), "multicast ttl suffix");
    }
}
