//! Where the server under test is and how clients reach it (flags shared by
//! every scenario that talks to a server), plus reading its memory from /proc.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::engine::{AuthMode, ClientPlan, Transport};

#[derive(Clone, Debug, clap::Args)]
pub struct TargetArgs {
    /// Server address (clients connect from other 127.x.y.z addresses).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: Ipv4Addr,
    /// WebSocket port (`GET /sub`).
    #[arg(long, default_value_t = 3102)]
    pub ws_port: u16,
    /// TCP port (goim packets).
    #[arg(long, default_value_t = 3101)]
    pub tcp_port: u16,
    /// HTTP API port (`/goim/push/*`).
    #[arg(long, default_value_t = 3111)]
    pub http_port: u16,
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Server pid for RSS readings; found by the listening port if omitted.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// HS256 secret: mint a JWT per client instead of insecure auth.
    #[arg(long, env = "CORECAST_LOADGEN_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// Pin the loadgen's engine threads to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Heartbeat period in seconds (0: none).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
}

impl TargetArgs {
    pub fn client_port(&self) -> u16 {
        match self.transport {
            Transport::Ws => self.ws_port,
            Transport::Tcp => self.tcp_port,
        }
    }

    pub fn http_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.host, self.http_port)
    }

    /// A client plan for `conns` connections, bounded by `run_for`.
    pub fn plan(&self, conns: u64, run_for: Duration) -> ClientPlan {
        let mut plan = ClientPlan::new(
            self.transport,
            SocketAddrV4::new(self.host, self.client_port()),
            conns,
            run_for,
        );
        plan.heartbeat = Duration::from_secs(self.heartbeat_secs);
        plan.cpu = self.cpu;
        if let Some(s) = &self.jwt_secret {
            plan.auth = AuthMode::Hs256 {
                secret: s.as_bytes().to_vec(),
            };
        }
        plan
    }

    /// The server's pid: the flag, else the process listening on the client port.
    pub fn resolve_server_pid(&self) -> Option<u32> {
        self.server_pid
            .or_else(|| pid_listening_on(self.client_port()))
    }
}

/// Resident set size of `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("parsing VmRSS")?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// CPU time (user + system) of `pid` so far, in seconds.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) as f64 / hz)
}

/// Our own RSS.
pub fn self_rss_bytes() -> u64 {
    rss_bytes(std::process::id()).unwrap_or(0)
}

/// Finds the process with a TCP socket listening on `port`: the socket's inode
/// from /proc/net/tcp, then the process holding it as an fd. Falls back to a
/// process whose name is `corecast` (a listener kept only as an io_uring
/// direct descriptor has no fd to find).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let inodes = listening_inodes(port);
    if !inodes.is_empty() {
        for pid in pids() {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                    {
                        if inodes.iter().any(|i| i == inode) {
                            return Some(pid);
                        }
                    }
                }
            }
        }
    }
    pids().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "corecast")
    })
}

fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // 0A = LISTEN
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                out.push(f[9].to_string());
            }
        }
    }
    out
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
}
