//! Startup checks and host facts (bpfman's `utils.rs` does the same job): root, bpffs, the
//! interface, the host's own addresses, and the one-daemon-per-interface lock.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    net::IpAddr,
    os::fd::AsRawFd,
    path::Path,
};

/// `statfs` magic of bpffs (linux/magic.h BPF_FS_MAGIC).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("voipwall run needs root (CAP_BPF and CAP_NET_ADMIN); it runs as uid {0}")]
    NotRoot(u32),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("{path} is not on a bpffs and could not be mounted: {detail}")]
    Bpffs { path: String, detail: String },
    #[error("another voipwall daemon already runs on {iface} (lock {path})")]
    AlreadyRunning { iface: String, path: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub fn require_root() -> Result<(), CheckError> {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(CheckError::NotRoot(uid));
    }
    Ok(())
}

pub fn require_interface(iface: &str) -> Result<u32, CheckError> {
    let c = CString::new(iface).map_err(|_| CheckError::NoInterface(iface.to_string()))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(CheckError::NoInterface(iface.to_string())),
        i => Ok(i),
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: valid C string and a zeroed statfs to fill.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Make sure `pin_root` lives on a bpffs: mount one at /sys/fs/bpf if that is where it should be
/// and nothing is mounted there yet. Returns true if this call mounted it.
pub fn ensure_bpffs(pin_root: &Path) -> Result<bool, CheckError> {
    let mut probe = pin_root.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if is_bpffs(&probe) {
        return Ok(false);
    }
    let bpffs = Path::new(crate::paths::BPFFS);
    if pin_root.starts_with(bpffs) && !is_bpffs(bpffs) {
        std::fs::create_dir_all(bpffs)?;
        let src = CString::new("bpf").expect("no NUL");
        let target = CString::new(crate::paths::BPFFS).expect("no NUL");
        // SAFETY: valid C strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(CheckError::Bpffs {
                path: pin_root.display().to_string(),
                detail: std::io::Error::last_os_error().to_string(),
            });
        }
        return Ok(true);
    }
    Err(CheckError::Bpffs {
        path: pin_root.display().to_string(),
        detail: "pass --pin-dir on a bpffs mount (mount -t bpf bpf DIR)".into(),
    })
}

/// Hold an exclusive lock for the daemon of `iface` for as long as the returned file lives.
pub fn lock_interface(lock_path: &Path, iface: &str) -> Result<File, CheckError> {
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(lock_path)?;
    // SAFETY: valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(CheckError::AlreadyRunning { iface: iface.to_string(), path: lock_path.display().to_string() });
    }
    Ok(f)
}

/// Every address configured on this host (all interfaces of this network namespace).
pub fn local_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read sockaddr fields
    // whose family says what they are.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The address of the SSH client behind this process, from `SSH_CONNECTION` / `SSH_CLIENT`.
pub fn ssh_client_from_env() -> Option<IpAddr> {
    for var in ["SSH_CONNECTION", "SSH_CLIENT"] {
        if let Ok(v) = std::env::var(var)
            && let Some(first) = v.split_whitespace().next()
            && let Ok(ip) = first.parse()
        {
            return Some(ip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_a_local_address() {
        assert!(local_addrs().contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
