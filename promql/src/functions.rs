//! The arithmetic of PromQL's functions and aggregations on plain values, following
//! Prometheus 2.42 (`promql/functions.go`, `promql/engine.go`, `promql/quantile.go`), the
//! version Debian ships and the tests compare with.

/// Prometheus' staleness marker (`value.StaleNaN`): a NaN with this bit pattern ends a
/// series; selectors never return it.
pub(crate) const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the staleness marker.
pub(crate) fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Which of the extrapolating functions (`extrapolatedRate` in Prometheus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extrapolated {
    /// `rate`: counter, per second.
    Rate,
    /// `increase`: counter, over the range.
    Increase,
    /// `delta`: gauge, over the range.
    Delta,
}

/// `rate`, `increase` or `delta` of the samples `window` (oldest first, all inside the
/// closed range `[range_start, range_end]`, ms). `None` with fewer than two samples.
///
/// The rules of Prometheus: the difference between the last and first sample, plus the
/// value before each counter reset (counters); extrapolated towards each edge of the
/// range by the gap to that edge when the gap is under 1.1× the average interval
/// between samples, else by half an average interval; for counters the start is not
/// extrapolated past the point where the counter would have been zero.
pub(crate) fn extrapolated(
    window: &[(i64, f64)],
    range_start: i64,
    range_end: i64,
    kind: Extrapolated,
) -> Option<f64> {
    let (first, last) = match window {
        [first, .., last] => (*first, *last),
        _ => return None,
    };
    let is_counter = kind != Extrapolated::Delta;
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = first.1;
        for &(_, v) in &window[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - range_start) as f64 / 1000.0;
    let to_end = (range_end - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (window.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    let mut factor = interval / sampled;
    if kind == Extrapolated::Rate {
        factor /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` (`is_rate`) or `idelta` of a window: from its last two samples.
pub(crate) fn instant_delta(window: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    let (prev, last) = match window {
        [.., prev, last] => (*prev, *last),
        _ => return None,
    };
    let mut result = last.1 - prev.1;
    if is_rate && last.1 < prev.1 {
        // A counter reset: the last value is the increase since.
        result = last.1;
    }
    let interval = last.0 - prev.0;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

/// A running mean as Prometheus computes `avg` and `avg_over_time` (incremental, so
/// large values do not overflow, with infinities kept).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Mean {
    count: f64,
    mean: f64,
}

impl Mean {
    pub(crate) fn add(&mut self, v: f64) {
        self.count += 1.0;
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        self.mean += v / self.count - self.mean / self.count;
    }

    pub(crate) fn value(&self) -> f64 {
        self.mean
    }
}

/// Welford's running variance, as Prometheus' `stddev`/`stdvar`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Variance {
    count: f64,
    mean: f64,
    m2: f64,
}

impl Variance {
    pub(crate) fn add(&mut self, v: f64) {
        self.count += 1.0;
        let delta = v - self.mean;
        self.mean += delta / self.count;
        self.m2 += delta * (v - self.mean);
    }

    pub(crate) fn variance(&self) -> f64 {
        self.m2 / self.count
    }
}

/// `max` as Prometheus folds it: a NaN is replaced by any later value.
pub(crate) fn fold_max(acc: f64, v: f64) -> f64 {
    if acc < v || acc.is_nan() {
        v
    } else {
        acc
    }
}

/// `min` as Prometheus folds it.
pub(crate) fn fold_min(acc: f64, v: f64) -> f64 {
    if acc > v || acc.is_nan() {
        v
    } else {
        acc
    }
}

/// The φ-quantile of `values` (linear interpolation between closest ranks), as
/// Prometheus' `quantile` aggregation.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// The φ-quantile from classic histogram buckets `(upper bound, cumulative count)`, as
/// Prometheus' `histogram_quantile` (`bucketQuantile`).
pub(crate) fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    match buckets.last() {
        Some(&(upper, _)) if upper == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with the same bound, then force the counts monotonic.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(upper, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == upper => last.1 += count,
            _ => merged.push((upper, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in &mut merged {
        if bucket.1 > max {
            max = bucket.1;
        } else if bucket.1 < max {
            bucket.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|bucket| bucket.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let bucket_end = merged[b].0;
    let mut count = merged[b].1;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// `round(v, to_nearest)`: half up, as Prometheus.
pub(crate) fn round_to(v: f64, to_nearest: f64) -> f64 {
    let inverse = 1.0 / to_nearest;
    (v * inverse + 0.5).floor() / inverse
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn rate_extrapolates_to_both_edges_within_the_threshold() {
        // Samples every 10 s at 5..55 s in the range [0, 60] s: each edge is 5 s away,
        // under 1.1 × 10 s, so the 50 s sampled extrapolate to 60 s. The counter starts at
        // 100 (its zero point is 500 s back, beyond the edge).
        let window: Vec<(i64, f64)> = (0..6)
            .map(|i| (5_000 + i * 10_000, 100.0 + 10.0 * i as f64))
            .collect();
        let inc = extrapolated(&window, 0, 60_000, Extrapolated::Increase).unwrap();
        assert!(close(inc, 50.0 * 60.0 / 50.0), "{inc}");
        let rate = extrapolated(&window, 0, 60_000, Extrapolated::Rate).unwrap();
        assert!(close(rate, 60.0 / 60.0), "{rate}");
    }

    #[test]
    fn far_edges_extrapolate_by_half_an_interval_only() {
        // Samples at 30, 40, 50 s in [0, 60]: 30 s to the start (over 11 s): half an
        // interval (5 s); 10 s to the end (under 11 s): all of it. 20 s sampled → 35 s.
        let window = [(30_000, 100.0), (40_000, 110.0), (50_000, 120.0)];
        let inc = extrapolated(&window, 0, 60_000, Extrapolated::Delta).unwrap();
        assert!(close(inc, 20.0 * 35.0 / 20.0), "{inc}");
    }

    #[test]
    fn counter_resets_add_the_value_before_the_reset_and_zero_limits_the_start() {
        // 0 → 10 → 4 (reset) → 8: increase 10 + 8 = 18 over 30 s sampled at 10..40 s in
        // [0, 50]. The counter starts at 0 so the start is not extrapolated (zero point at
        // the first sample); the end is 10 s away (under 11 s): 40 s total.
        let window = [(10_000, 0.0), (20_000, 10.0), (30_000, 4.0), (40_000, 8.0)];
        let inc = extrapolated(&window, 0, 50_000, Extrapolated::Increase).unwrap();
        assert!(close(inc, 18.0 * 40.0 / 30.0), "{inc}");
        // delta does not know resets: 8 - 0 extrapolated at both edges (10 s each): 50/30.
        let delta = extrapolated(&window, 0, 50_000, Extrapolated::Delta).unwrap();
        assert!(close(delta, 8.0 * 50.0 / 30.0), "{delta}");
        assert_eq!(
            extrapolated(&window[..1], 0, 50_000, Extrapolated::Rate),
            None
        );
    }

    #[test]
    fn irate_uses_the_last_two_samples_and_the_value_after_a_reset() {
        let window = [(0, 5.0), (10_000, 50.0), (15_000, 60.0)];
        assert!(close(instant_delta(&window, true).unwrap(), 2.0));
        assert!(close(instant_delta(&window, false).unwrap(), 10.0));
        let reset = [(0, 50.0), (10_000, 3.0)];
        assert!(close(instant_delta(&reset, true).unwrap(), 0.3));
        assert!(close(instant_delta(&reset, false).unwrap(), -47.0));
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        assert!(close(quantile(0.5, &mut [4.0, 1.0, 3.0, 2.0]), 2.5));
        assert_eq!(quantile(1.5, &mut [1.0]), f64::INFINITY);
        // 100 observations: 50 ≤ 0.1, 90 ≤ 0.5, all ≤ +Inf. The median is the 50th: at the
        // end of the first bucket; the 0.7 quantile is halfway into (0.1, 0.5].
        let buckets = vec![(0.1, 50.0), (0.5, 90.0), (f64::INFINITY, 100.0)];
        assert!(close(bucket_quantile(0.5, &mut buckets.clone()), 0.1));
        assert!(close(bucket_quantile(0.7, &mut buckets.clone()), 0.3));
        // Beyond the last finite bucket: its upper bound.
        assert!(close(bucket_quantile(0.99, &mut buckets.clone()), 0.5));
        assert!(bucket_quantile(0.5, &mut [(0.1, 1.0)]).is_nan());
    }

    #[test]
    fn folds_and_rounding_follow_prometheus() {
        assert_eq!(fold_max(f64::NAN, 1.0), 1.0);
        assert_eq!(fold_min(f64::NAN, 1.0), 1.0);
        assert_eq!(round_to(2.5, 1.0), 3.0);
        assert_eq!(round_to(-2.5, 1.0), -2.0);
        assert!(close(round_to(7.3, 5.0), 5.0));
        let mut mean = Mean::default();
        for v in [1.0, 2.0, 6.0] {
            mean.add(v);
        }
        assert!(close(mean.value(), 3.0));
        let mut var = Variance::default();
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            var.add(v);
        }
        assert!(close(var.variance(), 4.0));
    }
}
