//! Producer of native records (the HTTP push API with Kafka configured).
//!
//! Records with the same key go to the same partition (FNV-1a of the key,
//! modulo the partition count) so a room's messages keep their order. A
//! send waits for the broker's acknowledgement (`acks`, default all); on a
//! leader change or connection loss it refreshes metadata and retries a few
//! times with backoff before failing.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{MetadataRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;

use super::conn::BrokerConn;
use super::consumer::bootstrap;
use super::format::{encode_batch, OutRecord};
use super::{Backoff, IngestError, KafkaConfig};

const ATTEMPTS: u32 = 5;

/// Kafka producer bound to the push topic; lives on one glommio executor.
pub struct Producer {
    cfg: KafkaConfig,
    bootstrap_idx: usize,
    /// Topic name and id (produce v13 addresses topics by id), no partitions.
    topic: TopicProduceData,
    /// partition → leader address.
    leaders: BTreeMap<i32, String>,
    conns: BTreeMap<String, BrokerConn>,
    pub compression: Compression,
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

impl Producer {
    pub fn new(cfg: KafkaConfig) -> Producer {
        Producer {
            cfg,
            bootstrap_idx: 0,
            topic: TopicProduceData::default(),
            leaders: BTreeMap::new(),
            conns: BTreeMap::new(),
            compression: Compression::None,
        }
    }

    /// Produces one native record (`key` = target key, header `op`, value
    /// = body) and waits for the acknowledgement.
    pub async fn send_native(
        &mut self,
        key: &str,
        op: u32,
        body: Bytes,
    ) -> Result<Acked, IngestError> {
        let rec = OutRecord::native(key, op, body);
        self.send(key.as_bytes(), std::slice::from_ref(&rec)).await
    }

    /// Produces one native record per key (same `op` and body), one batch
    /// per partition, and waits for every acknowledgement. Acks come back
    /// in partition order, one per record.
    pub async fn send_native_many(
        &mut self,
        keys: &[String],
        op: u32,
        body: Bytes,
    ) -> Result<Vec<Acked>, IngestError> {
        if let [key] = keys {
            return Ok(vec![self.send_native(key, op, body).await?]);
        }
        // Metadata unavailable right now: one record at a time, each with
        // `send`'s retries (which refresh it).
        let n = self.partition_count().await.unwrap_or(0);
        if n == 0 {
            let mut acks = Vec::with_capacity(keys.len());
            for key in keys {
                acks.push(self.send_native(key, op, body.clone()).await?);
            }
            return Ok(acks);
        }
        let mut groups: BTreeMap<u32, (&str, Vec<OutRecord>)> = BTreeMap::new();
        for key in keys {
            groups
                .entry(partition_for(key.as_bytes(), n))
                .or_insert_with(|| (key.as_str(), Vec::new()))
                .1
                .push(OutRecord::native(key, op, body.clone()));
        }
        let mut acks = Vec::with_capacity(keys.len());
        for (first_key, records) in groups.values() {
            let a = self.send(first_key.as_bytes(), records).await?;
            // A batch's records get consecutive offsets from its base offset
            // (-1 throughout with acks = 0).
            acks.extend((0..records.len() as i64).map(|i| Acked {
                partition: a.partition,
                offset: if a.offset < 0 { a.offset } else { a.offset + i },
            }));
        }
        Ok(acks)
    }

    /// Partitions of the topic (reads metadata when not known yet).
    async fn partition_count(&mut self) -> Result<u32, IngestError> {
        if self.leaders.is_empty() {
            self.refresh().await?;
        }
        Ok(self.leaders.len() as u32)
    }

    /// Produces `records` as one batch to the partition of `key`.
    pub async fn send(&mut self, key: &[u8], records: &[OutRecord]) -> Result<Acked, IngestError> {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_send(key, records).await {
                Ok(a) => return Ok(a),
                Err(e) if attempt < ATTEMPTS => {
                    let d = backoff.next_delay();
                    tracing::warn!(error = %e, attempt, retry_in_ms = d.as_millis() as u64, "kafka produce failed; retrying");
                    self.leaders.clear();
                    self.conns.clear();
                    glommio::timer::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_send(&mut self, key: &[u8], records: &[OutRecord]) -> Result<Acked, IngestError> {
        if self.leaders.is_empty() {
            self.refresh().await?;
        }
        let partition = partition_for(key, self.leaders.len() as u32) as i32;
        let addr = self
            .leaders
            .get(&partition)
            .cloned()
            .ok_or(IngestError::NoLeader {
                partition,
                reason: "not in metadata".into(),
            })?;
        if !self.conns.contains_key(&addr) {
            let c =
                BrokerConn::connect(&addr, &self.cfg.client_id, self.cfg.request_timeout()).await?;
            self.conns.insert(addr.clone(), c);
        }
        let conn = self.conns.get_mut(&addr).expect("inserted above");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let batch = encode_batch(records, self.compression, now)
            .map_err(|_| IngestError::Protocol("record batch encoding failed"))?;
        let mut pd = PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(batch);
        let mut td = self.topic.clone();
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = self.cfg.acks;
        req.timeout_ms = self.cfg.produce_timeout_ms;
        req.topic_data = vec![td];
        if self.cfg.acks == 0 {
            // No response comes for acks = 0.
            conn.send(&req).await?;
            conn.forget_last();
            return Ok(Acked {
                partition,
                offset: -1,
            });
        }
        let wait = self.cfg.request_timeout()
            + Duration::from_millis(self.cfg.produce_timeout_ms.max(0) as u64);
        let resp = conn.call(&req, wait).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or(IngestError::Protocol("empty produce response"))?;
        if p.error_code != 0 {
            return Err(IngestError::Broker {
                what: "Produce",
                code: p.error_code,
            });
        }
        Ok(Acked {
            partition,
            offset: p.base_offset,
        })
    }

    async fn refresh(&mut self) -> Result<(), IngestError> {
        let mut conn = bootstrap(&self.cfg, &mut self.bootstrap_idx).await?;
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(self.cfg.topic.clone())));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = true;
        let md = conn.call(&req, self.cfg.request_timeout()).await?;
        let brokers: BTreeMap<i32, String> = md
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let topic = md
            .topics
            .first()
            .ok_or_else(|| IngestError::NoTopic(self.cfg.topic.clone()))?;
        if topic.error_code != 0 {
            return Err(IngestError::Broker {
                what: "Metadata",
                code: topic.error_code,
            });
        }
        self.topic = TopicProduceData::default();
        self.topic.name = TopicName(StrBytes::from_string(self.cfg.topic.clone()));
        self.topic.topic_id = topic.topic_id;
        self.leaders.clear();
        for p in &topic.partitions {
            if let Some(a) = brokers.get(&p.leader_id.0) {
                self.leaders.insert(p.partition_index, a.clone());
            }
        }
        if self.leaders.len() != topic.partitions.len() || self.leaders.is_empty() {
            self.leaders.clear();
            return Err(IngestError::NoLeader {
                partition: -1,
                reason: "some partitions have no leader".into(),
            });
        }
        Ok(())
    }
}

/// Partition of `key` among `n` partitions (FNV-1a; stable across processes).
pub fn partition_for(key: &[u8], n: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if n == 0 {
        0
    } else {
        h % n
    }
}

#[cfg(test)]
mod tests {
    use super::partition_for;

    #[test]
    fn same_key_same_partition_and_spread() {
        assert_eq!(partition_for(b"room:a", 8), partition_for(b"room:a", 8));
        let used: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| partition_for(format!("room:{i}").as_bytes(), 8))
            .collect();
        assert_eq!(used.len(), 8);
        assert_eq!(partition_for(b"x", 0), 0);
    }
}
