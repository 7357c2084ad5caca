//! A minimal blocking Kafka producer for the `--via kafka` push mode: native
//! records (key = target, header `op`, value = stamped body) in one record
//! batch v2 per partition per request, acks configurable. Enough for a
//! benchmark driver: one request in flight per connection, no idempotence,
//! no retries beyond waiting for a topic's leaders at start.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Highest versions this client encodes (Produce v13 and Metadata v13 name
/// topics by id only; the ones below still take names).
const PRODUCE_MAX_V: i16 = 12;
const METADATA_MAX_V: i16 = 12;

/// One blocking connection: size-prefixed requests, one at a time.
struct Conn {
    stream: TcpStream,
    correlation: i32,
    produce_v: i16,
    metadata_v: i16,
}

impl Conn {
    fn connect(addr: &str) -> Result<Conn> {
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving broker {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("broker {addr} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
            .with_context(|| format!("connecting to broker {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn {
            stream,
            correlation: 0,
            produce_v: 3,
            metadata_v: 1,
        };
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("corecast-loadgen");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let resp = c.request(&req, 3)?;
        if resp.error_code != 0 {
            bail!("ApiVersions error {}", resp.error_code);
        }
        for k in &resp.api_keys {
            if k.api_key == ApiKey::Produce as i16 {
                c.produce_v = k.max_version.min(PRODUCE_MAX_V);
            } else if k.api_key == ApiKey::Metadata as i16 {
                c.metadata_v = k.max_version.min(METADATA_MAX_V);
            }
        }
        Ok(c)
    }

    fn request<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("corecast-loadgen"));
        let mut frame = BytesMut::with_capacity(256);
        frame.put_u32(0);
        header.encode(&mut frame, R::header_version(version))?;
        req.encode(&mut frame, version)?;
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame).context("sending to broker")?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .context("reading from broker")?;
        let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream
            .read_exact(&mut resp)
            .context("reading from broker")?;
        let mut resp = Bytes::from(resp);
        let h = ResponseHeader::decode(
            &mut resp,
            <R::Response as HeaderVersion>::header_version(version),
        )?;
        if h.correlation_id != self.correlation {
            bail!(
                "broker answered correlation {} to {}",
                h.correlation_id,
                self.correlation
            );
        }
        R::Response::decode(&mut resp, version).context("decoding the broker's response")
    }
}

/// A native record: target key (`room:test://1`, `user:7`), op, body.
pub struct OutRecord {
    pub key: Bytes,
    pub op: u32,
    pub value: Bytes,
}

/// Produces to every partition of one topic through each partition's leader.
pub struct Producer {
    topic: String,
    acks: i16,
    /// Leader broker address per partition.
    leaders: Vec<String>,
    conns: HashMap<String, Conn>,
}

impl Producer {
    /// Looks the topic up (creating it with the broker's defaults when the
    /// broker allows auto-creation) and waits up to 30 s for every partition
    /// to have a leader.
    pub fn connect(brokers: &str, topic: &str, acks: i16) -> Result<Producer> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = anyhow!("no broker tried");
        while Instant::now() < deadline {
            for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
                match Self::leaders_via(b, topic) {
                    Ok(leaders) => {
                        return Ok(Producer {
                            topic: topic.into(),
                            acks,
                            leaders,
                            conns: HashMap::new(),
                        })
                    }
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last.context(format!("no leaders for topic {topic}")))
    }

    fn leaders_via(bootstrap: &str, topic: &str) -> Result<Vec<String>> {
        let mut c = Conn::connect(bootstrap)?;
        let mut req = MetadataRequest::default();
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.to_string())));
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = true;
        let v = c.metadata_v;
        let resp = c.request(&req, v)?;
        let brokers: HashMap<i32, String> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let t = resp
            .topics
            .first()
            .ok_or_else(|| anyhow!("metadata without the topic"))?;
        if t.error_code != 0 {
            bail!("metadata error {} for topic {topic}", t.error_code);
        }
        let mut parts: Vec<_> = t.partitions.iter().collect();
        if parts.is_empty() {
            bail!("topic {topic} has no partitions yet");
        }
        parts.sort_by_key(|p| p.partition_index);
        parts
            .iter()
            .map(|p| {
                brokers
                    .get(&p.leader_id.0)
                    .cloned()
                    .ok_or_else(|| anyhow!("partition {} has no leader yet", p.partition_index))
            })
            .collect()
    }

    pub fn partitions(&self) -> u32 {
        self.leaders.len() as u32
    }

    /// Produces `records` to `partition` as one uncompressed batch and waits
    /// for the broker's answer (per `acks`).
    pub fn send(&mut self, partition: u32, records: &[OutRecord]) -> Result<()> {
        let leader = self
            .leaders
            .get(partition as usize)
            .ok_or_else(|| anyhow!("no partition {partition}"))?
            .clone();
        if !self.conns.contains_key(&leader) {
            self.conns.insert(leader.clone(), Conn::connect(&leader)?);
        }
        let batch = encode_batch(records)?;
        let mut pd = PartitionProduceData::default();
        pd.index = partition as i32;
        pd.records = Some(batch);
        let mut td = TopicProduceData::default();
        td.name = TopicName(StrBytes::from_string(self.topic.clone()));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = self.acks;
        req.timeout_ms = 10_000;
        req.topic_data = vec![td];
        let conn = self.conns.get_mut(&leader).expect("inserted above");
        let v = conn.produce_v;
        let resp = match conn.request(&req, v) {
            Ok(r) => r,
            Err(e) => {
                self.conns.remove(&leader);
                return Err(e);
            }
        };
        if self.acks == 0 {
            return Ok(());
        }
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| anyhow!("empty produce response"))?;
        if p.error_code != 0 {
            bail!("produce error code {}", p.error_code);
        }
        Ok(())
    }
}

fn encode_batch(records: &[OutRecord]) -> Result<Bytes> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("op"),
                Some(Bytes::from(r.op.to_string())),
            );
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // No idempotence: base sequence -1 keeps the batch whole.
                sequence: i as i32 - 1,
                timestamp: now,
                key: Some(r.key.clone()),
                value: Some(r.value.clone()),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, recs.iter(), &opts)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn batch_holds_native_records_in_order() {
        let recs: Vec<OutRecord> = (0..3)
            .map(|i| OutRecord {
                key: Bytes::from(format!("room:test://{i}")),
                op: 1000 + i,
                value: Bytes::from(vec![b'x'; 10]),
            })
            .collect();
        let mut b = encode_batch(&recs).unwrap();
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        let got: Vec<_> = set.records.iter().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].key.as_deref(), Some(&b"room:test://2"[..]));
        let op = got[1]
            .headers
            .get(&StrBytes::from_static_str("op"))
            .cloned()
            .flatten();
        assert_eq!(op.as_deref(), Some(&b"1001"[..]));
    }
}
