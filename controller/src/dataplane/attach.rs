//! Attaching the programs to an interface (XDP ingress, TC egress) as bpf_links, pinned so that
//! a restarted daemon adopts them without a gap, and detaching them.

use std::path::{Path, PathBuf};

use aya::programs::{
    ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    loaded_programs,
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use common::programs;
use tracing::{info, warn};

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
    /// True when a restarted daemon found the program already attached and kept its link.
    pub adopted: bool,
    /// The XDP program this daemon's replaced on the adopted link (another build's, or a
    /// migration's), atomically.
    pub replaced: Option<u32>,
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
            && xdp_pin.exists()
        {
            let (program_id, replaced) = self.take_over(xdp_pin, tc_pin).map_err(|e| attach_err(e.to_string()))?;
            let link = PinnedLink::from_pin(xdp_pin).map_err(|e| attach_err(e.to_string()))?;
            let tc = match PinnedLink::from_pin(tc_pin) {
                Ok(l) => LinkHandle::Pinned(l, tc_pin.clone()),
                Err(_) => self.attach_tc(iface, Some(tc_pin))?,
            };
            self.finish_migration()?;
            return Ok(Attachment {
                iface: iface.to_string(),
                mode: remembered.unwrap_or(AttachedMode::Native),
                program_id,
                adopted: true,
                replaced,
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
        self.finish_migration()?;
        Ok(Attachment {
            iface: iface.to_string(),
            mode,
            program_id,
            adopted: false,
            replaced: None,
            xdp: Some(xdp),
            tc: Some(tc),
        })
    }

    /// The links a previous daemon pinned stay; the programs on them are replaced by this
    /// build's, each in one `BPF_LINK_UPDATE` (the old program enforces until that instant),
    /// unless they are already the same code (same tag) and no maps migrate. XDP first: it reads
    /// the flows the egress program records, so new flows land in the maps it reads. Returns the
    /// XDP program id now attached and the one replaced.
    fn take_over(&mut self, xdp_pin: &Path, tc_pin: &Path) -> std::result::Result<(u32, Option<u32>), String> {
        let attached = FdLink::from(PinnedLink::from_pin(xdp_pin).map_err(|e| e.to_string())?)
            .info()
            .map_err(|e| e.to_string())?
            .program_id();
        let migrating = self.migration.is_some();
        let prog: &mut Xdp = program_mut(&mut self.ebpf, programs::INGRESS).map_err(|e| e.to_string())?;
        let ours = prog.info().map_err(|e| e.to_string())?;
        if !migrating && program_info(attached).is_some_and(|p| p.tag() == ours.tag()) {
            return Ok((attached, None));
        }
        let link = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(xdp_pin).map_err(|e| e.to_string())?))
            .map_err(|e| format!("the pinned XDP link: {e}"))?;
        let id = prog.attach_to_link(link).map_err(|e| format!("replacing the XDP program: {e}"))?;
        // The pin keeps the link; this handle only closes its descriptor.
        let fd: FdLink =
            prog.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())?;
        drop(fd);
        if let Ok(pinned) = PinnedLink::from_pin(tc_pin) {
            let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, programs::EGRESS).map_err(|e| e.to_string())?;
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| format!("the pinned TC link: {e}"))?;
            let id = tc.attach_to_link(link).map_err(|e| format!("replacing the TC program: {e}"))?;
            let fd: FdLink =
                tc.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())?;
            drop(fd);
        }
        info!(from = attached, to = ours.id(), "replaced the attached program atomically on its pinned link");
        Ok((ours.id(), Some(attached)))
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

/// The loaded program with this id.
fn program_info(id: u32) -> Option<ProgramInfo> {
    loaded_programs().filter_map(std::result::Result::ok).find(|p| p.id() == id)
}

/// Ids of the maps the XDP program attached through the pinned link in `dir` uses.
pub(super) fn attached_maps(dir: &Path) -> Option<Vec<u32>> {
    let link = PinnedLink::from_pin(dir.join(paths::XDP_LINK_PIN)).ok()?;
    let id = FdLink::from(link).info().ok()?.program_id();
    program_info(id)?.map_ids().ok().flatten()
}
