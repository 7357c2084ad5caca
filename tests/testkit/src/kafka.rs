//! Real Apache Kafka (KRaft, single node) for tests.
//!
//! [`kafka()`] starts one broker per test process (the first caller pays the
//! start-up, every later caller shares it):
//!
//! 1. checks `java` (17+) and `mvn` are installed, else panics naming the
//!    Debian packages to install (tests never skip);
//! 2. fetches Apache Kafka's jars from Maven Central with the small pom in
//!    `tests/testkit/kafka/pom.xml` into `<workspace>/target/kafka-dist/lib`,
//!    once per pom version (a file lock serialises concurrent test processes);
//! 3. formats a temp log dir (`kafka.tools.StorageTool format`) and runs
//!    `kafka.Kafka` as a combined broker+controller on two free loopback ports;
//! 4. waits until ApiVersions and Metadata (with the broker registered) answer.
//!
//! The broker never outlives the test process: it is spawned by a dedicated
//! thread that lives until the process exits, with `PR_SET_PDEATHSIG(SIGKILL)`
//! (fires when the spawning thread dies, i.e. at process exit, even on SIGKILL
//! of the test binary), and an `atexit` hook kills it and removes its temp
//! dir on a normal exit (Rust runs no destructors of statics). Temp dirs of
//! test processes that were killed are swept at the next start.
//!
//! [`KafkaBroker::stop`] / [`KafkaBroker::start`] restart the broker on the
//! same ports and data dir (for broker-restart tests; put those in their own
//! test binary, since every test of a binary shares the broker).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest, CreateTopicsRequest,
    MetadataRequest, MetadataResponse, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

mod client;
mod process;

use client::is_retriable;
pub use client::{encode_batch, unique_topic, KafkaConn, ProduceError, TestRecord};
use process::*;

/// How long a start (JVM boot + KRaft election + broker registration) may take.
/// Generous: the CI box has 2 cores shared with parallel compiles.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a graceful stop may take before the broker is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const TEMP_PREFIX: &str = "corecast-kafka-";

/// Kafka error code for "topic already exists" in CreateTopics.
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Request versions the helpers use; all supported by Kafka 4.x.
const API_VERSIONS_V: i16 = 3;
const METADATA_V: i16 = 12;
const CREATE_TOPICS_V: i16 = 7;
const CREATE_PARTITIONS_V: i16 = 3;
/// Produce v9 is the newest that addresses topics by name (v13 uses ids).
const PRODUCE_V: i16 = 9;

/// The shared broker of this test process, started on first use.
///
/// Panics (failing the test) with a message saying what is missing when java
/// or mvn are absent or the broker does not come up.
pub fn kafka() -> &'static KafkaBroker {
    // The outcome is kept: after a failed start every test fails at once
    // with the same message instead of retrying a slow start each.
    static BROKER: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    match BROKER.get_or_init(|| KafkaBroker::launch().map_err(|e| format!("{e:#}"))) {
        Ok(b) => b,
        Err(e) => panic!("Kafka test broker: {e}"),
    }
}

/// One KRaft node (broker + controller) run from the Maven Central jars.
pub struct KafkaBroker {
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    classpath: OsString,
    child: Mutex<Option<Child>>,
}

impl KafkaBroker {
    fn launch() -> Result<KafkaBroker> {
        check_tools()?;
        let lib = ensure_dist()?;
        sweep_stale_dirs();
        // A port picked free can be taken before the JVM binds it (tests
        // that open thousands of connections run on the same box): retry
        // with fresh ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::launch_once(&lib) {
                Ok(b) => return Ok(b),
                Err(e) if attempt < 4 && format!("{e:#}").contains("Address already in use") => {
                    eprintln!("testkit: Kafka port taken during start-up, retrying with new ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn launch_once(lib: &Path) -> Result<KafkaBroker> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).with_context(|| format!("mkdir {dir:?}"))?;
        let port = free_port()?;
        let mut controller_port = free_port()?;
        while controller_port == port {
            controller_port = free_port()?;
        }
        let mut classpath = OsString::from(lib.as_os_str());
        classpath.push("/*");
        let broker = KafkaBroker {
            port,
            controller_port,
            dir,
            classpath,
            child: Mutex::new(None),
        };
        register_cleanup(&broker.dir);
        broker.write_config()?;
        broker.format()?;
        if let Err(e) = broker.spawn_and_wait() {
            broker.kill();
            return Err(e);
        }
        Ok(broker)
    }

    /// `127.0.0.1:<port>` of the PLAINTEXT listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Temp dir holding config, data (`data/`) and logs (`broker.log`, `stdout.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Graceful stop (SIGTERM, wait; SIGKILL after a timeout). Data stays.
    pub fn stop(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = child {
            signal(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            forget_pid(c.id());
        }
    }

    /// Hard kill (SIGKILL), like a crashed broker. Data stays.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
            forget_pid(c.id());
        }
    }

    /// Starts the broker again on the same ports and data dir; returns when ready.
    /// Panics if it does not come up.
    pub fn start(&self) {
        if self.is_running() {
            return;
        }
        if let Err(e) = self.spawn_and_wait() {
            panic!("Kafka test broker restart: {e:#}");
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// The last `lines` lines of the broker's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "broker.log"] {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!("--- {name} (last {} lines)\n", all.len() - from));
            for l in &all[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// A new blocking protocol connection to the broker.
    pub fn connect(&self) -> Result<KafkaConn> {
        KafkaConn::connect(self.addr())
    }

    /// Creates `name` with `partitions` partitions (replication 1) and waits
    /// until Metadata shows every partition with a leader. Existing is fine.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.try_create_topic(name, partitions)
            .unwrap_or_else(|e| panic!("create topic {name}: {e:#}\n{}", self.log_tail(30)))
    }

    /// Grows `name` to `total` partitions and waits until all have a leader.
    pub fn add_partitions(&self, name: &str, total: i32) {
        self.try_add_partitions(name, total)
            .unwrap_or_else(|e| panic!("add partitions to {name}: {e:#}\n{}", self.log_tail(30)))
    }

    fn try_add_partitions(&self, name: &str, total: i32) -> Result<()> {
        let mut conn = self.connect()?;
        let mut t = CreatePartitionsTopic::default();
        t.name = TopicName(StrBytes::from_string(name.to_string()));
        t.count = total;
        t.assignments = None; // the controller places the new partitions
        let mut req = CreatePartitionsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 30_000;
        let resp = conn.request(&req, CREATE_PARTITIONS_V)?;
        for r in &resp.results {
            if r.error_code != 0 {
                bail!(
                    "CreatePartitions error {} {:?}",
                    r.error_code,
                    r.error_message
                );
            }
        }
        // Same readiness wait as create_topic (already-existing is fine there).
        self.try_create_topic(name, total)
    }

    fn try_create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let mut conn = self.connect()?;
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.to_string()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![topic];
        req.timeout_ms = 30_000;
        let resp = conn.request(&req, CREATE_TOPICS_V)?;
        for t in &resp.topics {
            if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
                bail!("CreateTopics error {} {:?}", t.error_code, t.error_message);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let md = conn.metadata(Some(&[name]))?;
            let ready = md.topics.iter().any(|t| {
                t.error_code == 0
                    && t.partitions.len() == partitions as usize
                    && t.partitions
                        .iter()
                        .all(|p| p.error_code == 0 && p.leader_id.0 >= 0)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("topic not ready after 60 s: {md:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Produces `records` as one batch with `compression` to `topic`/`partition`
    /// (acks = all) and returns the base offset the broker assigned.
    ///
    /// Retries retriable errors for a while: right after a topic is created
    /// (or the broker restarted) Metadata may already name a leader that has
    /// not taken the partition over yet (NOT_LEADER_OR_FOLLOWER).
    pub fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[TestRecord],
        compression: Compression,
    ) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .connect()
                .and_then(|mut c| c.produce(topic, partition, records, compression));
            match r {
                Ok(offset) => return offset,
                Err(e) if Instant::now() < deadline && is_retriable(&e) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("produce to {topic}/{partition}: {e:#}"),
            }
        }
    }
}
