//! Starts the real `corecast` binary for black-box tests and talks to it
//! over real sockets.
//!
//! - [`Server`]: `corecast serve` on port 0 for WS, TCP and HTTP (the
//!   server picks free ports and prints them in its ready line, so there is
//!   no bind race), stderr in a log file, killed on drop.
//! - [`TcpClient`] / [`WsClient`]: blocking goim clients (in
//!   [`crate::client`], re-exported here).
//! - [`http`]: one control API request, status and body (the whole reply:
//!   [`crate::http`]); [`Server::request`], [`Server::wait_json`] and
//!   [`Server::metric`] for the control API and metrics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::http::HttpReply;

/// goim ops used by tests (the protocol crate's constants).
pub use corecast_protocol::packet::op;

// The goim clients live in `crate::client`; re-exported here, where the
// tests have always found them.
pub use crate::client::{auth_body, flatten, TcpClient, WsClient, WsEvent};

/// Default read timeout of the clients.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `corecast serve`.
pub struct Server {
    child: Child,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

/// Options for [`Server::start`].
pub struct ServerBuilder {
    bin: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds command-line arguments (after `serve`).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }

    /// `--shards n`.
    pub fn shards(self, n: usize) -> Self {
        self.args(["--shards".to_string(), n.to_string()])
    }

    /// `--auth-mode insecure`: op 7 is taken at its word (mid, key, room).
    pub fn insecure_auth(self) -> Self {
        self.args(["--auth-mode", "insecure"])
    }

    /// Sets an environment variable for the server.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Starts the server and waits for its ready line (30 s at most).
    pub fn start(self) -> Result<Server> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("corecast-test-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).context("create server log")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .args([
                "--ws-listen",
                "127.0.0.1:0",
                "--tcp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--report-interval-ms", "100"])
            .args(&self.args)
            .env("CORECAST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.starts_with("corecast ready ") {
                    let _ = tx.send(line);
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("corecast did not become ready (exit {status:?}); log:\n{log_text}");
            }
        };
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| anyhow!("no {name} in ready line {line:?}"))?
                .parse()
                .context("parse address")
        };
        Ok(Server {
            ws: field("ws")?,
            tcp: field("tcp")?,
            http: field("http")?,
            child,
            log,
        })
    }
}

impl Server {
    /// A builder for the binary at `bin` (pass `env!("CARGO_BIN_EXE_corecast")`).
    pub fn builder(bin: impl AsRef<Path>) -> ServerBuilder {
        ServerBuilder {
            bin: bin.as_ref().into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// `corecast serve` with `shards` shards and insecure auth; panics (with
    /// the reason) when it does not become ready.
    pub fn start_insecure(bin: impl AsRef<Path>, shards: usize) -> Server {
        Server::builder(bin)
            .shards(shards)
            .insecure_auth()
            .start()
            .unwrap_or_else(|e| panic!("start corecast: {e:#}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /metrics`, parsed into `(name{labels}, value)` lines.
    pub fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let (status, body) = http(self.http, "GET", "/metrics", b"")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Sum of a metric over every line whose name and labels contain all of
    /// `parts` (e.g. `["corecast_index_entries", "index=\"keys\""]`).
    pub fn metric_sum(&self, parts: &[&str]) -> Result<f64> {
        Ok(self
            .metrics()?
            .iter()
            .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
            .map(|(_, v)| v)
            .sum())
    }

    /// Polls `metric_sum(parts)` until `pred` holds (up to `timeout`);
    /// returns the last value either way.
    pub fn wait_metric(
        &self,
        parts: &[&str],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric_sum(parts)?;
            if pred(v) || Instant::now() >= deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One request to the HTTP API on a fresh connection; panics when the
    /// server does not answer with a well-formed reply.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpReply {
        crate::http::request(self.http, method, path, body, "")
            .unwrap_or_else(|e| panic!("{e:#}; server log:\n{}", self.log_text()))
    }

    /// Polls `GET path` until `pred` holds on the `data` of its goim reply
    /// (shard reports are periodic, so counts converge rather than change
    /// at once); panics naming `what` after 10 s.
    pub fn wait_json(
        &self,
        path: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.request("GET", path, b"");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            let v = r.json();
            assert_eq!(v["code"], 0, "{path}: {v}");
            if pred(&v["data"]) {
                return v["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {path} still answers {v}"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Sum of the samples of metric `family` (exact name) carrying every
    /// label in `labels`, from a fresh `GET /metrics`.
    pub fn metric(&self, family: &str, labels: &[&str]) -> f64 {
        let r = self.request("GET", "/metrics", b"");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        crate::http::metric_family_sum(&r.text(), family, labels)
    }

    /// `POST /goim/push/room?operation=&type=&room=` with `body`.
    pub fn push_room(&self, room_type: &str, room: &str, op: u32, body: &[u8]) -> Result<()> {
        self.push(
            &format!("/goim/push/room?operation={op}&type={room_type}&room={room}"),
            body,
        )
    }

    /// `POST /goim/push/keys?operation=&keys=`.
    pub fn push_keys(&self, keys: &[&str], op: u32, body: &[u8]) -> Result<()> {
        self.push(
            &format!("/goim/push/keys?operation={op}&keys={}", keys.join(",")),
            body,
        )
    }

    /// `POST /goim/push/mids?operation=&mids=`.
    pub fn push_mids(&self, mids: &[i64], op: u32, body: &[u8]) -> Result<()> {
        let m: Vec<String> = mids.iter().map(|m| m.to_string()).collect();
        self.push(
            &format!("/goim/push/mids?operation={op}&mids={}", m.join(",")),
            body,
        )
    }

    /// `POST /goim/push/all?operation=`.
    pub fn push_all(&self, op: u32, body: &[u8]) -> Result<()> {
        self.push(&format!("/goim/push/all?operation={op}"), body)
    }

    fn push(&self, path: &str, body: &[u8]) -> Result<()> {
        let (status, text) = http(self.http, "POST", path, body)?;
        if status != 200 {
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A passing test leaves nothing behind; a failing one keeps the
        // server's log and says where it is.
        if std::thread::panicking() {
            eprintln!("corecast server log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body
/// (see [`crate::http`] for the whole reply).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let r = crate::http::request(addr, method, path, body, "")?;
    Ok((r.status, r.text()))
}
