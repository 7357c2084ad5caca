//! A WebSocket client may send its op-7 auth frame right behind the upgrade
//! request, in the same write (the loadgen's `--pipeline-auth`). The server
//! must treat the bytes after the request as frames, and answer with the
//! 101 and the op-8 reply together: one send for both.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use corecast_protocol::packet::{encode_packet_to_vec, parse_single_packet};
use corecast_protocol::ws::frame::{encode_client_frame, FrameDecoder, Opcode};
use corecast_protocol::ws::handshake::{
    key_from_bytes, parse_upgrade_response, write_upgrade_request,
};
use corecast_testkit::server::{auth_body, op, Server};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");

#[test]
fn upgrade_and_auth_in_one_write_get_101_and_op8_in_one_send() {
    let srv = Server::builder(BIN)
        .args(["--shards", "1", "--auth-mode", "insecure"])
        .start()
        .expect("start corecast");
    let key = key_from_bytes([7u8; 16]);
    let mut req = Vec::new();
    write_upgrade_request(&srv.ws.to_string(), "/sub", &key, &mut req);
    let auth = encode_packet_to_vec(op::AUTH, 1, &auth_body(42, "", "live://9", &[], None));
    encode_client_frame(Opcode::Binary, &auth, [1, 2, 3, 4], &mut req);

    let mut s = TcpStream::connect(srv.ws).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&req).expect("one write: upgrade + op 7");

    // Read until the 101 and one whole frame after it are in.
    let mut buf = Vec::new();
    let mut dec = FrameDecoder::client(1 << 20);
    let reply = loop {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).expect("read the 101 and op 8");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
        let Some(used) = parse_upgrade_response(&buf, &key).expect("a valid 101") else {
            continue;
        };
        let mut rest = buf[used..].to_vec();
        if let Some((frame, _)) = dec.decode(&mut rest).expect("a valid frame") {
            assert_eq!(frame.opcode, Opcode::Binary);
            let p = parse_single_packet(frame.payload, 1 << 20).expect("a goim packet");
            break (p.op, p.seq, p.body.to_vec());
        }
    };
    assert_eq!(
        reply,
        (op::AUTH_REPLY, 1, Vec::new()),
        "op 8, empty body: auth ok"
    );

    // Shard reports are periodic: wait for one that saw the auth (the
    // connection is still open then), close, and wait for a later one where
    // the shard has freed the connection: by then every send it made for it
    // has completed and is counted.
    let authed = srv
        .wait_metric(&["corecast_auth_ok_total"], Duration::from_secs(10), |v| {
            v >= 1.0
        })
        .expect("metrics");
    assert_eq!(authed, 1.0, "one auth reported");
    drop(s);
    let slab = srv
        .wait_metric(
            &["corecast_index_entries", "index=\"slab\""],
            Duration::from_secs(10),
            |v| v == 0.0,
        )
        .expect("metrics");
    assert_eq!(slab, 0.0, "the connection was freed");
    let sends = srv.metric_sum(&["corecast_sends_total"]).expect("metrics");
    assert_eq!(sends, 1.0, "101 and op 8 went out in one send");
}
