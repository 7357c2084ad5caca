//! Broker stop / crash and restart mid-stream: every record the broker
//! acknowledged is delivered exactly once, in order, after it is back: to
//! the consumer library and, through a real `corecast serve`, to a client.
//! Own test binary: it stops the broker that the tests of a binary share.

mod kafka_support;

use std::time::Duration;

use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
use corecast_testkit::server::{auth_body, Server, TcpClient};
use kafka_protocol::records::Compression;
use kafka_support::{body, config, TestConsumer};

fn produce_range(topic: &str, from: usize, to: usize) {
    let k = kafka();
    for chunk in (from..to).collect::<Vec<_>>().chunks(10) {
        let recs: Vec<_> = chunk
            .iter()
            .map(|i| TestRecord::native("room:r://1", 1000, format!("m{i}")))
            .collect();
        k.produce(topic, 0, &recs, Compression::Snappy);
    }
}

fn expect_range(c: &TestConsumer, from: usize, to: usize) {
    let got = c.take(to - from, "records around the restart");
    let got: Vec<String> = got.iter().map(body).collect();
    let want: Vec<String> = (from..to).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn consumer_survives_broker_stop_and_crash_without_loss_or_duplicates() {
    let k = kafka();
    let topic = unique_topic("ingest-restart");
    k.create_topic(&topic, 1);
    let c = TestConsumer::start(config(k.bootstrap(), &topic));
    let node = Server::builder(env!("CARGO_BIN_EXE_corecast"))
        .args(["--shards", "2", "--auth-mode", "insecure"])
        // The client stays silent through two broker restarts.
        .args(["--heartbeat-interval-secs", "600"])
        .args(["--kafka-brokers", &k.bootstrap(), "--kafka-topic", &topic])
        .args(["--kafka-start", "earliest"])
        .start()
        .expect("start corecast with Kafka ingest");
    let mut client = TcpClient::connect_auth(node.tcp, &auth_body(1, "k1", "r://1", &[1000], None))
        .expect("client joins room r://1");
    // Reads wait across the broker restarts (bounded, not a timing assertion).
    client
        .s
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();

    produce_range(&topic, 0, 100);
    expect_range(&c, 0, 50);
    // Graceful stop while the consumer is mid-stream, then restart.
    k.stop();
    k.start();
    produce_range(&topic, 100, 200);
    expect_range(&c, 50, 200);

    // Crash (SIGKILL) with records still unread, then restart.
    produce_range(&topic, 200, 300);
    k.kill();
    k.start();
    produce_range(&topic, 300, 350);
    expect_range(&c, 200, 350);
    assert!(
        c.drain_for(Duration::from_millis(500)).is_empty(),
        "no duplicates"
    );

    // The node delivered the same 350 records to its client, once each, in order.
    for i in 0..350 {
        let p = client.read().expect("push via corecast");
        assert_eq!(
            (p.op, String::from_utf8_lossy(&p.body).into_owned()),
            (1000, format!("m{i}"))
        );
    }
    client
        .s
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(client.read().is_err(), "no duplicate push after m349");
}
