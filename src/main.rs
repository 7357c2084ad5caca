//! `corecast`: serve, check-config, host-check, version.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corecast::auth::Verifier;
use corecast::config::{AuthMode, Config, Overrides};
use corecast::fanout::{self, ChannelSizes, Shutdown};
use corecast::shard::{self, host, Settings};

#[derive(Parser)]
#[command(
    name = "corecast",
    version,
    about = "Thread-per-core io_uring edge fan-out server, goim compatible"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve(Overrides),
    /// Load and validate the configuration, print it resolved, exit.
    CheckConfig(Overrides),
    /// Report io_uring, memlock, nofile, somaxconn, port range and CPUs, and what to change.
    HostCheck(Overrides),
    /// Print the version.
    Version,
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        None => serve(cli.overrides),
        Some(Cmd::Serve(o)) => serve(o),
        Some(Cmd::CheckConfig(o)) => check_config(o),
        Some(Cmd::HostCheck(o)) => host_check(o),
        Some(Cmd::Version) => {
            println!("corecast {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    if let Err(e) = res {
        eprintln!("corecast: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORECAST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn check_config(o: Overrides) -> anyhow::Result<()> {
    let cfg = Config::load(&o)?;
    Verifier::from_config(&cfg.auth)?;
    print!(
        "{}",
        toml::to_string_pretty(&cfg).context("cannot print the config")?
    );
    eprintln!(
        "config ok: {} shards on CPUs {:?}",
        cfg.shard_count(),
        cfg.shard_cpus()
    );
    Ok(())
}

fn host_check(o: Overrides) -> anyhow::Result<()> {
    let cfg = Config::load(&o)?;
    let (text, ok) = host::report(&cfg);
    print!("{text}");
    if !ok {
        anyhow::bail!("host check failed (see the FAIL lines above; tuning/ has the files)");
    }
    Ok(())
}

/// Blocks SIGINT/SIGTERM in this thread (and so in every thread started
/// after) and returns a thread that turns them into a shutdown.
fn spawn_signal_thread(shutdown: Shutdown) -> anyhow::Result<()> {
    // SAFETY: plain signal-mask syscalls on stack data; SIGPIPE is ignored
    // so a peer closing mid-send is an error code, not process death.
    let set = unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::Builder::new()
        .name("corecast-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig = 0;
                // SAFETY: waits on the blocked set copied into this thread.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if first {
                    tracing::info!(signal = sig, "shutting down: closing connections");
                    shutdown.trigger();
                    first = false;
                } else {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}

fn serve(o: Overrides) -> anyhow::Result<()> {
    let cfg = Config::load(&o)?;
    init_logging();
    let shutdown = Shutdown::new();
    spawn_signal_thread(shutdown.clone())?;
    let verifier = Verifier::from_config(&cfg.auth)?;
    if cfg.auth.mode == AuthMode::Insecure {
        tracing::warn!("auth.mode = \"insecure\": every op-7 token is accepted (goim behaviour); set auth.mode = \"jwt\" in production");
    }
    let max_conns = host::preflight(&cfg)?;
    let n = cfg.shard_count();
    let cpus = cfg.shard_cpus();
    let (listeners, ws_addr, tcp_addr) = shard::bind_listeners(&cfg, n)?;

    // Fan-out rings: control holds the links, shards the inboxes.
    let sizes = ChannelSizes {
        to_shard: cfg.shards.ring_capacity,
        to_control: 64,
    };
    let (mut links, mut inboxes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (link, inbox) = fanout::channel(i, sizes).context("cannot create a shard eventfd")?;
        shutdown.register(link.waker().clone());
        links.push(link);
        inboxes.push(inbox);
    }

    // Control plane (HTTP API, metrics, room counts) on its own executor.
    // Pinned to the last shard CPU: on small boxes control shares a core.
    let control_cfg = corecast::control::ControlConfig {
        http_listen: cfg.listen.http,
        cpu: cpus.last().copied(),
        max_body: cfg.limits.max_body,
        max_requests_per_conn: cfg.limits.http_max_requests_per_conn,
        // With Kafka, HTTP pushes are produced there (answered after the ack).
        kafka_produce: cfg.kafka.enabled().then(|| cfg.kafka.clone()),
        ..Default::default()
    };
    // Kafka ingest runs on the control executor and pushes through its dispatcher.
    let mut control_tasks: Vec<corecast::control::ControlTask> = Vec::new();
    if cfg.kafka.enabled() {
        tracing::info!(brokers = ?cfg.kafka.brokers, topic = %cfg.kafka.topic,
            format = ?cfg.kafka.format, start = ?cfg.kafka.start, "kafka ingest enabled");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        control_tasks.push(corecast::ingest::control_task(
            cfg.kafka.clone(),
            stop,
            |_stats| {},
        ));
    }
    let control = corecast::control::spawn(control_cfg, links, shutdown.clone(), control_tasks)?;

    let settings = Arc::new(Settings::from_config(&cfg, verifier, max_conns));
    let threads = match shard::spawn_shards(settings, inboxes, listeners, &cpus) {
        Ok(t) => t,
        Err(e) => {
            shutdown.trigger();
            anyhow::bail!(e);
        }
    };
    tracing::info!(shards = n, ?cpus, %ws_addr, %tcp_addr, conns_per_shard = max_conns, "serving");
    println!(
        "corecast ready ws={ws_addr} tcp={tcp_addr} http={}",
        control.local_addr()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    for t in threads {
        if t.join.join().is_err() {
            tracing::error!(shard = t.id, "shard thread panicked");
        }
    }
    control.join()?;
    tracing::info!("stopped");
    Ok(())
}
