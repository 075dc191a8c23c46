//! The capacity search's choices: which share of the scenario's rates to try next, and when
//! the answer is known. No I/O and no clock: the coordinator runs each step and says whether
//! it held ([`Search::record`]); this says what comes next ([`Search::next`]).
//!
//! Steps double from `from` while they hold; once one breaks a rule, the gap between the
//! highest step that held and the lowest that broke is halved until it is within `precision`
//! of the former. If `from` itself breaks, steps halve downward (at most [`MAX_HALVINGS`]
//! times) to find one that holds. Every step is bounded: at most `max_steps`, never above `to`.
//!
//! Loads are noisy: a step may hold above one that broke. The answer is then the highest step
//! that held *below* the lowest that broke (the conservative reading), and the search says the
//! results were not monotone.

/// How far below `from` a search goes looking for a step that holds: `from / 2^7`.
pub const MAX_HALVINGS: u32 = 7;

/// Why a search ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ended {
    /// The highest step that held and the lowest that broke are within the precision.
    Converged,
    /// The top (`to`) held: the capacity is at least that.
    Top,
    /// Nothing held, down to `from / 2^MAX_HALVINGS`.
    Bottom,
    /// `max_steps` were taken before the answer was within the precision.
    Steps,
    /// The tester could not offer a step's load (its own CPU or timer lag), so what broke may
    /// not have been the broker: the search stops rather than misjudge it.
    TesterBound,
}

impl Ended {
    pub fn name(&self) -> &'static str {
        match self {
            Ended::Converged => "converged",
            Ended::Top => "top",
            Ended::Bottom => "bottom",
            Ended::Steps => "max_steps",
            Ended::TesterBound => "tester_bound",
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Run a step at this scale.
    Step(f64),
    Done(Ended),
}

#[derive(Debug, Clone)]
pub struct Search {
    from: f64,
    to: f64,
    precision: f64,
    max_steps: u32,
    /// Every step so far: (scale, held).
    steps: Vec<(f64, bool)>,
    tester_bound: bool,
}

impl Search {
    /// `0 < from <= to`, `precision > 0`, `max_steps >= 1` (the scenario checks them).
    pub fn new(from: f64, to: f64, precision: f64, max_steps: u32) -> Search {
        Search {
            from,
            to: to.max(from),
            precision,
            max_steps: max_steps.max(1),
            steps: Vec::new(),
            tester_bound: false,
        }
    }

    /// The outcome of the step at `scale`.
    pub fn record(&mut self, scale: f64, held: bool) {
        self.steps.push((scale, held));
    }

    /// The step at `scale` could not be judged: the tester fell short. The search ends.
    pub fn tester_bound(&mut self, scale: f64) {
        self.steps.push((scale, false));
        self.tester_bound = true;
    }

    /// The lowest scale that broke a rule.
    pub fn lowest_broken(&self) -> Option<f64> {
        self.steps.iter().filter(|s| !s.1).map(|s| s.0).min_by(f64::total_cmp)
    }

    /// The highest scale that held below every scale that broke: the capacity, as far as known.
    pub fn highest_held(&self) -> Option<f64> {
        let broke = self.lowest_broken().unwrap_or(f64::INFINITY);
        self.steps.iter().filter(|s| s.1 && s.0 < broke).map(|s| s.0).max_by(f64::total_cmp)
    }

    /// Whether a step held above one that broke (noise, or a broker whose behaviour drifts).
    pub fn monotone(&self) -> bool {
        let broke = self.lowest_broken().unwrap_or(f64::INFINITY);
        !self.steps.iter().any(|s| s.1 && s.0 >= broke)
    }

    pub fn steps_taken(&self) -> u32 {
        self.steps.len() as u32
    }

    pub fn next(&self) -> Next {
        if self.tester_bound {
            return Next::Done(Ended::TesterBound);
        }
        let (held, broke) = (self.highest_held(), self.lowest_broken());
        let done = match (held, broke) {
            (Some(h), Some(b)) if b - h <= self.precision * h => Some(Ended::Converged),
            (Some(h), None) if h >= self.to => Some(Ended::Top),
            (None, Some(b)) if b <= self.floor() * (1.0 + 1e-9) => Some(Ended::Bottom),
            _ => None,
        };
        if let Some(e) = done {
            return Next::Done(e);
        }
        if self.steps.len() as u32 >= self.max_steps {
            return Next::Done(Ended::Steps);
        }
        Next::Step(match (held, broke) {
            (None, None) => self.from,
            (Some(h), None) => (h * 2.0).min(self.to),
            (None, Some(b)) => (b / 2.0).max(self.floor()),
            (Some(h), Some(b)) => (h + b) / 2.0,
        })
    }

    fn floor(&self) -> f64 {
        self.from / f64::from(1u32 << MAX_HALVINGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs a search against a broker that holds exactly up to `capacity`.
    fn run(s: &mut Search, capacity: f64) -> (Ended, Vec<f64>) {
        let mut tried = Vec::new();
        loop {
            match s.next() {
                Next::Step(x) => {
                    tried.push(x);
                    s.record(x, x <= capacity);
                }
                Next::Done(e) => return (e, tried),
            }
        }
    }

    proptest! {
        /// Against a steady broker the answer brackets its capacity to the precision, within
        /// the steps allowed, never above `to` or below the floor.
        #[test]
        fn the_answer_brackets_the_capacity(
            from in 0.01f64..10.0,
            span in 1.0f64..1000.0,
            capacity in 0.0001f64..20_000.0,
            precision in 0.01f64..0.5,
        ) {
            let to = from * span;
            let mut s = Search::new(from, to, precision, 64);
            let (ended, tried) = run(&mut s, capacity);
            prop_assert!(tried.iter().all(|&x| x <= to && x >= s.floor() * (1.0 - 1e-9)));
            prop_assert!(s.monotone());
            match ended {
                Ended::Converged => {
                    let (h, b) = (s.highest_held().unwrap(), s.lowest_broken().unwrap());
                    prop_assert!(h <= capacity && capacity < b);
                    prop_assert!(b - h <= precision * h);
                }
                Ended::Top => prop_assert!(capacity >= to),
                Ended::Bottom => prop_assert!(capacity < s.floor()),
                other => prop_assert!(false, "ended {other:?} after {} steps", tried.len()),
            }
            // doubling, then halving the bracket: logarithmic in both
            let bound = span.log2().ceil() + (1.0 / precision).log2().ceil() + f64::from(MAX_HALVINGS) + 3.0;
            prop_assert!((tried.len() as f64) <= bound, "{} steps for {span}x at {precision}", tried.len());
        }

        /// A noisy broker (a step may hold above one that broke) gets the conservative answer,
        /// said to be non-monotone, and the search still ends within its steps.
        #[test]
        fn noise_gives_the_conservative_answer(flips in proptest::collection::vec(any::<bool>(), 64)) {
            let mut s = Search::new(1.0, 100.0, 0.05, 12);
            let mut i = 0;
            while let Next::Step(x) = s.next() {
                s.record(x, flips[i]);
                i += 1;
            }
            prop_assert!(i <= 12);
            if let (Some(h), Some(b)) = (s.highest_held(), s.lowest_broken()) {
                prop_assert!(h < b);
            }
        }
    }

    #[test]
    fn a_first_step_that_breaks_searches_downward() {
        let mut s = Search::new(4.0, 100.0, 0.1, 32);
        let (ended, tried) = run(&mut s, 0.7);
        assert_eq!(ended, Ended::Converged);
        assert_eq!(&tried[..4], &[4.0, 2.0, 1.0, 0.5]);
        assert!(s.highest_held().unwrap() <= 0.7 && s.lowest_broken().unwrap() > 0.7);
    }

    #[test]
    fn max_steps_and_a_tester_that_falls_short_end_it() {
        let mut s = Search::new(1.0, 1000.0, 0.001, 3);
        assert_eq!(run(&mut s, 5.0).0, Ended::Steps);
        assert_eq!(s.steps_taken(), 3);
        let mut s = Search::new(1.0, 1000.0, 0.05, 30);
        s.record(1.0, true);
        s.tester_bound(2.0);
        assert_eq!(s.next(), Next::Done(Ended::TesterBound));
        assert_eq!(s.highest_held(), Some(1.0));
    }
}
