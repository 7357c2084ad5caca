//! The control HTTP API itself: online counts match the connections held,
//! metrics move, bad requests get their status codes and the server keeps
//! serving.

mod control_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use control_support::{http, parse_reply, Client, Server, Transport};
use serde_json::json;

const ACCEPTS: &[u32] = &[1000];

#[test]
fn online_api_matches_connections_held() {
    let server = Server::start(3, &[]);
    let mut held = Vec::new();
    // live://1 ×5, live://2 ×3, live://3 ×1, game://1 ×2
    for (room, n) in [
        ("live://1", 5),
        ("live://2", 3),
        ("live://3", 1),
        ("game://1", 2),
    ] {
        for i in 0..n {
            let t = if i % 2 == 0 {
                Transport::Ws
            } else {
                Transport::Tcp
            };
            held.push(Client::connect(
                &server,
                t,
                i,
                &format!("{room}-{i}"),
                room,
                ACCEPTS,
            ));
        }
    }
    server.wait_json("/goim/online/total", "total", |d| {
        d == &json!({"conn_count": 11})
    });
    server.wait_json(
        "/goim/online/room?type=live&rooms=1,2&rooms=3,9",
        "rooms",
        |d| d == &json!({"1": 5, "2": 3, "3": 1, "9": 0}),
    );
    server.wait_json("/goim/online/top?type=live&limit=2", "top", |d| {
        d == &json!([{"room_id": "1", "count": 5}, {"room_id": "2", "count": 3}])
    });
    server.wait_json("/goim/online/top?type=game&limit=10", "top game", |d| {
        d == &json!([{"room_id": "1", "count": 2}])
    });

    // Heartbeat replies carry the node-wide count of the room (merged by
    // control from every shard's report and sent back to the shards), not
    // the shard's share of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for c in held.iter_mut().take(5) {
        while c.heartbeat() != 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "heartbeat never reported the node-wide count 5"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    // Closing connections brings the counts down.
    held.drain(..3); // three of live://1
    server.wait_json("/goim/online/room?type=live&rooms=1", "after close", |d| {
        d == &json!({"1": 2})
    });
    server.wait_json("/goim/online/total", "total after close", |d| {
        d == &json!({"conn_count": 8})
    });
    drop(held);
    server.wait_json("/goim/online/top?type=live&limit=5", "all gone", |d| {
        d == &json!([])
    });
}

#[test]
fn metrics_move_with_traffic() {
    let server = Server::start(2, &[]);
    let r = server.http("GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{}",
        r.head
    );
    let before = r.text();
    for family in [
        "corecast_connections",
        "corecast_accepts_total",
        "corecast_auth_failures_total",
        "corecast_messages_in_total",
        "corecast_messages_out_total",
        "corecast_bytes_in_total",
        "corecast_bytes_out_total",
        "corecast_drops_total",
        "corecast_closes_total",
        "corecast_ring_occupancy",
        "corecast_loop_turn_seconds",
    ] {
        assert!(
            before.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{before}"
        );
    }
    let pushes_before =
        control_support::metric_sum(&before, "corecast_pushes_total", &["target=\"room\""]);

    let mut a = Client::connect(&server, Transport::Ws, 1, "m-a", "metrics://1", ACCEPTS);
    let mut b = Client::connect(&server, Transport::Tcp, 2, "m-b", "metrics://1", ACCEPTS);
    server.wait_json("/goim/online/total", "counted", |d| d["conn_count"] == 2);
    for _ in 0..5 {
        let r = server.http(
            "POST",
            "/goim/push/room?operation=1000&type=metrics&room=1",
            b"hello",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for c in [&mut a, &mut b] {
        for _ in 0..5 {
            assert!(c.next_push(Duration::from_secs(10)).is_some());
        }
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.http("GET", "/metrics", b"").text();
        let m = |f: &str, l: &[&str]| control_support::metric_sum(&text, f, l);
        let ok = m("corecast_pushes_total", &["target=\"room\""]) == pushes_before + 5.0
            && m("corecast_accepts_total", &[]) >= 2.0
            && m("corecast_connections", &["protocol=\"ws\""]) == 1.0
            && m("corecast_connections", &["protocol=\"tcp\""]) == 1.0
            && m("corecast_messages_out_total", &[]) >= 10.0
            && m("corecast_bytes_out_total", &[]) > 0.0
            && m("corecast_messages_in_total", &[]) >= 2.0
            && m("corecast_loop_turn_seconds_count", &[]) > 0.0
            && m(
                "corecast_http_requests_total",
                &["route=\"push_room\"", "status=\"200\""],
            ) == 5.0;
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics did not move as expected:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A refused auth is counted.
    let failures = server.metric("corecast_auth_failures_total", &[]);
    let mut bad = TcpStream::connect(server.tcp).unwrap();
    bad.write_all(&corecast_protocol::packet::encode_packet_to_vec(
        7,
        1,
        b"{not json",
    ))
    .unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = Vec::new();
    let _ = bad.read_to_end(&mut sink);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("corecast_auth_failures_total", &[]) < failures + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "auth failure not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_error(r: &control_support::HttpReply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    assert!(v["code"].as_i64().unwrap() < 0, "{what}: {v}");
    assert!(
        !v["message"].as_str().unwrap().is_empty(),
        "{what}: a reason is given: {v}"
    );
}

#[test]
fn bad_requests_get_their_codes_and_the_server_keeps_serving() {
    let mut server = Server::start(2, &[]);
    let mut client = Client::connect(&server, Transport::Ws, 7, "survivor", "bad://1", ACCEPTS);
    server.wait_json("/goim/online/total", "counted", |d| d["conn_count"] == 1);

    assert_error(&server.http("GET", "/nope", b""), 404, "unknown path");
    assert_error(
        &server.http("GET", "/goim/push/room?operation=1000&type=bad&room=1", b""),
        405,
        "GET push",
    );
    let r = server.http("POST", "/goim/online/total", b"");
    assert_error(&r, 405, "POST online");
    assert_eq!(r.header("allow").as_deref(), Some("GET"));

    for (path, what) in [
        ("/goim/push/room?type=bad&room=1", "no operation"),
        (
            "/goim/push/room?operation=abc&type=bad&room=1",
            "operation not a number",
        ),
        ("/goim/push/room?operation=1000&room=1", "no type"),
        ("/goim/push/room?operation=1000&type=bad", "no room"),
        ("/goim/push/mids?operation=1000&mids=1,x", "bad mid"),
        ("/goim/push/keys?operation=1000", "no keys"),
        ("/goim/push/all?operation=1000&speed=-3", "bad speed"),
        (
            "/goim/push/room?operation=1000&type=bad&room=%zz",
            "bad escape",
        ),
    ] {
        assert_error(&server.http("POST", path, b"x"), 400, what);
    }
    for (path, what) in [
        ("/goim/online/top?type=bad", "no limit"),
        ("/goim/online/top?type=bad&limit=0", "zero limit"),
        ("/goim/online/room?type=bad", "no rooms"),
    ] {
        assert_error(&server.http("GET", path, b""), 400, what);
    }

    // Bodies over the limit (default 4096), declared or chunked.
    let big = vec![b'a'; 5000];
    assert_error(
        &server.http(
            "POST",
            "/goim/push/room?operation=1000&type=bad&room=1",
            &big,
        ),
        413,
        "big body",
    );
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = b"POST /goim/push/room?operation=1000&type=bad&room=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b'b'; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_error(
        &parse_reply(&raw).expect("a reply"),
        413,
        "big chunked body",
    );

    // Oversized request head.
    let huge_header = format!("X-Big: {}\r\n", "h".repeat(20_000));
    let r = http(server.http, "GET", "/health", b"", &huge_header);
    assert_eq!(r.status, 431, "huge header: {}", r.head);

    // Garbage instead of HTTP.
    let mut g = TcpStream::connect(server.http).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.write_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = g.read_to_end(&mut raw);
    if let Some(r) = parse_reply(&raw) {
        assert_eq!(r.status, 400, "garbage request");
    }

    // Still serving: health, a push that reaches the client, online counts.
    assert!(
        server.is_running(),
        "server died; log:\n{}",
        server.log_text()
    );
    assert_eq!(server.http("GET", "/health", b"").status, 200);
    let r = server.http(
        "POST",
        "/goim/push/room?operation=1000&type=bad&room=1",
        b"still here",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (op, body) = client
        .next_push(Duration::from_secs(10))
        .expect("push after bad requests");
    assert_eq!((op, body.as_slice()), (1000, &b"still here"[..]));
    client.expect_silence(Duration::from_millis(100));
    assert!(
        server.metric("corecast_http_requests_total", &["status=\"400\""]) >= 11.0,
        "400s are counted"
    );
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let server = Server::start(1, &[]);
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..20 {
        let body = format!("ka{i}");
        let req = format!(
            "POST /goim/push/room?operation=1000&type=ka&room=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut tmp = [0u8; 4096];
        let reply = loop {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0, "connection closed after {i} requests");
            raw.extend_from_slice(&tmp[..n]);
            if let Some(r) = parse_reply(&raw) {
                let len: usize = r.header("content-length").unwrap().parse().unwrap();
                if r.body.len() >= len {
                    break r;
                }
            }
        };
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json(), json!({"code": 0, "message": ""}));
    }
}
