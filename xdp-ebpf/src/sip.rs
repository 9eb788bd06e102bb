//! Step 8: SIP-aware checks, for requests to ports that carry plaintext SIP, after the port's
//! own rate class let them through:
//!
//! 1. the `User-Agent` block list: the value (with its continuation lines) runs through a
//!    case-insensitive Aho-Corasick automaton compiled by the controller, unless the
//!    automaton's prefilter (`UaMatcher::pairs`) clears a one-line value first;
//! 2. per-method rate classes (REGISTER, INVITE, OPTIONS, the rest), from the request line;
//! 3. requests that carry credentials (`Authorization`, `Proxy-Authorization`) are counted per
//!    source, for the egress program's challenge bookkeeping ([`response`]).
//!
//! The message is read by RFC 3261's grammar, exactly as `common::sip::grammar` states it (the
//! test suite compares the two on generated messages): a request line is a token, then fields
//! whose last begins with `SIP/` in any case (any version, trailing blanks allowed, as servers
//! answer those too); header names are compared without case and followed by
//! `HCOLON = *(SP / HTAB) ":" SWS`; a line starting with a blank continues the previous header.
//! What lies beyond a bound is never taken for "no header": too many blanks (or an overlong
//! User-Agent value) drop as `sip_evasion`; headers that run past the window before a
//! User-Agent shows up pass and are counted (`stat::SIP_INCOMPLETE`).
//!
//! The first `sip_window` bytes of the payload are copied into a per-CPU scratch buffer with
//! `bpf_xdp_load_bytes` (which also reads multi-buffer frames). The request line is read a word
//! at a time. The header block of a request is then searched up to `sip::SCAN_WORDS` words (256
//! bytes) per loop step for newlines followed by a letter that may begin one of the three names
//! (`u`, `a`, `p`, either case) or by a line end; only those line starts are visited, so the
//! headers cost one step per 256 bytes plus one per such line, whatever the other lines hold.
//! Only the start of a header line is examined, so a name inside a value, a folded line or a
//! compact header (`f:`, `t:`, `m:`...: SIP has no compact form of these three) cannot be taken
//! for one of them. Scanning stops at the empty line that ends the headers or at the window.
//! The walks that look for one value header (CSeq, Call-ID) go line by line.
//!
//! Bytes of the scratch buffer past the copied window belong to earlier packets: every position
//! is checked against the window length before its byte counts.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_md},
    helpers::generated::{bpf_loop, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::TcContext,
};
use common::{
    POLICY_DRY_RUN, PolicyConfig, SIP_AUTH_WATCH, SIP_UA_BLOCK, SOURCE_ALLOW, SipCalls, SipPeer, SourceKey, UaMatcher,
    known::{self as proofs, PROOF_SIP_DIGEST, PROOF_SIP_RESPONSE},
    reason,
    sip::{
        self, BLANKS_MAX, REQUEST_LINE_MAX, UA_VALUE_MAX, VERSION_MAX, W_AUTHORIZ, W_PROXY_AU, W_SIP_SLASH, W_THORIZAT,
        W_USER_AGE,
        grammar::{is_blank as blank, is_token},
        lower8, non_blank_mask, past_first,
        scan::{FLAG_CREDENTIALS, FLAG_ENDED, FLAG_EVASION},
    },
    stat,
};

use crate::{
    ban::{self, Trigger},
    clock, known, lists,
    maps::{SIP_CALLS, SIP_PEERS, SIP_SCRATCH, SIP_UA, bump, zero},
    parse::Packet,
    rate,
};

/// Index mask of the scanned window (a power of two).
const MASK: u32 = sip::WINDOW_MAX - 1;
/// Aligned words of the window; word loads may read the one after the last, which the scratch
/// buffer's slack holds.
const WORDS: u32 = sip::WINDOW_MAX / 8;
const STEPS: u32 = WORDS + sip::MAX_LINES;
const NEXT_MASK: usize = (sip::UA_STATES * sip::UA_CLASSES) as usize - 1;
/// 8-byte steps that cover a run of more than [`BLANKS_MAX`] blanks.
const BLANK_WORDS: u32 = BLANKS_MAX / 8 + 1;
/// Words the line walk reads per step while no newline turns up.
const LINE_WORDS: u32 = 8;

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

    /// The 8 bytes before `end`, the last one first (byte-swapped). Bytes before the buffer's
    /// start read as 0, which is neither a blank nor a newline.
    #[inline(always)]
    fn word_before(self, end: u32) -> u64 {
        let w = if end >= 8 {
            self.word_at(end - 8)
        } else if end > 0 {
            self.word_at(0) << (((8 - end) & 7) * 8)
        } else {
            0
        };
        w.swap_bytes()
    }

    #[inline(always)]
    fn byte(self, pos: u32) -> u8 {
        // SAFETY: masked into the window.
        unsafe { *self.bytes.add((pos & MASK) as usize) }
    }
}

/// What [`voipwall_sip_check`] returns when the request may go on: the first value that is not
/// a reason code. (Not `u32::MAX`: LLVM may materialize it as a sign-extended 64-bit -1 in the
/// callee and compare against a zero-extended constant in the caller.)
pub const CONTINUE: u32 = common::MAX_REASONS;

/// The scratch buffer of the XDP program (0) or the TC program (1). Separate slots because
/// both may run on one CPU (egress runs with bottom halves off, so XDP never interrupts it, but
/// the slots cost nothing).
#[inline(always)]
fn scratch(index: u32) -> Option<Buf> {
    let s = SIP_SCRATCH.get_ptr_mut(index & 1)?;
    // SAFETY: per-CPU scratch value, used only by this CPU while this program runs.
    Some(unsafe {
        Buf { state: (*s).scan.as_mut_ptr(), words: (*s).bytes.as_ptr() as *const u64, bytes: (*s).bytes.as_ptr() }
    })
}

/// The window's length: `len` payload bytes, at most `window`; `None` when shorter than any
/// request line. The upper bound is for the verifier (`sip_window` is validated to at most
/// WINDOW_MAX).
#[inline(always)]
fn window_len(len: u32, window: u32) -> Option<u32> {
    let n = if len > window { window } else { len };
    if (16..=sip::WINDOW_MAX).contains(&n) { Some(n) } else { None }
}

/// Copy the first bytes of an XDP packet's payload (at `off`, `len` long) into the scratch
/// buffer (`bpf_xdp_load_bytes` also reads multi-buffer frames).
#[inline(always)]
fn xdp_window(xdp: *mut xdp_md, off: u32, len: u32, window: u32) -> Option<(Buf, u32)> {
    let n = window_len(len, window)?;
    let buf = scratch(0)?;
    // SAFETY: `n` is within 16..=WINDOW_MAX, inside the scratch value.
    let r = unsafe { bpf_xdp_load_bytes(xdp, off, buf.bytes as *mut c_void, n) };
    if r == 0 { Some((buf, n)) } else { None }
}

/// The same for a socket buffer leaving the host (`bpf_skb_load_bytes`).
#[inline(always)]
fn skb_window(ctx: &TcContext, off: u32, window: u32) -> Option<(Buf, u32)> {
    let len = ctx.len().checked_sub(off)?;
    let n = window_len(len, window)?;
    let buf = scratch(1)?;
    // SAFETY: as for `xdp_window`.
    let r = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const c_void, off, buf.bytes as *mut c_void, n) };
    if r == 0 { Some((buf, n)) } else { None }
}

/// What [`request_line`] made of the first line.
const READ_REQUEST: u32 = 0;
const READ_NOT_REQUEST: u32 = 1;
const READ_EVASION: u32 = 2;

/// Inspect a SIP request to a SIP port: the drop reason, or [`CONTINUE`] to let it go on.
///
/// `xdp` is the program's context (for `bpf_xdp_load_bytes`), `frame_len` the frame's length.
/// A global BPF function, like `ports::voipwall_open_port`: verified once, on its own. Its
/// pointers may be null as far as the verifier knows, so they are checked.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn voipwall_sip_check(
    xdp: *mut xdp_md,
    frame_len: u32,
    pkt: *const Packet,
    generation: u32,
    cfg: *const PolicyConfig,
) -> u32 {
    // SAFETY: null or pointers to the caller's parsed packet and the policy map value.
    let (Some(pkt), Some(cfg)) = (unsafe { pkt.as_ref() }, unsafe { cfg.as_ref() }) else {
        return CONTINUE;
    };
    // Recomputed rather than passed: BPF calls take at most five arguments.
    let source = &crate::source_key(pkt, cfg);
    let off = pkt.payload_off as u32;
    if off == 0 || frame_len <= off {
        return CONTINUE;
    }
    let Some((buf, n)) = xdp_window(xdp, off, frame_len - off, cfg.sip_window) else {
        return CONTINUE;
    };
    // A request starts with a method token (RFC 3261 25.1); a response with `SIP/`. Anything
    // else (RTP, STUN, TLS, keep-alives) is not scanned at all.
    let first8 = buf.aligned(0);
    if !is_token(first8 as u8) || (first8 as u32) | 0x0020_2020 == W_SIP_SLASH {
        return CONTINUE;
    }
    let want = WANT_USER_AGENT | if cfg.sip_flags & SIP_AUTH_WATCH != 0 { WANT_CREDENTIALS } else { 0 };
    let mut lines = first_line(buf, n, want);
    if lines.first_end == 0 {
        // A token at the start and no line end: a request line longer than we read.
        bump(stat::SIP_INCOMPLETE);
        return CONTINUE;
    }
    match request_line(buf, lines.first_end) {
        READ_REQUEST => {}
        READ_EVASION => return reason::SIP_EVASION,
        _ => return CONTINUE,
    }
    header_lines(&mut lines);
    let flags = buf.get(sip::scan::FLAGS);
    if flags & FLAG_EVASION != 0 {
        return reason::SIP_EVASION;
    }
    let ua = buf.get(sip::scan::UA) as u32;
    if ua == 0 {
        if flags & FLAG_ENDED == 0 {
            bump(stat::SIP_INCOMPLETE);
        }
    } else if cfg.sip_flags & SIP_UA_BLOCK != 0 {
        match ua_verdict(buf, n, ua, generation) {
            UA_LISTED => {
                if cfg.sip_ua_ban_ns != 0 {
                    ban_source(source, sip::CLASS_USER_AGENT, 1, cfg.sip_ua_ban_ns, cfg, pkt.ipv6);
                }
                return reason::SIP_USER_AGENT;
            }
            UA_OVERLONG => return reason::SIP_EVASION,
            UA_CUT => bump(stat::SIP_INCOMPLETE),
            _ => {}
        }
    }
    let method = sip::method(first8, buf.byte(8));
    let class = cfg.sip_method_class[method & 3];
    // The port's class already admitted the packet (known peer, or within the unknown
    // sources' budget): the method's class is a per-source limit on top of it.
    if class != 0 && rate::over_limit(source, class, generation, cfg, pkt.ipv6) {
        return reason::SIP_METHOD_RATE_LIMITED;
    }
    if flags & FLAG_CREDENTIALS != 0 && cfg.sip_flags & SIP_AUTH_WATCH != 0 {
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

/// What the line loops' callbacks need (on the caller's stack, passed to `bpf_loop`).
#[repr(C)]
struct LineLoop {
    buf: Buf,
    n: u32,
    /// `WANT_*`: the headers this walk looks for.
    want: u32,
    /// [`first_line_step`]: the first line's end, or 0 when it does not end within the
    /// request-line bound and the window.
    first_end: u32,
    _pad: u32,
}

/// Find the first line: its end (just past its `\n`), or 0 when it does not end within
/// [`REQUEST_LINE_MAX`] bytes and the window. Leaves the walk's slots at the second line.
///
/// The line walks run under `bpf_loop` (inlined by the verifier into a plain loop with a call):
/// a callback is verified once rather than once per possible iteration, and the walk's state
/// lives in map memory, so the verifier's view of the callback's entry never changes.
#[inline(always)]
fn first_line(buf: Buf, n: u32, want: u32) -> LineLoop {
    use sip::scan::{FLAGS, LINE, LINES, PENDING, UA, WORD};
    buf.set(WORD, 0);
    buf.set(PENDING, sip::newline_mask(buf.aligned(0)));
    buf.set(LINE, 0);
    buf.set(LINES, 0);
    buf.set(UA, 0);
    buf.set(FLAGS, 0);
    let mut ctx = LineLoop { buf, n, want, first_end: 0, _pad: 0 };
    // SAFETY: `first_line_step` is a BPF subprogram taking (index, ctx); `ctx` outlives the call.
    unsafe {
        bpf_loop(
            REQUEST_LINE_MAX / 8 + 1,
            first_line_step as *const () as *mut c_void,
            &mut ctx as *mut LineLoop as *mut c_void,
            0,
        );
    }
    ctx
}

/// Walk a request's header lines after the first: note in the scan slots where the User-Agent
/// header's colon is, and the `FLAG_*` facts.
///
/// Only lines that may matter are visited: those starting with a letter of the three names
/// (`u`, `a`, `p`, either case) and the empty line. [`line_starts`] finds them among the
/// newlines of up to [`SCAN_WORDS`] words per step, so a header block costs one step per
/// 64 bytes plus one per such line, whatever the number of other lines.
#[inline(always)]
fn header_lines(ctx: &mut LineLoop) {
    use sip::scan::{PENDING, WORD};
    let buf = ctx.buf;
    // From the first line's newline on: it starts the second line.
    let nl = ctx.first_end - 1;
    let k = (nl >> 3) & (WORDS - 1);
    buf.set(WORD, k as u64);
    buf.set(PENDING, line_starts(buf, k) & (u64::MAX << ((nl & 7) * 8)));
    // SAFETY: as in `first_line`.
    unsafe {
        bpf_loop(STEPS, header_step as *const () as *mut c_void, ctx as *mut LineLoop as *mut c_void, 0);
    }
}

/// The newlines of aligned word `k` that start a line the request walk visits: the next byte
/// is `u`, `a` or `p` in either case, CR or LF (bit 7 of the newline's byte set). Folding with
/// 0x20 maps CR and LF to `-` and `*`, so lines starting with those are visited too and turned
/// away there; no line the walk needs is missed.
#[inline(always)]
fn line_starts(buf: Buf, k: u32) -> u64 {
    starts_in(buf.aligned(k), buf.aligned(k + 1))
}

/// [`line_starts`] of word `w`, followed by word `after`.
#[inline(always)]
fn starts_in(w: u64, after: u64) -> u64 {
    let nl = sip::newline_mask(w);
    if nl == 0 {
        return 0;
    }
    let next = sip::fold8((w >> 8) | (after << 56));
    let is = |c: u8| sip::zero_bytes(next ^ (0x0101_0101_0101_0101 * c as u64));
    nl & (is(b'u') | is(b'a') | is(b'p') | is(b'-') | is(b'*'))
}

/// [`starts_in`] for a word whose one newline is `nl` (a newline mask with one bit): whether
/// the byte after it starts a line the request walk visits. The byte is folded with 0x20 (as
/// in [`starts_in`]: CR and LF become `-` and `*`) and tested against a 64-bit mask chosen by
/// its bit 6: punctuation for `-` and `*`, letters for `a`, `p` and `u`. Bytes of 0x80 and
/// above may pass too (a line of such bytes is visited and turned away there).
#[inline(always)]
fn visits_line(w: u64, after: u64, nl: u64) -> bool {
    const PUNCT: u64 = 1 << (b'-' & 63) | 1 << (b'*' & 63);
    const LETTERS: u64 = 1 << (b'a' & 63) | 1 << (b'p' & 63) | 1 << (b'u' & 63);
    let next = (w >> 8) | (after << 56);
    let at = ((sip::past_first(nl) - 1) & 7) * 8;
    let f = ((next >> at) as u8 | 0x20) as u64;
    let letters = 0u64.wrapping_sub((f >> 6) & 1);
    let mask = PUNCT ^ ((PUNCT ^ LETTERS) & letters);
    (mask >> (f & 63)) & 1 != 0
}

/// Any byte of `w` may be `\n` (the borrowing zero-byte test: it may also flag a byte right
/// after a real newline, never miss one). The cheap first look of the search.
#[inline(always)]
fn may_hold_newline(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = w ^ (ONES * b'\n' as u64);
    x.wrapping_sub(ONES) & !x & (ONES * 0x80) != 0
}

/// Walk a message's header lines after the first for one value header (`ctx.want`: CSeq or
/// Call-ID): its colon and line end go to `sip::scan::UA`. A callback of its own, so that each
/// walk's callback holds only the branches it needs (the verifier checks a callback at every
/// call site).
#[inline(always)]
fn value_lines(ctx: &mut LineLoop) {
    // SAFETY: as in `first_line`.
    unsafe {
        bpf_loop(STEPS, value_step as *const () as *mut c_void, ctx as *mut LineLoop as *mut c_void, 0);
    }
}

/// The line the walk stands at, and whether it is the empty line (or past the window): the end
/// of the headers. `None` while the walk is still looking for the line's end.
#[inline(always)]
fn next_header_line(buf: Buf, n: u32) -> Option<(u32, u32, bool, bool)> {
    let (end, cut) = line_end(buf, n)?;
    let line = buf.get(sip::scan::LINE) as u32 & MASK;
    let first = buf.byte(line);
    let last = line >= n || first == b'\n' || (first == b'\r' && line + 1 < n && buf.byte(line + 1) == b'\n');
    Some((line, end, cut, last))
}

/// Move the walk to the next line.
#[inline(always)]
fn advance(buf: Buf, end: u32) {
    buf.set(sip::scan::LINES, buf.get(sip::scan::LINES) + 1);
    buf.set(sip::scan::LINE, end as u64);
}

/// One step of [`value_lines`]: 0 to go on, 1 to stop.
extern "C" fn value_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `LineLoop`.
    let ctx = unsafe { &mut *(ctx as *mut LineLoop) };
    let buf = ctx.buf;
    let Some((line, end, cut, last)) = next_header_line(buf, ctx.n) else { return 0 };
    if last {
        return 1;
    }
    value_header_line(buf, line, end, ctx.want);
    if cut || buf.get(sip::scan::UA) != 0 {
        return 1;
    }
    advance(buf, end);
    0
}

/// The walk's next step: the current line's end (just past its `\n`, or the window's end when
/// the window cuts the line off: the newline is unseen, or lies past the window in another
/// packet's bytes), or `None` after moving on by [`LINE_WORDS`] words without a newline (long
/// header values).
#[inline(always)]
fn line_end(buf: Buf, n: u32) -> Option<(u32, bool)> {
    use sip::scan::{PENDING, WORD};
    let mut word = buf.get(WORD) as u32 & (WORDS - 1);
    let mut pending = buf.get(PENDING);
    if pending == 0 {
        for _ in 0..LINE_WORDS {
            word += 1;
            if word * 8 >= n {
                return Some((n, true));
            }
            pending = sip::newline_mask(buf.aligned(word));
            if pending != 0 {
                break;
            }
        }
        buf.set(WORD, word as u64);
        if pending == 0 {
            return None;
        }
    }
    let low = pending & pending.wrapping_neg();
    buf.set(PENDING, pending ^ low);
    // Just past the newline; `& 15` tells the verifier it is at most 8 past the word.
    let end = word * 8 + (sip::past_first(low) as u32 & 15);
    Some(if end > n { (n, true) } else { (end, false) })
}

/// One step of [`first_line`]: 0 to go on, 1 to stop.
extern "C" fn first_line_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{LINE, LINES, WORD};
    // SAFETY: `ctx` is the caller's `LineLoop`.
    let ctx = unsafe { &mut *(ctx as *mut LineLoop) };
    let buf = ctx.buf;
    if buf.get(WORD) * 8 >= REQUEST_LINE_MAX as u64 {
        return 1;
    }
    let Some((end, cut)) = line_end(buf, ctx.n) else { return 0 };
    if !cut && end <= REQUEST_LINE_MAX {
        ctx.first_end = end;
        buf.set(LINES, 1);
        buf.set(LINE, end as u64);
    }
    1
}

/// One step of [`header_lines`]: 0 to go on, 1 to stop. `WORD` is the word searched,
/// `PENDING` its line starts not yet visited.
extern "C" fn header_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{FLAGS, PENDING, UA, WORD};
    // SAFETY: `ctx` is the caller's `LineLoop`.
    let ctx = unsafe { &mut *(ctx as *mut LineLoop) };
    let (buf, n) = (ctx.buf, ctx.n);
    let mut k = buf.get(WORD) as u32 & (WORDS - 1);
    let mut pending = buf.get(PENDING);
    if pending == 0 {
        // Words k+1 ..= k+SCAN_WORDS, read at constant offsets from one base (the scratch
        // buffer's slack covers the reads past the window); `left` of them hold window bytes.
        let total = n.div_ceil(8);
        let left = total.saturating_sub(k + 1);
        // SAFETY: k < WORDS, and the scratch value holds SCAN_WORDS + 8 words past the last.
        let base = unsafe { buf.words.add(k as usize + 1) };
        // Past the search: word k+SCAN_WORDS was the last searched, the next search begins after it.
        let mut found = sip::SCAN_WORDS - 1;
        for i in 0..sip::SCAN_WORDS {
            if i >= left {
                // The window ends inside the headers.
                return 1;
            }
            // SAFETY: as above.
            let w = unsafe { *base.add(i as usize) };
            if may_hold_newline(w) {
                let nl = sip::newline_mask(w);
                // SAFETY: as above.
                let after = unsafe { *base.add(i as usize + 1) };
                pending = if nl & nl.wrapping_sub(1) == 0 {
                    // One newline, as in most words that hold one: the byte after it decides.
                    if visits_line(w, after, nl) { nl } else { 0 }
                } else {
                    starts_in(w, after)
                };
                if pending != 0 {
                    found = i;
                    break;
                }
            }
        }
        k += 1 + found;
        buf.set(WORD, k as u64);
        if pending == 0 {
            buf.set(PENDING, 0);
            return 0;
        }
    }
    let low = pending & pending.wrapping_neg();
    buf.set(PENDING, pending ^ low);
    // Just past the newline; `& 15` tells the verifier it is at most 8 past the word.
    let line = k * 8 + (sip::past_first(low) as u32 & 15);
    if line >= n {
        // Past the window: what follows is another packet's bytes.
        return 1;
    }
    let first = buf.byte(line);
    if first == b'\n' || (first == b'\r' && line + 1 < n && buf.byte(line + 1) == b'\n') {
        // The empty line: end of the headers.
        buf.set(FLAGS, buf.get(FLAGS) | FLAG_ENDED);
        return 1;
    }
    // The line's end bounds nothing `header` reads: a name and the blanks after it hold no
    // newline, so the window's end serves.
    header(buf, line, n);
    let flags = buf.get(FLAGS);
    // The User-Agent, and credentials if they matter.
    let done = buf.get(UA) != 0 && (ctx.want & WANT_CREDENTIALS == 0 || flags & FLAG_CREDENTIALS != 0);
    if flags & FLAG_EVASION != 0 || done {
        return 1;
    }
    0
}

/// Classify the first line `[0, end)` (`end` just past its `\n`): `READ_REQUEST` when its last
/// field, trailing blanks aside, is a version starting with `SIP/` (any case) after a blank;
/// `READ_EVASION` when more than [`BLANKS_MAX`] blanks trail it.
// Own stack frame (BPF-to-BPF call), as `ua_verdict`.
#[inline(never)]
fn request_line(buf: Buf, end: u32) -> u32 {
    // The content's end: before the `\n`, and before a `\r` there.
    let mut e = end - 1;
    if e > 0 && buf.byte(e - 1) == b'\r' {
        e -= 1;
    }
    let e = e;
    // The common spelling, ` SIP/2.0` at the end, says yes at once.
    if e >= 8 && buf.word_at(e - 8) == u64::from_le_bytes(*b" SIP/2.0") {
        return READ_REQUEST;
    }
    // Trailing blanks: most lines have none, so the 8 bytes before the end tell.
    let nb = non_blank_mask(buf.word_before(e));
    let trailing = if nb != 0 { lowest_index(nb) } else { blank_run(buf, e, true) };
    if trailing > BLANKS_MAX {
        return READ_EVASION;
    }
    let e = e - trailing;
    // The version field: the bytes back to the blank before it, at most VERSION_MAX (16) of
    // them, so the blank lies among the 17 bytes before `e`.
    let blanks = |w: u64| !non_blank_mask(w) & 0x8080_8080_8080_8080;
    let near = blanks(buf.word_before(e));
    let far = blanks(buf.word_before(e.saturating_sub(8)));
    let len = if near != 0 {
        lowest_index(near)
    } else if e >= 8 && far != 0 {
        8 + lowest_index(far)
    } else if e >= 17 && blank(buf.byte(e - 17)) {
        VERSION_MAX
    } else {
        return READ_NOT_REQUEST;
    };
    if len <= 4 || len > VERSION_MAX {
        return READ_NOT_REQUEST;
    }
    let head = (buf.word_at(e - len) as u32) | 0x0020_2020;
    if head == W_SIP_SLASH { READ_REQUEST } else { READ_NOT_REQUEST }
}

/// The index of the lowest byte flagged in a non-zero byte mask (bit 7 per byte).
#[inline(always)]
fn lowest_index(mask: u64) -> u32 {
    (past_first(mask & mask.wrapping_neg()) as u32 & 15) - 1
}

/// What the blank-run callback needs.
#[repr(C)]
struct BlankLoop {
    buf: Buf,
    backward: u32,
    _pad: u32,
}

/// The length of the run of blanks starting at `pos` (or ending there, `backward`), counted up
/// to just past [`BLANKS_MAX`]: 8 bytes per `bpf_loop` step. Only a run longer than 8 bytes
/// gets here (an attacker's padding), so the common path has no loop. The run's position and
/// count live in the scan slots the User-Agent matcher uses later (`AT`, `STATE`): map memory,
/// so the verifier checks the callback once rather than once per count.
#[inline(always)]
fn blank_run(buf: Buf, pos: u32, backward: bool) -> u32 {
    use sip::scan::{AT, STATE};
    buf.set(AT, pos as u64);
    buf.set(STATE, 0);
    let mut ctx = BlankLoop { buf, backward: backward as u32, _pad: 0 };
    // SAFETY: as in `first_line`.
    unsafe {
        bpf_loop(BLANK_WORDS, blank_step as *const () as *mut c_void, &mut ctx as *mut BlankLoop as *mut c_void, 0);
    }
    buf.get(STATE) as u32
}

/// One word of [`blank_run`]: 0 to go on, 1 to stop.
extern "C" fn blank_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AT, STATE};
    // SAFETY: `ctx` is the caller's `BlankLoop`.
    let ctx = unsafe { &mut *(ctx as *mut BlankLoop) };
    let buf = ctx.buf;
    let pos = buf.get(AT) as u32 & (2 * sip::WINDOW_MAX - 1);
    let count = buf.get(STATE) as u32 & (2 * sip::WINDOW_MAX - 1);
    let w = if ctx.backward != 0 { buf.word_before(pos) } else { buf.word_at(pos) };
    let nb = non_blank_mask(w);
    if nb != 0 {
        buf.set(STATE, (count + lowest_index(nb)) as u64);
        return 1;
    }
    buf.set(STATE, (count + 8) as u64);
    buf.set(AT, if ctx.backward != 0 { pos.saturating_sub(8) } else { pos + 8 } as u64);
    if count + 8 > BLANKS_MAX { 1 } else { 0 }
}

/// Past `HCOLON` after a header name ending at `at`, on the line ending at `end`: the position
/// just past the colon, 0 when that is not what follows the name, and `FLAG_EVASION` raised when
/// more than [`BLANKS_MAX`] blanks come first.
#[inline(always)]
fn after_hcolon(buf: Buf, at: u32, end: u32) -> u32 {
    // Blanks: none or one in practice, so the 8 bytes after the name tell. Bytes past `end` do
    // not count (past the window they are stale).
    let nb = non_blank_mask(buf.word_at(at));
    let blanks = if nb != 0 { lowest_index(nb) } else { blank_run(buf, at, false) };
    let p = if at + blanks < end { at + blanks } else { end };
    if p - at > BLANKS_MAX {
        buf.set(sip::scan::FLAGS, buf.get(sip::scan::FLAGS) | FLAG_EVASION);
        return 0;
    }
    if p < end && buf.byte(p) == b':' { p + 1 } else { 0 }
}

/// Headers a walk looks for (`LineLoop::want`). A request walk ([`header_lines`]) always reads
/// the User-Agent and credentials, as the grammar does; `WANT_CREDENTIALS` makes it go on after
/// the User-Agent until credentials turn up. A value walk ([`value_lines`]) looks for one
/// header, whose colon and line end go to `sip::scan::UA` (`colon | end << 32`).
const WANT_USER_AGENT: u32 = 1;
const WANT_CREDENTIALS: u32 = 2;
const WANT_CSEQ: u32 = 4;
const WANT_CALL_ID: u32 = 8;

/// Header names the checks read (`HEADER_*`), and their lengths.
const HEADER_NONE: u32 = 0;
const HEADER_USER_AGENT: u32 = 10;
const HEADER_AUTHORIZATION: u32 = 13;
const HEADER_PROXY_AUTHORIZATION: u32 = 19;
const HEADER_CSEQ: u32 = 4;
const HEADER_CALL_ID: u32 = 7;
/// The compact form of Call-ID (`i`, RFC 3261 20.8).
const HEADER_CALL_ID_COMPACT: u32 = 1;

/// The name at `line` is `len` bytes of `word` (lower-cased) and then a blank or the colon.
#[inline(always)]
fn name_is(buf: Buf, line: u32, word: u64, len: u32) -> bool {
    let mask = u64::MAX >> (64 - 8 * len);
    let after = buf.byte(line + len);
    lower8(buf.word_at(line)) & mask == word & mask && (after == b':' || blank(after))
}

/// Look at one header line `[line, end)` of a request: the first User-Agent (RFC 3261 allows
/// one), or credentials. The name decides which (compared without case); then one `HCOLON`
/// check.
#[inline(always)]
fn header(buf: Buf, line: u32, end: u32) {
    // Most header lines start with another letter: one byte turns them away.
    if !matches!(buf.byte(line) | 0x20, b'u' | b'a' | b'p') {
        return;
    }
    let head = lower8(buf.word_at(line));
    let name = if head == W_USER_AGE {
        let next = lower8(buf.word_at(line + 8));
        if next & 0xffff == u64::from_le_bytes(*b"nt\0\0\0\0\0\0") && buf.get(sip::scan::UA) == 0 {
            HEADER_USER_AGENT
        } else {
            HEADER_NONE
        }
    } else if head == W_AUTHORIZ {
        let next = lower8(buf.word_at(line + 8));
        if next & 0xff_ffff_ffff == u64::from_le_bytes(*b"ation\0\0\0") { HEADER_AUTHORIZATION } else { HEADER_NONE }
    } else if head == W_PROXY_AU
        && lower8(buf.word_at(line + 8)) == W_THORIZAT
        && lower8(buf.word_at(line + 16)) & 0xff_ffff == u64::from_le_bytes(*b"ion\0\0\0\0\0")
    {
        HEADER_PROXY_AUTHORIZATION
    } else {
        HEADER_NONE
    };
    // The whole name must lie in the line: bytes past the window belong to earlier packets.
    if name == HEADER_NONE || line + name > end {
        return;
    }
    let colon = after_hcolon(buf, line + name, end);
    if colon == 0 {
        return;
    }
    if name == HEADER_USER_AGENT {
        buf.set(sip::scan::UA, colon as u64);
    } else {
        buf.set(sip::scan::FLAGS, buf.get(sip::scan::FLAGS) | FLAG_CREDENTIALS);
    }
}

/// Look at one header line `[line, end)` for the value header `want` (CSeq, or Call-ID in its
/// long or compact form): its colon and the line's end go to `sip::scan::UA`.
#[inline(always)]
fn value_header_line(buf: Buf, line: u32, end: u32, want: u32) {
    let first = buf.byte(line) | 0x20;
    let name = if want == WANT_CSEQ {
        if first == b'c' && name_is(buf, line, u64::from_le_bytes(*b"cseq\0\0\0\0"), 4) {
            HEADER_CSEQ
        } else {
            HEADER_NONE
        }
    } else if first == b'c' && name_is(buf, line, u64::from_le_bytes(*b"call-id\0"), 7) {
        HEADER_CALL_ID
    } else if first == b'i' && name_is(buf, line, u64::from_le_bytes(*b"i\0\0\0\0\0\0\0"), 1) {
        HEADER_CALL_ID_COMPACT
    } else {
        HEADER_NONE
    };
    if name == HEADER_NONE || line + name > end {
        return;
    }
    let colon = after_hcolon(buf, line + name, end);
    if colon != 0 {
        buf.set(sip::scan::UA, colon as u64 | (end as u64) << 32);
    }
}

/// Value bytes [`ua_step`] feeds the automaton per step.
const UA_RUN: u32 = 32;

/// What the matcher's callback needs.
#[repr(C)]
struct UaLoop {
    buf: Buf,
    matcher: *const UaMatcher,
    n: u32,
    /// `UA_*`, set by the callback.
    verdict: u32,
}

/// [`ua_verdict`]'s answers (`common::sip::grammar::UaVerdict`).
const UA_CLEAN: u32 = 0;
const UA_LISTED: u32 = 1;
const UA_OVERLONG: u32 = 2;
const UA_CUT: u32 = 3;

/// Run the User-Agent value after the colon at `colon` (and its continuation lines) through the
/// automaton of this generation under `bpf_loop` (see [`first_line`] for why): up to `UA_RUN` plain
/// value bytes per step, one for blanks before the value, line ends and folds. A value that
/// starts on the colon's line goes through the prefilter first ([`pair_step`]); one it clears
/// is clean without the automaton.
// Own stack frame (BPF-to-BPF call): its loop context is not live beside the line walk's.
#[inline(never)]
fn ua_verdict(buf: Buf, n: u32, colon: u32, generation: u32) -> u32 {
    let Some(m) = SIP_UA.get(generation) else {
        return UA_CLEAN;
    };
    let first = m.next[sip::UA_BEGIN as usize];
    if first & sip::UA_MATCH != 0 {
        return UA_LISTED;
    }
    // SWS: usually one blank, and the value starts within 8 bytes; a fold or a long run of
    // blanks is left to the loop.
    let nb = non_blank_mask(buf.word_at(colon));
    let value = colon + lowest_index(nb | 1 << 63);
    let (at, limit) = if nb != 0 && value < n && !matches!(buf.byte(value), b'\r' | b'\n') {
        (value, value + UA_VALUE_MAX)
    } else {
        (colon, 0)
    };
    let mut ctx = UaLoop { buf, matcher: m as *const UaMatcher, n, verdict: UA_CLEAN };
    if limit != 0 {
        // The prefilter first: a one-line value none of whose class pairs is a key pair matches
        // no pattern.
        buf.set(sip::scan::AT, at as u64);
        buf.set(sip::scan::STATE, sip::UA_BEGIN as u64 | (if limit < n { limit } else { n } as u64) << 32);
        // SAFETY: as in `first_line`.
        unsafe {
            bpf_loop(
                UA_VALUE_MAX / UA_RUN + 1,
                pair_step as *const () as *mut c_void,
                &mut ctx as *mut UaLoop as *mut c_void,
                0,
            );
        }
        if ctx.verdict == PAIRS_NONE {
            return UA_CLEAN;
        }
        ctx.verdict = UA_CLEAN;
    }
    buf.set(sip::scan::AT, at as u64);
    buf.set(sip::scan::STATE, first as u64 | (limit as u64) << 32);
    // SAFETY: as in `first_line`. Steps: the blanks and folds before the value, then the
    // value's bytes.
    unsafe {
        bpf_loop(sip::WINDOW_MAX + 2, ua_step as *const () as *mut c_void, &mut ctx as *mut UaLoop as *mut c_void, 0);
    }
    ctx.verdict
}

/// [`pair_step`]'s answer (in `UaLoop::verdict`): the value ends on its line, within the bound
/// and the window, and holds no key pair. Anything else (a key pair, a fold, a lone `\r`, the
/// bound or the window's end) leaves the value to the automaton.
const PAIRS_NONE: u32 = 4;

/// One step of the prefilter in [`ua_verdict`]: up to [`UA_RUN`] value bytes, each one class
/// load and one test of its pair with the previous byte's class in `UaMatcher::pairs` (loads
/// that do not wait on each other, unlike the automaton's). `sip::scan::AT` is the position,
/// `sip::scan::STATE` the previous class and above bit 32 where the value must end (the bound
/// or the window). 0 to go on, 1 to stop.
extern "C" fn pair_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AT, STATE};
    // SAFETY: `ctx` is the caller's `UaLoop`; `matcher` points into `SIP_UA`.
    let ctx = unsafe { &mut *(ctx as *mut UaLoop) };
    let (buf, n) = (ctx.buf, ctx.n);
    let m = unsafe { &*ctx.matcher };
    let i = buf.get(AT) as u32 & MASK;
    let state = buf.get(STATE);
    let stop = (state >> 32) as u32;
    // The run: up to UA_RUN bytes, before the bound and the first CR or LF, found 8 bytes at
    // a time so that the byte loop below tests nothing but its end.
    let run = if stop < i + UA_RUN { stop } else { i + UA_RUN };
    let mut end = run;
    for k in 0..UA_RUN / 8 {
        let p = i + 8 * k;
        if p >= run {
            break;
        }
        let w = buf.word_at(p);
        let line_end = sip::newline_mask(w) | sip::zero_bytes(w ^ 0x0d0d_0d0d_0d0d_0d0d);
        if line_end != 0 {
            let at = p + lowest_index(line_end);
            if at < end {
                end = at;
            }
            break;
        }
    }
    // The run's bytes, a word at a time. The last word may reach past the run's end: those
    // bytes can only add hits (a line end's bytes are in no pattern), which sends the value to
    // the automaton, never past it; a run that continues in the next step is whole words.
    let (mut prev, mut hits) = (state as usize, 0u64);
    let words = (end - i).div_ceil(8);
    for k in 0..UA_RUN / 8 {
        if k >= words {
            break;
        }
        let w = buf.word_at(i + 8 * k);
        for b in 0..8 {
            let class = m.class[(w >> (8 * b)) as u8 as usize] as usize & (sip::UA_CLASSES as usize - 1);
            hits |= m.pairs[prev & (sip::UA_CLASSES as usize - 1)] >> class;
            prev = class;
        }
    }
    if hits & 1 != 0 || end >= stop {
        return 1;
    }
    if end < run {
        // The line's end: one `\r\n` (or `\n`) followed by another header.
        let nl = if buf.byte(end) == b'\r' { end + 1 } else { end };
        if nl + 1 < n && buf.byte(nl) == b'\n' && !blank(buf.byte(nl + 1)) {
            ctx.verdict = PAIRS_NONE;
        }
        return 1;
    }
    buf.set(AT, end as u64);
    buf.set(STATE, prev as u64 | (stop as u64) << 32);
    0
}

/// One step of [`ua_verdict`]: 0 to go on, 1 to stop. `sip::scan::STATE` holds the automaton's
/// state, and above bit 32 the position [`UA_VALUE_MAX`] bytes past the value's first byte once
/// `SWS` is behind (0 before). A line end followed by a blank is a fold, read as one SP.
extern "C" fn ua_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AT, STATE};
    // SAFETY: `ctx` is the caller's `UaLoop`; `matcher` points into `SIP_UA`.
    let ctx = unsafe { &mut *(ctx as *mut UaLoop) };
    let (buf, n) = (ctx.buf, ctx.n);
    let m = unsafe { &*ctx.matcher };
    let i = buf.get(AT) as u32 & MASK;
    let state = buf.get(STATE);
    let mut limit = (state >> 32) as u32;
    if limit != 0 && i >= limit {
        // As many bytes as the bound allows: does the value end here?
        let p = if buf.byte(i) == b'\r' && i + 1 < n && buf.byte(i + 1) == b'\n' { i + 1 } else { i };
        ctx.verdict = if p >= n {
            UA_CUT
        } else if buf.byte(p) != b'\n' {
            UA_OVERLONG
        } else if p + 1 >= n {
            UA_CUT
        } else if blank(buf.byte(p + 1)) {
            UA_OVERLONG
        } else {
            UA_CLEAN
        };
        return 1;
    }
    if i >= n {
        ctx.verdict = UA_CUT;
        return 1;
    }
    let mut c = buf.byte(i);
    buf.set(AT, (i + 1) as u64);
    if c == b'\n' {
        if i + 1 >= n {
            // A fold may follow, unseen.
            ctx.verdict = UA_CUT;
            return 1;
        }
        if !blank(buf.byte(i + 1)) {
            // The header's end.
            return 1;
        }
        c = b' ';
    }
    if limit == 0 {
        // Still in SWS.
        if blank(c) || c == b'\r' {
            return 0;
        }
        limit = i + UA_VALUE_MAX;
    }
    if c == b'\r' {
        return 0;
    }
    let class = (m.class[c as usize] as u32 & (sip::UA_CLASSES - 1)) as usize;
    let s = (state as u16 & sip::UA_STATE_MASK) as usize;
    let next = m.next[(s * sip::UA_CLASSES as usize + class) & NEXT_MASK];
    if next & sip::UA_MATCH != 0 {
        ctx.verdict = UA_LISTED;
        return 1;
    }
    // The common case, plain value bytes: up to `UA_RUN - 1` more in this step. A line end, a
    // `\r`, the window's end or the bound stops it; the next step reads that byte as above.
    // Matching states lead only to themselves (the controller builds them so), so the match
    // bit is looked at once, after the run.
    let stop = if limit < n { limit } else { n };
    let (mut s, mut j) = (next, i + 1);
    for _ in 1..UA_RUN {
        if j >= stop {
            break;
        }
        let c = buf.byte(j);
        if c == b'\r' || c == b'\n' {
            break;
        }
        let class = (m.class[c as usize] as u32 & (sip::UA_CLASSES - 1)) as usize;
        s = m.next[((s & sip::UA_STATE_MASK) as usize * sip::UA_CLASSES as usize + class) & NEXT_MASK];
        j += 1;
    }
    if s & sip::UA_MATCH != 0 {
        ctx.verdict = UA_LISTED;
        return 1;
    }
    // The run stopped at the value's line end, and the next line is another header (the value
    // does not fold): clean, decided here rather than by two more steps (the `\r`, then the
    // `\n`) that would find the same.
    if j < stop {
        let nl = if buf.byte(j) == b'\r' { j + 1 } else { j };
        if nl + 1 < n && buf.byte(nl) == b'\n' && !blank(buf.byte(nl + 1)) {
            return 1;
        }
    }
    buf.set(AT, j as u64);
    buf.set(STATE, s as u64 | (limit as u64) << 32);
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
    if SIP_PEERS.insert(source, zero::<SipPeer>()?, BPF_NOEXIST as u64).is_ok() {
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

/// Egress: a SIP message the host's SIP server sends from a SIP port to `pkt.dst`: a response
/// feeds the authentication counters ([`response`]); a request the server sends itself (an
/// OPTIONS ping, a REGISTER to a trunk) has its Call-ID remembered, so that the peer's response
/// proves the peer ([`learn_from_response`]).
#[inline(always)]
pub fn egress(ctx: &TcContext, pkt: &Packet, cfg: &PolicyConfig) {
    if pkt.payload_off == 0 {
        return;
    }
    let Ok(head) = ctx.load::<[u8; 16]>(pkt.payload_off as usize) else {
        return;
    };
    match sip::status_code(&head) {
        Some(code) => response(ctx, pkt, cfg, code),
        None if is_token(head[0]) => {
            record_request(ctx, pkt, cfg);
        }
        None => {}
    }
}

/// The destination of an egress packet as ingress keys its source.
#[inline(always)]
fn dst_key(pkt: &Packet, cfg: &PolicyConfig) -> SourceKey {
    if pkt.ipv6 { common::addr::mask_prefix(pkt.dst, cfg.ipv6_prefix) } else { pkt.dst }
}

/// A response the host's SIP server sends to `pkt.dst`. 401/407 to a request without
/// credentials is a challenge; 401/407 while a request with credentials is pending, and every
/// 403, is a failed authentication. Enough of either within the detection period bans the
/// destination. A 2xx to a REGISTER while credentials were pending proves the destination
/// (`known::PROOF_SIP_DIGEST`): it answered the challenge that went only to its address.
#[inline(always)]
fn response(ctx: &TcContext, pkt: &Packet, cfg: &PolicyConfig, code: u16) {
    if cfg.sip_flags & SIP_AUTH_WATCH == 0 || code < 200 {
        return;
    }
    let key = dst_key(pkt, cfg);
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
    if code < 300 && peer.pending > 0 {
        peer.pending -= 1;
        if cseq_is_register(ctx, pkt) {
            known::learn(&key, PROOF_SIP_DIGEST, now, cfg.known_ttl_ns);
        }
        return;
    }
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

/// The value of the header a value walk found: `colon | end << 32` from `sip::scan::UA`.
#[inline(always)]
fn value_header(buf: Buf, n: u32, want: u32) -> Option<(u32, u32)> {
    let mut lines = first_line(buf, n, want);
    if lines.first_end == 0 {
        return None;
    }
    value_lines(&mut lines);
    let v = buf.get(sip::scan::UA);
    if v == 0 {
        return None;
    }
    Some((v as u32 & MASK, (v >> 32) as u32 & (2 * sip::WINDOW_MAX - 1)))
}

/// The response is to a REGISTER: its `CSeq: 1*DIGIT LWS Method` names REGISTER.
// Own stack frame (BPF-to-BPF call): see `ua_verdict`.
#[inline(never)]
fn cseq_is_register(ctx: &TcContext, pkt: &Packet) -> bool {
    let Some((buf, n)) = skb_window(ctx, pkt.payload_off as u32, sip::WINDOW_MAX) else {
        return false;
    };
    let Some((colon, _)) = value_header(buf, n, WANT_CSEQ) else {
        return false;
    };
    // The host's own server writes it plainly: a few blanks, a number, a blank.
    let nb = non_blank_mask(buf.word_at(colon));
    if nb == 0 {
        return false;
    }
    let number = colon + lowest_index(nb);
    let not_digit = non_digit_mask(buf.word_at(number)) | 1 << 63;
    let digits = lowest_index(not_digit);
    let nb = non_blank_mask(buf.word_at(number + digits));
    if digits == 0 || nb == 0 {
        return false;
    }
    let method = number + digits + lowest_index(nb);
    let after = buf.byte(method + 8);
    method + 8 < n
        && lower8(buf.word_at(method)) == u64::from_le_bytes(*b"register")
        && (blank(after) || after == b'\r' || after == b'\n')
}

/// Bytes of `w` that are not ASCII digits: bit 7 of exactly those bytes set (as in `lower8`).
#[inline(always)]
fn non_digit_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let h = w & 0x7f7f_7f7f_7f7f_7f7f;
    let ge_0 = h + ONES * (0x80 - b'0' as u64);
    let gt_9 = h + ONES * (0x80 - b'9' as u64 - 1);
    let digit = (ge_0 ^ gt_9) & !w & (ONES * 0x80);
    !digit & (ONES * 0x80)
}

/// The Call-ID value's hash (`known::call_id_hash` of the value, blanks around it aside).
#[inline(always)]
fn call_id(buf: Buf, n: u32) -> Option<u64> {
    let (colon, end) = value_header(buf, n, WANT_CALL_ID)?;
    // The value: after the blanks that follow the colon, up to the line end (before CR LF and
    // trailing blanks).
    let nb = non_blank_mask(buf.word_at(colon));
    if nb == 0 {
        return None;
    }
    let start = colon + lowest_index(nb);
    let mut e = end;
    if e > start && buf.byte(e - 1) == b'\n' {
        e -= 1;
    }
    if e > start && buf.byte(e - 1) == b'\r' {
        e -= 1;
    }
    let tail = non_blank_mask(buf.word_before(e));
    if tail == 0 {
        return None;
    }
    let e = e - lowest_index(tail);
    if e <= start {
        return None;
    }
    Some(hash_value(buf, start, e))
}

/// What the hash callback needs.
#[repr(C)]
struct HashLoop {
    buf: Buf,
    end: u32,
    _pad: u32,
}

/// `known::call_id_hash` of `[start, end)`, 8 bytes per `bpf_loop` step, position and hash in
/// the scan slots (see [`blank_run`] for why).
#[inline(always)]
fn hash_value(buf: Buf, start: u32, end: u32) -> u64 {
    use sip::scan::{AT, STATE};
    let end = if end - start > proofs::CALL_ID_MAX { start + proofs::CALL_ID_MAX } else { end };
    buf.set(AT, start as u64);
    buf.set(STATE, proofs::CALL_ID_SEED);
    let mut ctx = HashLoop { buf, end, _pad: 0 };
    // SAFETY: as in `first_line`.
    unsafe {
        bpf_loop(
            proofs::CALL_ID_MAX / 8,
            hash_step as *const () as *mut c_void,
            &mut ctx as *mut HashLoop as *mut c_void,
            0,
        );
    }
    buf.get(STATE)
}

/// One word of [`hash_value`]: 0 to go on, 1 to stop.
extern "C" fn hash_step(_index: u64, ctx: *mut c_void) -> i64 {
    use sip::scan::{AT, STATE};
    // SAFETY: `ctx` is the caller's `HashLoop`.
    let ctx = unsafe { &mut *(ctx as *mut HashLoop) };
    let buf = ctx.buf;
    let at = buf.get(AT) as u32 & MASK;
    if at >= ctx.end {
        return 1;
    }
    let left = ctx.end - at;
    let w = buf.word_at(at);
    let w = if left >= 8 { w } else { w & (u64::MAX >> ((8 - (left & 7)) * 8)) };
    buf.set(STATE, proofs::call_id_step(buf.get(STATE), w));
    buf.set(AT, (at + 8) as u64);
    0
}

/// Egress: a request the host's SIP server sends to `pkt.dst`: remember its Call-ID, and set
/// the destination's filter slot so that ingress looks its responses up.
// Own stack frame (BPF-to-BPF call): see `ua_verdict`.
#[inline(never)]
fn record_request(ctx: &TcContext, pkt: &Packet, cfg: &PolicyConfig) -> u32 {
    let Some((buf, n)) = skb_window(ctx, pkt.payload_off as u32, sip::WINDOW_MAX) else {
        return 0;
    };
    let Some(h) = call_id(buf, n) else {
        return 0;
    };
    let key = dst_key(pkt, cfg);
    let now = clock::now();
    if SIP_CALLS.get_ptr_mut(&key).is_none() {
        let Some(zero) = zero::<SipCalls>() else { return 0 };
        if SIP_CALLS.insert(&key, zero, BPF_NOEXIST as u64).is_ok() {
            bump(stat::SIP_CALLS_CREATED);
        }
        known::mark(&key);
    }
    if let Some(c) = SIP_CALLS.get_ptr_mut(&key) {
        // SAFETY: value pointer from a successful lookup.
        let c = unsafe { &mut *c };
        let i = (c.next & 3) as usize;
        c.hashes[i] = h;
        c.next = c.next.wrapping_add(1);
        c.sent_ns = now;
    }
    1
}

/// Ingress, for a source that is not known, before the budget of unknown sources: a response
/// from a source the host's SIP server sent requests to proves the source when it carries one
/// of their Call-IDs (`known::PROOF_SIP_RESPONSE`). True when it did. Sources with a clear
/// filter slot (every spoofed one) cost one array read.
#[inline(always)]
pub fn learn_from_response(xdp: *mut xdp_md, frame_len: u32, pkt: &Packet, cfg: &PolicyConfig) -> bool {
    pkt.payload_off != 0 && known::maybe(&crate::source_key(pkt, cfg)) && learn_call(xdp, frame_len, pkt, cfg) != 0
}

// Own stack frame (BPF-to-BPF call): see `ua_verdict`.
#[inline(never)]
fn learn_call(xdp: *mut xdp_md, frame_len: u32, pkt: &Packet, cfg: &PolicyConfig) -> u32 {
    let source = crate::source_key(pkt, cfg);
    let now = clock::now();
    // SAFETY: value reference from a lookup; the hashes are copied out at once (the egress
    // program may overwrite one meanwhile, which at worst misses this response).
    let Some(hashes) = (unsafe { SIP_CALLS.get(&source) }).map(|c| c.hashes) else {
        return 0;
    };
    let off = pkt.payload_off as u32;
    let Some((buf, n)) = xdp_window(xdp, off, frame_len.saturating_sub(off), sip::WINDOW_MAX) else {
        return 0;
    };
    if (buf.aligned(0) as u32) | 0x0020_2020 != W_SIP_SLASH {
        return 0;
    }
    let Some(h) = call_id(buf, n) else {
        return 0;
    };
    if hashes[0] == h || hashes[1] == h || hashes[2] == h || hashes[3] == h {
        known::learn(&source, PROOF_SIP_RESPONSE, now, cfg.known_ttl_ns);
        return 1;
    }
    0
}

/// What [`media_ports`] found: the ports of up to four `m=` lines of the message's body.
#[repr(C)]
pub struct MediaPorts {
    pub ports: [u16; 4],
    pub count: u32,
}

/// The byte walk of [`media_ports`] (on the caller's stack, passed to `bpf_loop`).
#[repr(C)]
struct SdpLoop {
    bytes: *const u8,
    n: u32,
    /// `SDP_*`.
    state: u32,
    /// The header block ended (an empty line was seen).
    body: u32,
    port: u32,
    found: MediaPorts,
}

const SDP_LINE_START: u32 = 0;
const SDP_M: u32 = 1;
const SDP_MEDIA: u32 = 2;
const SDP_PORT: u32 = 3;
const SDP_OTHER: u32 = 4;

/// The media ports the host's own SDP offers or answers in a message it sends from a SIP port
/// (at `off` in the socket buffer): the port of each `m=` line of the body, read byte by byte
/// under `bpf_loop` within the first [`sip::WINDOW_MAX`] bytes. Used to open a provisional
/// pinhole before the message leaves (see `signaling::provisional`).
#[inline(always)]
pub fn media_ports(ctx: &TcContext, off: u32) -> Option<MediaPorts> {
    let (buf, n) = skb_window(ctx, off, sip::WINDOW_MAX)?;
    let mut walk = SdpLoop {
        bytes: buf.bytes,
        n,
        state: SDP_LINE_START,
        body: 0,
        port: 0,
        found: MediaPorts { ports: [0; 4], count: 0 },
    };
    // SAFETY: `sdp_step` is a BPF subprogram taking (index, ctx); `walk` outlives the call.
    unsafe {
        bpf_loop(sip::WINDOW_MAX, sdp_step as *const () as *mut c_void, &mut walk as *mut SdpLoop as *mut c_void, 0);
    }
    Some(walk.found)
}

/// One byte of [`media_ports`]: 0 to go on, 1 to stop.
extern "C" fn sdp_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `SdpLoop`.
    let w = unsafe { &mut *(ctx as *mut SdpLoop) };
    let i = index as u32;
    if i >= w.n || w.found.count >= 4 {
        return 1;
    }
    // SAFETY: the index is masked into the window, inside the scratch value.
    let b = unsafe { *w.bytes.add((i & (sip::WINDOW_MAX - 1)) as usize) };
    w.state = match (w.state, b) {
        (_, b'\n') if w.state == SDP_LINE_START => {
            w.body = 1;
            SDP_LINE_START
        }
        (SDP_PORT, b'0'..=b'9') => {
            w.port = w.port * 10 + (b - b'0') as u32;
            if w.port > 65535 { SDP_OTHER } else { SDP_PORT }
        }
        (SDP_PORT, _) => {
            let c = w.found.count;
            if w.port != 0 && c < 4 {
                w.found.ports[(c & 3) as usize] = w.port as u16;
                w.found.count = c + 1;
            }
            if b == b'\n' { SDP_LINE_START } else { SDP_OTHER }
        }
        (_, b'\n') => SDP_LINE_START,
        (SDP_LINE_START, b'\r') => SDP_LINE_START,
        (SDP_LINE_START, b'm') if w.body != 0 => SDP_M,
        (SDP_M, b'=') => SDP_MEDIA,
        (SDP_MEDIA, b' ') => {
            w.port = 0;
            SDP_PORT
        }
        (SDP_MEDIA, _) => SDP_MEDIA,
        _ => SDP_OTHER,
    };
    0
}
