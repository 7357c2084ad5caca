//! The data plane: one thread per shard, each with its own io_uring,
//! `SO_REUSEPORT` listeners, provided-buffer ring, connection slab, indexes
//! and timing wheel (design §2). Shards share nothing but their fan-out
//! rings (`crate::fanout`).
//!
//! - `uring`: ring setup, provided buffers, user_data encoding.
//! - `event_loop`: the `Shard` and its loop (accept, recv, timers,
//!   reports, shutdown).
//! - `send`: one send SQE per dirty connection per turn, completions.
//! - `close`: timeouts, the close sequence and index removal.
//! - `input`: bytes → HTTP upgrade / WS frames / goim packets.
//! - `ops`: what each goim op does (auth, heartbeat, rooms, filters).
//! - `deliver`: pushes, room batching, send queues and the byte cap.
//! - `conn`, `index`, `wheel`: connection state, room/key/mid indexes,
//!   the timing wheel.
//! - `host`: preflight checks and `corecast host-check`.

mod close;
mod conn;
mod deliver;
mod event_loop;
pub mod host;
mod index;
mod input;
mod ops;
mod send;
mod uring;
mod wheel;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Verifier;
use crate::config::{Config, ListenConfig, SendPolicy};
use crate::fanout::ShardInbox;

pub use conn::{Conn, ConnExt, OutQueue};

/// Settings every shard reads (resolved from the config once).
#[derive(Clone)]
pub struct Settings {
    pub max_body: usize,
    pub send_cap: usize,
    pub send_policy: SendPolicy,
    pub handshake_timeout: u32,
    /// Silence after which an authenticated connection is closed.
    pub heartbeat_timeout: u32,
    pub close_linger: u32,
    pub ws_path: String,
    pub report_interval: Duration,
    /// Room batching window (zero = one loop turn).
    pub batch_window: Duration,
    pub ring_entries: u32,
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// Registered file table size of each shard ring.
    pub max_conns: u32,
    pub verifier: Verifier,
}

impl Settings {
    pub fn from_config(cfg: &Config, verifier: Verifier, max_conns: u32) -> Settings {
        Settings {
            max_body: cfg.limits.max_body,
            send_cap: cfg.limits.send_cap,
            send_policy: cfg.limits.send_policy,
            handshake_timeout: cfg.limits.handshake_timeout_secs,
            heartbeat_timeout: cfg.limits.heartbeat_interval_secs * 2 + 1,
            close_linger: cfg.limits.close_linger_secs.max(1),
            ws_path: cfg.listen.ws_path.clone(),
            report_interval: Duration::from_millis(cfg.shards.report_interval_ms),
            batch_window: Duration::from_millis(cfg.fanout.batch_window_ms),
            ring_entries: cfg.shards.ring_entries.next_power_of_two(),
            recv_buffers: cfg.recv_buffers_per_shard().min(32768) as u16,
            recv_buffer_size: cfg.shards.recv_buffer_size as usize,
            max_conns,
            verifier,
        }
    }
}

/// Listening sockets of one shard: WS and TCP.
pub struct ShardListeners {
    pub ws: OwnedFd,
    pub tcp: OwnedFd,
}

/// Errors binding the listeners (one line each).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr} ({what}): {source}{hint}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
        hint: &'static str,
    },
}

fn bind_one(
    addr: SocketAddr,
    listen: &ListenConfig,
    what: &'static str,
    reuseport: bool,
) -> Result<Socket, BindError> {
    let err = |source: std::io::Error| {
        let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
            " (another process holds the port: stop it or pick another address)"
        } else {
            ""
        };
        BindError::Bind {
            addr,
            what,
            source,
            hint,
        }
    };
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if reuseport {
        s.set_reuse_port(true).map_err(err)?;
    }
    s.set_nodelay(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    if listen.tcp_fastopen_qlen > 0 {
        set_fastopen_queue(&s, listen.tcp_fastopen_qlen).map_err(err)?;
    }
    s.listen(listen.backlog.min(i32::MAX as u32) as i32)
        .map_err(err)?;
    Ok(s)
}

/// TCP_FASTOPEN on a listener: a SYN carrying data and a valid cookie is
/// accepted at once, its data readable before the handshake completes. Inert
/// unless `net.ipv4.tcp_fastopen` has the server bit (2).
fn set_fastopen_queue(s: &Socket, qlen: u32) -> std::io::Result<()> {
    let qlen = qlen.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: a valid socket descriptor, and optval points at a c_int
    // whose size is passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&qlen as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds `count` `SO_REUSEPORT` listeners on each of the WS and TCP
/// addresses. A port already held by anyone (even with `SO_REUSEPORT`) is
/// an error; port 0 picks one free port shared by all shards. Returns the
/// listeners and the actual (ws, tcp) addresses.
pub fn bind_listeners(
    cfg: &Config,
    count: usize,
) -> Result<(Vec<ShardListeners>, SocketAddr, SocketAddr), BindError> {
    let probe_cfg = ListenConfig {
        backlog: 1,
        tcp_fastopen_qlen: 0,
        ..cfg.listen.clone()
    };
    let resolve =
        |addr: SocketAddr, what: &'static str| -> Result<(Socket, SocketAddr), BindError> {
            // A first socket without SO_REUSEPORT detects a port in use by
            // another server that set SO_REUSEPORT too.
            let probe = bind_one(addr, &probe_cfg, what, false)?;
            let actual = probe
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
            drop(probe);
            let first = bind_one(actual, &cfg.listen, what, true)?;
            Ok((first, actual))
        };
    let (ws0, ws_addr) = resolve(cfg.listen.ws, "listen.ws")?;
    let (tcp0, tcp_addr) = resolve(cfg.listen.tcp, "listen.tcp")?;
    let mut out = vec![ShardListeners {
        ws: ws0.into(),
        tcp: tcp0.into(),
    }];
    for _ in 1..count {
        out.push(ShardListeners {
            ws: bind_one(ws_addr, &cfg.listen, "listen.ws", true)?.into(),
            tcp: bind_one(tcp_addr, &cfg.listen, "listen.tcp", true)?.into(),
        });
    }
    Ok((out, ws_addr, tcp_addr))
}

/// A started shard thread.
pub struct ShardThread {
    pub id: usize,
    pub join: std::thread::JoinHandle<()>,
}

/// Starts one thread per inbox, shard `i` pinned to `cpus[i % cpus.len()]`,
/// and waits until each has its ring up and accepts armed. Any shard failing
/// to start is an error (the ones started are told to stop by the caller
/// through `Shutdown`).
pub fn spawn_shards(
    settings: Arc<Settings>,
    inboxes: Vec<ShardInbox>,
    listeners: Vec<ShardListeners>,
    cpus: &[usize],
) -> Result<Vec<ShardThread>, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for (i, (inbox, l)) in inboxes.into_iter().zip(listeners).enumerate() {
        let cpu = cpus.get(i % cpus.len().max(1)).copied();
        let settings = settings.clone();
        let ready = ready_tx.clone();
        let join = std::thread::Builder::new()
            .name(format!("corecast-shard-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to_cpu(cpu);
                }
                match event_loop::Shard::new(i, settings, inbox, l) {
                    Ok(mut shard) => {
                        let _ = ready.send(Ok(()));
                        shard.run();
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("shard {i}: {e}")));
                    }
                }
            })
            .map_err(|e| format!("cannot start shard thread {i}: {e}"))?;
        threads.push(ShardThread { id: i, join });
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard thread ended during start".into()),
        }
    }
    Ok(threads)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "cannot pin shard thread");
        }
    }
}
