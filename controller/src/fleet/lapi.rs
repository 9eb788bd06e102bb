//! CrowdSec's Local API, as a bouncer (`GET /v1/decisions/stream`, `X-Api-Key`) and as a
//! machine (`POST /v1/watchers/login` for a JWT, `POST /v1/alerts` with it). Blocking calls
//! (ureq), made from the daemon's blocking threads, never from the data path.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use ureq::{
    Agent,
    tls::{PemItem, RootCerts, TlsConfig, parse_pem},
};

use crate::policy::fleet::{self, Crowdsec};

/// A decision as the stream carries it: every field read leniently, validated by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawDecision {
    pub id: Option<i64>,
    pub origin: String,
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
}

/// One answer of the decision stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    pub new: Vec<RawDecision>,
    pub deleted: Vec<RawDecision>,
}

#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    #[error("cannot reach the LAPI: {0}")]
    Unreachable(String),
    #[error("the LAPI did not answer in time")]
    Timeout,
    #[error("the LAPI refused the credentials (HTTP {0}): {1}")]
    Auth(u16, String),
    #[error("the LAPI answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("the LAPI's answer is not what its API defines: {0}")]
    Garbage(String),
    #[error("{0}")]
    Config(String),
}

impl LapiError {
    /// The `kind` label of `voipwall_fleet_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
            Self::Auth(..) => "auth",
            Self::Status(..) => "http_status",
            Self::Garbage(_) => "garbage",
            Self::Config(_) => "config",
        }
    }
}

impl From<ureq::Error> for LapiError {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::Timeout(_) => Self::Timeout,
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Self::Timeout,
            ureq::Error::BodyExceedsLimit(n) => Self::Garbage(format!("the answer is larger than {n} bytes")),
            other => Self::Unreachable(other.to_string()),
        }
    }
}

/// The largest stream answer read (a startup answer with a million decisions is about 200 MB).
const BODY_LIMIT: u64 = 512 * 1024 * 1024;

pub struct Client {
    agent: Agent,
    url: String,
    api_key: Option<String>,
    machine: Option<(String, String)>,
    token: Option<(String, Instant)>,
}

/// A JWT is used for this long (CrowdSec issues them for an hour).
const TOKEN_LIFE: Duration = Duration::from_secs(45 * 60);

impl Client {
    /// A client for `cfg`: reads the key and credentials files and the CA file. The error names
    /// the file and what is wrong with it.
    pub fn new(cfg: &Crowdsec) -> Result<Self, String> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let api_key = match &cfg.api_key_file {
            Some(p) if cfg.pull => {
                Some(fleet::api_key(&String::from_utf8_lossy(&read(p)?)).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            _ => None,
        };
        let machine = match &cfg.machine_file {
            Some(p) if cfg.push => Some(
                fleet::machine_credentials(&String::from_utf8_lossy(&read(p)?))
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            _ => None,
        };
        let mut tls = TlsConfig::builder().disable_verification(cfg.insecure_skip_verify);
        if let Some(p) = &cfg.ca_file {
            let pem = read(p)?;
            let certs: Vec<_> = parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: not a PEM file: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: holds no certificate", p.display()));
            }
            tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("voipwall/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self { agent, url: cfg.url.clone(), api_key, machine, token: None })
    }

    /// `GET /v1/decisions/stream?startup=...`: every active decision (`startup`), or what changed
    /// since this key's last call; the answer must be complete within `timeout`.
    pub fn stream(&self, startup: bool, timeout: Duration) -> Result<Stream, LapiError> {
        let key = self.api_key.as_deref().ok_or_else(|| LapiError::Auth(0, "no bouncer key".into()))?;
        let url = format!("{}/v1/decisions/stream?startup={startup}", self.url);
        let mut resp =
            self.agent.get(&url).config().timeout_global(Some(timeout)).build().header("X-Api-Key", key).call()?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(BODY_LIMIT).read_to_vec()?;
        check_status(status, &body)?;
        parse_stream(&body)
    }

    /// `POST /v1/alerts` with `alerts` (logging in first when the token is missing or old, and
    /// once more if the LAPI says it expired).
    pub fn push(&mut self, alerts: &[Alert]) -> Result<(), LapiError> {
        for attempt in 0..2 {
            let token = match &self.token {
                Some((t, at)) if at.elapsed() < TOKEN_LIFE => t.clone(),
                _ => self.login()?,
            };
            let url = format!("{}/v1/alerts", self.url);
            let mut resp =
                self.agent.post(&url).header("Authorization", &format!("Bearer {token}")).send_json(alerts)?;
            let status = resp.status().as_u16();
            let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec()?;
            if status == 401 && attempt == 0 {
                self.token = None;
                continue;
            }
            return check_status(status, &body);
        }
        unreachable!("the loop returns")
    }

    fn login(&mut self) -> Result<String, LapiError> {
        let (login, password) =
            self.machine.clone().ok_or_else(|| LapiError::Auth(0, "no machine credentials".into()))?;
        let url = format!("{}/v1/watchers/login", self.url);
        let body = serde_json::json!({ "machine_id": login, "password": password, "scenarios": SCENARIOS });
        let mut resp = self.agent.post(&url).send_json(&body)?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(1 << 20).read_to_vec()?;
        check_status(status, &body)?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| LapiError::Garbage(format!("login answer: {e}")))?;
        let token = v["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| LapiError::Garbage("login answer without a token".into()))?
            .to_string();
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

fn check_status(status: u16, body: &[u8]) -> Result<(), LapiError> {
    let text = || {
        let t = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string();
        if t.is_empty() { "(no body)".to_string() } else { t }
    };
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(LapiError::Auth(status, text())),
        _ => Err(LapiError::Status(status, text())),
    }
}

/// Decode a stream answer. An answer that is not a JSON object with `new` and `deleted` (each
/// a list or null) is garbage as a whole; inside the lists, each decision is read leniently
/// (missing or mistyped fields become empty) and judged by the caller.
pub fn parse_stream(body: &[u8]) -> Result<Stream, LapiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| LapiError::Garbage(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(LapiError::Garbage("not a JSON object".into()));
    };
    let list = |key: &str| -> Result<Vec<RawDecision>, LapiError> {
        match map.get(key) {
            Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.iter().map(raw_decision).collect()),
            Some(_) => Err(LapiError::Garbage(format!("`{key}` is neither a list nor null"))),
            None => Err(LapiError::Garbage(format!("no `{key}` in the answer"))),
        }
    };
    Ok(Stream { new: list("new")?, deleted: list("deleted")? })
}

fn raw_decision(v: &Value) -> RawDecision {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    RawDecision {
        id: v.get("id").and_then(Value::as_i64),
        origin: s("origin"),
        kind: s("type"),
        scope: s("scope"),
        value: s("value"),
        duration: s("duration"),
        scenario: s("scenario"),
    }
}

/// A Go duration (`3h59m59.37s`, `-1.5s`, `250ms`) in seconds.
pub fn go_duration(text: &str) -> Option<f64> {
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if n == 0 {
            return None;
        }
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[u..];
        total += number * scale;
    }
    // Go's durations are int64 nanoseconds: a LAPI cannot mean more than this. A longer text is
    // not a duration (and would overflow an expiry time).
    const GO_MAX_SECS: f64 = i64::MAX as f64 / 1e9;
    if !total.is_finite() || total > GO_MAX_SECS {
        return None;
    }
    Some(sign * total)
}

/// The scenarios this machine declares at login.
pub const SCENARIOS: &[&str] = &[
    "voipwall/signaling",
    "voipwall/media",
    "voipwall/web",
    "voipwall/sip-user-agent",
    "voipwall/sip-failed-auth",
    "voipwall/sip-unanswered-challenges",
];

/// An alert as `POST /v1/alerts` takes it (CrowdSec's `models.Alert`), with one decision.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Alert {
    pub scenario: String,
    pub scenario_hash: String,
    pub scenario_version: String,
    pub message: String,
    pub events_count: i32,
    pub start_at: String,
    pub stop_at: String,
    pub capacity: i32,
    pub leakspeed: String,
    pub simulated: bool,
    pub events: Vec<Event>,
    pub source: Source,
    pub decisions: Vec<Decision>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    pub timestamp: String,
    pub meta: Vec<Meta>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Meta {
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Source {
    pub scope: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Decision {
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    pub duration: String,
    pub scenario: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("3h59m59.5s"), Some(3.0 * 3600.0 + 59.0 * 60.0 + 59.5));
        assert_eq!(go_duration("-1.5s"), Some(-1.5));
        assert_eq!(go_duration("250ms"), Some(0.25));
        assert_eq!(go_duration("0"), Some(0.0));
        // The longest Go duration, and beyond it (a fuzzed answer overflowed the expiry time).
        assert!(go_duration("2562047h47m16.854775807s").is_some());
        for bad in
            ["", "3x", "h", "1h2", "--1s", "1.2.3s", "2562048h", "777777777777777777773h5985.2ms", "-9999999999h"]
        {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stream_answers() {
        let s = parse_stream(br#"{"new":null,"deleted":[{"id":3,"type":"ban","scope":"Ip","value":"192.0.2.1","duration":"-2s","origin":"cscli","scenario":"x"}]}"#).unwrap();
        assert!(s.new.is_empty());
        assert_eq!(s.deleted[0].id, Some(3));
        assert_eq!(s.deleted[0].value, "192.0.2.1");
        // Lenient inside: a decision with a mistyped field is read, then judged by the caller.
        let s = parse_stream(br#"{"new":[{"id":"x","value":7}],"deleted":[]}"#).unwrap();
        assert_eq!(s.new[0], RawDecision::default());
        for garbage in [&b"<html>oops</html>"[..], b"[]", b"{}", br#"{"new":[]}"#, br#"{"new":5,"deleted":[]}"#, b""] {
            assert!(
                matches!(parse_stream(garbage), Err(LapiError::Garbage(_))),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
}
