//! Frame encoders: unmasked server frames, masked client frames, close frames.

use bytes::BufMut;

use super::Opcode;
use crate::ws::close::CloseCode;
use crate::ws::mask::apply_mask;

/// Longest server (unmasked) frame header: 2 + 8 bytes.
pub const MAX_SERVER_HEADER_LEN: usize = 10;
/// Longest client (masked) frame header: 2 + 8 + 4 bytes.
pub const MAX_CLIENT_HEADER_LEN: usize = 14;

/// Writes a server frame header (unmasked, RSV = 0) for a payload of
/// `payload_len` bytes, using the 7-, 16- or 64-bit length form as required.
/// Returns the header bytes and how many of them are used.
pub fn encode_server_header(
    opcode: Opcode,
    fin: bool,
    payload_len: usize,
) -> ([u8; MAX_SERVER_HEADER_LEN], usize) {
    let mut h = [0u8; MAX_SERVER_HEADER_LEN];
    h[0] = (u8::from(fin) << 7) | opcode as u8;
    let n = write_len(&mut h, payload_len, 0);
    (h, n)
}

/// Fills byte 1 (with `mask_bit`) and the extended length; returns header length so far.
fn write_len(h: &mut [u8], len: usize, mask_bit: u8) -> usize {
    if len < 126 {
        h[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A server frame header, encoded once and reusable for many receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrameHeader {
    bytes: [u8; MAX_SERVER_HEADER_LEN],
    len: u8,
}

impl ServerFrameHeader {
    /// Header for an unmasked frame of `payload_len` bytes.
    pub fn new(opcode: Opcode, fin: bool, payload_len: usize) -> Self {
        let (bytes, len) = encode_server_header(opcode, fin, payload_len);
        ServerFrameHeader {
            bytes,
            len: len as u8,
        }
    }

    /// The encoded header (2, 4 or 10 bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Appends a whole, final, unmasked frame (header + payload) to `dst`.
pub fn encode_server_frame(opcode: Opcode, payload: &[u8], dst: &mut impl BufMut) {
    dst.put_slice(ServerFrameHeader::new(opcode, true, payload.len()).as_bytes());
    dst.put_slice(payload);
}

/// Close frame payload: the code, then `reason` truncated (at a character
/// boundary) to fit the 125-byte control frame limit. Returns buffer and length.
pub fn close_payload(code: CloseCode, reason: &str) -> ([u8; 125], usize) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = [0u8; 125];
    p[..2].copy_from_slice(&code.0.to_be_bytes());
    p[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    (p, 2 + cut)
}

/// Appends an unmasked close frame with `code` and `reason` (truncated to fit).
pub fn encode_close_frame(code: CloseCode, reason: &str, dst: &mut impl BufMut) {
    let (p, n) = close_payload(code, reason);
    encode_server_frame(Opcode::Close, &p[..n], dst);
}

/// Appends a final, masked client frame to `dst` (loadgen side).
pub fn encode_client_frame(opcode: Opcode, payload: &[u8], mask_key: [u8; 4], dst: &mut Vec<u8>) {
    encode_client_frame_with(opcode, true, payload, mask_key, dst);
}

/// Appends a masked client frame with an explicit FIN bit (for fragmentation).
pub fn encode_client_frame_with(
    opcode: Opcode,
    fin: bool,
    payload: &[u8],
    mask_key: [u8; 4],
    dst: &mut Vec<u8>,
) {
    let mut h = [0u8; MAX_CLIENT_HEADER_LEN];
    h[0] = (u8::from(fin) << 7) | opcode as u8;
    let n = write_len(&mut h, payload.len(), 0x80);
    h[n..n + 4].copy_from_slice(&mask_key);
    dst.reserve(n + 4 + payload.len());
    dst.extend_from_slice(&h[..n + 4]);
    let start = dst.len();
    dst.extend_from_slice(payload);
    apply_mask(&mut dst[start..], mask_key, 0);
}
