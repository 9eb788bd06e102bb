//! Which pinholes the calls need, from the SIP messages the data plane copies out (pure: no map
//! is touched here, so every case is unit tested).
//!
//! A call is its Call-ID. The host's own SDP (a message it sends) gives the local media ports:
//! the `m=` lines whose port is in pinhole mode and whose address is the address the host sends
//! SIP from or one of `[media] addresses` (so a proxy relaying someone else's SDP opens
//! nothing). The peer's SDP (a message it receives) gives the peer's media addresses, matched
//! to the local streams by `m=` line order as offer/answer keeps it (RFC 3264). For each live
//! local stream a pinhole opens, for its RTP port and its RTCP port, to:
//! - the peer's SDP address for that stream (RTCP: its `a=rtcp` address), and
//! - the address the call's signaling came from or went to (the NAT's public address when the
//!   phone put a private one in its SDP; the data plane latches the source port on the first
//!   packet, as symmetric RTP does).
//!
//! New SDP (a re-INVITE, UPDATE, a late answer in ACK or PRACK) recomputes the set: pinholes no
//! longer needed close (`moved`), new ones open. BYE and CANCEL close every pinhole of the call,
//! as does a failure response (300-699) to its INVITE before any 2xx.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use common::{PINHOLE_OPEN_SDP, PINHOLE_OPEN_SIGNALING, PINHOLE_RTCP};

use super::message::{Message, Start, Stream};

/// (peer address, local port).
pub type Key = (IpAddr, u16);

/// Why a pinhole closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    Bye,
    Cancel,
    Failure,
    /// New SDP no longer names it.
    Moved,
    /// No media for `[media] idle` (or none within `[media] setup`).
    Idle,
    /// `voipwall pinhole del`.
    Deleted,
    /// The call table was full and this call was the oldest.
    Evicted,
}

impl Cause {
    pub const ALL: [Cause; 7] =
        [Cause::Bye, Cause::Cancel, Cause::Failure, Cause::Moved, Cause::Idle, Cause::Deleted, Cause::Evicted];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bye => "bye",
            Self::Cancel => "cancel",
            Self::Failure => "failure",
            Self::Moved => "moved",
            Self::Idle => "idle",
            Self::Deleted => "deleted",
            Self::Evicted => "evicted",
        }
    }
}

/// What the table must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Open (or keep open) a pinhole; `flags` are `PINHOLE_*` bits; `new` when no call held
    /// it before.
    Open { key: Key, flags: u16, call: String, new: bool },
    /// Close a pinhole after the grace.
    Close { key: Key, cause: Cause },
}

/// Which direction a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The host received it (its source is the peer).
    In,
    /// The host sent it (its destination is the peer).
    Out,
}

/// The host's side, for telling its own SDP from SDP it relays.
pub struct Local<'a> {
    /// Whether a local UDP port is in pinhole mode.
    pub pinhole_port: &'a dyn Fn(u16) -> bool,
    /// `[media] addresses`.
    pub addresses: &'a [IpAddr],
}

#[derive(Default)]
struct Call {
    /// The host's streams by `m=` line (`None`: not a local pinhole-mode stream).
    local: Vec<Option<Stream>>,
    /// The peer's streams by `m=` line.
    remote: Vec<Stream>,
    /// Where the call's signaling comes from / goes to.
    signaling: Option<IpAddr>,
    /// A 2xx answered the INVITE.
    confirmed: bool,
    /// Pinholes open for this call.
    open: BTreeMap<Key, u16>,
    /// Order of arrival, for eviction.
    seq: u64,
}

/// The calls that have (or may get) pinholes.
pub struct Calls {
    calls: HashMap<String, Call>,
    /// Which call holds each pinhole (a pinhole shared by two calls stays until both close).
    holders: HashMap<Key, Vec<String>>,
    max_calls: usize,
    seq: u64,
}

impl Calls {
    pub fn new(max_calls: usize) -> Self {
        Self { calls: HashMap::new(), holders: HashMap::new(), max_calls: max_calls.max(1), seq: 0 }
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// One message: `src` and `dst` are its IP addresses.
    pub fn observe(&mut self, dir: Direction, src: IpAddr, dst: IpAddr, msg: &Message, local: &Local) -> Vec<Change> {
        let mut changes = Vec::new();
        let ends = match (&msg.start, msg.cseq_method.as_str()) {
            (Start::Request(m), _) if m == "BYE" => Some(Cause::Bye),
            (Start::Request(m), _) if m == "CANCEL" => Some(Cause::Cancel),
            (Start::Response(code), "INVITE") if *code >= 300 => {
                self.calls.get(&msg.call_id).filter(|c| !c.confirmed).map(|_| Cause::Failure)
            }
            _ => None,
        };
        if let Some(cause) = ends {
            self.end(&msg.call_id, cause, &mut changes);
            return changes;
        }
        if let (Start::Response(200..=299), "INVITE") = (&msg.start, msg.cseq_method.as_str())
            && let Some(c) = self.calls.get_mut(&msg.call_id)
        {
            c.confirmed = true;
        }
        let Some(sdp) = &msg.sdp else { return changes };
        let peer = if dir == Direction::In { src } else { dst };
        let updated = match dir {
            Direction::Out => {
                let streams: Vec<Option<Stream>> = sdp
                    .iter()
                    .map(|s| {
                        let ours = s.addr.is_some_and(|a| a == src || local.addresses.contains(&a));
                        (ours && s.port != 0 && (local.pinhole_port)(s.port)).then(|| s.clone())
                    })
                    .collect();
                if streams.iter().all(Option::is_none) {
                    // Not the host's media (a proxy relaying SDP), or no pinhole-mode port.
                    return changes;
                }
                self.call(&msg.call_id, &mut changes).local = streams;
                true
            }
            Direction::In => match self.calls.get_mut(&msg.call_id) {
                Some(c) => {
                    c.remote = sdp.clone();
                    true
                }
                None => {
                    // An offer before the host's answer: keep it for when the answer goes out.
                    self.call(&msg.call_id, &mut changes).remote = sdp.clone();
                    false
                }
            },
        };
        let call = self.calls.get_mut(&msg.call_id).expect("created above");
        if call.signaling.is_none() {
            call.signaling = Some(peer);
        }
        if updated {
            self.refresh(&msg.call_id, &mut changes);
        }
        changes
    }

    /// The call's entry, made room for.
    fn call(&mut self, id: &str, changes: &mut Vec<Change>) -> &mut Call {
        if !self.calls.contains_key(id) {
            if self.calls.len() >= self.max_calls
                && let Some(oldest) = self.calls.iter().min_by_key(|(_, c)| c.seq).map(|(k, _)| k.clone())
            {
                self.end(&oldest, Cause::Evicted, changes);
            }
            self.seq += 1;
            self.calls.insert(id.to_string(), Call { seq: self.seq, ..Call::default() });
        }
        self.calls.get_mut(id).expect("inserted")
    }

    /// Recompute a call's pinholes and emit the difference.
    fn refresh(&mut self, id: &str, changes: &mut Vec<Change>) {
        let call = self.calls.get_mut(id).expect("caller checked");
        let want = wanted(call);
        let gone: Vec<Key> = call.open.keys().filter(|k| !want.contains_key(k)).copied().collect();
        for key in gone {
            call.open.remove(&key);
            release(&mut self.holders, key, id, Cause::Moved, changes);
        }
        for (key, flags) in want {
            if call.open.insert(key, flags) != Some(flags) {
                let new = !self.holders.contains_key(&key);
                let holders = self.holders.entry(key).or_default();
                if !holders.iter().any(|h| h == id) {
                    holders.push(id.to_string());
                }
                changes.push(Change::Open { key, flags, call: id.to_string(), new });
            }
        }
    }

    /// Close every pinhole of a call and forget it.
    fn end(&mut self, id: &str, cause: Cause, changes: &mut Vec<Change>) {
        if let Some(call) = self.calls.remove(id) {
            for key in call.open.into_keys() {
                release(&mut self.holders, key, id, cause, changes);
            }
        }
    }

    /// A pinhole the data plane let expire (idle) or an operator deleted: forget it, and the
    /// calls left without pinholes.
    pub fn expired(&mut self, key: Key) {
        if let Some(ids) = self.holders.remove(&key) {
            for id in ids {
                if let Some(c) = self.calls.get_mut(&id) {
                    c.open.remove(&key);
                    if c.open.is_empty() && !c.local.is_empty() {
                        self.calls.remove(&id);
                    }
                }
            }
        }
    }

    /// Forget calls that never got a pinhole and are older than the `keep` newest ones (offers
    /// the host never answered: a scanner's INVITEs).
    pub fn trim_unanswered(&mut self, keep: usize) {
        let mut waiting: Vec<(u64, String)> =
            self.calls.iter().filter(|(_, c)| c.open.is_empty()).map(|(k, c)| (c.seq, k.clone())).collect();
        if waiting.len() > keep {
            waiting.sort_unstable();
            for (_, id) in &waiting[..waiting.len() - keep] {
                self.calls.remove(id);
            }
        }
    }
}

/// Drop `id`'s hold on `key`; the last holder closes it.
fn release(holders: &mut HashMap<Key, Vec<String>>, key: Key, id: &str, cause: Cause, changes: &mut Vec<Change>) {
    let last = match holders.get_mut(&key) {
        Some(h) => {
            h.retain(|x| x != id);
            h.is_empty()
        }
        None => true,
    };
    if last {
        holders.remove(&key);
        changes.push(Change::Close { key, cause });
    }
}

/// The pinholes a call needs now.
fn wanted(call: &Call) -> BTreeMap<Key, u16> {
    let mut want = BTreeMap::new();
    for (i, local) in call.local.iter().enumerate() {
        let Some(local) = local else { continue };
        let remote = call.remote.get(i);
        if remote.is_some_and(|r| r.port == 0) {
            continue; // the peer rejected the stream
        }
        let mut add = |addr: Option<IpAddr>, port: u16, flags: u16| {
            if let Some(a) = addr.filter(|a| !a.is_unspecified()) {
                *want.entry((a, port)).or_insert(0) |= flags;
            }
        };
        let (rtcp_port, _) = local.rtcp();
        add(remote.and_then(|r| r.addr), local.port, PINHOLE_OPEN_SDP);
        add(call.signaling, local.port, PINHOLE_OPEN_SIGNALING);
        add(remote.and_then(|r| r.rtcp().1), rtcp_port, PINHOLE_OPEN_SDP | PINHOLE_RTCP);
        add(call.signaling, rtcp_port, PINHOLE_OPEN_SIGNALING | PINHOLE_RTCP);
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pinholes::message::parse;

    const HOST: &str = "192.0.2.10";
    const PHONE: &str = "198.51.100.7";
    const NAT: &str = "203.0.113.9";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sip(first: &str, call: &str, cseq: &str, sdp: Option<(&str, u16)>) -> Message {
        let body =
            sdp.map_or(String::new(), |(a, p)| format!("v=0\r\nc=IN IP4 {a}\r\nt=0 0\r\nm=audio {p} RTP/AVP 0\r\n"));
        let ct = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
        let text =
            format!("{first}\r\nCall-ID: {call}\r\nCSeq: {cseq}\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len());
        parse(text.as_bytes()).unwrap()
    }

    fn rtp(p: u16) -> bool {
        (10000..=20000).contains(&p)
    }

    fn local() -> Local<'static> {
        Local { pinhole_port: &rtp, addresses: &[] }
    }

    fn opened(changes: &[Change]) -> Vec<(Key, u16)> {
        let mut v: Vec<_> = changes
            .iter()
            .filter_map(|c| if let Change::Open { key, flags, .. } = c { Some((*key, *flags)) } else { None })
            .collect();
        v.sort();
        v
    }

    fn closed(changes: &[Change]) -> Vec<(Key, Cause)> {
        let mut v: Vec<_> = changes
            .iter()
            .filter_map(|c| if let Change::Close { key, cause } = c { Some((*key, *cause)) } else { None })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn inbound_call_opens_rtp_and_rtcp_to_the_sdp_and_signaling_addresses_and_bye_closes() {
        let mut calls = Calls::new(100);
        let (host, nat) = (ip(HOST), ip(NAT));
        // A phone behind NAT: private address in SDP, signaling from the NAT.
        let invite = sip("INVITE sip:100@x SIP/2.0", "c1", "1 INVITE", Some(("10.0.0.5", 4000)));
        assert!(calls.observe(Direction::In, nat, host, &invite, &local()).is_empty(), "no local port yet");
        let ok = sip("SIP/2.0 200 OK", "c1", "1 INVITE", Some((HOST, 12000)));
        let ch = calls.observe(Direction::Out, host, nat, &ok, &local());
        assert_eq!(
            opened(&ch),
            vec![
                ((ip("10.0.0.5"), 12000), PINHOLE_OPEN_SDP),
                ((ip("10.0.0.5"), 12001), PINHOLE_OPEN_SDP | PINHOLE_RTCP),
                ((nat, 12000), PINHOLE_OPEN_SIGNALING),
                ((nat, 12001), PINHOLE_OPEN_SIGNALING | PINHOLE_RTCP),
            ]
        );
        let bye = sip("BYE sip:x SIP/2.0", "c1", "2 BYE", None);
        let ch = calls.observe(Direction::In, nat, host, &bye, &local());
        assert_eq!(closed(&ch).len(), 4);
        assert!(closed(&ch).iter().all(|(_, c)| *c == Cause::Bye));
        assert!(calls.is_empty());
    }

    #[test]
    fn outbound_call_opens_to_the_callee_and_reinvite_moves_the_port() {
        let mut calls = Calls::new(100);
        let (host, phone) = (ip(HOST), ip(PHONE));
        let invite = sip("INVITE sip:200@y SIP/2.0", "c2", "1 INVITE", Some((HOST, 14000)));
        let ch = calls.observe(Direction::Out, host, phone, &invite, &local());
        // Before the answer: the callee's signaling address (early media, symmetric RTP).
        assert_eq!(
            opened(&ch),
            vec![((phone, 14000), PINHOLE_OPEN_SIGNALING), ((phone, 14001), PINHOLE_OPEN_SIGNALING | PINHOLE_RTCP)]
        );
        let answer = sip("SIP/2.0 200 OK", "c2", "1 INVITE", Some((PHONE, 5000)));
        let ch = calls.observe(Direction::In, phone, host, &answer, &local());
        assert_eq!(
            opened(&ch),
            vec![
                ((phone, 14000), PINHOLE_OPEN_SDP | PINHOLE_OPEN_SIGNALING),
                ((phone, 14001), PINHOLE_OPEN_SDP | PINHOLE_OPEN_SIGNALING | PINHOLE_RTCP)
            ],
            "flags widen"
        );
        let reinvite = sip("INVITE sip:200@y SIP/2.0", "c2", "2 INVITE", Some((HOST, 16000)));
        let ch = calls.observe(Direction::Out, host, phone, &reinvite, &local());
        assert_eq!(closed(&ch), vec![((phone, 14000), Cause::Moved), ((phone, 14001), Cause::Moved)]);
        assert_eq!(opened(&ch).len(), 2);
        // A 491 to the re-INVITE does not end a confirmed call.
        let busy = sip("SIP/2.0 491 Request Pending", "c2", "2 INVITE", None);
        assert!(calls.observe(Direction::In, phone, host, &busy, &local()).is_empty());
        let bye = sip("BYE sip:200@y SIP/2.0", "c2", "3 BYE", None);
        assert_eq!(closed(&calls.observe(Direction::Out, host, phone, &bye, &local())).len(), 2);
    }

    #[test]
    fn cancel_and_failure_close_an_unanswered_call() {
        let mut calls = Calls::new(100);
        let (host, phone) = (ip(HOST), ip(PHONE));
        let invite = sip("INVITE sip:200@y SIP/2.0", "c3", "1 INVITE", Some((HOST, 14000)));
        calls.observe(Direction::Out, host, phone, &invite, &local());
        let busy = sip("SIP/2.0 486 Busy Here", "c3", "1 INVITE", None);
        let ch = calls.observe(Direction::In, phone, host, &busy, &local());
        assert!(closed(&ch).iter().all(|(_, c)| *c == Cause::Failure) && closed(&ch).len() == 2);
        calls.observe(
            Direction::Out,
            host,
            phone,
            &sip("INVITE sip:200@y SIP/2.0", "c4", "1 INVITE", Some((HOST, 14000))),
            &local(),
        );
        let ch = calls.observe(
            Direction::Out,
            host,
            phone,
            &sip("CANCEL sip:200@y SIP/2.0", "c4", "1 CANCEL", None),
            &local(),
        );
        assert!(closed(&ch).iter().all(|(_, c)| *c == Cause::Cancel) && closed(&ch).len() == 2);
    }

    #[test]
    fn relayed_sdp_and_ports_not_in_pinhole_mode_open_nothing() {
        let mut calls = Calls::new(100);
        let (host, phone) = (ip(HOST), ip(PHONE));
        // A proxy forwarding the caller's SDP: the address is not the host's.
        let relayed = sip("INVITE sip:200@y SIP/2.0", "c5", "1 INVITE", Some(("198.51.100.99", 12000)));
        assert!(calls.observe(Direction::Out, host, phone, &relayed, &local()).is_empty());
        let other_port = sip("INVITE sip:200@y SIP/2.0", "c6", "1 INVITE", Some((HOST, 30000)));
        assert!(calls.observe(Direction::Out, host, phone, &other_port, &local()).is_empty());
        // Behind a 1:1 NAT the host's SDP carries its public address, listed in [media].
        let public = [ip("203.0.113.50")];
        let nat_local = Local { pinhole_port: &rtp, addresses: &public };
        let ours = sip("INVITE sip:200@y SIP/2.0", "c7", "1 INVITE", Some(("203.0.113.50", 12000)));
        assert_eq!(opened(&calls.observe(Direction::Out, host, phone, &ours, &nat_local)).len(), 2);
    }

    #[test]
    fn a_rejected_stream_opens_nothing_and_the_call_table_evicts_the_oldest() {
        let mut calls = Calls::new(2);
        let (host, phone) = (ip(HOST), ip(PHONE));
        calls.observe(
            Direction::In,
            phone,
            host,
            &sip("INVITE sip:1@x SIP/2.0", "r", "1 INVITE", Some((PHONE, 0))),
            &local(),
        );
        let ch = calls.observe(
            Direction::Out,
            host,
            phone,
            &sip("SIP/2.0 200 OK", "r", "1 INVITE", Some((HOST, 12000))),
            &local(),
        );
        assert!(opened(&ch).is_empty(), "{ch:?}");
        calls.observe(
            Direction::Out,
            host,
            phone,
            &sip("INVITE sip:1@x SIP/2.0", "a", "1 INVITE", Some((HOST, 12010))),
            &local(),
        );
        let ch = calls.observe(
            Direction::Out,
            host,
            phone,
            &sip("INVITE sip:1@x SIP/2.0", "b", "1 INVITE", Some((HOST, 12020))),
            &local(),
        );
        assert_eq!(calls.len(), 2);
        assert!(closed(&ch).iter().all(|(_, c)| *c == Cause::Evicted) || closed(&ch).is_empty());
    }

    #[test]
    fn a_pinhole_two_calls_share_closes_with_the_last() {
        let mut calls = Calls::new(100);
        let (host, phone) = (ip(HOST), ip(PHONE));
        for id in ["s1", "s2"] {
            calls.observe(
                Direction::Out,
                host,
                phone,
                &sip("INVITE sip:1@x SIP/2.0", id, "1 INVITE", Some((HOST, 12000))),
                &local(),
            );
        }
        let ch = calls.observe(Direction::Out, host, phone, &sip("BYE sip:1@x SIP/2.0", "s1", "2 BYE", None), &local());
        assert!(closed(&ch).is_empty(), "s2 still holds them");
        let ch = calls.observe(Direction::Out, host, phone, &sip("BYE sip:1@x SIP/2.0", "s2", "2 BYE", None), &local());
        assert_eq!(closed(&ch).len(), 2);
    }
}
