//! Taking pinned maps over from a voipwall whose map layout differs (an upgrade or a downgrade),
//! without a gap in filtering.
//!
//! A map whose pinned shape (key size, value size, or the entries of a fixed-size map) equals
//! this build's is adopted as it is and shared by the old and the new program. Every other map
//! is created anew under `PIN_DIR/staged/` (bpffs allows no dot in a name), filled from the pinned one while the old program
//! keeps enforcing with the old maps, then the programs are swapped on their pinned links in one
//! `BPF_LINK_UPDATE` each (see `attach`), and only then are the new maps renamed over the old
//! pins. What the old program wrote after the first copy (a ban raised, a flow opened, packets
//! counted) is carried in a second pass after the swap, while the old maps are still open.
//!
//! How contents are carried (the rules `common::LAYOUT_VERSION` documents for changing a map):
//! - keyed maps (hash, LRU, LPM trie): entry by entry, same key; a value that grew is
//!   zero-extended; one that shrank is cut only where the cut bytes are zero;
//! - arrays: by index, up to the smaller entry count, values as above;
//! - bitmaps the program sets (`KNOWN_FILTER`, `FLOW_PORTS`): by index, then after the swap the
//!   old words are ORed in, so a bit the old program set between the passes is kept;
//! - per-CPU counters: added into the new map after the swap, CPU by CPU;
//! - ring buffers and per-CPU scratch: nothing (they hold no state).
//!
//! A map that cannot be carried (its key size changed, or a value would lose non-zero bytes) is
//! refused before anything changes: the error says which map and what to do, the staged maps are
//! removed, and the old program keeps running on the old maps.

use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapType};
use common::maps;
use tracing::{info, warn};

use super::{DataplaneError, Result};

/// Folder (inside the pin folder) where the new maps wait for the swap.
pub const STAGING: &str = "staged";

/// The shape of a map that decides whether it can be shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub key: u32,
    pub value: u32,
    pub entries: u32,
}

/// How a map's contents cross from the old map to the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    ByKey,
    ByIndex,
    Bits,
    Counters,
    Nothing,
}

impl Carry {
    fn of(name: &str, map_type: MapType) -> Self {
        match map_type {
            _ if name == maps::SIP_SCRATCH => Self::Nothing,
            MapType::Array if name == maps::KNOWN_FILTER || name == maps::FLOW_PORTS => Self::Bits,
            MapType::Hash | MapType::LruHash | MapType::LpmTrie => Self::ByKey,
            MapType::Array => Self::ByIndex,
            MapType::PerCpuArray => Self::Counters,
            _ => Self::Nothing,
        }
    }
}

/// One map to migrate.
pub struct Step {
    pub name: &'static str,
    pub old: Shape,
    pub new: Shape,
    carry: Carry,
    /// The pinned (old) map, kept open so the second pass can read it after the swap.
    old_map: MapData,
    /// Entries carried so far.
    pub carried: u64,
}

impl Step {
    /// The staged (new) map.
    fn open_new(&self, staging: &Path) -> std::result::Result<MapData, String> {
        MapData::from_pin(staging.join(self.name)).map_err(|e| format!("opening the new map: {e}"))
    }

    fn refuse(&self, dir: &Path, why: String) -> DataplaneError {
        DataplaneError::Unmigratable { map: self.name, dir: dir.to_path_buf(), why }
    }
}

/// A migration in progress: maps staged and filled, the swap not yet done.
pub struct Migration {
    pub dir: PathBuf,
    /// `LAYOUT_VERSION` of the pinned maps (0: from before the layout was versioned).
    pub from_version: u32,
    pub steps: Vec<Step>,
}

/// The maps whose pinned shape differs from this build's. `want` gives this build's key and
/// value sizes; `fixed` the entries of the maps whose size the program fixes.
pub fn plan(
    dir: &Path,
    want: &StdHashMap<&'static str, (u32, u32)>,
    fixed: &StdHashMap<&'static str, u32>,
    from_version: u32,
) -> Result<Option<Migration>> {
    let mut steps = Vec::new();
    let mut names: Vec<&&'static str> = want.keys().collect();
    names.sort();
    for &name in names {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let refuse = |why: String| DataplaneError::Unmigratable { map: name, dir: dir.to_path_buf(), why };
        let old_map = MapData::from_pin(&path).map_err(|e| refuse(format!("opening the pin: {e}")))?;
        let info = old_map.info().map_err(|e| refuse(format!("reading its info: {e}")))?;
        let (key, value) = want[name];
        let old = Shape { key: info.key_size(), value: info.value_size(), entries: info.max_entries() };
        let same_entries = fixed.get(name).is_none_or(|&n| n == old.entries);
        if old.key == key && old.value == value && same_entries {
            continue;
        }
        let map_type = info.map_type().map_err(|e| refuse(format!("reading its type: {e}")))?;
        let carry = Carry::of(name, map_type);
        if carry == Carry::ByKey && old.key != key {
            return Err(refuse(format!(
                "its key changed from {} to {key} bytes and this version has no conversion for it",
                old.key
            )));
        }
        let new = Shape { key, value, entries: fixed.get(name).copied().unwrap_or(old.entries) };
        steps.push(Step { name, old, new, carry, old_map, carried: 0 });
    }
    Ok((!steps.is_empty()).then(|| Migration { dir: dir.to_path_buf(), from_version, steps }))
}

impl Migration {
    pub fn staging(&self) -> PathBuf {
        self.dir.join(STAGING)
    }

    /// Names of the maps that move, for the loader's pin paths.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.iter().map(|s| s.name)
    }

    /// First pass, before the swap: everything the old maps hold goes into the new ones.
    pub fn carry(&mut self) -> Result<()> {
        let staging = self.staging();
        for step in &mut self.steps {
            let carried = step.open_new(&staging).and_then(|new_map| {
                let old = step.old_map.fd().as_fd().as_raw_fd();
                let new = new_map.fd().as_fd().as_raw_fd();
                match step.carry {
                    Carry::ByKey => copy_keyed(old, new, step, Overwrite::Yes),
                    Carry::ByIndex | Carry::Bits => copy_indexed(old, new, step, Merge::Replace),
                    Carry::Counters | Carry::Nothing => Ok(0),
                }
            });
            step.carried = carried.map_err(|why| step.refuse(&self.dir, why))?;
        }
        Ok(())
    }

    /// Second pass, after the swap: what the old program wrote since the first pass (keyed
    /// entries the new maps lack, bits of the bitmaps, every counter), then the new maps
    /// replace the old pins.
    pub fn finish(self) -> Result<()> {
        let staging = self.staging();
        let cpus = possible_cpus()?;
        let mut moved = Vec::new();
        for mut step in self.steps {
            let path = staging.join(step.name);
            let carried = step.open_new(&staging).and_then(|new_map| {
                let old = step.old_map.fd().as_fd().as_raw_fd();
                let new = new_map.fd().as_fd().as_raw_fd();
                match step.carry {
                    Carry::ByKey => copy_keyed(old, new, &step, Overwrite::No).map(|n| step.carried + n),
                    Carry::Bits => copy_indexed(old, new, &step, Merge::Or).map(|n| step.carried.max(n)),
                    Carry::Counters => add_counters(old, new, &step, cpus),
                    Carry::ByIndex | Carry::Nothing => Ok(step.carried),
                }
            });
            step.carried = carried.map_err(|why| step.refuse(&self.dir, why))?;
            std::fs::rename(&path, self.dir.join(step.name))
                .map_err(|e| DataplaneError::Pin { path: path.clone(), detail: format!("moving into place: {e}") })?;
            moved.push(format!(
                "{} (key {}/value {}/{} entries -> {}/{}/{}, {} carried)",
                step.name,
                step.old.key,
                step.old.value,
                step.old.entries,
                step.new.key,
                step.new.value,
                step.new.entries,
                step.carried
            ));
        }
        if let Err(e) = std::fs::remove_dir(&staging) {
            warn!(path = %staging.display(), error = %e, "removing the emptied migration folder failed");
        }
        info!(
            from = self.from_version,
            to = common::LAYOUT_VERSION,
            maps = %moved.join(", "),
            "migrated the pinned maps to this version's layout"
        );
        Ok(())
    }

    /// Give up before the swap: remove the staged maps; the pinned ones stay as they were.
    pub fn abandon(&self) {
        remove_staging(&self.dir);
    }
}

/// `LAYOUT_VERSION` of the maps pinned in `dir`: what their `ACTIVE` records, 0 if it has no
/// slot for it (pinned before the layout was versioned) or cannot be read.
pub fn pinned_version(dir: &Path) -> u32 {
    let Ok(map) = MapData::from_pin(dir.join(maps::ACTIVE)) else { return 0 };
    let Ok(info) = map.info() else { return 0 };
    if info.max_entries() <= common::active::LAYOUT || info.value_size() != 4 {
        return 0;
    }
    let mut value = [0u8; 4];
    match sys::lookup(map.fd().as_fd().as_raw_fd(), &common::active::LAYOUT.to_ne_bytes(), &mut value) {
        Ok(true) => u32::from_ne_bytes(value),
        _ => 0,
    }
}

/// Remove `DIR/staged` and the pins in it (a migration abandoned or interrupted before its
/// swap).
pub fn remove_staging(dir: &Path) {
    let staging = dir.join(STAGING);
    if staging.exists()
        && let Err(e) = std::fs::remove_dir_all(&staging)
    {
        warn!(path = %staging.display(), error = %e, "removing staged maps failed");
    }
}

/// A migration interrupted after its swap (the daemon died between the link update and the
/// renames): the attached program uses the staged maps, so they are moved into place now. One
/// interrupted before the swap is removed.
pub fn resume_interrupted(dir: &Path, attached_maps: Option<Vec<u32>>) -> Result<()> {
    let staging = dir.join(STAGING);
    let Ok(entries) = std::fs::read_dir(&staging) else { return Ok(()) };
    let staged: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let in_use = |p: &PathBuf| {
        let id = MapData::from_pin(p).ok().and_then(|m| m.info().ok()).map(|i| i.id());
        id.is_some_and(|id| attached_maps.as_ref().is_some_and(|ids| ids.contains(&id)))
    };
    if staged.iter().any(in_use) {
        for p in &staged {
            let to = dir.join(p.file_name().expect("a pin has a name"));
            std::fs::rename(p, &to)
                .map_err(|e| DataplaneError::Pin { path: p.clone(), detail: format!("moving into place: {e}") })?;
        }
        info!(path = %staging.display(), maps = staged.len(), "finished a migration a previous daemon left after its swap");
    } else if !staged.is_empty() {
        info!(path = %staging.display(), "removing the maps of a migration a previous daemon left before its swap");
    }
    remove_staging(dir);
    Ok(())
}

/// A value of `from` bytes as a value of `to` bytes: zero-extended, or cut when the cut bytes
/// are all zero. `None` when the cut would lose data.
pub fn convert(value: &[u8], to: usize) -> Option<Vec<u8>> {
    let mut out = value.to_vec();
    if to < out.len() {
        if out[to..].iter().any(|&b| b != 0) {
            return None;
        }
        out.truncate(to);
    } else {
        out.resize(to, 0);
    }
    Some(out)
}

/// Add the per-CPU `old` counters (u64 words) into `new`, `cpus` slots of `old_size` and
/// `new_size` bytes each (rounded up to 8, as the kernel lays per-CPU values out).
pub fn add_words(new: &mut [u8], old: &[u8], old_size: usize, new_size: usize, cpus: usize) {
    let (os, ns) = (old_size.next_multiple_of(8), new_size.next_multiple_of(8));
    let words = old_size.min(new_size) / 8;
    for cpu in 0..cpus {
        for w in 0..words {
            let o = cpu * os + w * 8;
            let n = cpu * ns + w * 8;
            let a = u64::from_ne_bytes(old[o..o + 8].try_into().expect("8 bytes"));
            let b = u64::from_ne_bytes(new[n..n + 8].try_into().expect("8 bytes"));
            new[n..n + 8].copy_from_slice(&a.wrapping_add(b).to_ne_bytes());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overwrite {
    Yes,
    No,
}

/// How an array's words meet what the new map holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Merge {
    Replace,
    Or,
}

// The copies below answer the reason a map cannot be carried; the caller names the map.
type Carried = std::result::Result<u64, String>;

fn copy_keyed(old: RawFd, new: RawFd, step: &Step, overwrite: Overwrite) -> Carried {
    let mut key = vec![0u8; step.old.key as usize];
    let mut next = vec![0u8; step.old.key as usize];
    let mut value = vec![0u8; step.old.value as usize];
    let mut first = true;
    let mut n = 0;
    let flags = if overwrite == Overwrite::Yes { sys::BPF_ANY } else { sys::BPF_NOEXIST };
    // A live map may be walked again from its start when the key in hand is deleted under us;
    // the walk is bounded all the same.
    let bound = u64::from(step.old.entries).saturating_mul(4).saturating_add(1024);
    for _ in 0..bound {
        if !sys::next_key(old, (!first).then_some(&key[..]), &mut next).map_err(|e| io("walk", e))? {
            return Ok(n);
        }
        first = false;
        key.copy_from_slice(&next);
        if !sys::lookup(old, &key, &mut value).map_err(|e| io("read", e))? {
            continue;
        }
        let v = convert(&value, step.new.value as usize).ok_or_else(|| lossy(step))?;
        match sys::update(new, &key, &v, flags) {
            Ok(()) => n += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io("write", e)),
        }
    }
    Ok(n)
}

fn copy_indexed(old: RawFd, new: RawFd, step: &Step, merge: Merge) -> Carried {
    let mut value = vec![0u8; step.old.value as usize];
    let mut current = vec![0u8; step.new.value as usize];
    let mut n = 0;
    for i in 0..step.old.entries.min(step.new.entries) {
        let key = i.to_ne_bytes();
        if !sys::lookup(old, &key, &mut value).map_err(|e| io("read", e))? {
            continue;
        }
        if value.iter().all(|&b| b == 0) {
            continue;
        }
        let mut v = convert(&value, step.new.value as usize).ok_or_else(|| lossy(step))?;
        if merge == Merge::Or {
            sys::lookup(new, &key, &mut current).map_err(|e| io("read", e))?;
            if !or_into(&mut v, &current) {
                continue;
            }
        }
        sys::update(new, &key, &v, sys::BPF_ANY).map_err(|e| io("write", e))?;
        n += 1;
    }
    Ok(n)
}

/// `word |= current`; whether `word` held a bit that `current` lacked (a write is needed).
pub fn or_into(word: &mut [u8], current: &[u8]) -> bool {
    let new_bits = word.iter().zip(current).any(|(a, b)| a & !b != 0);
    word.iter_mut().zip(current).for_each(|(a, b)| *a |= b);
    new_bits
}

fn add_counters(old: RawFd, new: RawFd, step: &Step, cpus: usize) -> Carried {
    let (os, ns) = (step.old.value as usize, step.new.value as usize);
    let mut a = vec![0u8; os.next_multiple_of(8) * cpus];
    let mut b = vec![0u8; ns.next_multiple_of(8) * cpus];
    let mut n = 0;
    for i in 0..step.old.entries.min(step.new.entries) {
        let key = i.to_ne_bytes();
        if !sys::lookup(old, &key, &mut a).map_err(|e| io("read", e))? || a.iter().all(|&x| x == 0) {
            continue;
        }
        sys::lookup(new, &key, &mut b).map_err(|e| io("read", e))?;
        add_words(&mut b, &a, os, ns, cpus);
        sys::update(new, &key, &b, sys::BPF_ANY).map_err(|e| io("write", e))?;
        n += 1;
    }
    Ok(n)
}

fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::Pin { path: PathBuf::from(what), detail: e.to_string() })
}

fn io(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

fn lossy(step: &Step) -> String {
    format!(
        "an entry's value would shrink from {} to {} bytes and lose data that this version does not know",
        step.old.value, step.new.value
    )
}

/// The four map commands of bpf(2) on raw bytes: migration handles values whose size is known
/// only at run time, which aya's typed maps do not.
mod sys {
    use std::os::fd::RawFd;

    pub const BPF_ANY: u64 = 0;
    pub const BPF_NOEXIST: u64 = 1;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

    /// `union bpf_attr` as the element commands use it.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn call(cmd: libc::c_long, attr: &ElemAttr) -> std::io::Result<()> {
        // SAFETY: `attr` is a valid bpf_attr prefix for the element commands, and the pointers
        // it carries point to live buffers of the sizes the map was created with (the callers
        // size them from the map's info).
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const ElemAttr, size_of::<ElemAttr>()) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    fn attr(fd: RawFd, key: *const u8, value: *const u8, flags: u64) -> ElemAttr {
        ElemAttr { map_fd: fd as u32, _pad: 0, key: key as u64, value: value as u64, flags }
    }

    /// `Ok(false)` when `key` is absent.
    pub fn lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> std::io::Result<bool> {
        match call(BPF_MAP_LOOKUP_ELEM, &attr(fd, key.as_ptr(), value.as_mut_ptr(), 0)) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn update(fd: RawFd, key: &[u8], value: &[u8], flags: u64) -> std::io::Result<()> {
        call(BPF_MAP_UPDATE_ELEM, &attr(fd, key.as_ptr(), value.as_ptr(), flags))
    }

    /// The key after `key` (the first with `None`) into `next`; `Ok(false)` at the end.
    pub fn next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> std::io::Result<bool> {
        let k = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
        match call(BPF_MAP_GET_NEXT_KEY, &attr(fd, k, next.as_mut_ptr(), 0)) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_grow_with_zeros_and_shrink_only_over_zeros() {
        assert_eq!(convert(&[1, 2], 4), Some(vec![1, 2, 0, 0]));
        assert_eq!(convert(&[1, 2, 0, 0], 2), Some(vec![1, 2]));
        assert_eq!(convert(&[1, 2, 0, 3], 2), None, "a shrink that loses a non-zero byte is refused");
        assert_eq!(convert(&[1, 2], 2), Some(vec![1, 2]));
    }

    #[test]
    fn bitmaps_merge_with_or_and_skip_words_with_nothing_new() {
        // A bit the old program set after the first copy (0x04) joins what the new one set.
        let mut old = vec![0x05, 0x00];
        assert!(or_into(&mut old, &[0x01, 0x80]));
        assert_eq!(old, [0x05, 0x80]);
        let mut same = vec![0x01, 0x00];
        assert!(!or_into(&mut same, &[0x01, 0x80]), "nothing new: no write");
    }

    #[test]
    fn per_cpu_counters_add_word_by_word_with_each_side_padded_to_8() {
        // Two CPUs; old values 16 bytes (two words), new values 24 bytes (three words).
        let word = |v: u64| v.to_ne_bytes();
        let old: Vec<u8> = [word(1), word(2), word(10), word(20)].concat();
        let mut new: Vec<u8> = [word(5), word(6), word(7), word(50), word(60), word(70)].concat();
        add_words(&mut new, &old, 16, 24, 2);
        let got: Vec<u64> = new.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, vec![6, 8, 7, 60, 80, 70]);
        // The other way: the new side is smaller, only the common words are added.
        let mut small: Vec<u8> = [word(1), word(1)].concat();
        add_words(&mut small, &[word(3), word(4), word(30), word(40)].concat(), 16, 8, 2);
        let got: Vec<u64> = small.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap())).collect();
        assert_eq!(got, vec![4, 31]);
    }
}
