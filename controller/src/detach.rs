//! `voipwall detach`: take voipwall off an interface when no daemon runs for it (after a
//! `--keep-attached` stop, a crash, or before removing the package). The programs stay attached
//! through their pinned links, so unpinning those links detaches them; `--purge` also removes
//! the pinned maps (lists, bans, known peers, counters) and the interface's state folder.
//! A running daemon owns all of this: it is refused unless `--stop`, which sends it SIGTERM
//! and waits until it has let go of the interface.

use std::{
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{paths, system};

pub struct DetachArgs {
    pub iface: String,
    pub socket: PathBuf,
    pub pin_root: PathBuf,
    pub state_root: PathBuf,
    pub purge: bool,
    pub stop: bool,
}

/// How long a stopped daemon may take to let go of the interface.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Detach (and purge); the lines to print, or the message of what went wrong.
pub fn detach(a: &DetachArgs) -> Result<Vec<String>, String> {
    let lock_path = a.socket.with_extension("lock");
    let mut out = Vec::new();
    let _lock = match system::lock_interface(&lock_path, &a.iface) {
        Ok(l) => l,
        Err(system::CheckError::AlreadyRunning { .. }) if !a.stop => {
            return Err(format!(
                "a voipwall daemon runs for {} (it holds {}): stop it first (the packaged unit: \
                 `systemctl stop voipwall@{}`), or pass --stop",
                a.iface,
                lock_path.display(),
                a.iface
            ));
        }
        Err(system::CheckError::AlreadyRunning { .. }) => {
            let pid = daemon_pid(&a.socket)?;
            // SAFETY: a signal to the process serving this interface's control socket.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                return Err(format!("stopping the daemon (pid {pid}): {}", std::io::Error::last_os_error()));
            }
            let started = Instant::now();
            let lock = loop {
                match system::lock_interface(&lock_path, &a.iface) {
                    Ok(l) => break l,
                    Err(_) if started.elapsed() < STOP_WAIT => std::thread::sleep(Duration::from_millis(50)),
                    Err(_) => {
                        return Err(format!("the daemon (pid {pid}) did not stop within {} s", STOP_WAIT.as_secs()));
                    }
                }
            };
            out.push(format!("stopped the daemon (pid {pid})"));
            lock
        }
        Err(e) => return Err(format!("{}: {e}", lock_path.display())),
    };
    // The interface is ours until the lock goes: no daemon can start meanwhile.
    let pins = paths::pin_dir(&a.pin_root, &a.iface);
    for (pin, what) in [(paths::XDP_LINK_PIN, "the XDP program"), (paths::TC_LINK_PIN, "the TC egress program")] {
        let path = pins.join(pin);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| format!("unpinning {}: {e}", path.display()))?;
            out.push(format!("detached {what} from {} (unpinned {})", a.iface, path.display()));
        }
    }
    if a.purge {
        for (dir, what) in [(pins.clone(), "pinned maps"), (paths::state_dir(&a.state_root, &a.iface), "state")] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
                out.push(format!("removed the {what} ({})", dir.display()));
            }
        }
        for file in [a.socket.clone(), lock_path.clone()] {
            let _ = std::fs::remove_file(file);
        }
    }
    if out.is_empty() {
        out.push(format!("nothing of voipwall on {} (no links pinned in {})", a.iface, pins.display()));
    }
    Ok(out)
}

/// The PID of the process listening on the control socket (SO_PEERCRED of a connection).
fn daemon_pid(socket: &Path) -> Result<i32, String> {
    let s = UnixStream::connect(socket).map_err(|e| {
        format!("the daemon holds the interface but its socket {} does not answer: {e}", socket.display())
    })?;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred of `len` bytes, as SO_PEERCRED writes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        return Err(format!("who serves {}: {}", socket.display(), std::io::Error::last_os_error()));
    }
    Ok(cred.pid)
}
