//! Kafka produce → ingest latency at a fixed record rate, against the real
//! Apache Kafka broker of the testkit (needs java + mvn, like the tests).
//!
//! A producer thread sends 100-byte native records in small batches paced to
//! `RATE` records/s (acks = all); each record carries the time its produce
//! request was sent. corecast's consumer runs on its own glommio executor and
//! its sink records, per push, now − stamp: the time from the produce request
//! to the decoded push being handed to the fan-out (the shard send path is
//! not included). Prints p50 / p99 / p99.9 / max.
//!
//! `cargo bench --bench kafka_latency` (env RATE, SECS, BATCH override).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corecast::ingest::{run_consumer, DecodedPush, IngestStats, KafkaConfig, PushSink, StartFrom};
use corecast_testkit::kafka::{kafka, unique_topic, TestRecord};
use kafka_protocol::records::Compression;

fn origin() -> Instant {
    static O: OnceLock<Instant> = OnceLock::new();
    *O.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

struct LatencySink(mpsc::Sender<u64>);

impl PushSink for LatencySink {
    async fn deliver(&self, p: DecodedPush) {
        let sent = u64::from_be_bytes(p.body[..8].try_into().expect("stamped body"));
        let _ = self.0.send(now_ns().saturating_sub(sent));
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // nothing useful either way: this only runs as a benchmark.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rate = env_or("RATE", 100_000);
    let secs = env_or("SECS", 10);
    let batch = env_or("BATCH", 200).max(1);
    let warmup = 2;
    origin();

    let k = kafka();
    let topic = unique_topic("latency");
    k.create_topic(&topic, 1);

    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = KafkaConfig {
        brokers: vec![k.bootstrap()],
        topic: topic.clone(),
        start: StartFrom::Earliest,
        fetch_max_wait_ms: 100,
        ..KafkaConfig::default()
    };
    let stop2 = stop.clone();
    let consumer = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move {
            run_consumer(
                cfg,
                LatencySink(tx),
                std::rc::Rc::new(IngestStats::default()),
                stop2,
            )
            .await;
        })
        .expect("consumer executor");

    let mut conn = k.connect().expect("producer connection");
    let pad = vec![b'x'; 92];
    let total = rate * (secs + warmup);
    let period = Duration::from_secs_f64(batch as f64 / rate as f64);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut i = 0u64;
    while sent < total {
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let stamp = now_ns().to_be_bytes();
        let recs: Vec<TestRecord> = (0..batch.min(total - sent))
            .map(|_| {
                let mut body = stamp.to_vec();
                body.extend_from_slice(&pad);
                TestRecord::native("room:bench://1", 1000, Bytes::from(body))
            })
            .collect();
        conn.produce(&topic, 0, &recs, Compression::None)
            .expect("produce");
        sent += recs.len() as u64;
        i += 1;
    }
    let produce_secs = start.elapsed().as_secs_f64();

    let skip = rate * warmup;
    let mut lat: Vec<u64> = Vec::with_capacity((total - skip) as usize);
    for n in 0..total {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("all records consumed");
        if n >= skip {
            lat.push(l);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = consumer.join();
    lat.sort_unstable();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1e6;
    println!(
        "kafka produce->ingest latency: rate {rate}/s (achieved {:.0}/s), batch {batch}, {} records measured: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        total as f64 / produce_secs,
        lat.len(),
        q(0.50),
        q(0.99),
        q(0.999),
        *lat.last().unwrap() as f64 / 1e6
    );
}
