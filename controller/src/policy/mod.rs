//! The policy file: parse (TOML, serde, `deny_unknown_fields`), validate (every error names file,
//! line, column and what to write instead), then compile to map contents ([`compile`]).
//!
//! The keys of the README's example (and every key documented there) are a user-facing contract;
//! more keys may be added, none renamed. Defaults are documented where they are defined, on [`Options`] and
//! [`Capacity`].

pub mod capture;
pub mod compile;
pub mod fleet;
pub mod media;
pub mod roles;
pub mod sip;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use self::compile::{CompiledPolicy, SshReach};

/// The protocol(s) a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// `"tcp+udp"`.
    #[serde(rename = "tcp+udp")]
    Both,
}

impl Proto {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Both => "tcp+udp",
        }
    }

    pub const fn has_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Both)
    }

    pub const fn has_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Both)
    }
}

/// One level of a rate class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Level {
    /// Sustained packets per second from one source.
    pub pps: u64,
    /// Packets accepted back to back. Default: `pps` (one second's worth).
    pub burst: u64,
    /// Ban time when exceeded; zero = police only (drop the excess). Default: zero.
    #[serde(with = "humantime_serde_secs")]
    pub ban: Duration,
}

/// A rate class: one or two per-source levels (PortSIP's level 1 and level 2), and the budget
/// all unknown sources share (`unknown`; `None`: unknown sources are not budgeted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub levels: Vec<Level>,
    pub unknown: Option<Budget>,
}

/// `unknown = { pps, burst }`: the packets per second all unknown sources of a class may send
/// together, and how many back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub pps: u64,
    pub burst: u64,
}

/// Where a rule comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOrigin {
    /// A `[[rule]]` of the policy file: it overrides presets on the ports it names.
    User,
    /// A built-in role.
    Role(String),
}

/// Who may reach a rule's ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRef {
    Set(String),
    Cidr(IpNet),
}

/// What a rule does to its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Open (the default).
    Open,
    /// Close ports a role opened (`action = "close"`).
    Close,
}

/// A validated port rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Counter label: the `name` of a `[[rule]]`, `ROLE/RULE` for presets.
    pub name: String,
    pub origin: RuleOrigin,
    pub proto: Proto,
    /// Inclusive ranges.
    pub ports: Vec<(u16, u16)>,
    /// `None` = any source.
    pub from: Option<Vec<SourceRef>>,
    pub limit: Option<String>,
    pub action: Action,
    /// `media = "open" | "pinhole"`; `None`: `[media] mode` for rules of the `media` class, open
    /// for the others.
    pub media: Option<media::Mode>,
    /// `pinhole_full = "drop" | "limit"`; `None`: `[media] full`.
    pub pinhole_full: Option<media::Full>,
    /// Byte span in the policy file, for diagnostics.
    #[serde(skip)]
    pub span: Option<Range<usize>>,
}

/// `[options]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Options {
    /// IPv6 sources are rate limited and banned per prefix of this length. Default 64: one
    /// subscriber or attacker owns a whole /64.
    pub ipv6_prefix: u8,
    /// Count what would be dropped but drop nothing. Default false.
    pub dry_run: bool,
    /// The SSH port the lockout guard protects. Default 22.
    pub ssh_port: u16,
    /// How long a flow the host opened accepts replies after its last packet. Default 120 s.
    #[serde(with = "humantime_serde_secs")]
    pub return_timeout: Duration,
    /// How long a first fragment's verdict is kept for the rest of its datagram. Default 10 s.
    #[serde(with = "humantime_serde_secs")]
    pub fragment_timeout: Duration,
    /// Per-source limit of ICMP/ICMPv6 echo requests. Default 10/s, burst 20, police only.
    pub icmp_echo: Level,
    /// The budget all unknown sources' echo requests share. Default 100/s, burst 200: pings
    /// from monitoring and users fit; a random-source ping flood does not get past it.
    pub icmp_echo_unknown: Budget,
    /// How long a known peer stays known after its last packet. Default 2 h: longer than the
    /// registration interval of nearly every phone (Expires 3600 s by default in Asterisk,
    /// Kamailio and most handsets), and every packet of the peer refreshes it, so a registered
    /// phone never drops out.
    #[serde(with = "humantime_serde_secs")]
    pub known_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ipv6_prefix: 64,
            dry_run: false,
            ssh_port: 22,
            return_timeout: Duration::from_secs(120),
            fragment_timeout: Duration::from_secs(10),
            icmp_echo: Level { pps: 10, burst: 20, ban: Duration::ZERO },
            icmp_echo_unknown: Budget { pps: 100, burst: 200 },
            known_ttl: Duration::from_secs(2 * 3600),
        }
    }
}

/// `[capacity]`: map sizes, applied when the maps are created (first start on an interface,
/// not when a restarted daemon adopts pinned maps). Defaults in `common::capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub allow: u32,
    pub block_v4: u32,
    pub block_v6: u32,
    pub sets: u32,
    pub bans: u32,
    pub rates: u32,
    pub flows: u32,
    pub frags: u32,
    pub sip_peers: u32,
    pub known: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use common::capacity as c;
        Self {
            allow: c::ALLOW,
            block_v4: c::BLOCK_V4,
            block_v6: c::BLOCK_V6,
            sets: c::SETS,
            bans: c::BANS,
            rates: c::RATES,
            flows: c::FLOWS,
            frags: c::FRAGS,
            sip_peers: c::SIP_PEERS,
            known: c::KNOWN,
        }
    }
}

/// A validated policy.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    /// File path, or `<built-in>` for the embedded default.
    pub path: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub roles: Vec<String>,
    pub allow: Vec<IpNet>,
    pub block: Vec<IpNet>,
    /// `[[rule]]`s first, then the roles' rules in role order.
    pub rules: Vec<Rule>,
    /// Every set a rule may name: the built-in ones (possibly empty) and `[sets]`.
    pub sets: BTreeMap<String, Vec<IpNet>>,
    /// Built-in rate classes, replaced or extended by `[limit.NAME]`.
    pub limits: BTreeMap<String, Limit>,
    pub options: Options,
    pub capacity: Capacity,
    /// `[sip]`.
    pub sip: sip::Sip,
    /// Ports the SIP checks inspect (both protocols): `[sip] ports`, or the plaintext SIP ports
    /// of the roles plus 5060 when a rule opens it.
    pub sip_ports: Vec<(u16, u16)>,
    /// The roles' SIP-over-TLS/WSS ports (reported: their content cannot be inspected).
    pub sip_encrypted_ports: Vec<(u16, u16)>,
    /// `[fleet.crowdsec]`.
    pub fleet: Option<fleet::Crowdsec>,
    /// `[capture]`.
    pub capture: Option<capture::Capture>,
    /// `[media]`.
    pub media: media::Media,
    /// The file's text, for `policy show`.
    #[serde(skip)]
    pub text: String,
}

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// What to write instead.
    pub hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: error: {}\n  help: {}", self.file, self.line, self.column, self.message, self.hint)
    }
}

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn render(diags: &[Diagnostic]) -> String {
    let mut s = diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    s.push_str(&format!(
        "\n{} error{} in policy; nothing was applied",
        diags.len(),
        if diags.len() == 1 { "" } else { "s" }
    ));
    s
}

impl PolicyError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Self::Invalid(d) => d,
            Self::Read { .. } => &[],
        }
    }
}

/// The embedded default: the `voip-edge` role and nothing else.
pub const DEFAULT_POLICY: &str = "# voipwall embedded default policy\nroles = [\"voip-edge\"]\n";

/// Read and validate a policy file.
pub fn load(path: &Path) -> Result<(Policy, CompiledPolicy), PolicyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
    parse(&path.display().to_string(), &text)
}

/// The embedded default policy.
pub fn default_policy() -> (Policy, CompiledPolicy) {
    parse("<built-in>", DEFAULT_POLICY).expect("the embedded default policy is valid")
}

/// Validate and compile policy text; `file` names it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<(Policy, CompiledPolicy), PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        let hint = toml_hint(&message);
        PolicyError::Invalid(vec![diag_at(file, text, span.start, message, hint)])
    })?;
    let mut v = Validator { file, text, diags: Vec::new() };
    let policy = v.policy(raw);
    if !v.diags.is_empty() {
        return Err(PolicyError::Invalid(v.diags));
    }
    let compiled = compile::compile(&policy).map_err(|errs| {
        PolicyError::Invalid(
            errs.into_iter()
                .map(|(span, message, hint)| diag_at(file, text, span.map_or(0, |s| s.start), message, hint))
                .collect(),
        )
    })?;
    Ok((policy, compiled))
}

fn toml_hint(message: &str) -> String {
    if message.starts_with("unknown field") {
        "remove or rename the key; the valid keys are listed above".into()
    } else if message.contains("missing field") {
        "add the missing key".into()
    } else if message.contains("invalid type") {
        "use the type shown: strings in quotes, numbers bare, lists in [ ]".into()
    } else {
        "fix the TOML syntax at this position (see https://toml.io)".into()
    }
}

fn diag_at(file: &str, text: &str, offset: usize, message: String, hint: String) -> Diagnostic {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Diagnostic { file: file.to_string(), line, column, message, hint }
}

// ---- raw serde model -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    roles: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    sets: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    limit: BTreeMap<String, Spanned<RawLimit>>,
    #[serde(default)]
    options: Option<Spanned<RawOptions>>,
    #[serde(default)]
    capacity: Option<Spanned<RawCapacity>>,
    #[serde(default)]
    sip: Option<Spanned<RawSip>>,
    #[serde(default)]
    fleet: Option<Spanned<RawFleet>>,
    #[serde(default)]
    capture: Option<Spanned<RawCapture>>,
    #[serde(default)]
    media: Option<Spanned<RawMedia>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    mode: Option<Spanned<String>>,
    full: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    setup: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
    addresses: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    pps: Option<Spanned<i64>>,
    reasons: Option<Vec<Spanned<String>>>,
    pcap: Option<Spanned<String>>,
    rotate_mb: Option<Spanned<i64>>,
    keep: Option<Spanned<i64>>,
    hep: Option<Spanned<String>>,
    hep_id: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    crowdsec: Option<Spanned<RawCrowdsec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCrowdsec {
    url: Spanned<String>,
    api_key_file: Option<Spanned<String>>,
    machine_file: Option<Spanned<String>>,
    pull: Option<bool>,
    push: Option<bool>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    resync: Option<Spanned<String>>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    scenarios: Vec<String>,
    ca_file: Option<Spanned<String>>,
    insecure_skip_verify: Option<bool>,
    push_queue: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    ua_block: Option<Spanned<Vec<Spanned<String>>>>,
    ua_window: Option<Spanned<i64>>,
    ua_ban: Option<Spanned<String>>,
    detection_period: Option<Spanned<String>>,
    failed_auth: Option<Spanned<RawThreshold>>,
    unanswered_challenges: Option<Spanned<RawThreshold>>,
    #[serde(default)]
    methods: BTreeMap<String, Spanned<RawMethodLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThreshold {
    count: Spanned<i64>,
    ban: Option<Spanned<String>>,
}

/// `methods.REGISTER = { pps = 20, burst = 40, ban = "10m" }` (one level), or
/// `{ levels = [...] }` like a `[limit.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethodLimit {
    levels: Option<Spanned<Vec<Spanned<RawLevel>>>>,
    pps: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    ban: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    proto: Spanned<String>,
    ports: Spanned<Vec<Spanned<RawPort>>>,
    from: Option<Spanned<Vec<Spanned<String>>>>,
    limit: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    media: Option<Spanned<String>>,
    pinhole_full: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    /// Absent: a built-in class keeps its levels (to set only its `unknown` budget).
    levels: Option<Spanned<Vec<Spanned<RawLevel>>>>,
    /// `{ pps, burst }`, or "off" (read by hand: serde's untagged enums lose spans).
    unknown: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgetLevel {
    pps: Spanned<i64>,
    burst: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    pps: Spanned<i64>,
    burst: Option<Spanned<i64>>,
    ban: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    ipv6_prefix: Option<Spanned<i64>>,
    dry_run: Option<bool>,
    ssh_port: Option<Spanned<i64>>,
    return_timeout: Option<Spanned<String>>,
    fragment_timeout: Option<Spanned<String>>,
    icmp_echo: Option<Spanned<RawLevel>>,
    icmp_echo_unknown: Option<Spanned<RawBudgetLevel>>,
    known_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    allow: Option<Spanned<i64>>,
    block_v4: Option<Spanned<i64>>,
    block_v6: Option<Spanned<i64>>,
    sets: Option<Spanned<i64>>,
    bans: Option<Spanned<i64>>,
    rates: Option<Spanned<i64>>,
    flows: Option<Spanned<i64>>,
    frags: Option<Spanned<i64>>,
    sip_peers: Option<Spanned<i64>>,
    known: Option<Spanned<i64>>,
}

// ---- validation ----------------------------------------------------------------------------

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let d = diag_at(self.file, self.text, span.start, message.into(), hint.into());
        self.diags.push(d);
    }

    fn policy(&mut self, raw: RawPolicy) -> Policy {
        // Role names with the span that named them (none for the implicit default), so that a
        // conflict between presets points at the `roles` line.
        let roles: Vec<(String, Option<Range<usize>>)> = match raw.roles {
            None => vec![("voip-edge".to_string(), None)],
            Some(list) => {
                let mut out: Vec<(String, Option<Range<usize>>)> = Vec::new();
                for r in list {
                    let span = r.span();
                    let name = r.into_inner();
                    if roles::find(&name).is_none() {
                        let names = roles::ROLES.iter().map(|r| r.name).collect::<Vec<_>>().join(", ");
                        self.error(span, format!("unknown role `{name}`"), format!("write one of: {names}"));
                    } else if out.iter().any(|(n, _)| *n == name) {
                        self.error(span, format!("role `{name}` is listed twice"), "list each role once");
                    } else {
                        out.push((name, Some(span)));
                    }
                }
                out
            }
        };
        let allow = self.cidrs(raw.allow, "allow");
        let block = self.cidrs(raw.block, "block");

        let mut sets: BTreeMap<String, Vec<IpNet>> =
            roles::BUILTIN_SETS.iter().map(|(n, _)| (n.to_string(), Vec::new())).collect();
        for (name, list) in raw.sets {
            let span = list.span();
            if !valid_name(&name) {
                self.error(
                    span.clone(),
                    format!("set name `{name}` is not a plain name"),
                    "use letters, digits, '-' and '_'",
                );
            }
            let nets = self.cidrs(list.into_inner(), &format!("sets.{name}"));
            sets.insert(name, nets);
        }

        let mut limits: BTreeMap<String, Limit> =
            roles::builtin_limits().into_iter().map(|(n, l)| (n.to_string(), l)).collect();
        for (name, raw_limit) in raw.limit {
            let span = raw_limit.span();
            if !valid_name(&name) {
                self.error(
                    span.clone(),
                    format!("limit name `{name}` is not a plain name"),
                    "use letters, digits, '-' and '_'",
                );
            }
            let builtin = limits.get(&name).cloned();
            if let Some(mut limit) = self.limit(&name, raw_limit.into_inner(), span, builtin.as_ref()) {
                if limit.unknown.is_some_and(|b| b.pps == 0) {
                    // No `unknown` key: a built-in class keeps its budget, others have none.
                    limit.unknown = limits.get(&name).and_then(|l| l.unknown);
                }
                limits.insert(name, limit);
            }
        }

        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for raw_rule in raw.rule {
            let span = raw_rule.span();
            if let Some(rule) = self.rule(raw_rule.into_inner(), span, &sets, &limits) {
                if !names.insert(rule.name.clone()) {
                    self.error(
                        rule.span.clone().unwrap_or(0..0),
                        format!("rule name `{}` is used twice", rule.name),
                        "give every [[rule]] its own name",
                    );
                }
                rules.push(rule);
            }
        }
        for (role_name, role_span) in &roles {
            let role = roles::find(role_name).expect("validated above");
            for r in role.rules {
                rules.push(Rule {
                    name: format!("{}/{}", role.name, r.name),
                    origin: RuleOrigin::Role(role.name.to_string()),
                    proto: r.proto,
                    ports: r.ports.to_vec(),
                    from: if r.from.is_empty() {
                        None
                    } else {
                        Some(r.from.iter().map(|s| SourceRef::Set(s.to_string())).collect())
                    },
                    limit: r.limit.map(str::to_string),
                    action: Action::Open,
                    media: None,
                    pinhole_full: None,
                    span: role_span.clone(),
                });
            }
        }

        let options = match raw.options {
            Some(o) => self.options(o.into_inner()),
            None => Options::default(),
        };
        let capacity = match raw.capacity {
            Some(c) => self.capacity(c.into_inner()),
            None => Capacity::default(),
        };
        let sip = match raw.sip {
            Some(s) => self.sip(s.into_inner()),
            None => sip::Sip::default(),
        };
        let fleet = raw.fleet.and_then(|f| {
            let span = f.span();
            match f.into_inner().crowdsec {
                Some(c) => {
                    let span = c.span();
                    self.crowdsec(c.into_inner(), span)
                }
                None => {
                    self.error(
                        span,
                        "[fleet] without [fleet.crowdsec]",
                        "add a [fleet.crowdsec] table with url and api_key_file",
                    );
                    None
                }
            }
        });
        let capture = raw.capture.and_then(|c| {
            let span = c.span();
            self.capture(c.into_inner(), span)
        });
        let media = match raw.media {
            Some(m) => self.media(m.into_inner()),
            None => media::Media::default(),
        };
        let mut sip_ports = Vec::new();
        let mut sip_encrypted_ports = Vec::new();
        for (role_name, _) in &roles {
            for r in roles::find(role_name).expect("validated above").rules {
                match r.sip {
                    roles::SipTransport::Plain => sip_ports.extend_from_slice(r.ports),
                    roles::SipTransport::Encrypted => sip_encrypted_ports.extend_from_slice(r.ports),
                    roles::SipTransport::None => {}
                }
            }
        }
        // 5060 is SIP's registered port (RFC 3261 18.1): plaintext SIP wherever a rule opens it.
        if rules.iter().any(|r| r.action == Action::Open && r.ports.iter().any(|&(a, b)| (a..=b).contains(&5060))) {
            sip_ports.push((5060, 5060));
        }
        if let Some(p) = &sip.ports {
            sip_ports = p.clone();
        }
        for list in [&mut sip_ports, &mut sip_encrypted_ports] {
            list.sort_unstable();
            list.dedup();
        }

        Policy {
            path: self.file.to_string(),
            sha256: hex(&Sha256::digest(self.text.as_bytes())),
            roles: roles.into_iter().map(|(n, _)| n).collect(),
            allow,
            block,
            rules,
            sets,
            limits,
            options,
            capacity,
            sip,
            sip_ports,
            sip_encrypted_ports,
            media,
            fleet,
            capture,
            text: self.text.to_string(),
        }
    }

    fn capture(&mut self, raw: RawCapture, span: Range<usize>) -> Option<capture::Capture> {
        let before = self.diags.len();
        let mut int = |v: Option<Spanned<i64>>, key: &str, range: std::ops::RangeInclusive<i64>, default: i64| match v {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.error(
                    v.span(),
                    format!("capture.{key} = {} is out of range", v.get_ref()),
                    format!("write a whole number from {} to {}", range.start(), range.end()),
                );
                default
            }
        };
        let pps = int(raw.pps, "pps", 1..=10_000, 10) as u32;
        let rotate_mb = int(raw.rotate_mb, "rotate_mb", 1..=4096, 16) as u64;
        let keep = int(raw.keep, "keep", 1..=1000, 8) as u32;
        let hep_id = int(raw.hep_id, "hep_id", 0..=u32::MAX as i64, 2001) as u32;
        let drops: Vec<u32> = (0..common::reason::COUNT).filter(|&r| common::reason::is_drop(r)).collect();
        let reasons = match raw.reasons {
            None => drops.clone(),
            Some(names) => {
                let mut out = Vec::new();
                for n in names {
                    match drops.iter().find(|&&r| common::reason::NAMES[r as usize] == n.get_ref()) {
                        Some(&r) => out.push(r),
                        None => self.error(
                            n.span(),
                            format!("capture.reasons: {:?} is not a drop reason", n.get_ref()),
                            format!(
                                "use one of {}",
                                drops.iter().map(|&r| common::reason::NAMES[r as usize]).collect::<Vec<_>>().join(", ")
                            ),
                        ),
                    }
                }
                out
            }
        };
        let pcap = raw.pcap.and_then(|p| {
            let path = PathBuf::from(p.get_ref());
            if path.is_absolute() {
                Some(path)
            } else {
                self.error(
                    p.span(),
                    format!("capture.pcap = {:?} is not an absolute path", p.get_ref()),
                    "name the folder the pcapng files go to, e.g. pcap = \"/var/lib/voipwall/captures\"",
                );
                None
            }
        });
        let hep = raw.hep.and_then(|h| match h.get_ref().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    h.span(),
                    format!("capture.hep = {:?} is not ADDRESS:PORT", h.get_ref()),
                    "write the collector's UDP address, e.g. hep = \"192.0.2.20:9060\"",
                );
                None
            }
        });
        if pcap.is_none() && hep.is_none() && self.diags.len() == before {
            self.error(span, "[capture] writes nowhere", "add pcap = \"/folder\" and/or hep = \"ADDRESS:PORT\"");
        }
        (self.diags.len() == before).then_some(capture::Capture {
            pps,
            reasons,
            pcap,
            rotate_bytes: rotate_mb << 20,
            keep,
            hep,
            hep_id,
        })
    }

    fn crowdsec(&mut self, raw: RawCrowdsec, span: Range<usize>) -> Option<fleet::Crowdsec> {
        let before = self.diags.len();
        let url = raw.url.get_ref().trim().trim_end_matches('/').to_string();
        let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
            self.error(
                raw.url.span(),
                format!("fleet.crowdsec.url = {:?} is not an http:// or https:// URL", raw.url.get_ref()),
                "write the LAPI's address, e.g. url = \"http://10.0.0.5:8080\"",
            );
        }
        let mut file = |v: Option<Spanned<String>>, key: &str, what: &str| -> Option<PathBuf> {
            let v = v?;
            let path = PathBuf::from(v.get_ref());
            if let Err(e) = std::fs::metadata(&path) {
                self.error(v.span(), format!("fleet.crowdsec.{key}: cannot read {}: {e}", path.display()), what);
            }
            Some(path)
        };
        let api_key_file =
            file(raw.api_key_file, "api_key_file", "write the key `cscli bouncers add NAME` printed into this file");
        let machine_file =
            file(raw.machine_file, "machine_file", "create it with `cscli machines add NAME --password P -f FILE`");
        let ca_file = file(raw.ca_file, "ca_file", "the PEM file of the CA that signed the LAPI's certificate");
        let pull = raw.pull.unwrap_or(true);
        let push = raw.push.unwrap_or(machine_file.is_some());
        if pull && api_key_file.is_none() {
            self.error(
                span.clone(),
                "fleet.crowdsec pulls decisions (pull = true) but has no api_key_file",
                "run `cscli bouncers add NAME`, write the key into a file and set api_key_file, or set pull = false",
            );
        }
        if push && machine_file.is_none() {
            self.error(
                span.clone(),
                "fleet.crowdsec pushes bans (push = true) but has no machine_file",
                "run `cscli machines add NAME --password P -f FILE` and set machine_file, or set push = false",
            );
        }
        if !pull && !push {
            self.error(
                span.clone(),
                "fleet.crowdsec neither pulls nor pushes",
                "set pull = true, push = true, or both",
            );
        }
        let mut duration = |v: Option<Spanned<String>>, key: &str, default: Duration, range: (Duration, Duration)| {
            let Some(v) = v else { return default };
            match parse_duration(v.get_ref()) {
                Ok(d) if d >= range.0 && d <= range.1 => d,
                _ => {
                    self.error(
                        v.span(),
                        format!(
                            "fleet.crowdsec.{key} = {:?} is not a duration from {:?} to {:?}",
                            v.get_ref(),
                            range.0,
                            range.1
                        ),
                        "write e.g. \"1s\", \"500ms\" or \"5s\"",
                    );
                    default
                }
            }
        };
        let interval = duration(
            raw.interval,
            "interval",
            Duration::from_secs(1),
            (Duration::from_millis(100), Duration::from_secs(3600)),
        );
        let timeout = duration(
            raw.timeout,
            "timeout",
            Duration::from_secs(5),
            (Duration::from_millis(100), Duration::from_secs(120)),
        );
        let resync = duration(
            raw.resync,
            "resync",
            Duration::from_secs(300),
            (Duration::from_secs(10), Duration::from_secs(86_400)),
        );
        let push_queue = match raw.push_queue {
            None => 10_000,
            Some(q) => match usize::try_from(*q.get_ref()) {
                Ok(v) if (1..=1_000_000).contains(&v) => v,
                _ => {
                    self.error(
                        q.span(),
                        format!("fleet.crowdsec.push_queue = {} is out of range", q.get_ref()),
                        "write 1 to 1000000",
                    );
                    10_000
                }
            },
        };
        (self.diags.len() == before).then_some(fleet::Crowdsec {
            url,
            api_key_file,
            machine_file,
            pull,
            push,
            interval,
            timeout,
            resync,
            origins: raw.origins,
            scenarios: raw.scenarios,
            ca_file,
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
            push_queue,
        })
    }

    fn sip(&mut self, raw: RawSip) -> sip::Sip {
        let mut s = sip::Sip::default();
        if let Some(ports) = raw.ports {
            let mut out = Vec::new();
            for p in ports.into_inner() {
                let pspan = p.span();
                match parse_port_range(p.get_ref()) {
                    Ok(r) => out.push(r),
                    Err((message, hint)) => self.error(pspan, format!("sip.ports: {message}"), hint),
                }
            }
            s.ports = Some(out);
        }
        if let Some(list) = raw.ua_block {
            let lspan = list.span();
            let mut out = Vec::new();
            let before = self.diags.len();
            for p in list.into_inner() {
                match sip::check_pattern(p.get_ref()) {
                    Ok(()) => out.push(p.get_ref().clone()),
                    Err(e) => self.error(p.span(), format!("sip.ua_block: {e}"), "write a printable ASCII string of 1 to 64 bytes, e.g. \"friendly-scanner\" (a leading ^ matches only at the start)"),
                }
            }
            // The whole list must also fit the automaton.
            if self.diags.len() == before
                && let Err(e) = sip::UaAutomaton::build(&out)
            {
                self.error(lspan, format!("sip.ua_block: {e}"), "drop or shorten patterns");
            }
            s.ua_block = out;
        }
        if let Some(w) = raw.ua_window {
            if sip::window_in_range(*w.get_ref()) {
                s.ua_window = *w.get_ref() as u32;
            } else {
                self.error(
                    w.span(),
                    format!("sip.ua_window = {} is out of range", w.get_ref()),
                    format!("write a byte count from 64 to {}", common::sip::WINDOW_MAX),
                );
            }
        }
        if let Some(b) = raw.ua_ban {
            match parse_duration(b.get_ref()) {
                Ok(d) => s.ua_ban = d,
                Err(hint) => self.error(b.span(), format!("sip.ua_ban = \"{}\" is not a duration", b.get_ref()), hint),
            }
        }
        if let Some(d) = raw.detection_period {
            match parse_duration(d.get_ref()) {
                Ok(v) if !v.is_zero() => s.detection_period = v,
                Ok(_) => self.error(
                    d.span(),
                    "sip.detection_period must be longer than zero",
                    "write a duration such as \"60s\"",
                ),
                Err(hint) => {
                    self.error(d.span(), format!("sip.detection_period = \"{}\" is not a duration", d.get_ref()), hint)
                }
            }
        }
        for (raw_t, slot, key) in [
            (raw.failed_auth, &mut s.failed_auth, "failed_auth"),
            (raw.unanswered_challenges, &mut s.unanswered_challenges, "unanswered_challenges"),
        ] {
            if let Some(t) = raw_t {
                let t = t.into_inner();
                match u32::try_from(*t.count.get_ref()) {
                    Ok(c) if c <= 1_000_000 => slot.count = c,
                    _ => self.error(
                        t.count.span(),
                        format!("sip.{key}.count = {} is out of range", t.count.get_ref()),
                        "write a count from 1 to 1000000, or 0 to turn the check off",
                    ),
                }
                if let Some(b) = t.ban {
                    match parse_duration(b.get_ref()) {
                        Ok(d) if !d.is_zero() => slot.ban = d,
                        Ok(_) => self.error(
                            b.span(),
                            format!("sip.{key}.ban must be longer than zero"),
                            "write a duration such as \"1h\" (count = 0 turns the check off)",
                        ),
                        Err(hint) => {
                            self.error(b.span(), format!("sip.{key}.ban = \"{}\" is not a duration", b.get_ref()), hint)
                        }
                    }
                }
            }
        }
        for (method, raw_limit) in raw.methods {
            let span = raw_limit.span();
            if sip::method_index(&method).is_none() {
                self.error(
                    span,
                    format!("sip.methods.{method}: not a method voipwall limits separately"),
                    "write REGISTER, INVITE, OPTIONS or other (every other method)",
                );
                continue;
            }
            let raw_limit = raw_limit.into_inner();
            let what = format!("sip.methods.{method}");
            let limit = match (raw_limit.levels, raw_limit.pps) {
                (Some(levels), None) if raw_limit.burst.is_none() && raw_limit.ban.is_none() => {
                    self.limit(&what, RawLimit { levels: Some(levels), unknown: None }, span, None)
                }
                (None, Some(pps)) => self
                    .level(RawLevel { pps, burst: raw_limit.burst, ban: raw_limit.ban }, span, &what)
                    .map(|l| Limit { levels: vec![l], unknown: None }),
                _ => {
                    self.error(
                        span,
                        format!("{what}: write either pps (with burst and ban) or levels"),
                        "write e.g. REGISTER = { pps = 20, burst = 40, ban = \"10m\" }",
                    );
                    None
                }
            };
            if let Some(l) = limit {
                s.methods.insert(method, l);
            }
        }
        s
    }

    fn cidrs(&mut self, list: Vec<Spanned<String>>, what: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for item in list {
            let span = item.span();
            match parse_cidr(item.get_ref()) {
                Ok(net) => out.push(net),
                Err((message, hint)) => self.error(span, format!("{what}: {message}"), hint),
            }
        }
        out
    }

    fn limit(&mut self, name: &str, raw: RawLimit, span: Range<usize>, builtin: Option<&Limit>) -> Option<Limit> {
        let Some(raw_levels) = raw.levels else {
            let Some(builtin) = builtin else {
                self.error(
                    span,
                    format!(
                        "limit `{name}` has no levels; only a built-in class (signaling, media, web) keeps its own"
                    ),
                    "write levels = [{ pps = 500, burst = 1000, ban = \"1h\" }]",
                );
                return None;
            };
            let unknown = self.budget(name, raw.unknown)?;
            return Some(Limit { levels: builtin.levels.clone(), unknown: unknown.unwrap_or(builtin.unknown) });
        };
        let levels_span = raw_levels.span();
        let raw_levels = raw_levels.into_inner();
        if raw_levels.is_empty() || raw_levels.len() > 2 {
            self.error(
                if raw_levels.is_empty() { span } else { levels_span },
                format!("limit `{name}` has {} levels; it needs 1 or 2", raw_levels.len()),
                "write levels = [{ pps = 500, burst = 1000, ban = \"1h\" }, { pps = 2000, ban = \"1h\" }]",
            );
            return None;
        }
        let mut levels = Vec::new();
        for l in raw_levels {
            let lspan = l.span();
            if let Some(level) = self.level(l.into_inner(), lspan, &format!("limit `{name}`")) {
                levels.push(level);
            }
        }
        if levels.len() == 2 && levels[1].pps <= levels[0].pps {
            self.error(
                levels_span,
                format!(
                    "limit `{name}`: level 2 ({} pps) must allow more than level 1 ({} pps)",
                    levels[1].pps, levels[0].pps
                ),
                "put the lower rate first: level 1 is the early warning, level 2 the hard ceiling",
            );
        }
        let unknown = self.budget(name, raw.unknown)?;
        // An absent `unknown` keeps the built-in class's budget (see `limits`), marked here as
        // `Some(Budget { pps: 0 })` until then.
        Some(Limit { levels, unknown: unknown.unwrap_or(Some(Budget { pps: 0, burst: 0 })) })
    }

    /// `unknown = { pps, burst }` or `"off"` of a `[limit.NAME]`: `Some(None)` if absent,
    /// `Some(Some(None))` for off, `None` on an error.
    fn budget(&mut self, name: &str, raw: Option<Spanned<toml::Value>>) -> Option<Option<Option<Budget>>> {
        let unknown = match raw {
            None => None,
            Some(u) => {
                let uspan = u.span();
                let hint = "write unknown = { pps = 2000, burst = 4000 } or unknown = \"off\"";
                match u.into_inner() {
                    toml::Value::String(s) if s == "off" => Some(None),
                    toml::Value::Table(t)
                        if t.keys().all(|k| k == "pps" || k == "burst")
                            && t.get("pps").is_some_and(toml::Value::is_integer)
                            && t.get("burst").is_none_or(toml::Value::is_integer) =>
                    {
                        let int = |k: &str| t.get(k).and_then(toml::Value::as_integer);
                        let pps = Spanned::new(uspan.clone(), int("pps").unwrap_or(0));
                        let burst = int("burst").map(|b| Spanned::new(uspan.clone(), b));
                        let what = format!("limit `{name}`: unknown");
                        let level = self.level(RawLevel { pps, burst, ban: None }, uspan, &what)?;
                        Some(Some(Budget { pps: level.pps, burst: level.burst }))
                    }
                    other => {
                        self.error(
                            uspan,
                            format!("limit `{name}`: unknown = {other} is neither a budget nor \"off\""),
                            hint,
                        );
                        return None;
                    }
                }
            }
        };
        Some(unknown)
    }

    fn level(&mut self, raw: RawLevel, span: Range<usize>, what: &str) -> Option<Level> {
        let mut ok = true;
        let pps = *raw.pps.get_ref();
        if !(1..=100_000_000).contains(&pps) {
            self.error(
                raw.pps.span(),
                format!("{what}: pps = {pps} is out of range"),
                "write a rate between 1 and 100000000 packets per second",
            );
            ok = false;
        }
        let burst = match raw.burst {
            Some(b) if !(1..=100_000_000).contains(b.get_ref()) => {
                self.error(
                    b.span(),
                    format!("{what}: burst = {} is out of range", b.get_ref()),
                    "write a burst between 1 and 100000000 packets, or leave it out (defaults to pps)",
                );
                ok = false;
                0
            }
            Some(b) => *b.get_ref() as u64,
            None => pps.max(1) as u64,
        };
        let ban = match raw.ban {
            Some(b) => match parse_duration(b.get_ref()) {
                Ok(d) => d,
                Err(hint) => {
                    self.error(b.span(), format!("{what}: ban = \"{}\" is not a duration", b.get_ref()), hint);
                    ok = false;
                    Duration::ZERO
                }
            },
            None => Duration::ZERO,
        };
        let _ = span;
        ok.then_some(Level { pps: pps as u64, burst, ban })
    }

    fn rule(
        &mut self,
        raw: RawRule,
        span: Range<usize>,
        sets: &BTreeMap<String, Vec<IpNet>>,
        limits: &BTreeMap<String, Limit>,
    ) -> Option<Rule> {
        let before = self.diags.len();
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() || name.contains('/') {
            self.error(
                raw.name.span(),
                format!("rule name `{name}` is empty or contains '/'"),
                "name the rule, e.g. name = \"sip-from-carriers\" ('/' is reserved for ROLE/RULE)",
            );
        }
        let proto = match raw.proto.get_ref().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "tcp+udp" | "udp+tcp" => Proto::Both,
            other => {
                self.error(
                    raw.proto.span(),
                    format!("rule `{name}`: `{other}` is not a protocol"),
                    "write proto = \"udp\", \"tcp\" or \"tcp+udp\"",
                );
                Proto::Both
            }
        };
        let ports_span = raw.ports.span();
        let raw_ports = raw.ports.into_inner();
        if raw_ports.is_empty() {
            self.error(
                ports_span,
                format!("rule `{name}` opens no ports"),
                "write ports = [\"5060\", \"10000-20000\"]",
            );
        }
        let mut ports = Vec::new();
        for p in raw_ports {
            let pspan = p.span();
            match parse_port_range(p.get_ref()) {
                Ok(r) => ports.push(r),
                Err((message, hint)) => self.error(pspan, format!("rule `{name}`: {message}"), hint),
            }
        }
        let from = match raw.from {
            None => None,
            Some(list) => {
                let lspan = list.span();
                let list = list.into_inner();
                if list.is_empty() {
                    self.error(
                        lspan,
                        format!("rule `{name}`: from = [] would open the ports to nobody"),
                        "leave `from` out to allow any source, or name sets or CIDRs",
                    );
                }
                let mut out = Vec::new();
                for s in list {
                    let sspan = s.span();
                    let text = s.get_ref().trim();
                    if text.contains('/') || text.parse::<IpAddr>().is_ok() {
                        match parse_cidr(text) {
                            Ok(net) => out.push(SourceRef::Cidr(net)),
                            Err((message, hint)) => self.error(sspan, format!("rule `{name}`: {message}"), hint),
                        }
                    } else if sets.contains_key(text) {
                        out.push(SourceRef::Set(text.to_string()));
                    } else {
                        let known = sets.keys().cloned().collect::<Vec<_>>().join(", ");
                        self.error(
                            sspan,
                            format!("rule `{name}`: unknown set `{text}`"),
                            format!("define it under [sets] or use one of: {known}"),
                        );
                    }
                }
                Some(out)
            }
        };
        let limit = match raw.limit {
            None => None,
            Some(l) => {
                if limits.contains_key(l.get_ref()) {
                    Some(l.get_ref().clone())
                } else {
                    let known = limits.keys().cloned().collect::<Vec<_>>().join(", ");
                    self.error(
                        l.span(),
                        format!("rule `{name}`: unknown limit `{}`", l.get_ref()),
                        format!("define [limit.{}] or use one of: {known}", l.get_ref()),
                    );
                    None
                }
            }
        };
        let action = match raw.action {
            None => Action::Open,
            Some(a) => match a.get_ref().as_str() {
                "open" => Action::Open,
                "close" => Action::Close,
                other => {
                    self.error(
                        a.span(),
                        format!("rule `{name}`: `{other}` is not an action"),
                        "write action = \"open\" (the default) or \"close\"",
                    );
                    Action::Open
                }
            },
        };
        let media = raw.media.and_then(|m| {
            let mode = media::Mode::parse(m.get_ref());
            if mode.is_none() {
                self.error(
                    m.span(),
                    format!("rule `{name}`: media = \"{}\" is not a media mode", m.get_ref()),
                    "write media = \"open\" (any source) or \"pinhole\" (only the peers of live calls)",
                );
            }
            mode
        });
        let pinhole_full = raw.pinhole_full.and_then(|f| {
            let full = media::Full::parse(f.get_ref());
            if full.is_none() {
                self.error(
                    f.span(),
                    format!("rule `{name}`: pinhole_full = \"{}\" is not a choice", f.get_ref()),
                    "write pinhole_full = \"drop\" or \"limit\" (admit by the rule's rate class)",
                );
            }
            full
        });
        if media == Some(media::Mode::Pinhole) && !proto.has_udp() {
            self.error(
                span.clone(),
                format!("rule `{name}` puts TCP ports in pinhole mode"),
                "pinholes are for RTP over UDP: write proto = \"udp\", or leave `media` out",
            );
        }
        if action == Action::Close && (from.is_some() || limit.is_some()) {
            self.error(
                span.clone(),
                format!("rule `{name}` closes its ports but names `from` or `limit`"),
                "remove `from` and `limit` from a closing rule",
            );
        }
        (self.diags.len() == before).then_some(Rule {
            name,
            origin: RuleOrigin::User,
            proto,
            ports,
            from,
            limit,
            action,
            media,
            pinhole_full,
            span: Some(span),
        })
    }

    fn media(&mut self, raw: RawMedia) -> media::Media {
        let mut m = media::Media::default();
        if let Some(v) = raw.mode {
            match media::Mode::parse(v.get_ref()) {
                Some(mode) => m.mode = mode,
                None => self.error(
                    v.span(),
                    format!("media.mode = \"{}\" is not a media mode", v.get_ref()),
                    "write mode = \"open\" or \"pinhole\"",
                ),
            }
        }
        if let Some(v) = raw.full {
            match media::Full::parse(v.get_ref()) {
                Some(full) => m.full = full,
                None => self.error(
                    v.span(),
                    format!("media.full = \"{}\" is not a choice", v.get_ref()),
                    "write full = \"drop\" or \"limit\"",
                ),
            }
        }
        for (raw_d, slot, key) in
            [(raw.idle, &mut m.idle, "idle"), (raw.setup, &mut m.setup, "setup"), (raw.grace, &mut m.grace, "grace")]
        {
            if let Some(d) = raw_d {
                match parse_duration(d.get_ref()) {
                    Ok(v) if !v.is_zero() => *slot = v,
                    Ok(_) => self.error(
                        d.span(),
                        format!("media.{key} must be longer than zero"),
                        "write a duration such as \"30s\"",
                    ),
                    Err(hint) => {
                        self.error(d.span(), format!("media.{key} = \"{}\" is not a duration", d.get_ref()), hint)
                    }
                }
            }
        }
        for a in raw.addresses.unwrap_or_default() {
            match a.get_ref().trim().parse::<IpAddr>() {
                Ok(ip) => m.addresses.push(ip),
                Err(_) => self.error(
                    a.span(),
                    format!("media.addresses: `{}` is not an IP address", a.get_ref()),
                    "write the address the host's SDP carries, e.g. \"203.0.113.5\"",
                ),
            }
        }
        m
    }

    fn options(&mut self, raw: RawOptions) -> Options {
        let mut o = Options::default();
        if let Some(p) = raw.ipv6_prefix {
            match u8::try_from(*p.get_ref()) {
                Ok(v) if (1..=128).contains(&v) => o.ipv6_prefix = v,
                _ => self.error(
                    p.span(),
                    format!("options.ipv6_prefix = {} is out of range", p.get_ref()),
                    "write a prefix length from 1 to 128 (64 is the usual subscriber allocation)",
                ),
            }
        }
        if let Some(d) = raw.dry_run {
            o.dry_run = d;
        }
        if let Some(p) = raw.ssh_port {
            match u16::try_from(*p.get_ref()) {
                Ok(v) if v >= 1 => o.ssh_port = v,
                _ => self.error(
                    p.span(),
                    format!("options.ssh_port = {} is not a port", p.get_ref()),
                    "write a port from 1 to 65535",
                ),
            }
        }
        for (raw_d, slot, key) in [
            (raw.return_timeout, &mut o.return_timeout, "return_timeout"),
            (raw.fragment_timeout, &mut o.fragment_timeout, "fragment_timeout"),
            (raw.known_ttl, &mut o.known_ttl, "known_ttl"),
        ] {
            if let Some(d) = raw_d {
                match parse_duration(d.get_ref()) {
                    Ok(v) if !v.is_zero() => *slot = v,
                    Ok(_) => self.error(
                        d.span(),
                        format!("options.{key} must be longer than zero"),
                        "write a duration such as \"120s\"",
                    ),
                    Err(hint) => {
                        self.error(d.span(), format!("options.{key} = \"{}\" is not a duration", d.get_ref()), hint)
                    }
                }
            }
        }
        if let Some(e) = raw.icmp_echo {
            let span = e.span();
            if let Some(level) = self.level(e.into_inner(), span, "options.icmp_echo") {
                o.icmp_echo = level;
            }
        }
        if let Some(b) = raw.icmp_echo_unknown {
            let span = b.span();
            let b = b.into_inner();
            if let Some(l) =
                self.level(RawLevel { pps: b.pps, burst: b.burst, ban: None }, span, "options.icmp_echo_unknown")
            {
                o.icmp_echo_unknown = Budget { pps: l.pps, burst: l.burst };
            }
        }
        o
    }

    fn capacity(&mut self, raw: RawCapacity) -> Capacity {
        let mut c = Capacity::default();
        for (v, slot, key) in [
            (raw.allow, &mut c.allow, "allow"),
            (raw.block_v4, &mut c.block_v4, "block_v4"),
            (raw.block_v6, &mut c.block_v6, "block_v6"),
            (raw.sets, &mut c.sets, "sets"),
            (raw.bans, &mut c.bans, "bans"),
            (raw.rates, &mut c.rates, "rates"),
            (raw.flows, &mut c.flows, "flows"),
            (raw.frags, &mut c.frags, "frags"),
            (raw.sip_peers, &mut c.sip_peers, "sip_peers"),
            (raw.known, &mut c.known, "known"),
        ] {
            if let Some(v) = v {
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if (16..=1 << 26).contains(&n) => *slot = n,
                    _ => self.error(
                        v.span(),
                        format!("capacity.{key} = {} is out of range", v.get_ref()),
                        "write an entry count from 16 to 67108864",
                    ),
                }
            }
        }
        c
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A CIDR or a bare address (a /32 or /128). Host bits must be zero.
pub fn parse_cidr(text: &str) -> Result<IpNet, (String, String)> {
    let text = text.trim();
    let net = if text.contains('/') {
        IpNet::from_str(text).map_err(|_| {
            (
                format!("`{text}` is not a CIDR"),
                "write an address and a prefix length, e.g. \"203.0.113.0/24\" or \"2001:db8::/32\"".to_string(),
            )
        })?
    } else {
        let addr = IpAddr::from_str(text).map_err(|_| {
            (
                format!("`{text}` is not an IP address or CIDR"),
                "write e.g. \"203.0.113.10\", \"203.0.113.0/24\" or \"2001:db8::/32\"".to_string(),
            )
        })?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err((
            format!("`{text}` has host bits set"),
            format!("write \"{}\" (the network), or the single address with /{}", net.trunc(), net.max_prefix_len()),
        ));
    }
    Ok(net)
}

fn parse_port(text: &str) -> Result<u16, (String, String)> {
    let hint = "write ports from 1 to 65535, e.g. \"5060\" or \"10000-20000\"".to_string();
    match text.trim().parse::<i64>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err((format!("port {p} is outside 1-65535"), hint)),
        Err(_) => Err((format!("`{text}` is not a port number"), hint)),
    }
}

fn parse_port_range(raw: &RawPort) -> Result<(u16, u16), (String, String)> {
    match raw {
        RawPort::Number(n) => parse_port(&n.to_string()).map(|p| (p, p)),
        RawPort::Text(t) => match t.split_once('-') {
            None => parse_port(t).map(|p| (p, p)),
            Some((a, b)) => {
                let (a, b) = (parse_port(a)?, parse_port(b)?);
                if a > b {
                    Err((format!("range \"{t}\" is inverted"), format!("write \"{b}-{a}\" (low-high)")))
                } else {
                    Ok((a, b))
                }
            }
        },
    }
}

/// "1h", "30s", "1h30m", "500ms"; "0" is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|_| "write a duration such as \"30s\", \"10m\", \"1h\" or \"1h30m\" (\"0\" for none)".to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialize durations as humantime strings in JSON output.
mod humantime_serde_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.is_zero() { s.serialize_str("0") } else { s.serialize_str(&humantime::format_duration(*d).to_string()) }
    }
}

#[cfg(test)]
mod tests;
