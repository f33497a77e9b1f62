//! What `/metrics` reports, encoded by `prometheus-client` in the Prometheus text format.
//!
//! The hot paths (issuance, device calls) only touch atomics: [`Histogram`] and
//! [`LabeledCounter`] never lock for a known label. Everything else is read when a scrape comes
//! ([`Scrape`]): there is no background refresh, so a value is never older than the scrape.
//! Names follow the Prometheus conventions: counters end in `_total` (added by the encoder),
//! durations are `_seconds` histograms, instants are `_timestamp_seconds` gauges.

pub mod process;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Scrape::encode`] returns (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

    /// The buckets (per bucket, not cumulative; the encoder adds them up and the `+Inf`
    /// bucket), the sum in seconds and the count, as of now.
    fn snapshot(&self) -> Value {
        let buckets = LATENCY_BOUNDS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
            .collect();
        Value::Histogram {
            buckets,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count(),
        }
    }
}

/// Counts per value of one label. The values named at construction are counted with an
/// atomic each (no lock, no allocation); any other value goes to a locked map.
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    known: &'static [&'static str],
    counts: Box<[AtomicU64]>,
    other: Mutex<BTreeMap<String, u64>>,
}

impl LabeledCounter {
    /// A counter labelled `label`, reporting each of `known` (zero included) from the start.
    pub fn new(label: &'static str, known: &'static [&'static str]) -> Self {
        LabeledCounter {
            label,
            known,
            counts: known.iter().map(|_| AtomicU64::new(0)).collect(),
            other: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, value: &str) {
        match self.known.iter().position(|k| *k == value) {
            Some(i) => {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut other = self.other.lock().unwrap_or_else(|p| p.into_inner());
                *other.entry(value.to_string()).or_default() += 1;
            }
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        match self.known.iter().position(|k| *k == value) {
            Some(i) => self.counts[i].load(Ordering::Relaxed),
            None => {
                let other = self.other.lock().unwrap_or_else(|p| p.into_inner());
                other.get(value).copied().unwrap_or(0)
            }
        }
    }

    fn snapshot(&self) -> Value {
        let mut samples: Vec<(Labels, u64)> = self
            .known
            .iter()
            .zip(self.counts.iter())
            .map(|(k, n)| (vec![(self.label, k.to_string())], n.load(Ordering::Relaxed)))
            .collect();
        let other = self.other.lock().unwrap_or_else(|p| p.into_inner());
        samples.extend(
            other
                .iter()
                .map(|(k, n)| (vec![(self.label, k.clone())], *n)),
        );
        Value::Counter(samples)
    }
}

/// The results an issuance request ends in: `ok`, the gRPC code name of a refusal, or, for a
/// caller that went away first, `reset` (its record was made) or `cancelled`.
pub const ISSUANCE_RESULTS: &[&str] = &[
    "ok",
    "reset",
    "cancelled",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// What the issuance service counts.
#[derive(Debug)]
pub struct IssuanceMetrics {
    /// By result (see [`ISSUANCE_RESULTS`]).
    pub results: LabeledCounter,
    pub latency: Histogram,
}

impl Default for IssuanceMetrics {
    fn default() -> Self {
        IssuanceMetrics {
            results: LabeledCounter::new("result", ISSUANCE_RESULTS),
            latency: Histogram::default(),
        }
    }
}

/// A sample's labels, in order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Gauge(Vec<(Labels, f64)>),
    Counter(Vec<(Labels, u64)>),
    Seconds(f64),
    Info(Labels),
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    value: Value,
}

/// The metric families of one scrape, read when the scrape comes and encoded by
/// `prometheus-client` ([`Scrape::encode`]).
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    fn push(&mut self, name: &'static str, help: &'static str, value: Value) {
        self.families.push(Family { name, help, value });
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.push(name, help, Value::Gauge(vec![(Vec::new(), v)]));
    }

    /// A gauge with one sample per label set (nothing is written when there is none).
    pub fn gauges(&mut self, name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) {
        if !samples.is_empty() {
            self.push(name, help, Value::Gauge(samples));
        }
    }

    /// A counter without labels; `name` is without `_total`, which the encoder adds.
    pub fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.push(name, help, Value::Counter(vec![(Vec::new(), v)]));
    }

    /// A counter with one sample per label set (nothing is written when there is none);
    /// `name` is without `_total`.
    pub fn counters(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: Vec<(Labels, u64)>,
    ) {
        if !samples.is_empty() {
            self.push(name, help, Value::Counter(samples));
        }
    }

    /// A counter of seconds (such as CPU time); `name` is without `_total`.
    pub fn counter_seconds(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.push(name, help, Value::Seconds(v));
    }

    /// A labelled counter; `name` is without `_total`.
    pub fn labeled_counter(&mut self, name: &'static str, help: &'static str, c: &LabeledCounter) {
        self.push(name, help, c.snapshot());
    }

    /// A latency histogram; `name` ends in `_seconds`.
    pub fn histogram(&mut self, name: &'static str, help: &'static str, h: &Histogram) {
        self.push(name, help, h.snapshot());
    }

    /// An info metric (`name_info{labels} 1`); `name` is without `_info`.
    pub fn info(&mut self, name: &'static str, help: &'static str, labels: Labels) {
        self.push(name, help, Value::Info(labels));
    }

    /// `hsmca_build_info`: the version this binary was built from.
    pub fn build_info(&mut self) {
        self.info(
            "hsmca_build",
            "The hsm-ca version running (always 1).",
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("rust_version", env!("CARGO_PKG_RUST_VERSION").to_string()),
            ],
        );
    }

    /// Encodes every family in the Prometheus text format (0.0.4).
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail; a family that could not be encoded is left out.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.value {
                Value::Gauge(_) => MetricType::Gauge,
                Value::Counter(_) | Value::Seconds(_) => MetricType::Counter,
                Value::Info(_) => MetricType::Info,
                Value::Histogram { .. } => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            match &f.value {
                Value::Gauge(samples) => {
                    for (labels, v) in samples {
                        metric.encode_family(&labels.as_slice())?.encode_gauge(v)?;
                    }
                }
                Value::Counter(samples) => {
                    for (labels, v) in samples {
                        metric
                            .encode_family(&labels.as_slice())?
                            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                    }
                }
                Value::Seconds(v) => metric.encode_counter::<NoLabelSet, _, f64>(v, None)?,
                Value::Info(labels) => metric.encode_info(&labels.as_slice())?,
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                } => metric.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?,
            }
        }
        Ok(())
    }
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
        let mut s = Scrape::default();
        s.histogram("x_seconds", "test", &h);
        let out = s.encode();
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
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
    fn labeled_counters_count_per_label_and_end_in_total() {
        let c = LabeledCounter::new("result", ISSUANCE_RESULTS);
        c.inc("ok");
        c.inc("ok");
        c.inc("PermissionDenied");
        c.inc("something-else");
        assert_eq!(c.get("ok"), 2);
        assert_eq!(c.get("something-else"), 1);
        let mut s = Scrape::default();
        s.labeled_counter("n", "test", &c);
        let out = s.encode();
        assert!(out.contains("# TYPE n_total counter\n"), "{out}");
        assert!(
            out.contains("n_total{result=\"PermissionDenied\"} 1"),
            "{out}"
        );
        assert!(out.contains("n_total{result=\"ok\"} 2"), "{out}");
        assert!(out.contains("n_total{result=\"Unavailable\"} 0"), "{out}");
        assert!(
            out.contains("n_total{result=\"something-else\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn labels_are_escaped_and_info_ends_in_info() {
        let mut s = Scrape::default();
        s.gauges(
            "g_timestamp_seconds",
            "test",
            vec![(vec![("subject", "CN=\"a\"\\b".to_string())], 1.5)],
        );
        s.gauges("empty", "test", Vec::new());
        s.build_info();
        let out = s.encode();
        assert!(
            out.contains(r#"g_timestamp_seconds{subject="CN=\"a\"\\b"} 1.5"#),
            "{out}"
        );
        assert!(!out.contains("empty"), "{out}");
        assert!(out.contains("# TYPE hsmca_build_info gauge\n"), "{out}");
        assert!(out.contains("hsmca_build_info{version=\""), "{out}");
    }
}
