//! Pushes encoded together and handed to each shard as one ring item.
//!
//! Kafka ingest turns a fetch response into up to thousands of pushes. Built
//! one by one ([`Push::new`]) each costs an allocation for its buffer, and
//! each ring item costs the shard core a round of reference-count cache-line
//! transfers. A [`PushBatchBuilder`] writes every push of a batch into one
//! buffer (one allocation per batch) and hands out frozen slices of it; the
//! resulting [`PushBatch`] goes to each shard as one
//! [`ShardMsg::Pushes`](super::ShardMsg::Pushes) (one `Arc` clone per shard).
//! Order within the batch is the order of [`PushBatchBuilder::push`] calls.

use std::ops::Deref;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use corecast_protocol::packet::{self, op, PacketHeader, HEADER_LEN};
use corecast_protocol::ws::frame::{Opcode, ServerFrameHeader};

use super::{Push, PushTarget};

/// An immutable, shareable run of encoded pushes (cheap to clone).
#[derive(Debug, Clone)]
pub struct PushBatch(Arc<Vec<Push>>);

impl PushBatch {
    /// A batch of already built pushes (e.g. tests, single pushes).
    pub fn from_pushes(pushes: Vec<Push>) -> PushBatch {
        PushBatch(Arc::new(pushes))
    }
}

impl Deref for PushBatch {
    type Target = [Push];

    fn deref(&self) -> &[Push] {
        &self.0
    }
}

/// Where one push lives in the builder's buffer until the batch is frozen.
#[derive(Debug)]
struct Span {
    target: PushTarget,
    op: u32,
    /// Start of the WS frame (header + op-9 container + packet).
    ws: u32,
    /// Start of the bare goim packet.
    packet: u32,
    end: u32,
}

/// Encodes pushes into one shared buffer; [`finish`](Self::finish) freezes
/// it into a [`PushBatch`]. Reusable: `finish` leaves it empty.
#[derive(Debug, Default)]
pub struct PushBatchBuilder {
    buf: BytesMut,
    spans: Vec<Span>,
    /// Buffer bytes of the previous batch: the next one starts that large.
    hint: usize,
}

impl PushBatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one push: its goim packet (op, seq 0, `body`) and, around it,
    /// the WebSocket binary frame of an op-9 container holding it; the same
    /// bytes [`Push::new`] produces.
    pub fn push(&mut self, target: PushTarget, op: u32, body: &[u8]) {
        let inner = HEADER_LEN + body.len();
        let ws = ServerFrameHeader::new(Opcode::Binary, true, HEADER_LEN + inner);
        let ws = ws.as_bytes();
        if self.buf.capacity() == 0 {
            self.buf = BytesMut::with_capacity(self.hint.max(4096));
        }
        self.buf.reserve(ws.len() + HEADER_LEN + inner);
        let start = self.buf.len();
        self.buf.put_slice(ws);
        self.buf
            .put_slice(&PacketHeader::new(op::RAW, 0, inner).to_bytes());
        let packet_at = self.buf.len();
        packet::encode_packet(op, 0, body, &mut self.buf);
        self.spans.push(Span {
            target,
            op,
            ws: start as u32,
            packet: packet_at as u32,
            end: self.buf.len() as u32,
        });
    }

    /// Pushes appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes encoded since the last [`finish`](Self::finish).
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Freezes the buffer and returns the pushes in order; the builder is
    /// empty afterwards.
    pub fn finish(&mut self) -> PushBatch {
        self.hint = self.buf.len();
        let buf = std::mem::take(&mut self.buf).freeze();
        let pushes = self
            .spans
            .drain(..)
            .map(|s| Push {
                target: s.target,
                op: s.op,
                packet: buf.slice(s.packet as usize..s.end as usize),
                ws_frame: buf.slice(s.ws as usize..s.end as usize),
            })
            .collect();
        PushBatch(Arc::new(pushes))
    }
}

impl Push {
    /// A copy of this push in a buffer of its own. A push of a
    /// [`PushBatch`] is a slice of a buffer shared with up to a whole
    /// batch of others: whatever holds it past the moment holds all of them.
    pub fn detached(&self) -> Push {
        let ws_frame = Bytes::copy_from_slice(&self.ws_frame);
        let packet = ws_frame.slice(ws_frame.len() - self.packet.len()..);
        Push {
            target: self.target.clone(),
            op: self.op,
            packet,
            ws_frame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_matches_single_pushes_in_order() {
        let mut b = PushBatchBuilder::new();
        let bodies: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![7; 200], vec![9; 70_000], Vec::new()];
        for (i, body) in bodies.iter().enumerate() {
            b.push(PushTarget::All, 1000 + i as u32, body);
        }
        assert_eq!(b.len(), 4);
        let batch = b.finish();
        assert!(b.is_empty());
        assert_eq!(batch.len(), 4);
        for (i, (p, body)) in batch.iter().zip(&bodies).enumerate() {
            let single = Push::new(PushTarget::All, 1000 + i as u32, body);
            assert_eq!(p.op, single.op);
            assert_eq!(p.packet, single.packet, "packet {i}");
            assert_eq!(p.ws_frame, single.ws_frame, "ws frame {i}");
        }
        // The builder is reusable.
        b.push(PushTarget::Room("r".into()), 1000, b"x");
        let again = b.finish();
        assert_eq!(again.len(), 1);
        assert_eq!(&again[0].packet[HEADER_LEN..], b"x");
        assert_eq!(batch[0].target, PushTarget::All);
    }

    #[test]
    fn detached_push_owns_its_bytes() {
        let mut b = PushBatchBuilder::new();
        b.push(PushTarget::All, 1000, b"first");
        b.push(PushTarget::Room("r".into()), 1001, b"second");
        let batch = b.finish();
        let d = batch[1].detached();
        assert_eq!(d.packet, batch[1].packet);
        assert_eq!(d.ws_frame, batch[1].ws_frame);
        assert_eq!((d.op, &d.target), (1001, &batch[1].target));
        // The copy does not point into the batch's buffer.
        let shared = batch[0].ws_frame.as_ptr_range().start..batch[1].ws_frame.as_ptr_range().end;
        assert!(!shared.contains(&d.ws_frame.as_ptr()));
        assert!(!shared.contains(&d.packet.as_ptr()));
        // The packet is the tail of the frame, as in the batch.
        assert_eq!(d.packet.as_ptr_range().end, d.ws_frame.as_ptr_range().end);
    }
}
