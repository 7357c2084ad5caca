//! Property tests: round trips through encoders and decoders, random splits.

use corecast_protocol::packet::{
    encode_packet, parse_packet, raw_packets, Packet, PacketDecoder, RawContainer,
};
use corecast_protocol::ws::frame::{
    encode_client_frame, encode_client_frame_with, encode_server_frame, FrameDecoder, Message,
    MessageDecoder, Opcode,
};
use corecast_protocol::ws::mask::{apply_mask, apply_mask_bytewise};
use proptest::prelude::*;

fn packet() -> impl Strategy<Value = Packet> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(op, seq, body)| Packet::new(op, seq, body))
}

/// Sorted cut points inside `0..=len`.
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.sort_unstable();
    c
}

fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        out.push(&bytes[start..c]);
        start = c;
    }
    out
}

proptest! {
    // Fewer cases than the default 256: frames up to 70 KB are slow in debug builds.
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn packet_round_trip(p in packet()) {
        let mut buf = Vec::new();
        encode_packet(p.op, p.seq, &p.body, &mut buf);
        let (got, n) = parse_packet(&buf, 300).unwrap().unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(got.to_owned(), p);
    }

    #[test]
    fn packet_stream_any_split(ps in prop::collection::vec(packet(), 0..8),
                               raw in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut buf = Vec::new();
        for p in &ps {
            encode_packet(p.op, p.seq, &p.body, &mut buf);
        }
        let mut dec = PacketDecoder::new(300);
        let mut got = Vec::new();
        for piece in pieces(&buf, &cuts(buf.len(), &raw)) {
            dec.feed(piece, |p| got.push(p.to_owned())).unwrap();
        }
        prop_assert_eq!(dec.buffered_len(), 0);
        prop_assert_eq!(got, ps);
    }

    #[test]
    fn container_round_trip(ps in prop::collection::vec(packet(), 0..8), seq in any::<u32>()) {
        let mut c = RawContainer::new();
        for p in &ps {
            c.push_ref(&p.as_ref());
        }
        let batch = c.finish(seq);
        // WS frame -> client frame decoder -> op-9 packet -> inner packets.
        let mut ws = batch.ws_frame().to_vec();
        let mut dec = FrameDecoder::client(1 << 20);
        let len = ws.len();
        let (frame, n) = dec.decode(&mut ws).unwrap().unwrap();
        prop_assert_eq!(n, len);
        prop_assert_eq!(frame.opcode, Opcode::Binary);
        let (outer, _) = parse_packet(frame.payload, usize::MAX).unwrap().unwrap();
        prop_assert_eq!((outer.op, outer.seq), (9, seq));
        prop_assert_eq!(outer.body, &batch.inner()[..]);
        let got: Vec<Packet> = raw_packets(outer.body).map(|p| p.unwrap().to_owned()).collect();
        prop_assert_eq!(got, ps);
    }

    #[test]
    fn client_frame_round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000),
                               key in any::<[u8; 4]>(), binary in any::<bool>()) {
        let opcode = if binary { Opcode::Binary } else { Opcode::Text };
        let payload = if binary { payload } else { String::from_utf8_lossy(&payload).into_owned().into_bytes() };
        let mut buf = Vec::new();
        encode_client_frame(opcode, &payload, key, &mut buf);
        let mut dec = FrameDecoder::new(1 << 20);
        let len = buf.len();
        let (frame, n) = dec.decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(n, len);
        prop_assert_eq!(frame.opcode, opcode);
        prop_assert_eq!(frame.payload, &payload[..]);
    }

    #[test]
    fn server_frame_round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000)) {
        let mut buf = Vec::new();
        encode_server_frame(Opcode::Binary, &payload, &mut buf);
        let mut dec = FrameDecoder::client(1 << 20);
        let len = buf.len();
        let (frame, n) = dec.decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(n, len);
        prop_assert_eq!(frame.payload, &payload[..]);
    }

    #[test]
    fn fragmented_text_any_split(text in "\\PC{0,40}", frag in prop::collection::vec(any::<usize>(), 0..4),
                                 raw in prop::collection::vec(any::<usize>(), 0..6)) {
        // Fragment the message at arbitrary byte positions (even inside a code point),
        // then feed the byte stream split at arbitrary positions.
        let bytes = text.as_bytes();
        let fcuts = cuts(bytes.len(), &frag);
        let frags = pieces(bytes, &fcuts);
        let mut stream = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let op = if i == 0 { Opcode::Text } else { Opcode::Continuation };
            encode_client_frame_with(op, i + 1 == frags.len(), f, [i as u8, 1, 2, 3], &mut stream);
        }
        let mut dec = MessageDecoder::new(1024);
        let mut got = Vec::new();
        for piece in pieces(&stream, &cuts(stream.len(), &raw)) {
            let mut piece = piece.to_vec();
            dec.feed(&mut piece, |m| if let Message::Text(t) = m { got.push(t.to_owned()) }).unwrap();
        }
        prop_assert_eq!(got, vec![text]);
    }

    #[test]
    fn mask_matches_bytewise(data in prop::collection::vec(any::<u8>(), 0..200),
                             key in any::<[u8; 4]>(), offset in 0usize..16) {
        let mut fast = data.clone();
        let mut slow = data;
        apply_mask(&mut fast, key, offset);
        apply_mask_bytewise(&mut slow, key, offset);
        prop_assert_eq!(fast, slow);
    }
}
