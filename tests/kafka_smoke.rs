//! Smoke test of the Kafka test harness: a real Apache Kafka broker (KRaft)
//! answers ApiVersions and Metadata sent with `kafka-protocol`.

use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::Compression;

#[test]
fn api_versions_lists_the_apis_the_ingest_client_needs() {
    let broker = kafka();
    let mut conn = broker.connect().expect("connect to broker");
    let resp = conn.api_versions().expect("ApiVersions");
    assert_eq!(resp.error_code, 0);
    for (key, min_max) in [
        (ApiKey::Produce, 9),
        (ApiKey::Fetch, 12),
        (ApiKey::ListOffsets, 7),
        (ApiKey::Metadata, 12),
        (ApiKey::ApiVersions, 3),
    ] {
        let k = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .unwrap_or_else(|| panic!("broker does not list {key:?}"));
        assert!(
            k.max_version >= min_max,
            "{key:?}: broker max version {} < {min_max}",
            k.max_version
        );
    }
}

#[test]
fn metadata_shows_the_broker_and_a_created_topic() {
    let broker = kafka();
    let topic = unique_topic("smoke");
    broker.create_topic(&topic, 3);
    let mut conn = broker.connect().expect("connect to broker");
    let md = conn.metadata(Some(&[&topic])).expect("Metadata");
    assert_eq!(md.brokers.len(), 1);
    let b = &md.brokers[0];
    assert_eq!(b.host.as_str(), "127.0.0.1");
    assert_eq!(b.port, i32::from(broker.port()));
    assert_eq!(md.topics.len(), 1);
    let t = &md.topics[0];
    assert_eq!(t.error_code, 0);
    assert_eq!(t.name.as_ref().map(|n| n.0.as_str()), Some(topic.as_str()));
    assert_eq!(t.partitions.len(), 3);
    for p in &t.partitions {
        assert_eq!(
            p.leader_id.0, b.node_id.0,
            "partition {} leader",
            p.partition_index
        );
    }
}

#[test]
fn produce_appends_at_consecutive_offsets() {
    let broker = kafka();
    let topic = unique_topic("smoke-produce");
    broker.create_topic(&topic, 1);
    let recs: Vec<_> = (0..5)
        .map(|i| TestRecord::native("room:live://1", 1000, format!("m{i}")))
        .collect();
    let first = broker.produce(&topic, 0, &recs, Compression::None);
    let second = broker.produce(&topic, 0, &recs, Compression::Zstd);
    assert_eq!(first, 0);
    assert_eq!(second, 5);
}
