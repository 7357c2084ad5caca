//! Bytes received → HTTP upgrade, WebSocket frames, goim packets.
//!
//! Input is parsed straight out of the provided receive buffer (WS payloads
//! are unmasked in place). Only a request / frame / packet cut by the end of
//! a receive is copied, into the connection's spill buffer, and only up to
//! its own end; the spill is freed as soon as it is complete.

use bytes::BufMut;
use corecast_protocol::packet::{
    parse_packet, parse_single_packet, PacketHeader, PacketRef, HEADER_LEN,
};
use corecast_protocol::ws::close::CloseCode;
use corecast_protocol::ws::frame::{
    encode_close_frame, encode_server_frame, Frame, FrameDecoder, Opcode,
};
use corecast_protocol::ws::handshake::{
    parse_upgrade, write_accept_response, write_reject_response, HandshakeOptions,
};
use corecast_protocol::{FrameError, PacketError};

use super::conn::{Fragmented, Proto, State};
use super::event_loop::Shard;
use crate::fanout::CloseReason;

/// Largest HTTP upgrade request accepted.
const MAX_REQUEST: usize = 4096;
/// Largest WS frame header (2 + 8 length + 4 mask).
const WS_MAX_HEADER: usize = 14;

/// Bytes needed to hold the whole masked client frame at the start of `b`
/// (or its header, while the length is not known yet).
fn ws_frame_need(b: &[u8]) -> usize {
    if b.len() < 2 {
        return 2;
    }
    let masked = if b[1] & 0x80 != 0 { 4 } else { 0 };
    match b[1] & 0x7f {
        126 if b.len() < 4 => 4,
        126 => 4 + masked + u16::from_be_bytes([b[2], b[3]]) as usize,
        127 if b.len() < 10 => 10,
        127 => {
            let n = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
            (10 + masked).saturating_add(usize::try_from(n).unwrap_or(usize::MAX))
        }
        n => 2 + masked + n as usize,
    }
}

impl Shard {
    fn alive(&self, key: u32) -> bool {
        self.conns
            .get(key as usize)
            .is_some_and(|c| matches!(c.state, State::Upgrade | State::Auth | State::Open))
    }

    /// Handles `data` just received on connection `key`.
    pub(super) fn on_data(&mut self, key: u32, data: &mut [u8]) {
        let c = &self.conns[key as usize];
        match (c.state, c.proto) {
            (State::Upgrade, _) => self.on_upgrade_bytes(key, data),
            (State::Auth | State::Open, Proto::Ws) => self.on_ws_bytes(key, data),
            (State::Auth | State::Open, Proto::Tcp) => self.on_tcp_bytes(key, data),
            _ => {}
        }
    }

    fn on_upgrade_bytes(&mut self, key: u32, data: &mut [u8]) {
        let mut spill = self.conns[key as usize]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.spill))
            .unwrap_or_default();
        let from_spill = !spill.is_empty();
        if from_spill {
            spill.extend_from_slice(data);
        }
        let buf: &mut [u8] = if from_spill { &mut spill } else { data };
        let opts = HandshakeOptions {
            path: Some(&self.s.ws_path),
            max_request_len: MAX_REQUEST,
        };
        match parse_upgrade(buf, &opts) {
            Ok(None) => {
                let rest = buf.to_vec();
                self.conns[key as usize].ext_mut().spill = rest;
            }
            Ok(Some(req)) => {
                let used = req.request_len;
                write_accept_response(req.key, &mut self.scratch);
                let resp = self.scratch.split().freeze();
                self.conns[key as usize].state = State::Auth;
                self.conns[key as usize].trim_ext();
                self.enqueue(key, resp, 0);
                if buf.len() > used {
                    self.on_ws_bytes(key, &mut buf[used..]);
                }
            }
            Err(e) => {
                write_reject_response(&e, &mut self.scratch);
                let resp = self.scratch.split().freeze();
                tracing::debug!(shard = self.id, error = %e, "bad WebSocket handshake");
                self.begin_close(key, CloseReason::BadHandshake, Some(resp));
            }
        }
    }

    fn on_ws_bytes(&mut self, key: u32, data: &mut [u8]) {
        let max_message = self.s.max_body + HEADER_LEN;
        let (mut spill, frag) = match self.conns[key as usize].ext.as_mut() {
            Some(e) => (std::mem::take(&mut e.spill), e.frag.take()),
            None => (Vec::new(), None),
        };
        let mut frag = frag.unwrap_or_else(|| {
            Box::new(Fragmented {
                decoder: FrameDecoder::new(max_message),
                message: Vec::new(),
            })
        });
        let mut pos = 0;
        let mut ok = true;
        // Complete a frame left over from the previous receive.
        while !spill.is_empty() {
            match frag.decoder.decode(&mut spill) {
                Err(e) => {
                    self.ws_violation(key, e);
                    return;
                }
                Ok(Some((frame, _))) => {
                    ok = self.on_ws_frame(key, &mut frag.message, frame);
                    spill = Vec::new();
                }
                Ok(None) => {
                    let need = ws_frame_need(&spill).max(spill.len());
                    let take = (need - spill.len()).min(data.len() - pos);
                    if take == 0 {
                        break;
                    }
                    spill.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                }
            }
        }
        while ok && spill.is_empty() && pos < data.len() && self.alive(key) {
            match frag.decoder.decode(&mut data[pos..]) {
                Err(e) => {
                    self.ws_violation(key, e);
                    return;
                }
                Ok(Some((frame, n))) => {
                    pos += n;
                    ok = self.on_ws_frame(key, &mut frag.message, frame);
                }
                Ok(None) => {
                    let rest = &data[pos..];
                    // Cap what a peer can make us hold for a frame header.
                    spill = Vec::with_capacity(rest.len().max(WS_MAX_HEADER));
                    spill.extend_from_slice(rest);
                    pos = data.len();
                }
            }
        }
        if !self.alive(key) {
            return;
        }
        let c = &mut self.conns[key as usize];
        if !spill.is_empty() {
            c.ext_mut().spill = spill;
        }
        if frag.decoder.in_fragmented_message() {
            c.ext_mut().frag = Some(frag);
        } else {
            c.trim_ext();
        }
    }

    /// Handles one decoded frame; false if the connection is closing.
    fn on_ws_frame(&mut self, key: u32, message: &mut Vec<u8>, frame: Frame<'_>) -> bool {
        match frame.opcode {
            Opcode::Ping => {
                encode_server_frame(Opcode::Pong, frame.payload, &mut self.scratch);
                let pong = self.scratch.split().freeze();
                self.enqueue(key, pong, 0);
                true
            }
            Opcode::Pong => true,
            Opcode::Close => {
                let code = frame.close().map_or(CloseCode::NORMAL, |(c, _)| c);
                encode_close_frame(code, "", &mut self.scratch);
                let bye = self.scratch.split().freeze();
                self.begin_close(key, crate::fanout::CloseReason::PeerCloseFrame, Some(bye));
                false
            }
            _ => {
                if !frame.fin || frame.opcode == Opcode::Continuation {
                    message.extend_from_slice(frame.payload);
                    if !frame.fin {
                        return true;
                    }
                    let whole = std::mem::take(message);
                    return self.on_ws_message(key, &whole);
                }
                self.on_ws_message(key, frame.payload)
            }
        }
    }

    fn on_ws_message(&mut self, key: u32, payload: &[u8]) -> bool {
        match parse_single_packet(payload, self.s.max_body) {
            Ok(p) => {
                self.on_packet(key, p);
                self.alive(key)
            }
            Err(e) => {
                self.packet_violation(key, e);
                false
            }
        }
    }

    fn on_tcp_bytes(&mut self, key: u32, data: &mut [u8]) {
        let max_body = self.s.max_body;
        let mut spill = self.conns[key as usize]
            .ext
            .as_mut()
            .map(|e| std::mem::take(&mut e.spill))
            .unwrap_or_default();
        let mut pos = 0;
        while !spill.is_empty() {
            match parse_packet(&spill, max_body) {
                Err(e) => {
                    self.packet_violation(key, e);
                    return;
                }
                Ok(Some((p, _))) => {
                    let p = PacketRef {
                        op: p.op,
                        seq: p.seq,
                        version: p.version,
                        body: p.body,
                    };
                    self.on_packet(key, p);
                    spill = Vec::new();
                }
                Ok(None) => {
                    let need = if spill.len() < HEADER_LEN {
                        HEADER_LEN
                    } else {
                        let h = PacketHeader::from_bytes(
                            spill[..HEADER_LEN].try_into().expect("16 bytes"),
                        );
                        h.packet_len as usize
                    };
                    let take = need.saturating_sub(spill.len()).min(data.len() - pos);
                    if take == 0 {
                        break;
                    }
                    spill.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                }
            }
        }
        while spill.is_empty() && pos < data.len() && self.alive(key) {
            match parse_packet(&data[pos..], max_body) {
                Err(e) => {
                    self.packet_violation(key, e);
                    return;
                }
                Ok(Some((p, n))) => {
                    pos += n;
                    self.on_packet(key, p);
                }
                Ok(None) => {
                    spill = data[pos..].to_vec();
                    pos = data.len();
                }
            }
        }
        if !self.alive(key) {
            return;
        }
        let c = &mut self.conns[key as usize];
        if !spill.is_empty() {
            c.ext_mut().spill = spill;
        } else {
            c.trim_ext();
        }
    }

    fn ws_violation(&mut self, key: u32, e: FrameError) {
        let reason = match e {
            FrameError::TooBig { .. } => CloseReason::TooBig,
            FrameError::InvalidUtf8 | FrameError::InvalidCloseReason => CloseReason::BadUtf8,
            _ => CloseReason::ProtocolError,
        };
        tracing::debug!(shard = self.id, error = %e, "WebSocket protocol violation");
        let bye = self.farewell(key, e.close_code(), reason_text(e.close_code()));
        self.begin_close(key, reason, Some(bye));
    }

    pub(super) fn packet_violation(&mut self, key: u32, e: PacketError) {
        let reason = match e {
            PacketError::BodyTooLarge { .. } => CloseReason::TooBig,
            _ => CloseReason::ProtocolError,
        };
        tracing::debug!(shard = self.id, error = %e, "goim packet violation");
        let bye = self.farewell(key, e.close_code(), reason_text(e.close_code()));
        self.begin_close(key, reason, Some(bye));
    }

    /// The goodbye for a connection: a WS close frame with `code`, or a goim
    /// op-6 packet whose body is `reason` on TCP (and on WS before a close
    /// frame, so goim clients see why).
    pub(super) fn farewell(&mut self, key: u32, code: u16, reason: &str) -> bytes::Bytes {
        let c = &self.conns[key as usize];
        match c.proto {
            Proto::Ws => {
                if c.state == State::Upgrade {
                    return bytes::Bytes::new();
                }
                let pkt_len = HEADER_LEN + reason.len();
                crate::fanout::encode_ws_binary_header(&mut self.scratch, pkt_len);
                crate::fanout::encode::put_packet(
                    &mut self.scratch,
                    corecast_protocol::packet::op::DISCONNECT_REPLY,
                    0,
                    reason.as_bytes(),
                );
                encode_close_frame(CloseCode(code), reason, &mut self.scratch);
            }
            Proto::Tcp => {
                crate::fanout::encode::put_packet(
                    &mut self.scratch,
                    corecast_protocol::packet::op::DISCONNECT_REPLY,
                    0,
                    reason.as_bytes(),
                );
            }
        }
        let _ = self.scratch.remaining_mut();
        self.scratch.split().freeze()
    }
}

fn reason_text(code: u16) -> &'static str {
    match code {
        1007 => "invalid payload",
        1008 => "policy violation",
        1009 => "message too big",
        _ => "protocol error",
    }
}
