//! HTTP pushes through Kafka (design §4): with Kafka configured, a push is
//! produced as native records and answered after the broker's ack; clients
//! get it from this node's consumer like from every other node's.
//!
//! Producers are pooled rather than shared: a push takes an idle producer
//! (or makes one) and owns it while it waits for the ack, so concurrent
//! pushes do not queue behind each other, and a push abandoned at its
//! deadline drops its producer with whatever request was half done on its
//! connection (no stale response can reach the next push).

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use crate::fanout::PushTarget;
use crate::ingest::producer::Acked;
use crate::ingest::{KafkaConfig, Producer};

/// Idle producers kept for the next pushes; more are made under load and
/// dropped when they come back to a full pool.
const MAX_IDLE: usize = 8;

/// Why a push was not acknowledged by Kafka.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka produce failed: {0}")]
    Failed(String),
    #[error("kafka produce not acknowledged within {0:?}")]
    Timeout(Duration),
}

/// The Kafka end of the HTTP push API (one per control executor).
pub struct KafkaPush {
    cfg: KafkaConfig,
    idle: RefCell<Vec<Producer>>,
    /// Bound on one push, retries included: a connect/request timeout plus
    /// the broker-side produce timeout.
    deadline: Duration,
    /// Records acknowledged, by target kind (`state::PUSH_KINDS` order).
    pub acked: [Cell<u64>; 4],
    pub failed: Cell<u64>,
    pub timed_out: Cell<u64>,
    pub in_flight: Cell<u64>,
}

/// Record keys of a push target (design §4 `native` format): one record per
/// key or mid, one for a room or `all`.
pub fn record_keys(target: &PushTarget) -> Vec<String> {
    match target {
        PushTarget::Room(room) => vec![format!("room:{room}")],
        PushTarget::Keys(keys) => keys.iter().map(|k| format!("conn:{k}")).collect(),
        PushTarget::Mids(mids) => mids.iter().map(|m| format!("user:{m}")).collect(),
        PushTarget::All => vec!["all".to_owned()],
    }
}

impl KafkaPush {
    pub fn new(cfg: KafkaConfig) -> KafkaPush {
        let deadline = cfg.request_timeout()
            + Duration::from_millis(u64::try_from(cfg.produce_timeout_ms).unwrap_or(0));
        KafkaPush {
            cfg,
            idle: RefCell::new(Vec::new()),
            deadline,
            acked: Default::default(),
            failed: Cell::new(0),
            timed_out: Cell::new(0),
            in_flight: Cell::new(0),
        }
    }

    /// Produces `body` with `op` to every record key of `target` and waits for
    /// the acks (bounded by the deadline).
    pub async fn push(
        &self,
        target: &PushTarget,
        kind: usize,
        op: u32,
        body: Bytes,
    ) -> Result<Vec<Acked>, ProduceError> {
        let keys = record_keys(target);
        let mut producer = self
            .idle
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Producer::new(self.cfg.clone()));
        self.in_flight.set(self.in_flight.get() + 1);
        let send = async {
            Some(
                producer
                    .send_native_many(&keys, op, body)
                    .await
                    .map_err(|e| e.to_string()),
            )
        };
        let timer = async {
            glommio::timer::sleep(self.deadline).await;
            None
        };
        let outcome = futures_lite::future::or(send, timer).await;
        self.in_flight.set(self.in_flight.get() - 1);
        match outcome {
            Some(Ok(acks)) => {
                self.acked[kind].set(self.acked[kind].get() + acks.len() as u64);
                let mut idle = self.idle.borrow_mut();
                if idle.len() < MAX_IDLE {
                    idle.push(producer);
                }
                Ok(acks)
            }
            // A failed producer is dropped: the next push starts afresh
            // (bootstrap, metadata, new connections).
            Some(Err(e)) => {
                self.failed.set(self.failed.get() + 1);
                Err(ProduceError::Failed(e))
            }
            None => {
                self.timed_out.set(self.timed_out.get() + 1);
                Err(ProduceError::Timeout(self.deadline))
            }
        }
    }

    /// Appends the produce counters in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let topic = &self.cfg.topic;
        let name = "corecast_kafka_produced_records_total";
        let _ = writeln!(
            out,
            "# HELP {name} Records of HTTP pushes acknowledged by Kafka, by target kind.\n# TYPE {name} counter"
        );
        for (kind, n) in super::state::PUSH_KINDS.iter().zip(&self.acked) {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{topic}\",target=\"{kind}\"}} {}",
                n.get()
            );
        }
        for (name, help, v) in [
            (
                "corecast_kafka_produce_failures_total",
                "HTTP pushes whose Kafka produce failed (answered 503).",
                self.failed.get(),
            ),
            (
                "corecast_kafka_produce_timeouts_total",
                "HTTP pushes not acknowledged by Kafka within the deadline (answered 503).",
                self.timed_out.get(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{topic=\"{topic}\"}} {v}"
            );
        }
        let name = "corecast_kafka_produce_in_flight";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP pushes waiting for Kafka's ack.\n# TYPE {name} gauge\n{name}{{topic=\"{topic}\"}} {}",
            self.in_flight.get()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn native_record_keys_per_target() {
        assert_eq!(
            record_keys(&PushTarget::Room(Arc::from("live://1"))),
            vec!["room:live://1"]
        );
        let keys: Vec<Box<str>> = vec!["a".into(), "b".into()];
        assert_eq!(
            record_keys(&PushTarget::Keys(Arc::from(keys))),
            vec!["conn:a", "conn:b"]
        );
        assert_eq!(
            record_keys(&PushTarget::Mids(Arc::from(vec![7i64, -1]))),
            vec!["user:7", "user:-1"]
        );
        assert_eq!(record_keys(&PushTarget::All), vec!["all"]);
    }

    #[test]
    fn counters_render_as_prometheus_text() {
        let p = KafkaPush::new(KafkaConfig {
            topic: "push".into(),
            ..KafkaConfig::default()
        });
        p.acked[0].set(2);
        p.failed.set(1);
        let mut out = String::new();
        p.render_prometheus(&mut out);
        assert!(out
            .contains("corecast_kafka_produced_records_total{topic=\"push\",target=\"room\"} 2\n"));
        assert!(out.contains("corecast_kafka_produce_failures_total{topic=\"push\"} 1\n"));
    }
}
