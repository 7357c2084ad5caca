//! Kafka request/response framing, I/O free.
//!
//! Every message on a Kafka connection is `size: i32` followed by `size`
//! bytes. A request is a request header (version chosen from the API key and
//! version) and the body; a response starts with the correlation id of the
//! request it answers, then (for flexible versions) tagged fields, then the
//! body. Responses come back in request order on one connection, which is
//! what makes pipelining possible.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// Largest response frame accepted (a fetch response is bounded by the
/// request's `max_bytes`, far below this).
pub const MAX_FRAME: usize = 256 << 20;

/// Errors of framing and (de)serialisation.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encode {api} v{version}: {message}")]
    Encode {
        api: i16,
        version: i16,
        message: String,
    },
    #[error("decode {api} v{version}: {message}")]
    Decode {
        api: i16,
        version: i16,
        message: String,
    },
    #[error("response frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("response frame shorter than its header")]
    Truncated,
    #[error("correlation id {got}, expected {expected}")]
    Correlation { got: i32, expected: i32 },
}

/// Appends one size-prefixed request frame to `out`.
pub fn encode_request<R: Request>(
    req: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    out: &mut BytesMut,
) -> Result<(), WireError> {
    let err = |e: anyhow::Error| WireError::Encode {
        api: R::KEY,
        version,
        message: format!("{e:#}"),
    };
    let mut header = RequestHeader::default();
    header.request_api_key = R::KEY;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_string(client_id.to_string()));
    let start = out.len();
    out.put_i32(0);
    header
        .encode(out, R::header_version(version))
        .map_err(err)?;
    req.encode(out, version).map_err(err)?;
    let size = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Accumulates bytes read from a connection and splits whole frames off.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader {
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Space to read into: at least `min` bytes of spare capacity.
    pub fn spare(&mut self, min: usize) -> &mut BytesMut {
        self.buf.reserve(min);
        &mut self.buf
    }

    /// Bytes still needed for the frame being read (a read-size hint).
    pub fn wanted(&self) -> usize {
        if self.buf.len() < 4 {
            return 4 - self.buf.len();
        }
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        (size.max(0) as usize + 4).saturating_sub(self.buf.len())
    }

    /// The next whole frame (without its size prefix), if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if size < 0 || size as usize > MAX_FRAME {
            return Err(WireError::FrameTooLarge(size as u32 as usize));
        }
        let size = size as usize;
        if self.buf.len() < 4 + size {
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(size).freeze()))
    }
}

/// Correlation id of a response frame.
pub fn correlation_id(frame: &[u8]) -> Result<i32, WireError> {
    if frame.len() < 4 {
        return Err(WireError::Truncated);
    }
    Ok(i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]))
}

/// Decodes a response frame to `R`'s response at `version`, checking that it
/// answers `expected_correlation`.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    expected_correlation: i32,
) -> Result<R::Response, WireError> {
    let got = correlation_id(&frame)?;
    if got != expected_correlation {
        return Err(WireError::Correlation {
            got,
            expected: expected_correlation,
        });
    }
    frame.advance(4);
    let err = |message: String| WireError::Decode {
        api: R::KEY,
        version,
        message,
    };
    // Response header v1 (flexible versions) carries tagged fields; ApiVersions
    // always answers with header v0 so an old broker can read it.
    if <R::Response as HeaderVersion>::header_version(version) >= 1 {
        skip_tagged_fields(&mut frame).map_err(|_| err("truncated header".into()))?;
    }
    R::Response::decode(&mut frame, version).map_err(|e| err(format!("{e:#}")))
}

fn skip_tagged_fields(buf: &mut Bytes) -> Result<(), WireError> {
    let n = get_uvarint(buf)?;
    for _ in 0..n {
        let _tag = get_uvarint(buf)?;
        let len = get_uvarint(buf)? as usize;
        if buf.remaining() < len {
            return Err(WireError::Truncated);
        }
        buf.advance(len);
    }
    Ok(())
}

fn get_uvarint(buf: &mut Bytes) -> Result<u64, WireError> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        if !buf.has_remaining() || shift > 63 {
            return Err(WireError::Truncated);
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, MetadataRequest};

    #[test]
    fn request_frame_has_size_header_and_body() {
        let mut out = BytesMut::new();
        let req = MetadataRequest::default();
        encode_request(&req, 12, 7, "cc", &mut out).unwrap();
        let size = i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(size + 4, out.len());
        // api key 3, version 12, correlation 7, client id "cc"
        assert_eq!(&out[4..14], &[0, 3, 0, 12, 0, 0, 0, 7, 0, 2]);
        assert_eq!(&out[14..16], b"cc");
    }

    #[test]
    fn frames_are_split_from_input_cut_at_every_byte() {
        let mut resp = ApiVersionsResponse::default();
        resp.error_code = 0;
        let mut body = BytesMut::new();
        body.put_i32(42);
        resp.encode(&mut body, 3).unwrap();
        let mut wire = BytesMut::new();
        for _ in 0..2 {
            wire.put_i32(body.len() as i32);
            wire.extend_from_slice(&body);
        }
        for cut in 0..wire.len() {
            let mut r = FrameReader::new();
            let mut frames = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                r.spare(part.len()).extend_from_slice(part);
                while let Some(f) = r.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            for f in frames {
                let d = decode_response::<ApiVersionsRequest>(f, 3, 42).unwrap();
                assert_eq!(d.error_code, 0);
            }
        }
    }

    #[test]
    fn wrong_correlation_is_an_error() {
        let mut body = BytesMut::new();
        body.put_i32(5);
        ApiVersionsResponse::default().encode(&mut body, 3).unwrap();
        let e = decode_response::<ApiVersionsRequest>(body.freeze(), 3, 6).unwrap_err();
        assert!(matches!(
            e,
            WireError::Correlation {
                got: 5,
                expected: 6
            }
        ));
    }

    #[test]
    fn oversized_frame_is_rejected() {
        let mut r = FrameReader::new();
        r.spare(4).put_i32(i32::MAX);
        assert!(matches!(r.next_frame(), Err(WireError::FrameTooLarge(_))));
    }
}
