use super::*;

fn load(text: &str) -> Result<Plan, Diagnostics> {
    resolve(&Source::new("s.toml", text), &Overrides::default())
}

fn first_error(text: &str) -> Diagnostic {
    load(text).expect_err("should be rejected").0.remove(0)
}

const MINIMAL: &str = r#"
[[group]]
name = "sensors"
clients = 10
[group.publish]
topic = "s/{i}"
interval = "100ms"
"#;

#[test]
fn a_minimal_scenario_gets_defaults() {
    let plan = load(MINIMAL).unwrap();
    assert_eq!(plan.name, "s");
    assert!(plan.targets.is_empty(), "no target: the embedded broker");
    let g = &plan.groups[0];
    assert_eq!((g.clients, g.protocol, g.keepalive_secs, g.clean_start), (10, Protocol::V311, 30, true));
    assert_eq!(g.client_id, "squall-{run}-{group}-{i}");
    let p = g.publish.as_ref().unwrap();
    assert_eq!((p.qos, &p.payload, p.rate), (0, &PayloadSpec::Size(64), RateSpec::IntervalMs(100.0)));
    assert_eq!(plan.duration, DEFAULT_DURATION);
    assert_eq!(plan.timer_coalesce, Duration::ZERO, "every client wakes on its own deadline");
    assert_eq!(plan.read_coalesce, Duration::ZERO, "reads as soon as data comes unless asked");
    assert_eq!((plan.adaptive_connecting, plan.max_connecting), (true, ADAPTIVE_CONNECTING_MAX));
    let fixed = load(&format!("[run]\nmax_connecting = 32\n{MINIMAL}")).unwrap();
    assert_eq!((fixed.adaptive_connecting, fixed.max_connecting), (false, 32));
    assert!(plan.max_duration > plan.duration + plan.drain);
}

#[test]
fn unknown_keys_point_at_the_key() {
    let d = first_error("[[group]]\nclients = 1\nqos = 1\n");
    assert_eq!((d.line, d.column), (3, 1), "{d}");
    assert!(d.message.contains("unknown field `qos`"), "{d}");
}

#[test]
fn a_bad_qos_points_at_its_value() {
    let text =
        "[[group]]\nname = \"a\"\nclients = 1\n[group.publish]\ntopic = \"t\"\ninterval = \"1s\"\nqos = 3\n";
    let d = first_error(text);
    assert_eq!((d.line, d.column), (7, 7), "{d}");
    assert!(d.message.contains("QoS 3"), "{d}");
}

#[test]
fn rate_must_say_per_client_or_per_group() {
    let text =
        "[[group]]\nclients = 1\n[group.publish]\ntopic = \"t\"\ninterval = \"1s\"\ngroup_rate = 100\n";
    let d = first_error(text);
    assert_eq!(d.line, 3, "{d}");
    assert!(d.message.contains("exactly one"), "{d}");
    assert!(d.hint.as_deref().unwrap().contains("group_rate = 1000"), "{d}");
    let d = first_error("[[group]]\nclients = 1\n[group.publish]\ntopic = \"t\"\n");
    assert!(d.message.contains("exactly one"), "{d}");
}

#[test]
fn small_payloads_cannot_carry_the_header() {
    let text =
        "[[group]]\nclients = 1\n[group.publish]\ntopic = \"t\"\ninterval = \"1s\"\npayload_size = 10\n";
    let d = first_error(text);
    assert_eq!(d.line, 6, "{d}");
    assert!(d.message.contains("at least 36"), "{d}");
}

#[test]
fn durations_need_units() {
    let d = first_error("[run]\nduration = \"30\"\n[[group]]\nclients = 1\n");
    assert_eq!((d.line, d.column), (2, 12), "{d}");
    assert!(d.hint.unwrap().contains("30s"));
}

#[test]
fn thresholds_are_checked_at_load() {
    let text = "thresholds = [\"lost == 0\", \"e2e.p99 < 50\"]\n[[group]]\nclients = 1\n";
    let d = first_error(text);
    assert_eq!((d.line, d.column), (1, 28), "{d}");
    assert!(d.message.contains("no unit"), "{d}");
}

#[test]
fn missing_clients_points_at_the_group() {
    let d = first_error("name = \"x\"\n\n[[group]]\nname = \"a\"\n");
    assert_eq!(d.line, 3, "{d}");
    assert!(d.hint.unwrap().contains("clients = 100"));
}

#[test]
fn templates_and_filters_are_checked() {
    let d = first_error("[[group]]\nclients = 2\nclient_id = \"dev\"\n");
    assert_eq!(d.line, 3, "{d}");
    assert!(d.message.contains("{i}"), "{d}");
    let d = first_error("[[group]]\nclients = 1\n[group.subscribe]\nfilters = [\"a/#/b\"]\n");
    assert_eq!(d.line, 4, "{d}");
    let d = first_error("[[group]]\nclients = 1\n[group.publish]\ntopic = \"a/{id}\"\ninterval = \"1s\"\n");
    assert!(d.message.contains("unknown placeholder"), "{d}");
}

#[test]
fn bad_urls_and_syntax_errors() {
    let d = first_error("[target]\nurls = [\"localhost:1883\"]\n[[group]]\nclients = 1\n");
    assert_eq!(d.line, 2, "{d}");
    assert!(d.message.contains("no scheme"), "{d}");
    let d = first_error("[[group]\nclients = 1\n");
    assert_eq!(d.line, 1, "{d}");
}

#[test]
fn several_errors_are_reported_together() {
    let text = "[[group]]\nclients = 0\nprotocol = \"4\"\n";
    let all = load(text).unwrap_err().0;
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn overrides_apply_and_are_checked() {
    let ov = Overrides {
        targets: vec!["mqtt://127.0.0.1:1999".into()],
        duration: Some(Duration::from_secs(3)),
        clients: vec![("sensors".into(), 7)],
        thresholds: vec!["lost == 0".into()],
        ..Default::default()
    };
    let plan = resolve(&Source::new("s.toml", MINIMAL), &ov).unwrap();
    assert_eq!(plan.targets[0].port, 1999);
    assert_eq!(plan.duration, Duration::from_secs(3));
    assert_eq!(plan.groups[0].clients, 7);
    assert_eq!(plan.thresholds.len(), 1);
    let bad = Overrides { targets: vec!["nope".into()], ..Default::default() };
    let d = resolve(&Source::new("s.toml", MINIMAL), &bad).unwrap_err().0.remove(0);
    assert!(d.message.starts_with("--target:"), "{d}");
}

#[test]
fn password_from_the_environment() {
    // SAFETY: test-local variable name, set before reading
    unsafe { std::env::set_var("SQUALL_TEST_PW_1", "s3cret") };
    let text = "[[group]]\nclients = 1\nusername = \"u\"\npassword_env = \"SQUALL_TEST_PW_1\"\n";
    assert_eq!(load(text).unwrap().groups[0].password.as_deref(), Some("s3cret"));
    let d = first_error("[[group]]\nclients = 1\npassword_env = \"SQUALL_TEST_PW_UNSET\"\n");
    assert!(d.message.contains("not set"), "{d}");
}

/// Numbers that would overflow, hang the engine or allocate without bound are refused at
/// load, each pointing at its line with the bound in the message.
#[test]
fn events_are_checked_where_they_are_written() {
    for (event, says) in [
        ("action = \"drop\"\ncount = 1", "needs `at`"),
        ("at = \"1s\"\naction = \"explode\"\ncount = 1", "unknown action `explode`"),
        ("at = \"1s\"\naction = \"drop\"", "`count` or `fraction`"),
        ("at = \"1s\"\naction = \"drop\"\nfraction = 1.5", "a fraction of 1.5"),
        ("at = \"1s\"\naction = \"drop\"\ncount = 1\ntimes = 3", "1 to 10000 times"),
        ("at = \"1s\"\naction = \"drop\"\ncount = 1\nback = \"later\"", "not a way back"),
        ("at = \"1s\"\naction = \"disconnect_with_will\"\ncount = 1", "MQTT 5"),
    ] {
        let d = first_error(&format!("{MINIMAL}[[group.event]]\n{event}\n"));
        assert!(d.message.contains(says), "{event}: {d}");
    }
    let plan = load(&format!("{MINIMAL}[[group.event]]\nat = \"2s\"\nevery = \"1s\"\ntimes = 3\naction = \"drop\"\nfraction = 0.5\nback = \"5s\"\n")).unwrap();
    let e = &plan.groups[0].events[0];
    assert_eq!((e.at_ms, e.every_ms, e.times, e.count, e.back), (2000, 1000, 3, 5, Comeback::AfterMs(5000)));
}

#[test]
fn a_group_label_in_a_threshold_must_name_a_group() {
    let d = first_error(&format!("thresholds = [\"e2e{{group=sensor}}.p99 < 5ms\"]\n{MINIMAL}"));
    assert!(d.message.contains("group `sensor`, which the scenario does not have"), "{d}");
    assert!(d.hint.as_deref().is_some_and(|h| h.contains("sensors")), "{d}");
    load(&format!("thresholds = [\"e2e{{group=sensors}}.p99 < 5ms\"]\n{MINIMAL}")).unwrap();
}

#[test]
fn numbers_beyond_what_squall_can_run_are_refused_with_the_bound() {
    let group = |publish: &str| {
        format!("[[group]]\nname = \"g\"\nclients = 1000\n[group.publish]\ntopic = \"t/{{i}}\"\n{publish}\n")
    };
    for (text, line, says) in [
        (
            format!("[run]\nduration = \"100000000000h\"\n{}", group("interval = \"1s\"")),
            2,
            "longer than squall runs anything",
        ),
        (
            format!("[run]\nduration = \"31d\"\n{}", group("interval = \"1s\"")),
            2,
            "longer than squall runs anything",
        ),
        (group("interval = \"1s\"\npayload_size = 4000000000"), 7, "more than an MQTT packet can carry"),
        (group("group_rate = 1e30"), 4, "lower group_rate to at most 1000000000"),
        (group("interval = \"1ns\""), 4, "an interval under 1µs"),
        (format!("[run]\ntimer_coalesce = \"11ms\"\n{}", group("interval = \"1s\"")), 2, "blur the schedule"),
        (format!("[run]\nread_coalesce = \"2ms\"\n{}", group("interval = \"1s\"")), 2, "blur arrival times"),
        (format!("[run]\nmax_unsent_bytes = 100\n{}", group("interval = \"1s\"")), 2, "no room to send"),
        // found by the scenario fuzz: 1000 clients / 1e-300 per second overflowed a Duration
        (
            group("interval = \"1s\"")
                .replace("clients = 1000\n", "clients = 1000\ndisconnect_rate = 1e-300\n"),
            4,
            "take longer than squall runs anything",
        ),
        (
            group("interval = \"1s\"").replace("clients = 1000\n", "clients = 1000\nconnect_rate = 1e-300\n"),
            4,
            "take longer than squall runs anything",
        ),
    ] {
        let d = first_error(&text);
        assert_eq!(d.line, line, "{d}");
        assert!(d.message.contains(says), "{d}");
    }
    // at the bounds: accepted
    load(&group("group_rate = 1000000000")).unwrap();
    let plan = load(&format!("[run]\ntimer_coalesce = \"10ms\"\n{}", group("interval = \"1s\""))).unwrap();
    assert_eq!(plan.timer_coalesce, Duration::from_millis(10));
    let plan = load(&format!("[run]\nread_coalesce = \"1ms\"\n{}", group("interval = \"1s\""))).unwrap();
    assert_eq!(plan.read_coalesce, Duration::from_millis(1));
    let eager = load(&format!("[run]\nread_coalesce = \"0s\"\n{}", group("interval = \"1s\""))).unwrap();
    assert_eq!(eager.read_coalesce, Duration::ZERO);
    load(&format!("[run]\nduration = \"30d\"\n{}", group("interval = \"1us\""))).unwrap();
    let ov = Overrides { duration: Some(Duration::from_secs(31 * 86_400)), ..Default::default() };
    let d = resolve(&Source::new("s.toml", group("interval = \"1s\"")), &ov).expect_err("flag checked too");
    assert!(d.0[0].message.contains("--duration"), "{}", d.0[0]);
}

#[test]
fn stages_resolve_to_their_sum_with_defaults() {
    let text = format!(
        "{MINIMAL}[[stage]]\nduration = \"30s\"\nrate = \"50%\"\n[[stage]]\nduration = \"10s\"\nrate = \"250%\"\nwarmup = \"2s\"\n"
    );
    let plan = load(&text).unwrap();
    let Shape::Stages(s) = &plan.shape else { panic!("{:?}", plan.shape) };
    assert_eq!(s.len(), 2);
    assert_eq!((s[0].scale, s[0].warmup), (0.5, Duration::from_secs(5)), "a fifth, at most 5 s");
    assert_eq!((s[1].scale, s[1].warmup), (2.5, Duration::from_secs(2)));
    assert_eq!(plan.duration, Duration::from_secs(40), "the window is their sum");
    assert!(plan.max_duration > plan.duration + plan.drain);
}

#[test]
fn a_search_resolves_with_defaults_and_bounds_its_window() {
    let plan = load(&format!(
        "{MINIMAL}[search]\nslo = [\"e2e.p99 < 20ms\", \"missing == 0\", \"receive.rate >= 90\"]\n"
    ))
    .unwrap();
    let Shape::Search(s) = &plan.shape else { panic!("{:?}", plan.shape) };
    assert_eq!((s.from, s.to, s.precision, s.max_steps), (1.0, 100.0, 0.05, 16));
    assert_eq!((s.step, s.warmup), (Duration::from_secs(20), Duration::from_secs(4)));
    assert_eq!(s.slo.len(), 3);
    assert!(plan.duration >= s.step * s.max_steps, "the window holds every step");
    // a rule on the search's answer needs a search
    let d = first_error(&format!("thresholds = [\"capacity >= 1000\"]\n{MINIMAL}"));
    assert!(d.message.contains("needs a capacity search"), "{d}");
    assert!(
        load(&format!(
            "thresholds = [\"capacity >= 1000\"]\n{MINIMAL}[search]\nslo = [\"e2e.p99 < 20ms\"]\n"
        ))
        .is_ok()
    );
}

#[test]
fn stages_and_searches_are_checked_where_they_are_written() {
    // (text after MINIMAL, what the error says, line of MINIMAL + n)
    let cases: &[(&str, &str, usize)] = &[
        ("[[stage]]\nduration = \"10s\"\nrate = \"fast\"\n", "not a share", 3),
        ("[[stage]]\nduration = \"10s\"\nrate = \"-5%\"\n", "not a share", 3),
        ("[[stage]]\nrate = \"50%\"\n", "needs a duration", 1),
        ("[[stage]]\nduration = \"1500ms\"\n", "fewer than two snapshot intervals", 2),
        ("[[stage]]\nduration = \"10s\"\nwarmup = \"10s\"\n", "leaves less than one snapshot interval", 3),
        // 10 clients at 100 ms: one message a µs each is 100,000×
        ("[[stage]]\nduration = \"10s\"\nrate = \"20000000%\"\n", "more than one message a microsecond", 3),
        ("[search]\nfrom = \"50%\"\n", "needs the rules each step must hold", 1),
        ("[search]\nslo = [\"lost == 0\"]\n", "cannot judge one step", 2),
        ("[search]\nslo = [\"agents_suspect == 0\"]\n", "cannot judge one step", 2),
        ("[search]\nslo = [\"e2e.p99 < 1ms\"]\nfrom = \"500%\"\nto = \"200%\"\n", "starts above its top", 3),
        ("[search]\nslo = [\"e2e.p99 < 1ms\"]\nprecision = \"200%\"\n", "between 0.1% and 100%", 3),
        ("[search]\nslo = [\"e2e.p99 < 1ms\"]\nmax_steps = 1000\n", "1 to 64 steps", 3),
        ("[search]\nslo = [\"e2e.p99 < 1ms\"]\n[[stage]]\nduration = \"10s\"\n", "not both", 1),
    ];
    let base = MINIMAL.lines().count();
    for (extra, says, line) in cases {
        let d = first_error(&format!("{MINIMAL}{extra}"));
        assert!(d.message.contains(says), "{extra:?}: {d}");
        assert_eq!(d.line, base + line, "{extra:?}: {d}");
        assert!(
            d.hint.is_some()
                || d.message.contains("between")
                || d.message.contains("steps")
                || d.message.contains("top"),
            "{extra:?}: no hint: {d}"
        );
    }
    // the window is the stages': run.duration and --duration are refused with them
    let d = first_error(&format!("[run]\nduration = \"30s\"\n{MINIMAL}[[stage]]\nduration = \"10s\"\n"));
    assert!(d.message.contains("publishing window is theirs") && d.hint.is_some(), "{d}");
    let ov = Overrides { duration: Some(Duration::from_secs(5)), ..Default::default() };
    let e = resolve(&Source::new("s.toml", format!("{MINIMAL}[[stage]]\nduration = \"10s\"\n")), &ov)
        .unwrap_err();
    assert!(e.0[0].message.contains("--duration"), "{e}");
    // stages need something to scale
    let d = first_error(
        "[[group]]\nname = \"s\"\nclients = 1\n[group.subscribe]\nfilters = [\"#\"]\n[[stage]]\nduration = \"10s\"\n",
    );
    assert!(d.message.contains("no group publishes"), "{d}");
}
