//! corecast-loadgen: drives a corecast (or goim) server from outside over real
//! sockets and measures it against the kernel's own ceiling on the same box.

mod ceiling;
mod engine;
mod scenario;

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
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
            }
        }
        Command::Conns(args) => {
            let report = scenario::conns::run(&args, &scenario::Progress::new())?;
            report.print();
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
            }
        }
    }
    Ok(())
}
