//! Closing connections: timeouts, the close sequence (farewell, cancel,
//! close of the direct descriptor) and removal from the room, key and mid
//! indexes, so that no index keeps an entry for a closed connection.

use bytes::Bytes;
use io_uring::{opcode, squeue, types};

use super::conn::{Proto, State, F_CLOSE_DONE, F_DIRTY, F_RECV_ARMED, F_SEND_INFLIGHT};
use super::event_loop::Shard;
use super::index::NIL;
use super::uring::{encode_ud, Kind};
use crate::fanout::CloseReason;

impl Shard {
    pub(super) fn on_closed(&mut self, gen: u32, key: u32) {
        if let Some(c) = self.live(gen, key) {
            c.flags |= F_CLOSE_DONE;
            self.maybe_remove(key);
        }
    }

    pub(super) fn maybe_remove(&mut self, key: u32) {
        if let Some(c) = self.conns.get(key as usize) {
            if c.state == State::Closed && c.has(F_CLOSE_DONE) && !c.has(F_SEND_INFLIGHT) {
                let c = self.conns.remove(key as usize);
                self.filters.release(c.filter);
            }
        }
    }

    pub(super) fn expire(&mut self, key: u32) {
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
    pub(super) fn push_sqe_chain(&mut self, chain: &[Option<squeue::Entry>]) {
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

    pub(super) fn mid_unlink(&mut self, key: u32) {
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
}
