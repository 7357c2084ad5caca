//! Broker stop / crash and restart mid-stream: every record the broker
//! acknowledged is delivered exactly once, in order, after it is back.
//! Own test binary: it stops the broker that the tests of a binary share.

mod kafka_support;

use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
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
        c.drain_for(std::time::Duration::from_millis(500))
            .is_empty(),
        "no duplicates"
    );
}
