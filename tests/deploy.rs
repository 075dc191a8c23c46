//! `deploy/` stays runnable: Kubernetes manifests validate against the Kubernetes schema
//! (offline, `kubernetes-validate`), the compose file passes `docker-compose config`, and every
//! squall flag a deploy file uses exists in the binary.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("deploy")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out.sort();
    out
}

fn help(sub: &str) -> String {
    let out = support::squall().args([sub, "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_flag_in_deploy_files_exists() {
    let helps = format!("{}{}", help("agent"), help("controller"));
    let mut checked = 0;
    // the Dockerfile runs cargo and useradd, not squall; mosquitto.conf is mosquitto's
    for f in deploy_files().iter().filter(|f| !f.ends_with("mosquitto.conf") && !f.ends_with("Dockerfile")) {
        let text = std::fs::read_to_string(f).unwrap();
        for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[' || c == ']') {
            let flag = word.trim_start_matches("- ");
            // docker's, compose's, kubectl's and systemctl's own flags, in comments
            const NOT_SQUALLS: [&str; 4] = ["--ulimit", "--from-file", "--abort-on-container-exit", "--now"];
            if let Some(name) = flag.strip_prefix("--")
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !NOT_SQUALLS.contains(&flag)
            {
                assert!(
                    helps.contains(&format!("{flag} ")) || helps.contains(&format!("{flag}\n")),
                    "{}: `{flag}` is not a squall flag",
                    f.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} flags found: is the parser still finding them?");
}

fn tool(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let validate = tool("kubernetes-validate").expect("kubernetes-validate is installed by scripts/test.sh");
    for f in deploy_files()
        .iter()
        .filter(|f| f.starts_with("deploy/k8s") && f.extension().is_some_and(|e| e == "yaml"))
    {
        let out = Command::new(&validate)
            .args(["--strict", "--kubernetes-version", "1.30.0"])
            .arg(f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_compose_file_passes_compose_config() {
    let compose = tool("docker-compose").expect("docker-compose is installed by scripts/test.sh");
    // compose reads the token file it names: give it one, in a copy of deploy/
    let dir = tempfile::tempdir().unwrap();
    for f in ["compose.yaml", "mosquitto.conf"] {
        std::fs::copy(Path::new("deploy").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("token"), "a-test-token-of-enough-length").unwrap();
    let out = Command::new(compose)
        .args(["-f"])
        .arg(dir.path().join("compose.yaml"))
        .args(["config", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
