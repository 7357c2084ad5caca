//! Packet decoder: the streaming decoder fed the input in random pieces must
//! agree with `parse_packet` run over the whole input, and never panic.
#![no_main]

use corecast_protocol::packet::{op_list, parse_packet, raw_packets, Packet, PacketDecoder};
use corecast_protocol::PacketError;
use libfuzzer_sys::fuzz_target;

/// Whole-buffer reference: packets until the first error or incomplete tail.
fn reference(mut buf: &[u8], max_body: usize) -> (Vec<Packet>, Option<PacketError>) {
    let mut out = Vec::new();
    loop {
        match parse_packet(buf, max_body) {
            Ok(Some((p, n))) => {
                out.push(p.to_owned());
                buf = &buf[n..];
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let max_body = if ctl & 0x80 != 0 { 64 } else { 4096 };
    let step = usize::from(ctl & 0x3f) + 1;

    let (want, want_err) = reference(data, max_body);
    let mut dec = PacketDecoder::new(max_body);
    let mut got = Vec::new();
    let mut err = None;
    for piece in data.chunks(step) {
        if let Err(e) = dec.feed(piece, |p| got.push(p.to_owned())) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(err, want_err);

    // The op-list parser and the container iterator must not panic either.
    let _ = op_list(data).count();
    for p in raw_packets(data).max_body(max_body) {
        if p.is_err() {
            break;
        }
    }
});
