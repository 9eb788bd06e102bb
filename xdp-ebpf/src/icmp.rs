//! Step 5: ICMP and ICMPv6 by type (table in `common::icmp`); echo requests pass under the
//! policy's echo rate class.

use common::{
    PolicyConfig,
    icmp::{IcmpClass, classify_v4, classify_v6},
    reason,
};

use crate::{parse::Packet, rate, verdict::Decision};

#[inline(always)]
pub fn decide(pkt: &Packet, generation: u32, cfg: &PolicyConfig) -> Decision {
    let class = if pkt.ipv6 { classify_v6(pkt.icmp_type) } else { classify_v4(pkt.icmp_type) };
    match class {
        IcmpClass::Pass => Decision::of(reason::ICMP),
        IcmpClass::Echo if cfg.echo_class != 0 => {
            match rate::admit(pkt, cfg.echo_class as u8, generation, cfg, false, false) {
                Some(reason::RATE_LIMITED) => Decision::of(reason::ICMP_RATE_LIMITED),
                Some(r) => Decision::of(r),
                None => Decision::of(reason::ICMP),
            }
        }
        IcmpClass::Echo => Decision::of(reason::ICMP),
        IcmpClass::Deny => Decision::of(reason::ICMP_DENIED),
    }
}
