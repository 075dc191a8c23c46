//! The broker's own cost, when it runs on this host (`--broker-pid PID`): CPU and memory read
//! from `/proc/PID` as the run goes, so broker configurations are compared on cost too.

use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the broker's process used over the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BrokerProcess {
    pub pid: u32,
    /// CPU time (user + system) it used during the run, s.
    pub cpu_s: f64,
    /// Its busiest stretch between two samples (≥ 0.5 s apart), in cores.
    pub cpu_peak_cores: f64,
    /// Resident memory at the start, at its highest sample, and at the end, KiB.
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_end_kib: u64,
    /// The process ended during the run (its figures stop there).
    pub gone: bool,
}

/// CPU seconds (user + system) of `pid` so far.
fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces: fields count from after its closing parenthesis
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process over a run.
pub struct Sampler {
    pid: u32,
    first_cpu: f64,
    last: (Instant, f64),
    peak_cores: f64,
    rss: (u64, u64, u64),
    gone: bool,
}

impl Sampler {
    pub fn start(pid: u32) -> Result<Sampler, String> {
        let (Some(cpu), Some(rss)) = (cpu_s(pid), rss_kib(pid)) else {
            return Err(format!("--broker-pid {pid}: no such process to read on this host (/proc/{pid})"));
        };
        Ok(Sampler {
            pid,
            first_cpu: cpu,
            last: (Instant::now(), cpu),
            peak_cores: 0.0,
            rss: (rss, rss, rss),
            gone: false,
        })
    }

    /// Reads the process again (at most every half second).
    pub fn sample(&mut self) {
        let now = Instant::now();
        let span = now.duration_since(self.last.0).as_secs_f64();
        if self.gone || span < 0.5 {
            return;
        }
        match (cpu_s(self.pid), rss_kib(self.pid)) {
            (Some(cpu), Some(rss)) => {
                self.peak_cores = self.peak_cores.max((cpu - self.last.1) / span);
                self.last = (now, cpu);
                self.rss.1 = self.rss.1.max(rss);
                self.rss.2 = rss;
            }
            _ => self.gone = true,
        }
    }

    pub fn finish(mut self) -> BrokerProcess {
        self.last.0 = Instant::now() - std::time::Duration::from_secs(1);
        self.sample();
        BrokerProcess {
            pid: self.pid,
            cpu_s: self.last.1 - self.first_cpu,
            cpu_peak_cores: self.peak_cores,
            rss_start_kib: self.rss.0,
            rss_peak_kib: self.rss.1,
            rss_end_kib: self.rss.2,
            gone: self.gone,
        }
    }
}
