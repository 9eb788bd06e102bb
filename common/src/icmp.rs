//! Which ICMP and ICMPv6 messages a VoIP host needs (issue "data plane v1", step 5).
//!
//! Errors that make TCP/UDP work (destination unreachable with "fragmentation needed",
//! packet too big for IPv6 path MTU discovery, time exceeded), echo replies to the host's own
//! pings and IPv6 neighbour discovery pass; echo requests pass under their own per-source limit;
//! everything else (redirects, router advertisements for IPv4, timestamps, information
//! requests, ...) is dropped.

/// What to do with one ICMP/ICMPv6 type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpClass {
    Pass,
    /// Echo request: passes under the echo rate class.
    Echo,
    Deny,
}

/// ICMPv4 (RFC 792): 0 echo reply, 3 destination unreachable, 11 time exceeded pass; 8 echo.
#[inline(always)]
pub const fn classify_v4(icmp_type: u8) -> IcmpClass {
    match icmp_type {
        0 | 3 | 11 => IcmpClass::Pass,
        8 => IcmpClass::Echo,
        _ => IcmpClass::Deny,
    }
}

/// ICMPv6 (RFC 4443, RFC 4861): 1 destination unreachable, 2 packet too big, 3 time exceeded,
/// 129 echo reply and neighbour discovery 133-137 pass; 128 echo.
#[inline(always)]
pub const fn classify_v6(icmp_type: u8) -> IcmpClass {
    match icmp_type {
        1..=3 | 129 | 133..=137 => IcmpClass::Pass,
        128 => IcmpClass::Echo,
        _ => IcmpClass::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_table() {
        let pass = [0u8, 3, 11];
        for t in 0..=255u8 {
            let want = if pass.contains(&t) {
                IcmpClass::Pass
            } else if t == 8 {
                IcmpClass::Echo
            } else {
                IcmpClass::Deny
            };
            assert_eq!(classify_v4(t), want, "ICMPv4 type {t}");
        }
    }

    #[test]
    fn v6_table() {
        let pass = [1u8, 2, 3, 129, 133, 134, 135, 136, 137];
        for t in 0..=255u8 {
            let want = if pass.contains(&t) {
                IcmpClass::Pass
            } else if t == 128 {
                IcmpClass::Echo
            } else {
                IcmpClass::Deny
            };
            assert_eq!(classify_v6(t), want, "ICMPv6 type {t}");
        }
    }
}
