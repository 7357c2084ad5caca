//! `bench`: the standard suite in one command. Starts the `corecast` server
//! pinned to one CPU set and runs the loadgen on another, runs `ceiling` then
//! every scenario at sizes that fit the machine, and writes `report.json`,
//! `report.svg` and a one-screen summary.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::ceiling::{self, CeilingArgs, CeilingReport};
use crate::engine::uring::pin_to_cpu;
use crate::engine::Transport;
use crate::http::HttpClient;
use crate::scenario::broadcast::{self, BroadcastArgs, SlowArgs, SlowReport, UnicastArgs};
use crate::scenario::conns::{self, ConnsArgs, ConnsReport};
use crate::scenario::push::PushReport;
use crate::scenario::storm::{self, StormArgs, StormReport};
use crate::scenario::target::TargetArgs;
use crate::scenario::Progress;

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
    let mut server = Server::start(&bin, &args.server_cpus, max_conns, &args.out)?;
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

fn free_port() -> Result<u16> {
    Ok(
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    )
}

impl Server {
    pub fn start(bin: &Path, cpus: &str, max_conns: u64, log_dir: &Path) -> Result<Self> {
        let (ws_port, tcp_port, http_port) = (free_port()?, free_port()?, free_port()?);
        // One shard ring holds ≤ ~19k direct descriptors (nofile cap).
        let shards = max_conns.div_ceil(15_000).max(1);
        let log = std::fs::File::create(log_dir.join("server.log"))?;
        let cpu_list = parse_cpu_list(cpus)?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--auth-mode", "insecure"])
            .arg("--ws-listen")
            .arg(format!("127.0.0.1:{ws_port}"))
            .arg("--tcp-listen")
            .arg(format!("127.0.0.1:{tcp_port}"))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--shards")
            .arg(shards.to_string())
            .arg("--cpus")
            .arg(cpus)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
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
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Server {
            child,
            ws_port,
            tcp_port,
            http_port,
        };
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

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

impl BenchReport {
    /// One screen: each figure, and its ratio to the ceiling where one applies.
    pub fn print_summary(&self) {
        let m = &self.machine;
        println!(
            "corecast bench ({:?}) — {} CPUs, Linux {}, server on CPU {}, loadgen on CPU {}",
            self.size.unwrap_or(Size::Standard),
            m.nproc,
            m.kernel,
            self.server_cpus,
            self.loadgen_cpu
        );
        println!(
            "{:<34} {:>14} {:>12}  note",
            "figure", "value", "vs ceiling"
        );
        println!("{}", "-".repeat(78));
        let row = |name: &str, v: String, r: String, note: String| {
            println!("{name:<34} {v:>14} {r:>12}  {note}");
        };
        if let Some(c) = &self.ceiling {
            row(
                "ceiling connect+accept/s",
                fmt_rate(c.connects_per_sec),
                "100%".into(),
                String::new(),
            );
            row(
                "ceiling sends/s (64 B)",
                fmt_rate(c.sends_per_sec),
                "100%".into(),
                String::new(),
            );
            row(
                "ceiling frames/s (8 per SendMsg)",
                fmt_rate(c.batched_frames_per_sec),
                String::new(),
                String::new(),
            );
        }
        if let Some(c) = &self.conns {
            row(
                "conns: connect+WS+auth/s",
                fmt_rate(c.connects_per_sec),
                ratio(self.ratios.connects),
                format!("{} conns", c.authed),
            );
            row(
                "conns: server RSS per conn",
                format!("{:.0} B", c.server_bytes_per_conn),
                String::new(),
                format!("loadgen {:.0} B/conn", c.loadgen_bytes_per_conn),
            );
        }
        for (name, r, rat) in [
            (
                "broadcast ws",
                &self.broadcast_ws,
                self.ratios.broadcast_ws_frames,
            ),
            (
                "broadcast tcp",
                &self.broadcast_tcp,
                self.ratios.broadcast_tcp_frames,
            ),
            ("unicast ws", &self.unicast, None),
        ] {
            if let Some(r) = r {
                row(
                    &format!("{name}: msgs/s"),
                    fmt_rate(r.msgs_per_sec),
                    ratio(rat),
                    format!("{} of {} delivered", r.received, r.expected),
                );
                row(
                    &format!("{name}: latency p50/p99"),
                    format!("{}/{} µs", r.latency.p50_us, r.latency.p99_us),
                    String::new(),
                    format!("{} lost by seq", r.gap_lost),
                );
            }
        }
        if let Some(s) = &self.storm {
            row(
                "storm: sessions/s",
                fmt_rate(s.sessions_per_sec),
                String::new(),
                format!("{} failed", s.failed),
            );
        }
        if let Some(s) = &self.slow {
            row(
                "slow: healthy p99 vs baseline",
                format!("{:.2}×", s.p99_ratio),
                String::new(),
                format!("{:.0}% slow clients", s.slow_share * 100.0),
            );
        }
        for f in &self.failures {
            println!("FAILED {f}");
        }
    }
}
