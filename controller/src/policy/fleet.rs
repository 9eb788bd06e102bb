//! `[fleet.crowdsec]`: share bans across hosts through CrowdSec's Local API (LAPI). voipwall
//! pulls the LAPI's decisions as a bouncer (`api_key_file`, from `cscli bouncers add`) and
//! pushes its own bans as alerts as a machine (`machine_file`, from `cscli machines add -f`).

use std::{path::PathBuf, time::Duration};

use serde::Serialize;

/// `[fleet.crowdsec]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Crowdsec {
    /// The LAPI's base URL, without a trailing slash (`http://10.0.0.5:8080`).
    pub url: String,
    /// The bouncer API key's file (pull).
    pub api_key_file: Option<PathBuf>,
    /// The machine's credentials file (push): `cscli machines add NAME --password P -f FILE`
    /// writes it (`url`, `login`, `password`).
    pub machine_file: Option<PathBuf>,
    pub pull: bool,
    pub push: bool,
    /// How often decisions are pulled (and, while the LAPI fails, the first retry; retries
    /// back off to 30 s).
    #[serde(with = "super::humantime_serde_secs")]
    pub interval: Duration,
    /// Per request.
    #[serde(with = "super::humantime_serde_secs")]
    pub timeout: Duration,
    /// How often the whole set is asked for (`startup=true`) even when deltas flow: a decision
    /// written in a transaction that ended after a pull, with an earlier creation time, is never
    /// in a delta (the LAPI selects deltas by creation time), so the full set repairs it.
    #[serde(with = "super::humantime_serde_secs")]
    pub resync: Duration,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `lists`, ...); empty: all.
    pub origins: Vec<String>,
    /// Only decisions whose scenario contains one of these; empty: all.
    pub scenarios: Vec<String>,
    /// A PEM file of the CA that signed the LAPI's certificate (`https` URLs).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (tests and labs only).
    pub insecure_skip_verify: bool,
    /// Bans waiting to be pushed while the LAPI is unreachable; beyond it the oldest are
    /// dropped (and counted).
    pub push_queue: usize,
}

/// Parse the text of a machine credentials file as `cscli machines add -f` writes it
/// (`url: ...`, `login: ...`, `password: ...`, one per line): (login, password).
pub fn machine_credentials(text: &str) -> Result<(String, String), String> {
    let mut login = None;
    let mut password = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
        match k.trim() {
            "login" => login = Some(v),
            "password" => password = Some(v),
            _ => {}
        }
    }
    match (login, password) {
        (Some(l), Some(p)) if !l.is_empty() && !p.is_empty() => Ok((l, p)),
        _ => Err("it needs `login:` and `password:` lines (as `cscli machines add NAME -f FILE` writes)".into()),
    }
}

/// The bouncer key in a key file: its first non-empty line.
pub fn api_key(text: &str) -> Result<String, String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "the file is empty (write the key `cscli bouncers add NAME` printed)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_as_cscli_writes_them() {
        let text = "url: http://127.0.0.1:8080\nlogin: voipwall-a\npassword: s3cret\n";
        assert_eq!(machine_credentials(text), Ok(("voipwall-a".into(), "s3cret".into())));
        assert!(machine_credentials("url: x\nlogin: a\n").is_err());
        assert_eq!(api_key("\n  abc123 \n"), Ok("abc123".into()));
        assert!(api_key(" \n").is_err());
    }
}
