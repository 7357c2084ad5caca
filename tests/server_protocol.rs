//! Black-box tests of the shard data plane: the real binary, real sockets.
//! Auth (insecure, HS256, EdDSA), heartbeats, room change, op filtering,
//! echo, WS ping/close, and every bad-input class.

use std::time::Duration;

use corecast_protocol::ws::frame::Opcode;
use corecast_testkit::server::{auth_body, op, Server, TcpClient, WsClient, WsEvent};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");
const SECRET: &str = "test-secret";
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBkVTqrfTqGUATAWy6QObLxYZpfXTqxOfkIamNPaF0kB\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA3zPMQ+dvm0azUhi2A0JvgJONbye5P55qC5R08r/eGp0=\n-----END PUBLIC KEY-----\n";

fn insecure(shards: usize) -> Server {
    Server::builder(BIN)
        .args(["--shards", &shards.to_string(), "--auth-mode", "insecure"])
        .args([
            "--handshake-timeout-secs",
            "1",
            "--heartbeat-interval-secs",
            "1",
        ])
        .start()
        .expect("start corecast")
}

fn jwt_server() -> Server {
    let key = std::env::temp_dir().join(format!("corecast-ed-{}.pub.pem", std::process::id()));
    std::fs::write(&key, ED_PUBLIC).unwrap();
    Server::builder(BIN)
        .args([
            "--shards",
            "2",
            "--auth-mode",
            "jwt",
            "--handshake-timeout-secs",
            "2",
        ])
        .args(["--jwt-eddsa-public-key", key.to_str().unwrap()])
        .env("CORECAST_JWT_HS256_SECRET", SECRET)
        .start()
        .inspect(|_| {
            // Read at start; nothing to leave behind.
            let _ = std::fs::remove_file(&key);
        })
        .expect("start corecast")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn eddsa(claims: serde_json::Value) -> String {
    let k = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    encode(&Header::new(Algorithm::EdDSA), &claims, &k).unwrap()
}

#[test]
fn tcp_and_ws_auth_heartbeat_echo_room_change() {
    let srv = insecure(2);
    let mut t = TcpClient::connect_auth(srv.tcp, &auth_body(1, "", "live://1", &[], None)).unwrap();
    let mut w = WsClient::connect_auth(srv.ws, &auth_body(2, "", "live://1", &[], None)).unwrap();
    // Heartbeat replies carry the room's online count: both are in live://1
    // (on whatever shards), so the count reaches 2 once reports are merged.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        n = t.heartbeat().unwrap();
        if n == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(n, 2, "TCP heartbeat reply count");
    assert!(w.heartbeat().unwrap() >= 1);
    // seq is echoed.
    t.send(op::HEARTBEAT, 77, b"").unwrap();
    assert_eq!(t.read_op(op::HEARTBEAT_REPLY).unwrap().seq, 77);
    // op 4 echoed as op 5.
    w.send(op::SEND_MSG, 5, b"ping-body").unwrap();
    let p = w.read_op(op::SEND_MSG_REPLY).unwrap();
    assert_eq!((p.seq, &p.body[..]), (5, &b"ping-body"[..]));
    // Room change: op 12 -> op 13 with the new room; pushes follow the room.
    t.send(op::CHANGE_ROOM, 3, b"live://2").unwrap();
    let p = t.read_op(op::CHANGE_ROOM_REPLY).unwrap();
    assert_eq!(&p.body[..], b"live://2");
    srv.push_room("live", "2", 1000, b"to-room-2").unwrap();
    srv.push_room("live", "1", 1000, b"to-room-1").unwrap();
    let p = t.read_op(1000).unwrap();
    assert_eq!(&p.body[..], b"to-room-2");
    let p = w.read_op(1000).unwrap();
    assert_eq!(&p.body[..], b"to-room-1");
    // A lone member of live://2 on a fresh heartbeat sees count 1 there.
    assert_eq!(t.heartbeat().unwrap(), 1);
    // WS ping is answered with pong carrying the same payload.
    w.send_frame(Opcode::Ping, b"abc").unwrap();
    loop {
        match w.read_event().unwrap() {
            WsEvent::Pong(p) => {
                assert_eq!(p, b"abc");
                break;
            }
            WsEvent::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    // Client close is answered with close (same code), then EOF.
    w.send_frame(Opcode::Close, &1000u16.to_be_bytes()).unwrap();
    let (code, _) = w.expect_close(Duration::from_secs(5)).unwrap();
    assert_eq!(code, Some(1000));
    w.expect_eof(Duration::from_secs(5)).unwrap();
}

#[test]
fn op_filtering_from_accepts_and_sub_unsub() {
    let srv = insecure(1);
    let mut a =
        WsClient::connect_auth(srv.ws, &auth_body(10, "ka", "f://1", &[1001], None)).unwrap();
    let mut b = TcpClient::connect_auth(srv.tcp, &auth_body(11, "kb", "f://1", &[], None)).unwrap();
    srv.push_room("f", "1", 1000, b"x1000").unwrap();
    srv.push_room("f", "1", 1001, b"x1001").unwrap();
    // a accepts only 1001; b everything.
    assert_eq!(&a.read_op(1001).unwrap().body[..], b"x1001");
    assert_eq!(&b.read_op(1000).unwrap().body[..], b"x1000");
    assert_eq!(&b.read_op(1001).unwrap().body[..], b"x1001");
    // a subscribes to 1002, b unsubscribes from 1000.
    a.send(op::SUB, 1, b"1002").unwrap();
    assert_eq!(&a.read_op(op::SUB_REPLY).unwrap().body[..], b"1002");
    b.send(op::UNSUB, 1, b"1000").unwrap();
    assert_eq!(&b.read_op(op::UNSUB_REPLY).unwrap().body[..], b"1000");
    srv.push_keys(&["ka", "kb"], 1000, b"k1000").unwrap();
    srv.push_keys(&["ka", "kb"], 1002, b"k1002").unwrap();
    srv.push_mids(&[10, 11], 1003, b"m1003").unwrap();
    srv.push_all(1002, b"all1002").unwrap();
    // a: 1002 twice (key push, all); nothing for 1000 or 1003.
    let p = a.read_packet().unwrap();
    assert_eq!((p.op, &p.body[..]), (1002, &b"k1002"[..]));
    let p = a.read_packet().unwrap();
    assert_eq!((p.op, &p.body[..]), (1002, &b"all1002"[..]));
    // b: not 1000; 1002, 1003, 1002.
    let got: Vec<(u32, Vec<u8>)> = (0..3)
        .map(|_| b.read().unwrap())
        .map(|p| (p.op, p.body.to_vec()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1002, b"k1002".to_vec()),
            (1003, b"m1003".to_vec()),
            (1002, b"all1002".to_vec())
        ]
    );
    // Nothing else arrived for a: its next reply is the heartbeat's.
    assert_eq!(a.heartbeat().unwrap(), 2);
}

#[test]
fn jwt_hs256_and_eddsa_accepted_bad_tokens_refused() {
    let srv = jwt_server();
    let exp = now() + 600;
    let good = hs256(
        serde_json::json!({"sub": "42", "exp": exp, "rooms": ["live://7"]}),
        SECRET,
    );
    let mut c =
        TcpClient::connect_auth(srv.tcp, &auth_body(42, "", "live://7", &[], Some(&good))).unwrap();
    assert_eq!(c.heartbeat().unwrap(), 1);
    // The rooms claim limits room changes: the reply names the old room.
    c.send(op::CHANGE_ROOM, 1, b"live://8").unwrap();
    assert_eq!(
        &c.read_op(op::CHANGE_ROOM_REPLY).unwrap().body[..],
        b"live://7"
    );
    let ed = eddsa(serde_json::json!({"sub": "43", "exp": exp}));
    let mut w =
        WsClient::connect_auth(srv.ws, &auth_body(0, "", "live://9", &[], Some(&ed))).unwrap();
    assert_eq!(w.heartbeat().unwrap(), 1);

    let refused = [
        hs256(serde_json::json!({"sub": "42", "exp": exp}), "wrong-secret"),
        hs256(
            serde_json::json!({"sub": "42", "exp": now() - 3600}),
            SECRET,
        ),
        hs256(serde_json::json!({"sub": "41", "exp": exp}), SECRET), // sub != mid
        hs256(
            serde_json::json!({"sub": "42", "exp": exp, "rooms": ["live://1"]}),
            SECRET,
        ), // room
        "not-a-jwt".to_string(),
    ];
    for tok in &refused {
        let mut c = TcpClient::connect(srv.tcp).unwrap();
        c.send(op::AUTH, 9, &auth_body(42, "", "live://7", &[], Some(tok)))
            .unwrap();
        let got = c.read_until_closed(Duration::from_secs(5)).unwrap();
        let ops: Vec<u32> = got.iter().map(|p| p.op).collect();
        assert_eq!(
            ops,
            vec![op::AUTH_REPLY, op::DISCONNECT_REPLY],
            "token {tok}"
        );
        let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
        assert_eq!(body["code"], 401, "{body}");
    }
    // No token at all, over WS: op 8 error, op 6, close 1008.
    let mut w = WsClient::connect(srv.ws).unwrap();
    w.send(op::AUTH, 1, &auth_body(42, "", "", &[], None))
        .unwrap();
    let (code, got) = w.expect_close(Duration::from_secs(5)).unwrap();
    assert_eq!(code, Some(1008));
    assert_eq!(
        got.iter().map(|p| p.op).collect::<Vec<_>>(),
        vec![op::AUTH_REPLY, op::DISCONNECT_REPLY]
    );
    assert!(
        srv.wait_metric(
            &["corecast_closes_total", "auth_failed"],
            Duration::from_secs(3),
            |v| v >= 6.0
        )
        .unwrap()
            >= 6.0
    );
}

#[test]
fn bad_handshakes_get_400_and_server_keeps_serving() {
    use std::io::{Read, Write};
    let srv = insecure(2);
    let bad = [
        "POST /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /sub HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
        "\x16\x03\x01\x02\x00garbage that is not http\r\n\r\n",
    ];
    for req in bad {
        let mut s = std::net::TcpStream::connect(srv.ws).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{req:?} -> {resp:?}");
    }
    // A request larger than the limit without an end is refused too.
    let mut s = std::net::TcpStream::connect(srv.ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut big = b"GET /sub HTTP/1.1\r\nHost: x\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'a', 5000));
    let _ = s.write_all(&big);
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:?}");
    // The server still serves.
    let mut w = WsClient::connect_auth(srv.ws, &auth_body(1, "", "r://1", &[], None)).unwrap();
    assert_eq!(w.heartbeat().unwrap(), 1);
    assert!(
        srv.wait_metric(
            &["corecast_closes_total", "bad_handshake"],
            Duration::from_secs(3),
            |v| v >= 6.0
        )
        .unwrap()
            >= 6.0
    );
}

/// A raw WS frame with explicit bits (for violations).
fn raw_frame(b0: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(m | payload.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let key = [1u8, 2, 3, 4];
    if masked {
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

#[test]
fn ws_violations_close_with_the_right_code() {
    let srv = insecure(2);
    let hb = corecast_protocol::packet::encode_packet_to_vec(op::HEARTBEAT, 0, b"");
    let too_big =
        corecast_protocol::packet::encode_packet_to_vec(op::SEND_MSG, 0, &vec![b'x'; 5000]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", raw_frame(0x82, false, &hb), 1002),
        ("reserved bits", raw_frame(0xC2, true, &hb), 1002),
        ("bad opcode", raw_frame(0x83, true, &hb), 1002),
        ("oversized", raw_frame(0x82, true, &too_big), 1009),
        (
            "bad utf-8 text",
            raw_frame(0x81, true, &[0xff, 0xfe, 0xfd]),
            1007,
        ),
        ("long ping", raw_frame(0x89, true, &[0u8; 126]), 1002),
        (
            "two packets in a frame",
            raw_frame(0x82, true, &[hb.clone(), hb.clone()].concat()),
            1002,
        ),
    ];
    for (name, frame, want) in cases {
        let mut w = WsClient::connect_auth(srv.ws, &auth_body(1, "", "v://1", &[], None)).unwrap();
        w.send_raw(&frame).unwrap();
        let (code, _) = w
            .expect_close(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(code, Some(want), "{name}");
        w.expect_eof(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
    // Also before auth: an oversized packet over TCP gets op 6 then EOF.
    let mut t = TcpClient::connect(srv.tcp).unwrap();
    t.send_raw(&too_big).unwrap();
    let got = t.read_until_closed(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.iter().map(|p| p.op).collect::<Vec<_>>(),
        vec![op::DISCONNECT_REPLY]
    );
    for (reason, n) in [
        ("\"protocol_error\"", 5.0),
        ("\"too_big\"", 2.0),
        ("\"bad_utf8\"", 1.0),
    ] {
        let got = srv
            .wait_metric(
                &["corecast_closes_total", reason],
                Duration::from_secs(3),
                |v| v >= n,
            )
            .unwrap();
        assert!(got >= n, "closes {reason}: {got} < {n}");
    }
}

#[test]
fn garbage_first_packet_silent_and_idle_clients_closed_on_time() {
    let srv = insecure(1);
    // Garbage first packet over TCP (bad header_len) -> op 6, close.
    let mut g = TcpClient::connect(srv.tcp).unwrap();
    g.send_raw(b"\x00\x00\x00\x20\x00\x05\x00\x01garbage garbage garbage")
        .unwrap();
    let got = g.read_until_closed(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.iter().map(|p| p.op).collect::<Vec<_>>(),
        vec![op::DISCONNECT_REPLY]
    );
    // A well-formed first packet that is not op 7 -> op 6, close.
    let mut n = TcpClient::connect(srv.tcp).unwrap();
    n.send(op::HEARTBEAT, 0, b"").unwrap();
    let got = n.read_until_closed(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.iter().map(|p| p.op).collect::<Vec<_>>(),
        vec![op::DISCONNECT_REPLY]
    );
    // Silent before the upgrade, silent before auth, silent after auth:
    // all closed within the configured timeouts (1 s handshake, 1 s
    // heartbeat interval -> 3 s of silence; ticks are 1 s).
    let mut raw = std::net::TcpStream::connect(srv.ws).unwrap();
    let mut ws_no_auth = WsClient::connect(srv.ws).unwrap();
    let mut tcp_no_auth = TcpClient::connect(srv.tcp).unwrap();
    let mut idle = TcpClient::connect_auth(srv.tcp, &auth_body(5, "", "i://1", &[], None)).unwrap();
    let t0 = std::time::Instant::now();
    {
        use std::io::Read;
        raw.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            raw.read(&mut b).unwrap_or(0),
            0,
            "silent raw WS socket closed"
        );
    }
    let (code, _) = ws_no_auth.expect_close(Duration::from_secs(6)).unwrap();
    assert_eq!(code, Some(1008));
    assert_eq!(
        tcp_no_auth
            .read_until_closed(Duration::from_secs(6))
            .unwrap()
            .last()
            .map(|p| p.op),
        Some(op::DISCONNECT_REPLY)
    );
    assert_eq!(
        idle.read_until_closed(Duration::from_secs(8))
            .unwrap()
            .last()
            .map(|p| p.op),
        Some(op::DISCONNECT_REPLY)
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(
        srv.wait_metric(
            &["corecast_closes_total", "heartbeat_timeout"],
            Duration::from_secs(3),
            |v| v >= 1.0
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        srv.wait_metric(
            &["corecast_closes_total", "handshake_timeout"],
            Duration::from_secs(3),
            |v| v >= 3.0
        )
        .unwrap()
            >= 3.0
    );
}
