//! Pushes from the fan-out ring → connection send queues: frame once, send
//! many (`Bytes` clones), room batching per loop turn, the byte cap.

use std::sync::Arc;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};

use super::conn::{Proto, State, F_DIRTY};
use super::event_loop::Shard;
use super::index::NIL;
use crate::config::SendPolicy;
use crate::fanout::{encode::ws_container_frame, CloseReason, Push, PushTarget, ShardMsg};

/// Room pushes collected during one loop turn, in arrival order per room.
#[derive(Default)]
pub struct RoomBatch {
    order: Vec<(u32, Arc<str>, Vec<Push>)>,
    by_room: AHashMap<u32, usize>,
}

impl RoomBatch {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Shard {
    pub(super) fn on_msg(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Push(p) => {
                self.counters.pushes += 1;
                match &p.target {
                    PushTarget::Room(name) => {
                        // A room with no member here costs one lookup.
                        if let Some(id) = self.rooms.id_of(name) {
                            let b = &mut self.batch;
                            let i = *b.by_room.entry(id).or_insert_with(|| {
                                b.order.push((id, name.clone(), Vec::new()));
                                b.order.len() - 1
                            });
                            b.order[i].2.push(p);
                        }
                    }
                    _ => {
                        // Keep one order across targets: flush room batches first.
                        self.flush_batches();
                        self.deliver_direct(&p);
                    }
                }
            }
            ShardMsg::RoomCounts(rc) => self.room_counts = Some(rc),
            ShardMsg::Shutdown => self.inbox.waker().request_shutdown(),
        }
    }

    fn deliver_direct(&mut self, p: &Push) {
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

    /// Sends each room's pushes of this turn to its members: one message
    /// as its pre-encoded frame, several as one op-9 container (built once
    /// per room, only for the protocols the room has).
    pub(super) fn flush_batches(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut order = std::mem::take(&mut self.batch.order);
        self.batch.by_room.clear();
        let mut members = std::mem::take(&mut self.tmp_keys);
        for (id, name, msgs) in order.drain(..) {
            if self.rooms.id_of(&name) != Some(id) {
                continue;
            }
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
        }
        self.batch.order = order;
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
        c.out.get_or_insert_with(Default::default).push(b);
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
