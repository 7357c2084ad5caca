//! `ceiling`: a bare io_uring sender and receiver over loopback with no server
//! logic, so every other figure can be read as a fraction of what the kernel
//! allows on this box (design §7). The receiver stands where the server would
//! (its CPU), the sender where the loadgen would.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use io_uring::{opcode, squeue, types};
use serde::Serialize;

use crate::engine::addr::SourceAddrs;
use crate::engine::uring::{self, connect_chain, BufRing, Uring};

/// Options of the `ceiling` run.
#[derive(Clone, Debug, clap::Args)]
pub struct CeilingArgs {
    /// Connections opened (and closed) to measure the connect + accept rate.
    #[arg(long, default_value_t = 60_000)]
    pub connects: u32,
    /// Connections opened at once (one round); ≤ the registered file table.
    #[arg(long, default_value_t = 15_000)]
    pub round: u32,
    /// Connect attempts in flight at once (as the client engine's default).
    #[arg(long, default_value_t = 1024)]
    pub inflight: u32,
    /// Connections carrying the send phases.
    #[arg(long, default_value_t = 64)]
    pub send_conns: u32,
    /// Bytes per message in the send phases.
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    /// Messages per SendMsg in the batched phase.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Seconds of each send phase.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// CPU of the receiving side (where the server runs in other scenarios).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// CPU of the sending side (where the loadgen runs).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What the kernel allows on this box, measured without any server logic.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct CeilingReport {
    pub connects: u64,
    pub connect_failures: u64,
    pub connects_per_sec: f64,
    /// CPU time of the connecting thread per connect (µs): comparable with
    /// the `conns` scenario's loadgen CPU per connection on a busy box,
    /// where rates move with the other load but costs much less.
    #[serde(default)]
    pub client_cpu_us_per_connect: f64,
    pub msg_size: usize,
    pub send_conns: u32,
    pub sends_per_sec: f64,
    pub send_bytes_per_sec: f64,
    pub batch: usize,
    pub batched_sendmsgs_per_sec: f64,
    pub batched_frames_per_sec: f64,
    pub batched_bytes_per_sec: f64,
}

const KIND_SHIFT: u32 = 32;
const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_CLOSE: u64 = 3;
const K_CONNECT: u64 = 4;
const K_SEND: u64 = 5;
const K_CHAIN: u64 = 6;

fn ud(kind: u64, slot: u32) -> u64 {
    kind << KIND_SHIFT | slot as u64
}

fn split(ud: u64) -> (u64, u32) {
    (ud >> KIND_SHIFT, ud as u32)
}

/// Counters the receiver publishes for the sender to wait on.
#[derive(Default)]
struct ReceiverCounters {
    accepted: AtomicU64,
    closed: AtomicU64,
    bytes: AtomicU64,
}

pub fn run(args: &CeilingArgs) -> Result<CeilingReport> {
    if args.round == 0 || args.round > 19_000 {
        bail!("--round must be in 1..=19000 (the registered file table is capped by nofile)");
    }
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .context("binding the ceiling listener")?;
    let sock = socket2::SockRef::from(&listener);
    sock.listen(65535)?;
    let port = listener.local_addr()?.port();
    let lfd = listener.as_raw_fd();

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ReceiverCounters::default());
    let receiver = {
        let (stop, counters, cpu) = (stop.clone(), counters.clone(), args.server_cpu);
        std::thread::Builder::new()
            .name("ceiling-recv".into())
            .spawn(move || receiver_loop(lfd, &stop, &counters, cpu))?
    };

    let result = sender(args, port, &counters);
    stop.store(true, Ordering::Relaxed);
    let recv_result = receiver.join().expect("receiver thread panicked");
    drop(listener);
    recv_result.context("ceiling receiver")?;
    result
}

fn receiver_loop(
    lfd: i32,
    stop: &AtomicBool,
    counters: &ReceiverCounters,
    cpu: usize,
) -> Result<()> {
    uring::pin_to_cpu(cpu);
    let mut ring = Uring::new(4096, 20_000).context("receiver io_uring")?;
    let mut bufs = BufRing::new(&ring, 0, 1024, 16 * 1024).context("receiver buffer ring")?;
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .allocate_file_index(true)
        .build()
        .user_data(ud(K_ACCEPT, 0));
    ring.push(&accept)?;
    let (mut accepted, mut closed, mut bytes) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        ring.wait(Duration::from_millis(20))?;
        let comps = ring.take_completions();
        for c in &comps {
            let (kind, slot) = split(c.user_data);
            match kind {
                K_ACCEPT => {
                    if c.result >= 0 {
                        accepted += 1;
                        let slot = c.result as u32;
                        ring.push(&recv_multi(slot, bufs.bgid()))?;
                    } else if c.result != -libc::ECANCELED {
                        tracing::debug!(
                            "ceiling accept: {}",
                            std::io::Error::from_raw_os_error(-c.result)
                        );
                    }
                    if !uring::more(c.flags) {
                        ring.push(&accept)?;
                    }
                }
                K_RECV => {
                    if let Some(bid) = io_uring::cqueue::buffer_select(c.flags) {
                        bufs.recycle(bid);
                    }
                    if c.result > 0 {
                        bytes += c.result as u64;
                        if !uring::more(c.flags) {
                            ring.push(&recv_multi(slot, bufs.bgid()))?;
                        }
                    } else if c.result == -libc::ENOBUFS {
                        ring.push(&recv_multi(slot, bufs.bgid()))?;
                    } else {
                        let close = opcode::Close::new(types::Fixed(slot))
                            .build()
                            .user_data(ud(K_CLOSE, slot));
                        ring.push(&close)?;
                    }
                }
                K_CLOSE => closed += 1,
                _ => {}
            }
        }
        ring.restore_completions(comps);
        bufs.publish();
        counters.accepted.store(accepted, Ordering::Release);
        counters.closed.store(closed, Ordering::Release);
        counters.bytes.store(bytes, Ordering::Release);
    }
    Ok(())
}

fn recv_multi(slot: u32, bgid: u16) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fixed(slot), bgid)
        .build()
        .user_data(ud(K_RECV, slot))
}

/// The sending side: its own ring, its own registered file table.
struct Sender {
    ring: Uring,
    dst: libc::sockaddr_in,
    sources: SourceAddrs,
}

fn sender(args: &CeilingArgs, port: u16, counters: &ReceiverCounters) -> Result<CeilingReport> {
    uring::pin_to_cpu(args.client_cpu);
    let mut s = Sender {
        ring: Uring::new(4096, 20_000).context("sender io_uring")?,
        dst: uring::sockaddr_v4(Ipv4Addr::LOCALHOST, port),
        // Addresses are never reused in a run, so TIME_WAIT ports stay out of
        // the way; see PER_SOURCE_ADDR for the count per address.
        sources: SourceAddrs::new(0xC0, crate::engine::PER_SOURCE_ADDR),
    };
    let mut report = CeilingReport {
        msg_size: args.msg_size,
        send_conns: args.send_conns,
        batch: args.batch,
        ..Default::default()
    };

    // Phase 1: connect + accept rate, in rounds that fit the file tables.
    let mut connect_time = Duration::ZERO;
    let mut remaining = args.connects;
    let mut opened = 0u64;
    let mut connect_cpu_ns = 0u64;
    while remaining > 0 {
        let n = remaining.min(args.round);
        let accepted_before = counters.accepted.load(Ordering::Acquire);
        let t0 = Instant::now();
        let cpu0 = uring::thread_cpu_ns();
        let (ok, failed) = s.connect_batch(n, args.inflight)?;
        connect_cpu_ns += uring::thread_cpu_ns() - cpu0;
        while counters.accepted.load(Ordering::Acquire) < accepted_before + ok {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("receiver accepted fewer connections than the sender connected");
            }
            std::hint::spin_loop();
        }
        connect_time += t0.elapsed();
        report.connects += ok;
        report.connect_failures += failed;
        opened += ok;
        s.close_slots(n)?;
        wait_until(
            || counters.closed.load(Ordering::Acquire) >= opened,
            "receiver closes",
        )?;
        remaining -= n;
    }
    report.connects_per_sec = report.connects as f64 / connect_time.as_secs_f64().max(1e-9);
    report.client_cpu_us_per_connect = connect_cpu_ns as f64 / 1e3 / report.connects.max(1) as f64;

    // Phases 2 and 3: one message per send, then `batch` messages per SendMsg.
    let k = args.send_conns;
    let accepted_before = counters.accepted.load(Ordering::Acquire);
    let (ok, _) = s.connect_batch(k, args.inflight)?;
    if ok != k as u64 {
        bail!("only {ok} of {k} send connections connected");
    }
    wait_until(
        || counters.accepted.load(Ordering::Acquire) >= accepted_before + ok,
        "send connections accepted",
    )?;
    let phase = Duration::from_secs_f64(args.seconds);
    let payload = vec![0x5au8; args.msg_size];
    let (sends, bytes, el) = s.send_phase(k, &payload, 1, phase)?;
    report.sends_per_sec = sends as f64 / el;
    report.send_bytes_per_sec = bytes as f64 / el;
    let (msgs, bytes, el) = s.send_phase(k, &payload, args.batch, phase)?;
    report.batched_sendmsgs_per_sec = msgs as f64 / el;
    report.batched_frames_per_sec = msgs as f64 * args.batch as f64 / el;
    report.batched_bytes_per_sec = bytes as f64 / el;
    s.close_slots(k)?;
    Ok(report)
}

fn wait_until(mut cond: impl FnMut() -> bool, what: &str) -> Result<()> {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

impl Sender {
    /// Socket → bind → connect as one linked chain per slot 0..n, at most
    /// `inflight` at a time (an unbounded burst only overflows the listen
    /// queue and measures SYN retransmits). Returns (ok, failed).
    fn connect_batch(&mut self, n: u32, inflight: u32) -> Result<(u64, u64)> {
        let (mut ok, mut failed, mut done, mut started) = (0u64, 0u64, 0u32, 0u32);
        let t0 = Instant::now();
        while done < n {
            while started < n && started - done < inflight.max(1) {
                // SAFETY (of the pointers in the chain): the source address
                // stays in the SourceAddrs table for thousands more addresses,
                // far longer than the ≤ `inflight` chains in flight.
                let src = self.sources.next();
                let chain = connect_chain(
                    started,
                    src,
                    &self.dst,
                    ud(K_CHAIN, started),
                    ud(K_CONNECT, started),
                );
                self.ring.push_chain(&chain)?;
                started += 1;
            }
            for c in self.ring.wait(Duration::from_millis(100))? {
                let (kind, _) = split(c.user_data);
                match kind {
                    K_CONNECT => {
                        done += 1;
                        if c.result == 0 {
                            ok += 1;
                        } else {
                            failed += 1;
                            tracing::debug!(
                                "ceiling connect: {}",
                                std::io::Error::from_raw_os_error(-c.result)
                            );
                        }
                    }
                    K_CHAIN => {
                        tracing::debug!(
                            "ceiling socket/bind: {}",
                            std::io::Error::from_raw_os_error(-c.result)
                        );
                    }
                    _ => {}
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("connect batch timed out ({done} of {n} done)");
            }
        }
        Ok((ok, failed))
    }

    fn close_slots(&mut self, n: u32) -> Result<()> {
        for slot in 0..n {
            let e = opcode::Close::new(types::Fixed(slot))
                .build()
                .user_data(ud(K_CLOSE, slot));
            self.ring.push(&e)?;
        }
        let mut done = 0;
        while done < n {
            done += self
                .ring
                .wait(Duration::from_millis(100))?
                .iter()
                .filter(|c| split(c.user_data).0 == K_CLOSE)
                .count() as u32;
        }
        Ok(())
    }

    /// Keep one send (of `batch` messages) in flight per connection for `phase`.
    /// Returns (sends completed, bytes, seconds).
    fn send_phase(
        &mut self,
        k: u32,
        payload: &[u8],
        batch: usize,
        phase: Duration,
    ) -> Result<(u64, u64, f64)> {
        let iovecs: Vec<libc::iovec> = (0..batch)
            .map(|_| libc::iovec {
                iov_base: payload.as_ptr() as *mut _,
                iov_len: payload.len(),
            })
            .collect();
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iovecs.as_ptr() as *mut _;
        msg.msg_iovlen = iovecs.len();
        let entry = |slot: u32| -> squeue::Entry {
            if batch == 1 {
                opcode::Send::new(types::Fixed(slot), payload.as_ptr(), payload.len() as u32)
                    .build()
                    .user_data(ud(K_SEND, slot))
            } else {
                opcode::SendMsg::new(types::Fixed(slot), &msg)
                    .build()
                    .user_data(ud(K_SEND, slot))
            }
        };
        for slot in 0..k {
            self.ring.push(&entry(slot))?;
        }
        let t0 = Instant::now();
        let (mut sends, mut bytes, mut inflight) = (0u64, 0u64, k);
        let mut elapsed = 0.0;
        while inflight > 0 {
            let running = t0.elapsed() < phase;
            if !running && elapsed == 0.0 {
                elapsed = t0.elapsed().as_secs_f64();
            }
            let comps = {
                self.ring.wait(Duration::from_millis(10))?;
                self.ring.take_completions()
            };
            for c in &comps {
                let (kind, slot) = split(c.user_data);
                if kind != K_SEND {
                    continue;
                }
                if c.result < 0 {
                    bail!(
                        "ceiling send: {}",
                        std::io::Error::from_raw_os_error(-c.result)
                    );
                }
                if running {
                    sends += 1;
                    bytes += c.result as u64;
                    self.ring.push(&entry(slot))?;
                } else {
                    inflight -= 1;
                }
            }
            self.ring.restore_completions(comps);
        }
        Ok((sends, bytes, elapsed))
    }
}

impl CeilingReport {
    pub fn print(&self) {
        println!("ceiling (bare io_uring sender → receiver over loopback, no server logic)");
        println!(
            "  connect + accept       {:>12.0} conns/s   ({} ok, {} failed)",
            self.connects_per_sec, self.connects, self.connect_failures
        );
        println!(
            "  connecting thread CPU  {:>12.1} µs/connect",
            self.client_cpu_us_per_connect
        );
        println!(
            "  sends, 1 msg/send      {:>12.0} sends/s   {:>8.1} MB/s  ({} B msgs, {} conns)",
            self.sends_per_sec,
            self.send_bytes_per_sec / 1e6,
            self.msg_size,
            self.send_conns
        );
        println!(
            "  SendMsg, {} msgs/send   {:>12.0} sends/s   {:>8.1} MB/s  = {:.0} frames/s",
            self.batch,
            self.batched_sendmsgs_per_sec,
            self.batched_bytes_per_sec / 1e6,
            self.batched_frames_per_sec
        );
    }
}
