//! The op-9 raw container: a packet whose body is a sequence of whole packets.

use bytes::{BufMut, Bytes, BytesMut};

use super::{encode_packet, op, parse_packet, PacketHeader, PacketRef, HEADER_LEN};
use crate::error::PacketError;
use crate::ws::frame::{encode_server_header, Opcode, MAX_SERVER_HEADER_LEN};

/// Room reserved in front of the container: a WebSocket header plus the op-9 header.
const PREFIX: usize = MAX_SERVER_HEADER_LEN + HEADER_LEN;

/// Builds an op-9 container once, to be sent to many receivers.
///
/// Space for the longest WebSocket frame header and the op-9 header is
/// reserved in front of the inner packets, so [`finish`](Self::finish) yields,
/// from one allocation, the WebSocket frame (for WS members), the op-9 packet,
/// and the bare inner packets (for TCP members, which never see op 9).
#[derive(Debug, Clone)]
pub struct RawContainer {
    buf: BytesMut,
    count: usize,
}

impl RawContainer {
    /// An empty container.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty container with room for `inner_bytes` bytes of inner packets.
    pub fn with_capacity(inner_bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(PREFIX + inner_bytes);
        buf.put_bytes(0, PREFIX);
        RawContainer { buf, count: 0 }
    }

    /// Appends a packet built from its parts (version 1).
    pub fn push(&mut self, op: u32, seq: u32, body: &[u8]) {
        encode_packet(op, seq, body, &mut self.buf);
        self.count += 1;
    }

    /// Appends an already encoded whole packet (header included).
    ///
    /// The caller guarantees `packet` is exactly one well-formed packet; this
    /// is checked in debug builds only.
    pub fn push_encoded(&mut self, packet: &[u8]) {
        debug_assert!(
            matches!(parse_packet(packet, usize::MAX), Ok(Some((_, n))) if n == packet.len())
        );
        self.buf.put_slice(packet);
        self.count += 1;
    }

    /// Appends a borrowed packet.
    pub fn push_ref(&mut self, p: &PacketRef<'_>) {
        let mut h = PacketHeader::new(p.op, p.seq, p.body.len());
        h.version = p.version;
        self.buf.put_slice(&h.to_bytes());
        self.buf.put_slice(p.body);
        self.count += 1;
    }

    /// Number of inner packets.
    pub fn count(&self) -> usize {
        self.count
    }

    /// True if no packet was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Length of the inner packets (the op-9 body).
    pub fn inner_len(&self) -> usize {
        self.buf.len() - PREFIX
    }

    /// Writes the op-9 header (with `seq`) and a final, unmasked, binary
    /// WebSocket header, and freezes the buffer.
    pub fn finish(mut self, seq: u32) -> RawBatch {
        let inner_len = self.inner_len();
        let h = PacketHeader::new(op::RAW, seq, inner_len);
        self.buf[MAX_SERVER_HEADER_LEN..PREFIX].copy_from_slice(&h.to_bytes());
        let (ws, ws_len) = encode_server_header(Opcode::Binary, true, HEADER_LEN + inner_len);
        let ws_start = MAX_SERVER_HEADER_LEN - ws_len;
        self.buf[ws_start..MAX_SERVER_HEADER_LEN].copy_from_slice(&ws[..ws_len]);
        RawBatch {
            buf: self.buf.freeze(),
            ws_start,
            count: self.count,
        }
    }
}

impl Default for RawContainer {
    fn default() -> Self {
        Self::new()
    }
}

/// A finished op-9 container; all views share one buffer (cheap `Bytes` clones).
#[derive(Debug, Clone)]
pub struct RawBatch {
    buf: Bytes,
    ws_start: usize,
    count: usize,
}

impl RawBatch {
    /// One binary WebSocket frame holding the op-9 packet (send to WS members).
    pub fn ws_frame(&self) -> Bytes {
        self.buf.slice(self.ws_start..)
    }

    /// The op-9 packet: header + inner packets.
    pub fn packet(&self) -> Bytes {
        self.buf.slice(MAX_SERVER_HEADER_LEN..)
    }

    /// The inner packets back to back, without the op-9 header (send to TCP members).
    pub fn inner(&self) -> Bytes {
        self.buf.slice(PREFIX..)
    }

    /// Number of inner packets.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Iterates the packets in an op-9 body (or any run of whole packets).
///
/// Inner packets are not subject to a body limit unless set with
/// [`RawPackets::max_body`]. A trailing partial packet yields
/// [`PacketError::TruncatedContainer`]; iteration stops after the first error.
pub fn raw_packets(body: &[u8]) -> RawPackets<'_> {
    RawPackets {
        rest: body,
        max_body: usize::MAX,
        failed: false,
    }
}

/// Iterator returned by [`raw_packets`].
#[derive(Debug, Clone)]
pub struct RawPackets<'a> {
    rest: &'a [u8],
    max_body: usize,
    failed: bool,
}

impl<'a> RawPackets<'a> {
    /// Rejects inner packets whose body is longer than `max_body`.
    pub fn max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    /// Bytes not yet iterated.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for RawPackets<'a> {
    type Item = Result<PacketRef<'a>, PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match parse_packet(self.rest, self.max_body) {
            Ok(Some((p, n))) => {
                self.rest = &self.rest[n..];
                Some(Ok(p))
            }
            Ok(None) => {
                self.failed = true;
                Some(Err(PacketError::TruncatedContainer(self.rest.len())))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
