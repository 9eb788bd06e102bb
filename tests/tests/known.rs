//! BPF_PROG_TEST_RUN cases for known peers and the unknown sources' budget: unknown under and
//! over the budget, each way of becoming known (a named set, a TCP handshake, a SIP digest
//! answer, a response to the host's own SIP request), expiry, the allow list, the IPv6 prefix,
//! dry run, the echo class, and a known peer's own rate limit. Each case asserts the verdict and
//! the counter it moved.

use common::{addr::v4_mapped, known, stat};
use tests::{
    Harness, XDP_DROP, XDP_PASS, bpf_available,
    packet::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
};

const HOST: [u8; 4] = [10, 0, 0, 1];
const HOST6: &str = "2001:db8:feed::1";
const CARRIER: [u8; 4] = [198, 51, 100, 7];

/// voip-edge with a tiny unknown budget on the SIP port (5 back to back, then 1/s), a carriers
/// set, an allow entry, and a known peer's own levels low enough to cross.
fn policy(extra: &str) -> String {
    format!(
        r#"
roles = ["voip-edge"]
allow = ["203.0.113.10/32"]

[sets]
carriers = ["198.51.100.0/28"]

[limit.signaling]
levels = [{{ pps = 1, burst = 8 }}]
unknown = {{ pps = 1, burst = 5 }}

[options]
icmp_echo_unknown = {{ pps = 1, burst = 2 }}
{extra}
"#
    )
}

fn options(src: [u8; 4]) -> Vec<u8> {
    Packet::udp4(src, 5060, HOST, 5060).payload(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n").bytes()
}

fn stat_of(h: &Harness, slot: u32) -> u64 {
    h.dp.stats().expect("stats")[slot as usize]
}

fn budget_drops(h: &Harness, class: &str) -> u64 {
    let id = h.compiled.class_names.iter().position(|c| c == class).unwrap_or_else(|| panic!("no class {class}"));
    h.dp.budget_drops().expect("budget drops")[id]
}

fn proof_of(h: &Harness, key: [u8; 16]) -> Option<u8> {
    h.dp.known_peers().expect("known").into_iter().find(|(k, _)| *k == key).map(|(_, p)| p.proof)
}

/// Spend the budget with five new sources, so the next unknown source is refused.
fn exhaust(h: &Harness) {
    spend(h, 5);
}

/// Spend `n` tokens of the budget with new sources.
fn spend(h: &Harness, n: u8) {
    for i in 0..n {
        h.expect(
            &format!("unknown source {i}, within the budget"),
            &options([192, 0, 2, 100 + i]),
            XDP_PASS,
            "port_open",
        );
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn unknown_sources_share_one_budget_per_class() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    exhaust(&h);
    let before = budget_drops(&h, "signaling");
    h.expect("a sixth unknown source: over the budget", &options([192, 0, 2, 120]), XDP_DROP, "unknown_over_budget");
    h.expect("the first source again: still unknown", &options([192, 0, 2, 100]), XDP_DROP, "unknown_over_budget");
    assert_eq!(budget_drops(&h, "signaling"), before + 2, "the class's budget drops count both");
    assert!(h.dp.known_peers().unwrap().is_empty(), "nobody became known by sending");
    // Other classes have their own budget: RTP from a new source passes.
    let rtp = Packet::udp4([192, 0, 2, 121], 4000, HOST, 12000).payload(&[0x80; 172]).bytes();
    h.expect("RTP from an unknown source: the media budget", &rtp, XDP_PASS, "port_open");
    // A closed port never reaches a budget.
    h.expect("closed port", &Packet::udp4([192, 0, 2, 122], 1, HOST, 9999).bytes(), XDP_DROP, "port_closed");
}

#[test]
#[ignore = "needs root and BPF"]
fn set_members_and_the_allow_list_are_known() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    exhaust(&h);
    h.expect("a carrier (in a set) with the budget spent", &options(CARRIER), XDP_PASS, "port_open");
    assert_eq!(proof_of(&h, v4_mapped(CARRIER)), Some(known::PROOF_SET));
    h.expect("again: known now", &options(CARRIER), XDP_PASS, "port_open");
    h.expect("the allow list bypasses everything", &options([203, 0, 113, 10]), XDP_PASS, "allow_list");
    assert_eq!(stat_of(&h, stat::KNOWN_LEARNED + known::PROOF_SET as u32 - 1), 1, "learned once");
}

#[test]
#[ignore = "needs root and BPF"]
fn a_completed_tcp_handshake_makes_a_peer_known() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    exhaust(&h);
    let peer = [192, 0, 2, 50];
    let sip_tcp =
        |flags| Packet::tcp4(peer, 40000, HOST, 5060, flags).payload(b"OPTIONS sip:x SIP/2.0\r\n\r\n").bytes();
    h.expect("an unknown peer over TCP, budget spent", &sip_tcp(TCP_ACK), XDP_DROP, "unknown_over_budget");
    // What the host sends: a SYN-ACK (answers any SYN, spoofed ones too) and an RST prove nothing.
    for (what, flags) in [("SYN-ACK", TCP_SYN | TCP_ACK), ("RST", TCP_RST | TCP_ACK)] {
        h.dp.test_run_egress(&Packet::tcp4(HOST, 5060, peer, 40000, flags).bytes()).unwrap();
        assert_eq!(proof_of(&h, v4_mapped(peer)), None, "{what} proves nothing");
    }
    // An ACK on the connection: the handshake completed.
    h.dp.test_run_egress(&Packet::tcp4(HOST, 5060, peer, 40000, TCP_ACK).bytes()).unwrap();
    assert_eq!(proof_of(&h, v4_mapped(peer)), Some(known::PROOF_TCP));
    h.expect("the peer, known by its handshake", &sip_tcp(TCP_ACK), XDP_PASS, "port_open");
    // The same ACK from a port the policy does not open is a flow the host opened, not a peer.
    let other = [192, 0, 2, 51];
    h.dp.test_run_egress(&Packet::tcp4(HOST, 40001, other, 443, TCP_ACK).bytes()).unwrap();
    assert_eq!(proof_of(&h, v4_mapped(other)), None);
}

fn register(src: [u8; 4], credentials: bool) -> Vec<u8> {
    let auth = if credentials { "Authorization: Digest username=\"100\", response=\"x\"\r\n" } else { "" };
    let msg = format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9\r\nCall-ID: r1@phone\r\nCSeq: 2 REGISTER\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    Packet::udp4(src, 5060, HOST, 5060).payload(msg.as_bytes()).bytes()
}

fn response(dst: [u8; 4], status: &str, cseq: &str) -> Vec<u8> {
    let msg = format!(
        "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 192.0.2.9\r\nCall-ID: r1@phone\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
    );
    Packet::udp4(HOST, 5060, dst, 5060).payload(msg.as_bytes()).bytes()
}

#[test]
#[ignore = "needs root and BPF"]
fn a_phone_that_answers_the_digest_challenge_is_known() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    let phone = [192, 0, 2, 60];
    h.expect("REGISTER without credentials", &register(phone, false), XDP_PASS, "port_open");
    h.dp.test_run_egress(&response(phone, "401 Unauthorized", "1 REGISTER")).unwrap();
    h.expect("REGISTER with credentials", &register(phone, true), XDP_PASS, "port_open");
    // A 200 to an OPTIONS (a server answers those without authentication) proves nothing.
    h.dp.test_run_egress(&response(phone, "200 OK", "7 OPTIONS")).unwrap();
    assert_eq!(proof_of(&h, v4_mapped(phone)), None, "a 2xx to another method");
    h.expect("REGISTER with credentials again", &register(phone, true), XDP_PASS, "port_open");
    h.dp.test_run_egress(&response(phone, "200 OK", "2 REGISTER")).unwrap();
    assert_eq!(proof_of(&h, v4_mapped(phone)), Some(known::PROOF_SIP_DIGEST));
    // The phone's three requests before it was known spent three tokens.
    spend(&h, 2);
    h.expect("the registered phone with the budget spent", &register(phone, false), XDP_PASS, "port_open");
    // A 2xx to a REGISTER with no credentials outstanding (a server that lets anyone register)
    // proves nothing.
    let other = [192, 0, 2, 61];
    h.dp.test_run_egress(&response(other, "200 OK", "1 REGISTER")).unwrap();
    assert_eq!(proof_of(&h, v4_mapped(other)), None, "no credentials were outstanding");
}

fn host_request(dst: [u8; 4], call_id_header: &str) -> Vec<u8> {
    let msg = format!(
        "OPTIONS sip:carrier.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKping\r\n{call_id_header}\r\nCSeq: 10 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    Packet::udp4(HOST, 5060, dst, 5060).payload(msg.as_bytes()).bytes()
}

fn peer_response(src: [u8; 4], call_id_header: &str) -> Vec<u8> {
    let msg = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKping\r\n{call_id_header}\r\nCSeq: 10 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    Packet::udp4(src, 5060, HOST, 5060).payload(msg.as_bytes()).bytes()
}

#[test]
#[ignore = "needs root and BPF"]
fn a_peer_that_answers_the_hosts_own_request_is_known() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    exhaust(&h);
    let trunk = [192, 0, 2, 70];
    let spoofed = [192, 0, 2, 71];
    h.dp.test_run_egress(&host_request(trunk, "Call-ID: 5f1a0e77c0ffee@10.0.0.1")).unwrap();
    h.dp.test_run_egress(&host_request(spoofed, "Call-ID: 1111@10.0.0.1")).unwrap();
    // A response with another Call-ID (a guess) proves nothing and meets the spent budget.
    h.expect(
        "a response with a guessed Call-ID",
        &peer_response(spoofed, "Call-ID: 2222@10.0.0.1"),
        XDP_DROP,
        "unknown_over_budget",
    );
    assert_eq!(proof_of(&h, v4_mapped(spoofed)), None);
    // The real response, written in the compact form with other blanks.
    h.expect("the trunk's response", &peer_response(trunk, "i:   5f1a0e77c0ffee@10.0.0.1  "), XDP_PASS, "port_open");
    assert_eq!(proof_of(&h, v4_mapped(trunk)), Some(known::PROOF_SIP_RESPONSE));
    h.expect("the trunk's INVITE with the budget spent", &options(trunk), XDP_PASS, "port_open");
}

#[test]
#[ignore = "needs root and BPF"]
fn known_status_expires_after_known_ttl() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy("known_ttl = \"1s\""));
    exhaust(&h);
    let peer = [192, 0, 2, 80];
    h.dp.test_run_egress(&Packet::tcp4(HOST, 5060, peer, 40000, TCP_ACK).bytes()).unwrap();
    h.expect("known right after the handshake", &options(peer), XDP_PASS, "port_open");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    // Two seconds refill two tokens of the budget: spend them first.
    h.expect("a new source spends a refilled token", &options([192, 0, 2, 81]), XDP_PASS, "port_open");
    h.expect("another new source spends the other", &options([192, 0, 2, 82]), XDP_PASS, "port_open");
    h.expect("the peer after its known_ttl: unknown again", &options(peer), XDP_DROP, "unknown_over_budget");
}

#[test]
#[ignore = "needs root and BPF"]
fn ipv6_peers_are_known_by_their_prefix() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy(""));
    let opts6 = |src: &str| Packet::udp6(src, 5060, HOST6, 5060).payload(b"OPTIONS sip:x SIP/2.0\r\n\r\n").bytes();
    for i in 0..5 {
        h.expect(&format!("unknown IPv6 source {i}"), &opts6(&format!("2001:db8:9:{i}::1")), XDP_PASS, "port_open");
    }
    h.dp.test_run_egress(&Packet::tcp6(HOST6, 5060, "2001:db8:1::1", 40000, TCP_ACK).bytes()).unwrap();
    h.expect("another address in the known /64", &opts6("2001:db8:1::99"), XDP_PASS, "port_open");
    h.expect("an address in another /64", &opts6("2001:db8:2::1"), XDP_DROP, "unknown_over_budget");
}

#[test]
#[ignore = "needs root and BPF"]
fn dry_run_echo_and_a_known_peers_own_limit() {
    if !bpf_available() {
        return;
    }
    let h = Harness::new(&policy("dry_run = true"));
    exhaust(&h);
    h.expect("over the budget in dry run", &options([192, 0, 2, 90]), XDP_PASS, "unknown_over_budget");
    let h = Harness::new(&policy(""));
    let echo = |i: u8| Packet::icmp4([192, 0, 2, 200 + i], HOST, 8).bytes();
    h.expect("echo 1", &echo(0), XDP_PASS, "icmp");
    h.expect("echo 2", &echo(1), XDP_PASS, "icmp");
    h.expect("echo 3: over the echo budget of unknown sources", &echo(2), XDP_DROP, "unknown_over_budget");
    // A known peer keeps its per-source levels (burst 8 here), in its own entry.
    let peer = [192, 0, 2, 95];
    h.dp.test_run_egress(&Packet::tcp4(HOST, 5060, peer, 40000, TCP_ACK).bytes()).unwrap();
    for i in 0..8 {
        h.expect(&format!("known peer, packet {i} of its burst"), &options(peer), XDP_PASS, "port_open");
    }
    h.expect("known peer over its own level", &options(peer), XDP_DROP, "rate_limited");
    let entry = h.dp.known_peers().unwrap().into_iter().find(|(k, _)| *k == v4_mapped(peer)).unwrap().1;
    assert_ne!(entry.classes[0], 0, "its rate state lives in its own entry");
}
