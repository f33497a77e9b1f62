//! Rate limiting of refusal records, so a flood of bad requests cannot fill the disk while
//! every refusal is still accounted for: each one is either its own record or counted in
//! exactly one later record's `folded`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many refusal records a caller may cause.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefusalLimits {
    /// Records a caller may cause at once.
    pub burst: u32,
    /// Records per minute a caller earns back.
    pub per_minute: u32,
    /// Callers tracked at once; beyond that, new callers share one entry.
    pub max_callers: usize,
    /// Folded refusals are written as a summary record at the latest after this long.
    pub summary_after: Duration,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        RefusalLimits {
            burst: 10,
            per_minute: 10,
            max_callers: 4096,
            summary_after: Duration::from_secs(60),
        }
    }
}

/// The caller key used when too many callers are tracked.
pub const OVERFLOW: &str = "(many callers)";

struct Entry {
    tokens: f64,
    refilled: Instant,
    folded: u64,
    first_folded: Option<Instant>,
}

pub struct RefusalLimiter {
    limits: RefusalLimits,
    callers: HashMap<String, Entry>,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write a record carrying this many earlier, folded refusals.
    Record { folded: u64 },
    /// Count it in the caller's folded total.
    Fold,
}

impl RefusalLimiter {
    pub fn new(limits: RefusalLimits) -> Self {
        RefusalLimiter {
            limits,
            callers: HashMap::new(),
        }
    }

    fn entry(&mut self, caller: &str, now: Instant) -> &mut Entry {
        if !self.callers.contains_key(caller) && self.callers.len() >= self.limits.max_callers {
            // Forget callers that have nothing folded and a full bucket again.
            let full = f64::from(self.limits.burst);
            let rate = f64::from(self.limits.per_minute) / 60.0;
            self.callers.retain(|_, e| {
                e.folded > 0
                    || e.tokens + now.duration_since(e.refilled).as_secs_f64() * rate < full
            });
        }
        let key =
            if self.callers.contains_key(caller) || self.callers.len() < self.limits.max_callers {
                caller
            } else {
                OVERFLOW
            };
        let burst = f64::from(self.limits.burst);
        self.callers.entry(key.to_string()).or_insert(Entry {
            tokens: burst,
            refilled: now,
            folded: 0,
            first_folded: None,
        })
    }

    /// Decides about one refusal by `caller` at `now`.
    pub fn decide(&mut self, caller: &str, now: Instant) -> Decision {
        let (burst, rate) = (
            f64::from(self.limits.burst),
            f64::from(self.limits.per_minute) / 60.0,
        );
        let e = self.entry(caller, now);
        e.tokens = (e.tokens + now.duration_since(e.refilled).as_secs_f64() * rate).min(burst);
        e.refilled = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            let folded = std::mem::take(&mut e.folded);
            e.first_folded = None;
            Decision::Record { folded }
        } else {
            e.folded += 1;
            e.first_folded.get_or_insert(now);
            Decision::Fold
        }
    }

    /// Gives back a refusal that could not be recorded (queue full, storage error): it is
    /// folded instead.
    pub fn unrecorded(&mut self, caller: &str, folded_with_it: u64, now: Instant) {
        self.refold(caller, folded_with_it + 1, now);
    }

    /// Gives back `n` refusals of `caller` whose record (a summary) could not be written.
    pub fn refold(&mut self, caller: &str, n: u64, now: Instant) {
        let e = self.entry(caller, now);
        e.folded += n;
        e.first_folded.get_or_insert(now);
    }

    /// Callers whose folded refusals have waited `summary_after` (all of them when `all`),
    /// with their counts, which are reset.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<(String, u64)> {
        let wait = self.limits.summary_after;
        let mut out = Vec::new();
        for (caller, e) in self.callers.iter_mut() {
            let due = e.folded > 0
                && (all
                    || e.first_folded
                        .is_some_and(|t| now.duration_since(t) >= wait));
            if due {
                out.push((caller.clone(), std::mem::take(&mut e.folded)));
                e.first_folded = None;
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_folded_and_every_refusal_is_counted_once() {
        let mut l = RefusalLimiter::new(RefusalLimits::default());
        let t0 = Instant::now();
        let mut recorded = 0u64;
        let mut folded_in_records = 0u64;
        for i in 0..10_000u64 {
            // 10,000 refusals within 100 seconds.
            let now = t0 + Duration::from_millis(i * 10);
            if let Decision::Record { folded } = l.decide("spiffe://td/ns/a/sa/b", now) {
                recorded += 1;
                folded_in_records += folded;
            }
        }
        // Burst 10, then 10 a minute: about 26 records in 100 s.
        assert!((10..=30).contains(&recorded), "{recorded} records");
        let rest: u64 = l
            .due(t0 + Duration::from_secs(200), true)
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(recorded + folded_in_records + rest, 10_000);
    }

    #[test]
    fn callers_are_limited_separately_and_many_callers_share_one_entry() {
        let limits = RefusalLimits {
            max_callers: 3,
            ..RefusalLimits::default()
        };
        let mut l = RefusalLimiter::new(limits);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(matches!(l.decide("a", now), Decision::Record { .. }));
        }
        assert_eq!(l.decide("a", now), Decision::Fold);
        assert!(matches!(l.decide("b", now), Decision::Record { .. }));
        assert!(matches!(l.decide("c", now), Decision::Record { .. }));
        // A fourth caller goes to the shared entry; "a" keeps its folded count.
        for _ in 0..100 {
            l.decide(&format!("x{}", rand_name()), now);
        }
        assert_eq!(l.callers.len(), 4);
        let due = l.due(now, true);
        assert!(due.iter().any(|(c, n)| c == "a" && *n == 1));
        assert!(due.iter().any(|(c, _)| c == OVERFLOW));
    }

    fn rand_name() -> u64 {
        use rand::RngCore;
        rand::rngs::OsRng.next_u64()
    }

    #[test]
    fn summaries_wait_for_their_time() {
        let mut l = RefusalLimiter::new(RefusalLimits {
            burst: 1,
            ..RefusalLimits::default()
        });
        let t0 = Instant::now();
        assert!(matches!(l.decide("a", t0), Decision::Record { folded: 0 }));
        assert_eq!(l.decide("a", t0), Decision::Fold);
        assert!(l.due(t0 + Duration::from_secs(30), false).is_empty());
        assert_eq!(
            l.due(t0 + Duration::from_secs(61), false),
            vec![("a".to_string(), 1)]
        );
        assert!(l.due(t0 + Duration::from_secs(62), true).is_empty());
    }
}
