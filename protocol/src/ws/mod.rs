//! WebSocket (RFC 6455) pieces: opening handshake, frames, masking, close codes.
//!
//! Only what corecast needs: no extensions (permessage-deflate is not
//! offered), no subprotocol negotiation.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
