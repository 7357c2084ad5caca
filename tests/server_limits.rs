//! Backpressure, index hygiene and graceful shutdown, against the real
//! binary over real sockets.

use std::time::Duration;

use corecast_protocol::ws::frame::Opcode;
use corecast_testkit::server::{auth_body, op, Server, TcpClient, WsClient};

const BIN: &str = env!("CARGO_BIN_EXE_corecast");

fn server(args: &[&str]) -> Server {
    Server::builder(BIN)
        .args([
            "--auth-mode",
            "insecure",
            "--handshake-timeout-secs",
            "1",
            "--heartbeat-interval-secs",
            "1",
        ])
        .args(args.iter().copied())
        .start()
        .expect("start corecast")
}

/// A client that never reads fills its window, then the server-side queue
/// up to the cap: closed (policy close) or dropped for (policy drop), while
/// a reading client in the same room gets every message, in order.
fn stalled_reader(policy: &str) {
    let srv = Server::builder(BIN)
        .args([
            "--auth-mode",
            "insecure",
            "--shards",
            "1",
            "--heartbeat-interval-secs",
            "60",
        ])
        .args(["--send-cap", "65536", "--send-policy", policy])
        .start()
        .expect("start corecast");
    let mut slow = TcpClient::connect_with_rcvbuf(srv.tcp, 4096).unwrap();
    slow.send(op::AUTH, 1, &auth_body(1, "slow", "bp://1", &[], None))
        .unwrap();
    assert_eq!(slow.read_op(op::AUTH_REPLY).unwrap().body.len(), 0);
    let mut fast =
        WsClient::connect_auth(srv.ws, &auth_body(2, "fast", "bp://1", &[], None)).unwrap();
    let (total_tx, total_rx) = std::sync::mpsc::channel::<u32>();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut total = u32::MAX;
        while (got.len() as u32) < total {
            let p = match fast.read_op(1000) {
                Ok(p) => p,
                Err(e) => {
                    return Err(format!(
                        "fast client stopped receiving after {} messages: {e:#}",
                        got.len()
                    ))
                }
            };
            got.push(u32::from_be_bytes(p.body[..4].try_into().unwrap()));
            if let Ok(t) = total_rx.try_recv() {
                total = t;
            }
        }
        Ok((got, total))
    });
    // Push until the stalled client hits the cap (the kernel first absorbs
    // a few MB into its socket buffers), at most 40 MB.
    let metric: &[&str] = if policy == "close" {
        &["corecast_closes_total", "slow_consumer"]
    } else {
        &["corecast_drops_total", "over_byte_cap"]
    };
    let mut body = vec![b'x'; 4000];
    let mut sent = 0u32;
    while sent < 10_000 {
        for _ in 0..100 {
            body[..4].copy_from_slice(&sent.to_be_bytes());
            srv.push_room("bp", "1", 1000, &body).unwrap();
            sent += 1;
        }
        if srv.metric_sum(metric).unwrap() >= 1.0 {
            break;
        }
    }
    // A few more after the cap was hit: the fast client still gets them.
    // (The total is announced before they are pushed, so the reader knows
    // it before the last message arrives.)
    let _ = total_tx.send(sent + 50);
    for _ in 0..50 {
        body[..4].copy_from_slice(&sent.to_be_bytes());
        srv.push_room("bp", "1", 1000, &body).unwrap();
        sent += 1;
    }
    let (got, total) = match reader.join().unwrap() {
        Ok(v) => v,
        Err(e) => {
            let m: Vec<_> = srv
                .metrics()
                .unwrap()
                .into_iter()
                .filter(|(k, v)| {
                    *v != 0.0
                        && (k.contains("closes")
                            || k.contains("drops")
                            || k.contains("connections")
                            || k.contains("index"))
                })
                .collect();
            panic!("{e}; metrics {m:?}");
        }
    };
    assert_eq!(total, sent);
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "fast client got every message in order"
    );
    if policy == "close" {
        let n = srv
            .wait_metric(
                &["corecast_closes_total", "slow_consumer"],
                Duration::from_secs(5),
                |v| v >= 1.0,
            )
            .unwrap();
        assert_eq!(n, 1.0, "the stalled client is closed");
    } else {
        let n = srv
            .wait_metric(
                &["corecast_drops_total", "over_byte_cap"],
                Duration::from_secs(5),
                |v| v >= 1.0,
            )
            .unwrap();
        assert!(n >= 1.0, "messages dropped for the stalled client");
        assert_eq!(
            srv.metric_sum(&["corecast_closes_total", "slow_consumer"])
                .unwrap(),
            0.0
        );
        // Still connected: once it reads, it drains what was kept and answers heartbeats.
        slow.s
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        slow.send(op::HEARTBEAT, 99, b"").unwrap();
        let p = slow.read_op(op::HEARTBEAT_REPLY).unwrap();
        assert_eq!(p.seq, 99);
    }
}

#[test]
fn stalled_reader_is_closed_at_the_byte_cap() {
    stalled_reader("close");
}

#[test]
fn stalled_reader_gets_drops_under_policy_drop() {
    stalled_reader("drop");
}

/// Opens 10,000 connections, moves some between rooms, closes them in every
/// way, and checks every index of every shard is empty afterwards.
#[test]
fn indexes_are_empty_after_closing_connections_every_way() {
    let srv = Server::builder(BIN)
        .args(["--auth-mode", "insecure", "--shards", "2"])
        .args([
            "--handshake-timeout-secs",
            "5",
            "--heartbeat-interval-secs",
            "60",
        ])
        .start()
        .expect("start corecast");
    let per = 1250usize; // 8 groups
    let (ws, tcp) = (srv.ws, srv.tcp);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    for group in 0..8usize {
        let ready = ready_tx.clone();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        go.push(go_tx);
        handles.push(std::thread::spawn(move || {
            let mid = |i: usize| (group * 100_000 + i) as i64;
            let room = |i: usize| format!("g{group}://{}", i % 7);
            let key = |i: usize| format!("k{group}-{i}");
            let tcp_auth = |i: usize, k: &str| {
                TcpClient::connect_auth(tcp, &auth_body(mid(i) % 50, k, &room(i), &[1000], None))
                    .unwrap()
            };
            let ws_auth = |i: usize, k: &str| {
                WsClient::connect_auth(ws, &auth_body(mid(i), k, &room(i), &[], None)).unwrap()
            };
            let wait_go = || {
                ready.send(group).unwrap();
                go_rx.recv().expect("go");
            };
            match group {
                // TCP: auth, change room, close with FIN.
                0 | 1 => {
                    let mut cs: Vec<TcpClient> = (0..per).map(|i| tcp_auth(i, &key(i))).collect();
                    for (i, c) in cs.iter_mut().enumerate() {
                        c.send(op::CHANGE_ROOM, 1, format!("moved://{}", i % 3).as_bytes())
                            .unwrap();
                        c.read_op(op::CHANGE_ROOM_REPLY).unwrap();
                    }
                    wait_go();
                    drop(cs);
                }
                // TCP: auth, reset.
                2 => {
                    let cs: Vec<TcpClient> = (0..per).map(|i| tcp_auth(i, &key(i))).collect();
                    wait_go();
                    cs.into_iter().for_each(TcpClient::reset);
                }
                // WS: auth, close frame.
                3 => {
                    let mut cs: Vec<WsClient> = (0..per).map(|i| ws_auth(i, "")).collect();
                    wait_go();
                    for c in cs.iter_mut() {
                        c.send_frame(Opcode::Close, &1000u16.to_be_bytes()).unwrap();
                    }
                    for c in cs.iter_mut() {
                        c.expect_close(Duration::from_secs(10)).unwrap();
                    }
                }
                // WS: auth, protocol violation (unmasked frame).
                4 => {
                    let mut cs: Vec<WsClient> = (0..per).map(|i| ws_auth(i, &key(i))).collect();
                    wait_go();
                    for c in cs.iter_mut() {
                        c.send_raw(&[0x82, 0x00]).unwrap();
                    }
                    for c in cs.iter_mut() {
                        assert_eq!(
                            c.expect_close(Duration::from_secs(10)).unwrap().0,
                            Some(1002)
                        );
                    }
                }
                // Auth failure (malformed body): no index entry ever.
                5 => {
                    let mut cs: Vec<TcpClient> =
                        (0..per).map(|_| TcpClient::connect(tcp).unwrap()).collect();
                    wait_go();
                    for c in cs.iter_mut() {
                        // The handshake timeout may have closed it already.
                        let _ = c.send(op::AUTH, 1, b"{not json");
                    }
                    for c in cs.iter_mut() {
                        c.read_until_closed(Duration::from_secs(10)).unwrap();
                    }
                }
                // WS: auth, TCP FIN without a close frame.
                6 => {
                    let cs: Vec<WsClient> = (0..per).map(|i| ws_auth(i, &key(i))).collect();
                    wait_go();
                    drop(cs);
                }
                // Never authenticated: handshake timeout.
                _ => {
                    let cs: Vec<TcpClient> =
                        (0..per).map(|_| TcpClient::connect(tcp).unwrap()).collect();
                    wait_go();
                    for mut c in cs {
                        c.read_until_closed(Duration::from_secs(15)).unwrap();
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..8 {
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("a client group failed to set up");
    }
    // Everything authenticated is open: the indexes hold entries (mids are
    // per shard: the 50 mids shared by the TCP groups sit on both shards).
    let want = [
        ("keys", 6250.0),
        ("room_members", 7500.0),
        ("mids", 2.0 * 50.0 + 3.0 * 1250.0),
    ];
    for (index, n) in want {
        let label = format!("index=\"{index}\"");
        let got = srv
            .wait_metric(
                &["corecast_index_entries", &label],
                Duration::from_secs(5),
                |v| v == n,
            )
            .unwrap();
        assert_eq!(got, n, "index {index} while connected");
    }
    for g in go {
        g.send(()).unwrap();
    }
    for h in handles {
        h.join().unwrap();
    }
    for index in [
        "slab",
        "rooms",
        "room_members",
        "keys",
        "mids",
        "filters",
        "send_queues",
        "spill_buffers",
    ] {
        let label = format!("index=\"{index}\"");
        let n = srv
            .wait_metric(
                &["corecast_index_entries", &label],
                Duration::from_secs(10),
                |v| v == 0.0,
            )
            .unwrap();
        assert_eq!(n, 0.0, "index {index} not empty");
    }
    assert_eq!(
        srv.metric_sum(&["corecast_accepts_total"]).unwrap(),
        10000.0
    );
    let closes = srv
        .wait_metric(&["corecast_closes_total"], Duration::from_secs(5), |v| {
            v >= 10000.0
        })
        .unwrap();
    assert_eq!(closes, 10000.0, "every connection closed exactly once");
    // And it still serves.
    let mut c =
        TcpClient::connect_auth(srv.tcp, &auth_body(1, "", "after://1", &[], None)).unwrap();
    assert_eq!(c.heartbeat().unwrap(), 1);
}

#[test]
fn sigterm_says_goodbye_to_every_client_and_exits_zero() {
    let mut srv = server(&["--shards", "2"]);
    let mut ws: Vec<WsClient> = (0..20)
        .map(|i| WsClient::connect_auth(srv.ws, &auth_body(i, "", "bye://1", &[], None)).unwrap())
        .collect();
    let mut tcp: Vec<TcpClient> = (0..20)
        .map(|i| TcpClient::connect_auth(srv.tcp, &auth_body(i, "", "bye://1", &[], None)).unwrap())
        .collect();
    srv.signal(libc::SIGTERM);
    for w in ws.iter_mut() {
        let (code, got) = w.expect_close(Duration::from_secs(10)).unwrap();
        assert_eq!(code, Some(1001));
        assert_eq!(got.last().map(|p| p.op), Some(op::DISCONNECT_REPLY));
        w.expect_eof(Duration::from_secs(10)).unwrap();
    }
    for t in tcp.iter_mut() {
        let got = t.read_until_closed(Duration::from_secs(10)).unwrap();
        assert_eq!(got.last().map(|p| p.op), Some(op::DISCONNECT_REPLY));
    }
    let status = srv
        .wait_exit(Duration::from_secs(15))
        .expect("server exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        srv.log_text()
    );
}
