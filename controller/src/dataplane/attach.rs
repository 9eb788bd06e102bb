//! Attaching the programs to an interface (XDP ingress, TC egress) as bpf_links, pinned so that
//! a restarted daemon adopts them without a gap, and detaching them.

use std::path::{Path, PathBuf};

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
};
use common::programs;
use tracing::warn;

use super::{Dataplane, DataplaneError, Result, program_mut};
use crate::paths;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native if the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// A link kept alive either by its bpffs pin (survives the daemon) or by this process.
enum LinkHandle {
    Pinned(PinnedLink, PathBuf),
    // Held to keep the link attached until dropped.
    Owned(FdLink),
}

impl LinkHandle {
    /// Pin `fd` at `pin`, or keep it owned.
    fn new(fd: FdLink, pin: Option<&Path>) -> Result<Self> {
        Ok(match pin {
            Some(path) => {
                let pinned = fd
                    .pin(path)
                    .map_err(|e| DataplaneError::Pin { path: path.to_path_buf(), detail: e.to_string() })?;
                Self::Pinned(pinned, path.to_path_buf())
            }
            None => Self::Owned(fd),
        })
    }

    /// Unpin (if pinned) and drop the last handle: the program detaches.
    fn release(self) {
        match self {
            Self::Pinned(l, path) => match l.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => warn!(pin = %path.display(), error = %e, "unpinning a link failed; it stays attached"),
            },
            Self::Owned(l) => drop(l),
        }
    }
}

/// The program attached to an interface.
pub struct Attachment {
    pub iface: String,
    pub mode: AttachedMode,
    /// Kernel id of the attached XDP program.
    pub program_id: u32,
    /// True when a restarted daemon found the program already attached and kept it.
    pub adopted: bool,
    xdp: Option<LinkHandle>,
    tc: Option<LinkHandle>,
}

impl Attachment {
    /// Keep the pinned links in place when this handle is dropped (`--keep-attached`, or a
    /// crash): the kernel keeps filtering.
    pub fn forget(mut self) {
        for h in [self.xdp.take(), self.tc.take()].into_iter().flatten() {
            if let LinkHandle::Pinned(l, _) = h {
                std::mem::forget(l);
            }
        }
    }
}

impl Dataplane {
    /// Attach (or adopt) the XDP program and the TC egress program on `iface`. With a pin
    /// folder, links are pinned there and a later daemon adopts them without a gap;
    /// `remembered` is the mode a previous daemon recorded (bpf_link info does not say it).
    pub fn attach(&mut self, iface: &str, mode: XdpModeChoice, remembered: Option<AttachedMode>) -> Result<Attachment> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        let pins = self.pin_dir.clone().map(|dir| (dir.join(paths::XDP_LINK_PIN), dir.join(paths::TC_LINK_PIN)));
        if let Some((xdp_pin, tc_pin)) = &pins
            && let Ok(link) = PinnedLink::from_pin(xdp_pin)
        {
            // A second handle on the same link, only to read its info; dropping it closes a
            // file descriptor and detaches nothing (the pin holds the link).
            let program_id = FdLink::from(PinnedLink::from_pin(xdp_pin).map_err(|e| attach_err(e.to_string()))?)
                .info()
                .map(|i| i.program_id())
                .map_err(|e| attach_err(e.to_string()))?;
            let tc = match PinnedLink::from_pin(tc_pin) {
                Ok(l) => LinkHandle::Pinned(l, tc_pin.clone()),
                Err(_) => self.attach_tc(iface, Some(tc_pin))?,
            };
            return Ok(Attachment {
                iface: iface.to_string(),
                mode: remembered.unwrap_or(AttachedMode::Native),
                program_id,
                adopted: true,
                xdp: Some(LinkHandle::Pinned(link, xdp_pin.clone())),
                tc: Some(tc),
            });
        }
        let (xdp_pin, tc_pin) = match &pins {
            Some((x, t)) => (Some(x.as_path()), Some(t.as_path())),
            None => (None, None),
        };
        let (xdp, mode, program_id) = self.attach_xdp(iface, mode, xdp_pin)?;
        let tc = match self.attach_tc(iface, tc_pin) {
            Ok(tc) => tc,
            Err(e) => {
                xdp.release();
                return Err(e);
            }
        };
        Ok(Attachment { iface: iface.to_string(), mode, program_id, adopted: false, xdp: Some(xdp), tc: Some(tc) })
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        choice: XdpModeChoice,
        pin: Option<&Path>,
    ) -> Result<(LinkHandle, AttachedMode, u32)> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        let prog: &mut Xdp = program_mut(&mut self.ebpf, programs::INGRESS)?;
        let tries: &[(XdpMode, AttachedMode)] = match choice {
            XdpModeChoice::Native => &[(XdpMode::Driver, AttachedMode::Native)],
            XdpModeChoice::Generic => &[(XdpMode::Skb, AttachedMode::Generic)],
            XdpModeChoice::Auto => &[(XdpMode::Driver, AttachedMode::Native), (XdpMode::Skb, AttachedMode::Generic)],
        };
        let mut last = String::new();
        for &(flags, mode) in tries {
            match prog.attach(iface, flags) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
                    let fd: FdLink =
                        link.try_into().map_err(|e: LinkError| attach_err(format!("not a bpf_link: {e}")))?;
                    let program_id = fd.info().map(|i| i.program_id()).map_err(|e| attach_err(e.to_string()))?;
                    return Ok((LinkHandle::new(fd, pin)?, mode, program_id));
                }
                Err(e) => last = format!("{} mode: {e}", mode.as_str()),
            }
        }
        Err(attach_err(last))
    }

    fn attach_tc(&mut self, iface: &str, pin: Option<&Path>) -> Result<LinkHandle> {
        let attach_err = |detail: String| DataplaneError::Attach { iface: iface.to_string(), detail };
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::EGRESS)?;
        let id = prog.attach(iface, TcAttachType::Egress).map_err(|e| attach_err(format!("tc egress: {e}")))?;
        let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| attach_err(format!("tc egress is not a bpf_link (kernel < 6.6?): {e}")))?;
        LinkHandle::new(fd, pin)
    }

    /// Detach: unpin the links (if pinned) and drop them. The maps stay pinned so bans and lists
    /// survive a restart.
    pub fn detach(&mut self, mut attachment: Attachment) {
        for h in [attachment.xdp.take(), attachment.tc.take()].into_iter().flatten() {
            h.release();
        }
    }
}
