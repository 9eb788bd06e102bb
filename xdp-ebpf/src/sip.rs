//! Step 8: SIP-aware checks, for requests to ports that carry plaintext SIP, after the port's
//! own rate class let them through:
//!
//! 1. the `User-Agent` block list: the value (with its continuation lines) runs through a
//!    case-insensitive Aho-Corasick automaton compiled by the controller;
//! 2. per-method rate classes (REGISTER, INVITE, OPTIONS, the rest), from the request line;
//! 3. requests that carry credentials (`Authorization`, `Proxy-Authorization`) are counted per
//!    source, for the egress program's challenge bookkeeping ([`response`]).
//!
//! The first `sip_window` bytes of the payload are copied into a per-CPU scratch buffer with
//! `bpf_xdp_load_bytes` (which also reads multi-buffer frames), then scanned a word at a time:
//! each step either moves 8 bytes or lands just past the next `\n`. Only the start of each header
//! line is examined, so a name inside a value, a folded line (it starts with white space) or a
//! compact header (`f:`, `t:`, `m:`...: SIP has no compact form of these three) cannot be taken
//! for one of the three headers. Scanning stops at the empty line that ends the headers, at the
//! window, or after [`sip::MAX_LINES`] lines. Anything that does not start with a SIP request line
//! (responses, keep-alives, STUN, TLS) passes untouched: only packet-level checks apply to it.
//!
//! Bytes of the scratch buffer past the copied window belong to earlier packets: every position
//! is checked against the window length before its byte counts.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_md},
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::TcContext,
};
use common::{
    POLICY_DRY_RUN, PolicyConfig, SIP_AUTH_WATCH, SIP_UA_BLOCK, SOURCE_ALLOW, SipPeer, SourceKey, UaMatcher, reason,
    sip::{self, W_AUTHORIZ, W_PROXY_AU, W_SIP_VERSION, W_THORIZAT, W_USER_AGE, fold8},
    stat,
};

use crate::{
    ban::{self, Trigger},
    clock, lists,
    maps::{SIP_PEERS, SIP_SCRATCH, SIP_UA, bump},
    parse::Packet,
    rate,
};

/// Index mask of the scanned window (a power of two).
const MASK: u32 = sip::WINDOW_MAX - 1;
/// Aligned words of the window; word loads may read the one after the last, which the scratch
/// buffer's slack holds.
const WORDS: u32 = sip::WINDOW_MAX / 8;
const STEPS: u32 = WORDS + sip::MAX_LINES;
/// Longest request line taken for SIP (methods and URIs are short; a long first line is some
/// other protocol).
const REQUEST_LINE_MAX: u32 = 1024;
const NEXT_MASK: usize = (sip::UA_STATES * sip::UA_CLASSES) as usize - 1;

/// The scratch buffer: the copied window and the scan's loop state. Loop state goes through
/// volatile map-memory accesses (see `SipScratch::scan`).
#[derive(Clone, Copy)]
struct Buf {
    state: *mut u64,
    words: *const u64,
    bytes: *const u8,
}

impl Buf {
    #[inline(always)]
    fn get(self, slot: usize) -> u64 {
        // SAFETY: `slot` < 8, inside `SipScratch::scan`.
        unsafe { core::ptr::read_volatile(self.state.add(slot & 7)) }
    }

    #[inline(always)]
    fn set(self, slot: usize, v: u64) {
        // SAFETY: as for `get`.
        unsafe { core::ptr::write_volatile(self.state.add(slot & 7), v) }
    }

    /// Aligned word `k` (little-endian).
    #[inline(always)]
    fn aligned(self, k: u32) -> u64 {
        // SAFETY: k <= WORDS, so the word ends within the scratch value (WINDOW_MAX + 64 bytes).
        unsafe { *self.words.add((k & (2 * WORDS - 1)).min(WORDS) as usize) }
    }

    /// The 8 bytes at `pos`, from the two aligned words around them (BPF loads must be
    /// aligned).
    #[inline(always)]
    fn word_at(self, pos: u32) -> u64 {
        let k = (pos >> 3) & (WORDS - 1);
        let o = (pos & 7) * 8;
        // `(w1 << 1) << (63 - o)` is `w1 << (64 - o)` without a shift by 64 when o = 0.
        (self.aligned(k) >> o) | ((self.aligned(k + 1) << 1) << (63 - o))
    }

    #[inline(always)]
    fn byte(self, pos: u32) -> u8 {
        // SAFETY: masked into the window.
        unsafe { *self.bytes.add((pos & MASK) as usize) }
    }
}

#[inline(always)]
const fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Position just past `HCOLON` (optional blanks, a colon, RFC 3261 25.1) after a header name
/// ending at `at`, and past up to two blanks after it; 0 if that is not what follows. Unrolled:
/// clients put at most a blank or two there.
#[inline(always)]
fn after_colon(buf: Buf, at: u32, end: u32) -> u32 {
    let (b0, b1, b2) = (buf.byte(at), buf.byte(at + 1), buf.byte(at + 2));
    let p = if b0 == b':' {
        at + 1
    } else if blank(b0) && b1 == b':' {
        at + 2
    } else if blank(b0) && blank(b1) && b2 == b':' {
        at + 3
    } else {
        return 0;
    };
    let p = if blank(buf.byte(p)) { p + 1 } else { p };
    let p = if blank(buf.byte(p)) { p + 1 } else { p };
    if p < end { p } else { 0 }
}

/// What [`check`] returns when the request may go on: the first value that is not a reason
/// code. (Not `u32::MAX`: LLVM may materialize it as a sign-extended 64-bit -1 in the callee
/// and compare against a zero-extended constant in the caller.)
const CONTINUE: u32 = common::MAX_REASONS;

/// Inspect a SIP request to a SIP port: the drop reason, or `None` to let it continue.
///
/// `xdp` is the program's context (for `bpf_xdp_load_bytes`), `frame_len` the frame's length.
#[inline(always)]
pub fn inspect(xdp: *mut xdp_md, frame_len: u32, pkt: &Packet, generation: u32, cfg: &PolicyConfig) -> Option<u32> {
    let r = check(xdp, frame_len, pkt, generation, cfg);
    if r == CONTINUE { None } else { Some(r) }
}

/// [`inspect`] as a BPF-to-BPF call: its own stack frame keeps the program under the 512-byte
/// stack limit, and a scalar return value (an `Option` would come back through a sixth,
/// stack-passed argument, which BPF calls cannot have).
#[inline(never)]
fn check(xdp: *mut xdp_md, frame_len: u32, pkt: &Packet, generation: u32, cfg: &PolicyConfig) -> u32 {
    // Recomputed rather than passed: BPF calls take at most five arguments.
    let source = &crate::source_key(pkt, cfg);
    let off = pkt.payload_off as u32;
    if off == 0 || frame_len <= off {
        return CONTINUE;
    }
    let mut n = frame_len - off;
    if n > cfg.sip_window {
        n = cfg.sip_window;
    }
    // Shorter than any request line; the upper bound is for the verifier (sip_window is
    // validated to at most WINDOW_MAX).
    if !(16..=sip::WINDOW_MAX).contains(&n) {
        return CONTINUE;
    }
    let Some(scratch) = SIP_SCRATCH.get_ptr_mut(0) else {
        return CONTINUE;
    };
    // SAFETY: per-CPU scratch value, used only by this CPU while this program runs.
    let buf = unsafe {
        Buf {
            state: (*scratch).scan.as_mut_ptr(),
            words: (*scratch).bytes.as_ptr() as *const u64,
            bytes: (*scratch).bytes.as_ptr(),
        }
    };
    // SAFETY: `n` is within 16..=WINDOW_MAX, inside the scratch value.
    if unsafe { bpf_xdp_load_bytes(xdp, off, buf.bytes as *mut c_void, n) } != 0 {
        return CONTINUE;
    }
    // A request starts with an upper-case method token (RFC 3261 25.1); responses start with
    // "SIP/2.0 ". Anything else (RTP, STUN, TLS, keep-alives) is not scanned at all.
    let first8 = buf.aligned(0);
    if !(first8 as u8).is_ascii_uppercase() || first8 == u64::from_le_bytes(*b"SIP/2.0 ") {
        return CONTINUE;
    }
    if !scan_request(buf, n, cfg) {
        return CONTINUE;
    }
    let ua = buf.get(sip::scan::UA) as u32;
    if ua != 0 && cfg.sip_flags & SIP_UA_BLOCK != 0 && ua_blocked(buf, n, ua, generation) {
        if cfg.sip_ua_ban_ns != 0 {
            ban_source(source, sip::CLASS_USER_AGENT, 1, cfg.sip_ua_ban_ns, cfg, pkt.ipv6);
        }
        return reason::SIP_USER_AGENT;
    }
    let method = sip::method(first8);
    let class = cfg.sip_method_class[method & 3];
    if class != 0 && rate::over_limit(source, class, generation, cfg, pkt.ipv6) {
        return reason::SIP_METHOD_RATE_LIMITED;
    }
    if buf.get(sip::scan::AUTH) != 0 && cfg.sip_flags & SIP_AUTH_WATCH != 0 {
        let now = clock::now();
        if let Some(peer) = peer(source, true) {
            roll(peer, now, cfg);
            peer.answers = peer.answers.saturating_add(1);
            peer.pending = peer.pending.saturating_add(1);
            bump(stat::SIP_AUTH_ANSWERS);
        }
    }
    CONTINUE
}

/// What the line loop's callback needs (on the caller's stack, passed to `bpf_loop`).
#[repr(C)]
struct LineLoop {
    buf: Buf,
    n: u32,
    /// Stop once the User-Agent is found, unless credentials matter too.
    want_auth: u32,
    /// Set by the callback: the first line is not a SIP request line.
    not_sip: u32,
    _pad: u32,
}

/// Walk the lines of the window: false if the first is not a SIP request line; otherwise note
/// (in the scan slots) where the User-Agent value starts and whether credentials are present.
/// Each step either moves to the next aligned word or handles the next newline in this one.
///
/// The loop runs under `bpf_loop` (inlined by the verifier into a plain loop with a call): its
/// body is verified once rather than once per possible iteration, and its state lives in map
/// memory, so the verifier's view of the body's entry never changes.
#[inline(always)]
fn scan_request(buf: Buf, n: u32, cfg: &PolicyConfig) -> bool {
    use sip::scan::{AUTH, LINE, LINES, PENDING, UA, WORD};
    buf.set(WORD, 0);
    buf.set(PENDING, sip::newline_mask(buf.aligned(0)));
    buf.set(LINE, 0);
    buf.set(LINES, 0);
    buf.set(UA, 0);
    buf.set(AUTH, 0);
    let mut ctx = LineLoop { buf, n, want_auth: (cfg.sip_flags & SIP_AUTH_WATCH != 0) as u32, not_sip: 0, _pad: 0 };
    // SAFETY: `line_step` is a BPF subprogram taking (index, ctx); `ctx` outlives the call.
    unsafe {
        bpf_loop(STEPS, line_step as *const () as *mut c_void, &mut ctx as *mut LineLoop as *mut c_void, 0);
    }
    ctx.not_sip == 0 && buf.get(LINES) > 0
}

/// One step of [`scan_request`]: 0 to go on, 1 to stop.
extern "C" fn line_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AUTH, LINE, LINES, PENDING, UA, WORD};
    // SAFETY: `ctx` is the caller's `LineLoop`.
    let ctx = unsafe { &mut *(ctx as *mut LineLoop) };
    let (buf, n) = (ctx.buf, ctx.n);
    let word = buf.get(WORD) as u32 & (WORDS - 1);
    let pending = buf.get(PENDING);
    if pending == 0 {
        if word * 8 >= REQUEST_LINE_MAX && buf.get(LINES) == 0 {
            // No request line is this long: not SIP (and not worth scanning further).
            ctx.not_sip = 1;
            return 1;
        }
        // Up to four words per step while no newline turns up (long header values).
        let mut next = word;
        for _ in 0..4 {
            next += 1;
            if next * 8 >= n {
                last_line(buf, n);
                return 1;
            }
            let mask = sip::newline_mask(buf.aligned(next));
            if mask != 0 {
                buf.set(WORD, next as u64);
                buf.set(PENDING, mask);
                return 0;
            }
        }
        buf.set(WORD, next as u64);
        return 0;
    }
    let low = pending & pending.wrapping_neg();
    buf.set(PENDING, pending ^ low);
    // Just past the newline; `& 15` tells the verifier it is at most 8 past the word.
    let end = word * 8 + (sip::past_first(low) as u32 & 15);
    if end > n {
        // The newline lies past the window (another packet's bytes): the line is cut off.
        last_line(buf, n);
        return 1;
    }
    let line = buf.get(LINE) as u32 & MASK;
    let lines = buf.get(LINES);
    if lines == 0 {
        // `Method SP Request-URI SP SIP/2.0 CRLF`: the 8 bytes before CRLF (or a bare LF).
        let tail = if end >= 2 && buf.byte(end - 2) == b'\r' { end.wrapping_sub(10) } else { end.wrapping_sub(9) };
        if end < 10 || buf.word_at(tail) != W_SIP_VERSION {
            ctx.not_sip = 1;
            return 1;
        }
    } else {
        let first = buf.byte(line);
        if first == b'\r' || first == b'\n' {
            // The empty line: end of the headers.
            return 1;
        }
        header(buf, line, end);
        if buf.get(UA) != 0 && (ctx.want_auth == 0 || buf.get(AUTH) != 0) {
            return 1;
        }
    }
    buf.set(LINES, lines + 1);
    buf.set(LINE, end as u64);
    if lines >= sip::MAX_LINES as u64 { 1 } else { 0 }
}

/// The window ended inside a header line (a message cut short, or a window smaller than the
/// headers): look at what is there, up to the window's end.
#[inline(always)]
fn last_line(buf: Buf, n: u32) {
    let line = buf.get(sip::scan::LINE) as u32 & MASK;
    if buf.get(sip::scan::LINES) > 0 && line < n && !matches!(buf.byte(line), b'\r' | b'\n') {
        header(buf, line, n);
    }
}

/// Look at one header line `[line, end)`: a User-Agent (the first counts: RFC 3261 allows
/// one) or credentials.
#[inline(always)]
fn header(buf: Buf, line: u32, end: u32) {
    let head = fold8(buf.word_at(line));
    if head == W_USER_AGE {
        // "user-age" + "nt" + HCOLON.
        let next = fold8(buf.word_at(line + 8));
        if buf.get(sip::scan::UA) == 0 && next & 0xffff == fold8(u64::from_le_bytes(*b"nt\0\0\0\0\0\0")) & 0xffff {
            buf.set(sip::scan::UA, after_colon(buf, line + 10, end) as u64);
        }
    } else if head == W_AUTHORIZ {
        // "authoriz" + "ation" + HCOLON.
        let next = fold8(buf.word_at(line + 8));
        if next & 0xff_ffff_ffff == fold8(u64::from_le_bytes(*b"ation\0\0\0")) & 0xff_ffff_ffff
            && after_colon(buf, line + 13, end) != 0
        {
            buf.set(sip::scan::AUTH, 1);
        }
    } else if head == W_PROXY_AU {
        // "proxy-au" + "thorizat" + "ion" + HCOLON.
        let next = fold8(buf.word_at(line + 8));
        let last = fold8(buf.word_at(line + 16));
        if next == W_THORIZAT
            && last & 0xff_ffff == fold8(u64::from_le_bytes(*b"ion\0\0\0\0\0")) & 0xff_ffff
            && after_colon(buf, line + 19, end) != 0
        {
            buf.set(sip::scan::AUTH, 1);
        }
    }
}

/// What the matcher's callback needs.
#[repr(C)]
struct UaLoop {
    buf: Buf,
    matcher: *const UaMatcher,
    n: u32,
    matched: u32,
}

/// Run the User-Agent value at `start` (and its continuation lines) through the automaton of
/// this generation, one byte per `bpf_loop` step (see [`scan_request`] for why).
#[inline(always)]
fn ua_blocked(buf: Buf, n: u32, start: u32, generation: u32) -> bool {
    let Some(m) = SIP_UA.get(generation) else {
        return false;
    };
    let first = m.next[sip::UA_BEGIN as usize];
    if first & sip::UA_MATCH != 0 {
        return true;
    }
    buf.set(sip::scan::AT, start as u64);
    buf.set(sip::scan::STATE, first as u64);
    let mut ctx = UaLoop { buf, matcher: m as *const UaMatcher, n, matched: 0 };
    // SAFETY: as in `scan_request`.
    unsafe {
        bpf_loop(sip::UA_VALUE_MAX, ua_step as *const () as *mut c_void, &mut ctx as *mut UaLoop as *mut c_void, 0);
    }
    ctx.matched != 0
}

/// One byte of [`ua_blocked`]: 0 to go on, 1 to stop.
extern "C" fn ua_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AT, STATE};
    // SAFETY: `ctx` is the caller's `UaLoop`; `matcher` points into `SIP_UA`.
    let ctx = unsafe { &mut *(ctx as *mut UaLoop) };
    let (buf, n) = (ctx.buf, ctx.n);
    let m = unsafe { &*ctx.matcher };
    let i = buf.get(AT) as u32 & MASK;
    if i >= n {
        return 1;
    }
    let mut c = buf.byte(i);
    buf.set(AT, (i + 1) as u64);
    if c == b'\r' {
        return 0;
    }
    if c == b'\n' {
        // A continuation line (starts with a blank) belongs to the value (RFC 3261 7.3.1).
        if i + 1 < n && blank(buf.byte(i + 1)) {
            c = b' ';
        } else {
            return 1;
        }
    }
    let class = (m.class[c as usize] as u32 & (sip::UA_CLASSES - 1)) as usize;
    let s = (buf.get(STATE) as u16 & sip::UA_STATE_MASK) as usize;
    let next = m.next[(s * sip::UA_CLASSES as usize + class) & NEXT_MASK];
    if next & sip::UA_MATCH != 0 {
        ctx.matched = 1;
        return 1;
    }
    buf.set(STATE, next as u64);
    0
}

/// The source's authentication counters, created if `create`.
#[inline(always)]
fn peer(source: &SourceKey, create: bool) -> Option<&'static mut SipPeer> {
    if let Some(p) = SIP_PEERS.get_ptr_mut(source) {
        // SAFETY: value pointer from a successful lookup.
        return Some(unsafe { &mut *p });
    }
    if !create {
        return None;
    }
    if SIP_PEERS.insert(source, &SipPeer::default(), BPF_NOEXIST as u64).is_ok() {
        bump(stat::SIP_PEERS_CREATED);
    }
    // SAFETY: as above.
    SIP_PEERS.get_ptr_mut(source).map(|p| unsafe { &mut *p })
}

/// Start a new detection period if the current one is over.
#[inline(always)]
fn roll(peer: &mut SipPeer, now: u64, cfg: &PolicyConfig) {
    if now.wrapping_sub(peer.period_start_ns) > cfg.sip_period_ns {
        peer.period_start_ns = now;
        peer.failures = 0;
        peer.challenges = 0;
        peer.answers = 0;
        peer.pending = 0;
    }
}

/// Ban a source for a SIP check. In dry run the would-be ban is reported once per ban period
/// (remembered in the source's counters).
#[inline(always)]
fn ban_source(source: &SourceKey, class: u8, observed: u32, ban_ns: u64, cfg: &PolicyConfig, ipv6: bool) {
    let now = clock::now();
    let trigger = Trigger { class, level: 1, observed };
    if cfg.flags & POLICY_DRY_RUN != 0 {
        if let Some(p) = peer(source, true) {
            ban::insert(source, trigger, ban_ns, now, cfg, ipv6, &mut p.quiet_until_ns);
        }
    } else {
        let mut unused = 0;
        ban::insert(source, trigger, ban_ns, now, cfg, ipv6, &mut unused);
    }
}

/// Egress: a response the host's SIP server sends to `pkt.dst`. 401/407 to a request without
/// credentials is a challenge; 401/407 while a request with credentials is pending, and every
/// 403, is a failed authentication. Enough of either within the detection period bans the
/// destination.
#[inline(always)]
pub fn response(ctx: &TcContext, pkt: &Packet, cfg: &PolicyConfig) {
    if cfg.sip_flags & SIP_AUTH_WATCH == 0 || pkt.payload_off == 0 {
        return;
    }
    let Ok(head) = ctx.load::<[u8; 12]>(pkt.payload_off as usize) else {
        return;
    };
    let Some(code) = sip::status_code(&head) else {
        return;
    };
    if code < 200 {
        return;
    }
    // The destination as ingress keys it.
    let key = if pkt.ipv6 { common::addr::mask_prefix(pkt.dst, cfg.ipv6_prefix) } else { pkt.dst };
    let challenge = code == 401 || code == 407;
    // Allow-listed peers never get counters: asked only when one would be created (ingress
    // never creates one for them either, the allow list bypasses the SIP checks), so other
    // responses cost one hash lookup and no list lookup.
    let create = (challenge || code == 403) && lists::source_list_of(&pkt.dst, pkt.ipv6) != SOURCE_ALLOW;
    let Some(peer) = peer(&key, create) else {
        return;
    };
    let now = clock::now();
    roll(peer, now, cfg);
    if challenge && peer.pending == 0 {
        peer.challenges = peer.challenges.saturating_add(1);
        bump(stat::SIP_CHALLENGES);
    } else {
        peer.pending = peer.pending.saturating_sub(1);
        if challenge || code == 403 {
            peer.failures = peer.failures.saturating_add(1);
            bump(stat::SIP_AUTH_FAILURES);
        }
    }
    if cfg.sip_failed_auth != 0 && peer.failures >= cfg.sip_failed_auth {
        let trigger = Trigger { class: sip::CLASS_FAILED_AUTH, level: 1, observed: peer.failures };
        peer.failures = 0;
        ban::insert(&key, trigger, cfg.sip_failed_auth_ban_ns, now, cfg, pkt.ipv6, &mut peer.quiet_until_ns);
        return;
    }
    let unanswered = peer.challenges.saturating_sub(peer.answers);
    if cfg.sip_unanswered != 0 && unanswered >= cfg.sip_unanswered {
        let trigger = Trigger { class: sip::CLASS_UNANSWERED, level: 1, observed: unanswered };
        peer.challenges = 0;
        peer.answers = 0;
        ban::insert(&key, trigger, cfg.sip_unanswered_ban_ns, now, cfg, pkt.ipv6, &mut peer.quiet_until_ns);
    }
}
