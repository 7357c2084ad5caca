//! Starting and stopping the server under test: find (or build) the binary,
//! let it bind free ports (port 0) and read them from its ready line, pin it
//! to its CPU set, wait for `/health`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http::HttpClient;

/// `corecast` next to this binary (same target dir), else `cargo build --release`.
pub fn find_or_build_server() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    if let Some(dir) = exe.parent() {
        let candidate = dir.join("corecast");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("locating the workspace")?
        .to_path_buf();
    eprintln!("corecast binary not found next to the loadgen; building it (cargo build --release --bin corecast)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--bin", "corecast"])
        .current_dir(&workspace)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo build --release --bin corecast failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("release").join("corecast");
    if !bin.is_file() {
        bail!("built corecast but cannot find it at {}", bin.display());
    }
    Ok(bin)
}

/// The server under test, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Server {
    child: Child,
    pub ws_port: u16,
    pub tcp_port: u16,
    pub http_port: u16,
}

impl Server {
    pub fn start(
        bin: &Path,
        cpus: &str,
        max_conns: u64,
        batch_window_ms: u64,
        log_dir: &Path,
    ) -> Result<Self> {
        // One shard ring holds ≤ ~19k direct descriptors (nofile cap).
        let shards = max_conns.div_ceil(15_000).max(1);
        let mut log = std::fs::File::create(log_dir.join("server.log"))?;
        let cpu_list = parse_cpu_list(cpus)?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--auth-mode", "insecure"])
            .arg("--ws-listen")
            .arg("127.0.0.1:0")
            .arg("--tcp-listen")
            .arg("127.0.0.1:0")
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--cpus")
            .arg(cpus)
            .arg("--batch-window-ms")
            .arg(batch_window_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        // SAFETY: pre_exec runs in the forked child before exec; it only calls
        // sched_setaffinity, which is async-signal-safe, on stack data.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &c in &cpu_list {
                    libc::CPU_SET(c, &mut set);
                }
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // The ports the server bound are in its ready line; the rest of its
        // stdout goes to the log like stderr.
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("corecast ready ") {
                    let _ = tx.send(line.clone());
                }
                let _ = writeln!(log, "{line}");
            }
        });
        let mut server = Server {
            child,
            ws_port: 0,
            tcp_port: 0,
            http_port: 0,
        };
        let t0 = Instant::now();
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(_) => {
                    if t0.elapsed() > Duration::from_secs(30) {
                        bail!("the server printed no ready line within 30 s");
                    }
                    if let Some(status) = server.exited() {
                        let log =
                            std::fs::read_to_string(log_dir.join("server.log")).unwrap_or_default();
                        bail!("the server exited at start ({status}): {}", log.trim());
                    }
                }
            }
        };
        let port = |name: &str| -> Result<u16> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .with_context(|| format!("no {name}= in the ready line {line:?}"))?
                .parse::<SocketAddr>()
                .map(|a| a.port())
                .with_context(|| format!("{name} address in {line:?}"))
        };
        server.ws_port = port("ws")?;
        server.tcp_port = port("tcp")?;
        server.http_port = port("http")?;
        server.wait_ready(log_dir)?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, log_dir: &Path) -> Result<()> {
        let t0 = Instant::now();
        let mut http = HttpClient::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.http_port));
        loop {
            if let Some(status) = self.exited() {
                let log = std::fs::read_to_string(log_dir.join("server.log")).unwrap_or_default();
                bail!("the server exited at start ({status}): {}", log.trim());
            }
            let http_ok = http.get("/health").is_ok_and(|r| r.status == 200);
            let ws_ok = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.ws_port)).is_ok();
            if http_ok && ws_ok {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the server did not become ready (GET /health on port {}) within 30 s",
                    self.http_port
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => out.push(part.parse()?),
        }
    }
    if out.is_empty() {
        bail!("empty CPU list");
    }
    Ok(out)
}
