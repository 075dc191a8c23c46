//! Latency histograms: HdrHistogram, µs, 3 significant digits, 1 µs … 1 hour.
//!
//! Agents ship interval histograms as HdrHistogram V2 bytes (what tokio-console does), and
//! percentiles are only computed when a report is written: merging histograms is exact,
//! averaging percentiles is not.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

use super::snapshot::HistogramBytes;
use super::{Metric, Timing};

/// Largest value a histogram holds, µs (one hour). Larger values are clamped to it and counted.
pub const MAX_US: u64 = 3_600_000_000;
const SIGFIG: u8 = 3;

/// A latency histogram in µs.
#[derive(Clone, Debug)]
pub struct Latency {
    h: Histogram<u64>,
    /// Values that exceeded [`MAX_US`] and were recorded as `MAX_US`.
    pub clamped: u64,
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            h: Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("static bounds are valid"),
            clamped: 0,
        }
    }

    /// Records a latency given in ns.
    #[inline]
    pub fn record_ns(&mut self, ns: u64) {
        let mut us = ns / 1_000;
        if us > MAX_US {
            us = MAX_US;
            self.clamped += 1;
        }
        // cannot fail: the value is within the bounds
        let _ = self.h.record(us);
    }

    pub fn len(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    pub fn reset(&mut self) {
        self.h.reset();
        self.clamped = 0;
    }

    /// Adds another histogram's counts (exact).
    pub fn add(&mut self, other: &Latency) {
        // same bounds by construction, so `add` cannot fail
        let _ = self.h.add(&other.h);
        self.clamped += other.clamped;
    }

    pub fn inner(&self) -> &Histogram<u64> {
        &self.h
    }

    /// HdrHistogram V2 bytes (uncompressed: 25× faster to write than V2+deflate).
    pub fn to_v2(&self) -> Vec<u8> {
        let mut out = Vec::new();
        V2Serializer::new().serialize(&self.h, &mut out).expect("serializing to a Vec cannot fail");
        out
    }

    /// Reads V2 (or V2+deflate) bytes from an agent.
    pub fn from_v2(bytes: &[u8]) -> Result<Latency, String> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("bad histogram bytes: {e:?}"))?;
        let mut l = Latency::new();
        l.h.add(&h).map_err(|e| format!("histogram out of range: {e:?}"))?;
        Ok(l)
    }

    /// The value at quantile `q` (0..=1), µs.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.h.value_at_quantile(q)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.h.len(),
            min_us: if self.h.is_empty() { 0 } else { self.h.min() },
            mean_us: self.h.mean(),
            p50_us: self.h.value_at_quantile(0.50),
            p90_us: self.h.value_at_quantile(0.90),
            p99_us: self.h.value_at_quantile(0.99),
            p999_us: self.h.value_at_quantile(0.999),
            p9999_us: self.h.value_at_quantile(0.9999),
            max_us: self.h.max(),
            clamped: self.clamped,
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one histogram, µs (HdrHistogram's equivalent values: within 0.1 %).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, Default)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    #[serde(default)]
    pub p9999_us: u64,
    pub max_us: u64,
    pub clamped: u64,
}

const SLOTS: usize = Metric::ALL.len() * 2;

/// One histogram per (metric, raw/corrected), each allocated when first recorded into: a
/// histogram is ~190 KB, and most runs use a few of the twelve.
#[derive(Clone, Debug)]
pub struct Hists {
    h: Vec<Option<Latency>>,
}

fn empty() -> &'static Latency {
    static EMPTY: std::sync::OnceLock<Latency> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Latency::new)
}

impl Hists {
    pub fn new() -> Hists {
        Hists { h: vec![None; SLOTS] }
    }

    fn slot(m: Metric, t: Timing) -> usize {
        m as usize * 2 + t as usize
    }

    #[inline]
    pub fn record(&mut self, m: Metric, t: Timing, ns: u64) {
        self.get_mut(m, t).record_ns(ns);
    }

    /// The histogram of (m, t); an empty one if nothing was recorded.
    pub fn get(&self, m: Metric, t: Timing) -> &Latency {
        self.h[Self::slot(m, t)].as_ref().unwrap_or_else(|| empty())
    }

    pub fn get_mut(&mut self, m: Metric, t: Timing) -> &mut Latency {
        self.h[Self::slot(m, t)].get_or_insert_with(Latency::new)
    }

    pub fn add(&mut self, o: &Hists) {
        for (a, b) in self.h.iter_mut().zip(&o.h) {
            if let Some(b) = b
                && !b.is_empty()
            {
                a.get_or_insert_with(Latency::new).add(b);
            }
        }
    }

    /// Empties every histogram, keeping its memory for the next interval.
    pub fn reset(&mut self) {
        for h in self.h.iter_mut().flatten() {
            if !h.is_empty() {
                h.reset();
            }
        }
    }

    /// Every non-empty histogram, as V2 bytes, labelled with `group`.
    pub fn encode(&self, group: u32) -> Vec<HistogramBytes> {
        let mut out = Vec::new();
        for m in Metric::ALL {
            for t in [Timing::Raw, Timing::Corrected] {
                let h = self.get(m, t);
                if !h.is_empty() {
                    out.push(HistogramBytes {
                        metric: m,
                        timing: t,
                        v2: h.to_v2(),
                        clamped: h.clamped,
                        group,
                    });
                }
            }
        }
        out
    }

    /// Whether every histogram is empty.
    pub fn is_empty(&self) -> bool {
        self.h.iter().flatten().all(|h| h.is_empty())
    }
}

/// [`Hists`] per scenario group (by its position), each allocated on first use. Agents record
/// only here; the run's totals are the sum over groups (merging is exact).
#[derive(Clone, Debug, Default)]
pub struct GroupedHists {
    by_group: Vec<Option<Hists>>,
}

impl GroupedHists {
    pub fn new() -> GroupedHists {
        GroupedHists::default()
    }

    /// The histograms of `group`, created if need be.
    #[inline]
    pub fn group_mut(&mut self, group: u32) -> &mut Hists {
        let g = group as usize;
        if g >= self.by_group.len() {
            self.by_group.resize_with(g + 1, || None);
        }
        self.by_group[g].get_or_insert_with(Hists::new)
    }

    #[inline]
    pub fn record(&mut self, group: u32, m: Metric, t: Timing, ns: u64) {
        self.group_mut(group).record(m, t, ns);
    }

    /// `group`'s histograms, if it recorded anything.
    pub fn group(&self, group: u32) -> Option<&Hists> {
        self.by_group.get(group as usize)?.as_ref()
    }

    /// Groups with histograms, and those histograms.
    pub fn groups(&self) -> impl Iterator<Item = (u32, &Hists)> {
        self.by_group.iter().enumerate().filter_map(|(g, h)| Some((g as u32, h.as_ref()?)))
    }

    pub fn add(&mut self, o: &GroupedHists) {
        for (g, h) in o.groups() {
            self.group_mut(g).add(h);
        }
    }

    pub fn reset(&mut self) {
        for h in self.by_group.iter_mut().flatten() {
            h.reset();
        }
    }

    /// All groups summed.
    pub fn total(&self) -> Hists {
        let mut t = Hists::new();
        for (_, h) in self.groups() {
            t.add(h);
        }
        t
    }

    pub fn encode(&self) -> Vec<HistogramBytes> {
        self.groups().flat_map(|(g, h)| h.encode(g)).collect()
    }
}

impl Default for Hists {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v2_round_trip_keeps_every_count() {
        let mut h = Latency::new();
        for v in [1_000u64, 50_000, 2_000_000, 7_000_000_000] {
            h.record_ns(v);
        }
        let back = Latency::from_v2(&h.to_v2()).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.inner(), h.inner());
    }

    #[test]
    fn huge_values_are_clamped_and_counted() {
        let mut h = Latency::new();
        h.record_ns(u64::MAX);
        assert_eq!(h.clamped, 1);
        assert_eq!(h.summary().max_us, h.inner().highest_equivalent(MAX_US));
    }

    proptest! {
        /// Merging histograms equals the histogram of the union of their values.
        #[test]
        fn merged_equals_union(a in proptest::collection::vec(0u64..10_000_000_000, 0..200),
                               b in proptest::collection::vec(0u64..10_000_000_000, 0..200)) {
            let (mut ha, mut hb, mut hu) = (Latency::new(), Latency::new(), Latency::new());
            for v in &a { ha.record_ns(*v); hu.record_ns(*v); }
            for v in &b { hb.record_ns(*v); hu.record_ns(*v); }
            let mut merged = Latency::from_v2(&ha.to_v2()).unwrap();
            merged.add(&Latency::from_v2(&hb.to_v2()).unwrap());
            prop_assert_eq!(merged.inner(), hu.inner());
        }
    }
}
