//! One-write WebSocket handshakes, as the loadgen's `--pipeline-auth` sends
//! them: the upgrade request with the op-7 auth frame right behind it, and
//! the reading side that expects the 101 and the op-8 frame back.

use std::io::Read;
use std::net::TcpStream;

use anyhow::{bail, Context, Result};
use corecast_protocol::packet::{encode_packet_to_vec, op, parse_single_packet};
use corecast_protocol::ws::frame::{encode_client_frame, FrameDecoder, Opcode};
use corecast_protocol::ws::handshake::{
    key_from_bytes, parse_upgrade_response, write_upgrade_request,
};

use crate::client::auth_body;

/// The bytes of one pipelined handshake and the key its 101 must answer.
pub struct PipelinedAuth {
    pub request: Vec<u8>,
    pub key: String,
}

/// `GET /sub` upgrade for `host` followed by a masked binary frame holding
/// op 7 (seq 1) for `mid` joining `room` (insecure auth, no token).
pub fn pipelined_auth(host: &str, mid: i64, room: &str) -> PipelinedAuth {
    let key = key_from_bytes([mid as u8; 16]);
    let mut request = Vec::new();
    write_upgrade_request(host, "/sub", &key, &mut request);
    let auth = encode_packet_to_vec(op::AUTH, 1, &auth_body(mid, "", room, &[], None));
    encode_client_frame(Opcode::Binary, &auth, [1, 2, 3, 4], &mut request);
    PipelinedAuth { request, key }
}

/// Reads the 101 and the first frame after it; returns that frame's goim
/// packet as (op, seq, body). The stream's read timeout bounds the wait.
pub fn read_101_and_packet(s: &mut TcpStream, key: &str) -> Result<(u32, u32, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut dec = FrameDecoder::client(1 << 20);
    loop {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).context("read the 101 and the first frame")?;
        if n == 0 {
            bail!("closed early: {:?}", String::from_utf8_lossy(&buf));
        }
        buf.extend_from_slice(&b[..n]);
        let Some(used) = parse_upgrade_response(&buf, key).context("a valid 101")? else {
            continue;
        };
        let mut rest = buf[used..].to_vec();
        if let Some((frame, _)) = dec.decode(&mut rest).context("a valid frame")? {
            if frame.opcode != Opcode::Binary {
                bail!("first frame is {:?}, not binary", frame.opcode);
            }
            let p = parse_single_packet(frame.payload, 1 << 20).context("a goim packet")?;
            return Ok((p.op, p.seq, p.body.to_vec()));
        }
    }
}
