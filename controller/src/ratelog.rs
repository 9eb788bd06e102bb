//! Rate-limited log lines: a burst of bans or errors writes a few lines per window and counts the
//! rest, so a flood never floods the journal. The next line written for a kind carries the count
//! of those suppressed before it; [`RateLog::flush`] reports counts no later line will carry.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Per kind of line: at most `per_window` lines in each `window`.
#[derive(Debug)]
pub struct RateLog {
    per_window: u32,
    window: Duration,
    kinds: HashMap<&'static str, Slot>,
}

#[derive(Debug)]
struct Slot {
    start: Instant,
    written: u32,
    suppressed: u64,
}

impl RateLog {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window: per_window.max(1), window, kinds: HashMap::new() }
    }

    /// Whether a line of `kind` may be written now: `Some(n)` with the `n` lines of that kind
    /// suppressed since the last one written, or `None` (counted as suppressed).
    pub fn allow(&mut self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let slot = self.kinds.entry(kind).or_insert(Slot { start: now, written: 0, suppressed: 0 });
        if now.duration_since(slot.start) >= self.window {
            slot.start = now;
            slot.written = 0;
        }
        if slot.written < self.per_window {
            slot.written += 1;
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed += 1;
            None
        }
    }

    /// Kinds whose window has ended with lines suppressed: `(kind, count)`, each reported once.
    /// Call it periodically and write one summary line per entry.
    pub fn flush(&mut self) -> Vec<(&'static str, u64)> {
        self.flush_at(Instant::now())
    }

    fn flush_at(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (kind, slot) in &mut self.kinds {
            if slot.suppressed > 0 && now.duration_since(slot.start) >= self.window {
                out.push((*kind, std::mem::take(&mut slot.suppressed)));
            }
        }
        out.sort_unstable();
        out
    }

    /// The window, for messages ("in the last 1 s").
    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_the_allowance_and_counts_the_rest() {
        let mut log = RateLog::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let allowed: Vec<_> = (0..1000).map(|_| log.allow_at("ban", t0)).collect();
        assert_eq!(allowed.iter().filter(|a| a.is_some()).count(), 3);
        assert!(allowed[..3].iter().all(|a| *a == Some(0)));
        // Other kinds have their own allowance.
        assert_eq!(log.allow_at("error", t0), Some(0));
        // Within the window nothing is flushed; after it, the count, once.
        assert!(log.flush_at(t0 + Duration::from_millis(500)).is_empty());
        let later = t0 + Duration::from_secs(1);
        assert_eq!(log.flush_at(later), vec![("ban", 997)]);
        assert!(log.flush_at(later).is_empty());
        // A new window: lines again, carrying what was suppressed since the flush.
        assert_eq!(log.allow_at("ban", later), Some(0));
        for _ in 0..5 {
            log.allow_at("ban", later);
        }
        assert_eq!(log.allow_at("ban", later + Duration::from_secs(2)), Some(3));
    }

    #[test]
    fn every_line_is_written_or_counted() {
        let mut log = RateLog::new(20, Duration::from_millis(100));
        let t0 = Instant::now();
        let (mut written, mut counted) = (0u64, 0u64);
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 7);
            if let Some(n) = log.allow_at("ban", now) {
                written += 1;
                counted += n;
            }
            if i % 1000 == 0 {
                counted += log.flush_at(now).iter().map(|(_, n)| n).sum::<u64>();
            }
        }
        counted += log.flush_at(t0 + Duration::from_secs(10)).iter().map(|(_, n)| n).sum::<u64>();
        assert_eq!(written + counted, 100_000);
        // 0.7 s of events: 7 or 8 windows of 20 lines.
        assert!(written <= 8 * 20, "{written}");
    }
}
