//! The controller's mirror of the kernel's ban table: what each ban is (source, class, level,
//! observed rate, until), for `voipwall list banned`, metrics, the sweeper and persistence. The
//! kernel inserts bans itself; this mirror learns them from ban events, from a walk of the table
//! at startup, and from restores.

use std::collections::BTreeMap;

use common::{
    BanEntry, SourceKey,
    addr::{as_v4, v4_mapped},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// One ban.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The banned source: an IPv4 /32 or an IPv6 prefix (the aggregation prefix).
    pub source: IpNet,
    /// Rate class that fired ("" when unknown, e.g. learned from the table).
    pub class: String,
    /// 1 or 2; 0 when unknown.
    pub level: u8,
    /// Observed packets per second when it fired.
    pub rate_pps: u32,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: u64,
}

/// The kernel key of a ban source.
pub fn key_of(source: &IpNet) -> SourceKey {
    match source {
        IpNet::V4(n) => v4_mapped(n.network().octets()),
        IpNet::V6(n) => n.network().octets(),
    }
}

/// The source a kernel key stands for; IPv6 keys are `prefix_len` long.
pub fn source_of(key: &SourceKey, ipv6_prefix: u8) -> IpNet {
    match as_v4(key) {
        Some(a) => IpNet::V4(Ipv4Net::new(a.into(), 32).expect("/32")),
        None => IpNet::V6(Ipv6Net::new((*key).into(), ipv6_prefix.min(128)).expect("prefix <= 128").trunc()),
    }
}

/// Monotonic-clock nanoseconds (the data plane's) to Unix seconds, and back.
pub fn mono_to_unix(mono_ns: u64, now_mono_ns: u64, now_unix: u64) -> u64 {
    if mono_ns >= now_mono_ns {
        now_unix + (mono_ns - now_mono_ns).div_ceil(1_000_000_000)
    } else {
        now_unix.saturating_sub((now_mono_ns - mono_ns) / 1_000_000_000)
    }
}

pub fn unix_to_mono(unix: u64, now_mono_ns: u64, now_unix: u64) -> u64 {
    if unix >= now_unix {
        now_mono_ns + (unix - now_unix) * 1_000_000_000
    } else {
        now_mono_ns.saturating_sub((now_unix - unix) * 1_000_000_000)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Bans {
    by_source: BTreeMap<IpNet, BanRecord>,
}

impl Bans {
    /// Record (or replace) a ban.
    pub fn insert(&mut self, rec: BanRecord) {
        self.by_source.insert(rec.source, rec);
    }

    pub fn remove(&mut self, source: &IpNet) -> Option<BanRecord> {
        self.by_source.remove(source)
    }

    /// Bans whose time has come.
    pub fn expired(&self, now_unix: u64) -> Vec<IpNet> {
        self.by_source.values().filter(|b| b.expires <= now_unix).map(|b| b.source).collect()
    }

    /// Bans inside `net` (for `unblock`).
    pub fn within(&self, net: &IpNet) -> Vec<IpNet> {
        self.by_source.keys().filter(|s| net.contains(*s) || s.contains(net)).copied().collect()
    }

    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    pub fn records(&self) -> Vec<BanRecord> {
        self.by_source.values().cloned().collect()
    }

    /// Learn a ban found in the kernel table that the mirror does not know (raised while no
    /// daemon was running).
    pub fn learn(
        &mut self,
        key: &SourceKey,
        entry: &BanEntry,
        ipv6_prefix: u8,
        class: String,
        now_mono: u64,
        now_unix: u64,
    ) {
        let source = source_of(key, ipv6_prefix);
        self.by_source.entry(source).or_insert_with(|| BanRecord {
            source,
            class,
            level: entry.level,
            rate_pps: entry.rate_pps,
            created: now_unix,
            expires: mono_to_unix(entry.expires_ns, now_mono, now_unix),
        });
    }

    /// Restore persisted bans, dropping expired ones.
    pub fn restore(records: Vec<BanRecord>, now_unix: u64) -> Self {
        Self { by_source: records.into_iter().filter(|r| r.expires > now_unix).map(|r| (r.source, r)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let v4: IpNet = "192.0.2.9/32".parse().unwrap();
        assert_eq!(source_of(&key_of(&v4), 64), v4);
        let v6: IpNet = "2001:db8:bad:1::/64".parse().unwrap();
        assert_eq!(source_of(&key_of(&v6), 64), v6);
    }

    #[test]
    fn clocks_convert_both_ways() {
        let now_mono = 5_000_000_000_000;
        let now_unix = 1_800_000_000;
        let exp = now_mono + 3600 * 1_000_000_000;
        assert_eq!(mono_to_unix(exp, now_mono, now_unix), now_unix + 3600);
        assert_eq!(unix_to_mono(now_unix + 3600, now_mono, now_unix), exp);
        assert_eq!(mono_to_unix(now_mono - 10_000_000_000, now_mono, now_unix), now_unix - 10);
    }

    #[test]
    fn expiry_restore_and_within() {
        let rec = |s: &str, expires| BanRecord {
            source: s.parse().unwrap(),
            class: "signaling".into(),
            level: 1,
            rate_pps: 900,
            created: 0,
            expires,
        };
        let mut b = Bans::default();
        b.insert(rec("192.0.2.1/32", 100));
        b.insert(rec("192.0.2.2/32", 300));
        b.insert(rec("2001:db8::/64", 300));
        assert_eq!(b.expired(100), vec!["192.0.2.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(b.within(&"192.0.2.0/24".parse().unwrap()).len(), 2);
        assert_eq!(b.within(&"2001:db8::1/128".parse().unwrap()).len(), 1, "a host inside a banned /64");
        let r = Bans::restore(b.records(), 200);
        assert_eq!(r.len(), 2);
    }
}
