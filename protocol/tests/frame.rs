//! WebSocket frames: RFC 6455 §5.7 vectors, streaming, and one test per rule.

use corecast_protocol::ws::close::CloseCode;
use corecast_protocol::ws::frame::{
    close_payload, encode_client_frame, encode_client_frame_with, encode_close_frame,
    encode_server_frame, encode_server_header, FrameDecoder, Message, MessageDecoder, Opcode,
    ServerFrameHeader,
};
use corecast_protocol::FrameError;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// §5.7: a single-frame masked text message "Hello".
const MASKED_HELLO: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];
/// §5.7: a single-frame unmasked text message "Hello".
const UNMASKED_HELLO: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
/// §5.7: a fragmented unmasked text message "Hel" + "lo".
const FRAGMENTED_HELLO: [u8; 9] = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
/// §5.7: masked pong with body "Hello".
const MASKED_PONG: [u8; 11] = [
    0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

fn decode_one(
    dec: &mut FrameDecoder,
    bytes: &[u8],
) -> Result<(Opcode, bool, Vec<u8>, usize), FrameError> {
    let mut buf = bytes.to_vec();
    let (f, n) = dec.decode(&mut buf)?.expect("complete frame");
    Ok((f.opcode, f.fin, f.payload.to_vec(), n))
}

fn server_err(bytes: &[u8]) -> FrameError {
    let mut buf = bytes.to_vec();
    FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .expect_err("must be rejected")
}

#[test]
fn rfc_masked_hello_decodes() {
    let mut dec = FrameDecoder::default();
    assert_eq!(
        decode_one(&mut dec, &MASKED_HELLO),
        Ok((Opcode::Text, true, b"Hello".to_vec(), 11))
    );
}

#[test]
fn rfc_masked_hello_encodes() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Text, b"Hello", MASK, &mut out);
    assert_eq!(out, MASKED_HELLO);
}

#[test]
fn rfc_masked_pong_decodes() {
    let mut dec = FrameDecoder::default();
    assert_eq!(
        decode_one(&mut dec, &MASKED_PONG),
        Ok((Opcode::Pong, true, b"Hello".to_vec(), 11))
    );
}

#[test]
fn rfc_unmasked_hello_encodes_and_client_decodes() {
    let mut out = Vec::new();
    encode_server_frame(Opcode::Text, b"Hello", &mut out);
    assert_eq!(out, UNMASKED_HELLO);
    let mut dec = FrameDecoder::client(1024);
    assert_eq!(
        decode_one(&mut dec, &UNMASKED_HELLO),
        Ok((Opcode::Text, true, b"Hello".to_vec(), 7))
    );
}

#[test]
fn rfc_unmasked_ping_encodes() {
    let mut out = Vec::new();
    encode_server_frame(Opcode::Ping, b"Hello", &mut out);
    assert_eq!(out, [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
}

#[test]
fn rfc_fragmented_hello_client_side() {
    let mut dec = MessageDecoder::client(1024);
    let mut got = Vec::new();
    let mut buf = FRAGMENTED_HELLO.to_vec();
    dec.feed(&mut buf, |m| got.push(format!("{m:?}"))).unwrap();
    assert_eq!(got, vec![format!("{:?}", Message::Text("Hello"))]);
}

#[test]
fn rfc_256_byte_binary_header() {
    let (h, n) = encode_server_header(Opcode::Binary, true, 256);
    assert_eq!(&h[..n], &[0x82, 0x7e, 0x01, 0x00]);
    let payload: Vec<u8> = (0..=255).collect();
    let mut out = Vec::new();
    encode_server_frame(Opcode::Binary, &payload, &mut out);
    assert_eq!(out.len(), 4 + 256);
    let mut dec = FrameDecoder::client(1 << 20);
    assert_eq!(
        decode_one(&mut dec, &out),
        Ok((Opcode::Binary, true, payload, 260))
    );
}

#[test]
fn rfc_64k_binary_header() {
    let (h, n) = encode_server_header(Opcode::Binary, true, 65536);
    assert_eq!(&h[..n], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    let mut out = Vec::new();
    encode_client_frame(Opcode::Binary, &payload, [1, 2, 3, 4], &mut out);
    assert_eq!(
        &out[..14],
        &[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]
    );
    let mut dec = FrameDecoder::new(1 << 20);
    assert_eq!(
        decode_one(&mut dec, &out),
        Ok((Opcode::Binary, true, payload, 14 + 65536))
    );
}

#[test]
fn length_form_boundaries() {
    for (len, hlen) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let h = ServerFrameHeader::new(Opcode::Binary, true, len);
        assert_eq!(h.as_bytes().len(), hlen, "len {len}");
    }
    let h = ServerFrameHeader::new(Opcode::Text, false, 5);
    assert_eq!(h.as_bytes(), &[0x01, 0x05]);
}

#[test]
fn close_frame_encoding() {
    let mut out = Vec::new();
    encode_close_frame(CloseCode::PROTOCOL_ERROR, "bad", &mut out);
    assert_eq!(out, [0x88, 0x05, 0x03, 0xea, b'b', b'a', b'd']);
    // Reason truncated to 123 bytes at a character boundary.
    let long = "é".repeat(100);
    let (p, n) = close_payload(CloseCode::NORMAL, &long);
    assert_eq!(n, 2 + 122);
    assert!(std::str::from_utf8(&p[2..n]).is_ok());
}

#[test]
fn close_frame_decodes_code_and_reason() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Close, &[0x03, 0xe8, b'o', b'k'], MASK, &mut out);
    let mut dec = FrameDecoder::default();
    let (f, _) = dec.decode(&mut out).unwrap().unwrap();
    assert_eq!(f.close(), Some((CloseCode::NORMAL, "ok")));
    let mut empty = Vec::new();
    encode_client_frame(Opcode::Close, b"", MASK, &mut empty);
    let (f, _) = dec.decode(&mut empty).unwrap().unwrap();
    assert_eq!(f.close(), None);
}

#[test]
fn every_prefix_is_incomplete_and_untouched() {
    let mut frame = Vec::new();
    encode_client_frame(Opcode::Binary, &[9u8; 300], MASK, &mut frame);
    for i in 0..frame.len() {
        let mut buf = frame[..i].to_vec();
        assert_eq!(
            FrameDecoder::default().decode(&mut buf),
            Ok(None),
            "prefix {i}"
        );
        assert_eq!(buf, &frame[..i], "buffer must be untouched");
    }
}

#[test]
fn valid_close_codes_are_accepted() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut out = Vec::new();
        encode_client_frame(Opcode::Close, &code.to_be_bytes(), MASK, &mut out);
        assert!(
            FrameDecoder::default().decode(&mut out).unwrap().is_some(),
            "code {code}"
        );
    }
}

// One test per rule violation.

#[test]
fn rule_unmasked_client_frame() {
    assert_eq!(server_err(&UNMASKED_HELLO), FrameError::Unmasked);
    assert_eq!(FrameError::Unmasked.close_code(), 1002);
}

#[test]
fn rule_masked_server_frame_is_refused_by_client() {
    let mut buf = MASKED_HELLO.to_vec();
    assert_eq!(
        FrameDecoder::client(1024).decode(&mut buf),
        Err(FrameError::Unmasked)
    );
}

#[test]
fn rule_reserved_bits() {
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        let mut f = MASKED_HELLO;
        f[0] |= rsv;
        assert_eq!(server_err(&f), FrameError::ReservedBits(rsv >> 4));
    }
}

#[test]
fn rule_unknown_opcodes() {
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let mut f = MASKED_HELLO;
        f[0] = 0x80 | op;
        assert_eq!(server_err(&f), FrameError::UnknownOpcode(op));
    }
}

#[test]
fn rule_control_frame_too_long() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Ping, &[0u8; 126], MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::ControlTooLong(126));
    let mut ok = Vec::new();
    encode_client_frame(Opcode::Ping, &[0u8; 125], MASK, &mut ok);
    assert!(FrameDecoder::default().decode(&mut ok).unwrap().is_some());
}

#[test]
fn rule_control_frame_fragmented() {
    for op in [Opcode::Ping, Opcode::Pong, Opcode::Close] {
        let mut out = Vec::new();
        encode_client_frame_with(op, false, b"", MASK, &mut out);
        assert_eq!(server_err(&out), FrameError::ControlFragmented);
    }
}

#[test]
fn rule_continuation_without_start() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Continuation, b"x", MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::ContinuationWithoutStart);
}

#[test]
fn rule_new_data_frame_during_fragmentation() {
    for second in [Opcode::Text, Opcode::Binary] {
        let mut dec = FrameDecoder::default();
        let mut first = Vec::new();
        encode_client_frame_with(Opcode::Binary, false, b"a", MASK, &mut first);
        dec.decode(&mut first).unwrap().unwrap();
        let mut next = Vec::new();
        encode_client_frame(second, b"b", MASK, &mut next);
        assert_eq!(
            dec.decode(&mut next),
            Err(FrameError::DataDuringFragmentation)
        );
    }
}

#[test]
fn rule_control_frames_allowed_between_fragments() {
    let mut stream = Vec::new();
    encode_client_frame_with(Opcode::Text, false, b"He", MASK, &mut stream);
    encode_client_frame(Opcode::Ping, b"p", MASK, &mut stream);
    encode_client_frame_with(Opcode::Continuation, true, b"llo", MASK, &mut stream);
    let mut got = Vec::new();
    MessageDecoder::new(1024)
        .feed(&mut stream, |m| got.push(format!("{m:?}")))
        .unwrap();
    assert_eq!(
        got,
        vec![
            "Ping([112])".to_string(),
            format!("{:?}", Message::Text("Hello"))
        ]
    );
}

#[test]
fn rule_64_bit_length_msb() {
    let f = [0x82u8, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(server_err(&f), FrameError::LengthMsbSet);
}

#[test]
fn rule_close_payload_of_one_byte() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Close, &[3], MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::CloseTooShort);
}

#[test]
fn rule_invalid_close_codes() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut out = Vec::new();
        encode_client_frame(Opcode::Close, &code.to_be_bytes(), MASK, &mut out);
        assert_eq!(
            server_err(&out),
            FrameError::InvalidCloseCode(code),
            "code {code}"
        );
    }
}

#[test]
fn rule_close_reason_not_utf8() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Close, &[0x03, 0xe8, 0xff, 0xfe], MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::InvalidCloseReason);
    assert_eq!(FrameError::InvalidCloseReason.close_code(), 1007);
}

#[test]
fn rule_text_not_utf8() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Text, &[b'a', 0xc3, 0x28], MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::InvalidUtf8);
    assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
}

#[test]
fn rule_text_truncated_code_point_at_end() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Text, &[b'a', 0xe2, 0x82], MASK, &mut out);
    assert_eq!(server_err(&out), FrameError::InvalidUtf8);
}

#[test]
fn rule_text_invalid_across_fragments_fails_at_first_bad_fragment() {
    let mut dec = FrameDecoder::default();
    let mut a = Vec::new();
    encode_client_frame_with(Opcode::Text, false, &[b'x', 0xe2], MASK, &mut a);
    dec.decode(&mut a).unwrap().unwrap();
    let mut b = Vec::new();
    encode_client_frame_with(Opcode::Continuation, false, &[0x28], MASK, &mut b);
    assert_eq!(dec.decode(&mut b), Err(FrameError::InvalidUtf8));
}

#[test]
fn text_code_point_split_across_fragments_is_valid() {
    // "€" = e2 82 ac, split after each byte.
    for cut in 1..3 {
        let euro = "a€b".as_bytes();
        let mut stream = Vec::new();
        encode_client_frame_with(Opcode::Text, false, &euro[..1 + cut], MASK, &mut stream);
        encode_client_frame_with(Opcode::Continuation, false, &[], MASK, &mut stream);
        encode_client_frame_with(
            Opcode::Continuation,
            true,
            &euro[1 + cut..],
            MASK,
            &mut stream,
        );
        let mut got = String::new();
        MessageDecoder::new(64)
            .feed(&mut stream, |m| {
                if let Message::Text(t) = m {
                    got.push_str(t)
                }
            })
            .unwrap();
        assert_eq!(got, "a€b", "cut {cut}");
    }
}

#[test]
fn rule_incomplete_code_point_at_final_fragment() {
    let mut dec = FrameDecoder::default();
    let mut a = Vec::new();
    encode_client_frame_with(Opcode::Text, false, &[0xe2, 0x82], MASK, &mut a);
    dec.decode(&mut a).unwrap().unwrap();
    let mut b = Vec::new();
    encode_client_frame(Opcode::Continuation, b"", MASK, &mut b);
    assert_eq!(dec.decode(&mut b), Err(FrameError::InvalidUtf8));
}

#[test]
fn rule_frame_too_big_from_header_alone() {
    let mut out = Vec::new();
    encode_client_frame(Opcode::Binary, &[0u8; 101], MASK, &mut out);
    let mut header = out[..4].to_vec();
    assert_eq!(
        FrameDecoder::new(100).decode(&mut header),
        Err(FrameError::TooBig { len: 101, max: 100 })
    );
    assert_eq!(FrameError::TooBig { len: 101, max: 100 }.close_code(), 1009);
}

#[test]
fn rule_fragmented_message_too_big() {
    let mut dec = FrameDecoder::new(100);
    let mut a = Vec::new();
    encode_client_frame_with(Opcode::Binary, false, &[0u8; 60], MASK, &mut a);
    dec.decode(&mut a).unwrap().unwrap();
    let mut b = Vec::new();
    encode_client_frame(Opcode::Continuation, &[0u8; 41], MASK, &mut b);
    assert_eq!(
        dec.decode(&mut b),
        Err(FrameError::TooBig { len: 101, max: 100 })
    );
}

#[test]
fn protocol_errors_map_to_1002() {
    for e in [
        FrameError::ReservedBits(1),
        FrameError::UnknownOpcode(3),
        FrameError::ControlTooLong(126),
        FrameError::ControlFragmented,
        FrameError::ContinuationWithoutStart,
        FrameError::DataDuringFragmentation,
        FrameError::LengthMsbSet,
        FrameError::CloseTooShort,
        FrameError::InvalidCloseCode(1005),
    ] {
        assert_eq!(e.close_code(), 1002, "{e}");
    }
}

/// A client stream exercising every message kind, fragmentation, a code point
/// split across fragments and a 16-bit length.
fn mixed_stream() -> (Vec<u8>, Vec<String>) {
    let mut s = Vec::new();
    let mut want = Vec::new();
    encode_client_frame(
        Opcode::Binary,
        b"\x00\x00\x00\x10\x00\x10\x00\x01\x00\x00\x00\x02\x00\x00\x00\x01",
        [1, 2, 3, 4],
        &mut s,
    );
    want.push(format!(
        "{:?}",
        Message::Binary(b"\x00\x00\x00\x10\x00\x10\x00\x01\x00\x00\x00\x02\x00\x00\x00\x01")
    ));
    encode_client_frame_with(
        Opcode::Text,
        false,
        "h€".as_bytes()[..2].as_ref(),
        [5, 6, 7, 8],
        &mut s,
    );
    encode_client_frame(Opcode::Ping, b"pp", [9, 9, 9, 9], &mut s);
    want.push(format!("{:?}", Message::Ping(b"pp")));
    encode_client_frame_with(
        Opcode::Continuation,
        true,
        &"h€".as_bytes()[2..],
        [1, 1, 1, 1],
        &mut s,
    );
    want.push(format!("{:?}", Message::Text("h€")));
    let big = vec![0x5au8; 300];
    encode_client_frame(Opcode::Binary, &big, [0xde, 0xad, 0xbe, 0xef], &mut s);
    want.push(format!("{:?}", Message::Binary(&big)));
    encode_client_frame(Opcode::Pong, b"", [0, 0, 0, 0], &mut s);
    want.push(format!("{:?}", Message::Pong(b"")));
    encode_client_frame(
        Opcode::Close,
        &[0x03, 0xe9, b'b', b'y', b'e'],
        [3, 3, 3, 3],
        &mut s,
    );
    want.push(format!(
        "{:?}",
        Message::Close(Some((CloseCode::GOING_AWAY, "bye")))
    ));
    (s, want)
}

fn feed_parts(bytes: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut dec = MessageDecoder::new(1024);
    let mut got = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let mut part = bytes[start..end].to_vec();
        dec.feed(&mut part, |m| got.push(format!("{m:?}"))).unwrap();
        start = end;
    }
    assert_eq!(dec.buffered_len(), 0);
    got
}

#[test]
fn message_decoder_split_at_every_byte() {
    let (bytes, want) = mixed_stream();
    for i in 0..=bytes.len() {
        assert_eq!(feed_parts(&bytes, &[i]), want, "split at {i}");
    }
}

#[test]
fn message_decoder_split_at_every_pair_of_bytes() {
    let (bytes, want) = mixed_stream();
    // The 300-byte frame makes all pairs slow in debug builds; step inside it.
    for i in 0..=bytes.len() {
        for j in (i..=bytes.len()).step_by(3) {
            assert_eq!(feed_parts(&bytes, &[i, j]), want, "split at {i},{j}");
        }
    }
}

#[test]
fn message_decoder_byte_by_byte() {
    let (bytes, want) = mixed_stream();
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(feed_parts(&bytes, &cuts), want);
}

#[test]
fn message_decoder_reports_errors_in_spilled_header() {
    let mut dec = MessageDecoder::new(1024);
    let mut a = [0x81u8];
    assert_eq!(dec.feed(&mut a, |_| {}), Ok(0));
    let mut b = [0x05u8, 0, 0];
    assert_eq!(dec.feed(&mut b, |_| {}), Err(FrameError::Unmasked));
}

#[test]
fn frame_decoder_state_is_small() {
    // It lives in every connection (design §2: ≤ 256 bytes per idle connection in total).
    assert!(
        std::mem::size_of::<FrameDecoder>() <= 16,
        "{}",
        std::mem::size_of::<FrameDecoder>()
    );
}
