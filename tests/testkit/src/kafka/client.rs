//! Blocking Kafka protocol client and record helpers of the test harness.

use super::*;

/// Kafka error codes worth retrying while a partition settles: UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS.
pub(super) const RETRIABLE: [i16; 5] = [3, 5, 6, 7, 19];

pub(super) fn is_retriable(e: &anyhow::Error) -> bool {
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

pub(super) fn skip_tagged_fields(buf: &mut Bytes) -> Result<()> {
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

pub(super) fn read_uvarint(buf: &mut Bytes) -> Result<u64> {
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
