//! Kafka ingest: a native Kafka client on `kafka-protocol` that reads every
//! partition of the push topic (no consumer group: every edge node receives
//! everything) and turns records into pushes; plus the producer the HTTP
//! push API uses when Kafka is configured (design §4).
//!
//! Pure, I/O-free modules (unit tested without a broker):
//! - [`wire`]: request framing, correlation ids, response decoding;
//! - [`versions`]: API version negotiation;
//! - [`batch`]: record batch v2 decoding, gzip/snappy/lz4/zstd;
//! - [`format`]: the `native` and `goim` record formats;
//! - [`route`]: records → pushes encoded into one buffer per batch.
//!
//! I/O on the glommio executor: [`conn`] (one broker connection),
//! [`consumer`] (bootstrap, Metadata, ListOffsets, pipelined Fetch per
//! leader, recovery), [`producer`] (Produce with configurable acks).
//!
//! The consumer encodes the pushes of each fetched partition's records into
//! one buffer and hands them as a batch to a [`PushSink`]; the control
//! core's [`Dispatcher`](crate::control::Dispatcher) is one (one ring item
//! per shard per batch), tests use a channel.

pub mod batch;
pub mod conn;
pub mod consumer;
pub mod format;
pub mod producer;
pub mod route;
pub mod versions;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use consumer::run_consumer;
pub use format::{DecodedPush, FormatError, OutRecord, PushRef, RecordFormat, TargetCache};

use crate::fanout::PushBatch;
#[cfg(doc)]
use crate::fanout::PushBatchBuilder;
pub use producer::Producer;

/// `[kafka]` configuration. No brokers = embedded mode (no Kafka at all).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The push topic.
    pub topic: String,
    pub format: RecordFormat,
    /// Where a partition without a known offset starts.
    pub start: StartFrom,
    /// Explicit start offsets by partition (`[kafka.start_offsets]` with
    /// `"0" = 1234`); they override `start` for those partitions.
    #[serde(deserialize_with = "partition_map")]
    pub start_offsets: BTreeMap<i32, i64>,
    pub client_id: String,
    /// Fetch long-poll: the broker answers after this long or on data.
    pub fetch_max_wait_ms: i32,
    /// Bytes per fetch response, and per partition within it.
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Produce acks: -1 = all in-sync replicas (default), 1 = leader, 0 = none.
    pub acks: i16,
    pub produce_timeout_ms: i32,
    /// Socket connect / request timeout (fetches add their max wait).
    pub request_timeout_ms: u64,
    /// Reconnect backoff, doubling from min to max.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// How often the consumer re-reads metadata (new partitions, leaders).
    pub metadata_refresh_secs: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: Vec::new(),
            topic: "corecast-push".into(),
            format: RecordFormat::Native,
            start: StartFrom::Latest,
            start_offsets: BTreeMap::new(),
            client_id: "corecast".into(),
            fetch_max_wait_ms: 200,
            fetch_max_bytes: 16 << 20,
            partition_max_bytes: 2 << 20,
            acks: -1,
            produce_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            metadata_refresh_secs: 60,
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// TOML keys are strings: reads `{"0" = 5}` as partition 0 → offset 5.
fn partition_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<i32, i64>, D::Error> {
    let raw = BTreeMap::<String, i64>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.trim()
                .parse::<i32>()
                .map(|p| (p, v))
                .map_err(|_| serde::de::Error::custom(format!("partition {k:?} is not a number")))
        })
        .collect()
}

/// Start position of a partition with no explicit offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Latest,
    Earliest,
}

/// Errors of the Kafka client. All are recovered from by the consumer loop
/// (backoff, reconnect, metadata refresh); they surface in logs.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Version(#[from] versions::NoCommonVersion),
    #[error("{what} failed with Kafka error {code}")]
    Broker { what: &'static str, code: i16 },
    #[error("no bootstrap broker reachable ({0})")]
    NoBroker(String),
    #[error("topic {0} not found")]
    NoTopic(String),
    #[error("partition {partition} has no leader ({reason})")]
    NoLeader { partition: i32, reason: String },
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// Where decoded pushes go.
///
/// The consumer encodes the pushes of each fetched partition's records into
/// one [`PushBatch`] (one buffer, see [`PushBatchBuilder`]) and hands it to
/// [`deliver_batch`](Self::deliver_batch); sinks that want one push at a
/// time implement only [`deliver`](Self::deliver).
pub trait PushSink {
    /// Delivers one push; may wait (backpressure stops fetching meanwhile).
    fn deliver(&self, push: DecodedPush) -> impl Future<Output = ()>;

    /// Delivers encoded pushes in order; by default one by one through
    /// [`deliver`](Self::deliver) (body = the packet after its header).
    fn deliver_batch(&self, batch: PushBatch) -> impl Future<Output = ()> {
        async move {
            for p in batch.iter() {
                self.deliver(DecodedPush {
                    target: p.target.clone(),
                    op: p.op,
                    body: p.packet.slice(crate::fanout::PACKET_HEADER_LEN..),
                })
                .await;
            }
        }
    }
}

impl PushSink for crate::control::Dispatcher {
    async fn deliver(&self, p: DecodedPush) {
        if let Err(e) = self.push(p.target, p.op, &p.body).await {
            tracing::warn!(error = %e, "kafka push not delivered to every shard");
        }
    }

    async fn deliver_batch(&self, batch: PushBatch) {
        let n = batch.len();
        // Waits out full rings (backpressure); fails only on shutdown or a
        // stopped shard.
        if let Err(e) = self.dispatch_batch(batch).await {
            tracing::warn!(error = %e, pushes = n, "kafka pushes not delivered to every shard");
        }
    }
}

/// Counters of the consumer (single-threaded, on the ingest executor).
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Records turned into pushes.
    pub records: Cell<u64>,
    /// Records skipped because they are not valid pushes.
    pub malformed: Cell<u64>,
    /// Batches skipped (CRC mismatch, bad compression, old format).
    pub bad_batches: Cell<u64>,
    /// Sessions ended by an error (connection loss, leader change, …).
    pub reconnects: Cell<u64>,
    /// Next offset to read, per partition.
    pub offsets: RefCell<BTreeMap<i32, i64>>,
}

impl IngestStats {
    /// Appends the counters in Prometheus text format (for `/metrics`).
    pub fn render_prometheus(&self, topic: &str, out: &mut String) {
        use std::fmt::Write;
        let counters = [
            (
                "corecast_kafka_records_total",
                "Kafka records turned into pushes",
                self.records.get(),
            ),
            (
                "corecast_kafka_malformed_total",
                "Kafka records skipped as malformed",
                self.malformed.get(),
            ),
            (
                "corecast_kafka_bad_batches_total",
                "Kafka record batches skipped (CRC, codec, format)",
                self.bad_batches.get(),
            ),
            (
                "corecast_kafka_reconnects_total",
                "Kafka consumer sessions ended by an error",
                self.reconnects.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "corecast_kafka_next_offset";
        let _ = writeln!(
            out,
            "# HELP {name} Next offset to read per partition\n# TYPE {name} gauge"
        );
        for (p, o) in self.offsets.borrow().iter() {
            let _ = writeln!(out, "{name}{{topic=\"{topic}\",partition=\"{p}\"}} {o}");
        }
    }
}

/// The consumer as a task for the control executor
/// ([`crate::control::spawn`]'s `tasks`): pushes go through its
/// [`Dispatcher`](crate::control::Dispatcher), whose `/metrics` shows the
/// consumer's counters and per-partition offsets. `on_stats` also receives
/// them on that executor (they are `!Send`); setting `stop` ends the
/// consumer.
pub fn control_task(
    cfg: KafkaConfig,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    on_stats: impl FnOnce(std::rc::Rc<IngestStats>) + Send + 'static,
) -> crate::control::ControlTask {
    Box::new(move |dispatcher: crate::control::Dispatcher| {
        let stats = std::rc::Rc::new(IngestStats::default());
        dispatcher.attach_ingest_stats(cfg.topic.clone(), stats.clone());
        on_stats(stats.clone());
        glommio::spawn_local(run_consumer(cfg, dispatcher, stats, stop)).detach();
    })
}

/// At most one log line per interval; counts what it held back.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Cell<Option<Instant>>,
    held: Cell<u64>,
}

impl RateLimit {
    pub const fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: Cell::new(None),
            held: Cell::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were held back since).
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        match self.last.get() {
            Some(t) if now.duration_since(t) < self.every => {
                self.held.set(self.held.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.held.replace(0))
            }
        }
    }
}

/// Doubling backoff between `min` and `max`.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn rate_limit_holds_back_within_interval() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
    }

    #[test]
    fn stats_render_as_prometheus_text() {
        let s = IngestStats::default();
        s.records.set(3);
        s.offsets.borrow_mut().insert(1, 42);
        let mut out = String::new();
        s.render_prometheus("push", &mut out);
        assert!(out.contains("corecast_kafka_records_total 3\n"));
        assert!(out.contains("corecast_kafka_next_offset{topic=\"push\",partition=\"1\"} 42\n"));
    }

    #[test]
    fn config_parses_from_toml() {
        let c: KafkaConfig = toml::from_str(
            "brokers = [\"127.0.0.1:9092\"]\ntopic = \"push\"\nformat = \"goim\"\nstart = \"earliest\"\n[start_offsets]\n\"0\" = 5\n",
        )
        .unwrap();
        assert!(c.enabled());
        assert_eq!(c.format, RecordFormat::Goim);
        assert_eq!(c.start, StartFrom::Earliest);
        assert_eq!(c.start_offsets.get(&0), Some(&5));
        assert_eq!(c.acks, -1);
    }
}
