//! A mosquitto broker started by a test on a free port, with a config the test writes; killed
//! by its pid when the test ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run the README's test command, which installs mosquitto");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A directory the broker can read after it drops root to its own user.
pub fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

pub fn write_readable(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

impl Mosquitto {
    /// Anonymous plain listener.
    pub fn start() -> Mosquitto {
        Self::start_with(|port| format!("listener {port} 127.0.0.1\nallow_anonymous true\n"), |_| {})
    }

    /// `config(port)` gives the listener section; `prepare(dir)` writes files it refers to.
    pub fn start_with(config: impl Fn(u16) -> String, prepare: impl Fn(&Path)) -> Mosquitto {
        let dir = readable_dir();
        prepare(dir.path());
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            let body = format!("{}\nconnection_messages false\nlog_dest stderr\n", config(port));
            write_readable(&conf, body);
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            if let Some(child) = spawn(dir.path(), &log) {
                return Mosquitto { child, port, dir, log };
            }
            eprintln!("mosquitto did not start on port {port}: {:?}", log.lock().unwrap());
        }
        panic!("mosquitto would not start");
    }

    /// Kills the broker (SIGKILL: no goodbye to anyone, nothing saved) and starts it again on
    /// the same port with the same config, as a crashed broker's supervisor would.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..20 {
            if let Some(child) = spawn(self.dir.path(), &self.log) {
                self.child = child;
                return;
            }
            // the port may still be held for a moment by the dead process's sockets
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto would not start again on port {}: {:?}", self.port, self.log());
    }

    /// Its process id (the process of the moment: a restart makes a new one).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Creates a password file `passwd` in the broker's directory.
    pub fn password_file(dir: &Path, users: &[(&str, &str)]) {
        let file = dir.join("passwd");
        for (i, (u, p)) in users.iter().enumerate() {
            let mut cmd = Command::new(binary("mosquitto_passwd"));
            if i == 0 {
                cmd.arg("-c");
            }
            let st = cmd.arg("-b").arg(&file).arg(u).arg(p).status().expect("mosquitto_passwd runs");
            assert!(st.success());
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// Starts mosquitto with `dir`'s mosquitto.conf; `None` if it did not say it is running.
fn spawn(dir: &Path, log: &std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> Option<Child> {
    let mut child = Command::new(binary("mosquitto"))
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        // the config's relative paths (password file, certificates) are in its directory
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(" running") {
                let _ = tx.send(true);
            }
            log2.lock().unwrap().push(line);
        }
        let _ = tx.send(false);
    });
    // wait on the broker's own "running" line (a bound, not a sleep)
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => Some(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
