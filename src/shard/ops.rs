//! What each goim op does on a shard (design §3).

use std::sync::Arc;

use corecast_protocol::auth::{AuthReply, AuthRequest};
use corecast_protocol::packet::{op, PacketRef, HEADER_LEN};
use corecast_protocol::AuthError;

use super::conn::{OpFilter, Proto, State};
use super::event_loop::Shard;
use super::index::NIL;
use crate::fanout::{encode::put_packet, encode_ws_binary_header, CloseReason};

impl Shard {
    /// Queues a reply packet (as its own WS binary frame on WebSocket).
    pub(super) fn reply(&mut self, key: u32, op: u32, seq: u32, body: &[u8]) {
        if self.conns[key as usize].proto == Proto::Ws {
            encode_ws_binary_header(&mut self.scratch, HEADER_LEN + body.len());
        }
        put_packet(&mut self.scratch, op, seq, body);
        let b = self.scratch.split().freeze();
        self.enqueue(key, b, 1);
    }

    pub(super) fn on_packet(&mut self, key: u32, p: PacketRef<'_>) {
        self.counters.msgs_in += 1;
        let state = self.conns[key as usize].state;
        match state {
            State::Auth => {
                if p.op == op::AUTH {
                    self.on_auth(key, p.seq, p.body);
                } else {
                    let bye = self.farewell(key, 1002, "auth expected");
                    self.begin_close(key, CloseReason::ProtocolError, Some(bye));
                }
            }
            State::Open => {
                let c = &mut self.conns[key as usize];
                c.deadline = self.now + self.s.heartbeat_timeout;
                match p.op {
                    op::HEARTBEAT => {
                        let n = self.room_online(key);
                        self.reply(key, op::HEARTBEAT_REPLY, p.seq, &n.to_be_bytes());
                    }
                    op::SEND_MSG => self.reply(key, op::SEND_MSG_REPLY, p.seq, p.body),
                    op::CHANGE_ROOM => self.on_change_room(key, p.seq, p.body),
                    op::SUB | op::UNSUB => {
                        let ops = parse_ops(p.body);
                        let old = self.conns[key as usize].filter;
                        let f = self.filters.get(old).cloned();
                        let f = if p.op == op::SUB {
                            OpFilter::subscribe(f, &ops)
                        } else {
                            OpFilter::unsubscribe(f, &ops)
                        };
                        self.conns[key as usize].filter = self.filters.intern(f);
                        self.filters.release(old);
                        let reply = if p.op == op::SUB {
                            op::SUB_REPLY
                        } else {
                            op::UNSUB_REPLY
                        };
                        self.reply(key, reply, p.seq, p.body);
                    }
                    // Other ops (a repeated auth, application ops without a
                    // handler) are counted and ignored, as goim does.
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Online count for a heartbeat reply: the node-wide count control sent
    /// last, never less than what this shard holds.
    fn room_online(&self, key: u32) -> u32 {
        let c = &self.conns[key as usize];
        if c.room == NIL {
            return 0;
        }
        let room = self.rooms.get(c.room);
        let local = room.members.len() as u32;
        let node = self
            .room_counts
            .as_ref()
            .and_then(|rc| rc.rooms.get(&room.name).copied())
            .unwrap_or(0);
        local.max(node)
    }

    fn on_auth(&mut self, key: u32, seq: u32, body: &[u8]) {
        let res = AuthRequest::parse(body).and_then(|req| {
            req.room()?;
            let id = self.s.verifier.verify(&req)?;
            if !req.room_id.is_empty() && !id.may_join(&req.room_id) {
                return Err(AuthError::Unauthorized(format!(
                    "room {} not allowed by token",
                    req.room_id
                )));
            }
            Ok((req, id))
        });
        let (req, id) = match res {
            Ok(v) => v,
            Err(e) => {
                self.counters.auth_failures += 1;
                tracing::debug!(shard = self.id, error = %e, "auth refused");
                let body = AuthReply::from_error(&e).body();
                self.reply(key, op::AUTH_REPLY, seq, &body);
                let bye = self.farewell(key, e.close_code(), "auth failed");
                self.begin_close(key, CloseReason::AuthFailed, Some(bye));
                return;
            }
        };
        self.counters.auth_ok += 1;
        let c = &mut self.conns[key as usize];
        c.mid = id.mid;
        c.state = State::Open;
        if !req.key.is_empty() {
            c.ext_mut().key = Some(req.key.as_str().into());
            self.keys.insert(&req.key, key);
        }
        let c = &mut self.conns[key as usize];
        if !req.accepts.is_empty() {
            let mut v = req.accepts.clone();
            v.sort_unstable();
            v.dedup();
            c.filter = self.filters.intern(Some(OpFilter::Only(v)));
        }
        if id.rooms.is_some() {
            c.ext_mut().rooms_allowed = id.rooms.clone();
        }
        self.mid_link(key);
        if !req.room_id.is_empty() {
            self.join_room(key, &req.room_id);
        }
        let d = self.now + self.s.heartbeat_timeout;
        self.set_deadline(key, d);
        self.reply(key, op::AUTH_REPLY, seq, &[]);
    }

    fn join_room(&mut self, key: u32, room_id: &str) {
        let ws = self.conns[key as usize].proto == Proto::Ws;
        let (room, pos) = self.rooms.join(room_id, key, ws);
        let c = &mut self.conns[key as usize];
        c.room = room;
        c.room_pos = pos;
    }

    fn leave_room(&mut self, key: u32) {
        let c = &mut self.conns[key as usize];
        if c.room == NIL {
            return;
        }
        let (room, pos, ws) = (c.room, c.room_pos, c.proto == Proto::Ws);
        c.room = NIL;
        if let Some(moved) = self.rooms.leave(room, pos, ws) {
            self.conns[moved as usize].room_pos = pos;
        }
    }

    /// Op 12: body = new room id (`type://room`, empty = leave). The reply
    /// (op 13) carries the room the connection is in afterwards, so a
    /// refused change (bad id, not allowed by the token) answers with the
    /// old room.
    fn on_change_room(&mut self, key: u32, seq: u32, body: &[u8]) {
        let new = std::str::from_utf8(body).unwrap_or("").trim();
        let valid = new.is_empty() || corecast_protocol::auth::split_room_id(new).is_some();
        let allowed = self.conns[key as usize]
            .ext
            .as_ref()
            .and_then(|e| e.rooms_allowed.as_ref())
            .is_none_or(|r: &Arc<[Box<str>]>| new.is_empty() || r.iter().any(|x| &**x == new));
        if std::str::from_utf8(body).is_ok() && valid && allowed {
            let current = self.current_room(key);
            if current.as_deref() != Some(new) {
                self.leave_room(key);
                if !new.is_empty() {
                    self.join_room(key, new);
                }
            }
        }
        let now_in = self.current_room(key).unwrap_or_default();
        self.reply(key, op::CHANGE_ROOM_REPLY, seq, now_in.as_bytes());
    }

    fn current_room(&self, key: u32) -> Option<Arc<str>> {
        let c = &self.conns[key as usize];
        (c.room != NIL).then(|| self.rooms.get(c.room).name.clone())
    }
}

/// Parses a comma separated op list ("1000,1001"), ignoring junk.
fn parse_ops(body: &[u8]) -> Vec<u32> {
    std::str::from_utf8(body)
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}
