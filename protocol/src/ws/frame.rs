//! WebSocket frames (RFC 6455 §5).
//!
//! Server side: [`encode_server_header`] / [`ServerFrameHeader`] write an
//! unmasked header once so the same frame can be queued for many receivers;
//! [`FrameDecoder`] decodes masked client frames in place with every §5 rule;
//! [`MessageDecoder`] adds spilling and reassembly for input split anywhere.
//! Client side (loadgen): [`encode_client_frame`] writes masked frames, and
//! [`FrameDecoder::client`] decodes the server's unmasked frames.

mod decoder;
mod encode;
mod stream;
mod utf8;

pub use decoder::{Frame, FrameDecoder, Role, DEFAULT_MAX_MESSAGE};
pub use encode::{
    close_payload, encode_client_frame, encode_client_frame_with, encode_close_frame,
    encode_server_frame, encode_server_header, ServerFrameHeader, MAX_CLIENT_HEADER_LEN,
    MAX_SERVER_HEADER_LEN,
};
pub use stream::{Message, MessageDecoder};
pub use utf8::Utf8Validator;

/// Frame opcodes (RFC 6455 §5.2). Others are reserved and rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// 0x0: continuation of a fragmented message.
    Continuation = 0x0,
    /// 0x1: text (UTF-8) data.
    Text = 0x1,
    /// 0x2: binary data.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl Opcode {
    /// The opcode for a 4-bit value, `None` for reserved values.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}
