//! Where a run's agents come from: one engine in this process ([`InProcess`]), agent processes
//! on this host over loopback gRPC ([`LocalProcesses`], `squall run --local-agents N`), or
//! agents that dial a `squall controller` (see `controller.rs`).

use std::time::Duration;

use squall_agent::engine::{self, StartError as EngineError};
use squall_controller::coordinator::{AgentLink, Agents, StartError};
use squall_controller::link::{self, LinkSettings, Lobby, RemoteAgents};
use squall_controller::scenario::Plan;
use squall_proto::auth::Token;
use squall_proto::clock::Clock;
use squall_proto::plan::Assignment;

/// One engine on this process's runtime: `squall run` without `--local-agents`; its clients
/// on `threads` engine threads (default: one per core).
pub struct InProcess {
    pub threads: Option<u16>,
}

impl Agents for InProcess {
    fn weights(&self) -> Vec<u32> {
        vec![1]
    }

    async fn start(self, assignments: Vec<Assignment>) -> Result<Vec<AgentLink>, StartError> {
        let mut links = Vec::new();
        for a in assignments {
            // before anything is allocated for it
            squall_agent::link::check_memory(&a, squall_agent::link::available_memory())
                .map_err(StartError::Invalid)?;
            let threads = self.threads.map(usize::from);
            let h = engine::start_with_threads(a, Clock::new(), threads).await.map_err(|e| match e {
                EngineError::Resolve { .. } | EngineError::Timer(_) => StartError::Runtime(e.to_string()),
                EngineError::Plan(_) | EngineError::Tls(_) => StartError::Invalid(e.to_string()),
            })?;
            links.push(AgentLink {
                name: "local".into(),
                commands: h.commands,
                events: h.events,
                clock: None,
                link: None,
                cores: self.threads.map(u32::from).unwrap_or_else(super::host_cores),
            });
        }
        Ok(links)
    }
}

/// `--local-agents N`: N `squall agent` processes dialing a controller endpoint on loopback,
/// with a random token. The processes serve one run each and are killed if they outlive it.
pub struct LocalProcesses {
    n: u32,
    lobby: Lobby,
    children: Vec<tokio::process::Child>,
    stop_endpoint: Option<tokio::sync::oneshot::Sender<()>>,
    // holds the token file for the children's lifetime
    _dir: tempfile::TempDir,
}

impl LocalProcesses {
    pub async fn start(n: u32, threads: Option<u16>) -> Result<LocalProcesses, String> {
        let (token, secret) = Token::random();
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let token_file = dir.path().join("token");
        write_private(&token_file, secret.as_bytes())
            .map_err(|e| format!("cannot write the token file: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on loopback for local agents: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let settings = LinkSettings { token, lease: Duration::from_secs(10), tls: false };
        let lobby = link::serve(listener, settings, None, async {
            let _ = stop_rx.await;
        })
        .map_err(|e| format!("cannot serve agents: {e}"))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find squall's own binary: {e}"))?;
        // the agents share this host's cores: one engine thread per core in all, not per agent
        // (oversubscribed runtimes cost 14–28 % more CPU per message; BENCHMARKS.md)
        let cores = super::host_cores();
        let threads = threads.map_or((cores / n).max(1), u32::from).to_string();
        let mut children = Vec::new();
        for k in 0..n {
            let child = tokio::process::Command::new(&exe)
                .args(["agent", "--once", "--name", &format!("local-{k}"), "--controller"])
                .arg(format!("http://{addr}"))
                .arg("--token-file")
                .arg(&token_file)
                .args(["--threads", &threads])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start agent process {k}: {e}"))?;
            children.push(child);
        }
        Ok(LocalProcesses { n, lobby, children, stop_endpoint: Some(stop_tx), _dir: dir })
    }

    /// Waits for every local agent to attach.
    pub async fn gather(&mut self, plan: &Plan) -> Result<RemoteAgents, String> {
        let agents = self.lobby.gather(self.n as usize, Duration::from_secs(30), |_| {}).await?;
        Ok(RemoteAgents {
            agents,
            run: format!("{:08x}", plan.run_tag),
            weights: Vec::new(),
            targets: Vec::new(),
        })
    }

    /// Lets the agent processes exit (they serve one run), then kills any left.
    pub async fn stop(mut self) {
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
        if let Some(s) = self.stop_endpoint.take() {
            let _ = s.send(());
        }
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(bytes)
}
