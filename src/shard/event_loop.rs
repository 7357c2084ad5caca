//! The shard: its ring, connections and loop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::conn::{
    Conn, Filters, OutQueue, Proto, State, F_CLOSE_DONE, F_DIRTY, F_RECV_ARMED, F_SEND_INFLIGHT,
    OUT_POOL,
};
use super::deliver::RoomBatch;
use super::index::{Keys, Mids, Rooms, NIL};
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
            if let Err(err) = self.ring.submit() {
                tracing::warn!(shard = self.id, %err, "io_uring submit failed");
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

    fn live(&mut self, gen: u32, key: u32) -> Option<&mut Conn> {
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

    fn on_send(&mut self, gen: u32, key: u32, res: i32) {
        let Some(c) = self
            .conns
            .get_mut(key as usize)
            .filter(|c| gen_bits(c.gen) == gen)
        else {
            return;
        };
        c.flags &= !F_SEND_INFLIGHT;
        let state = c.state;
        if res >= 0 {
            self.counters.bytes_out += res as u64;
            self.counters.sends += 1;
            let out = c.out.as_mut().expect("send in flight has a queue");
            out.complete_send(res as usize);
            if out.is_idle() {
                if let Some(q) = c.out.take() {
                    self.recycle_out(q);
                }
                if state == State::Closing {
                    self.finish_close(key);
                }
            } else if !c.has(F_DIRTY) && state != State::Closed {
                c.flags |= F_DIRTY;
                self.dirty.push(key);
            }
        } else {
            if let Some(out) = c.out.as_mut() {
                out.inflight.clear();
            }
            match state {
                State::Closing => self.finish_close(key),
                State::Closed => {}
                _ => self.begin_close(key, CloseReason::IoError, None),
            }
        }
        self.maybe_remove(key);
    }

    fn on_closed(&mut self, gen: u32, key: u32) {
        if let Some(c) = self.live(gen, key) {
            c.flags |= F_CLOSE_DONE;
            self.maybe_remove(key);
        }
    }

    fn maybe_remove(&mut self, key: u32) {
        if let Some(c) = self.conns.get(key as usize) {
            if c.state == State::Closed && c.has(F_CLOSE_DONE) && !c.has(F_SEND_INFLIGHT) {
                let c = self.conns.remove(key as usize);
                self.filters.release(c.filter);
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

    fn expire(&mut self, key: u32) {
        let c = &self.conns[key as usize];
        match c.state {
            State::Upgrade => self.begin_close(key, CloseReason::HandshakeTimeout, None),
            State::Auth => {
                let bye = self.farewell(key, 1008, "auth timeout");
                self.begin_close(key, CloseReason::HandshakeTimeout, Some(bye));
            }
            State::Open => {
                let bye = self.farewell(key, 1000, "heartbeat timeout");
                self.begin_close(key, CloseReason::HeartbeatTimeout, Some(bye));
            }
            State::Closing => {
                if let Some(out) = self.conns[key as usize].out.as_mut() {
                    out.discard_queued();
                }
                self.finish_close(key);
            }
            State::Closed => {}
        }
    }

    /// Starts closing: counts the reason, removes the connection from every
    /// index, then flushes `farewell` (if any; other queued output is
    /// dropped) before the socket is closed.
    pub(super) fn begin_close(&mut self, key: u32, reason: CloseReason, farewell: Option<Bytes>) {
        let Some(c) = self.conns.get(key as usize) else {
            return;
        };
        if matches!(c.state, State::Closing | State::Closed) {
            return;
        }
        self.counters.closes[reason as usize] += 1;
        self.unindex(key);
        let c = &mut self.conns[key as usize];
        c.state = State::Closing;
        // Replies already queued (e.g. the op-8 error) go out before the
        // goodbye, except when the queue is the problem or nobody listens.
        if farewell.is_none() || reason == CloseReason::SlowConsumer {
            if let Some(out) = c.out.as_mut() {
                out.discard_queued();
            }
        }
        match farewell {
            Some(b) => {
                c.out.get_or_insert_with(Default::default).push(b);
                if !c.has(F_DIRTY) {
                    c.flags |= F_DIRTY;
                    self.dirty.push(key);
                }
                let d = self.now + self.s.close_linger;
                self.set_deadline(key, d);
            }
            None => {
                if !c.has(F_SEND_INFLIGHT) {
                    self.finish_close(key);
                } else {
                    let d = self.now + self.s.close_linger;
                    self.set_deadline(key, d);
                }
            }
        }
    }

    /// Cancels the connection's requests and closes its direct descriptor.
    pub(super) fn finish_close(&mut self, key: u32) {
        let c = &mut self.conns[key as usize];
        if c.state == State::Closed {
            return;
        }
        c.state = State::Closed;
        c.ext = None;
        if let Some(out) = c.out.as_mut() {
            out.discard_queued();
        }
        let (slot, gen) = (c.slot, c.gen);
        // Cancel by user_data, not by fd: an fd match makes the kernel walk
        // every pending request of the ring (O(connections) per close, which
        // turned a mass disconnect into tens of seconds of CLOSE_WAIT).
        let mut chain: [Option<squeue::Entry>; 3] = [None, None, None];
        if c.has(F_RECV_ARMED) {
            chain[0] = Some(
                opcode::AsyncCancel::new(encode_ud(Kind::Recv, gen, key))
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK)
                    .user_data(encode_ud(Kind::Cancel, gen, key)),
            );
        }
        if c.has(F_SEND_INFLIGHT) {
            chain[1] = Some(
                opcode::AsyncCancel::new(encode_ud(Kind::Send, gen, key))
                    .build()
                    .flags(squeue::Flags::IO_HARDLINK)
                    .user_data(encode_ud(Kind::Cancel, gen, key)),
            );
        }
        chain[2] = Some(
            opcode::Close::new(types::Fixed(slot))
                .build()
                .user_data(encode_ud(Kind::Close, gen, key)),
        );
        self.push_sqe_chain(&chain);
    }

    /// Queues hard-linked SQEs together (a link only binds SQEs submitted
    /// in one batch, so room is made for all of them first).
    fn push_sqe_chain(&mut self, chain: &[Option<squeue::Entry>]) {
        let n = chain.iter().flatten().count();
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            let _ = self.ring.submit();
        }
        for e in chain.iter().flatten() {
            self.push_sqe(e);
        }
    }

    /// Removes a connection from the room, key and mid indexes.
    pub(super) fn unindex(&mut self, key: u32) {
        let c = &mut self.conns[key as usize];
        let ws = c.proto == Proto::Ws;
        if c.room != NIL {
            let (room, pos) = (c.room, c.room_pos);
            c.room = NIL;
            if let Some(moved) = self.rooms.leave(room, pos, ws) {
                self.conns[moved as usize].room_pos = pos;
            }
        }
        let c = &mut self.conns[key as usize];
        if c.state == State::Open {
            if let Some(k) = c.ext.as_mut().and_then(|e| e.key.take()) {
                self.keys.remove(&k, key);
            }
            self.mid_unlink(key);
        }
    }

    pub(super) fn mid_link(&mut self, key: u32) {
        let mid = self.conns[key as usize].mid;
        let head = self.mids.heads.insert(mid, key).unwrap_or(NIL);
        let c = &mut self.conns[key as usize];
        c.mid_prev = NIL;
        c.mid_next = head;
        if head != NIL {
            self.conns[head as usize].mid_prev = key;
        }
    }

    fn mid_unlink(&mut self, key: u32) {
        let c = &mut self.conns[key as usize];
        let (prev, next, mid) = (c.mid_prev, c.mid_next, c.mid);
        c.mid_prev = NIL;
        c.mid_next = NIL;
        if prev != NIL {
            self.conns[prev as usize].mid_next = next;
        } else if next != NIL {
            self.mids.heads.insert(mid, next);
        } else {
            self.mids.heads.remove(&mid);
        }
        if next != NIL {
            self.conns[next as usize].mid_prev = prev;
        }
    }

    /// Keeps an emptied send queue for reuse (bounded, see [`OUT_POOL`]).
    fn recycle_out(&mut self, q: Box<OutQueue>) {
        if self.out_pool.len() < OUT_POOL && q.reusable() {
            self.out_pool.push(q);
        }
    }

    /// Issues at most one send per connection with queued output: a plain
    /// Send for one buffer (cheaper in the kernel than SendMsg's msghdr and
    /// iovec import), SendMsg for several.
    fn flush_sends(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(c) = self.conns.get_mut(key as usize) else {
                continue;
            };
            c.flags &= !F_DIRTY;
            if c.has(F_SEND_INFLIGHT) || c.state == State::Closed {
                continue;
            }
            let Some(out) = c.out.as_mut() else { continue };
            let e = match out.prepare_send() {
                0 => {
                    if let Some(q) = c.out.take() {
                        self.recycle_out(q);
                    }
                    continue;
                }
                1 => {
                    let b = &out.inflight[0];
                    opcode::Send::new(types::Fixed(c.slot), b.as_ptr(), b.len() as u32)
                        .flags(libc::MSG_NOSIGNAL)
                        .build()
                }
                _ => opcode::SendMsg::new(types::Fixed(c.slot), &out.msg as *const libc::msghdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build(),
            }
            .user_data(encode_ud(Kind::Send, c.gen, key));
            c.flags |= F_SEND_INFLIGHT;
            self.push_sqe(&e);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
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
