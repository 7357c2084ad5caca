//! corecast-protocol: sans-io codecs shared by the corecast server and loadgen.
//!
//! Nothing here touches a socket or a runtime. Every decoder works on byte
//! slices handed in by the caller, borrows from them where it can (the server
//! parses straight out of kernel-provided receive buffers) and reports how many
//! bytes it consumed, so the caller decides what to keep.
//!
//! - [`packet`]: goim packets (16-byte header + body), the op-9 raw container,
//!   a zero-copy slice parser and a streaming decoder.
//! - [`ws`]: WebSocket (RFC 6455) opening handshake, frames, masking, close codes.
//! - [`auth`]: the JSON body of goim's op-7 auth packet and its reply.
//! - [`error`]: typed errors, each mapping to a WebSocket close code / goim op 6.

pub mod auth;
pub mod error;
pub mod packet;
pub mod ws;

pub use error::{AuthError, FrameError, HandshakeError, PacketError, ProtocolError};
