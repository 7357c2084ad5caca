//! The receive side of a worker: multishot receive completions, parsing
//! (WS upgrade, frames, packets, spill of partial tails) and what the server's
//! output asks for (auth result, pongs, closes).

use anyhow::Result;
use corecast_protocol::ws::frame::{encode_client_frame, FrameDecoder, Opcode};
use corecast_protocol::ws::handshake::parse_upgrade_response;
use io_uring::{cqueue, opcode};

use super::{ud, Worker, K_CANCEL, K_RECV};
use crate::engine::conn::{parse_stream, Outcome, RecvCtx, State, MAX_SERVER_PACKET};
use crate::engine::uring::{self, Completion};
use crate::engine::Transport;

impl Worker {
    pub(super) fn on_recv(&mut self, c: &Completion, gen: u16, idx: u32) -> Result<()> {
        let bid = cqueue::buffer_select(c.flags);
        let current = self
            .conns
            .get(idx as usize)
            .is_some_and(|conn| conn.gen == gen);
        let more = uring::more(c.flags);
        if current && !more {
            self.conns[idx as usize].recv_armed = false;
        }
        if !current {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return Ok(());
        }
        if c.result > 0 {
            let bid = bid.expect("a receive with data always selects a buffer");
            let outcome = self.on_data(idx, bid, c.result as usize);
            self.bufs.recycle(bid);
            self.apply(idx, outcome?)?;
            let conn = &self.conns[idx as usize];
            if !conn.recv_armed
                && matches!(
                    conn.state,
                    State::Handshaking | State::Authing | State::Ready
                )
            {
                self.arm_recv(idx)?;
            }
            return Ok(());
        }
        if let Some(bid) = bid {
            self.bufs.recycle(bid);
        }
        let state = self.conns[idx as usize].state;
        match c.result {
            r if r == -libc::ENOBUFS => {
                if matches!(state, State::Handshaking | State::Authing | State::Ready) {
                    self.arm_recv(idx)?;
                }
                Ok(())
            }
            r if r == -libc::ECANCELED && state == State::Slow => Ok(()),
            0 => self.on_server_close(idx, "EOF".into()),
            r => self.on_server_close(
                idx,
                format!("recv: {}", std::io::Error::from_raw_os_error(-r)),
            ),
        }
    }

    /// Feed received bytes to the connection's parser (spilling a partial tail).
    fn on_data(&mut self, idx: u32, bid: u16, len: usize) -> Result<Outcome> {
        self.totals.bytes += len as u64;
        let ws = self.spec.plan.transport == Transport::Ws;
        if !ws {
            self.totals.frames += 1;
        }
        let mut out = Outcome::default();
        let conn = &mut self.conns[idx as usize];
        let data = self.bufs.data_mut(bid, len);
        if conn.state == State::Handshaking {
            return self.on_handshake_data(idx, bid, len);
        }
        if !matches!(conn.state, State::Authing | State::Ready) {
            return Ok(out);
        }
        let mut ctx = RecvCtx {
            totals: &mut self.totals,
            latency: &mut self.latency,
            now_ns: uring::mono_ns(),
            ws: if ws { Some(&mut self.decoder) } else { None },
        };
        if let Some(mut spill) = conn.spill.take() {
            spill.extend_from_slice(data);
            let n = parse_stream(&mut ctx, conn, &mut spill[..], &mut out);
            spill.drain(..n);
            if !spill.is_empty() {
                conn.spill = Some(spill);
            }
        } else {
            let n = parse_stream(&mut ctx, conn, data, &mut out);
            if n < data.len() {
                conn.spill = Some(Box::new(data[n..].to_vec()));
            }
        }
        if out.close.is_some() && ws {
            // A broken stream may leave the shared decoder mid-message.
            self.decoder = FrameDecoder::client(MAX_SERVER_PACKET);
        }
        Ok(out)
    }

    /// Bytes while waiting for the 101: parsed straight from the receive
    /// buffer; only a response cut by the end of a receive is spilled.
    fn on_handshake_data(&mut self, idx: u32, bid: u16, len: usize) -> Result<Outcome> {
        let mut out = Outcome::default();
        let conn = &mut self.conns[idx as usize];
        let data = self.bufs.data_mut(bid, len);
        let mut spilled = conn.spill.take();
        let from_spill = spilled.is_some();
        if let Some(spill) = spilled.as_mut() {
            spill.extend_from_slice(data);
        }
        let buf: &mut [u8] = match spilled.as_mut() {
            Some(spill) => &mut spill[..],
            None => data,
        };
        let used = match parse_upgrade_response(buf, &self.ws_key) {
            Ok(Some(n)) => n,
            Ok(None) => {
                let copy = (!from_spill).then(|| Box::new(buf.to_vec()));
                self.conns[idx as usize].spill = copy.or(spilled);
                return Ok(out);
            }
            Err(e) => {
                out.close = Some(format!("websocket handshake: {e}"));
                return Ok(out);
            }
        };
        conn.state = State::Authing;
        // Any bytes after the 101 are frames (the op 8 of a pipelined auth).
        let mut ctx = RecvCtx {
            totals: &mut self.totals,
            latency: &mut self.latency,
            now_ns: uring::mono_ns(),
            ws: Some(&mut self.decoder),
        };
        let rest = &mut buf[used..];
        let n = parse_stream(&mut ctx, conn, rest, &mut out);
        if n < rest.len() {
            conn.spill = Some(Box::new(rest[n..].to_vec()));
        }
        if !self.spec.plan.pipeline_auth {
            let mut auth = self.send_buf();
            self.write_auth(idx, &mut auth);
            self.send_owned(idx, auth)?;
        }
        Ok(out)
    }

    fn apply(&mut self, idx: u32, out: Outcome) -> Result<()> {
        match out.auth {
            Some(Ok(())) => self.on_authed(idx)?,
            Some(Err(body)) => return self.fail(idx, || format!("auth rejected: {body}")),
            None => {}
        }
        if let Some(ping) = out.pong {
            let mut f = self.send_buf();
            encode_client_frame(Opcode::Pong, &ping, self.mask_key, &mut f);
            self.send_owned(idx, f)?;
        }
        if let Some(why) = out.close {
            self.on_server_close(idx, why)?;
        }
        Ok(())
    }

    fn on_authed(&mut self, idx: u32) -> Result<()> {
        let now_us = self.epoch.elapsed().as_micros() as u32;
        let now_ms = self.now_ms();
        let plan = self.spec.plan.clone();
        let g = self.spec.first_conn + idx as u64;
        let conn = &mut self.conns[idx as usize];
        self.totals.authed += 1;
        let _ = self
            .auth_latency
            .record((now_us.wrapping_sub(conn.started_us) as u64).max(1));
        let gen = conn.gen;
        if plan.is_slow(g) {
            conn.state = State::Slow;
            if conn.recv_armed {
                let e = opcode::AsyncCancel::new(ud(K_RECV, gen, idx))
                    .build()
                    .user_data(ud(K_CANCEL, gen, idx));
                self.ring.push(&e)?;
            }
        } else {
            conn.state = State::Ready;
        }
        if !plan.heartbeat.is_zero() {
            self.heartbeats
                .push_back((now_ms + plan.heartbeat.as_millis() as u32, idx, gen));
        }
        if let Some(after) = plan.churn_after {
            self.churn
                .push_back((now_ms + after.as_millis() as u32, idx, gen));
        }
        Ok(())
    }
}
