//! The HTTP push API with Kafka configured (design §4): a push is produced
//! to the real broker as native records and answered after the ack; the
//! node's own consumer then delivers it to exactly its clients; `/metrics`
//! shows the partition offsets moving. With the broker stopped, a push is
//! answered with an error (503), not left hanging.
//! Own test binary: one test stops the broker that the tests of a binary share.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use corecast_testkit::kafka::{kafka, unique_topic};
use corecast_testkit::server::{auth_body, http, Server, TcpClient, WsClient};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;

/// The broker-stop test must not overlap the others.
static BROKER: Mutex<()> = Mutex::new(());

/// Bounds a wait for something that must happen (not a timing assertion).
const WAIT: Duration = Duration::from_secs(60);

fn node(topic: &str, extra: &[&str]) -> Server {
    Server::builder(env!("CARGO_BIN_EXE_corecast"))
        .args(["--shards", "2", "--auth-mode", "insecure"])
        .args(["--heartbeat-interval-secs", "600"])
        .args([
            "--kafka-brokers",
            &kafka().bootstrap(),
            "--kafka-topic",
            topic,
            "--kafka-start",
            "earliest",
        ])
        .args(extra.iter().copied())
        .start()
        .expect("start corecast with Kafka configured")
}

/// Sum over the partitions of the topic's end offsets (records written).
fn end_offsets(topic: &str, partitions: i32) -> i64 {
    let mut conn = kafka().connect().expect("connect to the broker");
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partitions = (0..partitions)
        .map(|p| {
            let mut lp = ListOffsetsPartition::default();
            lp.partition_index = p;
            lp.timestamp = -1; // latest
            lp
        })
        .collect();
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    // A new topic's partitions may answer NOT_LEADER for a moment.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let resp = conn.request(&req, 1).expect("ListOffsets");
        let parts: Vec<_> = resp.topics.iter().flat_map(|t| &t.partitions).collect();
        match parts.iter().find(|p| p.error_code != 0) {
            None => return parts.iter().map(|p| p.offset).sum(),
            Some(p) if std::time::Instant::now() >= deadline => panic!(
                "ListOffsets partition {}: error {}",
                p.partition_index, p.error_code
            ),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// POSTs a push and returns the HTTP status and the parsed goim reply.
fn post(node: &Server, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(node.http, "POST", path, body.as_bytes()).expect("HTTP push");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("reply {text:?}: {e}"));
    (status, v)
}

fn assert_acked(node: &Server, path: &str, body: &str) {
    let (status, v) = post(node, path, body);
    assert_eq!(
        (status, &v),
        (200, &serde_json::json!({"code": 0, "message": ""})),
        "POST {path}"
    );
}

fn tcp_bodies(c: &mut TcpClient, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    while out.len() < n {
        let p = c.read().expect("push via Kafka");
        if p.op >= 1000 {
            let b = String::from_utf8_lossy(&p.body).into_owned();
            assert!(out.insert(b.clone()), "{b} delivered twice");
        }
    }
    out
}

fn ws_bodies(c: &mut WsClient, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    while out.len() < n {
        let p = c.read_packet().expect("push via Kafka");
        if p.op >= 1000 {
            let b = String::from_utf8_lossy(&p.body).into_owned();
            assert!(out.insert(b.clone()), "{b} delivered twice");
        }
    }
    out
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn http_pushes_are_produced_acked_and_delivered_by_the_consumer() {
    let _serial = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let topic = unique_topic("produce");
    kafka().create_topic(&topic, 3);
    let node = node(&topic, &[]);
    let accepts = [1000, 1001, 1002];
    // A: tcp, mid 1, room live://1. B: ws, mid 2, key kb, room live://2.
    let mut a = TcpClient::connect_auth(node.tcp, &auth_body(1, "ka", "live://1", &accepts, None))
        .expect("client A joins");
    let mut b = WsClient::connect_auth(node.ws, &auth_body(2, "kb", "live://2", &accepts, None))
        .expect("client B joins");
    assert_eq!(end_offsets(&topic, 3), 0);

    // Room: one record, written before the reply.
    assert_acked(
        &node,
        "/goim/push/room?operation=1000&type=live&room=1",
        "room-1",
    );
    assert_eq!(end_offsets(&topic, 3), 1, "room push on the topic");
    assert_eq!(tcp_bodies(&mut a, 1), set(&["room-1"]));

    // Keys: one record per key (kb is B's; nobody holds "nobody").
    assert_acked(
        &node,
        "/goim/push/keys?operation=1001&keys=kb,nobody",
        "key-b",
    );
    assert_eq!(end_offsets(&topic, 3), 3, "one record per key");
    // Mids: one record per mid; reaches A (mid 1) and B (mid 2).
    assert_acked(&node, "/goim/push/mids?operation=1002&mids=1,2", "mids");
    assert_eq!(end_offsets(&topic, 3), 5, "one record per mid");
    // Room live://2 (B only) and a broadcast close the stream.
    assert_acked(
        &node,
        "/goim/push/room?operation=1000&type=live&room=2",
        "room-2",
    );
    assert_acked(&node, "/goim/push/all?operation=1000&speed=5", "all");
    assert_eq!(end_offsets(&topic, 3), 7);

    assert_eq!(tcp_bodies(&mut a, 2), set(&["mids", "all"]));
    assert_eq!(
        ws_bodies(&mut b, 4),
        set(&["key-b", "mids", "room-2", "all"])
    );

    // The node's consumer read all 7 records; its offsets and the produce
    // counters are in /metrics.
    let offsets = node
        .wait_metric(
            &["corecast_kafka_next_offset", &format!("topic=\"{topic}\"")],
            WAIT,
            |v| v >= 7.0,
        )
        .expect("/metrics");
    assert_eq!(offsets, 7.0, "sum of per-partition offsets");
    let metrics = node.metrics().expect("/metrics");
    let partitions = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("corecast_kafka_next_offset{"))
        .count();
    assert_eq!(partitions, 3, "one offset line per partition");
    assert_eq!(
        node.metric_sum(&["corecast_kafka_produced_records_total"])
            .unwrap(),
        7.0
    );
    assert_eq!(
        node.metric_sum(&["corecast_kafka_records_total"]).unwrap(),
        7.0
    );
    assert_eq!(
        node.metric_sum(&["corecast_kafka_produce_failures_total"])
            .unwrap(),
        0.0
    );
}

#[test]
fn push_with_the_broker_stopped_gets_an_error_reply() {
    let _serial = BROKER.lock().unwrap_or_else(|e| e.into_inner());
    let k = kafka();
    let topic = unique_topic("produce-down");
    k.create_topic(&topic, 1);
    // Short Kafka timeouts bound the push's deadline (request + produce timeout).
    let dir = std::env::temp_dir().join(format!("corecast-produce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("corecast.toml");
    std::fs::write(
        &cfg,
        "[kafka]\nrequest_timeout_ms = 2000\nproduce_timeout_ms = 2000\nbackoff_max_ms = 500\n",
    )
    .unwrap();
    let node = node(&topic, &["--config", cfg.to_str().unwrap()]);
    // The config is read at start; nothing to leave behind.
    let _ = std::fs::remove_dir_all(&dir);
    assert_acked(
        &node,
        "/goim/push/room?operation=1000&type=live&room=1",
        "before",
    );

    k.stop();
    // The testkit's HTTP client gives up after 10 s: a reply at all means the
    // push did not hang past its 4 s deadline.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        post(
            &node,
            "/goim/push/room?operation=1000&type=live&room=1",
            "while-down",
        )
    }));
    k.start();
    let (status, v) = outcome.expect("a reply while the broker is down");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], -500, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("kafka produce"), "reason given: {msg:?}");
    let failed = node
        .metric_sum(&["corecast_kafka_produce_failures_total"])
        .unwrap()
        + node
            .metric_sum(&["corecast_kafka_produce_timeouts_total"])
            .unwrap();
    assert_eq!(failed, 1.0);

    // Back up: pushes are acknowledged again.
    let (status, v) = (0..30)
        .map(|_| {
            let r = post(
                &node,
                "/goim/push/room?operation=1000&type=live&room=1",
                "after",
            );
            if r.0 != 200 {
                std::thread::sleep(Duration::from_millis(500));
            }
            r
        })
        .find(|r| r.0 == 200)
        .unwrap_or_else(|| panic!("no push acknowledged after the broker restarted"));
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)));
}
