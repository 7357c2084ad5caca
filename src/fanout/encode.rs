//! Encoding of pushes, done once on the producing core.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of a goim packet header.
pub const PACKET_HEADER_LEN: usize = 16;
const PROTOCOL_VERSION: u16 = 1;

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
    out.put_u32((PACKET_HEADER_LEN + body.len()) as u32);
    out.put_u16(PACKET_HEADER_LEN as u16);
    out.put_u16(PROTOCOL_VERSION);
    out.put_u32(op);
    out.put_u32(seq);
    out.put_slice(body);
}

/// Appends a server (unmasked) WebSocket binary frame header, FIN set, for a
/// payload of `len` bytes.
pub fn encode_ws_binary_header(out: &mut BytesMut, len: usize) {
    out.put_u8(0x82);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// One WS binary frame holding one op-9 container whose body is `packets`
/// back to back.
pub fn ws_container_frame(packets: &[Bytes]) -> Bytes {
    let inner: usize = packets.iter().map(|p| p.len()).sum();
    let payload = PACKET_HEADER_LEN + inner;
    let mut b = BytesMut::with_capacity(payload + 10);
    encode_ws_binary_header(&mut b, payload);
    b.put_u32(payload as u32);
    b.put_u16(PACKET_HEADER_LEN as u16);
    b.put_u16(PROTOCOL_VERSION);
    b.put_u32(super::OP_RAW);
    b.put_u32(0);
    for p in packets {
        b.put_slice(p);
    }
    b.freeze()
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
}
