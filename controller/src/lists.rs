//! The allow and block lists as the operator sees them: each CIDR may come from the policy file,
//! from the CLI (with reason, who, created, expiry), or both. The kernel holds one entry per
//! CIDR; this store decides when it must be inserted or removed, and what is persisted.
//!
//! Reload order keeps every packet's verdict that of the old or the new policy: new entries are
//! added before the generation flip, retired ones removed after it (see `daemon::Core::reload`).

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::ListKind;

/// A CLI-made entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualEntry {
    pub reason: Option<String>,
    pub who: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` = permanent.
    pub expires: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sources {
    policy: bool,
    manual: Option<ManualEntry>,
}

/// One row of `voipwall list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRow {
    pub cidr: IpNet,
    /// "policy", "manual" or "policy+manual".
    pub origin: String,
    #[serde(flatten)]
    pub manual: Option<ManualEntry>,
}

/// What persists across restarts: the manual entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedLists {
    pub allow: BTreeMap<IpNet, ManualEntry>,
    pub block: BTreeMap<IpNet, ManualEntry>,
}

#[derive(Clone, Debug, Default)]
pub struct Lists {
    allow: BTreeMap<IpNet, Sources>,
    block: BTreeMap<IpNet, Sources>,
}

/// Kernel changes a list operation needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListDiff {
    pub insert: Vec<(ListKind, IpNet)>,
    pub remove: Vec<(ListKind, IpNet)>,
}

impl Lists {
    fn map(&self, kind: ListKind) -> &BTreeMap<IpNet, Sources> {
        match kind {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    fn map_mut(&mut self, kind: ListKind) -> &mut BTreeMap<IpNet, Sources> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Block => &mut self.block,
        }
    }

    /// Restore persisted manual entries, dropping those already expired.
    pub fn restore(persisted: PersistedLists, now: u64) -> Self {
        let mut l = Self::default();
        for (kind, entries) in [(ListKind::Allow, persisted.allow), (ListKind::Block, persisted.block)] {
            for (net, e) in entries {
                if e.expires.is_none_or(|x| x > now) {
                    l.map_mut(kind).entry(net).or_default().manual = Some(e);
                }
            }
        }
        l
    }

    pub fn persisted(&self) -> PersistedLists {
        let pick = |m: &BTreeMap<IpNet, Sources>| {
            m.iter().filter_map(|(n, s)| s.manual.clone().map(|e| (*n, e))).collect()
        };
        PersistedLists { allow: pick(&self.allow), block: pick(&self.block) }
    }

    /// Replace the policy's entries of a list. Returns CIDRs that must enter the kernel (new)
    /// and those that must leave it (no origin left).
    pub fn set_policy(&mut self, kind: ListKind, nets: &[IpNet]) -> ListDiff {
        let mut diff = ListDiff::default();
        let map = self.map_mut(kind);
        for (net, s) in map.iter_mut() {
            if s.policy && !nets.contains(net) {
                s.policy = false;
                if s.manual.is_none() {
                    diff.remove.push((kind, *net));
                }
            }
        }
        map.retain(|_, s| s.policy || s.manual.is_some());
        for net in nets {
            let s = map.entry(*net).or_default();
            if !s.policy && s.manual.is_none() {
                diff.insert.push((kind, *net));
            }
            s.policy = true;
        }
        diff
    }

    /// Add (or refresh) a manual entry; true if the kernel needs the CIDR inserted.
    pub fn add_manual(&mut self, kind: ListKind, net: IpNet, entry: ManualEntry) -> bool {
        let s = self.map_mut(kind).entry(net).or_default();
        let new = !s.policy && s.manual.is_none();
        s.manual = Some(entry);
        new
    }

    /// Remove a manual entry. `Err` if there is none (the CIDR may still be a policy entry);
    /// `Ok(true)` if the kernel entry must go too.
    pub fn remove_manual(&mut self, kind: ListKind, net: &IpNet) -> Result<bool, RemoveError> {
        let map = self.map_mut(kind);
        let Some(s) = map.get_mut(net) else { return Err(RemoveError::Absent) };
        if s.manual.take().is_none() {
            return Err(RemoveError::PolicyOnly);
        }
        if !s.policy {
            map.remove(net);
            return Ok(true);
        }
        Ok(false)
    }

    /// Manual entries whose TTL has passed.
    pub fn expired(&self, now: u64) -> Vec<(ListKind, IpNet)> {
        let mut out = Vec::new();
        for kind in [ListKind::Allow, ListKind::Block] {
            for (net, s) in self.map(kind) {
                if s.manual.as_ref().and_then(|m| m.expires).is_some_and(|x| x <= now) {
                    out.push((kind, *net));
                }
            }
        }
        out
    }

    /// Every CIDR the kernel must hold for a list.
    pub fn kernel(&self, kind: ListKind) -> Vec<IpNet> {
        self.map(kind).keys().copied().collect()
    }

    pub fn len(&self, kind: ListKind) -> usize {
        self.map(kind).len()
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.block.is_empty()
    }

    /// Any entry of the list contains `addr`.
    pub fn contains(&self, kind: ListKind, addr: IpAddr) -> bool {
        self.map(kind).keys().any(|n| n.contains(&addr))
    }

    pub fn rows(&self, kind: ListKind) -> Vec<ListRow> {
        self.map(kind)
            .iter()
            .map(|(net, s)| ListRow {
                cidr: *net,
                origin: match (s.policy, s.manual.is_some()) {
                    (true, true) => "policy+manual",
                    (true, false) => "policy",
                    _ => "manual",
                }
                .to_string(),
                manual: s.manual.clone(),
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("not on the list")]
    Absent,
    #[error("comes from the policy file; edit the policy and reload to remove it")]
    PolicyOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn manual(expires: Option<u64>) -> ManualEntry {
        ManualEntry { reason: Some("test".into()), who: "root".into(), created: 100, expires }
    }

    #[test]
    fn policy_and_manual_origins_share_one_kernel_entry() {
        let mut l = Lists::default();
        let d = l.set_policy(ListKind::Block, &[net("10.0.0.0/8")]);
        assert_eq!(d.insert, vec![(ListKind::Block, net("10.0.0.0/8"))]);
        assert!(!l.add_manual(ListKind::Block, net("10.0.0.0/8"), manual(None)), "already in the kernel");
        assert!(l.add_manual(ListKind::Block, net("192.0.2.0/24"), manual(None)));
        // The policy drops 10/8: the manual origin keeps it in the kernel.
        let d = l.set_policy(ListKind::Block, &[]);
        assert!(d.remove.is_empty() && d.insert.is_empty(), "{d:?}");
        assert_eq!(l.rows(ListKind::Block)[0].origin, "manual");
        assert_eq!(l.remove_manual(ListKind::Block, &net("10.0.0.0/8")), Ok(true));
        assert_eq!(l.remove_manual(ListKind::Block, &net("10.0.0.0/8")), Err(RemoveError::Absent));
    }

    #[test]
    fn removing_a_policy_entry_by_hand_is_refused() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Allow, &[net("203.0.113.10/32")]);
        assert_eq!(l.remove_manual(ListKind::Allow, &net("203.0.113.10/32")), Err(RemoveError::PolicyOnly));
        assert_eq!(l.kernel(ListKind::Allow), vec![net("203.0.113.10/32")]);
    }

    #[test]
    fn reload_diff_adds_and_removes_only_changes() {
        let mut l = Lists::default();
        l.set_policy(ListKind::Block, &[net("10.0.0.0/8"), net("172.16.0.0/12")]);
        let d = l.set_policy(ListKind::Block, &[net("172.16.0.0/12"), net("192.168.0.0/16")]);
        assert_eq!(d.insert, vec![(ListKind::Block, net("192.168.0.0/16"))]);
        assert_eq!(d.remove, vec![(ListKind::Block, net("10.0.0.0/8"))]);
    }

    #[test]
    fn expiry_and_persistence() {
        let mut l = Lists::default();
        l.add_manual(ListKind::Block, net("192.0.2.0/24"), manual(Some(200)));
        l.add_manual(ListKind::Allow, net("198.51.100.1/32"), manual(None));
        assert!(l.expired(199).is_empty());
        assert_eq!(l.expired(200), vec![(ListKind::Block, net("192.0.2.0/24"))]);
        let p = l.persisted();
        let back = Lists::restore(p.clone(), 150);
        assert_eq!(back.persisted(), p);
        let after = Lists::restore(p, 300);
        assert_eq!(after.len(ListKind::Block), 0, "expired entries are dropped at restore");
        assert_eq!(after.len(ListKind::Allow), 1);
        assert!(after.contains(ListKind::Allow, "198.51.100.1".parse().unwrap()));
    }
}
