//! `conns`: open N idle connections (connect + handshake + auth), hold them,
//! and report the connect rate and the server's memory per connection.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::target::{cpu_secs, rss_bytes, self_rss_bytes, TargetArgs};
use super::Progress;
use crate::engine::stats::Percentiles;
use crate::engine::{Engine, Transport};

#[derive(Clone, Debug, clap::Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Seconds to hold them once all are authenticated.
    #[arg(long, default_value_t = 5.0)]
    pub hold_secs: f64,
    /// Connect attempts per second (0: as fast as the in-flight cap allows).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Connect attempts in flight per engine worker.
    #[arg(long, default_value_t = 1024)]
    pub inflight: u32,
    /// Clients per room (each joins `test://<g / room_size>`); 0: no room.
    #[arg(long, default_value_t = 100)]
    pub room_size: u64,
    /// WS clients send the upgrade request and op 7 together right after the
    /// connect (`false`: wait for the 101 first, as goim's clients do). The
    /// server handles both; pipelining saves the client and the kernel one
    /// round trip per connection.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pipeline_auth: bool,
    /// The handshake's final ACK rides on the client's first request segment
    /// (TCP_DEFER_ACCEPT on the client socket) instead of a packet of its own.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ack_with_request: bool,
    /// TCP Fast Open: the first request rides in the SYN (TCP_FASTOPEN_CONNECT
    /// on the client socket; the first connection per source address fetches
    /// the server's cookie). Needs `net.ipv4.tcp_fastopen` bit 1 here and
    /// bit 2 plus a Fast Open queue on the server's listener.
    #[arg(long)]
    pub fastopen: bool,
    /// Give up if not all are authenticated after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout_secs: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ConnsReport {
    pub transport: Option<Transport>,
    /// WS upgrade and op 7 sent together (see `--pipeline-auth`).
    #[serde(default)]
    pub pipeline_auth: bool,
    /// The handshake's last ACK rides on the first request (see `--ack-with-request`).
    #[serde(default)]
    pub ack_with_request: bool,
    /// The first request rides in the SYN (see `--fastopen`).
    #[serde(default)]
    pub fastopen: bool,
    pub requested: u64,
    pub authed: u64,
    pub failed: u64,
    /// Engine start → last auth reply.
    pub connect_seconds: f64,
    /// Authenticated connections per second over `connect_seconds`.
    pub connects_per_sec: f64,
    /// Connect start → auth reply, per connection.
    pub auth_latency: Percentiles,
    pub server_pid: Option<u32>,
    pub server_rss_before: u64,
    pub server_rss_after: u64,
    /// (RSS after − RSS before) / authenticated connections.
    pub server_bytes_per_conn: f64,
    pub loadgen_bytes_per_conn: f64,
    /// Server CPU time spent while connecting, per authenticated connection (µs).
    pub server_cpu_us_per_conn: f64,
    /// Loadgen CPU time spent while connecting, per authenticated connection (µs).
    pub loadgen_cpu_us_per_conn: f64,
    pub held_secs: f64,
    /// The timeout ended the connect phase before every client authenticated.
    #[serde(default)]
    pub timed_out: bool,
    /// Authenticated connections the server closed while they were held.
    pub closed_by_server: u64,
    pub heartbeat_replies: u64,
    pub errors: Vec<String>,
}

pub fn run(args: &ConnsArgs, progress: &Progress) -> Result<ConnsReport> {
    let t = &args.target;
    let pid = t.resolve_server_pid();
    if pid.is_none() {
        tracing::warn!("server pid not found (pass --server-pid); server RSS will not be reported");
    }
    let server_rss_before = pid.and_then(|p| rss_bytes(p).ok()).unwrap_or(0);
    let loadgen_rss_before = self_rss_bytes();
    let me = std::process::id();
    let server_cpu_before = pid.and_then(|p| cpu_secs(p).ok()).unwrap_or(0.0);
    let loadgen_cpu_before = cpu_secs(me).unwrap_or(0.0);
    let run_for = Duration::from_secs_f64(args.timeout_secs + args.hold_secs + 30.0);
    let mut plan = t.plan(args.conns, run_for);
    plan.connect_rate = args.rate;
    plan.max_inflight_connects = args.inflight;
    plan.room_size = args.room_size;
    plan.pipeline_auth = args.pipeline_auth;
    plan.ack_with_request = args.ack_with_request;
    if args.fastopen {
        check_fastopen_client_sysctl()?;
    }
    plan.fastopen = args.fastopen;
    let engine = Engine::start(plan)?;
    progress.phase("conns: connecting", args.conns);
    let t0 = engine.started();
    // Bounded: at the timeout the figures are those of the connections
    // reached so far (`timed_out`), with a progress line every 10 s so a run
    // cut short still leaves its count behind.
    let timeout = Duration::from_secs_f64(args.timeout_secs);
    let mut next_line = t0 + Duration::from_secs(10);
    let (totals, timed_out) = loop {
        let x = engine.totals();
        progress.set(x.authed);
        if x.authed + x.failed >= args.conns {
            break (x, false);
        }
        if t0.elapsed() >= timeout {
            break (x, true);
        }
        if !engine.workers_alive() {
            bail!("an engine worker exited early; totals: {x:?}");
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(10);
            let rss = pid.and_then(|p| rss_bytes(p).ok()).unwrap_or(0);
            eprintln!(
                "conns: {:.0} s: {} authenticated, {} failed, server RSS {} MiB",
                t0.elapsed().as_secs_f64(),
                x.authed,
                x.failed,
                rss >> 20
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if timed_out {
        tracing::warn!(
            authed = totals.authed,
            "timed out before every connection authenticated; reporting what was reached"
        );
    }
    let connect_seconds = t0.elapsed().as_secs_f64();
    let server_rss_after = pid.and_then(|p| rss_bytes(p).ok()).unwrap_or(0);
    let loadgen_rss_after = self_rss_bytes();
    let server_cpu = pid.and_then(|p| cpu_secs(p).ok()).unwrap_or(0.0) - server_cpu_before;
    let loadgen_cpu = cpu_secs(me).unwrap_or(0.0) - loadgen_cpu_before;

    progress.phase("conns: holding", (args.hold_secs * 10.0) as u64);
    let hold0 = Instant::now();
    let closed_before = totals.closed_by_server;
    while hold0.elapsed().as_secs_f64() < args.hold_secs {
        std::thread::sleep(Duration::from_millis(100));
        progress.set((hold0.elapsed().as_secs_f64() * 10.0) as u64);
        if !engine.workers_alive() {
            bail!("an engine worker exited while holding connections");
        }
    }
    let held_secs = hold0.elapsed().as_secs_f64();
    let res = engine.finish()?;
    progress.finish();
    let authed = totals.authed;
    let per = |before: u64, after: u64| {
        if authed == 0 {
            0.0
        } else {
            (after as f64 - before as f64) / authed as f64
        }
    };
    Ok(ConnsReport {
        transport: Some(t.transport),
        pipeline_auth: args.pipeline_auth,
        ack_with_request: args.ack_with_request,
        fastopen: args.fastopen,
        requested: args.conns,
        authed,
        failed: totals.failed,
        connect_seconds,
        connects_per_sec: authed as f64 / connect_seconds.max(1e-9),
        auth_latency: Percentiles::of(&res.auth_latency),
        server_pid: pid,
        server_rss_before,
        server_rss_after,
        server_bytes_per_conn: if pid.is_some() {
            per(server_rss_before, server_rss_after)
        } else {
            0.0
        },
        loadgen_bytes_per_conn: per(loadgen_rss_before, loadgen_rss_after),
        server_cpu_us_per_conn: if pid.is_some() {
            server_cpu * 1e6 / authed.max(1) as f64
        } else {
            0.0
        },
        loadgen_cpu_us_per_conn: loadgen_cpu * 1e6 / authed.max(1) as f64,
        held_secs,
        timed_out,
        closed_by_server: res.totals.closed_by_server
            - closed_before.min(res.totals.closed_by_server),
        heartbeat_replies: res.totals.heartbeat_replies,
        errors: res.errors,
    })
}

/// `--fastopen` without bit 1 (client) of `net.ipv4.tcp_fastopen` would
/// silently run ordinary connects: refuse instead.
fn check_fastopen_client_sysctl() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_fastopen";
    let text =
        std::fs::read_to_string(PATH).with_context(|| format!("--fastopen: reading {PATH}"))?;
    let bits: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("--fastopen: {PATH} holds {text:?}"))?;
    if bits & 1 == 0 {
        bail!(
            "--fastopen: net.ipv4.tcp_fastopen is {bits}, without the client bit (1); \
             run `sysctl -w net.ipv4.tcp_fastopen=3` (3 = client + server, see tuning/sysctl-corecast.conf)"
        );
    }
    Ok(())
}

impl ConnsReport {
    pub fn print(&self) {
        let transport = self.transport.unwrap_or(Transport::Ws);
        let pipelined = if transport == Transport::Ws && self.pipeline_auth {
            ", upgrade + auth pipelined"
        } else {
            ""
        };
        let ack = if self.ack_with_request {
            ", ACK with the first request"
        } else {
            ""
        };
        let tfo = if self.fastopen { ", TCP Fast Open" } else { "" };
        println!("conns ({transport:?}{pipelined}{ack}{tfo})");
        println!(
            "  authenticated          {:>12} of {} ({} failed){}",
            self.authed,
            self.requested,
            self.failed,
            if self.timed_out {
                " — timed out, figures are for those reached"
            } else {
                ""
            }
        );
        println!(
            "  connect+handshake+auth {:>12.0} conns/s   over {:.2} s",
            self.connects_per_sec, self.connect_seconds
        );
        let a = &self.auth_latency;
        println!(
            "  connect→auth latency   p50 {} µs  p99 {} µs  max {} µs",
            a.p50_us, a.p99_us, a.max_us
        );
        match self.server_pid {
            Some(pid) => println!(
                "  server RSS (pid {pid})    {:.1} MiB → {:.1} MiB = {:.0} B/conn",
                self.server_rss_before as f64 / 1048576.0,
                self.server_rss_after as f64 / 1048576.0,
                self.server_bytes_per_conn
            ),
            None => println!("  server RSS             unknown (no pid)"),
        }
        println!(
            "  loadgen RSS            {:.0} B/conn",
            self.loadgen_bytes_per_conn
        );
        println!(
            "  held {:.1} s: {} closed by server, {} heartbeat replies",
            self.held_secs, self.closed_by_server, self.heartbeat_replies
        );
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}
