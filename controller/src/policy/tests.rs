use std::{net::IpAddr, path::PathBuf};

use common::{PORT_OPEN, PROTO_SLOT_TCP, PROTO_SLOT_UDP};

use super::*;

#[track_caller]
fn ok(text: &str) -> (Policy, CompiledPolicy) {
    match parse("test.toml", text) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

#[track_caller]
fn err(text: &str) -> Vec<Diagnostic> {
    match parse("test.toml", text) {
        Ok(_) => panic!("expected an invalid policy:\n{text}"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/policies").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn default_policy_is_voip_edge() {
    let (p, c) = default_policy();
    assert_eq!(p.roles, vec!["voip-edge"]);
    assert_eq!(c.ssh, SshReach::Any);
    let sip = c.port(PROTO_SLOT_UDP, 5060);
    assert_eq!(sip.flags, PORT_OPEN | common::PORT_SIP);
    assert_eq!(c.class_names[sip.class as usize], "signaling");
    assert_eq!(c.port(PROTO_SLOT_UDP, 5061).flags, 0, "5061/udp closed");
    assert_eq!(c.port(PROTO_SLOT_TCP, 80).flags, 0, "80/tcp closed");
    assert_eq!(c.rule_names[sip.rule as usize], "voip-edge/sip");
}

#[test]
fn roles_absent_means_default_and_empty_means_none() {
    let (p, _) = ok("allow = []\n");
    assert_eq!(p.roles, vec!["voip-edge"]);
    let (p, c) = ok("roles = []\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\n");
    assert!(p.roles.is_empty());
    assert_eq!(c.port(PROTO_SLOT_UDP, 5060).flags, 0);
    assert_eq!(c.port(PROTO_SLOT_TCP, 22).flags, PORT_OPEN);
}

#[test]
fn the_readme_example_compiles() {
    let path = corpus("good").into_iter().find(|p| p.ends_with("readme-example.toml")).unwrap();
    let (p, c) = load(&path).unwrap();
    assert_eq!(p.roles, vec!["portaswitch-sip-processing", "portaswitch-web"]);
    // The user rule restricts 5060/udp and 10000-20000/udp to carriers + 192.0.2.7.
    let sip = c.port(PROTO_SLOT_UDP, 5060);
    assert_eq!(sip.flags, PORT_OPEN | common::PORT_SIP);
    assert_ne!(sip.sets, 0);
    assert_eq!(c.rule_names[sip.rule as usize], "sip-from-carriers");
    assert_eq!(
        c.port(PROTO_SLOT_UDP, 15000),
        common::PortRule { flags: PORT_OPEN, ..sip },
        "the same rule, not a SIP port"
    );
    // RTP of the processing role stays open to any.
    let rtp = c.port(PROTO_SLOT_UDP, 40000);
    assert_eq!((rtp.flags, rtp.sets), (PORT_OPEN, 0));
    assert_eq!(c.class_names[rtp.class as usize], "media");
    // Inline CIDR and the named set both admit.
    let carrier: IpAddr = "198.51.100.9".parse().unwrap();
    let inline: IpAddr = "192.0.2.7".parse().unwrap();
    let mask = |a: IpAddr| match a {
        IpAddr::V4(a) => c.sets_v4.iter().filter(|(n, _)| n.contains(&a)).map(|e| e.1).next().unwrap_or(0),
        IpAddr::V6(_) => 0,
    };
    assert_ne!(mask(carrier) & sip.sets, 0);
    assert_ne!(mask(inline) & sip.sets, 0);
    assert!(c.sets_v6.iter().any(|(n, _)| n.to_string() == "2001:db8:100::/48"));
    // SSH is from admins (empty) but the allow list bypasses.
    assert_eq!(c.ssh, SshReach::AllowListOnly);
    assert_eq!(c.allow.len(), 1);
    assert_eq!(c.block.len(), 1);
    assert!(c.warnings.iter().any(|w| w.contains("`admins` is empty")), "{:?}", c.warnings);
}

#[test]
fn every_broken_policy_is_rejected_naming_its_line() {
    let files = corpus("broken");
    assert!(files.len() >= 20, "the corpus needs at least 20 files, has {}", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let want_line: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-line: "))
            .unwrap_or_else(|| panic!("{}: no expect-line", path.display()))
            .trim()
            .parse()
            .unwrap();
        let want_msg = text.lines().find_map(|l| l.strip_prefix("# expect: ")).unwrap().trim();
        let name = path.display().to_string();
        let diags = match parse(&name, &text) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e.diagnostics().to_vec(),
        };
        let d = diags
            .iter()
            .find(|d| d.message.contains(want_msg))
            .unwrap_or_else(|| panic!("{name}: no diagnostic says `{want_msg}`; got {diags:#?}"));
        assert_eq!(d.line, want_line, "{name}: wrong line in {d}");
        assert_eq!(d.file, name);
        assert!(d.column >= 1);
        assert!(!d.hint.is_empty(), "{name}: no hint");
        assert!(d.to_string().starts_with(&format!("{name}:{want_line}:")), "{d}");
    }
}

#[test]
fn user_rules_override_roles_on_their_ports_only() {
    let (_, c) = ok(r#"
roles = ["voip-edge"]
[sets]
admins = ["192.0.2.0/24"]
[[rule]]
name = "ssh-admins"
proto = "tcp"
ports = ["22"]
from = ["admins"]
"#);
    let ssh = c.port(PROTO_SLOT_TCP, 22);
    assert_ne!(ssh.sets, 0);
    assert_eq!(c.rule_names[ssh.rule as usize], "ssh-admins");
    assert_eq!(c.ssh, SshReach::Sets(vec!["admins".into()]));
    // Other role ports untouched.
    assert_eq!(c.rule_names[c.port(PROTO_SLOT_UDP, 5060).rule as usize], "voip-edge/sip");
    assert!(c.admits_ssh_from("192.0.2.9".parse().unwrap(), &[], &[]));
    assert!(!c.admits_ssh_from("198.51.100.1".parse().unwrap(), &[], &[]));
    assert!(!c.admits_ssh_from("192.0.2.9".parse().unwrap(), &[], &["192.0.2.0/28".parse().unwrap()]));
    assert!(c.admits_ssh_from("198.51.100.1".parse().unwrap(), &["198.51.100.0/24".parse().unwrap()], &[]));
}

#[test]
fn close_action_closes_a_role_port() {
    let (_, c) = ok(r#"
[[rule]]
name = "no-self-care"
proto = "tcp"
ports = ["8442-8449"]
action = "close"
"#);
    assert_eq!(c.port(PROTO_SLOT_TCP, 8445).flags, 0);
    assert_eq!(c.port(PROTO_SLOT_TCP, 443).flags, PORT_OPEN);
}

#[test]
fn same_layer_rules_union_their_sources() {
    let (_, c) = ok(r#"
roles = []
[sets]
a = ["10.0.0.0/8"]
b = ["192.168.0.0/16"]
[[rule]]
name = "ssh"
proto = "tcp"
ports = ["22"]
[[rule]]
name = "x-a"
proto = "udp"
ports = ["6000"]
from = ["a"]
[[rule]]
name = "x-b"
proto = "udp"
ports = ["6000"]
from = ["b"]
[[rule]]
name = "y-any"
proto = "udp"
ports = ["6000-6001"]
"#);
    let p = c.port(PROTO_SLOT_UDP, 6000);
    assert_eq!((p.flags, p.sets), (PORT_OPEN, 0), "any absorbs the sets");
    assert_eq!(c.rule_names[p.rule as usize], "x-a", "first rule owns the counters");
}

#[test]
fn nested_set_prefixes_fold_their_masks() {
    let (_, c) = ok(r#"
roles = []
[sets]
wide = ["10.0.0.0/8"]
narrow = ["10.1.0.0/16"]
[[rule]]
name = "ssh"
proto = "tcp"
ports = ["22"]
[[rule]]
name = "w"
proto = "udp"
ports = ["7000"]
from = ["wide"]
[[rule]]
name = "n"
proto = "udp"
ports = ["7001"]
from = ["narrow"]
"#);
    let w = c.port(PROTO_SLOT_UDP, 7000).sets;
    let n = c.port(PROTO_SLOT_UDP, 7001).sets;
    let narrow_entry = c.sets_v4.iter().find(|(net, _)| net.to_string() == "10.1.0.0/16").unwrap().1;
    assert_eq!(narrow_entry & (w | n), w | n, "10.1/16 is in both sets");
    let wide_entry = c.sets_v4.iter().find(|(net, _)| net.to_string() == "10.0.0.0/8").unwrap().1;
    assert_eq!(wide_entry & n, 0, "10/8 is not in `narrow`");
}

#[test]
fn lockout_guard_sees_a_closed_ssh_port() {
    let (_, c) = ok("roles = [\"portsip-pbx\"]\n");
    assert_eq!(c.ssh, SshReach::Closed, "admins is empty and nothing is allowed");
    let (_, c) = ok("roles = [\"portsip-pbx\"]\n[options]\nssh_port = 10210\n");
    assert_eq!(c.ssh, SshReach::Closed);
    let (_, c) = ok("roles = [\"portsip-pbx\"]\n[sets]\nadmins = [\"192.0.2.1\"]\n");
    assert_eq!(c.ssh, SshReach::Sets(vec!["admins".into()]));
}

#[test]
fn limits_compile_to_gcra_levels() {
    let (_, c) = ok(r#"
[limit.signaling]
levels = [{ pps = 250, burst = 10, ban = "30s" }, { pps = 1000 }]
"#);
    let sip = c.port(PROTO_SLOT_UDP, 5060);
    let class = c.classes[sip.class as usize];
    assert_eq!(class.levels[0].emission_ns, 4_000_000);
    assert_eq!(class.levels[0].tolerance_ns, 9 * 4_000_000);
    assert_eq!(class.levels[0].ban_ns, 30_000_000_000);
    assert_eq!(class.levels[1].emission_ns, 1_000_000);
    assert_eq!(class.levels[1].tolerance_ns, 999 * 1_000_000, "burst defaults to pps");
    assert_eq!(class.levels[1].ban_ns, 0, "ban defaults to police-only");
    let echo = c.classes[c.config.echo_class as usize];
    assert_eq!(echo.levels[0].emission_ns, 100_000_000);
}

#[test]
fn options_reach_the_config() {
    let (_, c) =
        ok("[options]\nipv6_prefix = 56\ndry_run = true\nreturn_timeout = \"30s\"\nfragment_timeout = \"2s\"\n");
    assert_eq!(c.config.ipv6_prefix, 56);
    assert_eq!(c.config.flags, common::POLICY_DRY_RUN);
    assert_eq!(c.config.return_timeout_ns, 30_000_000_000);
    assert_eq!(c.config.frag_timeout_ns, 2_000_000_000);
}

#[test]
fn bare_addresses_are_single_hosts() {
    assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
    assert_eq!(parse_cidr("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
    let (msg, hint) = parse_cidr("10.1.2.3/8").unwrap_err();
    assert!(msg.contains("host bits"), "{msg}");
    assert!(hint.contains("10.0.0.0/8"), "{hint}");
}

#[test]
fn integer_ports_are_accepted_too() {
    let (_, c) = ok("roles = []\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22, \"2222-2223\"]\n");
    assert_eq!(c.port(PROTO_SLOT_TCP, 22).flags, PORT_OPEN);
    assert_eq!(c.port(PROTO_SLOT_TCP, 2223).flags, PORT_OPEN);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1h").unwrap().as_secs(), 3600);
    assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    assert!(parse_duration("soon").is_err());
}

#[test]
fn errors_collect_rather_than_stop_at_the_first() {
    let d = err("allow = [\"nope\"]\nblock = [\"alsonope\"]\n");
    assert_eq!(d.len(), 2, "{d:#?}");
    assert_eq!((d[0].line, d[1].line), (1, 2));
}

#[test]
fn sip_ports_default_to_the_roles_plaintext_sip_ports() {
    use common::PORT_SIP;
    let flagged = |c: &CompiledPolicy, slot, port| c.port(slot, port).flags & PORT_SIP != 0;
    let (p, c) = default_policy();
    assert_eq!(p.sip_ports, vec![(5060, 5060)]);
    assert_eq!(p.sip_encrypted_ports, vec![(5061, 5061)]);
    assert!(flagged(&c, PROTO_SLOT_UDP, 5060) && flagged(&c, PROTO_SLOT_TCP, 5060));
    assert!(!flagged(&c, PROTO_SLOT_TCP, 5061), "SIP over TLS is not inspected");
    assert!(!flagged(&c, PROTO_SLOT_UDP, 12000), "RTP is not SIP");
    assert_eq!(c.config.sip_window, common::sip::WINDOW_DEFAULT);
    assert_eq!(c.config.sip_flags, common::SIP_UA_BLOCK | common::SIP_AUTH_WATCH);
    assert_eq!(c.config.sip_failed_auth, 50, "PortSIP: 50 failed authentications");
    assert_eq!(c.config.sip_failed_auth_ban_ns, 3_600_000_000_000, "PortSIP: 1 hour");
    assert_eq!(c.config.sip_period_ns, 60_000_000_000);
    assert_eq!(c.config.sip_method_class, [0; 4], "no method limits by default");
    assert!(c.ua.matches(b"friendly-scanner") && !c.ua.matches(b"Yealink SIP-T46S"));

    let (p, c) =
        ok("roles = [\"portsip-sbc\", \"portsip-pbx\"]\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\n");
    assert_eq!(p.sip_ports, vec![(5060, 5060), (5063, 5063), (5066, 5066), (5067, 5067)]);
    assert_eq!(p.sip_encrypted_ports, vec![(5061, 5061), (5065, 5065)]);
    assert!(
        flagged(&c, PROTO_SLOT_UDP, 5066) && flagged(&c, PROTO_SLOT_TCP, 5067) && flagged(&c, PROTO_SLOT_TCP, 5063)
    );
    assert!(!flagged(&c, PROTO_SLOT_TCP, 5065), "WSS");
    assert!(!flagged(&c, PROTO_SLOT_TCP, 5066), "5066 is open for UDP only: a closed port is not flagged");

    // A [[rule]] opening 5060 makes it a SIP port even in a role without SIP.
    let (p, c) = ok(
        "roles = [\"portaswitch-sip-processing\"]\n[[rule]]\nname = \"sip-from-carriers\"\nproto = \"udp\"\nports = [\"5060\"]\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\n",
    );
    assert_eq!(p.sip_ports, vec![(5060, 5060)]);
    assert!(flagged(&c, PROTO_SLOT_UDP, 5060));
}

#[test]
fn the_sip_section_compiles_to_the_config() {
    let (p, c) = ok(r#"
roles = ["voip-edge"]
[sip]
ports = ["5080-5081"]
ua_block = ["^evil", "dialer"]
ua_window = 900
ua_ban = "0"
detection_period = "30s"
failed_auth = { count = 10, ban = "2h" }
unanswered_challenges = { count = 0 }
[sip.methods]
REGISTER = { pps = 20, burst = 40, ban = "10m" }
other = { levels = [{ pps = 100 }, { pps = 200, ban = "1h" }] }
"#);
    assert_eq!(p.sip_ports, vec![(5080, 5081)], "explicit ports replace the default");
    assert!(c.port(PROTO_SLOT_UDP, 5060).flags & common::PORT_SIP == 0);
    assert!(c.warnings.iter().any(|w| w.contains("sip.ports names 5080-5081 which no rule opens")), "{:?}", c.warnings);
    let cfg = c.config;
    assert_eq!(cfg.sip_window, 900);
    assert_eq!(cfg.sip_ua_ban_ns, 0);
    assert_eq!(cfg.sip_period_ns, 30_000_000_000);
    assert_eq!((cfg.sip_failed_auth, cfg.sip_failed_auth_ban_ns), (10, 7_200_000_000_000));
    assert_eq!(cfg.sip_unanswered, 0);
    assert_eq!(cfg.sip_flags, common::SIP_UA_BLOCK | common::SIP_AUTH_WATCH);
    let [reg, inv, opt, other] = cfg.sip_method_class;
    assert_eq!((inv, opt), (0, 0));
    assert_eq!(c.class_name(reg), "sip-REGISTER");
    assert_eq!(c.class_name(other), "sip-other");
    assert_eq!(
        c.classes[reg as usize],
        compile::rate_class(&[Level { pps: 20, burst: 40, ban: std::time::Duration::from_secs(600) }], None)
    );
    assert!(c.classes[other as usize].levels[1].ban_ns > 0);
    assert_eq!(c.class_name(common::sip::CLASS_FAILED_AUTH), "sip-failed-auth");
    assert!(c.ua.matches(b"EvilPhone") && !c.ua.matches(b"not evil") && c.ua.matches(b"acme dialer 2"));

    let (_, c) = ok(
        "roles = [\"voip-edge\"]\n[sip]\nua_block = []\nfailed_auth = { count = 0 }\nunanswered_challenges = { count = 0 }\n",
    );
    assert_eq!(
        c.config.sip_flags,
        common::SIP_AUTH_WATCH,
        "both checks off; the digest watch stays on: it proves phones known"
    );
    assert_eq!(c.config.sip_window, common::sip::WINDOW_DEFAULT, "method limits may still need the request line");
    let (_, c) = ok("roles = [\"portaswitch-db\"]\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\n");
    assert_eq!(c.config.sip_window, 0, "no SIP ports, no inspection");
}

#[test]
fn sip_section_errors_name_the_key() {
    let d = err("[sip]\nua_block = [\"x\", \"\"]\n");
    assert!(d[0].message.contains("is empty"), "{d:?}");
    let long: Vec<String> =
        (0..14).map(|i| format!("\"{i:02}{}\"", "abcdefghijklmnopqrstuvwxyzabcdefghijklmno")).collect();
    let d = err(&format!("[sip]\nua_block = [{}]\n", long.join(", ")));
    assert!(d[0].message.contains("automaton states"), "{d:?}");
    assert_eq!(d[0].line, 2);
    let d = err("[sip]\nfailed_auth = { count = 5, ban = \"0\" }\n");
    assert!(d[0].message.contains("must be longer than zero"), "{d:?}");
    let d = err("[sip]\nmethods.INVITE = { burst = 5 }\n");
    assert!(d[0].message.contains("either pps"), "{d:?}");
    let d = err("[sip]\nmethods.INVITE = { pps = 0 }\n");
    assert!(d[0].message.contains("pps = 0"), "{d:?}");
    let d = err("[sip]\nua_window = 10\n");
    assert!(d[0].message.contains("ua_window"), "{d:?}");
}

#[test]
fn unknown_budgets_default_per_builtin_class_and_parse() {
    let (p, c) = parse("t.toml", "roles = [\"voip-edge\"]\n").unwrap();
    assert_eq!(p.limits["signaling"].unknown, Some(Budget { pps: 2000, burst: 4000 }));
    assert_eq!(p.limits["media"].unknown, Some(Budget { pps: 20_000, burst: 40_000 }));
    assert_eq!(p.options.known_ttl, std::time::Duration::from_secs(7200));
    let sig = c.class_names.iter().position(|n| n == "signaling").unwrap();
    assert_eq!(c.classes[sig].unknown, common::rate::level(2000, 4000, 0));
    assert_eq!(c.config.known_ttl_ns, 7200 * 1_000_000_000);
    // A replaced built-in keeps its budget unless it sets one; "off" turns it off; a new class
    // has none.
    let text = r#"
[limit.signaling]
levels = [{ pps = 100 }]
[limit.media]
levels = [{ pps = 100 }]
unknown = "off"
[limit.mine]
levels = [{ pps = 5 }]
[limit.budgeted]
levels = [{ pps = 5 }]
unknown = { pps = 50 }
[options]
known_ttl = "30m"
"#;
    let (p, _) = parse("t.toml", text).unwrap();
    assert_eq!(p.limits["signaling"].unknown, Some(Budget { pps: 2000, burst: 4000 }));
    assert_eq!(p.limits["media"].unknown, None);
    assert_eq!(p.limits["mine"].unknown, None);
    assert_eq!(p.limits["budgeted"].unknown, Some(Budget { pps: 50, burst: 50 }));
    assert_eq!(p.options.known_ttl, std::time::Duration::from_secs(1800));
    // A built-in class may set only its budget, keeping its levels.
    let (p, _) = parse("t.toml", "[limit.signaling]\nunknown = { pps = 5, burst = 7 }\n").unwrap();
    assert_eq!(p.limits["signaling"].unknown, Some(Budget { pps: 5, burst: 7 }));
    assert_eq!(p.limits["signaling"].levels, crate::policy::roles::builtin_limits()[0].1.levels);
    for (bad, what) in [
        ("[limit.x]\nlevels = [{ pps = 5 }]\nunknown = \"never\"\n", "unknown = \"never\""),
        ("[limit.x]\nlevels = [{ pps = 5 }]\nunknown = { pps = 0 }\n", "pps = 0"),
        ("[limit.x]\nlevels = [{ pps = 5 }]\nunknown = { pps = 5, ban = \"1h\" }\n", "neither a budget"),
        ("[options]\nknown_ttl = \"0s\"\n", "known_ttl must be longer than zero"),
        ("[limit.x]\nunknown = { pps = 5 }\n", "limit `x` has no levels"),
    ] {
        let e = parse("t.toml", bad).unwrap_err().to_string();
        assert!(e.contains(what), "{bad:?}: {e}");
    }
}

#[test]
fn the_fleet_section_validates_like_every_other_key() {
    let dir = std::env::temp_dir().join(format!("vw-fleet-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("bouncer.key");
    let machine = dir.join("machine.yaml");
    std::fs::write(&key, "abc\n").unwrap();
    std::fs::write(&machine, "url: x\nlogin: a\npassword: b\n").unwrap();
    let text = format!(
        "[fleet.crowdsec]\nurl = \"http://10.0.0.5:8080/\"\napi_key_file = \"{}\"\nmachine_file = \"{}\"\norigins = [\"cscli\"]\n",
        key.display(),
        machine.display()
    );
    let (p, _) = ok(&text);
    let f = p.fleet.expect("fleet");
    assert_eq!(f.url, "http://10.0.0.5:8080", "the trailing slash goes");
    assert!(f.pull && f.push, "push defaults to on when a machine file is given");
    assert_eq!((f.interval.as_secs(), f.timeout.as_secs(), f.resync.as_secs()), (1, 5, 300));
    assert_eq!(f.push_queue, 10_000);
    let (p, _) = ok(&format!("[fleet.crowdsec]\nurl = \"https://lapi\"\napi_key_file = \"{}\"\n", key.display()));
    assert!(!p.fleet.unwrap().push, "no machine file: pull only");
    for (bad, what) in [
        ("[fleet.crowdsec]\nurl = \"ftp://x\"\npull = false\npush = false\n", "is not an http:// or https:// URL"),
        ("[fleet.crowdsec]\nurl = \"http://x\"\n", "has no api_key_file"),
        ("[fleet.crowdsec]\nurl = \"http://x\"\npull = false\npush = true\n", "has no machine_file"),
        ("[fleet.crowdsec]\nurl = \"http://x\"\npull = false\n", "neither pulls nor pushes"),
        ("[fleet.crowdsec]\nurl = \"http://x\"\napi_key_file = \"/nonexistent/key\"\n", "cannot read /nonexistent/key"),
        (
            "[fleet.crowdsec]\nurl = \"http://x\"\npull = false\npush = false\ninterval = \"1ms\"\n",
            "fleet.crowdsec.interval",
        ),
        ("[fleet.crowdsec]\nurl = \"http://x\"\npull = false\npush = false\nbogus = 1\n", "unknown field `bogus`"),
        ("[fleet]\n", "[fleet] without [fleet.crowdsec]"),
    ] {
        let e = parse("t.toml", bad).unwrap_err().to_string();
        assert!(e.contains(what), "{bad:?}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn capture_compiles_to_a_reason_mask_and_a_per_second_budget() {
    let (p, c) = ok(
        "[capture]\npps = 20\nreasons = [\"block_list\", \"sip_user_agent\"]\npcap = \"/var/lib/voipwall/captures\"\n",
    );
    let cap = p.capture.expect("[capture]");
    assert_eq!(cap.rotate_bytes, 16 << 20);
    assert_eq!(c.config.capture_mask, 1 << common::reason::BLOCK_LIST | 1 << common::reason::SIP_USER_AGENT);
    assert_eq!(c.config.capture.emission_ns, 50_000_000);
    let (_, c) = ok("[capture]\nhep = \"192.0.2.20:9060\"\n");
    let all = (0..common::reason::COUNT).filter(|&r| common::reason::is_drop(r)).fold(0, |m, r| m | 1 << r);
    assert_eq!(c.config.capture_mask, all, "every drop reason by default");
    assert_eq!(ok("").1.config.capture_mask, 0, "no [capture], no sampling");
}

#[test]
fn capture_errors_name_the_key_and_the_fix() {
    for (text, message) in [
        ("[capture]\nreasons = [\"port_open\"]\npcap = \"/x\"\n", "\"port_open\" is not a drop reason"),
        ("[capture]\npcap = \"captures\"\n", "is not an absolute path"),
        ("[capture]\nhep = \"collector\"\n", "is not ADDRESS:PORT"),
        ("[capture]\npps = 0\npcap = \"/x\"\n", "capture.pps = 0 is out of range"),
        ("[capture]\npps = 5\n", "[capture] writes nowhere"),
        ("[capture]\nsnap = 5\n", "unknown field"),
    ] {
        let d = err(text);
        assert!(d.iter().any(|d| d.message.contains(message)), "{message:?} in {d:?}");
    }
}

#[test]
fn media_pinhole_mode_marks_the_media_class_ports_and_rules_override_it() {
    use common::{PINHOLE_LEARN, PORT_PINHOLE, PORT_PINHOLE_LIMIT, PORT_SIP};
    let (_, open) = ok("roles = [\"voip-edge\"]\n");
    assert_eq!(open.port(PROTO_SLOT_UDP, 12000).flags & PORT_PINHOLE, 0, "open by default");
    assert_eq!(open.config.pinhole_flags, 0, "no signaling copied without a pinhole port");

    let (p, c) = ok(r#"
roles = ["voip-edge"]
[media]
mode = "pinhole"
full = "limit"
idle = "20s"
setup = "1m"
grace = "3s"
addresses = ["203.0.113.5"]

[[rule]]
name = "media-open"
proto = "udp"
ports = ["40000-40010"]
limit = "media"
media = "open"

[[rule]]
name = "media-strict"
proto = "udp"
ports = ["41000"]
limit = "media"
pinhole_full = "drop"

[[rule]]
name = "games"
proto = "udp"
ports = ["42000"]
"#);
    assert_eq!(p.media.idle.as_secs(), 20);
    assert_eq!(p.media.setup.as_secs(), 60);
    assert_eq!(p.media.grace.as_secs(), 3);
    assert_eq!(p.media.addresses, vec!["203.0.113.5".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.config.pinhole_flags, PINHOLE_LEARN);
    let flags = |port| c.port(PROTO_SLOT_UDP, port).flags;
    assert_eq!(flags(12000), PORT_OPEN | PORT_PINHOLE | PORT_PINHOLE_LIMIT, "role RTP, [media] full");
    assert_eq!(flags(36000), PORT_OPEN | PORT_PINHOLE | PORT_PINHOLE_LIMIT, "second RTP range");
    assert_eq!(flags(40005), PORT_OPEN, "a rule's media = \"open\" wins");
    assert_eq!(flags(41000), PORT_OPEN | PORT_PINHOLE, "a rule's pinhole_full wins");
    assert_eq!(flags(42000), PORT_OPEN, "other classes stay open");
    assert_eq!(flags(5060), PORT_OPEN | PORT_SIP, "SIP is never in pinhole mode");
    assert_eq!(c.port(PROTO_SLOT_TCP, 12000).flags & PORT_PINHOLE, 0);
}
