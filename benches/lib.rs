//! Benchmarks only: see `benches/hot_paths.rs`, `benches/e2e.rs`, `benches/distributed.rs` and
//! BENCHMARKS.md. What the bench programs share: free ports and a process's CPU and memory.

/// A free loopback port (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process's resident memory (VmRSS), KiB; 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of a process so far; 0 if it is gone.
pub fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = s.rfind(')') else { return 0.0 };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf only reads a configuration value
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
