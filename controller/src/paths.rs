//! Every filesystem location voipwall uses, in one place.

use std::path::{Path, PathBuf};

/// Default root of the pinned maps and links; one folder per interface below it.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/voipwall";
/// Default directory of the persisted lists, bans and policy state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/voipwall";
/// Directory of the control sockets (`IFACE.sock`, root only).
pub const SOCKET_DIR: &str = "/run/voipwall";
/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Pin link names inside an interface's pin folder.
pub const XDP_LINK_PIN: &str = "link_xdp";
pub const TC_LINK_PIN: &str = "link_tc";

/// An interface name as a single bpffs/file name. bpffs refuses dots (`eth0.100`), so every
/// byte outside `[A-Za-z0-9-]` (including `_`, to stay injective) becomes `_XX` in hex.
pub fn encode_iface(iface: &str) -> String {
    let mut out = String::with_capacity(iface.len());
    for b in iface.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The interface name of a pin folder name ([`encode_iface`] reversed); `None` for a name
/// `encode_iface` cannot have written.
pub fn decode_iface(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'-' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    let iface = String::from_utf8(out).ok()?;
    (encode_iface(&iface) == name).then_some(iface)
}

/// The pin folder of one interface.
pub fn pin_dir(root: &Path, iface: &str) -> PathBuf {
    root.join(encode_iface(iface))
}

/// The control socket of one interface's daemon.
pub fn socket_path(iface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{}.sock", encode_iface(iface)))
}

/// The state folder of one interface (below the state dir).
pub fn state_dir(root: &Path, iface: &str) -> PathBuf {
    root.join(encode_iface(iface))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pin_folder_names_decode_to_their_interface() {
        for iface in ["eth0", "eth0.100", "bond0_x", "veth-a1"] {
            assert_eq!(super::decode_iface(&super::encode_iface(iface)).as_deref(), Some(iface));
        }
        for bad in ["eth0.100", "_zz", "a_2", "eth0_2E100"] {
            assert_eq!(super::decode_iface(bad), None, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn encoding_is_bpffs_safe_and_injective() {
        assert_eq!(encode_iface("eth0"), "eth0");
        assert_eq!(encode_iface("eth0.100"), "eth0_2e100");
        assert_eq!(encode_iface("vw_a"), "vw_5fa");
        assert_ne!(encode_iface("a.b"), encode_iface("a_2eb"));
        for name in ["eth0.100", "br-lan", "wg:0", "a b"] {
            assert!(!encode_iface(name).contains('.'));
            assert!(encode_iface(name).bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
}
