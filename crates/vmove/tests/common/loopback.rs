//! One agent on a loopback address, set up as on a real host: `vmove cluster init`, then
//! `vmove host add` for `127.x.y.z` (unique to the test process and a tag), then `vmoved
//! --config <bundle>/agent.toml`. No namespaces: the agent serves in this namespace.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::wait_for;

/// A one-host cluster whose agent runs on a loopback address.
pub struct LoopbackAgent {
    pub dir: tempfile::TempDir,
    pub cluster: PathBuf,
    pub bundle: PathBuf,
    pub address: SocketAddr,
    pub metrics: SocketAddr,
    vmove: PathBuf,
    vmoved: PathBuf,
    child: Option<Child>,
}

impl LoopbackAgent {
    /// Makes the cluster and its host `kvm1` with the `vmove` binary given; `edit` may
    /// change the bundle's agent.toml text before the agent starts.
    pub fn new(vmove: &Path, vmoved: &Path, tag: u8, edit: impl FnOnce(String) -> String) -> LoopbackAgent {
        let pid = std::process::id();
        let ip = IpAddr::V4(Ipv4Addr::new(127, 100 + tag, ((pid >> 8) & 0xff) as u8, (1 + pid % 250) as u8));
        let dir = tempfile::Builder::new().prefix("vmove-loopback-").tempdir_in("/var/tmp").expect("tempdir");
        let cdir = dir.path().join("cluster");
        let cluster = cdir.join("cluster.toml");
        let bundle = cdir.join("hosts/kvm1");
        let address = SocketAddr::new(ip, 7450);
        let metrics = SocketAddr::new(ip, 7451);
        let a = LoopbackAgent { dir, cluster, bundle, address, metrics, vmove: vmove.into(), vmoved: vmoved.into(), child: None };
        a.ok(&["cluster", "init", "--dir", &cdir.display().to_string(), "--name", "loop"]);
        let (state, run) = (a.dir.path().join("state"), a.dir.path().join("run"));
        a.ok(&[
            "host", "add", "kvm1", "--address", &ip.to_string(), "--accel", "tcg", "--metrics-listen", "7451",
            "--config-dir", &a.bundle.display().to_string(), "--state-dir", &state.display().to_string(),
            "--run-dir", &run.display().to_string(),
        ]);
        let cfg = a.bundle.join("agent.toml");
        let text = std::fs::read_to_string(&cfg).expect("agent.toml");
        std::fs::write(&cfg, edit(text)).expect("write agent.toml");
        a
    }

    /// Runs `vmove` on this cluster.
    pub fn vmove(&self, args: &[&str]) -> Output {
        Command::new(&self.vmove).args(args).env("VMOVE_CLUSTER", &self.cluster).output().expect("run vmove")
    }

    /// Runs `vmove`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.vmove(args);
        assert!(o.status.success(), "vmove {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts the agent from the bundle and waits until `host list` finds it reachable.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("vmoved.log")).expect("log");
        let child = Command::new(&self.vmoved)
            .arg("--config")
            .arg(self.bundle.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start vmoved");
        self.child = Some(child);
        wait_for("the agent to answer", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("vmoved exited ({st}): {}", self.log());
            }
            let o = self.vmove(&["--json", "host", "list"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (v[0]["reachable"] == true).then_some(())
        });
    }

    /// Kills the agent (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmoved.log")).unwrap_or_default()
    }

    /// `GET path` on the metrics listener: (status line, headers, body).
    pub fn get(&self, path: &str) -> (String, String, String) {
        http_get(self.metrics, path)
    }
}

impl Drop for LoopbackAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET (Connection: close): (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_string() };
    (status.to_string(), headers.to_string(), body)
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `promtool check metrics` on a scrape: panics with promtool's words if it objects.
pub fn promtool_check(body: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian's prometheus package; scripts/install-deps installs it)");
    p.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("feed promtool");
    let o = p.wait_with_output().expect("promtool");
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The value of one sample (`name{labels}` exactly as exposed), if present.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}
