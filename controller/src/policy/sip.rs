//! `[sip]`: the SIP-aware checks. Validated here; the User-Agent block list is compiled into the
//! automaton the data plane runs ([`UaAutomaton`]).
//!
//! Defaults follow PortSIP's anti-hacking settings ("PortSIP PBX: Security Features", section
//! "SIP and TCP/IP Security (Anti-Hacking)"): 50 failed authentications within the detection
//! period ban for 1 hour, and sources that never answer challenges are banned for 1 hour too.

use std::{collections::BTreeMap, time::Duration};

use common::{
    UaMatcher,
    sip::{METHOD_NAMES, UA_BEGIN, UA_CLASSES, UA_MATCH, UA_STATES, WINDOW_DEFAULT, WINDOW_MAX},
};
use serde::Serialize;

use super::{Limit, humantime_serde_secs};

/// The default User-Agent block list: the scanner check of Kamailio's default configuration,
/// `if($ua =~ "friendly|scanner|sipcli|sipvicious|VaxSIPUserAgent|pplsip")` in
/// `route[REQINIT]` of `/etc/kamailio/kamailio.cfg` (Debian's kamailio 5.6.3 package). They
/// cover SIPVicious (`friendly-scanner`, `sipvicious`), sipcli, VaxSIPUserAgent and pplsip.
pub const DEFAULT_UA_BLOCK: [&str; 6] = ["friendly", "scanner", "sipcli", "sipvicious", "VaxSIPUserAgent", "pplsip"];

/// A count within the detection period that bans, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Threshold {
    /// 0 turns the check off.
    pub count: u32,
    #[serde(with = "humantime_serde_secs")]
    pub ban: Duration,
}

/// A validated `[sip]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sip {
    /// Ports whose TCP and UDP payloads are inspected. Default: the plaintext SIP ports of the
    /// roles, and 5060 wherever a rule opens it (`None` here means "that default").
    pub ports: Option<Vec<(u16, u16)>>,
    /// User-Agent patterns, matched case-insensitively anywhere in the value; a leading `^`
    /// anchors one at the value's start. Default [`DEFAULT_UA_BLOCK`]; `[]` turns the check off.
    pub ua_block: Vec<String>,
    /// Payload bytes inspected per message. Default 1472 (a whole UDP payload at 1500 MTU), at
    /// most 4096.
    pub ua_window: u32,
    /// Ban time for a User-Agent match; 0 drops the message only. Default 1 hour, PortSIP's
    /// blacklist time.
    #[serde(with = "humantime_serde_secs")]
    pub ua_ban: Duration,
    /// Period the authentication counters cover. Default 60 s.
    #[serde(with = "humantime_serde_secs")]
    pub detection_period: Duration,
    /// Default 50 within the period, ban 1 hour (PortSIP).
    pub failed_auth: Threshold,
    /// Challenges (401/407) the source never answered with credentials. Default 100 within the
    /// period, ban 1 hour: twice the failed-auth count, since a challenge and its answer can fall
    /// on two sides of a period boundary.
    pub unanswered_challenges: Threshold,
    /// Per-source rate classes by request method (`REGISTER`, `INVITE`, `OPTIONS`, `other`).
    /// Default: none (the port's class still applies); carriers send INVITEs at rates no
    /// default would fit.
    pub methods: BTreeMap<String, Limit>,
}

impl Default for Sip {
    fn default() -> Self {
        const HOUR: Duration = Duration::from_secs(3600);
        Self {
            ports: None,
            ua_block: DEFAULT_UA_BLOCK.iter().map(|s| s.to_string()).collect(),
            ua_window: WINDOW_DEFAULT,
            ua_ban: HOUR,
            detection_period: Duration::from_secs(60),
            failed_auth: Threshold { count: 50, ban: HOUR },
            unanswered_challenges: Threshold { count: 100, ban: HOUR },
            methods: BTreeMap::new(),
        }
    }
}

/// Longest pattern accepted.
pub const PATTERN_MAX: usize = 64;

/// Why a pattern cannot be used (the caller adds where it is).
pub fn check_pattern(p: &str) -> Result<(), String> {
    let body = p.strip_prefix('^').unwrap_or(p);
    if body.is_empty() {
        return Err(format!("User-Agent pattern {p:?} is empty"));
    }
    if body.len() > PATTERN_MAX {
        return Err(format!("User-Agent pattern {p:?} is longer than {PATTERN_MAX} bytes"));
    }
    if let Some(c) = body.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!("User-Agent pattern {p:?} holds {c:?}; patterns are printable ASCII"));
    }
    Ok(())
}

/// Keys of `[sip.methods]`.
pub fn method_index(name: &str) -> Option<usize> {
    METHOD_NAMES.iter().position(|m| *m == name)
}

pub fn window_in_range(w: i64) -> bool {
    (64..=WINDOW_MAX as i64).contains(&w)
}

/// The User-Agent block list as the data plane's automaton, plus a host-side matcher that runs
/// the same tables (for tests and `policy check`).
#[derive(Clone, PartialEq, Eq)]
pub struct UaAutomaton {
    pub table: Box<UaMatcher>,
    pub states: usize,
}

impl std::fmt::Debug for UaAutomaton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UaAutomaton({} states)", self.states)
    }
}

fn fold(b: u8) -> u8 {
    b.to_ascii_lowercase()
}

impl UaAutomaton {
    /// An automaton that matches nothing.
    pub fn empty() -> Self {
        Self { table: zeroed(), states: 1 }
    }

    #[expect(clippy::needless_range_loop, reason = "state x class tables are clearer indexed")]
    /// Build the Aho-Corasick automaton of `patterns` (case-insensitive; `^` anchors at the
    /// value's start through the [`UA_BEGIN`] class fed before the value).
    pub fn build(patterns: &[String]) -> Result<Self, String> {
        let mut table = zeroed();
        // Byte classes: 0 = in no pattern, 1 = begin, then one per distinct folded byte.
        let mut next_class = UA_BEGIN as u32 + 1;
        let mut seqs: Vec<Vec<u8>> = Vec::new();
        for p in patterns {
            check_pattern(p)?;
            let (anchored, body) = match p.strip_prefix('^') {
                Some(b) => (true, b),
                None => (false, p.as_str()),
            };
            let mut seq = Vec::new();
            if anchored {
                seq.push(UA_BEGIN);
            }
            for b in body.bytes().map(fold) {
                if table.class[b as usize] == 0 {
                    if next_class >= UA_CLASSES {
                        return Err(format!(
                            "the User-Agent patterns use more than {} distinct characters",
                            UA_CLASSES - 2
                        ));
                    }
                    let c = next_class as u8;
                    table.class[b as usize] = c;
                    table.class[b.to_ascii_uppercase() as usize] = c;
                    next_class += 1;
                }
                seq.push(table.class[b as usize]);
            }
            seqs.push(seq);
        }
        let classes = next_class as usize;
        // The trie.
        let mut goto: Vec<BTreeMap<u8, usize>> = vec![BTreeMap::new()];
        let mut accept: Vec<bool> = vec![false];
        for seq in &seqs {
            let mut s = 0;
            for &c in seq {
                s = match goto[s].get(&c) {
                    Some(&t) => t,
                    None => {
                        goto.push(BTreeMap::new());
                        accept.push(false);
                        let t = goto.len() - 1;
                        goto[s].insert(c, t);
                        t
                    }
                };
            }
            accept[s] = true;
        }
        let states = goto.len();
        if states > UA_STATES as usize {
            return Err(format!(
                "the User-Agent patterns need {states} automaton states; at most {UA_STATES} fit (about {} pattern bytes in all): shorten or drop patterns",
                UA_STATES - 1
            ));
        }
        // Failure links by breadth-first search, folded into a full transition table (indexed
        // loops: the tables are read and written by state and class at once).
        let mut delta = vec![vec![0usize; classes]; states];
        let mut fail = vec![0usize; states];
        let mut queue = std::collections::VecDeque::new();
        for c in 0..classes {
            match goto[0].get(&(c as u8)) {
                Some(&t) => {
                    delta[0][c] = t;
                    queue.push_back(t);
                }
                None => delta[0][c] = 0,
            }
        }
        while let Some(s) = queue.pop_front() {
            accept[s] = accept[s] || accept[fail[s]];
            for c in 0..classes {
                match goto[s].get(&(c as u8)) {
                    Some(&t) => {
                        fail[t] = delta[fail[s]][c];
                        delta[s][c] = t;
                        queue.push_back(t);
                    }
                    None => delta[s][c] = delta[fail[s]][c],
                }
            }
        }
        // Once matched, stay matched: every class leads a matching state back to itself, so the
        // program may feed a run of bytes and look at the match bit once, after the run.
        for s in 0..states {
            for c in 0..UA_CLASSES as usize {
                let t = if accept[s] {
                    s
                } else if c < classes {
                    delta[s][c]
                } else {
                    0
                };
                table.next[s * UA_CLASSES as usize + c] = t as u16 | if accept[t] { UA_MATCH } else { 0 };
            }
        }
        prefilter(&mut table, &seqs);
        Ok(Self { table, states })
    }

    /// What the program's prefilter says of a value on one line (no fold, no `\r` inside, as
    /// the program reads it before falling back to the automaton): whether some consecutive
    /// class pair, [`UA_BEGIN`] before the first byte, has its bit set in `pairs`.
    pub fn prefilter_hit(&self, value: &[u8]) -> bool {
        let t = &self.table;
        let mut prev = UA_BEGIN as usize;
        value.iter().any(|&b| {
            let c = (t.class[b as usize] as u32 & (UA_CLASSES - 1)) as usize;
            let hit = t.pairs[prev] >> c & 1 != 0;
            prev = c;
            hit
        })
    }

    /// Run a User-Agent value through the tables as the program does, which feeds runs of
    /// bytes and looks at the match bit after each run: here the whole value is one run, so a
    /// match is only seen if matching states keep it (the reference tests below check that).
    pub fn matches(&self, value: &[u8]) -> bool {
        let t = &self.table;
        let mut state = t.next[UA_BEGIN as usize];
        for &b in value {
            let class = (t.class[b as usize] as u32 & (UA_CLASSES - 1)) as usize;
            state = t.next[(state & (UA_STATES as u16 - 1)) as usize * UA_CLASSES as usize + class];
        }
        state & UA_MATCH != 0
    }
}

/// User-Agent values of phones, softphones, gateways and servers that carry most SIP traffic:
/// the prefilter's key pairs are chosen to be rare in them, so that a legitimate request's value
/// rarely needs the automaton.
const COMMON_USER_AGENTS: [&str; 25] = [
    "Yealink SIP-T46S 66.86.0.15",
    "Yealink SIP-T54W 96.86.0.100",
    "Grandstream GXP2170 1.0.11.3",
    "Grandstream HT801 1.0.43.11",
    "PolycomVVX-VVX_411-UA/6.4.3.5156",
    "Cisco/SPA504G-7.6.2",
    "snom D785/10.1.73.16",
    "Fanvil X4U 2.12.1",
    "Gigaset N510 IP PRO/42.250.00.000.000",
    "Linphone/5.2.0 (belle-sip/5.2.0)",
    "Zoiper rv2.10.20.2",
    "MicroSIP/3.21.3",
    "Bria 6 release 6.5.3",
    "baresip v3.10.1 (x86_64/linux)",
    "Asterisk PBX 20.5.0",
    "FPBX-16.0.33(18.20.0)",
    "FreeSWITCH-mod_sofia/1.10.11-release",
    "kamailio (5.7.4 (x86_64/linux))",
    "OpenSIPS (3.4.3 (x86_64/linux))",
    "PortSIP VoIP SDK 19.2",
    "PortSIP PBX 16.1",
    "3CXPhoneSystem 18.0.9.20",
    "Avaya one-X Deskphone",
    "Obihai/OBi200-3.2.2",
    "sipp",
];

/// Fill `table.pairs`: for every pattern (as its class sequence) the pair of consecutive classes
/// least frequent in [`COMMON_USER_AGENTS`] (among those, the pair of the least frequent
/// classes); a pattern of one class (no pair of its own) is keyed on that class after any class.
fn prefilter(table: &mut UaMatcher, seqs: &[Vec<u8>]) {
    let class = |b: u8| table.class[b as usize] as usize & (UA_CLASSES as usize - 1);
    let mut seen = vec![[0u32; UA_CLASSES as usize]; UA_CLASSES as usize];
    let mut single = [0u32; UA_CLASSES as usize];
    for ua in COMMON_USER_AGENTS {
        let mut prev = UA_BEGIN as usize;
        for b in ua.bytes() {
            let c = class(b);
            seen[prev][c] += 1;
            single[c] += 1;
            prev = c;
        }
    }
    let mut pairs = [0u64; UA_CLASSES as usize];
    for seq in seqs {
        if let [only] = seq.as_slice() {
            for row in pairs.iter_mut() {
                *row |= 1 << *only;
            }
            continue;
        }
        // Among equally rare pairs, the one of the rarest classes.
        let (a, b) = (|w: &[u8]| w[0] as usize, |w: &[u8]| w[1] as usize);
        if let Some(w) = seq.windows(2).min_by_key(|w| (seen[a(w)][b(w)], single[a(w)] + single[b(w)])) {
            pairs[w[0] as usize] |= 1 << w[1];
        }
    }
    table.pairs = pairs;
}

fn zeroed() -> Box<UaMatcher> {
    // SAFETY: UaMatcher is plain integers; all-zero is a valid value. Built on the heap: it is
    // 64 KiB.
    unsafe {
        let layout = std::alloc::Layout::new::<UaMatcher>();
        let p = std::alloc::alloc_zeroed(layout) as *mut UaMatcher;
        assert!(!p.is_null(), "out of memory");
        Box::from_raw(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(p: &[&str]) -> UaAutomaton {
        UaAutomaton::build(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// Every string over `alphabet` (ASCII) of up to `max_len` bytes.
    fn every_string(alphabet: &[u8], max_len: u32) -> impl Iterator<Item = String> + '_ {
        (0..=max_len).flat_map(move |len| {
            (0..alphabet.len().pow(len)).map(move |mut k| {
                let v: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[k % alphabet.len()];
                        k /= alphabet.len();
                        b
                    })
                    .collect();
                String::from_utf8(v).unwrap()
            })
        })
    }

    /// Reference: substring / prefix match, case-insensitive.
    fn reference(patterns: &[&str], value: &str) -> bool {
        let v = value.to_ascii_lowercase();
        patterns.iter().any(|p| match p.strip_prefix('^') {
            Some(b) => v.starts_with(&b.to_ascii_lowercase()),
            None => v.contains(&p.to_ascii_lowercase()),
        })
    }

    #[test]
    fn default_list_matches_the_scanners_and_not_real_phones() {
        let a = auto(&DEFAULT_UA_BLOCK);
        for ua in [
            "friendly-scanner",
            "sipvicious 0.3.4",
            "SIPVicious",
            "sipcli/v1.8",
            "VaxSIPUserAgent/3.1",
            "pplsip",
            "PPLSIP",
            "Friendly-Request",
        ] {
            assert!(a.matches(ua.as_bytes()), "{ua}");
        }
        for ua in [
            "Yealink SIP-T46S 66.86.0.15",
            "Grandstream GXP2170 1.0.11.3",
            "Asterisk PBX 20.5.0",
            "PolycomVVX-VVX_411-UA/6.4.3",
            "baresip v1.0.0 (x86_64/linux)",
            "sipp",
        ] {
            assert!(!a.matches(ua.as_bytes()), "{ua}");
        }
    }

    #[test]
    fn the_prefilter_never_misses_a_match() {
        // Overlaps, anchors, a pattern of one byte, a blank inside a pattern, and a pattern
        // whose rarest pair is not its first.
        for pats in [&["abcab", "bca", "^cab", "aab", "b c", "^x"][..], &["x", "^ab"], &["cbx", "a a", "^b"]] {
            let a = auto(pats);
            let (mut matched, mut skipped) = (0, 0);
            for s in every_string(b"aBc x-", 6) {
                if reference(pats, &s) {
                    assert!(a.prefilter_hit(s.as_bytes()), "{pats:?}: {s:?} matches but the prefilter passed it");
                    matched += 1;
                } else if !a.prefilter_hit(s.as_bytes()) {
                    skipped += 1;
                }
            }
            assert!(matched > 1000 && skipped > 100, "{pats:?}: {matched} matched, {skipped} skipped the automaton");
        }
    }

    #[test]
    fn common_user_agents_skip_the_automaton_under_the_default_list() {
        let a = auto(&DEFAULT_UA_BLOCK);
        // The sample the key pairs are chosen by, and values outside it.
        let others =
            ["Yealink SIP-T31P 124.86.0.40", "Grandstream GXP1628 1.0.4.138", "Asterisk PBX 18.20.2", "Zoiper v2.8"];
        for ua in COMMON_USER_AGENTS.iter().chain(&others) {
            assert!(!a.prefilter_hit(ua.as_bytes()), "{ua}");
        }
        for ua in ["friendly-scanner", "sipvicious 0.3.4", "sipcli/v1.8", "VaxSIPUserAgent/3.1", "PPLSIP"] {
            assert!(a.prefilter_hit(ua.as_bytes()), "{ua}");
        }
    }

    #[test]
    fn overlapping_patterns_and_anchors_agree_with_a_reference() {
        let pats = ["abcab", "bca", "^cab", "aab", "b c", "^x"];
        let a = auto(&pats);
        // Every string over a small alphabet up to length 7.
        let mut count = 0;
        for s in every_string(b"aBc x", 7) {
            assert_eq!(a.matches(s.as_bytes()), reference(&pats, &s), "{s:?}");
            count += 1;
        }
        assert!(count > 90_000);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(UaAutomaton::build(&["".into()]).is_err());
        assert!(UaAutomaton::build(&["^".into()]).is_err());
        assert!(UaAutomaton::build(&["a\u{7f}".into()]).is_err());
        assert!(UaAutomaton::build(&["é".into()]).is_err());
        assert!(UaAutomaton::build(&["x".repeat(65)]).is_err());
        // More states than fit.
        let many: Vec<String> = (0..20).map(|i| format!("{i:02}abcdefghijklmnopqrstuvwxyz")).collect();
        let err = UaAutomaton::build(&many).unwrap_err();
        assert!(err.contains("automaton states"), "{err}");
        // More distinct characters than classes.
        let wide: Vec<String> = vec![(b' '..=b'~').map(|b| b as char).collect::<String>()[..64].to_string()];
        assert!(UaAutomaton::build(&wide).is_err());
        assert!(UaAutomaton::build(&[]).unwrap().states == 1);
        assert!(!UaAutomaton::build(&[]).unwrap().matches(b"anything"));
    }
}
