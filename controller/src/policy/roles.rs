//! Built-in role presets: one per row of the vendor port tables (cited by their published
//! titles in [`Role::source`]), so an operator describes a host by what it is instead of
//! retyping port lists.
//!
//! Conventions shared by every preset:
//! - SIP signalling ports use the `signaling` rate class (PortSIP's level 1 / level 2 packet
//!   rates), RTP and other media ports the police-only `media` class, web ports the police-only
//!   `web` class ([`builtin_limits`]).
//! - Management ports (SSH, databases, cluster interconnects, billing backends) are open only to
//!   a source set the operator fills: `admins`, `cluster` or `carriers` ([`BUILTIN_SETS`]). Until
//!   the set is filled those ports are closed to everyone; `voipwall roles NAME` and
//!   `voipwall policy check` say so.
//! - Ports a vendor says never to expose stay closed and are named in the role's notes.

use std::time::Duration;

use super::{Budget, Level, Limit, Proto};

/// Source sets every policy has, empty unless the policy file fills them.
pub const BUILTIN_SETS: [(&str, &str); 3] = [
    ("admins", "operators' own addresses: SSH, admin web interfaces, database consoles"),
    ("cluster", "the host's peers: other cluster nodes, billing/RADIUS clients, DB clients"),
    ("carriers", "SIP trunk providers' signalling addresses"),
];

/// Rate classes every policy has; a `[limit.NAME]` with the same name replaces one (keeping its
/// `unknown` budget unless it sets one).
///
/// The budgets of unknown sources (those that never proved their address, which includes every
/// spoofed one) are what a random-source flood can get through, together, per class:
/// - `signaling`: 2000/s, burst 4000. PortSIP's level-2 rate, the most one source may send
///   before it is banned; for the unknown it covers new phones registering (a mass
///   re-registration of 10 000 phones after an outage, challenge round trips included, is about
///   that over ten seconds) while a SIP server handles it without effort. Registered phones,
///   trunks the server pings and peers in `[sets]` are known and never draw from it.
/// - `media`: 20 000/s, burst 40 000. About 400 RTP streams at 50 packets/s from addresses
///   that never signalled themselves (carriers send media from outside their signalling
///   ranges): put such ranges in `carriers` to make them known.
/// - `web`: 1000/s, burst 2000, the per-source rate of the class.
pub fn builtin_limits() -> Vec<(&'static str, Limit)> {
    const HOUR: Duration = Duration::from_secs(3600);
    vec![
        // PortSIP anti-hacking defaults: level 1 500 packets/s, level 2 2000 packets/s, each
        // blacklisting for 1 hour ("PortSIP PBX: Security Features", anti-hacking).
        (
            "signaling",
            Limit {
                levels: vec![Level { pps: 500, burst: 1000, ban: HOUR }, Level { pps: 2000, burst: 2000, ban: HOUR }],
                unknown: Some(Budget { pps: 2000, burst: 4000 }),
            },
        ),
        // RTP needs no control protocol and carriers send media from addresses outside their
        // published ranges ("VICIdial: Ports", SIP and RTP traffic), so media is open to all
        // and only policed. One carrier address can carry hundreds of calls at 50 packets/s
        // each (20 ms ptime): 50 000 packets/s per source.
        (
            "media",
            Limit {
                levels: vec![Level { pps: 50_000, burst: 100_000, ban: Duration::ZERO }],
                unknown: Some(Budget { pps: 20_000, burst: 40_000 }),
            },
        ),
        // Self-care and admin web front ends: police a single source to 1000 packets/s.
        (
            "web",
            Limit {
                levels: vec![Level { pps: 1000, burst: 2000, ban: Duration::ZERO }],
                unknown: Some(Budget { pps: 1000, burst: 2000 }),
            },
        ),
    ]
}

/// One port rule of a preset.
#[derive(Debug)]
pub struct RoleRule {
    pub name: &'static str,
    pub proto: Proto,
    /// Inclusive port ranges.
    pub ports: &'static [(u16, u16)],
    /// Set names; empty means any source.
    pub from: &'static [&'static str],
    pub limit: Option<&'static str>,
    /// Whether the ports carry SIP, and whether voipwall can read it.
    pub sip: SipTransport,
}

/// What a preset's port carries, for the SIP checks (`[sip] ports` defaults to the `Plain` ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipTransport {
    /// Not SIP.
    None,
    /// SIP over UDP or TCP: inspected.
    Plain,
    /// SIP over TLS or secure WebSocket: only packet-level checks apply.
    Encrypted,
}

/// A preset.
#[derive(Debug)]
pub struct Role {
    pub name: &'static str,
    /// The vendor document the port table comes from, by its published title.
    pub source: &'static str,
    pub summary: &'static str,
    pub rules: &'static [RoleRule],
    pub notes: &'static [&'static str],
}

const PORTAONE: &str = "PortaSwitch: Ports to be opened (PortaOne documentation, firewall advice)";
const VICIDIAL: &str = "VICIdial: Ports (SIP and RTP traffic)";
const FONALITY: &str = "Fonality PBXtra: Port forwarding and VoIP traffic (ports to forward)";
const PORTSIP: &str = "PortSIP PBX: Security Features (port table)";

const fn rule(
    name: &'static str,
    proto: Proto,
    ports: &'static [(u16, u16)],
    from: &'static [&'static str],
    limit: Option<&'static str>,
) -> RoleRule {
    RoleRule { name, proto, ports, from, limit, sip: SipTransport::None }
}

/// A plaintext SIP signalling port, open to any source, in the signalling class.
const fn sip(name: &'static str, proto: Proto, ports: &'static [(u16, u16)]) -> RoleRule {
    RoleRule { name, proto, ports, from: ANY, limit: SIG, sip: SipTransport::Plain }
}

/// SIP over TLS or WSS: the same, but its content cannot be inspected.
const fn sip_encrypted(name: &'static str, proto: Proto, ports: &'static [(u16, u16)]) -> RoleRule {
    RoleRule { name, proto, ports, from: ANY, limit: SIG, sip: SipTransport::Encrypted }
}

const SIG: Option<&str> = Some("signaling");
const MEDIA: Option<&str> = Some("media");
const WEB: Option<&str> = Some("web");
const ANY: &[&str] = &[];
const ADMINS: &[&str] = &["admins"];
const CLUSTER: &[&str] = &["cluster"];

/// "All servers: public interface — TCP 22: server administration via SSH" (PortaSwitch).
const PORTASWITCH_SSH: RoleRule = rule("ssh", Proto::Tcp, &[(22, 22)], ADMINS, None);

/// Every built-in role, the default first.
pub static ROLES: &[Role] = &[
    Role {
        name: "voip-edge",
        source: "voipwall default: union of the common SIP edge ports of the tables below",
        summary: "Generic SIP edge host (the default when a policy names no roles)",
        rules: &[
            rule("ssh", Proto::Tcp, &[(22, 22)], ANY, None),
            sip("sip", Proto::Both, &[(5060, 5060)]),
            sip_encrypted("sip-tls", Proto::Tcp, &[(5061, 5061)]),
            rule("rtp-asterisk", Proto::Udp, &[(10000, 20000)], ANY, MEDIA),
            rule("rtp-portaswitch", Proto::Udp, &[(35000, 65000)], ANY, MEDIA),
            rule("self-care", Proto::Tcp, &[(8442, 8449)], ANY, WEB),
            rule("https", Proto::Tcp, &[(443, 443)], ANY, WEB),
        ],
        notes: &[
            "SSH (22/tcp) is open to any source so the default can never lock you out; name your admins and restrict it with a [[rule]] (from = [\"admins\"]).",
        ],
    },
    Role {
        name: "portaswitch-config",
        source: PORTAONE,
        summary: "PortaSwitch configuration server (public and private interface rows)",
        rules: &[
            PORTASWITCH_SSH,
            rule("config-web", Proto::Tcp, &[(8700, 8700)], ADMINS, WEB),
            rule("letsencrypt-http01", Proto::Tcp, &[(80, 80)], ANY, WEB),
            rule("portainer", Proto::Tcp, &[(9443, 9443)], ADMINS, WEB),
            rule("billing-admin-logs", Proto::Tcp, &[(3005, 3005)], ADMINS, WEB),
            rule("nsca", Proto::Both, &[(5667, 5668)], CLUSTER, None),
        ],
        notes: &[
            "80/tcp is open to any source for the LetsEncrypt HTTP-01 challenge; the private-interface patch download on 80/tcp is covered by it.",
            "NSCA (5667-5668 tcp+udp) is a private-interface port: only the `cluster` set reaches it.",
        ],
    },
    Role {
        name: "portaswitch-web",
        source: PORTAONE,
        summary: "PortaSwitch web (admin) server, public interface",
        rules: &[
            PORTASWITCH_SSH,
            rule("tariff-email", Proto::Tcp, &[(25, 25)], ANY, WEB),
            rule("ua-provisioning", Proto::Tcp, &[(80, 80)], ANY, WEB),
            rule("tftp", Proto::Udp, &[(69, 69)], ANY, WEB),
            rule("admin-https", Proto::Tcp, &[(443, 443)], ANY, WEB),
            rule("self-care", Proto::Tcp, &[(8442, 8448)], ANY, WEB),
            rule("wimax-status", Proto::Tcp, &[(8449, 8449)], ANY, WEB),
            rule("web-signup", Proto::Tcp, &[(8600, 8601)], ANY, WEB),
            rule("callback", Proto::Tcp, &[(8901, 8901), (8903, 8904)], ANY, WEB),
            rule("webmail", Proto::Tcp, &[(8943, 8943)], ANY, WEB),
        ],
        notes: &["The private-interface corosync ports are in `portaswitch-cluster-private`."],
    },
    Role {
        name: "portaswitch-radius",
        source: PORTAONE,
        summary: "PortaSwitch RADIUS (billing) server, public interface",
        rules: &[
            PORTASWITCH_SSH,
            rule("radius", Proto::Udp, &[(1812, 1813)], CLUSTER, None),
            rule("diameter", Proto::Tcp, &[(3868, 3868)], CLUSTER, None),
            rule("sip-from-nodes", Proto::Udp, &[(5060, 5060)], CLUSTER, None),
        ],
        notes: &[
            "RADIUS, DIAMETER and SIP here serve PortaSIP nodes and the web server: put their addresses in the `cluster` set.",
        ],
    },
    Role {
        name: "portaswitch-sip-dispatcher",
        source: PORTAONE,
        summary: "PortaSIP dispatching SBC (public interface) and dispatching node virtual IP",
        rules: &[
            PORTASWITCH_SSH,
            sip("sip", Proto::Both, &[(5060, 5060)]),
            sip("sip-tcp", Proto::Tcp, &[(5061, 5061)]),
            sip_encrypted("sip-tls", Proto::Tcp, &[(5051, 5051)]),
            rule("limit-controller", Proto::Udp, &[(5070, 5070)], CLUSTER, None),
            rule("dual-version-self-care", Proto::Tcp, &[(9442, 9449)], ANY, WEB),
            rule("dual-version-signup", Proto::Tcp, &[(9600, 9601)], ANY, WEB),
            rule("smpp", Proto::Tcp, &[(2775, 2775)], ANY, WEB),
            rule("smtp-transport", Proto::Tcp, &[(8101, 8101)], ANY, WEB),
            rule("imap-transport", Proto::Tcp, &[(8081, 8081)], ANY, WEB),
            rule("imaps-transport", Proto::Tcp, &[(8091, 8091)], ANY, WEB),
        ],
        notes: &[
            "5051/tcp (SIP over TLS) is disabled by default in PortaSIP; it is listed because the table lists it.",
            "The Limit Controller (5070/udp) talks to SIP nodes: put them in the `cluster` set.",
        ],
    },
    Role {
        name: "portaswitch-sip-processing",
        source: PORTAONE,
        summary: "PortaSIP processing node, public interface: RTP proxying",
        rules: &[PORTASWITCH_SSH, rule("rtp-proxy", Proto::Udp, &[(35000, 65000)], ANY, MEDIA)],
        notes: &[
            "Linux's ephemeral ports (32768-60999) overlap 35000-65000/udp: replies to the host's own UDP queries on those ports are judged as media, not as return traffic.",
        ],
    },
    Role {
        name: "portaswitch-db",
        source: PORTAONE,
        summary: "PortaSwitch MySQL servers (main DB, replica DB)",
        rules: &[PORTASWITCH_SSH, rule("mysql", Proto::Tcp, &[(3306, 3307)], CLUSTER, None)],
        notes: &["Database clients are the billing, web and PortaSIP servers: the `cluster` set."],
    },
    Role {
        name: "portaswitch-oracle",
        source: PORTAONE,
        summary: "PortaSwitch Oracle DB servers",
        rules: &[
            PORTASWITCH_SSH,
            rule("oracle", Proto::Tcp, &[(9521, 9521)], CLUSTER, None),
            rule("enterprise-manager", Proto::Tcp, &[(1158, 1158)], ADMINS, WEB),
        ],
        notes: &[],
    },
    Role {
        name: "portaswitch-ocs",
        source: PORTAONE,
        summary: "PortaSwitch OCS server, public interface",
        rules: &[
            PORTASWITCH_SSH,
            rule("radius", Proto::Udp, &[(1812, 1813)], CLUSTER, None),
            rule("diameter", Proto::Tcp, &[(3868, 3868)], CLUSTER, None),
            rule("sip-from-nodes", Proto::Udp, &[(5060, 5060)], CLUSTER, None),
        ],
        notes: &["The Diameter cluster's corosync ports are in `portaswitch-cluster-private`."],
    },
    Role {
        name: "portaswitch-cqtracker",
        source: PORTAONE,
        summary: "PortaSwitch CQTracker node, private interface",
        rules: &[PORTASWITCH_SSH, rule("cqtracker", Proto::Tcp, &[(17160, 17162)], CLUSTER, None)],
        notes: &[],
    },
    Role {
        name: "portaswitch-cluster-private",
        source: PORTAONE,
        summary: "PortaSwitch private interface between cluster nodes (corosync, internal SSH)",
        rules: &[
            rule("ssh-internal", Proto::Tcp, &[(22, 22)], CLUSTER, None),
            rule("corosync-tcp", Proto::Tcp, &[(2224, 2224), (3121, 3121)], CLUSTER, None),
            rule("corosync-udp", Proto::Udp, &[(5404, 5405)], CLUSTER, None),
        ],
        notes: &[
            "PortaOne: do not firewall between cluster nodes. Put every node's private address in the `cluster` set (or on the allow list).",
        ],
    },
    Role {
        name: "asterisk-dialer",
        source: VICIDIAL,
        summary: "Vicidial/Asterisk dialer",
        rules: &[
            sip("sip", Proto::Udp, &[(5060, 5060)]),
            rule("rtp", Proto::Udp, &[(10000, 20000)], ANY, MEDIA),
            rule("http", Proto::Tcp, &[(80, 80)], ANY, WEB),
            rule("https", Proto::Tcp, &[(443, 443)], ANY, WEB),
            rule("wss", Proto::Tcp, &[(8089, 8089)], ANY, WEB),
        ],
        notes: &[
            "Vicidial: 5060/udp \"should primarily be limited to the networks, carriers, and agents that need it\": add a [[rule]] for 5060/udp with from = [\"carriers\", ...] to do so.",
            "RTP 10000-20000/udp is open to all: carriers send audio from outside their published ranges.",
            "WSS 8089/tcp is a control port: consider restricting it to your agents.",
            "No SSH port: add one (from = [\"admins\"]) or the lockout guard will refuse the policy.",
        ],
    },
    Role {
        name: "pbxtra",
        source: FONALITY,
        summary: "Fonality PBXtra, premise-based server (ports to forward inbound)",
        rules: &[
            sip("sip", Proto::Both, &[(5060, 5060)]),
            rule("rtp", Proto::Udp, &[(10000, 20000)], ANY, MEDIA),
            rule("hud", Proto::Tcp, &[(5222, 5222)], ANY, WEB),
            rule("iax2", Proto::Udp, &[(4569, 4569)], ANY, MEDIA),
            rule("hudmobile-audio", Proto::Both, &[(4000, 4031)], ANY, MEDIA),
        ],
        notes: &[
            "Fonality: never expose 21 (FTP), 22 (SSH), 69 (TFTP) or 80 (HTTP): they stay closed.",
            "Optional ports are separate roles: `pbxtra-chat` (5269/tcp) and `pbxtra-screen-sharing` (8997/tcp).",
            "443/tcp is not forwarded by default (only if HUDmobile cannot connect): add a [[rule]] if you need it.",
            "Fonality recommends whitelisting 5060: a [[rule]] with from = [\"carriers\", ...] does that.",
        ],
    },
    Role {
        name: "pbxtra-chat",
        source: FONALITY,
        summary: "Fonality PBXtra optional: HUD external chat contacts and linked servers",
        rules: &[rule("xmpp-federation", Proto::Tcp, &[(5269, 5269)], ANY, WEB)],
        notes: &[],
    },
    Role {
        name: "pbxtra-screen-sharing",
        source: FONALITY,
        summary: "Fonality PBXtra optional: HUD Desktop screen sharing (legacy)",
        rules: &[rule("hud-screen-sharing", Proto::Tcp, &[(8997, 8997)], ANY, WEB)],
        notes: &[],
    },
    Role {
        name: "portsip-pbx",
        source: PORTSIP,
        summary: "PortSIP PBX",
        rules: &[
            rule("web-portal-rest-api", Proto::Tcp, &[(8887, 8887)], ANY, WEB),
            rule("webrtc", Proto::Tcp, &[(10443, 10443)], ANY, WEB),
            sip("sip-udp", Proto::Udp, &[(5060, 5060)]),
            sip_encrypted("sip-tls", Proto::Tcp, &[(5061, 5061)]),
            sip("sip-tcp", Proto::Tcp, &[(5063, 5063)]),
            rule("rtp", Proto::Udp, &[(45000, 64999)], ANY, MEDIA),
            rule("ssh", Proto::Tcp, &[(22, 22)], ADMINS, None),
        ],
        notes: &[
            "IP phone provisioning over HTTP (8888/tcp) stays closed, as PortSIP recommends.",
            "PortSIP recommends moving SSH off 22: set options.ssh_port and a [[rule]] for it.",
        ],
    },
    Role {
        name: "portsip-sbc",
        source: PORTSIP,
        summary: "PortSIP SBC",
        rules: &[
            rule("sbc-web-portal", Proto::Tcp, &[(8883, 8883)], ANY, WEB),
            rule("wsi", Proto::Tcp, &[(8885, 8885)], ANY, WEB),
            sip_encrypted("sip-wss", Proto::Tcp, &[(5065, 5065)]),
            sip("sip-udp", Proto::Udp, &[(5066, 5066)]),
            sip("sip-tcp", Proto::Tcp, &[(5067, 5067)]),
            rule("rtp", Proto::Udp, &[(25000, 34999)], ANY, MEDIA),
        ],
        notes: &[
            "IP phone provisioning via the SBC over HTTP (8882/tcp) stays closed, like the PBX's 8888.",
            "No SSH port: add one (from = [\"admins\"]) or the lockout guard will refuse the policy.",
        ],
    },
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Role> {
    ROLES.iter().find(|r| r.name == name)
}

/// Human description for `voipwall roles NAME`.
pub fn describe(role: &Role) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{} — {}", role.name, role.summary);
    let _ = writeln!(out, "source: {}", role.source);
    let _ = writeln!(out, "\n{:<24} {:<8} {:<22} {:<12} limit", "rule", "proto", "ports", "from");
    for r in role.rules {
        let ports = r
            .ports
            .iter()
            .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
            .collect::<Vec<_>>()
            .join(",");
        let from = if r.from.is_empty() { "any".to_string() } else { r.from.join(",") };
        let sip = match r.sip {
            SipTransport::None => "",
            SipTransport::Plain => "  (SIP: inspected)",
            SipTransport::Encrypted => "  (SIP over TLS/WSS: packet checks only)",
        };
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<22} {:<12} {}{sip}",
            r.name,
            r.proto.as_str(),
            ports,
            from,
            r.limit.unwrap_or("-")
        );
    }
    let mut sets: Vec<&str> = role.rules.iter().flat_map(|r| r.from.iter().copied()).collect();
    sets.sort_unstable();
    sets.dedup();
    if !sets.is_empty() {
        let _ = writeln!(out, "\nsource sets you must fill in [sets] (until then these ports are closed to everyone):");
        for s in sets {
            let what = BUILTIN_SETS.iter().find(|(n, _)| *n == s).map_or("", |(_, w)| w);
            let _ = writeln!(out, "  {s:<10} {what}");
        }
    }
    if !role.notes.is_empty() {
        let _ = writeln!(out, "\nnotes:");
        for n in role.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(role: &str, proto: Proto, port: u16) -> Option<&'static RoleRule> {
        find(role)?.rules.iter().find(|r| {
            (r.proto == proto || r.proto == Proto::Both) && r.ports.iter().any(|&(a, b)| (a..=b).contains(&port))
        })
    }

    #[test]
    fn names_are_unique_and_every_documented_role_exists() {
        let mut names: Vec<_> = ROLES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "duplicate role name");
        for required in [
            "voip-edge",
            "portaswitch-config",
            "portaswitch-web",
            "portaswitch-radius",
            "portaswitch-sip-dispatcher",
            "portaswitch-sip-processing",
            "portaswitch-db",
            "portaswitch-oracle",
            "portaswitch-ocs",
            "portaswitch-cqtracker",
            "portaswitch-cluster-private",
            "asterisk-dialer",
            "pbxtra",
            "portsip-pbx",
            "portsip-sbc",
        ] {
            assert!(find(required).is_some(), "missing role {required}");
        }
    }

    #[test]
    fn every_role_cites_a_vendor_document_or_the_default() {
        let titles = [PORTAONE, VICIDIAL, FONALITY, PORTSIP];
        for r in ROLES {
            assert!(titles.contains(&r.source) || r.name == "voip-edge", "{} cites no vendor document", r.name);
            assert!(!r.source.contains('/') || r.source.contains("voipwall"), "{}: a title, not a path", r.name);
        }
    }

    #[test]
    fn default_policy_opens_the_sip_edge_ports() {
        use Proto::{Tcp, Udp};
        for (proto, port) in [
            (Tcp, 22),
            (Udp, 5060),
            (Tcp, 5060),
            (Tcp, 5061),
            (Udp, 10000),
            (Udp, 20000),
            (Udp, 35000),
            (Udp, 65000),
            (Tcp, 8442),
            (Tcp, 8449),
            (Tcp, 443),
        ] {
            assert!(open("voip-edge", proto, port).is_some(), "{port}/{proto:?}");
        }
        for (proto, port) in
            [(Udp, 22), (Udp, 5061), (Udp, 9999), (Udp, 20001), (Udp, 34999), (Tcp, 8441), (Tcp, 8450), (Tcp, 80)]
        {
            assert!(open("voip-edge", proto, port).is_none(), "{port}/{proto:?} must be closed");
        }
        assert_eq!(open("voip-edge", Udp, 5060).unwrap().limit, Some("signaling"));
        assert_eq!(open("voip-edge", Udp, 12000).unwrap().limit, Some("media"));
    }

    #[test]
    fn vendor_tables_are_encoded_exactly() {
        use Proto::{Tcp, Udp};
        // PortSIP PBX: provisioning 8888 closed, RTP 45000-64999.
        assert!(open("portsip-pbx", Tcp, 8888).is_none());
        assert!(open("portsip-pbx", Udp, 45000).is_some());
        assert!(open("portsip-pbx", Udp, 64999).is_some());
        assert!(open("portsip-pbx", Udp, 65000).is_none());
        assert_eq!(open("portsip-pbx", Tcp, 22).unwrap().from, &["admins"]);
        // PortSIP SBC: 5065-5067, RTP 25000-34999.
        assert!(open("portsip-sbc", Tcp, 5065).is_some());
        assert!(open("portsip-sbc", Udp, 5066).is_some());
        assert!(open("portsip-sbc", Tcp, 5067).is_some());
        assert!(open("portsip-sbc", Udp, 25000).is_some() && open("portsip-sbc", Udp, 34999).is_some());
        assert!(open("portsip-sbc", Udp, 35000).is_none());
        // Fonality: never 21, 22, 69, 80.
        for p in [21, 22, 69, 80] {
            assert!(open("pbxtra", Tcp, p).is_none() && open("pbxtra", Udp, p).is_none(), "pbxtra {p}");
        }
        assert!(open("pbxtra", Tcp, 4031).is_some() && open("pbxtra", Udp, 4000).is_some());
        assert!(open("pbxtra", Udp, 4569).is_some());
        // Vicidial.
        for (proto, port) in [(Udp, 5060), (Udp, 10000), (Udp, 20000), (Tcp, 80), (Tcp, 443), (Tcp, 8089)] {
            assert!(open("asterisk-dialer", proto, port).is_some(), "dialer {port}");
        }
        // PortaSwitch.
        assert_eq!(open("portaswitch-sip-processing", Udp, 35000).unwrap().limit, Some("media"));
        assert!(open("portaswitch-sip-processing", Udp, 65000).is_some());
        assert!(open("portaswitch-web", Tcp, 8902).is_none(), "8901 and 8903-8904 only");
        assert!(open("portaswitch-web", Tcp, 8904).is_some());
        assert_eq!(open("portaswitch-db", Tcp, 3307).unwrap().from, &["cluster"]);
        assert!(open("portaswitch-cluster-private", Udp, 5405).is_some());
        for r in ROLES.iter().filter(|r| r.name.starts_with("portaswitch-") && r.name != "portaswitch-cluster-private")
        {
            assert_eq!(
                open(r.name, Tcp, 22).map(|r| r.from),
                Some(&["admins"][..]),
                "{} lacks SSH from admins",
                r.name
            );
        }
    }

    #[test]
    fn sip_ports_get_signaling_and_rtp_gets_police_only_media() {
        let limits = builtin_limits();
        let media = &limits.iter().find(|(n, _)| *n == "media").unwrap().1;
        assert!(media.levels.iter().all(|l| l.ban.is_zero()), "media must be police-only");
        let sig = &limits.iter().find(|(n, _)| *n == "signaling").unwrap().1;
        assert_eq!((sig.levels[0].pps, sig.levels[1].pps), (500, 2000));
        for role in ROLES {
            for r in role.rules {
                if r.name.starts_with("sip") && !r.from.contains(&"cluster") {
                    assert_eq!(r.limit, Some("signaling"), "{}:{}", role.name, r.name);
                }
                if r.name.starts_with("rtp") {
                    assert_eq!(r.limit, Some("media"), "{}:{}", role.name, r.name);
                }
            }
        }
    }

    #[test]
    fn describe_names_the_sets_to_fill() {
        let text = describe(find("portsip-pbx").unwrap());
        assert!(text.contains("admins"), "{text}");
        assert!(text.contains("8888"), "{text}");
        assert!(text.contains("source: PortSIP PBX: Security Features"), "{text}");
    }
}
