//! The loadgen stamp carried at the start of every pushed message body:
//! `cc1:<seq, 16 hex>:<send time, 16 hex ns of CLOCK_MONOTONIC>:` then padding.
//! ASCII so the body is valid UTF-8 and JSON-safe for any client.

/// Length of the stamp; bodies are at least this long.
pub const STAMP_LEN: usize = 4 + 16 + 1 + 16 + 1;
const MAGIC: &[u8; 4] = b"cc1:";

/// A body of `size` bytes (at least `STAMP_LEN`) stamped with `seq` and `sent_ns`.
pub fn encode(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size.max(STAMP_LEN));
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(format!("{seq:016x}:{sent_ns:016x}:").as_bytes());
    body.resize(size.max(STAMP_LEN), b'x');
    body
}

/// `(seq, sent_ns)` of a stamped body, `None` for anything else.
pub fn parse(body: &[u8]) -> Option<(u64, u64)> {
    if body.len() < STAMP_LEN || &body[..4] != MAGIC || body[20] != b':' || body[37] != b':' {
        return None;
    }
    Some((hex16(&body[4..20])?, hex16(&body[21..37])?))
}

fn hex16(b: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = v << 4 | d as u64;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads_to_size() {
        let b = encode(42, 0xdead_beef_1234, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse(&b), Some((42, 0xdead_beef_1234)));
        assert_eq!(encode(1, 2, 3).len(), STAMP_LEN);
    }

    #[test]
    fn foreign_bodies_are_not_stamps() {
        assert_eq!(parse(b"hello world"), None);
        let mut b = encode(7, 9, 64);
        b[5] = b'z';
        assert_eq!(parse(&b), None);
    }
}
