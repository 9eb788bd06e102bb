//! Per-source rate limiting, shared by the eBPF program and the controller's tests.
//!
//! Each level is a token bucket written as the generic cell rate algorithm (GCRA, ITU-T I.371):
//! one `u64` "theoretical arrival time" per level instead of a token count and a timestamp, so a
//! packet costs one compare and one add, no division. A level with `emission_ns` = 1e9/pps and
//! `tolerance_ns` = (burst - 1) * `emission_ns` lets exactly `burst` packets through back to back
//! and `pps` per second after that, which is what PortSIP's "level 1 / level 2 packets per
//! second" settings describe ("PortSIP PBX: Security Features", anti-hacking levels).

use crate::{RateClass, RateLevel, RateState};

const SECOND_NS: u64 = 1_000_000_000;
/// Shortest window the observed rate is extrapolated from, so a burst seen within one clock
/// tick does not read as an infinite rate.
const MIN_OBSERVATION_NS: u64 = 100_000_000;

/// The new theoretical arrival time if a packet at `now` conforms to `level`, `None` if it
/// exceeds it. A disabled level (`emission_ns == 0`) always conforms.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, level: &RateLevel) -> Option<u64> {
    if level.emission_ns == 0 {
        return Some(tat);
    }
    let base = if tat > now { tat } else { now };
    if base - now > level.tolerance_ns { None } else { Some(base + level.emission_ns) }
}

/// What the rate limiter decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Within every level.
    Pass,
    /// Above a police-only level: drop this packet, keep the source.
    Police,
    /// Above a level with a ban time: ban the source for `ban_ns`. `level` is 1 or 2.
    Ban { level: u8, ban_ns: u64 },
}

/// Charge one packet at `now` against both levels of `class`.
///
/// Both buckets are charged independently: a packet dropped by a police-only level 1 still
/// counts toward level 2, which measures what the source offers, not what it got through.
/// Level 2 is checked first because it is the more severe one.
#[inline(always)]
pub fn charge(state: &mut RateState, class: &RateClass, now: u64) -> RateDecision {
    let l1 = gcra(state.tat[0], now, &class.levels[0]);
    let l2 = gcra(state.tat[1], now, &class.levels[1]);
    if let Some(t) = l1 {
        state.tat[0] = t;
    }
    if let Some(t) = l2 {
        state.tat[1] = t;
    }
    match (l1, l2) {
        (_, None) if class.levels[1].ban_ns > 0 => RateDecision::Ban { level: 2, ban_ns: class.levels[1].ban_ns },
        (None, _) if class.levels[0].ban_ns > 0 => RateDecision::Ban { level: 1, ban_ns: class.levels[0].ban_ns },
        (None, _) | (_, None) => RateDecision::Police,
        _ => RateDecision::Pass,
    }
}

/// Count one packet in the one-second observation window used to report a source's rate.
#[inline(always)]
pub fn observe(state: &mut RateState, now: u64) {
    let elapsed = now.saturating_sub(state.window_start_ns);
    if elapsed >= SECOND_NS {
        let pps = (state.window_packets as u64) * SECOND_NS / elapsed;
        state.last_window_pps = if pps > u32::MAX as u64 { u32::MAX } else { pps as u32 };
        state.window_start_ns = now;
        state.window_packets = 0;
    }
    state.window_packets = state.window_packets.saturating_add(1);
}

/// Packets per second the source is sending: the larger of the last full window and the current
/// one extrapolated (over at least [`MIN_OBSERVATION_NS`]).
#[inline(always)]
pub fn observed_pps(state: &RateState, now: u64) -> u32 {
    let mut elapsed = now.saturating_sub(state.window_start_ns);
    if elapsed < MIN_OBSERVATION_NS {
        elapsed = MIN_OBSERVATION_NS;
    }
    let current = (state.window_packets as u64) * SECOND_NS / elapsed;
    let current = if current > u32::MAX as u64 { u32::MAX } else { current as u32 };
    if current > state.last_window_pps { current } else { state.last_window_pps }
}

/// A level for `pps` packets per second with `burst` back to back, banning for `ban_ns`.
/// `pps` 0 gives a disabled level.
pub const fn level(pps: u64, burst: u64, ban_ns: u64) -> RateLevel {
    if pps == 0 {
        return RateLevel { emission_ns: 0, tolerance_ns: 0, ban_ns: 0 };
    }
    let emission_ns = if SECOND_NS / pps == 0 { 1 } else { SECOND_NS / pps };
    let burst = if burst == 0 { 1 } else { burst };
    RateLevel { emission_ns, tolerance_ns: (burst - 1) * emission_ns, ban_ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const HOUR: u64 = 3600 * SECOND_NS;

    fn portsip_class() -> RateClass {
        RateClass { levels: [level(500, 1000, HOUR), level(2000, 2000, HOUR)], ..Default::default() }
    }

    #[test]
    fn exactly_burst_packets_pass_back_to_back() {
        let lvl = level(500, 1000, 0);
        let mut tat = 0;
        let now = 10 * SECOND_NS;
        for i in 0..1000 {
            tat = gcra(tat, now, &lvl).unwrap_or_else(|| panic!("packet {i} of the burst refused"));
        }
        assert_eq!(gcra(tat, now, &lvl), None, "packet 1001 must exceed the burst");
    }

    #[test]
    fn sustained_rate_at_pps_conforms_forever() {
        let lvl = level(500, 1, 0);
        let mut tat = 0;
        for i in 0..10_000u64 {
            let now = SECOND_NS + i * 2 * MS; // exactly 500 pps
            tat = gcra(tat, now, &lvl).unwrap_or_else(|| panic!("packet {i} refused at 500 pps"));
        }
    }

    #[test]
    fn above_pps_is_refused_after_the_burst() {
        let lvl = level(500, 10, 0);
        let mut tat = 0;
        let mut passed = 0;
        for i in 0..1000u64 {
            let now = SECOND_NS + i * MS; // 1000 pps for one second
            if let Some(t) = gcra(tat, now, &lvl) {
                tat = t;
                passed += 1;
            }
        }
        // 10 of burst, then one every 2 ms over the ~1 s: ~500 + 10.
        assert!((505..=512).contains(&passed), "passed {passed}");
    }

    #[test]
    fn level_one_bans_first_with_portsip_defaults() {
        let class = portsip_class();
        let mut st = RateState::default();
        let now = SECOND_NS;
        for _ in 0..1000 {
            assert_eq!(charge(&mut st, &class, now), RateDecision::Pass);
        }
        assert_eq!(charge(&mut st, &class, now), RateDecision::Ban { level: 1, ban_ns: HOUR });
    }

    #[test]
    fn level_two_bans_when_level_one_only_polices() {
        let class = RateClass { levels: [level(500, 100, 0), level(2000, 400, HOUR)], ..Default::default() };
        let mut st = RateState::default();
        let now = SECOND_NS;
        let mut seen = [0u32; 3];
        let mut first_ban = None;
        for i in 0..1000 {
            match charge(&mut st, &class, now) {
                RateDecision::Pass => seen[0] += 1,
                RateDecision::Police => seen[1] += 1,
                RateDecision::Ban { level, .. } => {
                    seen[2] += 1;
                    assert_eq!(level, 2);
                    first_ban.get_or_insert(i);
                }
            }
        }
        assert_eq!(seen[0], 100, "level 1 burst passes");
        assert_eq!(first_ban, Some(400), "level 2 counts every offered packet");
        assert_eq!(seen[1], 300);
    }

    #[test]
    fn disabled_levels_never_limit() {
        let class = RateClass::default();
        let mut st = RateState::default();
        for _ in 0..100_000 {
            assert_eq!(charge(&mut st, &class, 5), RateDecision::Pass);
        }
    }

    #[test]
    fn observed_rate_tracks_the_offered_rate() {
        let mut st = RateState::default();
        // 3000 pps for 1.5 s.
        let mut now = 0;
        for i in 0..4500u64 {
            now = 7 * SECOND_NS + i * SECOND_NS / 3000;
            observe(&mut st, now);
        }
        let pps = observed_pps(&st, now);
        assert!((2900..=3100).contains(&pps), "observed {pps}");
        // A burst within one tick reads as a large rate, not a division by zero.
        let mut burst = RateState::default();
        for _ in 0..1001 {
            observe(&mut burst, 42 * SECOND_NS);
        }
        assert_eq!(observed_pps(&burst, 42 * SECOND_NS), 10_010);
    }
}
