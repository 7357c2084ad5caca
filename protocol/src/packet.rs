//! goim packets.
//!
//! Header, 16 bytes, big endian: `packet_len u32` (header + body),
//! `header_len u16` (= 16), `version u16` (1), `op u32`, `seq u32`; then the body.
//!
//! [`parse_packet`] borrows a whole packet out of a slice without copying.
//! [`PacketDecoder`] builds on it for input split at arbitrary bytes and
//! copies only the bytes of a packet that straddles two inputs.
//! [`RawContainer`] builds op-9 containers; [`raw_packets`] iterates them.

mod container;
mod decoder;

pub use container::{raw_packets, RawBatch, RawContainer, RawPackets};
pub use decoder::PacketDecoder;

use bytes::{BufMut, Bytes};

use crate::error::PacketError;

/// Length of the goim packet header.
pub const HEADER_LEN: usize = 16;
/// Protocol version written by [`encode_packet`].
pub const VERSION: u16 = 1;
/// Default maximum body length (design §3); configurable per decoder.
pub const DEFAULT_MAX_BODY: usize = 4096;

/// goim operation codes.
pub mod op {
    /// Client heartbeat.
    pub const HEARTBEAT: u32 = 2;
    /// Heartbeat reply; body is the room's online count as a big-endian u32.
    pub const HEARTBEAT_REPLY: u32 = 3;
    /// Client message.
    pub const SEND_MSG: u32 = 4;
    /// Client message reply.
    pub const SEND_MSG_REPLY: u32 = 5;
    /// Server tells the client why it is closing.
    pub const DISCONNECT_REPLY: u32 = 6;
    /// Auth request (first packet of a connection).
    pub const AUTH: u32 = 7;
    /// Auth reply: empty body on success, JSON error body on failure.
    pub const AUTH_REPLY: u32 = 8;
    /// Raw container: the body is a sequence of whole packets.
    pub const RAW: u32 = 9;
    /// Change room; body is the new room id.
    pub const CHANGE_ROOM: u32 = 12;
    /// Change room reply.
    pub const CHANGE_ROOM_REPLY: u32 = 13;
    /// Subscribe to ops; body is comma separated ops.
    pub const SUB: u32 = 14;
    /// Subscribe reply.
    pub const SUB_REPLY: u32 = 15;
    /// Unsubscribe from ops; body is comma separated ops.
    pub const UNSUB: u32 = 16;
    /// Unsubscribe reply.
    pub const UNSUB_REPLY: u32 = 17;
    /// Ops at or above this value are application ops pushed by backends.
    pub const APP_MIN: u32 = 1000;
}

/// A decoded (or to-be-encoded) goim packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketHeader {
    /// Header + body length.
    pub packet_len: u32,
    /// Header length; always 16 on accepted packets.
    pub header_len: u16,
    /// Protocol version (goim writes 1; not checked on input, as in goim).
    pub version: u16,
    /// Operation.
    pub op: u32,
    /// Sequence number chosen by the client; replies echo it.
    pub seq: u32,
}

impl PacketHeader {
    /// Header for a packet with `body_len` bytes of body, version 1.
    ///
    /// # Panics
    /// If the packet length does not fit in a u32.
    pub fn new(op: u32, seq: u32, body_len: usize) -> Self {
        let packet_len = u32::try_from(HEADER_LEN + body_len).expect("goim packet longer than u32");
        PacketHeader {
            packet_len,
            header_len: HEADER_LEN as u16,
            version: VERSION,
            op,
            seq,
        }
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.packet_len.to_be_bytes());
        b[4..6].copy_from_slice(&self.header_len.to_be_bytes());
        b[6..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..12].copy_from_slice(&self.op.to_be_bytes());
        b[12..16].copy_from_slice(&self.seq.to_be_bytes());
        b
    }

    /// Reads the fields of 16 header bytes without validating them.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        PacketHeader {
            packet_len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            header_len: u16::from_be_bytes([b[4], b[5]]),
            version: u16::from_be_bytes([b[6], b[7]]),
            op: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            seq: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Reads and validates a header from the start of `buf`.
    ///
    /// `Ok(None)` if fewer than 16 bytes are available. Checks `header_len == 16`,
    /// `packet_len >= 16` and the body limit, so a caller may wait for
    /// [`packet_len`](Self::packet_len) bytes without risk.
    pub fn parse(buf: &[u8], max_body: usize) -> Result<Option<Self>, PacketError> {
        let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Self::from_bytes(head);
        if h.header_len as usize != HEADER_LEN {
            return Err(PacketError::BadHeaderLen(h.header_len));
        }
        if (h.packet_len as usize) < HEADER_LEN {
            return Err(PacketError::PacketLenTooSmall(h.packet_len));
        }
        let len = h.body_len();
        if len > max_body {
            return Err(PacketError::BodyTooLarge { len, max: max_body });
        }
        Ok(Some(h))
    }

    /// Body length (`packet_len - 16`; 0 if `packet_len` is smaller than the header).
    pub fn body_len(&self) -> usize {
        (self.packet_len as usize).saturating_sub(HEADER_LEN)
    }
}

/// A packet borrowed from an input buffer (zero copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRef<'a> {
    /// Operation.
    pub op: u32,
    /// Sequence number.
    pub seq: u32,
    /// Version field as received.
    pub version: u16,
    /// Body bytes.
    pub body: &'a [u8],
}

impl PacketRef<'_> {
    /// Copies the packet into an owned [`Packet`].
    pub fn to_owned(&self) -> Packet {
        Packet {
            op: self.op,
            seq: self.seq,
            version: self.version,
            body: Bytes::copy_from_slice(self.body),
        }
    }

    /// Encoded length (header + body).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }
}

/// An owned packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Operation.
    pub op: u32,
    /// Sequence number.
    pub seq: u32,
    /// Version field.
    pub version: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl Packet {
    /// A version-1 packet.
    pub fn new(op: u32, seq: u32, body: impl Into<Bytes>) -> Self {
        Packet {
            op,
            seq,
            version: VERSION,
            body: body.into(),
        }
    }

    /// Borrowed view.
    pub fn as_ref(&self) -> PacketRef<'_> {
        PacketRef {
            op: self.op,
            seq: self.seq,
            version: self.version,
            body: &self.body,
        }
    }
}

/// Appends a version-1 packet (header + body) to `dst`.
///
/// # Panics
/// If the packet length does not fit in a u32.
pub fn encode_packet(op: u32, seq: u32, body: &[u8], dst: &mut impl BufMut) {
    dst.put_slice(&PacketHeader::new(op, seq, body.len()).to_bytes());
    dst.put_slice(body);
}

/// Encodes a version-1 packet into a new exactly-sized `Vec`.
pub fn encode_packet_to_vec(op: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    encode_packet(op, seq, body, &mut v);
    v
}

/// Parses one whole packet from the start of `buf`, borrowing its body.
///
/// Returns the packet and the number of bytes it occupies, `Ok(None)` if `buf`
/// holds only part of a packet (the header was valid so far, or fewer than
/// 16 bytes are present), or an error as soon as the header is invalid.
pub fn parse_packet(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<(PacketRef<'_>, usize)>, PacketError> {
    let Some(h) = PacketHeader::parse(buf, max_body)? else {
        return Ok(None);
    };
    let total = h.packet_len as usize;
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((
        PacketRef {
            op: h.op,
            seq: h.seq,
            version: h.version,
            body,
        },
        total,
    )))
}

/// Parses a buffer that must hold exactly one packet, e.g. the payload of a
/// WebSocket binary message (design §3: one packet per client frame).
///
/// An incomplete packet is reported as [`PacketError::TruncatedContainer`],
/// extra bytes as [`PacketError::TrailingBytes`].
pub fn parse_single_packet(buf: &[u8], max_body: usize) -> Result<PacketRef<'_>, PacketError> {
    match parse_packet(buf, max_body)? {
        Some((p, n)) if n == buf.len() => Ok(p),
        Some((_, n)) => Err(PacketError::TrailingBytes(buf.len() - n)),
        None => Err(PacketError::TruncatedContainer(buf.len())),
    }
}

/// Iterates the comma separated ops in an op-14 / op-16 body (`"1000,1001"`).
///
/// Each item is the op, or `None` for a token that is not a u32; empty
/// tokens (`"1000,,1001"`, trailing comma) and spaces around ops are skipped.
pub fn op_list(body: &[u8]) -> impl Iterator<Item = Option<u32>> + '_ {
    body.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .map(|t| std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()))
}

/// Body of an op-3 heartbeat reply: the room's online count, big endian.
pub fn heartbeat_reply_body(online: u32) -> [u8; 4] {
    online.to_be_bytes()
}
