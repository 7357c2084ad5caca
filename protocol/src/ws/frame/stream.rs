//! Streaming message decoder: spills partial frames, reassembles fragments.

use super::decoder::Extent;
use super::{Frame, FrameDecoder, Opcode, Role};
use crate::error::FrameError;
use crate::ws::close::CloseCode;

/// A whole WebSocket message or control frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: code and reason, or `None` if it carried no payload.
    Close(Option<(CloseCode, &'a str)>),
}

/// Convenience decoder for input split at any byte.
///
/// Frames wholly inside an input are decoded in place (unmasked in the
/// caller's buffer) and unfragmented messages are delivered without copying.
/// Only a frame cut by the end of an input is copied to a spill buffer, and
/// only fragmented messages are reassembled in a message buffer; both are
/// released when done unless [`retain_buffers`](Self::retain_buffers) is set.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    frames: FrameDecoder,
    spill: Vec<u8>,
    message: Vec<u8>,
    retain: bool,
}

impl MessageDecoder {
    /// Server-side decoder (masked client frames), `max_message` bytes per message.
    pub fn new(max_message: usize) -> Self {
        Self::from_frame_decoder(FrameDecoder::new(max_message))
    }

    /// Client-side decoder (unmasked server frames).
    pub fn client(max_message: usize) -> Self {
        Self::from_frame_decoder(FrameDecoder::with_role(Role::Client, max_message))
    }

    /// Wraps a configured frame decoder.
    pub fn from_frame_decoder(frames: FrameDecoder) -> Self {
        MessageDecoder {
            frames,
            spill: Vec::new(),
            message: Vec::new(),
            retain: false,
        }
    }

    /// Keep spill and reassembly allocations between messages.
    pub fn retain_buffers(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Bytes of a partial frame currently buffered.
    pub fn buffered_len(&self) -> usize {
        self.spill.len()
    }

    /// The underlying frame decoder.
    pub fn frame_decoder(&self) -> &FrameDecoder {
        &self.frames
    }

    /// Decodes everything `input` completes, calling `on_message` for each
    /// message or control frame in order; buffers a trailing partial frame.
    /// `input` is modified (unmasked in place). Returns the number delivered.
    ///
    /// After an error the state is unspecified: close with
    /// [`FrameError::close_code`].
    pub fn feed<F>(&mut self, input: &mut [u8], mut on_message: F) -> Result<usize, FrameError>
    where
        F: FnMut(Message<'_>),
    {
        let mut count = 0;
        let mut pos = 0;
        if !self.spill.is_empty() {
            loop {
                let want = match self.frames.extent(&self.spill)? {
                    Extent::Need(n) => n,
                    Extent::Complete { total, .. } => total,
                };
                if self.spill.len() >= want {
                    break;
                }
                let take = (want - self.spill.len()).min(input.len() - pos);
                if take == 0 {
                    return Ok(0);
                }
                self.spill.extend_from_slice(&input[pos..pos + take]);
                pos += take;
            }
            let (frame, _) = self
                .frames
                .decode(&mut self.spill)?
                .expect("spill holds a whole frame");
            count += deliver(&mut self.message, self.retain, frame, &mut on_message);
            if self.retain {
                self.spill.clear();
            } else {
                self.spill = Vec::new();
            }
        }
        loop {
            match self.frames.decode(&mut input[pos..])? {
                Some((frame, n)) => {
                    count += deliver(&mut self.message, self.retain, frame, &mut on_message);
                    pos += n;
                }
                None => {
                    self.spill.extend_from_slice(&input[pos..]);
                    return Ok(count);
                }
            }
        }
    }
}

/// Hands a frame on as a message, reassembling fragments. Returns 1 if a
/// message was delivered, 0 if a fragment was only buffered.
fn deliver<F: FnMut(Message<'_>)>(
    message: &mut Vec<u8>,
    retain: bool,
    frame: Frame<'_>,
    f: &mut F,
) -> usize {
    let whole: &[u8] = match frame.opcode {
        Opcode::Ping => {
            f(Message::Ping(frame.payload));
            return 1;
        }
        Opcode::Pong => {
            f(Message::Pong(frame.payload));
            return 1;
        }
        Opcode::Close => {
            f(Message::Close(frame.close()));
            return 1;
        }
        _ if frame.fin && frame.opcode != Opcode::Continuation => frame.payload,
        _ => {
            message.extend_from_slice(frame.payload);
            if !frame.fin {
                return 0;
            }
            message
        }
    };
    match frame.message_opcode {
        Opcode::Text => f(Message::Text(
            std::str::from_utf8(whole).expect("validated by the frame decoder"),
        )),
        _ => f(Message::Binary(whole)),
    }
    if frame.opcode == Opcode::Continuation {
        if retain {
            message.clear();
        } else {
            *message = Vec::new();
        }
    }
    1
}
