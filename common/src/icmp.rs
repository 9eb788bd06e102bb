//! Which ICMP and ICMPv6 messages a VoIP host needs (step 5 of the decision chain).
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

    /// `classify` passes exactly `pass`, treats `echo` as an echo request and denies the rest.
    fn check_table(family: &str, classify: fn(u8) -> IcmpClass, pass: &[u8], echo: u8) {
        for t in 0..=255u8 {
            let want = match t {
                t if pass.contains(&t) => IcmpClass::Pass,
                t if t == echo => IcmpClass::Echo,
                _ => IcmpClass::Deny,
            };
            assert_eq!(classify(t), want, "{family} type {t}");
        }
    }

    #[test]
    fn v4_table() {
        check_table("ICMPv4", classify_v4, &[0, 3, 11], 8);
    }

    #[test]
    fn v6_table() {
        check_table("ICMPv6", classify_v6, &[1, 2, 3, 129, 133, 134, 135, 136, 137], 128);
    }
}
