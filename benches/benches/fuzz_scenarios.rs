//! The structured scenario fuzz as a long job (issue 8, goal 6): scenarios from the grammar,
//! mutated scenarios and arbitrary bytes, for `--minutes` (default 10), each loaded, split over
//! agents and validated on a thread of its own. Exits 1 on the first panic or hang, printing
//! the smallest input proptest could shrink it to.
//!
//! cargo bench -p squall-benches --bench fuzz_scenarios [-- --minutes 10]

#[path = "../../tests/support/scenario_fuzz.rs"]
mod scenario_fuzz;

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn main() {
    let mut minutes = 10.0f64;
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--minutes" => minutes = args.next().and_then(|v| v.parse().ok()).expect("--minutes N"),
            other => panic!("unknown argument {other}"),
        }
    }
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut cases = [0u64; 4];
    let names = ["grammar", "mutated", "bytes", "staged"];
    let started = Instant::now();
    while Instant::now() < until {
        for (i, name) in names.iter().enumerate() {
            // a fresh random seed per batch; failures shrink before they are shown
            let mut runner =
                TestRunner::new(Config { cases: 500, failure_persistence: None, ..Config::default() });
            let outcome = match i {
                0 => runner
                    .run(&scenario_fuzz::scenario(), |s| {
                        scenario_fuzz::check(s.into_bytes()).map_err(TestCaseError::fail)
                    })
                    .map_err(|e| e.to_string()),
                1 => runner
                    .run(&scenario_fuzz::mutated(), |b| scenario_fuzz::check(b).map_err(TestCaseError::fail))
                    .map_err(|e| e.to_string()),
                2 => runner
                    .run(&proptest::collection::vec(any::<u8>(), 0..2048), |b| {
                        scenario_fuzz::check(b).map_err(TestCaseError::fail)
                    })
                    .map_err(|e| e.to_string()),
                _ => runner
                    .run(&scenario_fuzz::staged(), |s| {
                        scenario_fuzz::check(s.into_bytes()).map_err(TestCaseError::fail)
                    })
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = outcome {
                eprintln!("FAIL ({name}) after {} cases: {e}", cases.iter().sum::<u64>());
                std::process::exit(1);
            }
            cases[i] += 500;
        }
    }
    println!(
        "{} scenarios in {:.1} min (grammar {}, mutated {}, bytes {}, staged {}): 0 panics, 0 hangs (each ≤ {:?})",
        cases.iter().sum::<u64>(),
        started.elapsed().as_secs_f64() / 60.0,
        cases[0],
        cases[1],
        cases[2],
        cases[3],
        scenario_fuzz::HANG
    );
}
