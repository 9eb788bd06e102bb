//! Compile a validated [`Policy`] into the exact contents of the data plane's maps: the port
//! table of one generation, the rate classes, the source-set tries, the allow and block lists and
//! the per-generation config. Pure: no map is touched here, so every rule is unit tested.
//!
//! Precedence: a `[[rule]]` overrides the roles on every (protocol, port) it names; rules of the
//! same layer naming one port are merged (their sources unioned), and must agree on the rate
//! class.

use std::{collections::HashMap, net::IpAddr, ops::Range};

use common::{
    MAX_RULES, MAX_SETS, PINHOLE_LEARN, POLICY_DRY_RUN, PORT_OPEN, PORT_PINHOLE, PORT_PINHOLE_LIMIT, PORT_SIP,
    PROTO_SLOT_TCP, PROTO_SLOT_UDP, PolicyConfig, PortRule, RateClass, SIP_AUTH_WATCH, SIP_UA_BLOCK, rate::level,
    sip as ksip,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{Action, Budget, Level, Policy, RuleOrigin, SourceRef, media, sip::UaAutomaton};

/// Map contents for one policy generation.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// `POLICY[generation]`.
    pub config: PolicyConfig,
    /// `PORTS` for one generation: index `slot << 16 | port`.
    pub ports: Vec<PortRule>,
    /// `CLASSES` for one generation, index = class id.
    pub classes: Vec<RateClass>,
    /// `SETS_V4`/`SETS_V6` entries with their folded set masks.
    pub sets_v4: Vec<(Ipv4Net, u64)>,
    pub sets_v6: Vec<(Ipv6Net, u64)>,
    /// The policy's static allow and block lists.
    pub allow: Vec<IpNet>,
    pub block: Vec<IpNet>,
    /// Rule names by rule id (index 0 = no rule).
    pub rule_names: Vec<String>,
    /// Class names by class id (index 0 = no class); the SIP checks' reserved ids are named by
    /// [`CompiledPolicy::class_name`].
    pub class_names: Vec<String>,
    /// `SIP_UA` for one generation.
    pub ua: UaAutomaton,
    /// Set names by bit.
    pub set_names: Vec<String>,
    /// Who can reach the SSH port.
    pub ssh: SshReach,
    pub ssh_port: u16,
    /// Not errors, but worth telling (`policy check` prints them).
    pub warnings: Vec<String>,
}

/// Who can reach the SSH port under a policy (the lockout guard's question).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SshReach {
    /// Open to any source.
    Any,
    /// Open to these non-empty sets.
    Sets(Vec<String>),
    /// Closed by the port policy, but the allow list bypasses it.
    AllowListOnly,
    /// Nobody.
    Closed,
}

type CompileError = (Option<Range<usize>>, String, String);

#[derive(Clone, Copy)]
struct Acc {
    rule: usize,
    /// `None` = any source.
    sets: Option<u64>,
    class: u8,
    close: bool,
}

const SLOT_BITS: u32 = 16;

fn slot_name(slot: u32) -> &'static str {
    if slot == PROTO_SLOT_TCP { "tcp" } else { "udp" }
}

pub fn compile(policy: &Policy) -> Result<CompiledPolicy, Vec<CompileError>> {
    let mut errors: Vec<CompileError> = Vec::new();
    let rules = &policy.rules;
    if rules.len() >= MAX_RULES as usize {
        errors.push((
            None,
            format!("{} rules (with the roles' rules); at most {} fit", rules.len(), MAX_RULES - 1),
            "merge rules or drop roles".into(),
        ));
        return Err(errors);
    }

    // Rate classes: the echo class first, then every limit a rule uses, by name.
    let mut class_names = vec![String::new(), "icmp-echo".to_string()];
    let mut used: Vec<&str> =
        rules.iter().filter(|r| r.action == Action::Open).filter_map(|r| r.limit.as_deref()).collect();
    used.sort_unstable();
    used.dedup();
    class_names.extend(used.iter().map(|s| s.to_string()));
    let first_method_class = class_names.len();
    class_names.extend(policy.sip.methods.keys().map(|m| format!("sip-{m}")));
    if class_names.len() > ksip::FIRST_RESERVED_CLASS as usize {
        errors.push((
            None,
            format!(
                "{} rate classes in use (limits named by rules, ICMP echo, [sip.methods]); at most {}",
                class_names.len() - 1,
                ksip::FIRST_RESERVED_CLASS - 1
            ),
            "reuse limits across rules".into(),
        ));
        return Err(errors);
    }
    let class_id: HashMap<&str, u8> = class_names
        .iter()
        .enumerate()
        .skip(2)
        .take(first_method_class - 2)
        .map(|(i, n)| (n.as_str(), i as u8))
        .collect();
    let mut classes = vec![RateClass::default(); common::MAX_CLASSES as usize];
    classes[1] = rate_class(&[policy.options.icmp_echo], Some(policy.options.icmp_echo_unknown));
    for (name, &id) in &class_id {
        let limit = &policy.limits[*name];
        classes[id as usize] = rate_class(&limit.levels, limit.unknown);
    }
    let mut method_class = [0u8; 4];
    for (i, (method, limit)) in policy.sip.methods.iter().enumerate() {
        let id = first_method_class + i;
        classes[id] = rate_class(&limit.levels, limit.unknown);
        let m = super::sip::method_index(method).expect("validated");
        method_class[m] = id as u8;
    }

    // Source sets: one bit per named set used, plus one per rule with inline CIDRs.
    let mut set_names: Vec<String> = Vec::new();
    let mut set_entries: Vec<Vec<IpNet>> = Vec::new();
    let mut rule_sets: Vec<Option<u64>> = Vec::with_capacity(rules.len());
    for rule in rules {
        let Some(from) = rule.from.as_ref().filter(|_| rule.action == Action::Open) else {
            rule_sets.push(None);
            continue;
        };
        let mut mask = 0u64;
        let mut inline = Vec::new();
        for s in from {
            match s {
                SourceRef::Set(name) => {
                    let bit = match set_names.iter().position(|n| n == name) {
                        Some(b) => b,
                        None => {
                            set_names.push(name.clone());
                            set_entries.push(policy.sets.get(name).cloned().unwrap_or_default());
                            set_names.len() - 1
                        }
                    };
                    mask |= 1u64.checked_shl(bit as u32).unwrap_or(0);
                }
                SourceRef::Cidr(net) => inline.push(*net),
            }
        }
        if !inline.is_empty() {
            set_names.push(format!("{} (inline)", rule.name));
            set_entries.push(inline);
            mask |= 1u64.checked_shl((set_names.len() - 1) as u32).unwrap_or(0);
        }
        rule_sets.push(Some(mask));
    }
    // Every named set makes its members known peers (see `common::known::PROOF_SET`), also
    // those no rule restricts a port to: they get a bit too.
    for (name, nets) in &policy.sets {
        if !nets.is_empty() && !set_names.contains(name) {
            set_names.push(name.clone());
            set_entries.push(nets.clone());
        }
    }
    if set_names.len() > MAX_SETS as usize {
        errors.push((
            None,
            format!(
                "{} source sets in use (named sets plus rules with inline CIDRs); at most {}",
                set_names.len(),
                MAX_SETS
            ),
            "put inline CIDRs of several rules into one named set".into(),
        ));
        return Err(errors);
    }

    // Port table, two layers.
    let size = (2usize) << SLOT_BITS;
    let mut user: Vec<Option<Acc>> = vec![None; size];
    let mut role: Vec<Option<Acc>> = vec![None; size];
    let mut reported: Vec<(usize, usize)> = Vec::new();
    for (idx, rule) in rules.iter().enumerate() {
        let layer = if rule.origin == RuleOrigin::User { &mut user } else { &mut role };
        let class = rule.limit.as_deref().and_then(|l| class_id.get(l).copied()).unwrap_or(0);
        let close = rule.action == Action::Close;
        let mut slots = Vec::new();
        if rule.proto.has_tcp() {
            slots.push(PROTO_SLOT_TCP);
        }
        if rule.proto.has_udp() {
            slots.push(PROTO_SLOT_UDP);
        }
        for &slot in &slots {
            for &(lo, hi) in &rule.ports {
                for port in lo..=hi {
                    let i = ((slot as usize) << SLOT_BITS) | port as usize;
                    match &mut layer[i] {
                        entry @ None => *entry = Some(Acc { rule: idx, sets: rule_sets[idx], class, close }),
                        Some(acc) => {
                            let other = &rules[acc.rule];
                            if (acc.close != close || acc.class != class) && !reported.contains(&(acc.rule, idx)) {
                                reported.push((acc.rule, idx));
                                let what = if acc.close != close {
                                    format!(
                                        "rule `{}` opens {port}/{} and rule `{}` closes it",
                                        if acc.close { &rule.name } else { &other.name },
                                        slot_name(slot),
                                        if acc.close { &other.name } else { &rule.name }
                                    )
                                } else {
                                    format!(
                                        "conflicting rate classes on {port}/{}: rule `{}` says {} and rule `{}` says {}",
                                        slot_name(slot),
                                        other.name,
                                        other
                                            .limit
                                            .as_deref()
                                            .map_or("no limit".to_string(), |l| format!("limit `{l}`")),
                                        rule.name,
                                        rule.limit
                                            .as_deref()
                                            .map_or("no limit".to_string(), |l| format!("limit `{l}`")),
                                    )
                                };
                                let hint = if rule.origin == RuleOrigin::User {
                                    "give both rules the same `limit`, or split their ports".to_string()
                                } else {
                                    format!(
                                        "write a [[rule]] for {port}/{} to decide (a [[rule]] overrides roles)",
                                        slot_name(slot)
                                    )
                                };
                                let span = rule.span.clone().or_else(|| other.span.clone());
                                // A role rule's span is the role's entry in `roles`.
                                errors.push((span, what, hint));
                            }
                            acc.sets = match (acc.sets, rule_sets[idx]) {
                                (Some(a), Some(b)) => Some(a | b),
                                _ => None,
                            };
                        }
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // A rule's media mode: its own `media`, else `[media] mode` for the `media` class.
    let pinhole_flags = |idx: usize| -> u8 {
        let rule = &rules[idx];
        let default = if rule.limit.as_deref() == Some("media") { policy.media.mode } else { media::Mode::Open };
        if rule.media.unwrap_or(default) != media::Mode::Pinhole {
            return 0;
        }
        match rule.pinhole_full.unwrap_or(policy.media.full) {
            media::Full::Drop => PORT_PINHOLE,
            media::Full::Limit => PORT_PINHOLE | PORT_PINHOLE_LIMIT,
        }
    };
    let udp_start = (PROTO_SLOT_UDP as usize) << SLOT_BITS;
    let mut ports: Vec<PortRule> = user
        .iter()
        .zip(&role)
        .enumerate()
        .map(|(i, (u, r))| match u.or(*r) {
            Some(acc) if !acc.close => PortRule {
                rule: (acc.rule + 1) as u16,
                flags: PORT_OPEN | if i >= udp_start { pinhole_flags(acc.rule) } else { 0 },
                class: acc.class,
                _pad: 0,
                sets: acc.sets.unwrap_or(0),
            },
            _ => PortRule::default(),
        })
        .collect();
    // SIP ports: both protocols, where open (a closed port has nothing to inspect).
    let mut sip_closed = Vec::new();
    for &(lo, hi) in &policy.sip_ports {
        let mut any_open = false;
        for slot in [PROTO_SLOT_TCP, PROTO_SLOT_UDP] {
            for port in lo..=hi {
                let p = &mut ports[((slot as usize) << SLOT_BITS) | port as usize];
                if p.flags & PORT_OPEN != 0 {
                    if p.flags & PORT_PINHOLE != 0 {
                        let rule = &rules[p.rule as usize - 1];
                        errors.push((
                            rule.span.clone(),
                            format!("{port}/udp is a SIP port and rule `{}` puts it in pinhole mode", rule.name),
                            "leave the SIP ports out of the pinhole rule's ports".to_string(),
                        ));
                    }
                    p.flags |= PORT_SIP;
                    any_open = true;
                }
            }
        }
        if !any_open {
            sip_closed.push(if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") });
        }
    }
    if !errors.is_empty() {
        errors.truncate(1);
        return Err(errors);
    }
    let pinholes = ports.iter().any(|p| p.flags & PORT_PINHOLE != 0);
    let ua = match UaAutomaton::build(&policy.sip.ua_block) {
        Ok(a) => a,
        Err(e) => return Err(vec![(None, format!("sip.ua_block: {e}"), "drop or shorten patterns".into())]),
    };

    let (sets_v4, sets_v6) = fold_sets(&set_entries);

    let mut warnings = Vec::new();
    for (bit, name) in set_names.iter().enumerate() {
        if set_entries[bit].is_empty() {
            let users: Vec<&str> = rules
                .iter()
                .zip(&rule_sets)
                .filter(|(_, m)| m.is_some_and(|m| m & (1 << bit) != 0))
                .map(|(r, _)| r.name.as_str())
                .collect();
            warnings.push(format!(
                "set `{name}` is empty: the ports of {} are closed to every source until you fill [sets] {name} = [...]",
                users.join(", ")
            ));
        }
    }

    if !sip_closed.is_empty() {
        warnings
            .push(format!("sip.ports names {} which no rule opens: nothing to inspect there", sip_closed.join(", ")));
    }

    let ssh_port = policy.options.ssh_port;
    let ssh_entry = ports[((PROTO_SLOT_TCP as usize) << SLOT_BITS) | ssh_port as usize];
    let ssh = if ssh_entry.flags & PORT_OPEN != 0 && ssh_entry.sets == 0 {
        SshReach::Any
    } else {
        let reachable: Vec<String> = (0..set_names.len())
            .filter(|&b| {
                ssh_entry.flags & PORT_OPEN != 0 && ssh_entry.sets & (1 << b) != 0 && !set_entries[b].is_empty()
            })
            .map(|b| set_names[b].clone())
            .collect();
        if !reachable.is_empty() {
            SshReach::Sets(reachable)
        } else if !policy.allow.is_empty() {
            SshReach::AllowListOnly
        } else {
            SshReach::Closed
        }
    };

    let o = &policy.options;
    let config = PolicyConfig {
        flags: if o.dry_run { POLICY_DRY_RUN } else { 0 },
        ipv6_prefix: o.ipv6_prefix as u32,
        return_timeout_ns: o.return_timeout.as_nanos() as u64,
        frag_timeout_ns: o.fragment_timeout.as_nanos() as u64,
        echo_class: 1,
        sip_window: if policy.sip_ports.is_empty() { 0 } else { policy.sip.ua_window },
        sip_flags: if policy.sip.ua_block.is_empty() { 0 } else { SIP_UA_BLOCK }
            // Credentials are always followed: the digest proof of known peers needs them, the
            // bans only when their counts are set.
            | SIP_AUTH_WATCH,
        sip_method_class: method_class,
        sip_failed_auth: policy.sip.failed_auth.count,
        sip_unanswered: policy.sip.unanswered_challenges.count,
        sip_ua_ban_ns: policy.sip.ua_ban.as_nanos() as u64,
        sip_period_ns: policy.sip.detection_period.as_nanos() as u64,
        sip_failed_auth_ban_ns: policy.sip.failed_auth.ban.as_nanos() as u64,
        sip_unanswered_ban_ns: policy.sip.unanswered_challenges.ban.as_nanos() as u64,
        known_ttl_ns: o.known_ttl.as_nanos() as u64,
        capture_mask: policy.capture.as_ref().map_or(0, |c| c.mask()),
        pinhole_flags: if pinholes { PINHOLE_LEARN } else { 0 },
        capture: policy
            .capture
            .as_ref()
            .map_or_else(Default::default, |c| common::rate::level(c.pps as u64, c.pps as u64, 0)),
    };

    let mut rule_names = vec![String::new()];
    rule_names.extend(rules.iter().map(|r| r.name.clone()));

    Ok(CompiledPolicy {
        config,
        ports,
        classes,
        sets_v4,
        sets_v6,
        allow: policy.allow.clone(),
        block: policy.block.clone(),
        rule_names,
        class_names,
        ua,
        set_names,
        ssh,
        ssh_port,
        warnings,
    })
}

pub(crate) fn rate_class(levels: &[Level], unknown: Option<Budget>) -> RateClass {
    let mut class = RateClass::default();
    for (slot, l) in class.levels.iter_mut().zip(levels) {
        *slot = level(l.pps, l.burst, l.ban.as_nanos() as u64);
    }
    if let Some(b) = unknown {
        class.unknown = level(b.pps, b.burst, 0);
    }
    class
}

/// Set prefixes per family with the mask of every set holding them.
type FoldedSets = (Vec<(Ipv4Net, u64)>, Vec<(Ipv6Net, u64)>);

/// Give every set prefix the mask of all sets that contain it (its own bit plus the bits of
/// every covering prefix), so one longest-prefix lookup answers "which sets hold this source".
fn fold_sets(entries: &[Vec<IpNet>]) -> FoldedSets {
    let mut direct: HashMap<IpNet, u64> = HashMap::new();
    for (bit, nets) in entries.iter().enumerate() {
        for net in nets {
            *direct.entry(*net).or_default() |= 1 << bit;
        }
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (&net, &own) in &direct {
        let mut mask = own;
        for len in 0..net.prefix_len() {
            if let Ok(sup) = IpNet::new(net.addr(), len)
                && let Some(m) = direct.get(&sup.trunc())
            {
                mask |= m;
            }
        }
        match net {
            IpNet::V4(n) => v4.push((n, mask)),
            IpNet::V6(n) => v6.push((n, mask)),
        }
    }
    v4.sort();
    v6.sort();
    (v4, v6)
}

impl CompiledPolicy {
    /// The name of a class id as ban events and metrics show it (the SIP checks' reserved ids
    /// included).
    pub fn class_name(&self, id: u8) -> String {
        if let Some((_, name)) = ksip::CLASS_NAMES.iter().find(|(c, _)| *c == id) {
            return (*name).to_string();
        }
        self.class_names.get(id as usize).cloned().unwrap_or_else(|| format!("class{id}"))
    }

    /// The port rule for a protocol slot and port.
    pub fn port(&self, slot: u32, port: u16) -> PortRule {
        self.ports[((slot as usize) << SLOT_BITS) | port as usize]
    }

    /// Would a TCP connection from `addr` to the SSH port pass, given the allow and block lists
    /// in force (the policy's plus the manual ones)? Used to refuse changes that would cut the
    /// operator's own session.
    pub fn admits_ssh_from(&self, addr: IpAddr, allow: &[IpNet], block: &[IpNet]) -> bool {
        if allow.iter().any(|n| n.contains(&addr)) {
            return true;
        }
        if block.iter().any(|n| n.contains(&addr)) {
            return false;
        }
        let entry = self.port(PROTO_SLOT_TCP, self.ssh_port);
        if entry.flags & PORT_OPEN == 0 {
            return false;
        }
        if entry.sets == 0 {
            return true;
        }
        let mask = match addr {
            IpAddr::V4(a) => {
                self.sets_v4.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|e| e.1)
            }
            IpAddr::V6(a) => {
                self.sets_v6.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|e| e.1)
            }
        };
        mask.is_some_and(|m| m & entry.sets != 0)
    }
}
