//! Typed protocol errors.
//!
//! Every error knows the WebSocket close code it maps to ([`close_code`]) so a
//! shard can close a WebSocket with the right code, or send a goim op-6
//! disconnect packet (whose body is [`ProtocolError::reason`]) on TCP.
//!
//! [`close_code`]: ProtocolError::close_code

use thiserror::Error;

use crate::ws::close::CloseCode;

/// A goim packet that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PacketError {
    /// `header_len` is not 16 (goim rejects any other value).
    #[error("packet header_len is {0}, expected 16")]
    BadHeaderLen(u16),
    /// `packet_len` is smaller than the header itself.
    #[error("packet_len {0} is smaller than the 16-byte header")]
    PacketLenTooSmall(u32),
    /// The body is longer than the configured limit.
    #[error("packet body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Body length announced by the header.
        len: usize,
        /// Configured maximum body length.
        max: usize,
    },
    /// An op-9 container body ends in the middle of an inner packet.
    #[error("op-9 container ends inside an inner packet ({0} bytes left over)")]
    TruncatedContainer(usize),
    /// A WebSocket binary message held more (or less) than exactly one packet.
    #[error(
        "WebSocket message holds {0} bytes after its packet; one packet per message is required"
    )]
    TrailingBytes(usize),
}

impl PacketError {
    /// WebSocket close code for this error: 1009 for an oversized body, 1002 otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            PacketError::BodyTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG.0,
            _ => CloseCode::PROTOCOL_ERROR.0,
        }
    }
}

/// A WebSocket frame from a client that breaks RFC 6455 §5 (or our limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Client frames must be masked (§5.1).
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1-3 must be 0: no extension is negotiated (§5.2).
    #[error("reserved bits set in frame header: {0:#x}")]
    ReservedBits(u8),
    /// Opcodes 3-7 and 11-15 are reserved (§5.2).
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Control frames carry at most 125 bytes of payload (§5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(u64),
    /// Control frames must not be fragmented (§5.5).
    #[error("fragmented control frame")]
    ControlFragmented,
    /// A continuation frame arrived while no fragmented message was open (§5.4).
    #[error("continuation frame without a message in progress")]
    ContinuationWithoutStart,
    /// A new text/binary frame arrived before the fragmented message finished (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    DataDuringFragmentation,
    /// The most significant bit of a 64-bit payload length must be 0 (§5.2).
    #[error("64-bit payload length has its most significant bit set")]
    LengthMsbSet,
    /// A close payload of exactly one byte cannot hold a status code (§5.5.1).
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    /// The close status code may not be sent on the wire (§7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// The close reason is not valid UTF-8 (§5.5.1).
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// A text message is not valid UTF-8 (§8.1).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A frame or a reassembled message is larger than the configured limit.
    #[error("message of at least {len} bytes exceeds the limit of {max}")]
    TooBig {
        /// Length seen so far (frame length or accumulated message length).
        len: u64,
        /// Configured maximum message size.
        max: usize,
    },
}

impl FrameError {
    /// WebSocket close code: 1007 for bad UTF-8, 1009 for too big, 1002 otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::InvalidUtf8 | FrameError::InvalidCloseReason => {
                CloseCode::INVALID_PAYLOAD.0
            }
            FrameError::TooBig { .. } => CloseCode::MESSAGE_TOO_BIG.0,
            _ => CloseCode::PROTOCOL_ERROR.0,
        }
    }
}

/// A WebSocket opening handshake that cannot be accepted (server side), or a
/// handshake response that the client (loadgen) cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The bytes are not a well-formed HTTP/1.x request or response.
    #[error("malformed HTTP: {0}")]
    Malformed(&'static str),
    /// The request did not end within the maximum request size.
    #[error("request larger than {0} bytes")]
    TooLarge(usize),
    /// More header lines than the parser accepts.
    #[error("too many header lines")]
    TooManyHeaders,
    /// The method is not GET.
    #[error("method must be GET")]
    BadMethod,
    /// The HTTP version is not 1.1.
    #[error("HTTP version must be 1.1")]
    BadHttpVersion,
    /// The request target is not an origin-form path, or not the expected one.
    #[error("unexpected path {0:?}")]
    BadPath(String),
    /// No Host header (or more than one).
    #[error("missing or duplicate Host header")]
    BadHost,
    /// The Upgrade header does not list the `websocket` token.
    #[error("Upgrade header must contain \"websocket\"")]
    BadUpgrade,
    /// The Connection header does not list the `upgrade` token.
    #[error("Connection header must contain \"upgrade\"")]
    BadConnection,
    /// Sec-WebSocket-Version missing or not 13: answered with 426.
    #[error("Sec-WebSocket-Version must be 13")]
    BadVersion,
    /// Sec-WebSocket-Key missing, duplicated, or not base64 of 16 bytes.
    #[error("Sec-WebSocket-Key must be base64 of 16 bytes")]
    BadKey,
    /// (client side) the response status is not 101.
    #[error("handshake response status {0}, expected 101")]
    BadStatus(u16),
    /// (client side) Sec-WebSocket-Accept missing or wrong.
    #[error("Sec-WebSocket-Accept missing or wrong")]
    BadAccept,
}

impl HandshakeError {
    /// HTTP status to answer with: 426 Upgrade Required for a bad version, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }

    /// Close code equivalent, for metrics: a failed handshake is a protocol error.
    pub fn close_code(&self) -> u16 {
        CloseCode::PROTOCOL_ERROR.0
    }
}

/// An op-7 auth body that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The body is not the expected JSON object.
    #[error("malformed auth body: {0}")]
    Malformed(String),
    /// `room_id` is not of the form `type://room`.
    #[error("room_id {0:?} is not of the form type://room")]
    BadRoomId(String),
    /// The token was refused (reason given by the verifier).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
}

impl AuthError {
    /// WebSocket close code: 1008 (policy violation) for a refused token, 1002 otherwise.
    pub fn close_code(&self) -> u16 {
        match self {
            AuthError::Unauthorized(_) => CloseCode::POLICY_VIOLATION.0,
            _ => CloseCode::PROTOCOL_ERROR.0,
        }
    }
}

/// Any protocol error, for code that handles all of them the same way.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// See [`PacketError`].
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// See [`FrameError`].
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// See [`HandshakeError`].
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// See [`AuthError`].
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ProtocolError {
    /// WebSocket close code (1002 / 1007 / 1008 / 1009).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::Packet(e) => e.close_code(),
            ProtocolError::Frame(e) => e.close_code(),
            ProtocolError::Handshake(e) => e.close_code(),
            ProtocolError::Auth(e) => e.close_code(),
        }
    }

    /// Short fixed reason, fit for a close frame reason or a goim op-6 body.
    pub fn reason(&self) -> &'static str {
        match self.close_code() {
            1007 => "invalid payload",
            1008 => "policy violation",
            1009 => "message too big",
            _ => "protocol error",
        }
    }
}
