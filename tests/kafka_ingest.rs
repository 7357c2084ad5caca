//! Kafka ingest against a real Apache Kafka broker: every target kind, every
//! compression codec, the goim format, start positions, malformed records.

mod kafka_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corecast::fanout::PushTarget;
use corecast::ingest::format::encode_goim;
use corecast::ingest::{RecordFormat, StartFrom};
use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
use kafka_protocol::records::Compression;
use kafka_support::{body, config, TestConsumer};

#[test]
fn native_records_of_each_target_kind_become_pushes() {
    let k = kafka();
    let topic = unique_topic("ingest-targets");
    k.create_topic(&topic, 3);
    let c = TestConsumer::start(config(k.bootstrap(), &topic));
    let sent = [
        ("room:live://1000", 1000, "to the room"),
        ("user:42", 1001, "to user 42"),
        ("conn:key-7", 1002, "to one connection"),
        ("all", 1003, "to everyone"),
    ];
    for (i, (key, op, text)) in sent.iter().enumerate() {
        k.produce(
            &topic,
            i as i32 % 3,
            &[TestRecord::native(key, *op, *text)],
            Compression::None,
        );
    }
    let mut got: Vec<_> = c
        .take(sent.len(), "one push per record")
        .into_iter()
        .map(|p| (p.op, p))
        .collect();
    got.sort_by_key(|(op, _)| *op);
    let expect = [
        PushTarget::Room(Arc::from("live://1000")),
        PushTarget::Mids(Arc::from([42i64])),
        PushTarget::Keys(Arc::from([Box::<str>::from("key-7")])),
        PushTarget::All,
    ];
    for (((op, p), target), (_, sent_op, text)) in got.iter().zip(expect).zip(sent) {
        assert_eq!(*op, sent_op);
        assert_eq!(p.target, target);
        assert_eq!(body(p), text);
    }
    assert!(
        c.drain_for(Duration::from_millis(500)).is_empty(),
        "no extra pushes"
    );
}

#[test]
fn batches_of_every_codec_decode_in_order() {
    let k = kafka();
    let topic = unique_topic("ingest-codecs");
    k.create_topic(&topic, 1);
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for (ci, codec) in codecs.iter().enumerate() {
        let recs: Vec<_> = (0..25)
            .map(|i| {
                TestRecord::native(
                    "room:codec://1",
                    1000,
                    format!("{codec:?}-{ci}-{i} {}", "x".repeat(i * 7)),
                )
            })
            .collect();
        k.produce(&topic, 0, &recs, *codec);
    }
    let c = TestConsumer::start(config(k.bootstrap(), &topic));
    let got = c.take(codecs.len() * 25, "all records of all codecs");
    for (n, p) in got.iter().enumerate() {
        let (ci, i) = (n / 25, n % 25);
        assert_eq!(
            body(p),
            format!("{:?}-{ci}-{i} {}", codecs[ci], "x".repeat(i * 7))
        );
    }
}

#[test]
fn goim_push_msg_records_become_pushes() {
    let k = kafka();
    let topic = unique_topic("ingest-goim");
    k.create_topic(&topic, 1);
    let values = [
        encode_goim(1, 1000, "test://1", &[], b"room msg"),
        encode_goim(0, 1001, "", &["k1", "k2"], b"keys msg"),
        encode_goim(2, 1002, "", &[], b"broadcast msg"),
    ];
    let recs: Vec<_> = values
        .iter()
        .map(|v| TestRecord::raw(None, Some(v)))
        .collect();
    k.produce(&topic, 0, &recs, Compression::Lz4);
    let mut cfg = config(k.bootstrap(), &topic);
    cfg.format = RecordFormat::Goim;
    let c = TestConsumer::start(cfg);
    let got = c.take(3, "goim pushes");
    assert_eq!(got[0].target, PushTarget::Room(Arc::from("test://1")));
    assert_eq!((got[0].op, body(&got[0]).as_str()), (1000, "room msg"));
    assert_eq!(
        got[1].target,
        PushTarget::Keys(Arc::from([Box::<str>::from("k1"), Box::<str>::from("k2")]))
    );
    assert_eq!(got[2].target, PushTarget::All);
    assert_eq!((got[2].op, body(&got[2]).as_str()), (1002, "broadcast msg"));
}

#[test]
fn malformed_record_is_skipped_and_the_next_delivered() {
    let k = kafka();
    let topic = unique_topic("ingest-malformed");
    k.create_topic(&topic, 1);
    let mut bad_op = TestRecord::native("all", 0, "bad op");
    bad_op.headers = vec![("op".into(), bytes::Bytes::from_static(b"12x"))];
    let recs = vec![
        TestRecord::native("all", 1000, "first"),
        TestRecord::raw(Some(b"nonsense-key"), Some(b"v")),
        TestRecord::raw(None, Some(b"no key")),
        bad_op,
        TestRecord::native("user:not-a-number", 1000, "bad mid"),
        TestRecord::native("room:r", 1000, "second"),
    ];
    k.produce(&topic, 0, &recs, Compression::None);
    k.produce(
        &topic,
        0,
        &[TestRecord::native("all", 1000, "third")],
        Compression::Gzip,
    );
    let c = TestConsumer::start(config(k.bootstrap(), &topic));
    let got: Vec<String> = c.take(3, "the valid records").iter().map(body).collect();
    assert_eq!(got, ["first", "second", "third"]);
    assert!(c.drain_for(Duration::from_millis(500)).is_empty());
}

#[test]
fn explicit_start_offsets_and_latest() {
    let k = kafka();
    let topic = unique_topic("ingest-start");
    k.create_topic(&topic, 2);
    let old: Vec<_> = (0..10)
        .map(|i| TestRecord::native("all", 1000, format!("old-{i}")))
        .collect();
    k.produce(&topic, 0, &old, Compression::None);
    k.produce(&topic, 1, &old, Compression::None);

    // Explicit: partition 0 from offset 7; partition 1 has none → `start`.
    let mut cfg = config(k.bootstrap(), &topic);
    cfg.start = StartFrom::Latest;
    cfg.start_offsets = BTreeMap::from([(0, 7)]);
    let c = TestConsumer::start(cfg);
    let got: Vec<String> = c
        .take(3, "offsets 7..10 of partition 0")
        .iter()
        .map(body)
        .collect();
    assert_eq!(got, ["old-7", "old-8", "old-9"]);

    // Latest: records written before the consumer started never arrive.
    // Probe until the consumer has positioned itself, then check.
    let mut cfg = config(k.bootstrap(), &topic);
    cfg.start = StartFrom::Latest;
    let c = TestConsumer::start(cfg);
    let mut probes = 0;
    let first = loop {
        probes += 1;
        k.produce(
            &topic,
            1,
            &[TestRecord::native("all", 1000, format!("probe-{probes}"))],
            Compression::None,
        );
        let seen = c.drain_for(Duration::from_millis(300));
        if let Some(p) = seen.first() {
            break body(p);
        }
        assert!(probes < 400, "latest consumer never received a new record");
    };
    assert!(
        first.starts_with("probe-"),
        "latest start delivered an old record: {first}"
    );
}

#[test]
fn producer_records_are_acknowledged_and_consumed() {
    let k = kafka();
    let topic = unique_topic("ingest-produce");
    k.create_topic(&topic, 4);
    let cfg = config(k.bootstrap(), &topic);
    let producer_cfg = cfg.clone();
    let acked = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            let mut p = corecast::ingest::Producer::new(producer_cfg);
            let mut acked = Vec::new();
            for i in 0..20u32 {
                let key = format!("room:prod://{}", i % 5);
                let a = p
                    .send_native(&key, 1000 + i, bytes::Bytes::from(format!("p{i}")))
                    .await
                    .expect("produce acknowledged");
                acked.push((key, a));
            }
            acked
        })
        .expect("executor")
        .join()
        .expect("producer thread");
    // Same key → same partition; offsets within a partition increase.
    let mut by_key: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for (key, a) in &acked {
        by_key
            .entry(key.clone())
            .or_default()
            .push((a.partition, a.offset));
    }
    for (key, v) in &by_key {
        assert!(
            v.iter().all(|(p, _)| *p == v[0].0),
            "{key} spread over partitions: {v:?}"
        );
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "{key} offsets: {v:?}"
        );
    }
    let c = TestConsumer::start(cfg);
    let mut got: Vec<(u32, String)> = c
        .take(20, "produced records")
        .iter()
        .map(|p| (p.op, body(p)))
        .collect();
    got.sort();
    let want: Vec<(u32, String)> = (0..20u32).map(|i| (1000 + i, format!("p{i}"))).collect();
    assert_eq!(got, want);
}

#[test]
fn partitions_added_later_are_read_from_their_start() {
    let k = kafka();
    let topic = unique_topic("ingest-grow");
    k.create_topic(&topic, 1);
    let mut cfg = config(k.bootstrap(), &topic);
    cfg.start = StartFrom::Latest;
    cfg.metadata_refresh_secs = 1;
    let c = TestConsumer::start(cfg);
    // Wait until the consumer is positioned (a probe arrives).
    let mut probes = 0;
    loop {
        probes += 1;
        let rec = TestRecord::native("all", 1000, format!("probe-{probes}"));
        k.produce(&topic, 0, &[rec], Compression::None);
        if !c.drain_for(Duration::from_millis(300)).is_empty() {
            break;
        }
        assert!(probes < 400, "consumer never positioned");
    }
    // A record in a partition the consumer has not seen yet must still
    // arrive, although the consumer started at `latest`.
    k.add_partitions(&topic, 2);
    k.produce(
        &topic,
        1,
        &[TestRecord::native("all", 1000, "in-new-partition")],
        Compression::None,
    );
    loop {
        let p = c.next("record of the added partition");
        if body(&p) == "in-new-partition" {
            break;
        }
        assert!(body(&p).starts_with("probe-"), "unexpected {}", body(&p));
    }
}
