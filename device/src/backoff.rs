//! How a device waits between connection attempts, from the delays themselves.
//!
//! Each delay runs from the end of the previous connection (the device's close, or the broker's
//! drop) to the next CONNECT, so a device's own CONNACK timeout is not mistaken for backoff.
//! With 5–12 delays the call is a judgement, made in this order:
//!
//! 1. **constant**: every delay within 10 % of their mean (coefficient of variation < 0.10);
//! 2. the **growth** part: delays before a cap (a run of two or more at the end within 15 % of
//!    the largest, as a capped exponential reaches) and the first capped one;
//! 3. **exponential**: the logarithms of the growth part lie on a line (least squares, root
//!    mean square misfit ≤ 0.06) rising by a factor of 1.3 or more per attempt; **linear**: the
//!    delays themselves lie on a rising line (misfit ≤ 6 % of their mean). When both fit, the
//!    closer one;
//! 4. otherwise **jittered** when the delays spread (a random part), growing if the later
//!    half's mean is at least 1.5 × the earlier half's; **shrinking** when it is under 2/3 of it.
//!
//! Grades, as Device Advisor gives them: jittered and growing passes; strict exponential passes
//! with a warning (devices retrying in lockstep hit a recovering broker together); jittered
//! without growth passes with a warning; linear, constant and shrinking fail. Every judgement
//! states its numbers.

use serde::Serialize;

/// The shape of a series of delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Constant,
    Linear,
    Exponential,
    /// Random spread whose envelope grows.
    Jittered,
    /// Random spread around a level that does not grow.
    JitterOnly,
    /// Later delays shorter than earlier ones.
    Shrinking,
}

/// What the judgement means for the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grade {
    Pass,
    PassWithWarning,
    Fail,
    /// Fewer than three delays: nothing to judge.
    Insufficient,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Judgement {
    pub policy: Option<Policy>,
    pub grade: Grade,
    /// The delays judged, seconds.
    pub delays_s: Vec<f64>,
    /// Whether the growth stopped at a cap (the delays after it are the cap's).
    pub capped: bool,
    /// On the growth part: the neighbours' ratios' mean and standard deviation, and the
    /// differences' mean and standard deviation (s).
    pub ratio_mean: f64,
    pub ratio_sd: f64,
    pub diff_mean_s: f64,
    pub diff_sd_s: f64,
    /// The same in words, with the numbers.
    pub why: String,
}

const CONSTANT_CV: f64 = 0.10;
const CAP_BAND: f64 = 0.15;
const EXP_MIN_RATIO: f64 = 1.3;
/// How far (root mean square, relative) delays may sit off a line and still be on it: timing
/// noise of a few percent passes, a random part does not.
const MAX_MISFIT: f64 = 0.06;
const GROWING: f64 = 1.5;

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Relative spread; infinite for a mean of zero (nothing steady about it).
fn cv(v: &[f64]) -> f64 {
    let m = mean(v).abs();
    if m < 1e-12 { f64::INFINITY } else { sd(v) / m }
}

/// Least squares of `f(delay)` against the attempt number: the slope, and the root mean square
/// of what the line leaves.
fn fit(v: &[f64], f: impl Fn(f64) -> f64) -> (f64, f64) {
    let n = v.len() as f64;
    let ys: Vec<f64> = v.iter().map(|x| f(*x)).collect();
    let (mx, my) = ((n - 1.0) / 2.0, mean(&ys));
    let sxx: f64 = (0..v.len()).map(|i| (i as f64 - mx).powi(2)).sum();
    let sxy: f64 = ys.iter().enumerate().map(|(i, y)| (i as f64 - mx) * (y - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let rss: f64 = ys.iter().enumerate().map(|(i, y)| (y - (my + slope * (i as f64 - mx))).powi(2)).sum();
    (slope, (rss / n).sqrt())
}

fn list(v: &[f64]) -> String {
    let shown: Vec<String> = v.iter().map(|d| format!("{}", (d * 1000.0).round() / 1000.0)).collect();
    format!("{} s", shown.join(", "))
}

/// Judges a series of delays between attempts, in seconds (non-finite or negative values are
/// taken as 0).
pub fn classify(delays_s: &[f64]) -> Judgement {
    let d: Vec<f64> = delays_s.iter().map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 }).collect();
    let mut j = Judgement {
        policy: None,
        grade: Grade::Insufficient,
        delays_s: d.clone(),
        capped: false,
        ratio_mean: 0.0,
        ratio_sd: 0.0,
        diff_mean_s: 0.0,
        diff_sd_s: 0.0,
        why: String::new(),
    };
    if d.len() < 3 {
        j.why = format!("delays {}: at least 3 are needed to judge a backoff", list(&d));
        return j;
    }
    // the growth part: before a cap, and the cap's first delay
    let max = d.iter().cloned().fold(0.0, f64::max);
    let in_cap = |x: f64| (max - x) <= CAP_BAND * max;
    let cap_len = d.iter().rev().take_while(|x| in_cap(**x)).count();
    let capped = cap_len >= 2 && cap_len < d.len();
    let growth: &[f64] = if capped { &d[..d.len() - cap_len + 1] } else { &d };
    // ratios of delays of (near) zero say nothing: 1 ms floor
    let ratios: Vec<f64> = growth.windows(2).map(|w| w[1].max(1e-3) / w[0].max(1e-3)).collect();
    let diffs: Vec<f64> = growth.windows(2).map(|w| w[1] - w[0]).collect();
    j.capped = capped;
    (j.ratio_mean, j.ratio_sd, j.diff_mean_s, j.diff_sd_s) =
        (mean(&ratios), sd(&ratios), mean(&diffs), sd(&diffs));
    let cap_note = if capped { format!(", capped at {:.3} s", max) } else { String::new() };
    let nums = format!(
        "delays {}: ratio {:.2} ± {:.2}, step {:.3} ± {:.3} s{cap_note}",
        list(&d),
        j.ratio_mean,
        j.ratio_sd,
        j.diff_mean_s,
        j.diff_sd_s
    );

    let all_cv = cv(&d);
    // straight lines through the growth part: the delays (linear) and their logarithms
    // (exponential); each line's misfit relative to the delays
    let (lin_slope, lin_misfit) = fit(growth, |x| x);
    let lin_misfit = lin_misfit / mean(growth).max(1e-3);
    let (log_slope, exp_misfit) = fit(growth, |x| x.max(1e-3).ln());
    let exponential = log_slope >= EXP_MIN_RATIO.ln() && exp_misfit <= MAX_MISFIT;
    let linear = lin_slope > 0.0 && lin_misfit <= MAX_MISFIT;
    let (policy, grade, words) = if all_cv < CONSTANT_CV {
        (
            Policy::Constant,
            Grade::Fail,
            format!("constant (spread {:.0} % of the mean): no backoff", all_cv * 100.0),
        )
    } else if exponential && (!linear || exp_misfit <= lin_misfit) {
        (
            Policy::Exponential,
            Grade::PassWithWarning,
            "exponential, no jitter: devices retrying in step hit a recovering broker together".to_string(),
        )
    } else if linear {
        (Policy::Linear, Grade::Fail, "linear: the delay grows by a fixed step, not a factor".to_string())
    } else {
        let half = d.len() / 2;
        let (early, late) = (mean(&d[..half]), mean(&d[d.len() - half..]));
        let growth = late / early.max(1e-3);
        if growth >= GROWING {
            (
                Policy::Jittered,
                Grade::Pass,
                format!("jittered, growing (later half {growth:.1}× the earlier)"),
            )
        } else if growth < 1.0 / GROWING {
            (Policy::Shrinking, Grade::Fail, format!("shrinking (later half {growth:.2}× the earlier)"))
        } else {
            (
                Policy::JitterOnly,
                Grade::PassWithWarning,
                format!("jittered but not growing (later half {growth:.2}× the earlier)"),
            )
        }
    };
    j.policy = Some(policy);
    j.grade = grade;
    j.why = format!("{nums}: {words}");
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_a_firmware_team_writes() {
        let p = |d: &[f64]| classify(d).policy;
        assert_eq!(p(&[1.0, 1.0, 1.02, 0.99, 1.0]), Some(Policy::Constant));
        assert_eq!(p(&[1.0, 2.0, 3.0, 4.0, 5.0]), Some(Policy::Linear));
        assert_eq!(p(&[10.0, 11.0, 12.0, 13.0, 14.0]), Some(Policy::Linear));
        assert_eq!(p(&[1.02, 1.98, 4.05, 7.9, 16.1]), Some(Policy::Exponential));
        // an exponential that reaches its cap after 3 attempts is not constant
        let capped = classify(&[1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]);
        assert_eq!((capped.policy, capped.capped), (Some(Policy::Exponential), true));
        assert_eq!(p(&[0.3, 1.7, 1.1, 6.0, 2.9, 13.5]), Some(Policy::Jittered));
        assert_eq!(p(&[1.3, 0.6, 1.4, 0.7, 1.2, 0.8]), Some(Policy::JitterOnly));
        assert_eq!(p(&[8.0, 4.0, 3.0, 1.0, 0.5]), Some(Policy::Shrinking));
    }

    #[test]
    fn every_judgement_states_its_numbers() {
        let j = classify(&[1.02, 1.98, 4.05, 7.9]);
        assert_eq!(j.grade, Grade::PassWithWarning);
        assert!(j.why.starts_with("delays 1.02, 1.98, 4.05, 7.9 s: ratio 1.98 ± 0.06"), "{}", j.why);
        assert!(j.why.contains("no jitter"), "{}", j.why);
        let few = classify(&[1.0, 2.0]);
        assert_eq!((few.grade, few.policy), (Grade::Insufficient, None));
        assert!(few.why.contains("at least 3"));
    }

    #[test]
    fn garbage_delays_do_not_panic() {
        for d in [vec![0.0; 6], vec![f64::NAN, f64::INFINITY, -1.0, 0.0, 1e300], vec![1e-9, 1e9, 1e-9, 1e9]] {
            let j = classify(&d);
            assert!(j.policy.is_some() && !j.why.is_empty(), "{d:?}: {j:?}");
        }
    }
}
