//! Arithmetic on traffic statistics that data planes, the control plane and the CLI must agree
//! on: latency percentiles from bucketed histograms, and when a diffed field's differences stand
//! above the noise floor.

/// The `q` quantile (0..=1) of a latency histogram, as Prometheus's `histogram_quantile`
/// computes it: find the bucket the rank falls in and interpolate linearly within it (from 0
/// for the first bucket); a rank in the last, unbounded bucket gives the highest finite bound.
/// `counts` are per bucket (not cumulative), one more than `bounds`. `None` without data.
pub fn quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    if bounds.is_empty() || counts.len() != bounds.len() + 1 {
        return None;
    }
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut below, mut lower) = (0u64, 0.0);
    for (i, (&upper, &n)) in bounds.iter().zip(counts).enumerate() {
        if (below + n) as f64 >= rank {
            // A first bucket with a bound at or below zero has no width to interpolate over.
            if i == 0 && upper <= 0.0 {
                return Some(upper);
            }
            if n == 0 {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - below as f64) / n as f64);
        }
        below += n;
        lower = upper;
    }
    bounds.last().copied()
}

/// Whether a field that `differed` in `compared` primary/candidate pairs, and in `noise` of
/// `baseline_compared` primary/baseline pairs, differs for real (Diffy's noise floor). Without a
/// baseline any difference counts; with one, the diff rate must exceed the noise rate by more
/// than `absolute` and, unless there was no noise, by more than `relative` of the noise rate.
pub fn significant(
    differed: u64,
    noise: u64,
    compared: u64,
    baseline_compared: u64,
    relative: f64,
    absolute: f64,
) -> bool {
    if compared == 0 {
        return false;
    }
    if baseline_compared == 0 {
        return differed > 0;
    }
    let diff_rate = differed as f64 / compared as f64;
    let noise_rate = noise as f64 / baseline_compared as f64;
    let excess = diff_rate - noise_rate;
    excess > absolute && (noise == 0 || excess / noise_rate > relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        let bounds = [0.01, 0.05, 0.1];
        let counts = [50, 40, 9, 1];
        assert!(close(quantile(0.5, &bounds, &counts), 0.01), "rank 50 ends the first bucket");
        assert!(close(quantile(0.95, &bounds, &counts), 0.05 + 0.05 * 5.0 / 9.0));
        assert!(close(quantile(0.99, &bounds, &counts), 0.1));
        assert!(close(quantile(0.25, &bounds, &counts), 0.005), "the first bucket starts at zero");
        assert!(close(quantile(0.5, &[0.1, 0.5, 1.0], &[0, 10, 0, 0]), 0.3));
    }

    #[test]
    fn a_quantile_in_the_unbounded_bucket_is_the_highest_finite_bound() {
        assert!(close(quantile(0.5, &[0.1, 0.5, 1.0], &[0, 0, 0, 4]), 1.0));
        assert!(close(quantile(1.0, &[0.01, 0.05, 0.1], &[50, 40, 9, 1]), 0.1));
    }

    #[test]
    fn quantiles_need_data_and_a_well_formed_histogram() {
        assert_eq!(quantile(0.5, &[0.1, 0.5], &[0, 0, 0]), None, "no requests");
        assert_eq!(quantile(0.5, &[0.1, 0.5], &[1, 2]), None, "no unbounded bucket");
        assert_eq!(quantile(0.5, &[], &[3]), None, "no bounds");
        assert!(
            close(quantile(0.5, &[0.0, 1.0], &[3, 1, 0]), 0.0),
            "a first bound at zero is returned as is"
        );
    }

    #[test]
    fn without_a_baseline_any_difference_is_significant() {
        assert!(significant(1, 0, 100, 0, 0.2, 0.01));
        assert!(!significant(0, 0, 100, 0, 0.2, 0.0));
        assert!(!significant(0, 0, 0, 0, 0.2, 0.0), "nothing compared");
    }

    #[test]
    fn with_a_baseline_a_difference_must_stand_above_the_noise_floor() {
        // 10% vs 9% noise: only 11% above the noise, under relative 0.2.
        assert!(!significant(10, 9, 100, 100, 0.2, 0.0));
        // 10% vs 1% noise: far above it.
        assert!(significant(10, 1, 100, 100, 0.2, 0.0));
        // No noise at all: only the absolute threshold applies.
        assert!(significant(10, 0, 100, 100, 0.2, 0.05));
        assert!(!significant(3, 0, 100, 100, 0.2, 0.05));
        // Above the noise relatively, but under the absolute threshold.
        assert!(!significant(10, 1, 100, 100, 0.2, 0.10));
        // Noise rates use the baseline count: 10/100 vs 1/50 = 2%.
        assert!(significant(10, 1, 100, 50, 0.2, 0.05));
    }
}
