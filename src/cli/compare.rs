//! `squall compare`: reports of several runs side by side (see `squall_controller::compare`).

use std::path::PathBuf;

use clap::Args;
use squall_controller::compare::{self, Gate, Side};
use squall_controller::report::Report;

use super::exit;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Reports (`squall run --report`), one argument per configuration: the first is the base.
    /// Several runs of one configuration: join them with commas (a1.json,a2.json).
    #[arg(required = true, num_args = 2.., value_name = "REPORT[,REPORT…]")]
    pub sides: Vec<String>,
    /// Exit 1 when a configuration is worse than the base by more than this, e.g.
    /// `e2e.p99:10%` (METRIC[.raw|.corrected].STAT:PERCENT; STAT: p50 p90 p99 p999 p9999 max).
    /// Repeatable.
    #[arg(long = "fail-if-worse", value_name = "GATE")]
    pub fail_if_worse: Vec<String>,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write one self-contained HTML file: per metric, every side's percentile curve on
    /// one plot.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

fn read(path: &str) -> Result<Report, String> {
    let p = PathBuf::from(path);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| {
        format!("{path} is not a squall report ({e}); write one with `squall run --report FILE`")
    })
}

pub fn run(a: CompareArgs) -> u8 {
    let gates: Result<Vec<Gate>, String> = a.fail_if_worse.iter().map(|g| Gate::parse(g)).collect();
    let gates = match gates {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: --fail-if-worse {e}");
            return exit::INVALID;
        }
    };
    let mut sides = Vec::new();
    for arg in &a.sides {
        let mut runs = Vec::new();
        for path in arg.split(',').filter(|p| !p.is_empty()) {
            match read(path) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::INVALID;
                }
            }
        }
        if runs.is_empty() {
            eprintln!("error: `{arg}` names no report");
            return exit::INVALID;
        }
        // a column's name: the files' names without directory or extension
        let label = arg
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                std::path::Path::new(p)
                    .file_stem()
                    .map_or(p.to_string(), |s| s.to_string_lossy().into_owned())
            })
            .collect::<Vec<_>>()
            .join(",");
        sides.push(Side { label, runs });
    }
    let c = compare::compare(&sides, &gates);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c).expect("a comparison serializes"));
    } else {
        print!("{}", compare::render(&c));
    }
    if let Some(path) = &a.html
        && let Err(e) = std::fs::write(path, compare::render_html(&c))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return exit::RUNTIME;
    }
    if c.gates.iter().any(|g| g.tripped) { exit::FAIL } else { exit::PASS }
}
