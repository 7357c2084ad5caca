//! The control HTTP API itself: online counts match the connections held,
//! metrics move, bad requests get their status codes and the server keeps
//! serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use corecast_testkit::client::{GoimClient as Client, Transport};
use corecast_testkit::http::{
    metric_family_sum, parse_reply, read_replies, request, request_bytes, HttpReply, Replies,
};
use corecast_testkit::server::Server;
use serde_json::json;

const ACCEPTS: &[u32] = &[1000];

fn start(shards: usize) -> Server {
    Server::start_insecure(env!("CARGO_BIN_EXE_corecast"), shards)
}

#[test]
fn online_api_matches_connections_held() {
    let server = start(3);
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
    let server = start(2);
    let r = server.request("GET", "/metrics", b"");
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
    let pushes_before = metric_family_sum(&before, "corecast_pushes_total", &["target=\"room\""]);

    let mut a = Client::connect(&server, Transport::Ws, 1, "m-a", "metrics://1", ACCEPTS);
    let mut b = Client::connect(&server, Transport::Tcp, 2, "m-b", "metrics://1", ACCEPTS);
    server.wait_json("/goim/online/total", "counted", |d| d["conn_count"] == 2);
    for _ in 0..5 {
        let r = server.request(
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
        let text = server.request("GET", "/metrics", b"").text();
        let m = |f: &str, l: &[&str]| metric_family_sum(&text, f, l);
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

fn assert_error(r: &HttpReply, status: u16, what: &str) {
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
    let mut server = start(2);
    let mut client = Client::connect(&server, Transport::Ws, 7, "survivor", "bad://1", ACCEPTS);
    server.wait_json("/goim/online/total", "counted", |d| d["conn_count"] == 1);

    assert_error(&server.request("GET", "/nope", b""), 404, "unknown path");
    assert_error(
        &server.request("GET", "/goim/push/room?operation=1000&type=bad&room=1", b""),
        405,
        "GET push",
    );
    let r = server.request("POST", "/goim/online/total", b"");
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
        assert_error(&server.request("POST", path, b"x"), 400, what);
    }
    for (path, what) in [
        ("/goim/online/top?type=bad", "no limit"),
        ("/goim/online/top?type=bad&limit=0", "zero limit"),
        ("/goim/online/room?type=bad", "no rooms"),
    ] {
        assert_error(&server.request("GET", path, b""), 400, what);
    }

    // Bodies over the limit (default 4096), declared or chunked.
    let big = vec![b'a'; 5000];
    assert_error(
        &server.request(
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
    let r = request(server.http, "GET", "/health", b"", &huge_header).expect("431 reply");
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
    assert_eq!(server.request("GET", "/health", b"").status, 200);
    let r = server.request(
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
    let server = start(1);
    let mut s = TcpStream::connect(server.http).unwrap();
    for i in 0..20 {
        let body = format!("ka{i}");
        s.write_all(&request_bytes(
            "POST",
            "/goim/push/room?operation=1000&type=ka&room=1",
            body.as_bytes(),
            true,
            "",
        ))
        .unwrap();
        let got = read_replies(&mut s, 1, Duration::from_secs(10)).unwrap();
        assert!(!got.closed, "connection closed after {i} requests");
        let reply = &got.replies[0];
        assert_eq!(reply.status, 200);
        assert!(!reply.closes(), "request {i}: {}", reply.head);
        assert_eq!(reply.json(), json!({"code": 0, "message": ""}));
    }
}

/// `corecast serve` whose HTTP API closes a connection after `cap` requests.
fn start_with_request_cap(cap: u32) -> Server {
    Server::builder(env!("CARGO_BIN_EXE_corecast"))
        .shards(1)
        .insecure_auth()
        .args(["--http-max-requests-per-conn".to_string(), cap.to_string()])
        .start()
        .expect("start corecast")
}

fn push_request(i: usize) -> Vec<u8> {
    request_bytes(
        "POST",
        "/goim/push/room?operation=1000&type=pipe&room=1",
        format!("p{i}").as_bytes(),
        true,
        "",
    )
}

/// Every reply is a 200 goim success; only the last says `Connection: close`.
fn assert_answered_then_closed(got: &Replies, cap: usize) {
    assert!(got.closed, "the server closes at the request cap");
    assert!(
        got.replies.len() >= cap,
        "only {} replies before the close (cap {cap})",
        got.replies.len()
    );
    for (i, r) in got.replies.iter().enumerate() {
        assert_eq!(r.status, 200, "reply {i}: {}", r.text());
        assert_eq!(r.json(), json!({"code": 0, "message": ""}), "reply {i}");
        let last = i + 1 == got.replies.len();
        assert_eq!(
            r.closes(),
            last,
            "reply {i} of {}: {}",
            got.replies.len(),
            r.head
        );
    }
}

#[test]
fn requests_pipelined_past_the_cap_in_one_write_are_all_answered() {
    const CAP: usize = 5;
    const SENT: usize = 20;
    let server = start_with_request_cap(CAP as u32);
    let mut s = TcpStream::connect(server.http).unwrap();
    // One write of ~2 KB: the server reads all 20 requests at once, 15 of
    // them past the cap, and must answer every one before closing.
    let all: Vec<u8> = (0..SENT).flat_map(push_request).collect();
    s.write_all(&all).unwrap();
    let got = read_replies(&mut s, SENT + 1, Duration::from_secs(10)).unwrap();
    assert_answered_then_closed(&got, CAP);
    assert_eq!(got.replies.len(), SENT, "every request read is answered");
}

#[test]
fn pipelining_across_the_cap_loses_no_request_silently() {
    const CAP: usize = 100;
    const SENT: usize = 400;
    let server = start_with_request_cap(CAP as u32);
    let mut member = Client::connect(&server, Transport::Tcp, 1, "pipe", "pipe://1", ACCEPTS);
    server.wait_json("/goim/online/total", "member counted", |d| {
        d["conn_count"] == 1
    });

    let mut s = TcpStream::connect(server.http).unwrap();
    let mut writer = s.try_clone().unwrap();
    // Keep sending while replies come back, in several writes, as a
    // pipelining pusher does; the writes after the close may fail.
    let sender = std::thread::spawn(move || {
        for batch in (0..SENT).collect::<Vec<_>>().chunks(50) {
            let bytes: Vec<u8> = batch.iter().copied().flat_map(push_request).collect();
            if writer.write_all(&bytes).is_err() {
                break;
            }
        }
    });
    let got = read_replies(&mut s, SENT + 1, Duration::from_secs(30)).unwrap();
    sender.join().unwrap();
    assert_answered_then_closed(&got, CAP);
    let answered = got.replies.len();

    // Every push the server handled was answered, and every answered push
    // reached the room's member, in order; nothing past them was handled.
    assert_eq!(
        server.metric("corecast_http_requests_total", &["route=\"push_room\""]),
        answered as f64,
        "pushes handled vs replies received"
    );
    let last = format!("p{}", answered - 1);
    let pushes = member.pushes_until(last.as_bytes(), Duration::from_secs(10));
    let expected: Vec<(u32, String)> = (0..answered).map(|i| (1000, format!("p{i}"))).collect();
    assert_eq!(pushes, expected);
    member.expect_silence(Duration::from_millis(200));
}
