//! Pushes from the fan-out ring → connection send queues: frame once, send
//! many (`Bytes` clones), room batching, the byte cap.
//!
//! Room batching: a room's pushes are held from its first pending push
//! until `fanout.batch_window_ms` has passed (0 = until the end of the loop
//! turn), then sent to each member as one op-9 container. Rooms become
//! pending in arrival order and share one window length, so the pending
//! list is sorted by due time: the loop flushes a prefix and sleeps until
//! the front is due (the ring wait's timeout, no timer per room).
//! Key, mid and `all` pushes are sent at once; with a window > 0 they may
//! overtake room messages held for the same client (as in goim, whose room
//! batches are also sent apart from direct pushes).
//!
//! Size bounds: a room's held pushes are sent early, as one container,
//! once the next push would take them past [`ROOM_BATCH_MAX_MSGS`] or
//! [`room_batch_max_bytes`] (`min(send_cap / 4, 64 KiB)` of container
//! bytes); the pushes after it form the room's next container, so order
//! within a room holds. A quarter of the byte cap leaves a member that keeps
//! up room for a few containers behind one in flight, so a burst never
//! drops or closes it for one container alone. Across rooms, held bytes are
//! capped at [`SHARD_HELD_MAX_BYTES`]: past it, rooms are sent from the
//! front of the due-ordered list.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};

use super::conn::{Proto, State, F_DIRTY};
use super::event_loop::Shard;
use super::index::NIL;
use crate::config::SendPolicy;
use crate::fanout::{encode::ws_container_frame, CloseReason, Push, PushTarget, ShardMsg};

/// Most pushes one room container holds.
pub const ROOM_BATCH_MAX_MSGS: usize = 1024;
/// Upper bound of one room container's bytes (see [`room_batch_max_bytes`]).
pub const ROOM_BATCH_MAX_BYTES: usize = 64 * 1024;
/// Most packet bytes a shard holds in room batches at once.
pub const SHARD_HELD_MAX_BYTES: usize = 4 << 20;
/// A container's own bytes around its packets: the op-9 packet header (16)
/// and the largest WS frame header (10), rounded up.
const CONTAINER_OVERHEAD: usize = 32;

/// Most bytes of one room container (WS frame included) for a per-connection
/// byte cap `send_cap`. A single push larger than this is still sent, alone.
pub fn room_batch_max_bytes(send_cap: usize) -> usize {
    (send_cap / 4).min(ROOM_BATCH_MAX_BYTES)
}

/// One room's held pushes.
struct PendingRoom {
    id: u32,
    name: Arc<str>,
    /// When the window of its first push ends.
    due: Instant,
    msgs: Vec<Push>,
    /// Sum of `msgs`' packet lengths.
    bytes: usize,
}

/// Room pushes held for their batching window, rooms in the order their
/// first pending push arrived (hence sorted by `due`).
#[derive(Default)]
pub struct RoomBatch {
    pending: VecDeque<PendingRoom>,
    /// Sequence number of `pending[0]`.
    base: u64,
    /// Room id → sequence number of its pending entry.
    by_room: AHashMap<u32, u64>,
    /// Emptied message vectors, reused.
    spare: Vec<Vec<Push>>,
    /// Sum of all held packet lengths.
    held_bytes: usize,
}

impl RoomBatch {
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the first held room is due (none held: `None`).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|r| r.due)
    }

    /// Adds `p` to room `id`'s pending batch, opening one due at
    /// `due()` if the room has none. If `p` would take the held pushes past
    /// `max_bytes` (container bytes) or [`ROOM_BATCH_MAX_MSGS`], they are
    /// returned, to be sent now, and `p` starts the room's next container
    /// (same entry, same due time).
    fn add(
        &mut self,
        id: u32,
        name: &Arc<str>,
        p: Push,
        max_bytes: usize,
        due: impl FnOnce() -> Instant,
    ) -> Option<(Arc<str>, Vec<Push>)> {
        let len = p.packet.len();
        self.held_bytes += len;
        if let Some(&seq) = self.by_room.get(&id) {
            let e = &mut self.pending[(seq - self.base) as usize];
            // A room id freed and reused by another room within the window
            // gets an entry of its own.
            if Arc::ptr_eq(&e.name, name) || e.name == *name {
                let full = !e.msgs.is_empty()
                    && (e.msgs.len() >= ROOM_BATCH_MAX_MSGS
                        || e.bytes + len + CONTAINER_OVERHEAD > max_bytes);
                let out = if full {
                    let fresh = self.spare.pop().unwrap_or_default();
                    self.held_bytes -= e.bytes;
                    e.bytes = 0;
                    Some((e.name.clone(), std::mem::replace(&mut e.msgs, fresh)))
                } else {
                    None
                };
                e.msgs.push(p);
                e.bytes += len;
                return out;
            }
        }
        let mut msgs = self.spare.pop().unwrap_or_default();
        msgs.push(p);
        self.by_room
            .insert(id, self.base + self.pending.len() as u64);
        self.pending.push_back(PendingRoom {
            id,
            name: name.clone(),
            due: due(),
            msgs,
            bytes: len,
        });
        None
    }

    /// Whether the held bytes are past [`SHARD_HELD_MAX_BYTES`].
    fn over_held_cap(&self) -> bool {
        self.held_bytes > SHARD_HELD_MAX_BYTES
    }

    /// Takes the front entry if `all` or it is due at `now`.
    fn pop_due(&mut self, all: bool, now: Instant) -> Option<PendingRoom> {
        if !all && self.pending.front()?.due > now {
            return None;
        }
        let e = self.pending.pop_front()?;
        if self.by_room.get(&e.id) == Some(&self.base) {
            self.by_room.remove(&e.id);
        }
        self.base += 1;
        self.held_bytes -= e.bytes;
        Some(e)
    }

    fn recycle(&mut self, mut msgs: Vec<Push>) {
        msgs.clear();
        if self.spare.len() < 64 && msgs.capacity() <= 1024 {
            self.spare.push(msgs);
        }
    }
}

impl Shard {
    pub(super) fn on_msg(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Push(p) => self.on_push(p, false),
            // Kafka ingest: one ring item per fetched batch; each push takes
            // the single-push path, in order (clones are refcount bumps).
            ShardMsg::Pushes(batch) => {
                for p in batch.iter() {
                    self.on_push(p.clone(), true);
                }
            }
            ShardMsg::RoomCounts(rc) => self.room_counts = Some(rc),
            ShardMsg::Shutdown => self.inbox.waker().request_shutdown(),
        }
    }

    /// One push: room pushes join their room's batch, others go out now.
    /// `shared`: its bytes are slices of a Kafka batch buffer.
    fn on_push(&mut self, p: Push, shared: bool) {
        self.counters.pushes += 1;
        match &p.target {
            PushTarget::Room(name) => {
                // A room with no member here costs one lookup.
                if let Some(id) = self.rooms.id_of(name) {
                    // Per-turn batching (window 0) flushes every
                    // entry whatever its due time: skip the clock.
                    let (window, start) = (self.s.batch_window, self.start);
                    let name = name.clone();
                    // A batch slice would keep the whole batch buffer alive
                    // for as long as the room holds it (window, single
                    // message sent as is): hold a copy, once per shard.
                    let p = if shared { p.detached() } else { p };
                    let max_bytes = room_batch_max_bytes(self.s.send_cap);
                    let full = self.batch.add(id, &name, p, max_bytes, || {
                        if window.is_zero() {
                            start
                        } else {
                            Instant::now() + window
                        }
                    });
                    // Bounds: a full container goes now; past the shard's
                    // held cap, the oldest rooms go.
                    if let Some((name, msgs)) = full {
                        self.send_room(&name, msgs);
                    }
                    while self.batch.over_held_cap() {
                        let Some(e) = self.batch.pop_due(true, start) else {
                            break;
                        };
                        self.send_room(&e.name, e.msgs);
                    }
                }
            }
            _ => {
                // Per-turn batching keeps one order across targets:
                // flush room batches first. A window holds them.
                if self.s.batch_window.is_zero() {
                    self.flush_batches(true);
                }
                self.deliver_direct(&p, shared);
            }
        }
    }

    /// `shared`: see [`on_push`](Self::on_push).
    fn deliver_direct(&mut self, p: &Push, shared: bool) {
        let mut keys = std::mem::take(&mut self.tmp_keys);
        keys.clear();
        match &p.target {
            PushTarget::Keys(list) => keys.extend(list.iter().filter_map(|k| self.conn_by_key(k))),
            PushTarget::Mids(mids) => {
                for mid in mids.iter() {
                    let mut k = self.mids.heads.get(mid).copied().unwrap_or(NIL);
                    while k != NIL {
                        keys.push(k);
                        k = self.conns[k as usize].mid_next;
                    }
                }
            }
            PushTarget::All => keys.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.state == State::Open)
                    .map(|(k, _)| k as u32),
            ),
            PushTarget::Room(_) => {}
        }
        for &key in &keys {
            let c = &self.conns[key as usize];
            if c.state != State::Open || !c.accepts(&self.filters, p.op) {
                continue;
            }
            let b = if c.proto == Proto::Ws {
                p.ws_frame.clone()
            } else {
                p.packet.clone()
            };
            let b = frame_to_queue(b, shared, c.queued_bytes());
            self.enqueue(key, b, 1);
        }
        self.tmp_keys = keys;
    }

    /// Finds an authenticated connection by key: client-chosen keys from the
    /// index, server-assigned ones (`"<shard>.<slab key>.<gen>"`, hex)
    /// decoded directly.
    pub(super) fn conn_by_key(&self, k: &str) -> Option<u32> {
        if let Some(key) = self.keys.get(k) {
            return Some(key);
        }
        let mut it = k.split('.');
        let shard = usize::from_str_radix(it.next()?, 16).ok()?;
        let key = u32::from_str_radix(it.next()?, 16).ok()?;
        let gen = u32::from_str_radix(it.next()?, 16).ok()?;
        if shard != self.id || it.next().is_some() {
            return None;
        }
        let c = self.conns.get(key as usize)?;
        (c.gen == gen && c.state == State::Open && c.custom_key().is_none()).then_some(key)
    }

    /// Sends held room pushes to the rooms' members: every room if `all`
    /// (per-turn batching, shutdown), else those whose window has ended.
    /// One message goes as its pre-encoded frame, several as one op-9
    /// container (built once per room, only for the protocols the room has).
    pub(super) fn flush_batches(&mut self, all: bool) {
        if self.batch.is_empty() {
            return;
        }
        let all = all || self.s.batch_window.is_zero();
        let now = if all { self.start } else { Instant::now() };
        while let Some(PendingRoom { name, msgs, .. }) = self.batch.pop_due(all, now) {
            self.send_room(&name, msgs);
        }
    }

    /// Sends `msgs` (held pushes of room `name`, in order) to its members.
    fn send_room(&mut self, name: &Arc<str>, msgs: Vec<Push>) {
        // Members as of now (the room may have been emptied and made
        // again under another id during the window).
        let Some(id) = self.rooms.id_of(name).filter(|_| !msgs.is_empty()) else {
            self.batch.recycle(msgs);
            return;
        };
        let mut members = std::mem::take(&mut self.tmp_keys);
        let room = self.rooms.get(id);
        members.clear();
        members.extend_from_slice(&room.members);
        let (has_ws, has_tcp) = (room.ws > 0, room.tcp > 0);
        let (ws, tcp) = if msgs.len() == 1 {
            (msgs[0].ws_frame.clone(), msgs[0].packet.clone())
        } else {
            let packets: Vec<Bytes> = msgs.iter().map(|m| m.packet.clone()).collect();
            let ws = if has_ws {
                ws_container_frame(&packets)
            } else {
                Bytes::new()
            };
            let tcp = if has_tcp {
                concat(&packets)
            } else {
                Bytes::new()
            };
            (ws, tcp)
        };
        let n = msgs.len() as u64;
        for &key in &members {
            let c = &self.conns[key as usize];
            if c.state != State::Open {
                continue;
            }
            let is_ws = c.proto == Proto::Ws;
            if !c.has_filter() || msgs.iter().all(|m| c.accepts(&self.filters, m.op)) {
                let b = if is_ws { ws.clone() } else { tcp.clone() };
                self.enqueue(key, b, n);
                continue;
            }
            // Rare: a filter that takes only part of the batch.
            let wanted: Vec<Bytes> = msgs
                .iter()
                .filter(|m| c.accepts(&self.filters, m.op))
                .map(|m| m.packet.clone())
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let k = wanted.len() as u64;
            let b = if is_ws {
                ws_container_frame(&wanted)
            } else {
                concat(&wanted)
            };
            self.enqueue(key, b, k);
        }
        self.batch.recycle(msgs);
        self.tmp_keys = members;
    }

    /// Queues `b` (holding `msgs` messages) for `key`, applying the byte
    /// cap and its policy.
    pub(super) fn enqueue(&mut self, key: u32, b: Bytes, msgs: u64) {
        let cap = self.s.send_cap;
        let c = &mut self.conns[key as usize];
        if matches!(c.state, State::Closing | State::Closed) || b.is_empty() {
            return;
        }
        // An empty queue always takes one frame, however large (a batch may
        // exceed the cap on its own); the cap bounds what piles up behind it.
        let queued = c.queued_bytes();
        if queued > 0 && queued + b.len() > cap {
            match self.s.send_policy {
                SendPolicy::Drop => {
                    self.counters.dropped_over_cap += msgs.max(1);
                }
                SendPolicy::Close => {
                    let bye = self.farewell(key, 1008, "slow consumer");
                    self.begin_close(key, CloseReason::SlowConsumer, Some(bye));
                }
            }
            return;
        }
        let pool = &mut self.out_pool;
        c.out
            .get_or_insert_with(|| pool.pop().unwrap_or_default())
            .push(b);
        self.counters.msgs_out += msgs;
        if !c.has(F_DIRTY) {
            c.flags |= F_DIRTY;
            self.dirty.push(key);
        }
    }
}

fn concat(parts: &[Bytes]) -> Bytes {
    let mut b = BytesMut::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        b.extend_from_slice(p);
    }
    b.freeze()
}

/// The frame to queue behind `queued` bytes. A slice of a shared batch
/// buffer is copied when it will wait behind others: the byte cap counts
/// slice lengths, so a backlogged connection holding one small slice per
/// batch would otherwise keep whole batch buffers alive. A frame for an
/// empty queue goes out this turn and stays zero-copy.
fn frame_to_queue(b: Bytes, shared: bool, queued: usize) -> Bytes {
    if shared && queued > 0 {
        Bytes::copy_from_slice(&b)
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room_push(name: &Arc<str>, i: u32, len: usize) -> Push {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(len, b'x');
        Push::new(PushTarget::Room(name.clone()), 1000, &body)
    }

    fn index(p: &Push) -> u32 {
        u32::from_be_bytes(p.packet[16..20].try_into().unwrap())
    }

    /// Adds pushes 0..n of 1 KiB to one room, collecting what is sent early
    /// and, at the end, what is held, as containers in send order.
    fn containers(n: u32, max_bytes: usize) -> (Vec<Vec<Push>>, usize) {
        let name: Arc<str> = "live://a".into();
        let mut b = RoomBatch::default();
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut held_max = 0;
        for i in 0..n {
            if let Some((r, msgs)) = b.add(7, &name, room_push(&name, i, 1024), max_bytes, || start)
            {
                assert_eq!(r, name);
                sent.push(msgs);
            }
            held_max = held_max.max(b.held_bytes);
        }
        while let Some(e) = b.pop_due(true, start) {
            sent.push(e.msgs);
        }
        assert_eq!(b.held_bytes, 0);
        (sent, held_max)
    }

    #[test]
    fn a_full_room_batch_is_sent_early_in_order_and_bounded() {
        let max = room_batch_max_bytes(256 * 1024);
        assert_eq!(max, ROOM_BATCH_MAX_BYTES);
        let (sent, held_max) = containers(200, max);
        assert!(
            sent.len() > 1,
            "200 KiB in one room must take several containers"
        );
        for c in &sent {
            let packets: Vec<Bytes> = c.iter().map(|m| m.packet.clone()).collect();
            let frame = ws_container_frame(&packets);
            assert!(
                frame.len() <= max,
                "container of {} bytes > {max}",
                frame.len()
            );
        }
        let order: Vec<u32> = sent.iter().flatten().map(index).collect();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        assert!(held_max <= max);
    }

    #[test]
    fn the_limit_follows_a_small_send_cap_and_counts() {
        // 16 KiB cap: containers of at most 4 KiB.
        let max = room_batch_max_bytes(16 * 1024);
        assert_eq!(max, 4096);
        let (sent, _) = containers(20, max);
        assert!(sent.iter().all(|c| c.len() <= 3));
        // Tiny pushes: the count limit.
        let name: Arc<str> = "live://b".into();
        let mut b = RoomBatch::default();
        let start = Instant::now();
        let mut early = 0;
        for i in 0..(ROOM_BATCH_MAX_MSGS as u32 * 3) {
            if let Some((_, msgs)) = b.add(1, &name, room_push(&name, i, 4), usize::MAX, || start) {
                assert_eq!(msgs.len(), ROOM_BATCH_MAX_MSGS);
                early += 1;
            }
        }
        assert_eq!(early, 2);
    }

    #[test]
    fn held_bytes_are_capped_per_shard() {
        let mut b = RoomBatch::default();
        let start = Instant::now();
        // Many rooms, each under its own limit: the shard cap trips.
        let names: Vec<Arc<str>> = (0..10_000).map(|i| format!("r{i}").into()).collect();
        let mut over = false;
        for (i, name) in names.iter().enumerate() {
            assert!(b
                .add(i as u32, name, room_push(name, 0, 1024), 64 * 1024, || {
                    start
                })
                .is_none());
            if b.over_held_cap() {
                over = true;
                // Sent from the front: the oldest room first.
                let e = b.pop_due(true, start).unwrap();
                assert_eq!(e.id, 0);
                break;
            }
        }
        assert!(over, "10 MB held should pass the shard cap");
    }

    #[test]
    fn batch_slices_are_copied_only_behind_a_backlog() {
        let buf = Bytes::from(vec![7u8; 4096]);
        let slice = buf.slice(100..200);
        let in_buf = buf.as_ptr_range();

        // Empty queue: sent this turn, zero-copy.
        let b = frame_to_queue(slice.clone(), true, 0);
        assert!(in_buf.contains(&b.as_ptr()));

        // Backlogged: its own 100 bytes, not a view of the 4 KiB buffer.
        let b = frame_to_queue(slice.clone(), true, 1);
        assert_eq!(b, slice);
        assert!(!in_buf.contains(&b.as_ptr()));

        // Not from a batch (one push's own buffer): never copied.
        let b = frame_to_queue(slice.clone(), false, 1 << 20);
        assert!(in_buf.contains(&b.as_ptr()));
    }
}
