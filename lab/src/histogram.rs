//! A latency histogram with bounded relative error, small enough to travel
//! in a client's JSON report and mergeable across workers and runs.
//!
//! Values are microseconds. Below 256 µs every value has its own bucket;
//! above, each power of two is split into 128 equal buckets, so a value is
//! known to within 1/128 (under 0.8 %). Percentiles answer with the upper
//! bound of the bucket holding the sample of rank ⌈p/100 · n⌉, clamped to
//! the largest value seen, so they never under-report.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Values below this are exact.
const EXACT: u64 = 256;
/// Buckets per power of two above [`EXACT`].
const SUB: u64 = 128;
/// log2 of [`SUB`].
const SUB_BITS: u32 = 7;

/// Recorded durations in microseconds. The JSON form lists only occupied
/// buckets, as `[lowest value of the bucket, count]` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub count: u64,
    pub min_us: u64,
    pub max_us: u64,
    /// Sum of every value, for the mean.
    pub sum_us: u64,
    #[serde(with = "buckets")]
    buckets: BTreeMap<u32, u64>,
}

/// The percentiles the benchmarks report, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Records one duration (saturating at `u64::MAX` µs).
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one value in microseconds.
    pub fn record_us(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        if self.count == 0 {
            self.min_us = v;
            self.max_us = v;
        } else {
            self.min_us = self.min_us.min(v);
            self.max_us = self.max_us.max(v);
        }
        self.count = self.count.saturating_add(n);
        self.sum_us = self.sum_us.saturating_add(v.saturating_mul(n));
        *self.buckets.entry(index(v)).or_insert(0) += n;
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            self.min_us = other.min_us;
            self.max_us = other.max_us;
        } else {
            self.min_us = self.min_us.min(other.min_us);
            self.max_us = self.max_us.max(other.max_us);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        for (i, n) in &other.buckets {
            *self.buckets.entry(*i).or_insert(0) += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The mean in microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    /// The value at percentile `p` (0-100) in microseconds; 0 when empty.
    /// Out-of-range `p` is clamped.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let p = if p.is_nan() {
            100.0
        } else {
            p.clamp(0.0, 100.0)
        };
        // Rank of the sample, 1-based; at least the first one.
        let rank = ((p / 100.0) * self.count as f64).ceil().max(1.0);
        let rank = if rank >= self.count as f64 {
            self.count
        } else {
            rank as u64
        };
        let mut seen = 0u64;
        for (i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return upper(*i).clamp(self.min_us, self.max_us);
            }
        }
        self.max_us
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.percentile_us(50.0),
            p90: self.percentile_us(90.0),
            p99: self.percentile_us(99.0),
            p999: self.percentile_us(99.9),
        }
    }

    /// `(percentile, value in µs)` points from p0 up to p99.99 on a scale
    /// that spreads the tail (for plots).
    pub fn curve(&self) -> Vec<(f64, u64)> {
        const POINTS: [f64; 14] = [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99,
        ];
        if self.count == 0 {
            return Vec::new();
        }
        POINTS
            .iter()
            .map(|p| (*p, self.percentile_us(*p)))
            .collect()
    }
}

/// The bucket of a value.
fn index(v: u64) -> u32 {
    if v < EXACT {
        return v as u32;
    }
    // v ≥ 256, so the highest set bit is at position 8 or more.
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) - SUB;
    (EXACT + u64::from(msb - 8) * SUB + sub) as u32
}

/// The lowest value of a bucket.
fn lower(i: u32) -> u64 {
    let i = u64::from(i);
    if i < EXACT {
        return i;
    }
    let k = i - EXACT;
    let msb = (k / SUB) as u32 + 8;
    let sub = k % SUB;
    (SUB + sub) << (msb - SUB_BITS)
}

/// The highest value of a bucket.
fn upper(i: u32) -> u64 {
    let wide = u64::from(i);
    if wide < EXACT {
        return wide;
    }
    let k = wide - EXACT;
    let msb = (k / SUB) as u32 + 8;
    let sub = k % SUB;
    let shift = msb - SUB_BITS;
    // The top bucket ends at u64::MAX.
    ((SUB + sub + 1) << shift).wrapping_sub(1).max(lower(i))
}

/// Occupied buckets as `[[lowest value, count], ...]`.
mod buckets {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &BTreeMap<u32, u64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(b.iter().map(|(i, n)| [super::lower(*i), *n]))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, u64>, D::Error> {
        let pairs: Vec<[u64; 2]> = Vec::deserialize(d)?;
        let mut out = BTreeMap::new();
        for [v, n] in pairs {
            *out.entry(super::index(v)).or_insert(0) += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_with_bounded_error() {
        let mut probes: Vec<u64> = (0..2000).collect();
        for shift in 8..64 {
            let base = 1u64 << shift;
            probes.extend([base - 1, base, base + 1, base + base / 3]);
        }
        probes.push(u64::MAX);
        for v in probes {
            let i = index(v);
            assert!(
                lower(i) <= v && v <= upper(i),
                "{v}: [{}, {}]",
                lower(i),
                upper(i)
            );
            assert_eq!(index(lower(i)), i, "{v}");
            assert_eq!(index(upper(i)), i, "{v}");
            if v >= EXACT {
                let width = upper(i) - lower(i) + 1;
                assert!(width * SUB <= lower(i), "{v}: width {width}");
            } else {
                assert_eq!((lower(i), upper(i)), (v, v));
            }
        }
        // Buckets are ordered as their values.
        assert!(index(255) < index(256) && index(256) < index(257 + 256));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record_us(v);
        }
        assert_eq!(h.count, 1000);
        assert_eq!((h.min_us, h.max_us), (1, 1000));
        assert!((h.mean_us() - 500.5).abs() < 1e-9);
        let within = |got: u64, want: u64| {
            assert!(
                got >= want && got as f64 <= want as f64 * (1.0 + 1.0 / 128.0) + 1.0,
                "got {got}, want about {want}"
            );
        };
        within(h.percentile_us(50.0), 500);
        within(h.percentile_us(90.0), 900);
        within(h.percentile_us(99.0), 990);
        within(h.percentile_us(99.9), 999);
        assert_eq!(h.percentile_us(100.0), 1000);
        assert_eq!(h.percentile_us(0.0), 1);
        assert_eq!(h.percentile_us(-5.0), 1);
        assert_eq!(h.percentile_us(f64::NAN), 1000);
        // Exact below 256.
        assert_eq!(h.percentile_us(10.0), 100);
        let p = h.percentiles();
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999);
    }

    #[test]
    fn a_slow_tail_shows_in_the_high_percentiles_only() {
        let mut h = Histogram::new();
        for _ in 0..990 {
            h.record(Duration::from_micros(200));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        assert_eq!(h.percentile_us(50.0), 200);
        assert_eq!(h.percentile_us(99.0), 200);
        assert_eq!(h.percentile_us(99.9), 50_000);
        assert_eq!(h.max_us, 50_000);
    }

    #[test]
    fn empty_merge_and_json_round_trip() {
        let empty = Histogram::new();
        assert_eq!(empty.percentile_us(99.0), 0);
        assert!(empty.curve().is_empty());

        let mut a = Histogram::new();
        a.record_us(10);
        a.record_us(5000);
        let mut b = Histogram::new();
        b.record_us(3);
        b.record_us(5001);
        let mut m = a.clone();
        m.merge(&b);
        m.merge(&empty);
        assert_eq!((m.count, m.min_us, m.max_us, m.sum_us), (4, 3, 5001, 10014));
        let mut e = Histogram::new();
        e.merge(&a);
        assert_eq!(e, a);

        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["count"], 4);
        assert_eq!(json["buckets"][0], serde_json::json!([3, 1]));
        let back: Histogram = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        let curve = m.curve();
        assert_eq!(curve.first(), Some(&(0.0, 3)));
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
