//! corecast-loadgen: drives a corecast (or goim) server from outside over real
//! sockets and measures it against the kernel's own ceiling on the same box.

mod bench;
mod ceiling;
mod engine;
mod http;
mod kafka;
mod scenario;
mod svg;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "corecast-loadgen",
    version,
    about = "Load generator and benchmark suite for corecast"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Bare io_uring sender and receiver on loopback: the kernel's ceiling.
    Ceiling(ceiling::CeilingArgs),
    /// Hold N idle authenticated connections; connect rate and server RSS per connection.
    Conns(scenario::conns::ConnsArgs),
    /// goim-shape room broadcast through /goim/push/room: delivered msgs/s, latency, loss.
    Broadcast(scenario::broadcast::BroadcastArgs),
    /// One client per push through /goim/push/mids.
    Unicast(scenario::broadcast::UnicastArgs),
    /// Connect / disconnect churn.
    Storm(scenario::storm::StormArgs),
    /// Broadcast with a share of clients that stop reading, against a run without them.
    Slow(scenario::broadcast::SlowArgs),
    /// Start the server pinned to one CPU set, run the standard suite from another,
    /// write report.json + report.svg and print a summary.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Ceiling(args) => {
            let report = ceiling::run(&args)?;
            report.print();
            write_json(args.json.as_deref(), &report)?;
        }
        Command::Conns(args) => {
            let report = scenario::conns::run(&args, &scenario::Progress::new())?;
            report.print();
            write_json(args.json.as_deref(), &report)?;
        }
        Command::Broadcast(args) => {
            let report = scenario::broadcast::broadcast(&args, &scenario::Progress::new())?;
            report.print();
            write_json(args.json.as_deref(), &report)?;
        }
        Command::Unicast(args) => {
            let report = scenario::broadcast::unicast(&args, &scenario::Progress::new())?;
            report.print();
            write_json(args.json.as_deref(), &report)?;
        }
        Command::Storm(args) => {
            let report = scenario::storm::run(&args, &scenario::Progress::new())?;
            report.print();
            write_json(args.json.as_deref(), &report)?;
        }
        Command::Slow(args) => {
            let report = scenario::broadcast::slow(&args, &scenario::Progress::new())?;
            report.print();
            write_json(args.room.json.as_deref(), &report)?;
        }
        Command::Bench(args) => {
            let report = bench::run(&args)?;
            report.print_summary();
            println!(
                "report: {}  plot: {}",
                args.out.join("report.json").display(),
                args.out.join("report.svg").display()
            );
        }
    }
    Ok(())
}

fn write_json(path: Option<&std::path::Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
    }
    Ok(())
}
