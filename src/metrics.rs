//! Counters and latency histograms for `/metrics`, kept with atomics (no locks on the
//! issuance path) and rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 0.25 ms … 5 s.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes `name_bucket`, `name_sum`, `name_count` (cumulative buckets, as Prometheus wants).
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// A counter per label value (e.g. issuance result).
#[derive(Debug, Default)]
pub struct LabeledCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabeledCounter {
    pub fn inc(&self, label: &str) {
        let mut v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(label.to_string()).or_default() += 1;
    }

    pub fn get(&self, label: &str) -> u64 {
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        v.get(label).copied().unwrap_or(0)
    }

    pub fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (value, n) in v.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// What the issuance service counts.
#[derive(Debug, Default)]
pub struct IssuanceMetrics {
    /// By result: `ok` or the gRPC code name of the refusal.
    pub results: LabeledCounter,
    pub latency: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "test");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count 3\n"), "{out}");
    }

    #[test]
    fn labeled_counters_count_per_label() {
        let c = LabeledCounter::default();
        c.inc("ok");
        c.inc("ok");
        c.inc("PermissionDenied");
        assert_eq!(c.get("ok"), 2);
        let mut out = String::new();
        c.render(&mut out, "n_total", "result", "test");
        assert!(
            out.contains("n_total{result=\"PermissionDenied\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("n_total{result=\"ok\"} 2\n"), "{out}");
    }
}
