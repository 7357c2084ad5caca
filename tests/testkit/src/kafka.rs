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
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).with_context(|| format!("mkdir {dir:?}"))?;
        let (port, controller_port) = (free_port()?, free_port()?);
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
        broker.spawn_and_wait()?;
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

/// Kafka error codes worth retrying while a partition settles: UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS.
const RETRIABLE: [i16; 5] = [3, 5, 6, 7, 19];

fn is_retriable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ProduceError>() {
        Some(ProduceError(code)) => RETRIABLE.contains(code),
        // Connection refused/reset while the broker (re)starts.
        None => {
            e.downcast_ref::<std::io::Error>().is_some()
                || e.chain().any(|c| c.is::<std::io::Error>())
        }
    }
}

/// A produce answered with a Kafka error code.
#[derive(Debug)]
pub struct ProduceError(pub i16);

impl std::fmt::Display for ProduceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "produce error code {}", self.0)
    }
}

impl std::error::Error for ProduceError {}

/// A record for [`KafkaBroker::produce`].
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub value: Option<Bytes>,
}

impl TestRecord {
    /// corecast's `native` format: key = target (`room:<id>`, `user:<mid>`,
    /// `conn:<key>`, `all`), header `op` = decimal op, value = body.
    pub fn native(target: &str, op: u32, body: impl Into<Bytes>) -> TestRecord {
        TestRecord {
            key: Some(Bytes::copy_from_slice(target.as_bytes())),
            headers: vec![("op".to_string(), Bytes::from(op.to_string()))],
            value: Some(body.into()),
        }
    }

    /// Any key/value with no headers (e.g. goim's PushMsg in the value, or a malformed record).
    pub fn raw(key: Option<&[u8]>, value: Option<&[u8]>) -> TestRecord {
        TestRecord {
            key: key.map(Bytes::copy_from_slice),
            headers: Vec::new(),
            value: value.map(Bytes::copy_from_slice),
        }
    }
}

/// Encodes `records` as one record batch v2 with `compression`.
pub fn encode_batch(records: &[TestRecord], compression: Compression) -> Result<Bytes> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = IndexMap::new();
            for (k, v) in &r.headers {
                headers.insert(StrBytes::from_string(k.clone()), Some(v.clone()));
            }
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder splits batches where offset - sequence changes;
                // this keeps one batch with base sequence -1 (no idempotence).
                sequence: i as i32 - 1,
                timestamp: now,
                key: r.key.clone(),
                value: r.value.clone(),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &opts)?;
    Ok(buf.freeze())
}

/// A blocking Kafka protocol connection (size-prefixed frames, one request at a time).
pub struct KafkaConn {
    stream: TcpStream,
    next_correlation: i32,
}

impl KafkaConn {
    pub fn connect(addr: SocketAddr) -> Result<KafkaConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_nodelay(true)?;
        Ok(KafkaConn {
            stream,
            next_correlation: 1,
        })
    }

    /// Sends `req` at `version` and reads its response.
    pub fn request<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(StrBytes::from_static_str("corecast-testkit"));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_u32(body.len() as u32);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).context("send request")?;

        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .context("read response length")?;
        let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut resp).context("read response")?;
        let mut resp = Bytes::from(resp);
        let got = resp.get_i32();
        if got != correlation {
            bail!("correlation id {got}, expected {correlation}");
        }
        // Response header v1 adds tagged fields (ApiVersions always answers with v0).
        if <R::Response as HeaderVersion>::header_version(version) >= 1 {
            skip_tagged_fields(&mut resp)?;
        }
        R::Response::decode(&mut resp, version).context("decode response")
    }

    pub fn api_versions(&mut self) -> Result<ApiVersionsResponse> {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("corecast-testkit");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let resp = self.request(&req, API_VERSIONS_V)?;
        if resp.error_code != 0 {
            bail!("ApiVersions error {}", resp.error_code);
        }
        Ok(resp)
    }

    /// Metadata for `topics` (None = all topics); never auto-creates.
    pub fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut mt =
                        kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
                    mt.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    mt
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        self.request(&req, METADATA_V)
    }

    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[TestRecord],
        compression: Compression,
    ) -> Result<i64> {
        let batch = encode_batch(records, compression)?;
        let mut pd = PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(batch);
        let mut td = TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string(topic.to_string()));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        let resp = self.request(&req, PRODUCE_V)?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| anyhow!("empty produce response"))?;
        if p.error_code != 0 {
            return Err(anyhow::Error::new(ProduceError(p.error_code))
                .context(format!("produce failed: {:?}", p.error_message)));
        }
        Ok(p.base_offset)
    }
}

fn skip_tagged_fields(buf: &mut Bytes) -> Result<()> {
    let n = read_uvarint(buf)?;
    for _ in 0..n {
        let _tag = read_uvarint(buf)?;
        let len = read_uvarint(buf)? as usize;
        if buf.remaining() < len {
            bail!("truncated tagged field");
        }
        buf.advance(len);
    }
    Ok(())
}

fn read_uvarint(buf: &mut Bytes) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            bail!("truncated varint");
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

/// A unique topic name for one test (tests of a binary share the broker).
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- process

impl KafkaBroker {
    fn write_config(&self) -> Result<()> {
        let data = self.dir.join("data");
        let config = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             auto.create.topics.enable=true\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             num.network.threads=2\n\
             num.io.threads=2\n\
             background.threads=2\n\
             num.recovery.threads.per.data.dir=1\n",
            port = self.port,
            cport = self.controller_port,
            data = data.display(),
        );
        fs::write(self.dir.join("server.properties"), config)?;
        let log4j = format!(
            "rootLogger.level=INFO\n\
             rootLogger.appenderRef.file.ref=file\n\
             appender.file.type=File\n\
             appender.file.name=file\n\
             appender.file.fileName={}\n\
             appender.file.layout.type=PatternLayout\n\
             appender.file.layout.pattern=[%d] %p %m (%c)%n\n",
            self.dir.join("broker.log").display()
        );
        fs::write(self.dir.join("log4j2.properties"), log4j)?;
        Ok(())
    }

    fn java(&self, main: &str) -> Command {
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xms64m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(&self.classpath)
        .arg(main)
        .current_dir(&self.dir)
        .stdin(Stdio::null());
        cmd
    }

    fn format(&self) -> Result<()> {
        let cluster_id = random_cluster_id();
        let out = self
            .java("kafka.tools.StorageTool")
            .args(["format", "-t", &cluster_id, "-c"])
            .arg(self.dir.join("server.properties"))
            .output()
            .context("run kafka.tools.StorageTool")?;
        if !out.status.success() {
            bail!(
                "kafka storage format failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn spawn_and_wait(&self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        let mut cmd = self.java("kafka.Kafka");
        cmd.arg(self.dir.join("server.properties"))
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied_to_process(cmd).context("spawn kafka.Kafka")?;
        remember_pid(child.id());
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.wait_ready()
            .with_context(|| format!("broker not ready\n{}", self.log_tail(40)))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = anyhow!("not tried");
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!("broker process exited during start-up");
            }
            match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last_err.context(format!("not ready after {START_TIMEOUT:?}")))
    }

    /// Ready = ApiVersions answers and Metadata lists this broker (registered, unfenced).
    fn probe(&self) -> Result<()> {
        let mut conn = self.connect()?;
        conn.api_versions()?;
        let md = conn.metadata(Some(&[]))?;
        if md.brokers.is_empty() {
            bail!("broker not registered yet");
        }
        Ok(())
    }
}

/// Spawns `cmd` from a thread that lives until the process exits, with
/// `PR_SET_PDEATHSIG(SIGKILL)`: the signal fires when the *spawning thread*
/// exits, so spawning from a short-lived test thread would kill the broker
/// when that test ends.
fn spawn_tied_to_process(cmd: Command) -> Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("kafka-spawner".into())
                .spawn(move || {
                    // Runs until the process exits (the Sender is in a static).
                    for (mut cmd, reply) in rx {
                        let parent = std::process::id() as libc::pid_t;
                        // SAFETY: pre_exec runs in the forked child before exec;
                        // prctl and getppid are async-signal-safe syscalls.
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                                {
                                    return Err(std::io::Error::last_os_error());
                                }
                                if libc::getppid() != parent {
                                    // The parent died before prctl took effect.
                                    libc::_exit(1);
                                }
                                Ok(())
                            });
                        }
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawn kafka-spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| anyhow!("kafka-spawner thread is gone"))?;
    Ok(reply_rx.recv()??)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned and have not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

// ---------------------------------------------------------------- exit cleanup

struct Cleanup {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn remember_pid(pid: u32) {
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pids
        .push(pid);
}

fn forget_pid(pid: u32) {
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pids
        .retain(|&p| p != pid);
}

fn register_cleanup(dir: &Path) {
    static ONCE: OnceLock<()> = OnceLock::new();
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dirs
        .push(dir.to_path_buf());
    ONCE.get_or_init(|| {
        // SAFETY: registers a plain extern "C" fn; atexit has no other preconditions.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // try_lock: never block process exit on a lock some dying thread held.
    let Ok(c) = CLEANUP.try_lock() else { return };
    for &pid in &c.pids {
        signal(pid, libc::SIGKILL);
        // SAFETY: reaps our own child; a null status pointer is allowed.
        unsafe {
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    for d in &c.dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// Removes temp dirs of earlier test processes that no longer exist (killed runs).
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------- setup

const INSTALL_HINT: &str = "the Kafka tests need a Java 17+ runtime and Maven; on Debian/Ubuntu: \
     `sudo apt-get install -y openjdk-17-jdk-headless maven` (or run `bash .ci/run`, which installs them)";

fn check_tools() -> Result<()> {
    let java = Command::new("java")
        .arg("-version")
        .output()
        .map_err(|e| anyhow!("`java` not found ({e}): {INSTALL_HINT}"))?;
    let text = String::from_utf8_lossy(&java.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if !java.status.success() || major < 17 {
        bail!("`java -version` reports {text:?}: Kafka 4.x needs Java 17+; {INSTALL_HINT}");
    }
    Command::new("mvn")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| anyhow!("`mvn` not found ({e}): {INSTALL_HINT}"))?;
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Downloads the Kafka jars once into `<workspace>/target/kafka-dist/lib`
/// (re-downloads when the pom changes) and returns that dir.
fn ensure_dist() -> Result<PathBuf> {
    let root = workspace_root();
    let pom_path = root.join("tests/testkit/kafka/pom.xml");
    let pom = fs::read(&pom_path).with_context(|| format!("read {pom_path:?}"))?;
    let dist = std::env::var_os("CORECAST_KAFKA_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/kafka-dist"));
    fs::create_dir_all(&dist).with_context(|| format!("mkdir {dist:?}"))?;
    let lock = File::create(dist.join(".lock"))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock {dist:?}: {}", std::io::Error::last_os_error());
    }
    let lib = dist.join("lib");
    let stamp = dist.join("pom.xml.installed");
    if fs::read(&stamp).ok().as_deref() == Some(&pom[..]) && lib.is_dir() {
        return Ok(lib);
    }
    let tmp = dist.join("lib.tmp");
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&lib);
    eprintln!("testkit: downloading Apache Kafka jars from Maven Central into {lib:?} (once)");
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom_path)
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", tmp.display()))
        .stdin(Stdio::null())
        .output()
        .context("run mvn")?;
    if !out.status.success() {
        bail!(
            "mvn dependency:copy-dependencies failed (needs network access to Maven Central):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &lib)?;
    fs::write(&stamp, &pom)?;
    Ok(lib)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
fn random_cluster_id() -> String {
    let mut raw = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut raw);
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    let mut bits = 0u32;
    let mut nbits = 0;
    for b in raw {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}
