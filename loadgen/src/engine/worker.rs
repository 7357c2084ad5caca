//! One engine worker: a thread, an io_uring with a sparse file table of up to
//! `MAX_CONNS_PER_WORKER` slots, and the connections living in those slots.
//!
//! Life of a connection: socket → bind → connect → first send (one linked
//! chain into its fixed slot) → [WS upgrade → 101] → op 7 → op 8 → reading
//! (multishot receive on the shared buffer ring) with op-2 heartbeats →
//! shutdown + close. With `pipeline_auth` the first send carries the upgrade
//! request and the op-7 frame together, so a WS client costs one request and
//! one reply instead of two round trips.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use corecast_protocol::packet::{encode_packet_to_vec, op};
use corecast_protocol::ws::frame::{encode_client_frame, FrameDecoder, Opcode};
use corecast_protocol::ws::handshake::{key_from_bytes, write_upgrade_request};
use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types};

use super::addr::SourceAddrs;
use super::conn::{Conn, SendBuf, State};
mod connect;
mod recv;

use super::stats::{new_histogram, SharedHistograms, SharedTotals, Totals};
use super::uring::{self, BufRing, Completion, Uring};
use super::{ClientPlan, Control, Transport, PHASE_RUN};

pub(crate) struct WorkerSpec {
    pub index: usize,
    pub first_conn: u64,
    pub conns: u32,
    pub plan: Arc<ClientPlan>,
    pub control: Arc<Control>,
    pub totals: Arc<SharedTotals>,
    pub hists: Arc<SharedHistograms>,
}

// user_data: kind (8 bits) | generation (16 bits) | connection index (32 bits).
const K_CONNECT: u64 = 1;
const K_CHAIN: u64 = 2;
const K_SEND_OWNED: u64 = 3;
const K_SEND_STATIC: u64 = 4;
const K_RECV: u64 = 5;
const K_SHUTDOWN: u64 = 6;
const K_CLOSE: u64 = 7;
const K_CANCEL: u64 = 8;
/// The request linked to the connect; its completion also reports the
/// connect's success (the connect itself posts only failures).
const K_FIRST_SEND: u64 = 9;

fn ud(kind: u64, gen: u16, idx: u32) -> u64 {
    kind << 56 | (gen as u64) << 32 | idx as u64
}

fn split(ud: u64) -> (u64, u16, u32) {
    (ud >> 56, (ud >> 32) as u16, ud as u32)
}

/// Receive buffers shared by all connections of a worker (2 MiB with the
/// default 2 KiB buffers): many small buffers, as pushes are small and bursts
/// hit many connections at once; larger frames continue in the connection's
/// spill buffer. Larger buffers (plan) keep the same 2 MiB, at least 64.
const RECV_BUFFER_BYTES: usize = 2 << 20;
/// After the close phase starts, give outstanding closes this long.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Owned send buffers kept for reuse (upgrade + auth, pongs): a connect costs
/// no allocation once the pool is warm. Bounded by the connects in flight in
/// practice; larger buffers (long tokens, big pongs) are not kept.
const SEND_POOL_MAX: usize = 4096;
const SEND_POOL_BUF_MAX: usize = 4096;

pub(crate) fn run(spec: WorkerSpec) -> Result<String> {
    if let Some(cpu) = spec.plan.cpu {
        uring::pin_to_cpu(cpu);
    }
    let mut w = Worker::new(spec)?;
    w.run()?;
    Ok(w.first_error)
}

struct Worker {
    // Field order: the ring is dropped before the buffers it points into.
    ring: Uring,
    bufs: BufRing,
    conns: Vec<Conn>,
    spec: WorkerSpec,
    sources: SourceAddrs,
    dst: Box<libc::sockaddr_in>,
    ws_key: String,
    upgrade_request: Box<[u8]>,
    /// `"<room_type>://` as a JSON string without its closing quote (the room
    /// number and quote are appended per connection).
    room_prefix_json: Box<[u8]>,
    send_pool: Vec<SendBuf>,
    /// Scratch for building one auth packet.
    auth_json: Vec<u8>,
    auth_packet: Vec<u8>,
    heartbeat: Box<[u8]>,
    mask_key: [u8; 4],
    decoder: FrameDecoder,
    totals: Totals,
    latency: Histogram<u64>,
    auth_latency: Histogram<u64>,
    /// (due ms, idx, gen): FIFO because every entry waits the same period.
    heartbeats: VecDeque<(u32, u32, u16)>,
    /// Storm: (due ms, idx, gen) of authenticated connections to close.
    churn: VecDeque<(u32, u32, u16)>,
    /// Slots to reconnect once their close completed (storm).
    reconnect: VecDeque<u32>,
    next_start: u32,
    inflight_connects: u32,
    open: u32,
    epoch: Instant,
    connect_credit: f64,
    last_credit: Instant,
    first_error: String,
}

impl Worker {
    fn new(spec: WorkerSpec) -> Result<Self> {
        let plan = spec.plan.clone();
        let ring = Uring::new(4096, spec.conns.max(1))
            .context("creating the worker io_uring (is io_uring allowed?)")?;
        let recv_buffer_size = plan.recv_buffer_size.clamp(512, 1 << 20);
        let recv_buffers = (RECV_BUFFER_BYTES / recv_buffer_size)
            .clamp(64, 32_768)
            .next_power_of_two() as u16;
        let bufs = BufRing::new(&ring, 0, recv_buffers, recv_buffer_size)
            .context("registering the receive buffer ring")?;
        let seed = (spec.index as u32 + 1).wrapping_mul(0x9e37_79b9) ^ std::process::id();
        let mask_key = seed.to_be_bytes();
        let mut key_bytes = [0u8; 16];
        for (i, b) in key_bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 3) >> (i % 4 * 8)) as u8 ^ i as u8;
        }
        let ws_key = key_from_bytes(key_bytes);
        let mut upgrade = Vec::new();
        let host = plan.server.to_string();
        write_upgrade_request(&host, &plan.ws_path, &ws_key, &mut upgrade);
        let hb_packet = encode_packet_to_vec(op::HEARTBEAT, 0, b"");
        let heartbeat = match plan.transport {
            Transport::Ws => {
                let mut f = Vec::new();
                encode_client_frame(Opcode::Binary, &hb_packet, mask_key, &mut f);
                f
            }
            Transport::Tcp => hb_packet,
        };
        // The second octet spreads workers over different address blocks.
        let sources = SourceAddrs::new(1 + (spec.index % 200) as u8, plan.per_source_addr);
        let conns = (0..spec.conns).map(|_| Conn::new()).collect();
        let mut room_prefix_json =
            serde_json::to_vec(&format!("{}://", plan.room_type)).expect("a string serializes");
        room_prefix_json.pop();
        Ok(Self {
            ring,
            bufs,
            conns,
            sources,
            dst: Box::new(uring::sockaddr_v4(*plan.server.ip(), plan.server.port())),
            ws_key,
            upgrade_request: upgrade.into_boxed_slice(),
            room_prefix_json: room_prefix_json.into_boxed_slice(),
            send_pool: Vec::new(),
            auth_json: Vec::with_capacity(256),
            auth_packet: Vec::with_capacity(256),
            heartbeat: heartbeat.into_boxed_slice(),
            mask_key,
            decoder: FrameDecoder::client(super::conn::MAX_SERVER_PACKET),
            totals: Totals::default(),
            latency: new_histogram(),
            auth_latency: new_histogram(),
            heartbeats: VecDeque::new(),
            churn: VecDeque::new(),
            reconnect: VecDeque::new(),
            next_start: 0,
            inflight_connects: 0,
            open: 0,
            epoch: Instant::now(),
            connect_credit: 0.0,
            last_credit: Instant::now(),
            first_error: String::new(),
            spec,
        })
    }

    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    fn run(&mut self) -> Result<()> {
        let mut last_flush = Instant::now();
        let mut closing_since: Option<Instant> = None;
        loop {
            let closing = self.spec.control.phase.load(Ordering::Acquire) != PHASE_RUN
                || Instant::now() >= self.spec.plan.deadline;
            if closing {
                if closing_since.is_none() {
                    closing_since = Some(Instant::now());
                    self.close_all()?;
                }
                if self.open == 0 || closing_since.is_some_and(|t| t.elapsed() > CLOSE_GRACE) {
                    break;
                }
            } else {
                self.start_connects()?;
                self.run_timers()?;
            }
            self.ring.wait(Duration::from_millis(10))?;
            let comps = self.ring.take_completions();
            for c in &comps {
                self.on_completion(c)?;
            }
            self.ring.restore_completions(comps);
            self.bufs.publish();
            self.spec.totals.publish(&self.totals);
            if last_flush.elapsed() >= Duration::from_millis(100) {
                self.spec
                    .hists
                    .flush(&mut self.latency, &mut self.auth_latency);
                last_flush = Instant::now();
            }
        }
        self.ring.submit()?;
        self.spec
            .hists
            .flush(&mut self.latency, &mut self.auth_latency);
        self.spec.totals.publish(&self.totals);
        Ok(())
    }

    fn note_error(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_empty() {
            self.first_error = format!("worker {}: {}", self.spec.index, what());
        }
    }

    fn run_timers(&mut self) -> Result<()> {
        let now = self.now_ms();
        let period = self.spec.plan.heartbeat.as_millis() as u32;
        while let Some(&(due, idx, gen)) = self.heartbeats.front() {
            if due > now {
                break;
            }
            self.heartbeats.pop_front();
            let c = &self.conns[idx as usize];
            if c.gen != gen || !matches!(c.state, State::Ready | State::Slow) {
                continue;
            }
            let e = opcode::Send::new(
                types::Fixed(idx),
                self.heartbeat.as_ptr(),
                self.heartbeat.len() as u32,
            )
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(K_SEND_STATIC, gen, idx));
            self.ring.push(&e)?;
            self.heartbeats.push_back((now + period, idx, gen));
        }
        while let Some(&(due, idx, gen)) = self.churn.front() {
            if due > now {
                break;
            }
            self.churn.pop_front();
            let c = &self.conns[idx as usize];
            if c.gen == gen && matches!(c.state, State::Ready | State::Slow) {
                self.totals.closed_by_client += 1;
                self.close_slot(idx)?;
                self.conns[idx as usize].reconnect = true;
            }
        }
        Ok(())
    }

    fn close_all(&mut self) -> Result<()> {
        self.reconnect.clear();
        for idx in 0..self.conns.len() as u32 {
            match self.conns[idx as usize].state {
                State::Ready | State::Slow => {
                    self.totals.closed_by_client += 1;
                    self.close_slot(idx)?;
                }
                State::Connecting => {} // closed when its connect completes
                State::Handshaking | State::Authing => self.close_slot(idx)?,
                State::Idle | State::Closing | State::Closed => {}
            }
        }
        Ok(())
    }

    /// Shutdown (so a pending multishot receive ends and the peer sees FIN)
    /// then close the fixed slot.
    fn close_slot(&mut self, idx: u32) -> Result<()> {
        let c = &mut self.conns[idx as usize];
        if matches!(c.state, State::Idle | State::Closing | State::Closed) {
            return Ok(());
        }
        c.state = State::Closing;
        let gen = c.gen;
        let chain = [
            opcode::Shutdown::new(types::Fixed(idx), libc::SHUT_RDWR)
                .build()
                .flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS)
                .user_data(ud(K_SHUTDOWN, gen, idx)),
            opcode::Close::new(types::Fixed(idx))
                .build()
                .user_data(ud(K_CLOSE, gen, idx)),
        ];
        self.ring.push_chain(&chain)?;
        Ok(())
    }

    fn fail(&mut self, idx: u32, why: impl FnOnce() -> String) -> Result<()> {
        self.totals.failed += 1;
        self.note_error(why);
        self.close_slot(idx)
    }

    fn arm_recv(&mut self, idx: u32) -> Result<()> {
        let c = &mut self.conns[idx as usize];
        c.recv_armed = true;
        let e = opcode::RecvMulti::new(types::Fixed(idx), self.bufs.bgid())
            .build()
            .user_data(ud(K_RECV, c.gen, idx));
        Ok(self.ring.push(&e)?)
    }

    fn on_completion(&mut self, c: &Completion) -> Result<()> {
        let (kind, gen, idx) = split(c.user_data);
        if kind == K_RECV {
            return self.on_recv(c, gen, idx);
        }
        let current = self
            .conns
            .get(idx as usize)
            .is_some_and(|conn| conn.gen == gen);
        match kind {
            K_CONNECT => {
                if c.result >= 0 {
                    return Ok(()); // success is reported by the first send
                }
                self.inflight_connects -= 1;
                if !current {
                    return Ok(());
                }
                if self.conns[idx as usize].state != State::Connecting {
                    return self.close_slot_after_connect(idx, c.result);
                }
                let err = std::io::Error::from_raw_os_error(-c.result);
                return self.fail(idx, || format!("connect: {err}"));
            }
            K_FIRST_SEND => {
                // Released whatever the outcome: the kernel is done with it.
                let pending = self
                    .conns
                    .get_mut(idx as usize)
                    .and_then(|c| c.pending.take());
                // A Fast Open SYN carries at most one segment of data: the
                // kernel then reports a short send and the rest goes next.
                let rest = match &pending {
                    Some(p) if c.result > 0 && (c.result as usize) < p.len() => {
                        let mut rest = self.send_buf();
                        rest.extend_from_slice(&p[c.result as usize..]);
                        Some(rest)
                    }
                    _ => None,
                };
                if let Some(buf) = pending {
                    self.recycle_send_buf(buf);
                }
                if c.result == -libc::ECANCELED {
                    return Ok(()); // the connect failed, and said so
                }
                if c.result == -libc::EINPROGRESS
                    && current
                    && self.conns[idx as usize].state == State::Connecting
                {
                    // Fast Open sent a SYN without the request (Linux falls
                    // back when the data does not fit in it); the connect is
                    // under way, so the request goes again behind it.
                    return self.resend_first(idx);
                }
                self.inflight_connects -= 1;
                if !current {
                    return Ok(());
                }
                if self.conns[idx as usize].state != State::Connecting {
                    // The close phase began meanwhile.
                    return self.close_slot_after_connect(idx, c.result.min(0));
                }
                if c.result >= 0 {
                    self.totals.connected += 1;
                }
                if c.result < 0 {
                    let err = std::io::Error::from_raw_os_error(-c.result);
                    return self.fail(idx, || format!("first send: {err}"));
                }
                self.conns[idx as usize].state = match self.spec.plan.transport {
                    Transport::Ws => State::Handshaking,
                    Transport::Tcp => State::Authing,
                };
                if let Some(rest) = rest {
                    return self.send_owned(idx, rest);
                }
            }
            K_CHAIN if c.result < 0 && c.result != -libc::ECANCELED => {
                let err = std::io::Error::from_raw_os_error(-c.result);
                self.note_error(|| format!("socket/bind: {err}"));
            }
            K_SEND_OWNED => {
                if let Some(conn) = self.conns.get_mut(idx as usize) {
                    // Released whatever the generation: the kernel is done with it.
                    let buf = conn.pending.take();
                    let len = buf.as_ref().map_or(0, |b| b.len());
                    if let Some(buf) = buf {
                        self.recycle_send_buf(buf);
                    }
                    if current && c.result >= 0 && (c.result as usize) < len {
                        self.totals.protocol_errors += 1;
                        return self.fail(idx, || "short send of a small buffer".into());
                    }
                }
                if current && c.result < 0 {
                    return self.on_send_error(idx, c.result);
                }
            }
            K_SEND_STATIC if current && c.result < 0 => return self.on_send_error(idx, c.result),
            K_CLOSE if current => {
                let conn = &mut self.conns[idx as usize];
                conn.state = State::Closed;
                conn.spill = None;
                self.open -= 1;
                if std::mem::take(&mut conn.reconnect) {
                    self.reconnect.push_back(idx);
                }
            }
            // Socket/bind errors surface again as the connect's ECANCELED;
            // shutdown errors (ENOTCONN after a reset) and cancels need nothing.
            _ => {}
        }
        Ok(())
    }

    /// A connect completed after the close phase began: just free the slot.
    fn close_slot_after_connect(&mut self, idx: u32, result: i32) -> Result<()> {
        if result == 0 {
            self.totals.connected += 1;
        }
        let conn = &mut self.conns[idx as usize];
        if conn.state == State::Connecting {
            conn.state = State::Handshaking; // any open state, so close_slot acts
        }
        self.close_slot(idx)
    }

    fn on_send_error(&mut self, idx: u32, result: i32) -> Result<()> {
        let err = std::io::Error::from_raw_os_error(-result);
        match self.conns[idx as usize].state {
            State::Ready | State::Slow => self.on_server_close(idx, format!("send: {err}")),
            State::Handshaking | State::Authing => self.fail(idx, || format!("send: {err}")),
            _ => Ok(()),
        }
    }

    /// The server closed (or broke) a connection.
    fn on_server_close(&mut self, idx: u32, why: String) -> Result<()> {
        match self.conns[idx as usize].state {
            State::Ready | State::Slow => {
                self.totals.closed_by_server += 1;
                self.note_error(|| format!("server closed an authenticated connection: {why}"));
                self.close_slot(idx)
            }
            State::Connecting | State::Handshaking | State::Authing => self.fail(idx, || why),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::AtomicU8;

    use corecast_protocol::auth::AuthRequest;
    use corecast_protocol::packet::parse_single_packet;
    use corecast_protocol::ws::handshake::{parse_upgrade, HandshakeOptions};

    use super::*;

    fn worker(transport: Transport, pipeline: bool, room_type: &str) -> Worker {
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let mut plan = ClientPlan::new(transport, server, 8, Duration::from_secs(60));
        plan.pipeline_auth = pipeline;
        plan.room_size = 3;
        plan.room_type = room_type.into();
        plan.mid_base = 100;
        plan.accepts = vec![1000, 1001];
        let spec = WorkerSpec {
            index: 0,
            first_conn: 4,
            conns: 8,
            plan: Arc::new(plan),
            control: Arc::new(Control {
                phase: AtomicU8::new(PHASE_RUN),
            }),
            totals: Default::default(),
            hists: Default::default(),
        };
        Worker::new(spec).expect("an io_uring for the test worker (is io_uring allowed?)")
    }

    /// The op-7 body of one WS frame or TCP packet at the start of `bytes`.
    fn auth_of(transport: Transport, bytes: &mut [u8]) -> AuthRequest {
        let packet = match transport {
            Transport::Tcp => bytes.to_vec(),
            Transport::Ws => {
                let mut dec = FrameDecoder::new(1 << 16);
                let len = bytes.len();
                let (frame, n) = dec.decode(bytes).expect("valid frame").expect("whole");
                assert_eq!(n, len, "one frame, nothing after it");
                assert_eq!(frame.opcode, Opcode::Binary);
                frame.payload.to_vec()
            }
        };
        let p = parse_single_packet(&packet, 1 << 16).expect("one goim packet");
        assert_eq!((p.op, p.seq), (op::AUTH, 1));
        AuthRequest::parse(p.body).expect("the body parses as the server parses it")
    }

    #[test]
    fn auth_packet_carries_mid_room_and_accepts() {
        for transport in [Transport::Ws, Transport::Tcp] {
            let mut w = worker(transport, false, "live");
            let mut out = Vec::new();
            w.write_auth(5, &mut out);
            let req = auth_of(transport, &mut out);
            // Global connection 4 + 5 = 9: mid 109, room 9 / 3 = 3.
            let want = AuthRequest {
                mid: 109,
                key: String::new(),
                room_id: "live://3".into(),
                platform: "web".into(),
                accepts: vec![1000, 1001],
                token: None,
            };
            assert_eq!(req, want, "{transport:?}");
            assert_eq!(
                AuthRequest::parse(&want.to_json()).unwrap(),
                req,
                "same request as the serde encoding"
            );
        }
    }

    #[test]
    fn room_type_is_escaped_in_the_auth_json() {
        let mut w = worker(Transport::Tcp, false, "a\"b\\c");
        let mut out = Vec::new();
        w.write_auth(0, &mut out);
        assert_eq!(auth_of(Transport::Tcp, &mut out).room_id, "a\"b\\c://1");
    }

    #[test]
    fn pipelined_first_send_is_the_upgrade_then_the_auth_frame() {
        let mut w = worker(Transport::Ws, true, "live");
        w.conns[2].gen = 7;
        let e = w.first_send(2);
        assert_eq!(split(e.get_user_data()), (K_FIRST_SEND, 7, 2));
        let mut bytes = w.conns[2]
            .pending
            .take()
            .expect("parked until the send completes");
        let opts = HandshakeOptions {
            path: Some("/sub"),
            max_request_len: 4096,
        };
        let req = parse_upgrade(&bytes, &opts)
            .expect("a valid upgrade request")
            .expect("complete");
        let used = req.request_len;
        assert_eq!(auth_of(Transport::Ws, &mut bytes[used..]).mid, 106);
    }

    #[test]
    fn sequential_ws_sends_the_static_upgrade_and_tcp_the_auth() {
        let mut w = worker(Transport::Ws, false, "live");
        let e = w.first_send(0);
        assert_eq!(split(e.get_user_data()).0, K_FIRST_SEND);
        assert!(w.conns[0].pending.is_none(), "nothing owned to park");

        let mut w = worker(Transport::Tcp, false, "live");
        let e = w.first_send(1);
        assert_eq!(split(e.get_user_data()).0, K_FIRST_SEND);
        let mut bytes = w.conns[1].pending.take().expect("auth parked");
        assert_eq!(auth_of(Transport::Tcp, &mut bytes).mid, 105);
    }

    #[test]
    fn send_buffers_are_reused() {
        let mut w = worker(Transport::Tcp, true, "live");
        let _ = w.first_send(0);
        let buf = w.conns[0].pending.take().unwrap();
        let ptr = buf.as_ptr();
        w.recycle_send_buf(buf);
        let again = w.send_buf();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the pooled buffer comes back");
    }
}
