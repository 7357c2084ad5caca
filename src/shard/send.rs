//! The send path: one send SQE per connection with queued output per loop
//! turn, and the completion that resumes partial sends or finishes a close.

use io_uring::{opcode, types};

use super::conn::{OutQueue, State, F_DIRTY, F_SEND_INFLIGHT, OUT_POOL};
use super::event_loop::Shard;
use super::uring::{encode_ud, gen_bits, Kind};
use crate::fanout::CloseReason;

impl Shard {
    pub(super) fn on_send(&mut self, gen: u32, key: u32, res: i32) {
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

    /// Keeps an emptied send queue for reuse (bounded, see [`OUT_POOL`]).
    pub(super) fn recycle_out(&mut self, q: Box<OutQueue>) {
        if self.out_pool.len() < OUT_POOL && q.reusable() {
            self.out_pool.push(q);
        }
    }

    /// Issues at most one send per connection with queued output: a plain
    /// Send for one buffer (cheaper in the kernel than SendMsg's msghdr and
    /// iovec import), SendMsg for several.
    pub(super) fn flush_sends(&mut self) {
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
}
