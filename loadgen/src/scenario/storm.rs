//! `storm`: connect / disconnect churn. N clients each connect, authenticate,
//! stay for `hold_ms`, close and reconnect, for `secs` seconds.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::target::TargetArgs;
use super::Progress;
use crate::engine::stats::Percentiles;
use crate::engine::{Engine, Transport};

#[derive(Clone, Debug, clap::Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Concurrent clients.
    #[arg(long, default_value_t = 2_000)]
    pub conns: u64,
    /// Milliseconds each stays authenticated before closing and reconnecting.
    #[arg(long, default_value_t = 200)]
    pub hold_ms: u64,
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Clients per room.
    #[arg(long, default_value_t = 100)]
    pub room_size: u64,
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct StormReport {
    pub transport: Option<Transport>,
    pub conns: u64,
    pub hold_ms: u64,
    pub secs: f64,
    pub connects_started: u64,
    pub authed: u64,
    pub failed: u64,
    pub closed_by_client: u64,
    pub closed_by_server: u64,
    /// Authenticated sessions per second (connect + handshake + auth + close).
    pub sessions_per_sec: f64,
    pub auth_latency: Percentiles,
    pub errors: Vec<String>,
}

pub fn run(args: &StormArgs, progress: &Progress) -> Result<StormReport> {
    let mut plan = args
        .target
        .plan(args.conns, Duration::from_secs_f64(args.secs + 60.0));
    plan.churn_after = Some(Duration::from_millis(args.hold_ms));
    plan.room_size = args.room_size;
    let engine = Engine::start(plan)?;
    progress.phase("storm", (args.secs * 10.0) as u64);
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < args.secs {
        std::thread::sleep(Duration::from_millis(100));
        progress.set((t0.elapsed().as_secs_f64() * 10.0) as u64);
        if !engine.workers_alive() {
            anyhow::bail!("an engine worker exited during the storm");
        }
    }
    let at_end = engine.totals();
    let secs = t0.elapsed().as_secs_f64();
    let res = engine.finish()?;
    progress.finish();
    Ok(StormReport {
        transport: Some(args.target.transport),
        conns: args.conns,
        hold_ms: args.hold_ms,
        secs,
        connects_started: at_end.connects_started,
        authed: at_end.authed,
        failed: at_end.failed,
        closed_by_client: at_end.closed_by_client,
        closed_by_server: at_end.closed_by_server,
        sessions_per_sec: at_end.authed as f64 / secs,
        auth_latency: Percentiles::of(&res.auth_latency),
        errors: res.errors,
    })
}

impl StormReport {
    pub fn print(&self) {
        println!(
            "storm ({:?}, {} concurrent clients, {} ms sessions, {:.1} s)",
            self.transport.unwrap_or(Transport::Ws),
            self.conns,
            self.hold_ms,
            self.secs
        );
        println!(
            "  sessions               {:>12.0} /s  ({} authenticated, {} failed, {} started)",
            self.sessions_per_sec, self.authed, self.failed, self.connects_started
        );
        println!(
            "  closes                 {} by client, {} by server",
            self.closed_by_client, self.closed_by_server
        );
        let a = &self.auth_latency;
        println!(
            "  connect→auth latency   p50 {} µs  p99 {} µs",
            a.p50_us, a.p99_us
        );
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}
