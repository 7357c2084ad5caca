//! goim packet codec: hand-written vectors, streaming, containers, rule violations.

use corecast_protocol::packet::{
    encode_packet, encode_packet_to_vec, op, parse_packet, parse_single_packet, raw_packets,
    Packet, PacketDecoder, PacketHeader, RawContainer, DEFAULT_MAX_BODY, HEADER_LEN,
};
use corecast_protocol::PacketError;

/// op 7, seq 1, body "ab", written by hand from the header layout.
const AUTH_AB: [u8; 18] = [
    0x00, 0x00, 0x00, 0x12, // packet_len 18
    0x00, 0x10, // header_len 16
    0x00, 0x01, // version 1
    0x00, 0x00, 0x00, 0x07, // op 7
    0x00, 0x00, 0x00, 0x01, // seq 1
    b'a', b'b',
];

/// op 2 (heartbeat), seq 0x01020304, empty body.
const HEARTBEAT: [u8; 16] = [
    0x00, 0x00, 0x00, 0x10, 0x00, 0x10, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x01, 0x02, 0x03, 0x04,
];

#[test]
fn op_constants_match_goim() {
    let ops = [
        (op::HEARTBEAT, 2),
        (op::HEARTBEAT_REPLY, 3),
        (op::SEND_MSG, 4),
        (op::SEND_MSG_REPLY, 5),
        (op::DISCONNECT_REPLY, 6),
        (op::AUTH, 7),
        (op::AUTH_REPLY, 8),
        (op::RAW, 9),
        (op::CHANGE_ROOM, 12),
        (op::CHANGE_ROOM_REPLY, 13),
        (op::SUB, 14),
        (op::SUB_REPLY, 15),
        (op::UNSUB, 16),
        (op::UNSUB_REPLY, 17),
    ];
    for (got, want) in ops {
        assert_eq!(got, want);
    }
    assert_eq!(HEADER_LEN, 16);
}

#[test]
fn encode_matches_hand_written_vectors() {
    assert_eq!(encode_packet_to_vec(op::AUTH, 1, b"ab"), AUTH_AB);
    assert_eq!(
        encode_packet_to_vec(op::HEARTBEAT, 0x01020304, b""),
        HEARTBEAT
    );
    let mut v = Vec::new();
    encode_packet(op::AUTH, 1, b"ab", &mut v);
    encode_packet(op::HEARTBEAT, 0x01020304, b"", &mut v);
    assert_eq!(v, [&AUTH_AB[..], &HEARTBEAT[..]].concat());
}

#[test]
fn header_round_trip() {
    let h = PacketHeader::from_bytes(AUTH_AB[..16].try_into().unwrap());
    assert_eq!(
        h,
        PacketHeader {
            packet_len: 18,
            header_len: 16,
            version: 1,
            op: 7,
            seq: 1
        }
    );
    assert_eq!(h.to_bytes(), AUTH_AB[..16]);
    assert_eq!(h.body_len(), 2);
}

#[test]
fn parse_borrows_and_reports_consumed() {
    let mut buf = AUTH_AB.to_vec();
    buf.extend_from_slice(&HEARTBEAT);
    let (p, n) = parse_packet(&buf, DEFAULT_MAX_BODY).unwrap().unwrap();
    assert_eq!(
        (p.op, p.seq, p.version, p.body, n),
        (7, 1, 1, &b"ab"[..], 18)
    );
    assert_eq!(
        p.body.as_ptr(),
        buf[16..].as_ptr(),
        "body must borrow the input"
    );
    let (p, n) = parse_packet(&buf[18..], DEFAULT_MAX_BODY).unwrap().unwrap();
    assert_eq!((p.op, p.seq, p.body.len(), n), (2, 0x01020304, 0, 16));
}

#[test]
fn parse_every_prefix_is_incomplete() {
    for i in 0..AUTH_AB.len() {
        assert_eq!(
            parse_packet(&AUTH_AB[..i], DEFAULT_MAX_BODY),
            Ok(None),
            "prefix {i}"
        );
    }
}

#[test]
fn version_is_not_checked_but_reported() {
    let mut buf = AUTH_AB;
    buf[7] = 9;
    let (p, _) = parse_packet(&buf, DEFAULT_MAX_BODY).unwrap().unwrap();
    assert_eq!(p.version, 9);
}

#[test]
fn bad_header_len_is_rejected() {
    let mut buf = AUTH_AB;
    buf[5] = 0x11;
    assert_eq!(parse_packet(&buf, 4096), Err(PacketError::BadHeaderLen(17)));
}

#[test]
fn packet_len_smaller_than_header_is_rejected() {
    let mut buf = AUTH_AB;
    buf[3] = 15;
    assert_eq!(
        parse_packet(&buf, 4096),
        Err(PacketError::PacketLenTooSmall(15))
    );
}

#[test]
fn body_over_limit_is_rejected_from_the_header_alone() {
    let big = encode_packet_to_vec(op::SEND_MSG, 0, &[0u8; 4097]);
    assert_eq!(
        parse_packet(&big[..16], 4096),
        Err(PacketError::BodyTooLarge {
            len: 4097,
            max: 4096
        })
    );
    assert_eq!(
        PacketError::BodyTooLarge {
            len: 4097,
            max: 4096
        }
        .close_code(),
        1009
    );
    assert!(parse_packet(&big, 4097).unwrap().is_some());
}

#[test]
fn single_packet_rules() {
    assert_eq!(parse_single_packet(&AUTH_AB, 4096).unwrap().body, b"ab");
    let mut two = AUTH_AB.to_vec();
    two.push(0);
    assert_eq!(
        parse_single_packet(&two, 4096),
        Err(PacketError::TrailingBytes(1))
    );
    assert_eq!(
        parse_single_packet(&AUTH_AB[..17], 4096),
        Err(PacketError::TruncatedContainer(17))
    );
}

fn stream() -> (Vec<u8>, Vec<Packet>) {
    let packets = vec![
        Packet::new(op::AUTH, 1, &b"{\"mid\":1}"[..]),
        Packet::new(op::HEARTBEAT, 2, &b""[..]),
        Packet::new(op::SEND_MSG, 3, vec![7u8; 40]),
        Packet::new(op::HEARTBEAT, 4, &b""[..]),
        Packet::new(1000, 5, &b"x"[..]),
    ];
    let mut bytes = Vec::new();
    for p in &packets {
        encode_packet(p.op, p.seq, &p.body, &mut bytes);
    }
    (bytes, packets)
}

fn feed_parts(parts: &[&[u8]]) -> Vec<Packet> {
    let mut dec = PacketDecoder::new(DEFAULT_MAX_BODY);
    let mut out = Vec::new();
    for part in parts {
        dec.feed(part, |p| out.push(p.to_owned())).unwrap();
    }
    assert_eq!(dec.buffered_len(), 0);
    assert_eq!(dec.spill_capacity(), 0, "spill must be released");
    out
}

#[test]
fn decoder_split_at_every_byte() {
    let (bytes, packets) = stream();
    for i in 0..=bytes.len() {
        assert_eq!(
            feed_parts(&[&bytes[..i], &bytes[i..]]),
            packets,
            "split at {i}"
        );
    }
}

#[test]
fn decoder_split_at_every_pair_of_bytes() {
    let (bytes, packets) = stream();
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            let got = feed_parts(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
            assert_eq!(got, packets, "split at {i},{j}");
        }
    }
}

#[test]
fn decoder_byte_by_byte() {
    let (bytes, packets) = stream();
    let parts: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(feed_parts(&parts), packets);
}

#[test]
fn decoder_only_buffers_the_incomplete_packet() {
    let (bytes, _) = stream();
    let mut dec = PacketDecoder::new(DEFAULT_MAX_BODY);
    // Two whole packets and 5 bytes of the third.
    let cut = 16 + 9 + 16 + 5;
    let n = dec.feed(&bytes[..cut], |_| {}).unwrap();
    assert_eq!(n, 2);
    assert_eq!(dec.buffered_len(), 5);
}

#[test]
fn decoder_enforces_limit_across_splits() {
    let big = encode_packet_to_vec(op::SEND_MSG, 0, &[0u8; 100]);
    for i in 0..16 {
        let mut dec = PacketDecoder::new(99);
        assert_eq!(dec.feed(&big[..i], |_| {}), Ok(0));
        assert_eq!(
            dec.feed(&big[i..], |_| {}),
            Err(PacketError::BodyTooLarge { len: 100, max: 99 }),
            "split at {i}"
        );
    }
}

#[test]
fn decoder_reports_bad_header_in_spill() {
    let mut bad = AUTH_AB;
    bad[5] = 0;
    let mut dec = PacketDecoder::default();
    assert_eq!(dec.feed(&bad[..3], |_| {}), Ok(0));
    assert_eq!(
        dec.feed(&bad[3..], |_| {}),
        Err(PacketError::BadHeaderLen(0))
    );
}

#[test]
fn container_views_share_one_encoding() {
    let mut c = RawContainer::new();
    c.push(1000, 0, b"hello");
    c.push_encoded(&AUTH_AB);
    let p = Packet::new(1001, 9, &b"xyz"[..]);
    c.push_ref(&p.as_ref());
    assert_eq!(c.count(), 3);
    let inner_len = 21 + 18 + 19;
    assert_eq!(c.inner_len(), inner_len);
    let batch = c.finish(0);

    let inner = batch.inner();
    let mut want_inner = encode_packet_to_vec(1000, 0, b"hello");
    want_inner.extend_from_slice(&AUTH_AB);
    want_inner.extend_from_slice(&encode_packet_to_vec(1001, 9, b"xyz"));
    assert_eq!(&inner[..], &want_inner[..]);

    let packet = batch.packet();
    assert_eq!(
        &packet[..],
        &encode_packet_to_vec(op::RAW, 0, &want_inner)[..]
    );

    let ws = batch.ws_frame();
    assert_eq!(ws[0], 0x82, "FIN + binary");
    assert_eq!(ws[1] as usize, 16 + inner_len, "7-bit length form");
    assert_eq!(&ws[2..], &packet[..]);

    let got: Vec<_> = raw_packets(&inner).map(|p| p.unwrap().to_owned()).collect();
    assert_eq!(
        got,
        vec![
            Packet::new(1000, 0, &b"hello"[..]),
            Packet::new(op::AUTH, 1, &b"ab"[..]),
            p
        ]
    );
}

#[test]
fn container_small_uses_7_bit_ws_length() {
    let mut c = RawContainer::with_capacity(64);
    c.push(1000, 0, b"hi");
    let ws = c.finish(7).ws_frame();
    assert_eq!(&ws[..2], &[0x82, 16 + 18]);
    let (p, _) = parse_packet(&ws[2..], 4096).unwrap().unwrap();
    assert_eq!((p.op, p.seq), (op::RAW, 7));
}

#[test]
fn container_large_uses_16_and_64_bit_ws_length() {
    for (body, hlen) in [(200usize, 4usize), (70_000, 10)] {
        let mut c = RawContainer::new();
        c.push(1000, 0, &vec![1u8; body]);
        let b = c.finish(0);
        let ws = b.ws_frame();
        assert_eq!(ws.len(), hlen + 16 + 16 + body);
        assert_eq!(&ws[hlen..], &b.packet()[..]);
        let want_len = if hlen == 4 { 126 } else { 127 };
        assert_eq!(ws[1], want_len);
    }
}

#[test]
fn empty_container() {
    let c = RawContainer::default();
    assert!(c.is_empty());
    let b = c.finish(0);
    assert_eq!(&b.packet()[..], &encode_packet_to_vec(op::RAW, 0, b"")[..]);
    assert_eq!(raw_packets(&b.inner()).count(), 0);
}

#[test]
fn container_iterator_rejects_truncation_and_limit() {
    let mut body = AUTH_AB.to_vec();
    body.extend_from_slice(&HEARTBEAT[..10]);
    let items: Vec<_> = raw_packets(&body).collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert_eq!(items[1], Err(PacketError::TruncatedContainer(10)));

    let items: Vec<_> = raw_packets(&AUTH_AB).max_body(1).collect();
    assert_eq!(
        items,
        vec![Err(PacketError::BodyTooLarge { len: 2, max: 1 })]
    );
}

#[test]
fn op_lists_and_heartbeat_body() {
    use corecast_protocol::packet::{heartbeat_reply_body, op_list};
    let got: Vec<_> = op_list(b"1000, 1001,,x,4294967296,7,").collect();
    assert_eq!(got, vec![Some(1000), Some(1001), None, None, Some(7)]);
    assert_eq!(op_list(b"").count(), 0);
    assert_eq!(heartbeat_reply_body(258), [0, 0, 1, 2]);
}
