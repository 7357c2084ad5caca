//! Shared by the Kafka ingest tests: runs corecast's Kafka consumer on its
//! own glommio executor and hands decoded pushes to the test thread.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use corecast::ingest::{run_consumer, DecodedPush, IngestStats, KafkaConfig, PushSink};
use glommio::{LocalExecutorBuilder, Placement};

/// How long a test waits for records that must arrive (generous: the CI
/// box is small and shared; this bounds a failure, it is not a timing test).
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(120);

struct ChannelSink(mpsc::Sender<DecodedPush>);

impl PushSink for ChannelSink {
    async fn deliver(&self, push: DecodedPush) {
        let _ = self.0.send(push);
    }
}

/// A running consumer; stopped and joined on drop.
pub struct TestConsumer {
    rx: mpsc::Receiver<DecodedPush>,
    stop: Arc<AtomicBool>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

impl TestConsumer {
    pub fn start(cfg: KafkaConfig) -> TestConsumer {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let join = LocalExecutorBuilder::new(Placement::Unbound)
            .name("test-ingest")
            .io_memory(1 << 20)
            .spawn(move || async move {
                run_consumer(
                    cfg,
                    ChannelSink(tx),
                    std::rc::Rc::new(IngestStats::default()),
                    stop2,
                )
                .await;
            })
            .expect("start glommio executor for the consumer");
        TestConsumer {
            rx,
            stop,
            join: Some(join),
        }
    }

    /// Next push, or panic after [`ARRIVAL_TIMEOUT`].
    pub fn next(&self, what: &str) -> DecodedPush {
        self.rx
            .recv_timeout(ARRIVAL_TIMEOUT)
            .unwrap_or_else(|_| panic!("no push arrived within {ARRIVAL_TIMEOUT:?} ({what})"))
    }

    /// Exactly the next `n` pushes.
    pub fn take(&self, n: usize, what: &str) -> Vec<DecodedPush> {
        (0..n)
            .map(|i| self.next(&format!("{what}: {i} of {n}")))
            .collect()
    }

    /// Pushes that arrive within `d` (for asserting that nothing more comes
    /// after everything expected arrived).
    pub fn drain_for(&self, d: Duration) -> Vec<DecodedPush> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(p) => out.push(p),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for TestConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Consumer config for `topic` on the test broker, reading from the start.
pub fn config(bootstrap: String, topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: vec![bootstrap],
        topic: topic.to_string(),
        start: corecast::ingest::StartFrom::Earliest,
        fetch_max_wait_ms: 100,
        backoff_min_ms: 50,
        backoff_max_ms: 1000,
        start_offsets: BTreeMap::new(),
        ..KafkaConfig::default()
    }
}

/// Body as text, for readable assertions.
pub fn body(p: &DecodedPush) -> String {
    String::from_utf8_lossy(&p.body).into_owned()
}
