//! Zero-copy frame decoder: unmasks in place and enforces RFC 6455 §5.

use super::{Opcode, Utf8Validator};
use crate::error::FrameError;
use crate::ws::close::CloseCode;
use crate::ws::mask::apply_mask;

/// Default maximum message size (a client message carries one goim packet,
/// whose body is limited to 4096 bytes by default).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// Which side of the connection the decoder runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Server: decodes client frames, which must be masked.
    Server,
    /// Client (loadgen): decodes server frames, which must not be masked.
    Client,
}

/// One decoded frame, its payload already unmasked in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Opcode as on the wire (may be [`Opcode::Continuation`]).
    pub opcode: Opcode,
    /// For data frames, the opcode of the message the frame belongs to
    /// (Text or Binary, also for continuations); for control frames, `opcode`.
    pub message_opcode: Opcode,
    /// FIN bit: last frame of its message.
    pub fin: bool,
    /// Unmasked payload.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// True for close, ping and pong.
    pub fn is_control(&self) -> bool {
        self.opcode.is_control()
    }

    /// For a close frame: its code and reason, already validated by the
    /// decoder. `None` if the close frame has no payload (peer sent no code;
    /// answer with 1000). Also `None` for other frames.
    pub fn close(&self) -> Option<(CloseCode, &'a str)> {
        if self.opcode != Opcode::Close || self.payload.len() < 2 {
            return None;
        }
        let code = CloseCode(u16::from_be_bytes([self.payload[0], self.payload[1]]));
        let reason = std::str::from_utf8(&self.payload[2..]).unwrap_or("");
        Some((code, reason))
    }
}

/// Where the next frame in a buffer ends, as far as its header tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    /// At least this many bytes are needed before more can be said.
    Need(usize),
    /// The frame (header + mask + payload) occupies this many bytes.
    Complete { header_len: usize, total: usize },
}

/// Stateful decoder of one connection's incoming frames.
///
/// [`decode`](Self::decode) works on a caller-owned `&mut [u8]`: it validates
/// the header as soon as its bytes are present, returns `Ok(None)` without
/// touching the buffer while the frame is incomplete (the caller spills the
/// remainder), and otherwise unmasks the payload in place and returns the frame
/// and the number of bytes consumed.
///
/// Fragmented messages are returned frame by frame; the decoder tracks the
/// continuation state, the accumulated message size, and UTF-8 validity of
/// text across fragments. [`MessageDecoder`](super::MessageDecoder)
/// reassembles them.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    // u32 sizes keep the decoder at 16 bytes: it lives in every connection.
    max_message: u32,
    /// Payload bytes of the fragmented message in progress so far (≤ max_message).
    message_len: u32,
    utf8: Utf8Validator,
    /// Opcode of the fragmented message in progress (Text or Binary).
    fragmented: Option<Opcode>,
    role: Role,
}

impl FrameDecoder {
    /// Server-side decoder (client frames must be masked).
    pub fn new(max_message: usize) -> Self {
        Self::with_role(Role::Server, max_message)
    }

    /// Client-side decoder (server frames must not be masked).
    pub fn client(max_message: usize) -> Self {
        Self::with_role(Role::Client, max_message)
    }

    /// Decoder for the given role. `max_message` is capped at `u32::MAX`.
    pub fn with_role(role: Role, max_message: usize) -> Self {
        FrameDecoder {
            role,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            fragmented: None,
            message_len: 0,
            utf8: Utf8Validator::default(),
        }
    }

    /// Configured maximum message size.
    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }

    /// Role this decoder was built for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True while a fragmented message is open.
    pub fn in_fragmented_message(&self) -> bool {
        self.fragmented.is_some()
    }

    /// Validates the header at the start of `buf` (as far as it is present)
    /// against the rules and the current state, and tells how long the frame is.
    pub(crate) fn extent(&self, buf: &[u8]) -> Result<Extent, FrameError> {
        let [b0, b1, ..] = *buf else {
            return Ok(Extent::Need(2));
        };
        let fin = b0 & 0x80 != 0;
        let rsv = b0 & 0x70;
        if rsv != 0 {
            return Err(FrameError::ReservedBits(rsv >> 4));
        }
        let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(FrameError::UnknownOpcode(b0 & 0x0f))?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(FrameError::Unmasked),
            // A client must fail on a masked server frame (§5.1); reuse the error.
            (Role::Client, true) => return Err(FrameError::Unmasked),
            _ => {}
        }
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::ControlFragmented);
            }
            if len7 > 125 {
                return Err(FrameError::ControlTooLong(u64::from(len7)));
            }
        } else {
            match (opcode, self.fragmented) {
                (Opcode::Continuation, None) => return Err(FrameError::ContinuationWithoutStart),
                (Opcode::Text | Opcode::Binary, Some(_)) => {
                    return Err(FrameError::DataDuringFragmentation)
                }
                _ => {}
            }
        }
        let (ext, len) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(Extent::Need(4));
                };
                (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(Extent::Need(10));
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::LengthMsbSet);
                }
                (8, len)
            }
            n => (0, u64::from(n)),
        };
        if !opcode.is_control() {
            let so_far = if opcode == Opcode::Continuation {
                u64::from(self.message_len)
            } else {
                0
            };
            let total = so_far.saturating_add(len);
            if total > u64::from(self.max_message) {
                return Err(FrameError::TooBig {
                    len: total,
                    max: self.max_message as usize,
                });
            }
        }
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        // len <= max_message (data) or <= 125 (control), so this fits in usize.
        let total = header_len + len as usize;
        Ok(Extent::Complete { header_len, total })
    }

    /// Decodes one frame from the start of `buf`, unmasking it in place.
    ///
    /// `Ok(None)`: the frame is incomplete and `buf` is untouched. Errors are
    /// reported as early as the offending bytes are present.
    pub fn decode<'b>(
        &mut self,
        buf: &'b mut [u8],
    ) -> Result<Option<(Frame<'b>, usize)>, FrameError> {
        let (header_len, total) = match self.extent(buf)? {
            Extent::Complete { header_len, total } if buf.len() >= total => (header_len, total),
            _ => return Ok(None),
        };
        let b0 = buf[0];
        let fin = b0 & 0x80 != 0;
        let opcode = Opcode::from_u8(b0 & 0x0f).expect("checked by extent");
        if self.role == Role::Server {
            let k = &buf[header_len - 4..header_len];
            let key = [k[0], k[1], k[2], k[3]];
            apply_mask(&mut buf[header_len..total], key, 0);
        }
        let payload: &'b [u8] = &buf[header_len..total];
        let message_opcode = match opcode {
            Opcode::Continuation => self.fragmented.expect("checked by extent"),
            op => op,
        };
        match opcode {
            Opcode::Close => validate_close(payload)?,
            Opcode::Ping | Opcode::Pong => {}
            _ => {
                if message_opcode == Opcode::Text {
                    if opcode == Opcode::Text {
                        self.utf8.reset();
                    }
                    if !self.utf8.feed(payload) || (fin && !self.utf8.is_complete()) {
                        return Err(FrameError::InvalidUtf8);
                    }
                }
                if fin {
                    self.fragmented = None;
                    self.message_len = 0;
                } else {
                    self.fragmented = Some(message_opcode);
                    // Bounded by max_message (checked in extent), so it fits.
                    self.message_len += payload.len() as u32;
                }
            }
        }
        Ok(Some((
            Frame {
                opcode,
                message_opcode,
                fin,
                payload,
            },
            total,
        )))
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_MESSAGE)
    }
}

/// Close payload rules (§5.5.1, §7.4): empty, or a valid code then UTF-8 reason.
fn validate_close(payload: &[u8]) -> Result<(), FrameError> {
    match payload {
        [] => Ok(()),
        [_] => Err(FrameError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(FrameError::InvalidCloseCode(code.0));
            }
            std::str::from_utf8(reason).map_err(|_| FrameError::InvalidCloseReason)?;
            Ok(())
        }
    }
}
