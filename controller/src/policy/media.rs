//! `[media]` and a rule's `media` / `pinhole_full` keys: media ports open to everyone (today's
//! default) or in pinhole mode, where a packet passes only from the peer of a live call (see the
//! controller's `pinholes` module for how pinholes are learned).

use std::{net::IpAddr, time::Duration};

use serde::Serialize;

/// How a media rule's ports admit packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open to every source, within the rule's rate class.
    #[default]
    Open,
    /// Only from peers with a live pinhole (or replies to media the host sent).
    Pinhole,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(Self::Open),
            "pinhole" => Some(Self::Pinhole),
            _ => None,
        }
    }
}

/// What a pinhole-mode port does while the pinhole table is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Full {
    /// Media without a pinhole drops (the calls that found no room lose their media).
    #[default]
    Drop,
    /// Media without a pinhole is admitted by the rule's rate class, as in open mode.
    Limit,
}

impl Full {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "drop" => Some(Self::Drop),
            "limit" => Some(Self::Limit),
            _ => None,
        }
    }
}

/// `[media]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Media {
    /// Mode of the rules whose rate class is `media` (the roles' RTP rules) unless a rule says
    /// otherwise. Default `open`.
    pub mode: Mode,
    /// What pinhole-mode ports do while the table is full, unless a rule says. Default `drop`.
    pub full: Full,
    /// Media silence after which a pinhole closes. Default 30 s (RTP sends 50 packets a second;
    /// even a held call's RTCP arrives every few seconds).
    #[serde(with = "super::humantime_serde_secs")]
    pub idle: Duration,
    /// How long a pinhole waits for its first packet after the SDP that opened it. Default
    /// 3 min: a phone may ring that long before it answers.
    #[serde(with = "super::humantime_serde_secs")]
    pub setup: Duration,
    /// How long a pinhole stays after BYE, CANCEL or a failure response (packets in flight, the
    /// last RTCP report). Default 5 s.
    #[serde(with = "super::humantime_serde_secs")]
    pub grace: Duration,
    /// The host's media addresses as its own SDP writes them, besides the address it sends SIP
    /// from (a host behind a 1:1 NAT writes its public address). Default none.
    pub addresses: Vec<IpAddr>,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            mode: Mode::Open,
            full: Full::Drop,
            idle: Duration::from_secs(30),
            setup: Duration::from_secs(180),
            grace: Duration::from_secs(5),
            addresses: Vec::new(),
        }
    }
}
