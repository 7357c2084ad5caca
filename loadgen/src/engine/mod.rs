//! The io_uring client engine: many client connections per thread, each a
//! direct descriptor in the ring's registered file table (no process fd), with
//! a shared provided-buffer ring for receives, so an idle connection costs a
//! few dozen bytes of user space and no kernel buffer beyond its socket.
//!
//! A scenario builds a [`ClientPlan`], starts an [`Engine`] (one thread and
//! ring per ≤ `MAX_CONNS_PER_WORKER` connections), watches its counters, then
//! closes it. Workers stop on their own at the plan's deadline.

pub mod addr;
pub mod conn;
pub mod stamp;
pub mod stats;
mod token;
pub mod uring;
mod worker;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;

use stats::{new_histogram, SharedHistograms, SharedTotals, Totals};

/// The kernel caps a ring's file table at RLIMIT_NOFILE (20,000 here); keep
/// headroom for the few ordinary fds a process has.
pub const MAX_CONNS_PER_WORKER: u32 = 19_000;

/// Connections bound to one source address. bind(addr, 0) draws ports from
/// one parity half of ip_local_port_range first (~14,000 ports by default) and
/// slows down sharply once that half is used up, so stay below it.
pub const PER_SOURCE_ADDR: u32 = 10_000;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Transport {
    /// WebSocket `GET /sub`, one goim packet per binary frame.
    Ws,
    /// Raw goim packets over TCP.
    Tcp,
}

/// How clients prove who they are in op 7.
#[derive(Clone, Debug)]
pub enum AuthMode {
    /// No token (the server runs `auth.mode = "insecure"`, as goim clients expect).
    Insecure,
    /// An HS256 JWT minted per client with this secret (`sub` = mid).
    Hs256 { secret: Vec<u8> },
}

/// Everything the workers need to know; shared read-only.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub transport: Transport,
    pub server: SocketAddrV4,
    /// WebSocket path (`/sub`).
    pub ws_path: String,
    /// Total connections across workers.
    pub conns: u64,
    /// Worker threads (rings); at least `conns / MAX_CONNS_PER_WORKER` rounded up.
    pub workers: usize,
    /// Members per room; connection `g` joins room `g / room_size`. 0: no room.
    pub room_size: u64,
    /// Room type: clients join `<room_type>://<n>`.
    pub room_type: String,
    /// Client `g` authenticates as mid `mid_base + g`.
    pub mid_base: i64,
    pub accepts: Vec<u32>,
    pub auth: AuthMode,
    /// Heartbeat (op 2) period; zero sends none.
    pub heartbeat: Duration,
    /// Connect attempts in flight per worker.
    pub max_inflight_connects: u32,
    /// Connect attempts per second over all workers; 0 = as fast as possible.
    pub connect_rate: u64,
    /// Share of clients (0.0–1.0) that stop reading once authenticated.
    pub slow_share: f64,
    /// Storm: an authenticated client closes after this long and reconnects.
    pub churn_after: Option<Duration>,
    /// Connections on one source address before moving to the next.
    pub per_source_addr: u32,
    /// WS: send the upgrade request and the op-7 frame in one send right
    /// after the connect instead of waiting for the 101 (goim's clients wait).
    /// TCP clients always send op 7 right after the connect.
    pub pipeline_auth: bool,
    /// Let the handshake's final ACK ride on the first request segment
    /// (`uring::defer_ack_opt`) instead of a packet of its own.
    pub ack_with_request: bool,
    /// TCP Fast Open: the first request rides in the SYN once the server's
    /// cookie is cached (`uring::fastopen_connect_opt`).
    pub fastopen: bool,
    /// Pin every worker thread to this CPU.
    pub cpu: Option<usize>,
    /// Size of each provided receive buffer. Small buffers suit many idle
    /// clients; large room batches (tens of KiB per frame) want large ones so
    /// a frame arrives in one completion instead of spilling.
    pub recv_buffer_size: usize,
    /// Workers close everything and exit at this time whatever happens.
    pub deadline: Instant,
}

impl ClientPlan {
    pub fn new(transport: Transport, server: SocketAddrV4, conns: u64, run_for: Duration) -> Self {
        let workers = conns.div_ceil(MAX_CONNS_PER_WORKER as u64).max(1) as usize;
        Self {
            transport,
            server,
            ws_path: "/sub".into(),
            conns,
            workers,
            room_size: 0,
            room_type: "test".into(),
            mid_base: 1,
            accepts: vec![1000],
            auth: AuthMode::Insecure,
            heartbeat: Duration::from_secs(30),
            max_inflight_connects: 1024,
            connect_rate: 0,
            slow_share: 0.0,
            churn_after: None,
            per_source_addr: PER_SOURCE_ADDR,
            pipeline_auth: false,
            ack_with_request: false,
            fastopen: false,
            cpu: None,
            recv_buffer_size: 2048,
            deadline: Instant::now() + run_for,
        }
    }

    /// Room number of global connection `g`, if rooms are in use.
    pub fn room_of(&self, g: u64) -> Option<u64> {
        (self.room_size > 0).then(|| g / self.room_size)
    }

    /// Whether global connection `g` is one of the slow (non-reading) clients.
    /// Hashed, so slow clients spread evenly over rooms rather than filling the first ones.
    pub fn is_slow(&self, g: u64) -> bool {
        let h = g.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        self.slow_share > 0.0 && ((h % 10_000) as f64) < self.slow_share * 10_000.0
    }
}

pub(crate) const PHASE_RUN: u8 = 0;
pub(crate) const PHASE_CLOSE: u8 = 1;

/// Signals from the scenario thread to the workers.
pub(crate) struct Control {
    pub phase: AtomicU8,
}

struct WorkerHandle {
    totals: Arc<SharedTotals>,
    hists: Arc<SharedHistograms>,
    thread: Option<JoinHandle<Result<String>>>,
}

/// A running set of client workers.
pub struct Engine {
    plan: Arc<ClientPlan>,
    control: Arc<Control>,
    workers: Vec<WorkerHandle>,
    started: Instant,
}

/// What the engine saw, summed over workers.
pub struct EngineResult {
    pub totals: Totals,
    pub latency: Histogram<u64>,
    pub auth_latency: Histogram<u64>,
    /// First error text per worker that had one (connect, auth, protocol).
    pub errors: Vec<String>,
}

impl Engine {
    pub fn start(plan: ClientPlan) -> Result<Self> {
        let needed = plan.conns.div_ceil(MAX_CONNS_PER_WORKER as u64) as usize;
        let mut plan = plan;
        plan.workers = plan.workers.max(needed).max(1);
        let plan = Arc::new(plan);
        let control = Arc::new(Control {
            phase: AtomicU8::new(PHASE_RUN),
        });
        let per = plan.conns / plan.workers as u64;
        let extra = plan.conns % plan.workers as u64;
        let mut first = 0u64;
        let mut workers = Vec::with_capacity(plan.workers);
        for w in 0..plan.workers {
            let n = per + u64::from((w as u64) < extra);
            let totals = Arc::new(SharedTotals::default());
            let hists = Arc::new(SharedHistograms::default());
            let spec = worker::WorkerSpec {
                index: w,
                first_conn: first,
                conns: n as u32,
                plan: plan.clone(),
                control: control.clone(),
                totals: totals.clone(),
                hists: hists.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("loadgen-{w}"))
                .spawn(move || worker::run(spec))?;
            workers.push(WorkerHandle {
                totals,
                hists,
                thread: Some(thread),
            });
            first += n;
        }
        Ok(Self {
            plan,
            control,
            workers,
            started: Instant::now(),
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Current totals over all workers.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in &self.workers {
            t.add(&w.totals.load());
        }
        t
    }

    /// Latencies recorded since the previous call.
    pub fn drain_interval_latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for w in &self.workers {
            w.hists.drain_interval(&mut h);
        }
        h
    }

    /// Forget latencies recorded so far (e.g. warm-up).
    pub fn reset_latency(&self) {
        for w in &self.workers {
            w.hists.reset_totals();
        }
    }

    /// True while every worker thread is alive.
    pub fn workers_alive(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.thread.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Poll until `done(totals)` holds; fails at `timeout`, when the plan's
    /// deadline passes or when a worker exits. `tick` is called each poll.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Totals) -> bool,
        mut tick: impl FnMut(&Totals),
    ) -> Result<Totals> {
        let t0 = Instant::now();
        loop {
            let t = self.totals();
            tick(&t);
            if done(&t) {
                return Ok(t);
            }
            if t0.elapsed() > timeout || Instant::now() > self.plan.deadline {
                return Err(anyhow!("timed out; engine totals: {t:?}"));
            }
            if !self.workers_alive() {
                return Err(anyhow!("an engine worker exited early; totals: {t:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Close every connection, wait for the workers and sum their results.
    pub fn finish(mut self) -> Result<EngineResult> {
        self.control.phase.store(PHASE_CLOSE, Ordering::Release);
        let mut errors = Vec::new();
        let mut failure = None;
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(Ok(first_error)) if !first_error.is_empty() => errors.push(first_error),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => failure = Some(anyhow!("engine worker panicked")),
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut totals = Totals::default();
        let mut latency = new_histogram();
        let mut auth_latency = new_histogram();
        for w in &self.workers {
            totals.add(&w.totals.load());
            w.hists.add_totals(&mut latency, &mut auth_latency);
        }
        Ok(EngineResult {
            totals,
            latency,
            auth_latency,
            errors,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Workers also stop at the deadline; this makes an early drop prompt.
        self.control.phase.store(PHASE_CLOSE, Ordering::Release);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
