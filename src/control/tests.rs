//! The control core against stand-in shards: real HTTP over loopback, real
//! fan-out rings, shard threads replaced by small loops that record what they
//! receive and send canned reports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{spawn, ControlConfig, ControlHandle, ControlTask};
use crate::fanout::{
    channel, ChannelSizes, PushBatchBuilder, PushTarget, ShardInbox, ShardMsg, ShardReport,
    Shutdown,
};

/// What a stand-in shard saw.
#[derive(Default)]
struct Seen {
    pushes: Vec<(PushTarget, u32, Vec<u8>, Vec<u8>)>,
    room_counts: Vec<Vec<(String, u32)>>,
}

struct StandIn {
    seen: Arc<Mutex<Seen>>,
    /// While false the shard does not drain its ring (a stalled shard).
    draining: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn stand_in(mut inbox: ShardInbox, rooms: Vec<(&'static str, u32)>, conns: u32) -> StandIn {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let draining = Arc::new(AtomicBool::new(true));
    let (s, d) = (seen.clone(), draining.clone());
    let thread = std::thread::spawn(move || loop {
        if inbox.waker().shutdown_requested() {
            let mut r = ShardReport::empty(inbox.shard());
            r.final_report = true;
            let _ = inbox.send_report(Box::new(r));
            return;
        }
        if d.load(Ordering::Acquire) {
            while let Some(msg) = inbox.try_recv() {
                let mut seen = s.lock().unwrap();
                match msg {
                    ShardMsg::Push(p) => {
                        seen.pushes
                            .push((p.target, p.op, p.packet.to_vec(), p.ws_frame.to_vec()))
                    }
                    ShardMsg::Pushes(b) => {
                        for p in b.iter() {
                            seen.pushes.push((
                                p.target.clone(),
                                p.op,
                                p.packet.to_vec(),
                                p.ws_frame.to_vec(),
                            ))
                        }
                    }
                    ShardMsg::RoomCounts(c) => {
                        let mut v: Vec<_> =
                            c.rooms.iter().map(|(k, n)| (k.to_string(), *n)).collect();
                        v.sort();
                        seen.room_counts.push(v);
                    }
                    ShardMsg::Shutdown => {}
                }
            }
        }
        let mut r = ShardReport::empty(inbox.shard());
        r.conns_ws = conns;
        r.conns_tcp = 1;
        r.rooms = rooms.iter().map(|(k, n)| (Arc::from(*k), *n)).collect();
        r.counters.accepts = u64::from(conns) + 1;
        let _ = inbox.send_report(Box::new(r));
        std::thread::sleep(Duration::from_millis(5));
    });
    StandIn {
        seen,
        draining,
        thread: Some(thread),
    }
}

struct Rig {
    control: Option<ControlHandle>,
    shutdown: Shutdown,
    shards: Vec<StandIn>,
    addr: SocketAddr,
}

impl Rig {
    fn new(ring: usize) -> Rig {
        Rig::with_tasks(ring, Vec::new())
    }

    fn with_tasks(ring: usize, tasks: Vec<ControlTask>) -> Rig {
        let shutdown = Shutdown::new();
        let mut links = Vec::new();
        let mut shards = Vec::new();
        let canned = [
            vec![("live://1", 3), ("live://2", 1)],
            vec![("live://1", 2), ("game://7", 4)],
        ];
        for (i, rooms) in canned.into_iter().enumerate() {
            let (link, inbox) = channel(
                i,
                ChannelSizes {
                    to_shard: ring,
                    to_control: 16,
                },
            )
            .unwrap();
            shutdown.register(inbox.waker().clone());
            links.push(link);
            shards.push(stand_in(inbox, rooms, 2 + i as u32));
        }
        let cfg = ControlConfig {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            push_timeout: Duration::from_millis(300),
            poll_interval: Duration::from_millis(5),
            max_requests_per_conn: 3,
            ..ControlConfig::default()
        };
        let control = spawn(cfg, links, shutdown.clone(), tasks).unwrap();
        let addr = control.local_addr();
        Rig {
            control: Some(control),
            shutdown,
            shards,
            addr,
        }
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String, Value) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP reply");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let v = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
        (status, head.to_owned(), v)
    }

    fn wait_for(&self, path: &str, want: Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, _, v) = self.request("GET", path, b"");
            if status == 200 && v["data"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{path}: {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.trigger();
        for s in &mut self.shards {
            s.draining.store(true, Ordering::Release);
            if let Some(t) = s.thread.take() {
                t.join().unwrap();
            }
        }
        if let Some(c) = self.control.take() {
            c.join().unwrap();
        }
    }
}

#[test]
fn push_is_encoded_once_and_reaches_every_ring_in_order() {
    let rig = Rig::new(1024);
    for n in 0..10 {
        let (status, _, v) = rig.request(
            "POST",
            "/goim/push/room?operation=1000&type=live&room=1",
            format!("m{n}").as_bytes(),
        );
        assert_eq!((status, v), (200, json!({"code": 0, "message": ""})));
    }
    let (status, _, _) = rig.request("POST", "/goim/push/keys?operation=1001&keys=a,b", b"k");
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    for shard in &rig.shards {
        loop {
            if shard.seen.lock().unwrap().pushes.len() == 11 {
                break;
            }
            assert!(Instant::now() < deadline, "pushes did not arrive");
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = shard.seen.lock().unwrap();
        for (n, (target, op, packet, frame)) in seen.pushes.iter().take(10).enumerate() {
            assert_eq!(*target, PushTarget::Room(Arc::from("live://1")));
            assert_eq!(*op, 1000);
            let body = format!("m{n}");
            assert_eq!(&packet[16..], body.as_bytes());
            assert_eq!(&packet[8..12], &1000u32.to_be_bytes());
            // WS frame: header, op-9 container, then the very same packet.
            assert_eq!(frame[0], 0x82);
            assert_eq!(&frame[2 + 8..2 + 12], &9u32.to_be_bytes());
            assert_eq!(&frame[2 + 16..], &packet[..]);
        }
        assert!(matches!(&seen.pushes[10].0, PushTarget::Keys(k) if k.len() == 2));
    }
}

#[test]
fn online_endpoints_merge_shard_reports() {
    let rig = Rig::new(64);
    rig.wait_for("/goim/online/total", json!({"conn_count": 3 + 4}));
    rig.wait_for(
        "/goim/online/room?type=live&rooms=1,2,3",
        json!({"1": 5, "2": 1, "3": 0}),
    );
    rig.wait_for(
        "/goim/online/top?type=live&limit=10",
        json!([{"room_id": "1", "count": 5}, {"room_id": "2", "count": 1}]),
    );
    // Node-wide counts go back to the shards (heartbeat replies).
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = vec![
        ("game://7".to_string(), 4),
        ("live://1".to_string(), 5),
        ("live://2".to_string(), 1),
    ];
    for shard in &rig.shards {
        while shard.seen.lock().unwrap().room_counts.last() != Some(&want) {
            assert!(
                Instant::now() < deadline,
                "room counts never reached the shard"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (status, _, v) = rig.request("GET", "/health", b"");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["shards_reporting"], 2);
}

#[test]
fn full_ring_waits_then_fails_counted_and_recovers() {
    let rig = Rig::new(2);
    // Let the first room-count snapshots through, then stall shard 1.
    std::thread::sleep(Duration::from_millis(100));
    rig.shards[1].draining.store(false, Ordering::Release);
    std::thread::sleep(Duration::from_millis(20));
    let mut failed = 0;
    for _ in 0..4 {
        let (status, _, v) = rig.request("POST", "/goim/push/all?operation=1000", b"x");
        if status == 503 {
            assert_eq!(v["code"], -500);
            assert!(v["message"].as_str().unwrap().contains("[1]"), "{v}");
            failed += 1;
        } else {
            assert_eq!(status, 200, "{v}");
        }
    }
    assert!(
        failed >= 2,
        "a stalled shard with a 2-slot ring must refuse pushes"
    );
    let (_, _, metrics) = rig.request("GET", "/metrics", b"");
    let text = metrics.as_str().unwrap().to_owned();
    assert!(
        text.lines().any(|l| l
            == format!(
                "corecast_drops_total{{shard=\"1\",reason=\"ring_full_timeout\"}} {failed}"
            )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("corecast_ring_occupancy{shard=\"1\"} 2")),
        "{text}"
    );
    // Shard 0 got every push: nothing lost where there was room.
    assert_eq!(rig.shards[0].seen.lock().unwrap().pushes.len(), 4);

    rig.shards[1].draining.store(true, Ordering::Release);
    let (status, _, _) = rig.request("POST", "/goim/push/all?operation=1000", b"y");
    assert_eq!(status, 200);
}

#[test]
fn connection_closes_after_max_requests() {
    let rig = Rig::new(64);
    let mut s = TcpStream::connect(rig.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut replies = String::new();
    for _ in 0..3 {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        replies.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(replies.matches("HTTP/1.1 200").count(), 3, "{replies}");
    assert_eq!(
        replies
            .to_ascii_lowercase()
            .matches("connection: close")
            .count(),
        1,
        "{replies}"
    );
    // The server closed after the third reply.
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
}

/// Kafka batches wait out a stalled shard (backpressure) instead of being
/// dropped after `push_timeout`, and every shard gets each batch once.
#[test]
fn batch_dispatch_waits_out_a_full_ring_and_sends_each_shard_once() {
    // One result per batch, in dispatch order.
    let results: Arc<Mutex<Vec<Result<(), String>>>> = Arc::default();
    let go = Arc::new(AtomicBool::new(false));
    let (r, g) = (results.clone(), go.clone());
    let task: ControlTask = Box::new(move |d| {
        glommio::spawn_local(async move {
            while !g.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            for i in 0..4u32 {
                let mut b = PushBatchBuilder::new();
                b.push(PushTarget::All, 1000 + i, format!("a{i}").as_bytes());
                b.push(PushTarget::All, 1000 + i, format!("b{i}").as_bytes());
                let res = d.dispatch_batch(b.finish()).await;
                r.lock().unwrap().push(res.map_err(|e| e.to_string()));
            }
        })
        .detach();
    });
    let rig = Rig::with_tasks(2, vec![task]);
    // Let the first room-count snapshots through, then stall shard 1.
    std::thread::sleep(Duration::from_millis(100));
    rig.shards[1].draining.store(false, Ordering::Release);
    std::thread::sleep(Duration::from_millis(20));
    go.store(true, Ordering::Release);

    // Blocked past several push timeouts (300 ms each): counted, not dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, metrics) = rig.request("GET", "/metrics", b"");
        let text = metrics.as_str().unwrap().to_owned();
        let blocked = text
            .lines()
            .find_map(|l| l.strip_prefix("corecast_ring_blocked_waits_total{shard=\"1\"} "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or_else(|| panic!("no blocked-wait counter for shard 1:\n{text}"));
        if blocked >= 2 {
            assert!(
                text.lines().any(
                    |l| l == "corecast_drops_total{shard=\"1\",reason=\"ring_full_timeout\"} 0"
                ),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shard 1 never reported blocked:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        results.lock().unwrap().len() < 4,
        "a stalled shard must hold the batches back"
    );
    assert!(results.lock().unwrap().iter().all(|r| r.is_ok()));

    rig.shards[1].draining.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    while results.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "batches never completed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        results.lock().unwrap().iter().all(|r| r.is_ok()),
        "{:?}",
        results.lock().unwrap()
    );
    // Every shard got every push exactly once, in order. A batch counts as
    // dispatched once its ring took it; the shard threads pop it a moment
    // later, so wait until they have drained as much as was sent.
    let want: Vec<u32> = (0..4).flat_map(|i| [1000 + i, 1000 + i]).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig
        .shards
        .iter()
        .any(|s| s.seen.lock().unwrap().pushes.len() < want.len())
    {
        assert!(
            Instant::now() < deadline,
            "shards never drained the batches"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, shard) in rig.shards.iter().enumerate() {
        let ops: Vec<u32> = shard
            .seen
            .lock()
            .unwrap()
            .pushes
            .iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(ops, want, "shard {i}");
    }
}
