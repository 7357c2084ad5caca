//! Incremental UTF-8 validation across message fragments.

/// Validates a byte stream delivered in pieces; a code point may straddle pieces.
///
/// Fails as soon as the bytes seen so far cannot be the start of valid UTF-8,
/// so a bad text message is refused at the first bad fragment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utf8Validator {
    /// Bytes of an incomplete code point at the end of the last piece.
    pending: [u8; 4],
    pending_len: u8,
}

/// Length of the UTF-8 sequence introduced by lead byte `b` (0 if not a lead byte).
fn seq_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// Validates the next piece. Returns false if the stream is invalid.
    pub fn feed(&mut self, mut piece: &[u8]) -> bool {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let need = seq_len(self.pending[0]);
            let take = (need - have).min(piece.len());
            self.pending[have..have + take].copy_from_slice(&piece[..take]);
            let got = have + take;
            match std::str::from_utf8(&self.pending[..got]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix; the piece was too short to finish it.
                    self.pending_len = got as u8;
                    return true;
                }
                Err(_) => return false,
            }
            piece = &piece[take..];
        }
        match std::str::from_utf8(piece) {
            Ok(_) => true,
            Err(e) => {
                if e.error_len().is_some() {
                    return false;
                }
                let tail = &piece[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                true
            }
        }
    }

    /// True if no code point is left unfinished (call at the end of a message).
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// Forgets any pending bytes (start of a new message).
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_in_pieces(bytes: &[u8], cut: usize) -> bool {
        let mut v = Utf8Validator::default();
        v.feed(&bytes[..cut]) && v.feed(&bytes[cut..]) && v.is_complete()
    }

    #[test]
    fn every_split_agrees_with_std() {
        let samples: [&[u8]; 8] = [
            "héllo €𝄞 done".as_bytes(),
            b"plain ascii",
            b"\xe2\x82",
            b"\xf0\x9d\x84",
            b"a\xc3\x28b",
            b"\xed\xa0\x80",     // surrogate
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\xc0\xaf",         // overlong
        ];
        for s in samples {
            let want = std::str::from_utf8(s).is_ok();
            for cut in 0..=s.len() {
                assert_eq!(valid_in_pieces(s, cut), want, "{s:?} cut {cut}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let s = "€𝄞é".as_bytes();
        let mut v = Utf8Validator::default();
        for b in s {
            assert!(v.feed(std::slice::from_ref(b)));
        }
        assert!(v.is_complete());
    }
}
