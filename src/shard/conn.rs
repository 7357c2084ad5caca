//! Per-connection state. Kept small (see `size_of` test): everything that
//! only some connections need lives behind one of two optional boxes,
//! allocated on demand and freed when empty.

use std::collections::VecDeque;
use std::sync::Arc;

use ahash::AHashMap;
use bytes::{Buf, Bytes};
use corecast_protocol::ws::frame::FrameDecoder;

use super::index::NIL;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Proto {
    Ws,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// WS: waiting for the HTTP upgrade request.
    Upgrade,
    /// Waiting for op 7.
    Auth,
    /// Authenticated.
    Open,
    /// Flushing a goodbye before closing.
    Closing,
    /// Cancel + close submitted; waiting for completions.
    Closed,
}

pub const F_SEND_INFLIGHT: u8 = 1;
pub const F_DIRTY: u8 = 2;
pub const F_RECV_ARMED: u8 = 4;
pub const F_CLOSE_DONE: u8 = 8;

pub struct Conn {
    pub gen: u32,
    /// Index in the ring's registered file table.
    pub slot: u32,
    pub room: u32,
    pub room_pos: u32,
    /// Tick (seconds since shard start) the connection expires at.
    pub deadline: u32,
    /// Tick its timing-wheel entry fires at.
    pub timer_at: u32,
    pub mid_prev: u32,
    pub mid_next: u32,
    pub mid: i64,
    /// Ops the client receives: an id in the shard's [`Filters`]
    /// ([`NO_FILTER`] = all). Interned so that the usual case (every client
    /// sending the same `accepts`) costs no allocation per connection.
    pub filter: u32,
    pub proto: Proto,
    pub state: State,
    pub flags: u8,
    pub out: Option<Box<OutQueue>>,
    pub ext: Option<Box<ConnExt>>,
}

impl Conn {
    pub fn new(gen: u32, slot: u32, proto: Proto) -> Conn {
        Conn {
            gen,
            slot,
            room: NIL,
            room_pos: 0,
            deadline: 0,
            timer_at: 0,
            mid_prev: NIL,
            mid_next: NIL,
            mid: 0,
            filter: NO_FILTER,
            proto,
            state: if proto == Proto::Ws {
                State::Upgrade
            } else {
                State::Auth
            },
            flags: 0,
            out: None,
            ext: None,
        }
    }

    #[inline]
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub fn ext_mut(&mut self) -> &mut ConnExt {
        self.ext.get_or_insert_with(Default::default)
    }

    /// Frees the extension box when nothing in it is in use.
    pub fn trim_ext(&mut self) {
        if self.ext.as_ref().is_some_and(|e| e.is_empty()) {
            self.ext = None;
        }
    }

    pub fn custom_key(&self) -> Option<&str> {
        self.ext.as_ref().and_then(|e| e.key.as_deref())
    }

    pub fn accepts(&self, filters: &Filters, op: u32) -> bool {
        filters.get(self.filter).is_none_or(|f| f.accepts(op))
    }

    pub fn has_filter(&self) -> bool {
        self.filter != NO_FILTER
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.queued_bytes)
    }
}

/// Rarely needed per-connection state.
#[derive(Default)]
pub struct ConnExt {
    /// Bytes of a frame / packet / HTTP request straddling two receives.
    pub spill: Vec<u8>,
    /// Open fragmented WS message.
    pub frag: Option<Box<Fragmented>>,
    /// Key chosen by the client (server-assigned keys are not stored).
    pub key: Option<Box<str>>,
    /// Rooms the token allows; none = any.
    pub rooms_allowed: Option<Arc<[Box<str>]>>,
}

impl ConnExt {
    pub fn is_empty(&self) -> bool {
        self.spill.is_empty()
            && self.frag.is_none()
            && self.key.is_none()
            && self.rooms_allowed.is_none()
    }
}

/// A fragmented WS message being reassembled.
pub struct Fragmented {
    pub decoder: FrameDecoder,
    pub message: Vec<u8>,
}

/// Which ops a connection receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpFilter {
    /// Only these ops (sorted).
    Only(Vec<u32>),
    /// Every op but these (sorted): unsubscribing without a prior subscribe.
    Except(Vec<u32>),
}

impl OpFilter {
    pub fn accepts(&self, op: u32) -> bool {
        match self {
            OpFilter::Only(v) => v.binary_search(&op).is_ok(),
            OpFilter::Except(v) => v.binary_search(&op).is_err(),
        }
    }

    /// Adds ops to what is received (op 14).
    pub fn subscribe(f: Option<OpFilter>, ops: &[u32]) -> Option<OpFilter> {
        match f {
            None => None,
            Some(OpFilter::Only(mut v)) => {
                v.extend_from_slice(ops);
                v.sort_unstable();
                v.dedup();
                Some(OpFilter::Only(v))
            }
            Some(OpFilter::Except(mut v)) => {
                v.retain(|o| !ops.contains(o));
                if v.is_empty() {
                    None
                } else {
                    Some(OpFilter::Except(v))
                }
            }
        }
    }

    /// Removes ops from what is received (op 16).
    pub fn unsubscribe(f: Option<OpFilter>, ops: &[u32]) -> Option<OpFilter> {
        match f {
            None => {
                let mut v = ops.to_vec();
                v.sort_unstable();
                v.dedup();
                Some(OpFilter::Except(v))
            }
            Some(OpFilter::Only(mut v)) => {
                v.retain(|o| !ops.contains(o));
                Some(OpFilter::Only(v))
            }
            Some(OpFilter::Except(mut v)) => {
                v.extend_from_slice(ops);
                v.sort_unstable();
                v.dedup();
                Some(OpFilter::Except(v))
            }
        }
    }
}

/// `Conn::filter` of a connection that receives every op.
pub const NO_FILTER: u32 = 0;

/// The shard's distinct op filters, shared by reference count: clients
/// of one application send the same `accepts`, so 100,000 connections
/// hold one filter, not 100,000 boxed vectors.
#[derive(Default)]
pub struct Filters {
    by_value: AHashMap<OpFilter, u32>,
    /// Entry `id - 1`: the filter and its users (0 = free slot).
    entries: Vec<(Option<OpFilter>, u32)>,
    free: Vec<u32>,
}

#[allow(clippy::len_without_is_empty)]
impl Filters {
    /// The id of `f` (none = [`NO_FILTER`]), counting one more user.
    pub fn intern(&mut self, f: Option<OpFilter>) -> u32 {
        let Some(f) = f else {
            return NO_FILTER;
        };
        if let Some(&id) = self.by_value.get(&f) {
            self.entries[id as usize - 1].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize - 1] = (Some(f.clone()), 1);
                id
            }
            None => {
                self.entries.push((Some(f.clone()), 1));
                self.entries.len() as u32
            }
        };
        self.by_value.insert(f, id);
        id
    }

    /// Drops one user of `id`; the filter goes when it has none.
    pub fn release(&mut self, id: u32) {
        if id == NO_FILTER {
            return;
        }
        let e = &mut self.entries[id as usize - 1];
        e.1 -= 1;
        if e.1 == 0 {
            if let Some(f) = e.0.take() {
                self.by_value.remove(&f);
            }
            self.free.push(id);
        }
    }

    pub fn get(&self, id: u32) -> Option<&OpFilter> {
        if id == NO_FILTER {
            return None;
        }
        self.entries[id as usize - 1].0.as_ref()
    }

    /// Distinct filters in use.
    pub fn len(&self) -> usize {
        self.by_value.len()
    }
}

/// Most iovecs per SendMsg.
pub const MAX_IOV: usize = 64;

/// Emptied send queues a shard keeps for reuse (each ~0.5 KiB with its
/// vectors): a frame to an idle connection then costs no allocation.
pub const OUT_POOL: usize = 512;

/// Output waiting for, or in, a send. Allocated when the first bytes are
/// queued, freed when everything was sent.
pub struct OutQueue {
    pub queue: VecDeque<Bytes>,
    /// Bytes queued plus in flight (what the byte cap limits).
    pub queued_bytes: usize,
    /// Buffers referenced by the SendMsg in flight.
    pub inflight: Vec<Bytes>,
    pub iov: Vec<libc::iovec>,
    pub msg: libc::msghdr,
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue {
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: Vec::new(),
            iov: Vec::new(),
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            msg: unsafe { std::mem::zeroed() },
        }
    }
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        self.queued_bytes += b.len();
        self.queue.push_back(b);
    }

    /// Moves up to [`MAX_IOV`] buffers into flight; for more than one,
    /// points the msghdr at them (one buffer goes out with a plain send).
    /// Returns how many buffers are in flight (0: nothing to send).
    pub fn prepare_send(&mut self) -> usize {
        debug_assert!(self.inflight.is_empty());
        while self.inflight.len() < MAX_IOV {
            match self.queue.pop_front() {
                Some(b) if b.is_empty() => continue,
                Some(b) => self.inflight.push(b),
                None => break,
            }
        }
        if self.inflight.len() <= 1 {
            return self.inflight.len();
        }
        self.iov.clear();
        self.iov.extend(self.inflight.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut _,
            iov_len: b.len(),
        }));
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        self.inflight.len()
    }

    /// Whether an emptied queue is worth pooling (its vectors did not grow
    /// past the usual few entries).
    pub fn reusable(&self) -> bool {
        self.is_idle()
            && self.queued_bytes == 0
            && self.queue.capacity() <= 2 * MAX_IOV
            && self.inflight.capacity() <= MAX_IOV
            && self.iov.capacity() <= MAX_IOV
    }

    /// Accounts `sent` bytes of the send in flight; what was not sent goes
    /// back to the front of the queue, in order.
    pub fn complete_send(&mut self, mut sent: usize) {
        self.queued_bytes -= sent.min(self.queued_bytes);
        let mut rest = Vec::new();
        for mut b in self.inflight.drain(..) {
            if sent >= b.len() {
                sent -= b.len();
            } else {
                b.advance(sent);
                sent = 0;
                rest.push(b);
            }
        }
        for b in rest.into_iter().rev() {
            self.queue.push_front(b);
        }
    }

    /// Drops everything not in flight; returns the bytes dropped.
    pub fn discard_queued(&mut self) -> usize {
        let n: usize = self.queue.iter().map(|b| b.len()).sum();
        self.queue.clear();
        self.queued_bytes -= n;
        n
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_is_small() {
        assert!(
            std::mem::size_of::<Conn>() <= 64,
            "Conn is {} bytes",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn partial_send_requeues_in_order() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        assert_eq!(q.prepare_send(), 2);
        q.complete_send(4);
        assert_eq!(q.queued_bytes, 2);
        assert_eq!(
            q.queue.iter().map(|b| &b[..]).collect::<Vec<_>>(),
            vec![b"ef"]
        );
    }

    #[test]
    fn one_buffer_goes_without_iovecs_and_resumes() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        assert_eq!(q.prepare_send(), 1);
        assert!(q.iov.is_empty(), "a single buffer needs no msghdr");
        q.complete_send(2);
        assert_eq!(q.prepare_send(), 1);
        assert_eq!(&q.inflight[0][..], b"cdef");
        q.complete_send(4);
        assert!(q.is_idle() && q.reusable());
        assert_eq!(q.queued_bytes, 0);
        assert_eq!(q.prepare_send(), 0);
    }

    #[test]
    fn filters_are_shared_and_released() {
        let mut t = Filters::default();
        assert_eq!(t.intern(None), NO_FILTER);
        let a = t.intern(Some(OpFilter::Only(vec![1000])));
        let b = t.intern(Some(OpFilter::Only(vec![1000])));
        let c = t.intern(Some(OpFilter::Except(vec![1000])));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(t.len(), 2);
        t.release(a);
        assert!(t.get(b).unwrap().accepts(1000));
        t.release(b);
        t.release(c);
        t.release(NO_FILTER);
        assert_eq!(t.len(), 0);
        let d = t.intern(Some(OpFilter::Only(vec![7])));
        assert!(d == a || d == c, "a freed id is reused");
    }

    #[test]
    fn filters() {
        let f = OpFilter::unsubscribe(None, &[1000]);
        assert!(!f.as_ref().unwrap().accepts(1000) && f.as_ref().unwrap().accepts(1001));
        assert_eq!(OpFilter::subscribe(f, &[1000]), None);
        let f = Some(OpFilter::Only(vec![1000]));
        let f = OpFilter::subscribe(f, &[1002]).unwrap();
        assert!(f.accepts(1002) && !f.accepts(1001));
    }
}
