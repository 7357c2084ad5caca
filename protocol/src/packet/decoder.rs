//! Streaming packet decoder for input split at arbitrary bytes.

use super::{parse_packet, PacketHeader, PacketRef, HEADER_LEN};
use crate::error::PacketError;

/// Streaming goim packet decoder.
///
/// Whole packets inside an input slice are handed to the callback borrowed
/// from that slice; only the bytes of a packet that is still incomplete at the
/// end of an input are copied, into a spill buffer that is released once the
/// packet completes (unless [`retain_spill`](Self::retain_spill) is set), so an
/// idle connection holds no buffer.
///
/// After an error the decoder state is unspecified: close the connection.
#[derive(Debug, Clone)]
pub struct PacketDecoder {
    max_body: usize,
    spill: Vec<u8>,
    retain_spill: bool,
}

impl PacketDecoder {
    /// A decoder rejecting bodies longer than `max_body`.
    pub fn new(max_body: usize) -> Self {
        PacketDecoder {
            max_body,
            spill: Vec::new(),
            retain_spill: false,
        }
    }

    /// Keep the spill buffer's allocation after a straddling packet completes
    /// (fewer allocations for clients that receive long streams, e.g. loadgen).
    pub fn retain_spill(mut self, retain: bool) -> Self {
        self.retain_spill = retain;
        self
    }

    /// Configured body limit.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Bytes of an incomplete packet currently buffered.
    pub fn buffered_len(&self) -> usize {
        self.spill.len()
    }

    /// Heap bytes held by the spill buffer.
    pub fn spill_capacity(&self) -> usize {
        self.spill.capacity()
    }

    /// Drops any buffered partial packet.
    pub fn reset(&mut self) {
        self.spill = Vec::new();
    }

    /// Decodes every packet completed by `input`, calling `on_packet` for each
    /// in order, and buffers a trailing partial packet. Returns the number of
    /// packets delivered.
    pub fn feed<F>(&mut self, mut input: &[u8], mut on_packet: F) -> Result<usize, PacketError>
    where
        F: FnMut(PacketRef<'_>),
    {
        let mut count = 0;
        if !self.spill.is_empty() {
            // Complete the header first, then exactly the rest of this packet.
            if self.spill.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.spill.len()).min(input.len());
                self.spill.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.spill.len() < HEADER_LEN {
                    return Ok(0);
                }
            }
            let h = PacketHeader::parse(&self.spill, self.max_body)?
                .expect("spill holds a whole header");
            let total = h.packet_len as usize;
            let take = (total - self.spill.len()).min(input.len());
            if self.spill.capacity() < total {
                self.spill.reserve_exact(total - self.spill.len());
            }
            self.spill.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.spill.len() < total {
                return Ok(0);
            }
            let (p, _) =
                parse_packet(&self.spill, self.max_body)?.expect("spill holds a whole packet");
            on_packet(p);
            count += 1;
            if self.retain_spill {
                self.spill.clear();
            } else {
                self.spill = Vec::new();
            }
        }
        loop {
            match parse_packet(input, self.max_body)? {
                Some((p, n)) => {
                    on_packet(p);
                    count += 1;
                    input = &input[n..];
                }
                None => {
                    if !input.is_empty() {
                        // Reserve the whole packet once when its length is known.
                        let want = PacketHeader::parse(input, self.max_body)?
                            .map_or(HEADER_LEN, |h| h.packet_len as usize);
                        self.spill.reserve_exact(want);
                        self.spill.extend_from_slice(input);
                    }
                    return Ok(count);
                }
            }
        }
    }
}

impl Default for PacketDecoder {
    fn default() -> Self {
        PacketDecoder::new(super::DEFAULT_MAX_BODY)
    }
}
