//! From the file as written to a [`Plan`]: defaults, meaning, and CLI overrides.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use squall_proto::plan::{
    BackoffPolicy, Comeback, EventAction, EventSpec, GroupSpec, Jitter, MAX_EVENT_TIMES, MAX_MULTIPLIER,
    PayloadSpec, PlanError, PublishSpec, RateSpec, ReconnectSpec, SubscribeSpec, WillSpec,
};
use squall_proto::protocol::Protocol;
use squall_proto::target::TargetUrl;
use squall_proto::tls::TlsMaterial;

use super::{Plan, SearchPlan, Shape, StagePlan};

/// The most handshakes an adaptive window keeps in flight.
pub const ADAPTIVE_CONNECTING_MAX: u32 = 4096;
use super::format::{self, Scenario};
use super::source::{Diagnostic, Diagnostics, Seg, Source};
use crate::path;
use crate::thresholds::Threshold;

/// What the command line may change. Applied after the file, checked the same way.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replace the file's target URLs.
    pub targets: Vec<String>,
    pub duration: Option<Duration>,
    pub drain: Option<Duration>,
    pub max_duration: Option<Duration>,
    /// Added to the file's thresholds.
    pub thresholds: Vec<String>,
    /// `(group, clients)`: change one group's client count.
    pub clients: Vec<(String, u32)>,
}

const DEFAULT_DURATION: Duration = Duration::from_secs(10);
const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

struct Ctx<'a> {
    src: &'a Source,
    errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn err(&mut self, path: Vec<Seg>, message: impl Into<String>, hint: impl Into<Option<String>>) {
        let d = self.src.at_path(&path, message, hint.into());
        self.errors.push(d);
    }

    fn flag(&mut self, flag: &str, message: impl Into<String>, hint: impl Into<Option<String>>) {
        let d = self.src.at(None, format!("{flag}: {}", message.into()), hint.into());
        self.errors.push(d);
    }

    fn duration(&mut self, path: Vec<Seg>, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if d > MAX_DURATION => {
                    self.err(
                        path,
                        format!(
                            "`{s}` is longer than squall runs anything ({})",
                            humantime::format_duration(MAX_DURATION)
                        ),
                        "split a longer soak into several runs".to_string(),
                    );
                    default
                }
                Ok(d) => d,
                Err(_) => {
                    self.err(
                        path,
                        format!("`{s}` is not a duration"),
                        "write a number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\"".to_string(),
                    );
                    default
                }
            },
        }
    }

    fn qos(&mut self, path: Vec<Seg>, v: Option<u8>) -> u8 {
        match v {
            None => 0,
            Some(q @ 0..=2) => q,
            Some(q) => {
                self.err(path, format!("QoS {q} does not exist"), "QoS is 0, 1 or 2".to_string());
                0
            }
        }
    }

    /// One of a fixed set of names (`names`, read by `from`), or `default` when absent.
    fn named<T>(
        &mut self,
        path: Vec<Seg>,
        v: Option<&str>,
        what: &str,
        (names, from): (&[&str], fn(&str) -> Option<T>),
        default: T,
    ) -> T {
        let Some(s) = v else { return default };
        from(s).unwrap_or_else(|| {
            self.err(path, format!("unknown {what} `{s}`"), format!("one of {}", names.join(", ")));
            default
        })
    }

    /// A share written as a percentage ("50%", "250%"), as a scale (0.5, 2.5).
    fn percent(&mut self, path: Vec<Seg>, v: &Option<String>, default: f64) -> f64 {
        let Some(s) = v else { return default };
        match s.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
            Some(Ok(p)) if p > 0.0 && p.is_finite() => p / 100.0,
            _ => {
                self.err(
                    path,
                    format!("`{s}` is not a share"),
                    "write a percentage above 0, such as \"50%\" or \"250%\"".to_string(),
                );
                default
            }
        }
    }

    fn rate(&mut self, path: Vec<Seg>, v: Option<f64>, default: f64, what: &str) -> f64 {
        match v {
            None => default,
            Some(r) if r > 0.0 && r.is_finite() => r,
            Some(r) => {
                self.err(path, format!("{what} must be a positive number per second, not {r}"), None);
                default
            }
        }
    }
}

/// The longest any duration in a scenario may be: a run, a timeout, a backoff.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

pub fn resolve(src: &Source, ov: &Overrides) -> Result<Plan, Diagnostics> {
    let scenario: Scenario = toml::from_str(&src.text).map_err(|e| {
        let msg = e.message().trim().to_string();
        let hint = if msg.starts_with("unknown field") {
            Some("check the spelling; `squall init` prints every key with its meaning".to_string())
        } else {
            None
        };
        Diagnostics(vec![src.at(e.span(), msg, hint)])
    })?;
    let mut cx = Ctx { src, errors: Vec::new() };
    let base_dir = src.path.parent().unwrap_or(Path::new(".")).to_path_buf();

    let name = scenario.name.clone().unwrap_or_else(|| {
        src.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scenario".into())
    });

    // thresholds: the file's, then the command line's; a group label names a group
    let group_names: Vec<&str> = scenario.groups.iter().filter_map(|g| g.name.as_deref()).collect();
    let parse = |t: &str| {
        let t = Threshold::parse(t)?;
        if let crate::thresholds::MetricRef::Latency { group: Some(g), .. } = &t.metric
            && !group_names.contains(&g.as_str())
        {
            return Err(crate::thresholds::ThresholdError {
                message: format!("`{}` names group `{g}`, which the scenario does not have", t.expr),
                hint: Some(format!("groups: {}", group_names.join(", "))),
            });
        }
        Ok(t)
    };
    let mut thresholds = Vec::new();
    for (i, t) in scenario.thresholds.iter().enumerate() {
        match parse(t) {
            Ok(t) => thresholds.push(t),
            Err(e) => cx.err(path!["thresholds", i], e.message, e.hint),
        }
    }
    for t in &ov.thresholds {
        match parse(t) {
            Ok(t) => thresholds.push(t),
            Err(e) => cx.flag("--threshold", e.message, e.hint),
        }
    }

    // targets
    let target = scenario.target.clone().unwrap_or_default();
    let mut targets = Vec::new();
    if ov.targets.is_empty() {
        for (i, u) in target.urls.iter().enumerate() {
            match u.parse::<TargetUrl>() {
                Ok(t) => targets.push(t),
                Err(e) => cx.err(path!["target", "urls", i], e.to_string(), None),
            }
        }
    } else {
        for u in &ov.targets {
            match u.parse::<TargetUrl>() {
                Ok(t) => targets.push(t),
                Err(e) => cx.flag("--target", e.to_string(), None),
            }
        }
    }
    let mut source_addresses = Vec::new();
    for (i, a) in target.source_addresses.iter().enumerate() {
        match a.parse::<IpAddr>() {
            Ok(ip) => source_addresses.push(ip),
            Err(_) => {
                cx.err(path!["target", "source_addresses", i], format!("`{a}` is not an IP address"), None)
            }
        }
    }
    let tls = resolve_tls(&mut cx, target.tls.as_ref(), &base_dir);

    // groups
    if scenario.groups.is_empty() {
        cx.errors.push(src.at(
            None,
            "the scenario has no client group",
            Some("add a [[group]] with at least `clients` and a [group.publish] or [group.subscribe]; `squall init` prints an example".into()),
        ));
    }
    let mut names = HashSet::new();
    let mut groups = Vec::new();
    let mut identities = Vec::new();
    for (gi, g) in scenario.groups.iter().enumerate() {
        if let Some(spec) = resolve_group(&mut cx, gi, g, ov) {
            if !names.insert(spec.name.clone()) {
                cx.err(path!["group", gi, "name"], format!("group name `{}` is used twice", spec.name), None);
            }
            identities.push(g.identities.as_ref().and_then(|file| {
                read_identities(&mut cx, gi, g, &spec, &base_dir.join(file)).map(std::sync::Arc::new)
            }));
            groups.push(spec);
        }
    }
    for (name, _) in &ov.clients {
        if !groups.iter().any(|g| &g.name == name) && cx.errors.is_empty() {
            cx.flag("--clients", format!("no group named `{name}`"), None);
        }
    }

    // timing
    let run = &scenario.run;
    let mut duration = cx.duration(path!["run", "duration"], &run.duration, DEFAULT_DURATION);
    if let Some(d) = ov.duration {
        duration = d;
    }
    if duration.is_zero() {
        cx.err(path!["run", "duration"], "the publishing window cannot be empty", None);
    }
    for (flag, d) in [("--duration", ov.duration), ("--drain", ov.drain), ("--max-duration", ov.max_duration)]
    {
        if let Some(d) = d.filter(|d| *d > MAX_DURATION) {
            let hint = "split a longer soak into several runs".to_string();
            cx.flag(
                flag,
                format!(
                    "{} is longer than squall runs anything ({})",
                    humantime::format_duration(d),
                    humantime::format_duration(MAX_DURATION)
                ),
                hint,
            );
        }
    }
    let mut drain = cx.duration(path!["run", "drain"], &run.drain, DEFAULT_DRAIN);
    if let Some(d) = ov.drain {
        drain = d;
    }
    let snapshot_interval =
        cx.duration(path!["run", "snapshot_interval"], &run.snapshot_interval, Duration::from_secs(1));
    if snapshot_interval < Duration::from_millis(100) {
        cx.err(
            path!["run", "snapshot_interval"],
            "snapshots more often than every 100ms cost more than they tell",
            None,
        );
    }
    let shape = resolve_shape(&mut cx, &scenario, &groups, snapshot_interval, &parse);
    match &shape {
        Shape::Steady => {}
        staged => {
            if run.duration.is_some() {
                cx.err(
                    path!["run", "duration"],
                    "with stages or a search the publishing window is theirs",
                    "remove run.duration: stages last their sum, a search as long as it needs".to_string(),
                );
            }
            if ov.duration.is_some() {
                cx.flag("--duration", "the scenario's stages or search set the publishing window", None);
            }
            duration = match staged {
                Shape::Stages(stages) => stages.iter().map(|s| s.duration).sum(),
                Shape::Search(s) => (s.step + super::search_gap(snapshot_interval)) * s.max_steps,
                Shape::Steady => duration,
            };
        }
    }
    if !matches!(shape, Shape::Search(_)) {
        for (i, t) in thresholds.iter().enumerate() {
            if t.metric == crate::thresholds::MetricRef::Count("capacity".into()) {
                let msg = format!("`{}` needs a capacity search to measure it", t.expr);
                let hint = "add a [search] with the rules a step must hold".to_string();
                match scenario.thresholds.get(i) {
                    Some(_) => cx.err(path!["thresholds", i], msg, hint),
                    None => cx.flag("--threshold", msg, hint),
                }
            }
        }
    }
    let slowest_ramp = groups
        .iter()
        .map(|g| g.clients as f64 / g.connect_rate + g.connect_timeout_ms as f64 / 1e3)
        .fold(0.0, f64::max);
    let slowest_ramp_down = groups.iter().map(|g| g.clients as f64 / g.disconnect_rate).fold(0.0, f64::max);
    let ramp_timeout = cx.duration(
        path!["run", "ramp_timeout"],
        &run.ramp_timeout,
        Duration::from_secs_f64(slowest_ramp + 10.0),
    );
    let default_max = ramp_timeout + duration + drain + Duration::from_secs_f64(slowest_ramp_down + 60.0);
    let mut max_duration = cx.duration(path!["run", "max_duration"], &run.max_duration, default_max);
    if let Some(d) = ov.max_duration {
        max_duration = d;
    }
    if max_duration < duration + drain {
        cx.err(
            path!["run", "max_duration"],
            format!(
                "max_duration ({}) is shorter than duration + drain ({})",
                humantime::format_duration(max_duration),
                humantime::format_duration(duration + drain)
            ),
            "raise max_duration, or leave it out to have it computed".to_string(),
        );
    }

    let max_connecting = match run.max_connecting {
        Some(0) => {
            cx.err(path!["run", "max_connecting"], "at least one handshake must be allowed", None);
            1
        }
        Some(n) => n,
        None => ADAPTIVE_CONNECTING_MAX,
    };
    let timer_coalesce = cx.duration(path!["run", "timer_coalesce"], &run.timer_coalesce, Duration::ZERO);
    if timer_coalesce.as_micros() > squall_proto::plan::MAX_TIMER_COALESCE_US as u128 {
        cx.err(
            path!["run", "timer_coalesce"],
            format!("`{}` would blur the schedule itself", humantime::format_duration(timer_coalesce)),
            format!("at most {} µs", squall_proto::plan::MAX_TIMER_COALESCE_US),
        );
    }
    let read_coalesce = cx.duration(
        path!["run", "read_coalesce"],
        &run.read_coalesce,
        Duration::from_micros(squall_proto::plan::DEFAULT_READ_COALESCE_US as u64),
    );
    if read_coalesce.as_micros() > squall_proto::plan::MAX_READ_COALESCE_US as u128 {
        cx.err(
            path!["run", "read_coalesce"],
            format!("`{}` would blur arrival times", humantime::format_duration(read_coalesce)),
            format!("at most {} µs", squall_proto::plan::MAX_READ_COALESCE_US),
        );
    }
    let max_unsent_bytes = run.max_unsent_bytes.unwrap_or(squall_proto::plan::DEFAULT_UNSENT_BYTES);
    if max_unsent_bytes < squall_proto::plan::MIN_UNSENT_BYTES {
        cx.err(
            path!["run", "max_unsent_bytes"],
            format!("{max_unsent_bytes} bytes leaves no room to send"),
            format!("at least {}", squall_proto::plan::MIN_UNSENT_BYTES),
        );
    }
    if !cx.errors.is_empty() {
        return Err(Diagnostics(cx.errors));
    }
    Ok(Plan {
        max_unsent_bytes,
        max_connecting,
        adaptive_connecting: run.max_connecting.is_none(),
        timer_coalesce,
        read_coalesce,
        name,
        run_tag: fastrand::u32(..),
        targets,
        tls,
        source_addresses,
        groups,
        duration,
        drain,
        ramp_timeout,
        max_duration,
        snapshot_interval,
        thresholds,
        shape,
        identities,
    })
}

/// An identities file most may be: a million devices of a few hundred bytes each.
const MAX_IDENTITIES_FILE: u64 = 256 << 20;

/// Reads a group's identities file: a CSV with a header of `client_id`, `username`,
/// `password` (any of them), a row per client, at least as many rows as clients (the first
/// `clients` are used), client ids distinct and not empty.
fn read_identities(
    cx: &mut Ctx<'_>,
    gi: usize,
    g: &format::Group,
    spec: &GroupSpec,
    file: &Path,
) -> Option<Vec<squall_proto::plan::Identity>> {
    use squall_proto::plan::{Identity, MAX_IDENTITY_FIELD};
    let at = path!["group", gi, "identities"];
    let shown = file.display();
    let size = match std::fs::metadata(file) {
        Ok(m) => m.len(),
        Err(e) => {
            cx.err(
                at,
                format!("cannot read {shown}: {e}"),
                "the path is relative to the scenario file".to_string(),
            );
            return None;
        }
    };
    if size > MAX_IDENTITIES_FILE {
        cx.err(
            at,
            format!("{shown} is {size} bytes, more than the {MAX_IDENTITIES_FILE} an identities file may be"),
            None,
        );
        return None;
    }
    let mut reader = match csv::ReaderBuilder::new().trim(csv::Trim::All).from_path(file) {
        Ok(r) => r,
        Err(e) => {
            cx.err(at, format!("cannot read {shown}: {e}"), None);
            return None;
        }
    };
    let columns = ["client_id", "username", "password"];
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => {
            cx.err(at, format!("{shown}: {e}"), None);
            return None;
        }
    };
    if let Some(bad) = header.iter().find(|h| !columns.contains(&h.as_str())) {
        cx.err(
            at,
            format!("{shown}: unknown column `{bad}`"),
            format!("the header names any of {}", columns.join(", ")),
        );
        return None;
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    let (c_id, c_user, c_pass) = (col("client_id"), col("username"), col("password"));
    if c_id.is_none() && c_user.is_none() && c_pass.is_none() {
        cx.err(
            at,
            format!("{shown} has no header"),
            format!("its first line names its columns: {}", columns.join(", ")),
        );
        return None;
    }
    if c_id.is_some() && g.client_id.is_some() {
        cx.err(
            path!["group", gi, "client_id"],
            "the identities file gives the client ids",
            "remove client_id".to_string(),
        );
        return None;
    }
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for (k, record) in reader.records().take(spec.clients as usize).enumerate() {
        let row = k + 2; // the header is line 1
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                cx.err(at, format!("{shown}: {e}"), None);
                return None;
            }
        };
        let cell =
            |c: Option<usize>| c.and_then(|c| record.get(c)).filter(|v| !v.is_empty()).map(str::to_string);
        let id = Identity { client_id: cell(c_id), username: cell(c_user), password: cell(c_pass) };
        if [&id.client_id, &id.username, &id.password]
            .iter()
            .any(|f| f.as_ref().is_some_and(|v| v.len() > MAX_IDENTITY_FIELD))
        {
            cx.err(at, format!("{shown}, line {row}: a field longer than {MAX_IDENTITY_FIELD} bytes"), None);
            return None;
        }
        match &id.client_id {
            None if c_id.is_some() => {
                cx.err(
                    at,
                    format!("{shown}, line {row}: no client id"),
                    "every row names its device".to_string(),
                );
                return None;
            }
            Some(c) if !seen.insert(c.clone()) => {
                cx.err(
                    at,
                    format!("{shown}, line {row}: client id `{c}` again"),
                    "client ids are one per device: a second connection takes the first's over".to_string(),
                );
                return None;
            }
            _ => {}
        }
        rows.push(id);
    }
    if rows.len() < spec.clients as usize {
        cx.err(
            at,
            format!("{shown} has {} identities for {} clients", rows.len(), spec.clients),
            "add rows, or lower the group's clients".to_string(),
        );
        return None;
    }
    Some(rows)
}

/// Stages or a search, checked against the groups' rates (no client may be asked for more
/// than one message a microsecond) and the snapshot interval (a step must hold whole ones).
fn resolve_shape(
    cx: &mut Ctx<'_>,
    scenario: &Scenario,
    groups: &[GroupSpec],
    snapshot_interval: Duration,
    parse: &dyn Fn(&str) -> Result<Threshold, crate::thresholds::ThresholdError>,
) -> Shape {
    if scenario.stages.is_empty() && scenario.search.is_none() {
        return Shape::Steady;
    }
    if !scenario.stages.is_empty() && scenario.search.is_some() {
        cx.err(
            path!["search"],
            "a scenario has stages or a search, not both",
            "a search chooses its own steps: remove the [[stage]] tables, or the [search]".to_string(),
        );
        return Shape::Steady;
    }
    // the most any step may scale the rates: the busiest client at one message a microsecond
    let limits: Vec<(f64, &str)> = groups
        .iter()
        .filter_map(|g| {
            g.publish.as_ref().map(|p| (squall_proto::plan::max_scale_of(g.clients, p.rate), g.name.as_str()))
        })
        .collect();
    let Some(&(max_scale, busiest)) = limits.iter().min_by(|a, b| a.0.total_cmp(&b.0)) else {
        let at = if scenario.search.is_some() { path!["search"] } else { path!["stage", 0] };
        cx.err(
            at,
            "stages and searches scale publishing, and no group publishes",
            "add a [group.publish]".to_string(),
        );
        return Shape::Steady;
    };
    let too_fast = |scale: f64| {
        format!(
            "{} of group `{busiest}`'s rate is more than one message a microsecond per client (at most {})",
            fmt_percent(scale),
            fmt_percent(max_scale)
        )
    };
    // a step's figures come from whole snapshot intervals after its warm-up
    let step_times = |cx: &mut Ctx<'_>,
                      at: Vec<Seg>,
                      duration: &Option<String>,
                      warmup: &Option<String>,
                      default: Option<Duration>| {
        let mut d_at = at.clone();
        d_at.push(Seg::Key(if default.is_some() { "step" } else { "duration" }.into()));
        let d = match (duration, default) {
            (None, None) => {
                cx.err(at.clone(), "a stage needs a duration", "e.g. duration = \"30s\"".to_string());
                return None;
            }
            _ => cx.duration(d_at.clone(), duration, default.unwrap_or_default()),
        };
        if d < 2 * snapshot_interval {
            cx.err(
                d_at,
                format!(
                    "{} holds fewer than two snapshot intervals ({} each): too short to measure",
                    humantime::format_duration(d),
                    humantime::format_duration(snapshot_interval)
                ),
                "make it longer, or set run.snapshot_interval shorter".to_string(),
            );
            return None;
        }
        let mut w_at = at;
        w_at.push(Seg::Key("warmup".into()));
        let w = cx.duration(w_at.clone(), warmup, (d / 5).min(Duration::from_secs(5)));
        if w + snapshot_interval > d {
            cx.err(
                w_at,
                format!(
                    "a warm-up of {} leaves less than one snapshot interval to measure",
                    humantime::format_duration(w)
                ),
                "shorten the warm-up".to_string(),
            );
            return None;
        }
        Some((d, w))
    };
    if let Some(sr) = &scenario.search {
        let mut slo = Vec::new();
        if sr.slo.is_empty() {
            cx.err(
                path!["search"],
                "a search needs the rules each step must hold",
                "e.g. slo = [\"e2e.p99 < 20ms\", \"missing == 0\"]".to_string(),
            );
        }
        for (i, t) in sr.slo.iter().enumerate() {
            match parse(t) {
                Ok(t) if !t.metric.known_per_step() || t.abort => cx.err(
                    path!["search", "slo", i],
                    format!("`{}` cannot judge one step", t.expr),
                    "a step is judged on latencies, counts over the step (errors, missing, any counter) and publish.rate or receive.rate; the ledger and tester health are judged at the end, in thresholds".to_string(),
                ),
                Ok(t) => slo.push(t),
                Err(e) => cx.err(path!["search", "slo", i], e.message, e.hint),
            }
        }
        let from = cx.percent(path!["search", "from"], &sr.from, 1.0);
        let to = cx.percent(path!["search", "to"], &sr.to, max_scale.min(100.0));
        if to > max_scale {
            cx.err(path!["search", "to"], too_fast(to), "lower it, or publish from more clients".to_string());
        }
        if from > to {
            cx.err(
                path!["search", "from"],
                format!("the search starts above its top ({})", fmt_percent(to)),
                None,
            );
        }
        let precision = cx.percent(path!["search", "precision"], &sr.precision, 0.05);
        if !(0.001..=1.0).contains(&precision) {
            cx.err(path!["search", "precision"], "a precision is between 0.1% and 100%", None);
        }
        let max_steps = sr.max_steps.unwrap_or(16);
        if !(1..=super::MAX_SEARCH_STEPS).contains(&max_steps) {
            cx.err(
                path!["search", "max_steps"],
                format!("a search takes 1 to {} steps", super::MAX_SEARCH_STEPS),
                None,
            );
        }
        let times = step_times(cx, path!["search"], &sr.step, &sr.warmup, Some(Duration::from_secs(20)));
        let Some((step, warmup)) = times else { return Shape::Steady };
        return Shape::Search(SearchPlan { slo, from, to, step, warmup, precision, max_steps });
    }
    if scenario.stages.len() > squall_proto::plan::MAX_STAGES as usize {
        cx.err(path!["stage"], format!("at most {} stages", squall_proto::plan::MAX_STAGES), None);
        return Shape::Steady;
    }
    let mut stages = Vec::new();
    for (i, st) in scenario.stages.iter().enumerate() {
        let scale = cx.percent(path!["stage", i, "rate"], &st.rate, 1.0);
        if scale > max_scale {
            cx.err(
                path!["stage", i, "rate"],
                too_fast(scale),
                "lower it, or publish from more clients".to_string(),
            );
        }
        if let Some((duration, warmup)) = step_times(cx, path!["stage", i], &st.duration, &st.warmup, None) {
            stages.push(StagePlan { duration, scale, warmup });
        }
    }
    if stages.iter().map(|s| s.duration).sum::<Duration>() > MAX_DURATION {
        cx.err(path!["stage"], "the stages together last longer than squall runs anything", None);
    }
    Shape::Stages(stages)
}

/// A scale as a share, "250%".
pub fn fmt_percent(scale: f64) -> String {
    let p = scale * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.4}%").trim_end_matches('0').to_string()
    }
}

fn resolve_tls(cx: &mut Ctx<'_>, tls: Option<&format::Tls>, base: &Path) -> TlsMaterial {
    let Some(t) = tls else { return TlsMaterial::default() };
    // read here, once: agents get the bytes, and a missing file is an error in the scenario
    let mut file = |key: &str, v: &Option<String>| -> Option<Vec<u8>> {
        let v = v.as_ref()?;
        let p = base.join(v);
        match std::fs::read(&p) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                cx.err(
                    path!["target", "tls", key],
                    format!("cannot read {}: {e}", p.display()),
                    "paths are relative to the scenario file".to_string(),
                );
                None
            }
        }
    };
    let ca_pem = file("ca", &t.ca);
    let cert_pem = file("cert", &t.cert);
    let key_pem = file("key", &t.key);
    if t.cert.is_some() != t.key.is_some() {
        cx.err(
            path!["target", "tls"],
            "a client certificate needs its key, and a key its certificate",
            "give both `cert` and `key`".to_string(),
        );
    }
    TlsMaterial { ca_pem, cert_pem, key_pem, server_name: t.server_name.clone(), insecure: t.insecure }
}

fn resolve_group(cx: &mut Ctx<'_>, gi: usize, g: &format::Group, ov: &Overrides) -> Option<GroupSpec> {
    let p = |rest: &[&str]| -> Vec<Seg> {
        let mut v = path!["group", gi];
        v.extend(rest.iter().map(|s| Seg::Key(s.to_string())));
        v
    };
    let name = g.name.clone().unwrap_or_else(|| format!("g{gi}"));
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        cx.err(
            p(&["name"]),
            format!("group name `{name}` must be letters, digits, `-`, `_` or `.`"),
            "it appears in client ids and topics".to_string(),
        );
    }
    let mut clients = match g.clients {
        Some(n) if n > 0 => n,
        Some(_) => {
            cx.err(p(&["clients"]), "a group needs at least one client", None);
            1
        }
        None => {
            cx.err(
                p(&[]),
                format!("group `{name}` does not say how many clients"),
                "add `clients = 100`".to_string(),
            );
            1
        }
    };
    if let Some((_, n)) = ov.clients.iter().find(|(n, _)| *n == name) {
        clients = *n;
    }
    let protocol = match g.protocol.as_deref() {
        None | Some("3.1.1") => Protocol::V311,
        Some("5") | Some("5.0") => Protocol::V5,
        Some(other) => {
            cx.err(
                p(&["protocol"]),
                format!("unknown protocol `{other}`"),
                "write \"3.1.1\" or \"5\"".to_string(),
            );
            Protocol::V311
        }
    };
    let keepalive = cx.duration(p(&["keepalive"]), &g.keepalive, Duration::from_secs(30));
    if keepalive.as_secs() > u16::MAX as u64 {
        cx.err(p(&["keepalive"]), "keepalive is at most 65535s (18h12m15s)", None);
    }
    let session_expiry = cx.duration(p(&["session_expiry"]), &g.session_expiry, Duration::ZERO);
    if protocol == Protocol::V311 && !session_expiry.is_zero() {
        cx.err(
            p(&["session_expiry"]),
            "session expiry is an MQTT 5 property",
            "on 3.1.1 a persistent session is `clean_start = false`; or set protocol = \"5\"".to_string(),
        );
    }
    let password = match (&g.password, &g.password_env) {
        (Some(_), Some(_)) => {
            cx.err(p(&["password_env"]), "give `password` or `password_env`, not both", None);
            None
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(pw) => Some(pw),
            Err(_) => {
                cx.err(
                    p(&["password_env"]),
                    format!("environment variable `{var}` is not set"),
                    format!("export {var}=… before the run"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let connect_rate = cx.rate(p(&["connect_rate"]), g.connect_rate, 1000.0, "connect_rate");
    let disconnect_rate =
        cx.rate(p(&["disconnect_rate"]), g.disconnect_rate, connect_rate, "disconnect_rate");
    // a ramp at a vanishing rate would outlast any run (and overflow the times computed from it)
    for (key, rate, default) in
        [("connect_rate", connect_rate, 1000.0), ("disconnect_rate", disconnect_rate, connect_rate)]
    {
        let longest = MAX_DURATION.as_secs_f64();
        if clients as f64 / rate > longest {
            cx.err(
                p(&[key]),
                format!(
                    "at {rate}/s, {clients} clients take longer than squall runs anything ({})",
                    humantime::format_duration(MAX_DURATION)
                ),
                format!("raise {key} to at least {:.6} (default {default})", clients as f64 / longest),
            );
        }
    }
    let (connect_rate, disconnect_rate) = (
        connect_rate.max(clients as f64 / MAX_DURATION.as_secs_f64()),
        disconnect_rate.max(clients as f64 / MAX_DURATION.as_secs_f64()),
    );
    let max_inflight = match g.max_inflight {
        Some(0) => {
            cx.err(p(&["max_inflight"]), "max_inflight must be at least 1", None);
            1
        }
        Some(n) => n,
        None => 100,
    };
    let connect_timeout = cx.duration(p(&["connect_timeout"]), &g.connect_timeout, Duration::from_secs(10));
    let ack_timeout = cx.duration(p(&["ack_timeout"]), &g.ack_timeout, Duration::from_secs(10));
    if connect_timeout.is_zero() || ack_timeout.is_zero() {
        cx.err(p(&[]), "timeouts must be positive", None);
    }
    let r = g.reconnect.clone().unwrap_or_default();
    let reconnect = ReconnectSpec {
        enabled: r.enabled.unwrap_or(true),
        min_backoff_ms: cx
            .duration(p(&["reconnect", "min_backoff"]), &r.min_backoff, Duration::from_secs(1))
            .as_millis() as u64,
        max_backoff_ms: cx
            .duration(p(&["reconnect", "max_backoff"]), &r.max_backoff, Duration::from_secs(30))
            .as_millis() as u64,
        max_rate: cx.rate(p(&["reconnect", "max_rate"]), r.max_rate, connect_rate, "max_rate"),
        policy: cx.named(
            p(&["reconnect", "backoff"]),
            r.backoff.as_deref(),
            "backoff",
            (BackoffPolicy::NAMES, BackoffPolicy::from_name),
            BackoffPolicy::default(),
        ),
        jitter: cx.named(
            p(&["reconnect", "jitter"]),
            r.jitter.as_deref(),
            "jitter",
            (Jitter::NAMES, Jitter::from_name),
            Jitter::default(),
        ),
        multiplier: match r.multiplier {
            None => 2.0,
            Some(m) if m > 1.0 && m <= MAX_MULTIPLIER => m,
            Some(m) => {
                cx.err(
                    p(&["reconnect", "multiplier"]),
                    format!("a multiplier of {m} does not grow a backoff sanely"),
                    format!("between 1 (exclusive) and {MAX_MULTIPLIER}"),
                );
                2.0
            }
        },
        max_attempts: r.max_attempts.unwrap_or(0),
    };
    if reconnect.enabled
        && ((reconnect.min_backoff_ms == 0 && reconnect.policy != BackoffPolicy::None)
            || reconnect.max_backoff_ms < reconnect.min_backoff_ms)
    {
        cx.err(
            p(&["reconnect"]),
            "backoff needs 0 < min_backoff ≤ max_backoff",
            "min_backoff may be 0 only with backoff = \"none\"".to_string(),
        );
    }
    let will = g.will.as_ref().map(|w| {
        let topic = w.topic.clone().unwrap_or_else(|| {
            cx.err(p(&["will"]), "a will needs a topic", "add `topic = \"devices/{i}/status\"`".to_string());
            "will".into()
        });
        let delay = cx.duration(p(&["will", "delay"]), &w.delay, Duration::ZERO);
        if protocol == Protocol::V311 && !delay.is_zero() {
            cx.err(
                p(&["will", "delay"]),
                "will delay is an MQTT 5 property",
                "set protocol = \"5\"".to_string(),
            );
        }
        WillSpec {
            topic,
            payload: w.payload.clone(),
            qos: cx.qos(p(&["will", "qos"]), w.qos),
            retain: w.retain,
            delay_secs: delay.as_secs() as u32,
        }
    });
    let publish = g.publish.as_ref().map(|pb| resolve_publish(cx, &p, pb));
    let events = g.events.iter().enumerate().map(|(ei, e)| resolve_event(cx, gi, ei, e, clients)).collect();
    let subscribe = g.subscribe.as_ref().map(|s| {
        if s.filters.is_empty() {
            cx.err(
                p(&["subscribe"]),
                "a subscribe needs filters",
                "add `filters = [\"sensors/#\"]`".to_string(),
            );
        }
        SubscribeSpec { filters: s.filters.clone(), qos: cx.qos(p(&["subscribe", "qos"]), s.qos) }
    });
    if publish.is_none() && subscribe.is_none() && will.is_none() {
        // idle connections are a legitimate load (connection capacity), but say so if it looks unintended
        tracing::info!(group = %name, "Group neither publishes nor subscribes: its clients hold idle connections");
    }
    let spec = GroupSpec {
        name,
        clients,
        client_id: g.client_id.clone().unwrap_or_else(|| "squall-{run}-{group}-{i}".into()),
        protocol,
        keepalive_secs: keepalive.as_secs().min(u16::MAX as u64) as u16,
        clean_start: g.clean_start.unwrap_or(true),
        tls_resumption: g.tls_resumption.unwrap_or(true),
        session_expiry_secs: session_expiry.as_secs().min(u32::MAX as u64) as u32,
        username: g.username.clone(),
        password,
        will,
        connect_rate,
        disconnect_rate,
        max_inflight,
        connect_timeout_ms: connect_timeout.as_millis() as u64,
        ack_timeout_ms: ack_timeout.as_millis() as u64,
        reconnect,
        publish,
        subscribe,
        events,
    };
    // the engine's own checks (templates, topics, filters): point at the field they name
    if let Err(PlanError::Group { field, message, .. }) = spec.validate()
        && cx.errors.is_empty()
    {
        let parts: Vec<&str> = field.split('.').collect();
        let key = match parts.as_slice() {
            ["publish", "payload_size"] => vec!["publish", "payload_size"],
            ["publish", "rate"] => vec!["publish"],
            other => other.to_vec(),
        };
        cx.err(p(&key), message, None);
    }
    Some(spec)
}

fn resolve_event(cx: &mut Ctx<'_>, gi: usize, ei: usize, e: &format::Event, clients: u32) -> EventSpec {
    let at = |key: &str| {
        let mut v = path!["group", gi, "event", ei];
        if !key.is_empty() {
            v.push(Seg::Key(key.to_string()));
        }
        v
    };
    let at_ms = match &e.at {
        Some(_) => cx.duration(at("at"), &e.at, Duration::ZERO).as_millis() as u64,
        None => {
            cx.err(
                at(""),
                "an event needs `at`",
                "e.g. `at = \"30s\"` after the publishing window starts".to_string(),
            );
            0
        }
    };
    let every_ms = cx.duration(at("every"), &e.every, Duration::ZERO).as_millis() as u64;
    let times = e.times.unwrap_or(1);
    if times == 0 || times > MAX_EVENT_TIMES || (times > 1 && every_ms == 0) {
        cx.err(
            at("times"),
            format!("{times} times: an event happens 1 to {MAX_EVENT_TIMES} times"),
            "repeat with `every = \"60s\"` and `times = 5`".to_string(),
        );
    }
    if e.action.is_none() {
        cx.err(at(""), "an event needs an `action`", format!("one of {}", EventAction::NAMES.join(", ")));
    }
    let names = (EventAction::NAMES, EventAction::from_name as fn(&str) -> Option<EventAction>);
    let action = cx.named(at("action"), e.action.as_deref(), "action", names, EventAction::Drop);
    let count = match (e.count, e.fraction) {
        (Some(n), None) => n.min(clients),
        (None, Some(f)) if f > 0.0 && f <= 1.0 => ((clients as f64 * f).round() as u32).max(1),
        (None, Some(f)) => {
            cx.err(at("fraction"), format!("a fraction of {f}"), "0 < fraction ≤ 1".to_string());
            0
        }
        _ => {
            cx.err(at(""), "say how many clients: `count` or `fraction`, one of them", None);
            0
        }
    };
    let back = match e.back.as_deref() {
        None | Some("backoff") => Comeback::Backoff,
        Some("now") => Comeback::Now,
        Some("never") => Comeback::Never,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d <= MAX_DURATION => Comeback::AfterMs(d.as_millis() as u64),
            _ => {
                cx.err(
                    at("back"),
                    format!("`{s}` is not a way back"),
                    "\"now\", \"backoff\", \"never\" or a pause such as \"5s\"".to_string(),
                );
                Comeback::Backoff
            }
        },
    };
    EventSpec { at_ms, every_ms, times, action, count, back }
}

fn resolve_publish(cx: &mut Ctx<'_>, p: &dyn Fn(&[&str]) -> Vec<Seg>, pb: &format::Publish) -> PublishSpec {
    let topic = pb.topic.clone().unwrap_or_else(|| {
        cx.err(p(&["publish"]), "a publish needs a topic", "add `topic = \"sensors/{i}/temp\"`".to_string());
        "t".into()
    });
    let given = [pb.payload_size.is_some(), pb.payload.is_some(), pb.payload_raw.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        cx.err(p(&["publish"]), "give one of `payload_size`, `payload` and `payload_raw`", None);
    }
    let payload = match (&pb.payload_size, &pb.payload, &pb.payload_raw) {
        (_, Some(t), _) => PayloadSpec::Text(t.clone()),
        (_, _, Some(t)) => PayloadSpec::Raw(t.clone()),
        (Some(n), _, _) => PayloadSpec::Size(*n),
        _ => PayloadSpec::Size(64),
    };
    let rate = match (&pb.interval, pb.group_rate) {
        (Some(_), Some(_)) | (None, None) => {
            cx.err(
                p(&["publish"]),
                "say how often to publish: `interval` or `group_rate`, exactly one",
                "`interval = \"1s\"`: every client publishes once a second (the group's rate grows with its size); \
                 `group_rate = 1000`: 1000 messages a second in all, shared by the group's clients"
                    .to_string(),
            );
            RateSpec::IntervalMs(1000.0)
        }
        (Some(_), None) => {
            let d = cx.duration(p(&["publish", "interval"]), &pb.interval, Duration::from_secs(1));
            if d.is_zero() {
                cx.err(p(&["publish", "interval"]), "the interval must be positive", None);
            }
            RateSpec::IntervalMs(d.as_secs_f64() * 1e3)
        }
        (None, Some(r)) => {
            RateSpec::GroupPerSec(cx.rate(p(&["publish", "group_rate"]), Some(r), 1.0, "group_rate"))
        }
    };
    PublishSpec { topic, qos: cx.qos(p(&["publish", "qos"]), pb.qos), retain: pb.retain, payload, rate }
}

#[cfg(test)]
mod tests;
