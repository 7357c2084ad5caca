//! `bench`: the standard suite in one command. Starts the `corecast` server
//! pinned to one CPU set and runs the loadgen on another, runs `ceiling` then
//! every scenario at sizes that fit the machine, and writes `report.json`,
//! `report.svg` and a one-screen summary.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

mod server;
mod summary;

use crate::ceiling::{self, CeilingArgs, CeilingReport};
use crate::engine::uring::pin_to_cpu;
use crate::engine::Transport;
use crate::scenario::broadcast::{self, BroadcastArgs, SlowArgs, SlowReport, UnicastArgs};
use crate::scenario::conns::{self, ConnsArgs, ConnsReport};
use crate::scenario::push::{PushReport, ViaArgs};
use crate::scenario::storm::{self, StormArgs, StormReport};
use crate::scenario::target::TargetArgs;
use crate::scenario::Progress;
use server::{find_or_build_server, Server};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
pub enum Size {
    /// Seconds-long runs with a few hundred clients (integration test).
    Small,
    /// Sizes that fit a 2-core box shared with other work.
    Standard,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Size::Standard)]
    pub size: Size,
    /// The corecast binary; default: next to this binary, else built with cargo.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// CPU list the server is pinned to.
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// CPU the loadgen is pinned to.
    #[arg(long, default_value_t = 1)]
    pub loadgen_cpu: usize,
    /// Directory for report.json, report.svg and server.log.
    #[arg(long, default_value = "bench-report")]
    pub out: PathBuf,
    /// Skip the ceiling run (ratios are then omitted).
    #[arg(long)]
    pub no_ceiling: bool,
    /// The server's room batching window in ms (`corecast serve
    /// --batch-window-ms`); 0 = one shard loop turn.
    #[arg(long, default_value_t = 0)]
    pub batch_window_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub nofile: u64,
}

/// Each figure divided by the matching ceiling figure of the same run.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Ratios {
    /// conns connects/s ÷ ceiling connect + accept/s (target ≥ 0.8).
    pub connects: Option<f64>,
    /// broadcast (WS) frames/s ÷ ceiling sends/s (unbatched: one message per frame).
    pub broadcast_ws_frames: Option<f64>,
    pub broadcast_tcp_frames: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct BenchReport {
    pub size: Option<Size>,
    pub machine: Machine,
    pub server_bin: String,
    pub server_cpus: String,
    /// Room batching window the server ran with (ms; 0 = one loop turn).
    #[serde(default)]
    pub batch_window_ms: u64,
    pub loadgen_cpu: usize,
    pub started_unix: u64,
    pub ceiling: Option<CeilingReport>,
    pub conns: Option<ConnsReport>,
    pub broadcast_ws: Option<PushReport>,
    pub broadcast_tcp: Option<PushReport>,
    pub unicast: Option<PushReport>,
    pub storm: Option<StormReport>,
    pub slow: Option<SlowReport>,
    pub ratios: Ratios,
    /// Scenarios that failed, with why.
    pub failures: Vec<String>,
}

struct Sizes {
    ceiling_connects: u32,
    ceiling_secs: f64,
    idle_conns: u64,
    bc_conns: u64,
    bc_room: u64,
    bc_rate: f64,
    push_secs: f64,
    uni_conns: u64,
    uni_rate: f64,
    storm_conns: u64,
    storm_secs: f64,
    slow_conns: u64,
    slow_room: u64,
    slow_rate: f64,
}

impl Size {
    fn sizes(self) -> Sizes {
        match self {
            Size::Small => Sizes {
                ceiling_connects: 2_000,
                ceiling_secs: 0.5,
                idle_conns: 300,
                bc_conns: 200,
                bc_room: 50,
                bc_rate: 5.0,
                push_secs: 2.0,
                uni_conns: 100,
                uni_rate: 100.0,
                storm_conns: 50,
                storm_secs: 1.5,
                slow_conns: 200,
                slow_room: 50,
                slow_rate: 5.0,
            },
            Size::Standard => Sizes {
                ceiling_connects: 40_000,
                ceiling_secs: 2.0,
                idle_conns: 20_000,
                bc_conns: 10_000,
                bc_room: 1_000,
                bc_rate: 20.0,
                push_secs: 5.0,
                uni_conns: 5_000,
                uni_rate: 2_000.0,
                storm_conns: 1_000,
                storm_secs: 3.0,
                slow_conns: 5_000,
                slow_room: 500,
                slow_rate: 10.0,
            },
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    pin_to_cpu(args.loadgen_cpu);
    let sz = args.size.sizes();
    let progress = Progress::new();
    let mut report = BenchReport {
        size: Some(args.size),
        machine: machine(),
        server_cpus: args.server_cpus.clone(),
        batch_window_ms: args.batch_window_ms,
        loadgen_cpu: args.loadgen_cpu,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..Default::default()
    };

    if !args.no_ceiling {
        progress.phase("ceiling", 1);
        let server_cpu = args
            .server_cpus
            .split([',', '-'])
            .next()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        let c = CeilingArgs {
            connects: sz.ceiling_connects,
            round: sz.ceiling_connects.min(15_000),
            inflight: 1024,
            send_conns: 64,
            msg_size: 64,
            batch: 8,
            seconds: sz.ceiling_secs,
            server_cpu,
            client_cpu: args.loadgen_cpu,
            json: None,
        };
        match ceiling::run(&c) {
            Ok(r) => report.ceiling = Some(r),
            Err(e) => report.failures.push(format!("ceiling: {e:#}")),
        }
        pin_to_cpu(args.loadgen_cpu);
    }

    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => find_or_build_server()?,
    };
    report.server_bin = bin.display().to_string();
    let max_conns = sz.idle_conns.max(sz.bc_conns);
    let mut server = Server::start(
        &bin,
        &args.server_cpus,
        max_conns,
        args.batch_window_ms,
        &args.out,
    )?;
    let (ws_port, tcp_port, http_port, pid) = (
        server.ws_port,
        server.tcp_port,
        server.http_port,
        server.pid(),
    );
    let target = |transport| TargetArgs {
        host: Ipv4Addr::LOCALHOST,
        ws_port,
        tcp_port,
        http_port,
        transport,
        server_pid: Some(pid),
        jwt_secret: None,
        cpu: Some(args.loadgen_cpu),
        heartbeat_secs: 30,
    };

    let conns_args = ConnsArgs {
        target: target(Transport::Ws),
        conns: sz.idle_conns,
        hold_secs: 1.0,
        rate: 0,
        inflight: 1024,
        room_size: 100,
        timeout_secs: 120.0,
        pipeline_auth: true,
        ack_with_request: true,
        fastopen: false,
        json: None,
    };
    step(
        &mut report.failures,
        &mut report.conns,
        "conns",
        &mut server,
        || conns::run(&conns_args, &progress),
    );
    let bc = |transport| BroadcastArgs {
        target: target(transport),
        conns: sz.bc_conns,
        room_size: sz.bc_room,
        rate: sz.bc_rate,
        msg_size: 64,
        secs: sz.push_secs,
        pushers: 2,
        op: 1000,
        via: ViaArgs::http(),
        recv_buf: 2048,
        json: None,
    };
    let bc_ws = bc(Transport::Ws);
    step(
        &mut report.failures,
        &mut report.broadcast_ws,
        "broadcast ws",
        &mut server,
        || broadcast::broadcast(&bc_ws, &progress),
    );
    let bc_tcp = bc(Transport::Tcp);
    step(
        &mut report.failures,
        &mut report.broadcast_tcp,
        "broadcast tcp",
        &mut server,
        || broadcast::broadcast(&bc_tcp, &progress),
    );
    let uni = UnicastArgs {
        target: target(Transport::Ws),
        conns: sz.uni_conns,
        rate: sz.uni_rate,
        msg_size: 64,
        secs: sz.push_secs,
        pushers: 2,
        via: ViaArgs::http(),
        json: None,
    };
    step(
        &mut report.failures,
        &mut report.unicast,
        "unicast",
        &mut server,
        || broadcast::unicast(&uni, &progress),
    );
    let st = StormArgs {
        target: target(Transport::Ws),
        conns: sz.storm_conns,
        hold_ms: 200,
        secs: sz.storm_secs,
        room_size: 100,
        json: None,
    };
    step(
        &mut report.failures,
        &mut report.storm,
        "storm",
        &mut server,
        || storm::run(&st, &progress),
    );
    let sl = SlowArgs {
        room: BroadcastArgs {
            conns: sz.slow_conns,
            room_size: sz.slow_room,
            rate: sz.slow_rate,
            ..bc(Transport::Ws)
        },
        slow_share: 0.1,
    };
    step(
        &mut report.failures,
        &mut report.slow,
        "slow",
        &mut server,
        || broadcast::slow(&sl, &progress),
    );
    progress.finish();
    server.stop();

    if let Some(c) = &report.ceiling {
        let ratio = |x: f64, base: f64| (base > 0.0).then(|| x / base);
        report.ratios = Ratios {
            connects: report
                .conns
                .as_ref()
                .and_then(|r| ratio(r.connects_per_sec, c.connects_per_sec)),
            broadcast_ws_frames: report
                .broadcast_ws
                .as_ref()
                .and_then(|r| ratio(r.frames_per_sec, c.sends_per_sec)),
            broadcast_tcp_frames: report
                .broadcast_tcp
                .as_ref()
                .and_then(|r| ratio(r.frames_per_sec, c.sends_per_sec)),
        };
    }
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    let panels: Vec<(String, Vec<crate::scenario::push::Sample>)> = [
        ("broadcast (WS)", &report.broadcast_ws),
        ("broadcast (TCP)", &report.broadcast_tcp),
        ("unicast (WS)", &report.unicast),
    ]
    .into_iter()
    .filter_map(|(n, r)| r.as_ref().map(|r| (n.to_string(), r.samples.clone())))
    .collect();
    let title = format!(
        "corecast bench ({:?}): {} CPUs, Linux {}",
        args.size, report.machine.nproc, report.machine.kernel
    );
    std::fs::write(
        args.out.join("report.svg"),
        crate::svg::render(&title, &panels),
    )?;
    Ok(report)
}

/// Run one scenario; a failure is recorded, not fatal, unless the server died.
fn step<T>(
    failures: &mut Vec<String>,
    slot: &mut Option<T>,
    name: &str,
    server: &mut Server,
    f: impl FnOnce() -> Result<T>,
) {
    if let Some(status) = server.exited() {
        failures.push(format!("{name}: skipped, the server exited ({status})"));
        return;
    }
    match f() {
        Ok(r) => *slot = Some(r),
        Err(e) => failures.push(format!("{name}: {e:#}")),
    }
    // Let the server finish closing the previous scenario's connections.
    std::thread::sleep(Duration::from_millis(500));
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the provided struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    Machine {
        // Online CPUs of the box, not of our (pinned) affinity mask.
        // SAFETY: sysconf only reads a system value.
        nproc: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        kernel,
        cpu_model,
        nofile: rl.rlim_cur,
    }
}
