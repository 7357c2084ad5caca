//! The shard: its ring, connections and loop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::conn::{Conn, Filters, OutQueue, Proto, State, F_RECV_ARMED};
use super::deliver::RoomBatch;
use super::index::{Keys, Mids, Rooms};
use super::uring::{build_ring, decode_ud, encode_ud, gen_bits, BufRing, Kind};
use super::wheel::Wheel;
use super::{Settings, ShardListeners};
use crate::fanout::{
    CloseReason, IndexSizes, LoopTurnHistogram, RoomCounts, ShardCounters, ShardInbox, ShardReport,
};

const BGID: u16 = 1;
/// Most ring messages handled per loop turn (keeps turns short under load).
const INBOX_BUDGET: usize = 16384;

pub struct Shard {
    pub(super) id: usize,
    pub(super) ring: IoUring,
    pub(super) bufs: BufRing,
    pub(super) conns: Slab<Conn>,
    pub(super) rooms: Rooms,
    pub(super) keys: Keys,
    pub(super) mids: Mids,
    pub(super) filters: Filters,
    pub(super) wheel: Wheel,
    pub(super) inbox: ShardInbox,
    pub(super) s: Arc<Settings>,
    listeners: Vec<(OwnedFd, Proto)>,
    accept_armed: [bool; 2],
    next_gen: u32,
    pub(super) start: Instant,
    pub(super) now: u32,
    pub(super) counters: ShardCounters,
    loop_turns: LoopTurnHistogram,
    pub(super) dirty: Vec<u32>,
    pub(super) scratch: BytesMut,
    pub(super) tmp_keys: Vec<u32>,
    pub(super) batch: RoomBatch,
    /// Emptied send queues for reuse (see [`OUT_POOL`]): boxed because a
    /// connection holds its queue boxed (the msghdr must not move).
    #[allow(clippy::vec_box)]
    pub(super) out_pool: Vec<Box<OutQueue>>,
    pub(super) room_counts: Option<Arc<RoomCounts>>,
    cqes: Vec<(u64, i32, u32)>,
    /// CQEs reaped inside `push_sqe` when the kernel refused to submit until
    /// the CQ drained (EBUSY); handled first on the next turn.
    cqe_backlog: Vec<(u64, i32, u32)>,
    fired: Vec<(u32, u32, u32)>,
    eventfd_buf: Box<u64>,
    tick_ts: Box<types::Timespec>,
    next_report: Instant,
    stopping: Option<Instant>,
    enfile_logged: u32,
}

impl Shard {
    pub fn new(
        id: usize,
        s: Arc<Settings>,
        inbox: ShardInbox,
        l: ShardListeners,
    ) -> std::io::Result<Shard> {
        let (ring, features) = build_ring(s.ring_entries)?;
        ring.submitter().register_files_sparse(s.max_conns).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot register a file table of {} slots: {e} (it must not exceed RLIMIT_NOFILE; \
                     lower shards.max_conns or raise the nofile limit)",
                    s.max_conns
                ),
            )
        })?;
        let bufs = BufRing::new(&ring, s.recv_buffers, s.recv_buffer_size, BGID)?;
        tracing::debug!(
            shard = id,
            single_issuer_defer_taskrun = features.single_issuer_defer_taskrun,
            coop_taskrun = features.coop_taskrun,
            recv_buffer_bytes = bufs.memory(),
            "shard ring ready"
        );
        let tick = s.report_interval.min(std::time::Duration::from_secs(1));
        let mut shard = Shard {
            id,
            ring,
            bufs,
            // Reserved, not touched: large allocations are mmapped, so
            // capacity costs RSS only as slots are used, and the slab never
            // reallocates (no copy, no freed old buffer left in the heap).
            conns: Slab::with_capacity(s.max_conns as usize),
            rooms: Rooms::default(),
            keys: Keys::default(),
            mids: Mids::default(),
            filters: Filters::default(),
            wheel: Wheel::default(),
            inbox,
            listeners: vec![(l.ws, Proto::Ws), (l.tcp, Proto::Tcp)],
            accept_armed: [false; 2],
            next_gen: 1,
            start: Instant::now(),
            now: 0,
            counters: ShardCounters::default(),
            loop_turns: LoopTurnHistogram::default(),
            dirty: Vec::new(),
            scratch: BytesMut::with_capacity(64 * 1024),
            tmp_keys: Vec::new(),
            batch: RoomBatch::default(),
            out_pool: Vec::new(),
            room_counts: None,
            cqes: Vec::with_capacity(1024),
            cqe_backlog: Vec::new(),
            fired: Vec::new(),
            eventfd_buf: Box::new(0),
            tick_ts: Box::new(
                types::Timespec::new()
                    .sec(tick.as_secs())
                    .nsec(tick.subsec_nanos()),
            ),
            next_report: Instant::now() + s.report_interval,
            stopping: None,
            enfile_logged: 0,
            s,
        };
        shard.arm_eventfd();
        shard.arm_tick();
        shard.arm_accept(0);
        shard.arm_accept(1);
        shard.ring.submit()?;
        Ok(shard)
    }

    /// Queues an SQE, submitting first if the queue is full.
    pub(super) fn push_sqe(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every SQE's buffers (the Bytes, msghdr and iovecs in a connection's
            // boxed OutQueue, the eventfd buffer, the timespec) stay alive
            // and unmoved until its completion is handled.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return;
            }
            match self.ring.submit() {
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                    // A CQ backlog blocks submission: move it aside so the
                    // kernel can take the SQ (handled on the next turn).
                    for cqe in self.ring.completion() {
                        self.cqe_backlog
                            .push((cqe.user_data(), cqe.result(), cqe.flags()));
                    }
                }
                Err(err) => tracing::warn!(shard = self.id, %err, "io_uring submit failed"),
                Ok(_) => {}
            }
        }
    }

    fn arm_eventfd(&mut self) {
        let fd = self.inbox.eventfd();
        let e = opcode::Read::new(
            types::Fd(fd),
            (&mut *self.eventfd_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(encode_ud(Kind::EventFd, 0, 0));
        self.push_sqe(&e);
    }

    fn arm_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick_ts as *const types::Timespec)
            .build()
            .user_data(encode_ud(Kind::Tick, 0, 0));
        self.push_sqe(&e);
    }

    fn arm_accept(&mut self, idx: usize) {
        if self.stopping.is_some() || self.accept_armed[idx] {
            return;
        }
        let fd = self.listeners[idx].0.as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .allocate_file_index(true)
            .build()
            .user_data(encode_ud(Kind::Accept, 0, idx as u32));
        self.push_sqe(&e);
        self.accept_armed[idx] = true;
    }

    pub(super) fn arm_recv(&mut self, key: u32) {
        let c = &mut self.conns[key as usize];
        c.flags |= F_RECV_ARMED;
        let e = opcode::RecvMulti::new(types::Fixed(c.slot), BGID)
            .build()
            .user_data(encode_ud(Kind::Recv, c.gen, key));
        self.push_sqe(&e);
    }

    /// Runs until shutdown completes.
    pub fn run(&mut self) {
        loop {
            self.drain_inbox();
            self.flush_batches(false);
            self.flush_sends();
            if self.inbox.waker().shutdown_requested() && self.stopping.is_none() {
                self.begin_shutdown();
                continue;
            }
            if let Some(deadline) = self.stopping {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
            // Held room batches bound the sleep (the wait's own timeout,
            // no timer request per room).
            let held = self
                .batch
                .next_due()
                .map(|due| due.saturating_duration_since(Instant::now()));
            let busy = !self.dirty.is_empty()
                || !self.cqe_backlog.is_empty()
                || self.inbox.pending() > 0
                || held.is_some_and(|d| d.is_zero());
            let res = if !busy && self.inbox.prepare_to_sleep() {
                let r = match held {
                    Some(d) => {
                        let ts = types::Timespec::from(d);
                        let args = types::SubmitArgs::new().timespec(&ts);
                        self.ring.submitter().submit_with_args(1, &args)
                    }
                    None => self.ring.submit_and_wait(1),
                };
                self.inbox.awake();
                r
            } else {
                self.ring.submit()
            };
            if let Err(e) = res {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::ETIME)
                ) {
                    tracing::error!(shard = self.id, error = %e, "io_uring_enter failed");
                }
            }
            let t0 = Instant::now();
            self.cqes.clear();
            self.cqes.append(&mut self.cqe_backlog);
            for cqe in self.ring.completion() {
                self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
            let cqes = std::mem::take(&mut self.cqes);
            for &(ud, res, flags) in &cqes {
                self.on_cqe(ud, res, flags);
            }
            self.cqes = cqes;
            self.loop_turns.record(t0.elapsed());
        }
        self.send_report(true);
        tracing::debug!(shard = self.id, "shard stopped");
    }

    fn drain_inbox(&mut self) {
        for _ in 0..INBOX_BUDGET {
            match self.inbox.try_recv() {
                Some(m) => self.on_msg(m),
                None => break,
            }
        }
    }

    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32) {
        let (kind, gen, key) = decode_ud(ud);
        match kind {
            k if k == Kind::Recv as u8 => self.on_recv(gen, key, res, flags),
            k if k == Kind::Send as u8 => self.on_send(gen, key, res),
            k if k == Kind::Accept as u8 => self.on_accept(key as usize, res, flags),
            k if k == Kind::Close as u8 => self.on_closed(gen, key),
            k if k == Kind::EventFd as u8 => self.arm_eventfd(),
            k if k == Kind::Tick as u8 => {
                self.on_tick();
                self.arm_tick();
            }
            _ => {}
        }
    }

    pub(super) fn live(&mut self, gen: u32, key: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(key as usize)
            .filter(|c| gen_bits(c.gen) == gen)
    }

    fn on_accept(&mut self, idx: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed[idx] = false;
        }
        if res >= 0 {
            let slot = res as u32;
            if self.stopping.is_some() {
                let e = opcode::Close::new(types::Fixed(slot))
                    .build()
                    .user_data(encode_ud(Kind::Cancel, 0, 0));
                self.push_sqe(&e);
                return;
            }
            self.counters.accepts += 1;
            let gen = self.next_gen;
            self.next_gen = gen_bits(gen.wrapping_add(1)).max(1);
            let proto = self.listeners[idx].1;
            let key = self.conns.insert(Conn::new(gen, slot, proto)) as u32;
            self.arm_recv(key);
            let deadline = self.now + self.s.handshake_timeout;
            self.set_deadline(key, deadline);
        } else if res == -libc::ENFILE || res == -libc::EMFILE {
            self.counters.accept_table_full += 1;
            if self.enfile_logged < 10 || self.counters.accept_table_full.is_power_of_two() {
                self.enfile_logged += 1;
                tracing::warn!(
                    shard = self.id,
                    table = self.s.max_conns,
                    refused = self.counters.accept_table_full,
                    "connection table full: accept refused (more shards or a higher nofile limit hold more)"
                );
            }
            // Re-armed on the next tick rather than spinning on a full table.
            return;
        } else if res != -libc::ECANCELED {
            self.counters.accept_errors += 1;
        }
        if !self.accept_armed[idx] && res != -libc::ECANCELED {
            self.arm_accept(idx);
        }
    }

    fn on_recv(&mut self, gen: u32, key: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let Some(c) = self.live(gen, key) else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            c.flags &= !F_RECV_ARMED;
        }
        let state = c.state;
        if res > 0 {
            if let Some(bid) = bid {
                if matches!(state, State::Upgrade | State::Auth | State::Open) {
                    self.counters.bytes_in += res as u64;
                    // SAFETY: the kernel filled `res` bytes of buffer `bid`; it is
                    // recycled right after the slice's last use below.
                    let data = unsafe { self.bufs.buf(bid, res as usize) };
                    self.on_data(key, data);
                }
                self.bufs.recycle(bid);
            }
        } else if res == 0 {
            self.begin_close(key, CloseReason::PeerClosed, None);
            return;
        } else if res != -libc::ENOBUFS && res != -libc::ECANCELED {
            self.begin_close(key, CloseReason::IoError, None);
            return;
        }
        if !more {
            if let Some(c) = self.live(gen, key) {
                if matches!(c.state, State::Upgrade | State::Auth | State::Open)
                    && !c.has(F_RECV_ARMED)
                {
                    self.counters.recv_rearms += 1;
                    self.arm_recv(key);
                }
            }
        }
    }

    /// Sets a connection's deadline (tick), filing a wheel entry if the new
    /// deadline is earlier than the one filed.
    pub(super) fn set_deadline(&mut self, key: u32, deadline: u32) {
        let c = &mut self.conns[key as usize];
        c.deadline = deadline;
        if c.timer_at <= self.wheel.now() || deadline < c.timer_at {
            let gen = gen_bits(c.gen);
            c.timer_at = self.wheel.schedule(key, gen, deadline);
        }
    }

    fn on_tick(&mut self) {
        let now = self.start.elapsed().as_secs() as u32;
        if now > self.now {
            self.now = now;
            let mut fired = std::mem::take(&mut self.fired);
            fired.clear();
            self.wheel.advance(now, &mut fired);
            for &(key, gen, t) in &fired {
                let Some(c) = self.conns.get_mut(key as usize) else {
                    continue;
                };
                if gen_bits(c.gen) != gen || c.timer_at != t {
                    continue;
                }
                if c.deadline > t {
                    c.timer_at = self.wheel.schedule(key, gen, c.deadline);
                    continue;
                }
                c.timer_at = 0;
                self.expire(key);
            }
            self.fired = fired;
            for idx in 0..2 {
                self.arm_accept(idx);
            }
        }
        if Instant::now() >= self.next_report {
            self.next_report = Instant::now() + self.s.report_interval;
            self.send_report(false);
        }
    }

    fn begin_shutdown(&mut self) {
        // Held room messages go out before the goodbyes.
        self.flush_batches(true);
        let linger = self.s.close_linger as u64 + 1;
        self.stopping = Some(Instant::now() + std::time::Duration::from_secs(linger));
        for idx in 0..2 {
            let e = opcode::AsyncCancel::new(encode_ud(Kind::Accept, 0, idx as u32))
                .build()
                .user_data(encode_ud(Kind::Cancel, 0, 0));
            self.push_sqe(&e);
        }
        let _ = self.ring.submit();
        self.listeners.clear();
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            match self.conns[key as usize].state {
                State::Auth | State::Open => {
                    let bye = self.farewell(key, 1001, "server shutting down");
                    self.begin_close(key, CloseReason::Shutdown, Some(bye));
                }
                State::Upgrade => self.begin_close(key, CloseReason::Shutdown, None),
                _ => {}
            }
        }
    }

    /// Sends a report to control (dropped and counted if its ring is full).
    pub(super) fn send_report(&mut self, final_report: bool) {
        let mut r = ShardReport::empty(self.id);
        for (_, c) in self.conns.iter() {
            match (c.state, c.proto) {
                (State::Open, Proto::Ws) => r.conns_ws += 1,
                (State::Open, Proto::Tcp) => r.conns_tcp += 1,
                (State::Upgrade | State::Auth, _) => r.conns_pending += 1,
                _ => {}
            }
        }
        r.rooms = self
            .rooms
            .iter()
            .map(|room| (room.name.clone(), room.members.len() as u32))
            .collect();
        r.index = IndexSizes {
            slab: self.conns.len(),
            rooms: self.rooms.len(),
            room_members: self.rooms.member_count(),
            keys: self.keys.len(),
            mids: self.mids.heads.len(),
            timers: self.wheel.len(),
            send_queues: self.conns.iter().filter(|(_, c)| c.out.is_some()).count(),
            spill_buffers: self
                .conns
                .iter()
                .filter(|(_, c)| c.ext.as_ref().is_some_and(|e| !e.spill.is_empty()))
                .count(),
            filters: self.filters.len(),
        };
        r.counters = self.counters.clone();
        r.loop_turns = self.loop_turns.clone();
        r.final_report = final_report;
        if self.inbox.send_report(Box::new(r)).is_err() {
            self.counters.reports_dropped += 1;
        }
    }
}
