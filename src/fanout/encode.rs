//! Encoding of pushes, done once on the producing core.
//!
//! Thin adapters over the protocol crate's codecs (`corecast_protocol`), so the
//! wire format lives in one place; these only fix the shapes the shards and
//! the control core use (`BytesMut` scratch buffers, frozen `Bytes`).

use bytes::{BufMut, Bytes, BytesMut};
use corecast_protocol::packet::{self, RawContainer};
use corecast_protocol::ws::frame::{Opcode, ServerFrameHeader};

/// Length of a goim packet header.
pub const PACKET_HEADER_LEN: usize = packet::HEADER_LEN;

/// Encodes one goim packet: `packet_len u32, header_len u16, version u16,
/// op u32, seq u32`, big endian, then `body`.
pub fn encode_packet(op: u32, seq: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PACKET_HEADER_LEN + body.len());
    put_packet(&mut b, op, seq, body);
    b.freeze()
}

/// Appends one goim packet to `out`.
pub fn put_packet(out: &mut BytesMut, op: u32, seq: u32, body: &[u8]) {
    out.reserve(PACKET_HEADER_LEN + body.len());
    packet::encode_packet(op, seq, body, out);
}

/// Appends a server (unmasked) WebSocket binary frame header, FIN set, for a
/// payload of `len` bytes.
pub fn encode_ws_binary_header(out: &mut BytesMut, len: usize) {
    out.put_slice(ServerFrameHeader::new(Opcode::Binary, true, len).as_bytes());
}

/// One WS binary frame holding one op-9 container whose body is `packets`
/// back to back.
pub fn ws_container_frame(packets: &[Bytes]) -> Bytes {
    let inner: usize = packets.iter().map(|p| p.len()).sum();
    let mut c = RawContainer::with_capacity(inner);
    for p in packets {
        c.push_encoded(p);
    }
    c.finish(0).ws_frame()
}

/// One push encoded once: the bare goim packet (for TCP members) and the WS
/// frame holding it in an op-9 container (for WS members), sharing one buffer.
pub fn single_push(op: u32, body: &[u8]) -> (Bytes, Bytes) {
    let mut c = RawContainer::with_capacity(PACKET_HEADER_LEN + body.len());
    c.push(op, 0, body);
    let batch = c.finish(0);
    (batch.inner(), batch.ws_frame())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_frame_layout() {
        let p = encode_packet(1000, 0, b"abc");
        assert_eq!(
            &p[..],
            &[0, 0, 0, 19, 0, 16, 0, 1, 0, 0, 3, 232, 0, 0, 0, 0, b'a', b'b', b'c']
        );
        let f = ws_container_frame(&[p.clone(), p.clone()]);
        assert_eq!(f[0], 0x82);
        assert_eq!(f[1] as usize, 16 + 38);
        assert_eq!(&f[2..6], &(54u32).to_be_bytes());
        assert_eq!(&f[8..10], &[0, 1]);
        assert_eq!(&f[10..14], &9u32.to_be_bytes());
        assert_eq!(&f[18..37], &p[..]);
        let mut big = BytesMut::new();
        encode_ws_binary_header(&mut big, 70000);
        assert_eq!(&big[..], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn single_push_matches_separate_encodings() {
        let (packet, ws) = single_push(1000, b"abc");
        assert_eq!(packet, encode_packet(1000, 0, b"abc"));
        assert_eq!(ws, ws_container_frame(std::slice::from_ref(&packet)));
    }
}
