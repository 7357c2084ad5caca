//! `broadcast` (goim shape: N clients in rooms of R, P pushes per room per
//! second through `/goim/push/room`), `unicast` (`/goim/push/mids`, one client
//! per push) and `slow` (broadcast with a share of clients that stop reading,
//! against the same run without them).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::push::{self, PushPlan, PushReport, Targets, ViaArgs};
use super::target::TargetArgs;
use super::Progress;
use crate::engine::ClientPlan;

#[derive(Clone, Debug, clap::Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Clients per room.
    #[arg(long, default_value_t = 1_000)]
    pub room_size: u64,
    /// Pushes per room per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Body bytes per message (at least the 38-byte stamp).
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    /// Seconds of pushing.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Pusher threads (one keep-alive HTTP connection each).
    #[arg(long, default_value_t = 2)]
    pub pushers: usize,
    /// Application op of the pushes.
    #[arg(long, default_value_t = 1000)]
    pub op: u32,
    #[command(flatten)]
    pub via: ViaArgs,
    /// Receive buffer size in bytes (clients share 2 MiB of them per engine
    /// thread); 64 KiB suits large batched frames.
    #[arg(long, default_value_t = 2048)]
    pub recv_buf: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

impl BroadcastArgs {
    pub fn rooms(&self) -> u64 {
        self.conns.div_ceil(self.room_size.max(1))
    }

    fn client_plan(&self, slow_share: f64) -> ClientPlan {
        let run_for = Duration::from_secs_f64(self.secs + 300.0);
        let mut plan = self.target.plan(self.conns, run_for);
        plan.room_size = self.room_size.max(1);
        plan.accepts = vec![self.op];
        plan.slow_share = slow_share;
        plan.recv_buffer_size = self.recv_buf;
        plan
    }

    fn push_plan(&self) -> PushPlan {
        PushPlan {
            via: self.via.clone(),
            http: self.target.http_addr(),
            targets: Targets::Rooms {
                rooms: self.rooms(),
                room_type: "test".into(),
            },
            total_rate: self.rate * self.rooms() as f64,
            msg_size: self.msg_size,
            duration: Duration::from_secs_f64(self.secs),
            threads: self.pushers.max(1),
            op: self.op,
            cpu: self.target.cpu,
        }
    }
}

pub fn broadcast(args: &BroadcastArgs, progress: &Progress) -> Result<PushReport> {
    run_rooms("broadcast", args, 0.0, progress)
}

fn run_rooms(
    name: &str,
    args: &BroadcastArgs,
    slow_share: f64,
    progress: &Progress,
) -> Result<PushReport> {
    let plan = args.client_plan(slow_share);
    let (n, r) = (plan.conns, plan.room_size);
    let readers_plan = plan.clone();
    let readers_of = move |room: u64| {
        (room * r..((room + 1) * r).min(n))
            .filter(|&g| !readers_plan.is_slow(g))
            .count() as u64
    };
    push::run(name, plan, args.push_plan(), readers_of, progress)
}

#[derive(Clone, Debug, clap::Args)]
pub struct UnicastArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Clients (each its own mid).
    #[arg(long, default_value_t = 10_000)]
    pub conns: u64,
    /// Pushes per second in total, round-robin over the clients' mids.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 2)]
    pub pushers: usize,
    #[command(flatten)]
    pub via: ViaArgs,
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub fn unicast(args: &UnicastArgs, progress: &Progress) -> Result<PushReport> {
    let plan = args
        .target
        .plan(args.conns, Duration::from_secs_f64(args.secs + 300.0));
    let push = PushPlan {
        via: args.via.clone(),
        http: args.target.http_addr(),
        targets: Targets::Mids {
            first: plan.mid_base,
            count: args.conns,
        },
        total_rate: args.rate,
        msg_size: args.msg_size,
        duration: Duration::from_secs_f64(args.secs),
        threads: args.pushers.max(1),
        op: 1000,
        cpu: args.target.cpu,
    };
    push::run("unicast", plan, push, |_| 1, progress)
}

#[derive(Clone, Debug, clap::Args)]
pub struct SlowArgs {
    #[command(flatten)]
    pub room: BroadcastArgs,
    /// Share of clients that stop reading once authenticated.
    #[arg(long, default_value_t = 0.1)]
    pub slow_share: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SlowReport {
    pub slow_share: f64,
    /// The same broadcast with every client reading.
    pub baseline: PushReport,
    /// With `slow_share` of clients not reading; figures are the healthy clients'.
    pub with_slow: PushReport,
    /// with_slow p99 / baseline p99.
    pub p99_ratio: f64,
}

pub fn slow(args: &SlowArgs, progress: &Progress) -> Result<SlowReport> {
    let baseline = run_rooms("slow: baseline", &args.room, 0.0, progress)?;
    let with_slow = run_rooms(
        "slow: with slow clients",
        &args.room,
        args.slow_share,
        progress,
    )?;
    let p99_ratio = with_slow.latency.p99_us as f64 / baseline.latency.p99_us.max(1) as f64;
    Ok(SlowReport {
        slow_share: args.slow_share,
        baseline,
        with_slow,
        p99_ratio,
    })
}

impl SlowReport {
    pub fn print(&self) {
        self.baseline.print();
        self.with_slow.print();
        println!(
            "  healthy clients' p99 with {:.0}% slow clients: {:.2}× the baseline",
            self.slow_share * 100.0,
            self.p99_ratio
        );
    }
}
