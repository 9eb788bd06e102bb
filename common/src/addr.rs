//! Source addresses as the rate limiter, the ban table and the flow table see them: 16 bytes in
//! network byte order, IPv4 as an IPv4-mapped IPv6 address (RFC 4291 section 2.5.5.2) so that
//! one key type serves both families.

/// `::ffff:a.b.c.d` for an IPv4 address.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

/// The IPv4 address inside an IPv4-mapped address, if it is one.
#[inline(always)]
pub fn as_v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff { Some([a[12], a[13], a[14], a[15]]) } else { None }
}

/// Keep the first `prefix` bits of an IPv6 address (`prefix` >= 128 keeps all).
///
/// Works on two big-endian `u64` halves so that the eBPF program does two masks instead of a
/// sixteen-step loop.
#[inline(always)]
pub fn mask_prefix(addr: [u8; 16], prefix: u32) -> [u8; 16] {
    let hi = u64::from_be_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
    let lo = u64::from_be_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]);
    let (hi, lo) = if prefix >= 128 {
        (hi, lo)
    } else if prefix >= 64 {
        // prefix == 64 would shift by 64: handled by the explicit zero.
        let keep = prefix - 64;
        (hi, if keep == 0 { 0 } else { lo & (u64::MAX << (64 - keep)) })
    } else if prefix == 0 {
        (0, 0)
    } else {
        (hi & (u64::MAX << (64 - prefix)), 0)
    };
    let h = hi.to_be_bytes();
    let l = lo.to_be_bytes();
    [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapping_round_trips() {
        let m = v4_mapped([192, 0, 2, 7]);
        assert_eq!(as_v4(&m), Some([192, 0, 2, 7]));
        let mut v6 = m;
        v6[0] = 0x20;
        assert_eq!(as_v4(&v6), None);
    }

    #[test]
    fn masks_every_prefix_length_like_a_bit_loop() {
        let addr: [u8; 16] =
            [0x20, 0x01, 0x0d, 0xb8, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10];
        for prefix in 0..=130u32 {
            let mut expected = addr;
            for bit in 0..128u32 {
                if bit >= prefix {
                    expected[(bit / 8) as usize] &= !(0x80u8 >> (bit % 8));
                }
            }
            assert_eq!(mask_prefix(addr, prefix), expected, "prefix /{prefix}");
        }
    }
}
