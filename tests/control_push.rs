//! Pushes through the goim HTTP API reach exactly the connections they
//! target, across several shards, over both WebSocket and TCP, in order.

use std::time::Duration;

use corecast_testkit::client::{GoimClient as Client, Transport};
use corecast_testkit::server::Server;

const ACCEPTS: &[u32] = &[1000, 1001, 1002, 1003];
const WAIT: Duration = Duration::from_secs(10);

struct Member {
    client: Client,
    mid: i64,
    key: String,
    room: &'static str,
}

fn start(shards: usize) -> Server {
    Server::start_insecure(env!("CARGO_BIN_EXE_corecast"), shards)
}

fn post(server: &Server, path: &str, body: &str) {
    let r = server.request("POST", path, body.as_bytes());
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"code": 0, "message": ""}),
        "POST {path}"
    );
}

/// Connections held by each shard according to /metrics.
fn conns_per_shard(server: &Server, shards: usize) -> Vec<f64> {
    (0..shards)
        .map(|i| {
            server.metric(
                "corecast_connections",
                &[&format!("shard=\"{i}\""), "protocol=\"ws\""],
            ) + server.metric(
                "corecast_connections",
                &[&format!("shard=\"{i}\""), "protocol=\"tcp\""],
            )
        })
        .collect()
}

#[test]
fn room_key_mid_and_all_pushes_reach_exactly_their_targets() {
    const SHARDS: usize = 3;
    const CLIENTS: usize = 24;
    let server = start(SHARDS);
    let rooms = ["test://a", "test://b", "live://a"];
    let mut members: Vec<Member> = (0..CLIENTS)
        .map(|i| {
            let transport = if i % 2 == 0 {
                Transport::Ws
            } else {
                Transport::Tcp
            };
            let mid = 100 + (i % 5) as i64;
            let key = format!("key-{i}");
            let room = rooms[i % 3];
            let client = Client::connect(&server, transport, mid, &key, room, ACCEPTS);
            Member {
                client,
                mid,
                key,
                room,
            }
        })
        .collect();
    server.wait_json("/goim/online/total", "all clients counted", |d| {
        d["conn_count"] == CLIENTS
    });
    let spread = conns_per_shard(&server, SHARDS);
    assert!(
        spread.iter().filter(|&&n| n > 0.0).count() >= 2,
        "connections should spread over several shards: {spread:?}"
    );

    // The pushes, in order, and who must get each one.
    type Rule = Box<dyn Fn(&Member) -> bool>;
    fn step(path: &str, op: u32, body: &str, rule: Rule) -> (String, u32, String, Rule) {
        (path.to_owned(), op, body.to_owned(), rule)
    }
    let plan = vec![
        step(
            "/goim/push/room?operation=1000&type=test&room=a",
            1000,
            "room test://a",
            Box::new(|m| m.room == "test://a"),
        ),
        step(
            "/goim/push/room?operation=1001&type=live&room=a",
            1001,
            "room live://a",
            Box::new(|m| m.room == "live://a"),
        ),
        step(
            "/goim/push/keys?operation=1002&keys=key-1,key-4&keys=key-nobody",
            1002,
            "keys 1 4",
            Box::new(|m| m.key == "key-1" || m.key == "key-4"),
        ),
        step(
            "/goim/push/mids?operation=1003&mids=102",
            1003,
            "mid 102",
            Box::new(|m| m.mid == 102),
        ),
        step(
            "/goim/push/mids?operation=1000&mids=100&mids=104,999",
            1000,
            "mids 100 104",
            Box::new(|m| m.mid == 100 || m.mid == 104),
        ),
        step(
            "/goim/push/room?operation=1000&type=test&room=nobody",
            1000,
            "room nobody",
            Box::new(|_| false),
        ),
        step(
            "/goim/push/all?operation=1001",
            1001,
            "everyone",
            Box::new(|_| true),
        ),
        step(
            "/goim/push/room?operation=1002&type=test&room=b",
            1002,
            "room test://b",
            Box::new(|m| m.room == "test://b"),
        ),
        step(
            "/goim/push/all?operation=1000",
            1000,
            "end",
            Box::new(|_| true),
        ),
    ];

    for (path, _, body, _) in &plan {
        post(&server, path, body);
    }
    for m in &mut members {
        let expected: Vec<(u32, String)> = plan
            .iter()
            .filter(|p| (p.3)(m))
            .map(|p| (p.1, p.2.clone()))
            .collect();
        let got = m.client.pushes_until(b"end", WAIT);
        assert_eq!(
            got,
            expected,
            "client {} ({:?}, mid {}, {})",
            m.key,
            m.client.transport(),
            m.mid,
            m.room
        );
    }
    // Nothing else trails behind the marker.
    for m in &mut members {
        m.client.expect_silence(Duration::from_millis(100));
    }
}

#[test]
fn room_order_is_preserved_per_client_across_shards() {
    const MESSAGES: usize = 300;
    let server = start(3);
    let mut clients: Vec<Client> = (0..9)
        .map(|i| {
            let t = if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::Ws
            };
            Client::connect(&server, t, i as i64, &format!("o{i}"), "order://1", ACCEPTS)
        })
        .collect();
    let outsider = Client::connect(&server, Transport::Ws, 99, "outsider", "order://2", ACCEPTS);
    server.wait_json("/goim/online/room?type=order&rooms=1", "room filled", |d| {
        d["1"] == 9
    });

    for n in 0..MESSAGES {
        post(
            &server,
            "/goim/push/room?operation=1000&type=order&room=1",
            &format!("m{n}"),
        );
    }
    let expected: Vec<(u32, String)> = (0..MESSAGES).map(|n| (1000, format!("m{n}"))).collect();
    for c in &mut clients {
        let got = c.pushes_until(format!("m{}", MESSAGES - 1).as_bytes(), WAIT);
        assert_eq!(
            got,
            expected,
            "{:?} client saw pushes out of order or missing",
            c.transport()
        );
    }
    let mut outsider = outsider;
    outsider.expect_silence(Duration::from_millis(200));
}

#[test]
fn paced_broadcast_reaches_everyone() {
    let server = start(3);
    let mut clients: Vec<Client> = (0..6)
        .map(|i| {
            let t = if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::Ws
            };
            Client::connect(&server, t, i, &format!("p{i}"), "pace://1", ACCEPTS)
        })
        .collect();
    server.wait_json("/goim/online/total", "clients counted", |d| {
        d["conn_count"] == 6
    });
    // 6 connections at 1000 messages/s: paced, still quick.
    post(&server, "/goim/push/all?operation=1000&speed=1000", "paced");
    for c in &mut clients {
        assert_eq!(
            c.pushes_until(b"paced", WAIT),
            vec![(1000, "paced".to_string())]
        );
    }
}
