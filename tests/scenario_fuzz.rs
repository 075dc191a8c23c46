//! A brief run of the structured scenario fuzz (the bench job runs it for 10 minutes): any
//! scenario, from the grammar, mutated, or arbitrary bytes, loads or is refused with a
//! diagnostic; never a panic or a hang.

#[path = "support/scenario_fuzz.rs"]
mod scenario_fuzz;

use proptest::prelude::*;
use scenario_fuzz::{check, mutated, scenario, staged};

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn scenarios_from_the_grammar_load_or_are_refused(s in scenario()) {
        check(s.into_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn staged_scenarios_load_or_are_refused_and_never_send_a_stage_an_agent_refuses(s in staged()) {
        check(s.into_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn mutated_scenarios_load_or_are_refused(b in mutated()) {
        check(b).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn arbitrary_bytes_are_refused_not_fatal(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(b).map_err(TestCaseError::fail)?;
    }
}

/// The grammar reaches past the parser: some of what it draws loads (else the fuzz would only
/// ever exercise refusals).
#[test]
fn the_grammar_draws_scenarios_that_load() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use squall_controller::scenario::{Overrides, Source, load_source};
    let mut runner = TestRunner::deterministic();
    let strategy = scenario();
    let loaded = (0..2000)
        .filter(|_| {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            load_source(&Source::new("f.toml", text), &Overrides::default()).is_ok()
        })
        .count();
    eprintln!("{loaded} of 2000 drawn scenarios loaded");
    assert!(loaded >= 20, "only {loaded} of 2000 drawn scenarios loaded: the fuzz would test refusals only");
    // and the staged grammar reaches stages and searches that load
    let strategy = staged();
    let shapes: Vec<_> = (0..500)
        .filter_map(|_| {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            load_source(&Source::new("f.toml", text), &Overrides::default()).ok().map(|p| p.shape)
        })
        .collect();
    use squall_controller::scenario::Shape;
    let stages = shapes.iter().filter(|s| matches!(s, Shape::Stages(_))).count();
    let searches = shapes.iter().filter(|s| matches!(s, Shape::Search(_))).count();
    eprintln!("of 500 staged scenarios, {stages} with stages and {searches} searches loaded");
    assert!(stages >= 25 && searches >= 25, "{stages} staged and {searches} searches of 500 loaded");
}
