//! Control core: the goim-compatible HTTP API, metrics, and the producer end
//! of every shard's fan-out ring (design §1, §5).
//!
//! One glommio executor, pinned to a CPU when asked (on small boxes it shares
//! one with shards), runs:
//! - the HTTP server (`server`), hyper 1.x over glommio sockets (`http_io`);
//! - a poll task that drains the shards' report rings, merges the node-wide
//!   room counts and sends them back to the shards (`state`);
//! - whatever ingest tasks are handed in (Kafka), which push through the same
//!   [`Dispatcher`] as the HTTP API: encode once, clone into every ring;
//! - with Kafka configured, the HTTP pushes are produced to Kafka instead
//!   (`produce`) and reach the shards through this node's consumer.
//!
//! Shards and control meet only through `crate::fanout`.

pub mod api;
pub mod http_io;
pub mod metrics;
pub mod params;
pub mod produce;
mod request_count;
mod server;
pub mod state;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::fanout::{ShardLink, Shutdown};

pub use state::{DispatchError, Dispatcher};

/// Settings of the control core.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Address of the HTTP API (goim's default port is 3111).
    pub http_listen: SocketAddr,
    /// CPU to pin the control executor to; `None` leaves it unbound.
    pub cpu: Option<usize>,
    /// Largest push message (request body) accepted; larger gets 413.
    pub max_body: usize,
    /// Largest request head (request line + headers); larger gets 431.
    pub max_header_size: usize,
    /// Most header lines per request.
    pub max_headers: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_conn: u32,
    /// Open API connections beyond which new ones are closed at once.
    pub max_http_conns: usize,
    /// An API connection silent this long is closed.
    pub idle_timeout: Duration,
    /// How long a push waits for room in a full shard ring before the
    /// request fails (503) and the miss is counted.
    pub push_timeout: Duration,
    /// How often shard reports are drained.
    pub poll_interval: Duration,
    /// Least time between two merges of the node-wide room counts (a merge
    /// walks every room of every shard; with many shards reporting at
    /// different moments this bounds the work).
    pub room_merge_interval: Duration,
    /// How long shutdown waits for the shards' final reports.
    pub shutdown_grace: Duration,
    /// Kafka to produce HTTP pushes to (native records, answered after the
    /// ack); `None` = embedded: pushes go straight to the shards.
    pub kafka_produce: Option<crate::ingest::KafkaConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([0, 0, 0, 0], 3111)),
            cpu: None,
            max_body: 4096,
            max_header_size: 8 * 1024,
            max_headers: 64,
            max_requests_per_conn: 10_000,
            max_http_conns: 1024,
            idle_timeout: Duration::from_secs(60),
            push_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(20),
            room_merge_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            kafka_produce: None,
        }
    }
}

/// Errors starting the control core.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen for the HTTP API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the control executor: {0}")]
    Executor(String),
}

/// A task started on the control executor with the push [`Dispatcher`]
/// (Kafka ingest). It runs until the executor stops.
pub type ControlTask = Box<dyn FnOnce(Dispatcher) + Send>;

/// The running control core.
pub struct ControlHandle {
    local_addr: SocketAddr,
    join: glommio::ExecutorJoinHandle<()>,
}

impl ControlHandle {
    /// Address the HTTP API actually listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the control thread to end: after `shutdown` was triggered
    /// and the shards stopped (or the grace period passed).
    pub fn join(self) -> Result<(), ControlError> {
        self.join
            .join()
            .map_err(|e| ControlError::Executor(e.to_string()))
    }
}

/// Binds the HTTP API and starts the control executor on its own thread.
///
/// The listener is bound here, on the caller's thread, so that "address in
/// use" is reported before anything runs (and without `SO_REUSEPORT`, which
/// glommio's own `bind` sets and which would let two servers share the port).
pub fn spawn(
    cfg: ControlConfig,
    links: Vec<ShardLink>,
    shutdown: Shutdown,
    tasks: Vec<ControlTask>,
) -> Result<ControlHandle, ControlError> {
    let addr = cfg.http_listen;
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| ControlError::Bind { addr, source })?;
    let local_addr = std_listener
        .local_addr()
        .map_err(|source| ControlError::Bind { addr, source })?;
    let fd = std_listener.into_raw_fd();

    let placement = match cfg.cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let join = LocalExecutorBuilder::new(placement)
        .name("corecast-control")
        .io_memory(1 << 20)
        .spawn(move || async move {
            // SAFETY: `fd` is the bound, listening socket just released by
            // `into_raw_fd`; nothing else owns or closes it.
            let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
            run(cfg, links, shutdown, tasks, listener).await;
        })
        .map_err(|e| ControlError::Executor(e.to_string()))?;
    tracing::info!(%local_addr, "control API listening");
    Ok(ControlHandle { local_addr, join })
}

async fn run(
    cfg: ControlConfig,
    links: Vec<ShardLink>,
    shutdown: Shutdown,
    tasks: Vec<ControlTask>,
    listener: glommio::net::TcpListener,
) {
    let state = state::ControlState::new(cfg, links);
    for task in tasks {
        task(Dispatcher::new(state.clone()));
    }
    let accept = glommio::spawn_local(server::accept_loop(listener, state.clone()));
    poll_until_shutdown(&state, &shutdown).await;
    drop(accept.cancel());
}

/// Drains reports and keeps room counts in sync until shutdown was requested
/// and the shards have sent their final reports (bounded by the grace period).
async fn poll_until_shutdown(state: &Rc<state::ControlState>, shutdown: &Shutdown) {
    let mut stop_deadline: Option<Instant> = None;
    let mut unmerged = false;
    let mut last_merge = Instant::now() - state.cfg.room_merge_interval;
    loop {
        unmerged |= state.drain_reports();
        if unmerged && last_merge.elapsed() >= state.cfg.room_merge_interval {
            unmerged = false;
            last_merge = Instant::now();
            if state.merge_rooms() && !state.stopping.get() {
                state.broadcast_room_counts();
            }
        }
        if shutdown.is_requested() {
            state.stopping.set(true);
            let deadline =
                *stop_deadline.get_or_insert_with(|| Instant::now() + state.cfg.shutdown_grace);
            if state.all_shards_closed() || Instant::now() >= deadline {
                state.drain_reports();
                return;
            }
        }
        glommio::timer::sleep(state.cfg.poll_interval).await;
    }
}
