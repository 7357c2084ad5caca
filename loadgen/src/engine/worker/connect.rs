//! The connect side of a worker: connects within the in-flight cap and the
//! rate limit, each one linked chain (socket → bind → connect → first
//! request → receive), the first request's bytes (upgrade, op-7 auth, or
//! both pipelined) and the pool of send buffers they are written into.

use std::io::Write as _;
use std::time::Instant;

use anyhow::Result;
use corecast_protocol::packet::{encode_packet, op};
use corecast_protocol::ws::frame::{encode_client_frame, Opcode};
use io_uring::{opcode, squeue, types};

use super::{
    ud, Worker, K_CHAIN, K_CONNECT, K_FIRST_SEND, K_RECV, K_SEND_OWNED, SEND_POOL_BUF_MAX,
    SEND_POOL_MAX,
};
use crate::engine::conn::{SendBuf, State};
use crate::engine::uring::{self, connect_chain};
use crate::engine::{AuthMode, Transport};

impl Worker {
    /// Start connects within the in-flight cap and the rate limit.
    pub(super) fn start_connects(&mut self) -> Result<()> {
        let plan = &self.spec.plan;
        let mut budget = plan
            .max_inflight_connects
            .saturating_sub(self.inflight_connects);
        if plan.connect_rate > 0 {
            let per_worker = plan.connect_rate as f64 / plan.workers as f64;
            let now = Instant::now();
            self.connect_credit = (self.connect_credit
                + now.duration_since(self.last_credit).as_secs_f64() * per_worker)
                .min(per_worker.max(1.0));
            self.last_credit = now;
            budget = budget.min(self.connect_credit as u32);
        }
        let mut started = 0;
        while started < budget {
            let idx = if let Some(idx) = self.reconnect.pop_front() {
                if self.conns[idx as usize].pending.is_some() {
                    // A send still reads its buffer; try again next turn.
                    self.reconnect.push_back(idx);
                    break;
                }
                idx
            } else if self.next_start < self.spec.conns {
                self.next_start += 1;
                self.next_start - 1
            } else {
                break;
            };
            self.start_connect(idx)?;
            started += 1;
        }
        self.connect_credit -= started as f64;
        Ok(())
    }

    pub(super) fn start_connect(&mut self, idx: u32) -> Result<()> {
        let now_us = self.epoch.elapsed().as_micros() as u32;
        let c = &mut self.conns[idx as usize];
        c.gen = c.gen.wrapping_add(1);
        c.state = State::Connecting;
        c.started_us = now_us;
        c.last_seq = 0;
        c.spill = None;
        let gen = c.gen;
        let first_send = self.first_send(idx);
        let src = self.sources.next();
        // SAFETY (of the pointers inside the chain): `src` lives in the
        // SourceAddrs table (reused only thousands of connects later), `dst`
        // in a Box owned by this worker, the first send's bytes in the
        // worker (static) or in the connection's pending buffer (owned),
        // which is released only by that send's completion.
        let [socket, opt, bind, connect] = connect_chain(
            idx,
            src,
            &self.dst,
            ud(K_CHAIN, gen, idx),
            ud(K_CONNECT, gen, idx),
        );
        // The first request goes out as soon as the connect completes and
        // the receive is armed right behind it, without a loop turn in
        // between; a failure cancels the rest of the chain. Only the send
        // posts a completion on success (one CQE per connect).
        let connect = connect.flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS);
        let first_send = first_send.flags(squeue::Flags::IO_LINK);
        let recv = opcode::RecvMulti::new(types::Fixed(idx), self.bufs.bgid())
            .build()
            .user_data(ud(K_RECV, gen, idx));
        self.conns[idx as usize].recv_armed = true;
        // Up to 8 SQEs, the two optional socket options after IP_BIND_ADDRESS_NO_PORT.
        let plan = &self.spec.plan;
        let defer = plan
            .ack_with_request
            .then(|| uring::defer_ack_opt(idx, ud(K_CHAIN, gen, idx)));
        let fastopen = plan
            .fastopen
            .then(|| uring::fastopen_connect_opt(idx, ud(K_CHAIN, gen, idx)));
        let mut chain: [squeue::Entry; 8] = std::array::from_fn(|_| socket.clone());
        let mut n = 1;
        for e in [Some(opt), defer, fastopen, Some(bind), Some(connect)]
            .into_iter()
            .flatten()
            .chain([first_send, recv])
        {
            chain[n] = e;
            n += 1;
        }
        self.ring.push_chain(&chain[..n])?;
        self.inflight_connects += 1;
        self.open += 1;
        self.totals.connects_started += 1;
        Ok(())
    }

    /// Send a connection's first request again, the receive linked behind
    /// it. A new generation makes the cancelled receive of the first
    /// attempt a stale completion.
    pub(super) fn resend_first(&mut self, idx: u32) -> Result<()> {
        let c = &mut self.conns[idx as usize];
        c.gen = c.gen.wrapping_add(1);
        let gen = c.gen;
        let send = self.first_send(idx).flags(squeue::Flags::IO_LINK);
        let recv = opcode::RecvMulti::new(types::Fixed(idx), self.bufs.bgid())
            .build()
            .user_data(ud(K_RECV, gen, idx));
        self.conns[idx as usize].recv_armed = true;
        Ok(self.ring.push_chain(&[send, recv])?)
    }

    /// A send buffer from the pool (empty).
    pub(super) fn send_buf(&mut self) -> SendBuf {
        self.send_pool.pop().unwrap_or_default()
    }

    /// Return a send buffer the kernel is done with.
    pub(super) fn recycle_send_buf(&mut self, mut buf: SendBuf) {
        if self.send_pool.len() < SEND_POOL_MAX && buf.capacity() <= SEND_POOL_BUF_MAX {
            buf.clear();
            self.send_pool.push(buf);
        }
    }

    /// The SQE of a connection's first request, linked after its connect:
    /// the WS upgrade (static), the upgrade and op 7 together (pipelined), or
    /// op 7 alone (TCP). An owned buffer is parked in the connection.
    pub(super) fn first_send(&mut self, idx: u32) -> squeue::Entry {
        let gen = self.conns[idx as usize].gen;
        let pipeline = self.spec.plan.pipeline_auth;
        if self.spec.plan.transport == Transport::Ws && !pipeline {
            return opcode::Send::new(
                types::Fixed(idx),
                self.upgrade_request.as_ptr(),
                self.upgrade_request.len() as u32,
            )
            .build()
            .user_data(ud(K_FIRST_SEND, gen, idx));
        }
        let mut buf = self.send_buf();
        if self.spec.plan.transport == Transport::Ws {
            buf.extend_from_slice(&self.upgrade_request);
        }
        self.write_auth(idx, &mut buf);
        let e = opcode::Send::new(types::Fixed(idx), buf.as_ptr(), buf.len() as u32)
            .build()
            .user_data(ud(K_FIRST_SEND, gen, idx));
        if let Some(old) = self.conns[idx as usize].pending.replace(buf) {
            // Unreachable: slots are reused only once their sends completed.
            self.recycle_send_buf(old);
        }
        e
    }

    /// Send a buffer owned by the connection until its completion arrives.
    pub(super) fn send_owned(&mut self, idx: u32, buf: SendBuf) -> Result<()> {
        let c = &mut self.conns[idx as usize];
        if c.pending.is_some() {
            // One owned send at a time; only a pong can collide, and pongs are optional.
            self.recycle_send_buf(buf);
            return Ok(());
        }
        let e = opcode::Send::new(types::Fixed(idx), buf.as_ptr(), buf.len() as u32)
            .build()
            .user_data(ud(K_SEND_OWNED, c.gen, idx));
        c.pending = Some(buf);
        Ok(self.ring.push(&e)?)
    }

    /// Append connection `idx`'s op-7 packet (a masked binary frame on WS):
    /// `{"mid":…,"key":"","room_id":"…","platform":"web","accepts":[…]}`,
    /// plus `"token"` when tokens are minted. Written by hand into reused
    /// scratch, as the same body `AuthRequest::to_json` would give.
    pub(super) fn write_auth(&mut self, idx: u32, out: &mut Vec<u8>) {
        let plan = &self.spec.plan;
        let g = self.spec.first_conn + idx as u64;
        let mid = plan.mid_base + g as i64;
        let json = &mut self.auth_json;
        json.clear();
        // Writes into a Vec cannot fail.
        let _ = write!(json, "{{\"mid\":{mid},\"key\":\"\",\"room_id\":");
        match plan.room_of(g) {
            Some(room) => {
                json.extend_from_slice(&self.room_prefix_json);
                let _ = write!(json, "{room}\"");
            }
            None => json.extend_from_slice(b"\"\""),
        }
        json.extend_from_slice(b",\"platform\":\"web\",\"accepts\":[");
        for (i, a) in plan.accepts.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            let _ = write!(json, "{a}");
        }
        json.push(b']');
        if let AuthMode::Hs256 { secret } = &plan.auth {
            let token = crate::engine::token::mint_hs256(secret, mid, plan.deadline);
            let _ = write!(json, ",\"token\":\"{token}\"");
        }
        json.push(b'}');
        self.auth_packet.clear();
        encode_packet(op::AUTH, 1, json, &mut self.auth_packet);
        match plan.transport {
            Transport::Tcp => out.extend_from_slice(&self.auth_packet),
            Transport::Ws => {
                encode_client_frame(Opcode::Binary, &self.auth_packet, self.mask_key, out)
            }
        }
    }
}
