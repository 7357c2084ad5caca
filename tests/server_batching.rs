//! Room batching window (design §2, `fanout.batch_window_ms`): the real
//! binary, real sockets. Pushes of one room within the window reach a WS
//! member as one op-9 frame holding them in order, and a TCP member as the
//! same packets back to back; pushes to keys are not held; shutdown flushes
//! what is held. The window is long (seconds) so that the few HTTP pushes
//! of a test always fall inside it; nothing here measures time.

use std::time::Duration;

use corecast_protocol::packet::{parse_packet, raw_packets, Packet};
use corecast_testkit::server::{auth_body, op, Server, TcpClient, WsClient, WsEvent};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");
const OP_APP: u32 = 1000;

fn server(window_ms: u64) -> Server {
    Server::builder(BIN)
        .args(["--shards", "1", "--auth-mode", "insecure"])
        .args(["--batch-window-ms", &window_ms.to_string()])
        .start()
        .expect("start corecast")
}

/// The next binary WS frame as one goim packet (control frames skipped).
fn next_ws_packet(w: &mut WsClient) -> Packet {
    loop {
        match w.read_event().expect("read a WS frame") {
            WsEvent::Binary(b) => {
                let (p, n) = parse_packet(&b, 1 << 24)
                    .expect("a goim packet")
                    .expect("a whole packet in the frame");
                assert_eq!(n, b.len(), "one packet per WS frame");
                return p.to_owned();
            }
            WsEvent::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// The inner packets of an op-9 container.
fn inner(p: &Packet) -> Vec<Packet> {
    assert_eq!(p.op, op::RAW, "expected an op-9 container, got op {}", p.op);
    raw_packets(&p.body)
        .map(|r| r.expect("inner packet").to_owned())
        .collect()
}

fn bodies(ps: &[Packet]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.body).into_owned())
        .collect()
}

#[test]
fn room_pushes_within_the_window_arrive_as_one_container() {
    let srv = server(2000);
    let mut w =
        WsClient::connect_auth(srv.ws, &auth_body(1, "ws-1", "live://b", &[], None)).unwrap();
    let mut t =
        TcpClient::connect_auth(srv.tcp, &auth_body(2, "tcp-1", "live://b", &[], None)).unwrap();
    let sent: Vec<String> = (0..5).map(|i| format!("msg-{i}")).collect();
    for b in &sent {
        srv.push_room("live", "b", OP_APP, b.as_bytes()).unwrap();
    }
    // Not held: reaches the WS client before the room's batch.
    srv.push_keys(&["ws-1"], OP_APP, b"direct").unwrap();

    let first = next_ws_packet(&mut w);
    assert_eq!(bodies(&inner(&first)), vec!["direct"], "key push first");
    let batch = next_ws_packet(&mut w);
    let msgs = inner(&batch);
    assert!(msgs.iter().all(|p| p.op == OP_APP));
    assert_eq!(
        bodies(&msgs),
        sent,
        "one frame with every room push, in order"
    );

    // TCP: the same messages as plain packets, in order.
    let got: Vec<Packet> = (0..sent.len())
        .map(|_| t.read_op(OP_APP).unwrap())
        .collect();
    assert_eq!(bodies(&got), sent);

    // The connections still work after the batch (heartbeat round trip).
    t.heartbeat().unwrap();
    w.heartbeat().unwrap();
}

#[test]
fn shutdown_flushes_held_room_batches() {
    let srv = server(10_000);
    let mut w = WsClient::connect_auth(srv.ws, &auth_body(1, "", "live://s", &[], None)).unwrap();
    let mut t = TcpClient::connect_auth(srv.tcp, &auth_body(2, "", "live://s", &[], None)).unwrap();
    let sent: Vec<String> = (0..3).map(|i| format!("held-{i}")).collect();
    for b in &sent {
        srv.push_room("live", "s", OP_APP, b.as_bytes()).unwrap();
    }
    srv.signal(libc::SIGTERM);

    let (code, before) = w.expect_close(Duration::from_secs(10)).unwrap();
    assert_eq!(code, Some(1001), "WS goodbye");
    let app: Vec<Packet> = before.into_iter().filter(|p| p.op == OP_APP).collect();
    assert_eq!(
        bodies(&app),
        sent,
        "WS got the held batch before the goodbye"
    );

    let got = t.read_until_closed(Duration::from_secs(10)).unwrap();
    let app: Vec<Packet> = got.into_iter().filter(|p| p.op == OP_APP).collect();
    assert_eq!(
        bodies(&app),
        sent,
        "TCP got the held batch before the close"
    );
}

#[test]
fn a_burst_past_the_container_limit_arrives_as_several_bounded_containers() {
    // Default byte cap 256 KiB: containers of at most 64 KiB (WS frame).
    const LIMIT: usize = 64 * 1024;
    let srv = server(2000);
    let mut w = WsClient::connect_auth(srv.ws, &auth_body(1, "", "live://big", &[], None)).unwrap();
    // 120 pushes of 2 KiB: about 240 KiB, several containers' worth.
    let sent: Vec<String> = (0..120)
        .map(|i| format!("{i:04}-{}", "x".repeat(2043)))
        .collect();
    for b in &sent {
        srv.push_room("live", "big", OP_APP, b.as_bytes()).unwrap();
    }

    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < sent.len() {
        let b = loop {
            match w.read_event().expect("read a WS frame") {
                WsEvent::Binary(b) => break b,
                WsEvent::Close(c) => panic!("closed after {} messages: {c:?}", got.len()),
                _ => {}
            }
        };
        // The WS header of a frame this size is 4 bytes (16-bit length).
        assert!(
            b.len() + 4 <= LIMIT,
            "frame of {} bytes > {LIMIT}",
            b.len() + 4
        );
        let (p, n) = parse_packet(&b, 1 << 24)
            .expect("a goim packet")
            .expect("a whole packet in the frame");
        assert_eq!(n, b.len(), "one packet per WS frame");
        got.extend(bodies(&inner(&p.to_owned())));
        frames += 1;
    }
    assert_eq!(got, sent, "every message, in order");
    assert!(frames >= 4, "{frames} frames for ~240 KiB");
    // Not closed as a slow consumer: the connection still answers.
    w.heartbeat().unwrap();
}
