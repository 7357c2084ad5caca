//! Frame decoder: the streaming message decoder fed the input in random pieces
//! must agree with the zero-copy frame decoder run over the whole input, and
//! neither may panic.
#![no_main]

use corecast_protocol::ws::frame::{FrameDecoder, Message, MessageDecoder, Opcode, Role};
use corecast_protocol::FrameError;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Whole-buffer reference built from frames, reassembling messages by hand.
fn reference(buf: &mut [u8], role: Role, max: usize) -> (Vec<Event>, Option<FrameError>) {
    let mut dec = FrameDecoder::with_role(role, max);
    let mut out = Vec::new();
    let mut msg = Vec::new();
    let mut pos = 0;
    loop {
        match dec.decode(&mut buf[pos..]) {
            Ok(Some((f, n))) => {
                pos += n;
                match f.opcode {
                    Opcode::Ping => out.push(Event::Ping(f.payload.to_vec())),
                    Opcode::Pong => out.push(Event::Pong(f.payload.to_vec())),
                    Opcode::Close => {
                        out.push(Event::Close(f.close().map(|(c, r)| (c.0, r.to_owned()))))
                    }
                    _ => {
                        msg.extend_from_slice(f.payload);
                        if f.fin {
                            let m = std::mem::take(&mut msg);
                            out.push(match f.message_opcode {
                                Opcode::Text => {
                                    Event::Text(String::from_utf8(m).expect("validated"))
                                }
                                _ => Event::Binary(m),
                            });
                        }
                    }
                }
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
    let role = if ctl & 0x80 != 0 {
        Role::Client
    } else {
        Role::Server
    };
    let max = if ctl & 0x40 != 0 { 100 } else { 1 << 16 };
    let step = usize::from(ctl & 0x3f) + 1;

    let mut whole = data.to_vec();
    let (want, want_err) = reference(&mut whole, role, max);

    let mut dec = MessageDecoder::from_frame_decoder(FrameDecoder::with_role(role, max));
    let mut got = Vec::new();
    let mut err = None;
    for piece in data.chunks(step) {
        let mut piece = piece.to_vec();
        let r = dec.feed(&mut piece, |m| {
            got.push(match m {
                Message::Text(t) => Event::Text(t.to_owned()),
                Message::Binary(b) => Event::Binary(b.to_vec()),
                Message::Ping(b) => Event::Ping(b.to_vec()),
                Message::Pong(b) => Event::Pong(b.to_vec()),
                Message::Close(c) => Event::Close(c.map(|(c, r)| (c.0, r.to_owned()))),
            })
        });
        if let Err(e) = r {
            err = Some(e);
            break;
        }
    }
    assert_eq!(got, want);
    assert_eq!(err, want_err);
});
