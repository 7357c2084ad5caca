//! State of the control executor: the producer end of every shard's ring,
//! the latest report of every shard, the control-side counters, and the
//! push dispatcher that Kafka ingest shares with the HTTP API.
//!
//! Everything here lives on the one control thread (`Rc`, `RefCell`): the
//! only cross-thread objects are the SPSC rings inside each `ShardLink`.
//! No `RefCell` borrow is ever held across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fanout::{
    Push, PushBatch, PushTarget, RoomCounts, SendError, ShardLink, ShardMsg, ShardReport,
};

use super::api::RoomTotals;
use super::produce::KafkaPush;
use super::ControlConfig;
use crate::ingest::IngestStats;

/// Counters kept by the control core itself (shards report their own).
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// HTTP requests answered, by route label (or `other`) and status.
    pub http_requests: ahash::AHashMap<(&'static str, u16), u64>,
    pub http_conns_accepted: u64,
    /// Connections closed right after accept because `max_http_conns` were open.
    pub http_conns_rejected: u64,
    pub http_conns_open: u64,
    /// Pushes accepted for dispatch, by target kind (`PUSH_KINDS` order).
    pub pushes: [u64; 4],
    /// Message bytes accepted for dispatch.
    pub push_body_bytes: u64,
    /// Per shard: times a push found the ring full and had to wait.
    pub ring_full_waits: Vec<u64>,
    /// Per shard: pushes not delivered because the ring stayed full past
    /// `push_timeout` (reported to the caller as an error).
    pub push_timeouts: Vec<u64>,
    /// Per shard: `push_timeout` periods a Kafka batch spent waiting on a
    /// full ring (backpressure: it is held, not dropped).
    pub ring_blocked_waits: Vec<u64>,
    /// Per shard: pushes not delivered because the shard had stopped.
    pub push_closed: Vec<u64>,
    /// Per shard: reports received.
    pub reports_received: Vec<u64>,
    /// Node-wide room-count snapshots sent to shards / skipped on a full ring.
    pub room_counts_sent: u64,
    pub room_counts_skipped: u64,
    /// `/goim/push/all?speed=` deliveries still being paced.
    pub paced_in_flight: u64,
}

/// Target kinds in the order of [`ControlCounters::pushes`].
pub const PUSH_KINDS: [&str; 4] = ["room", "keys", "mids", "all"];

pub(crate) fn kind_index(t: &PushTarget) -> usize {
    match t {
        PushTarget::Room(_) => 0,
        PushTarget::Keys(_) => 1,
        PushTarget::Mids(_) => 2,
        PushTarget::All => 3,
    }
}

/// A push that did not reach every shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("push not delivered to shard(s) {shards:?}: {reason}")]
pub struct DispatchError {
    pub shards: Vec<usize>,
    pub reason: &'static str,
}

/// Latest report of one shard and when it arrived.
pub struct ShardState {
    pub report: Option<Box<ShardReport>>,
    pub received_at: Option<Instant>,
}

/// Shared state of the control executor (one per process).
pub struct ControlState {
    pub cfg: ControlConfig,
    links: RefCell<Vec<ShardLink>>,
    shards: RefCell<Vec<ShardState>>,
    rooms: RefCell<RoomTotals>,
    pub counters: RefCell<ControlCounters>,
    /// Set once shutdown was requested: pushes are refused from then on.
    pub stopping: Cell<bool>,
    pub started: Instant,
    /// Set when Kafka is configured: HTTP pushes are produced there.
    pub produce: Option<KafkaPush>,
    /// The Kafka consumer's counters and its topic, once it started.
    pub ingest: RefCell<Option<(String, Rc<IngestStats>)>>,
}

impl ControlState {
    pub fn new(cfg: ControlConfig, links: Vec<ShardLink>) -> Rc<Self> {
        let n = links.len();
        let counters = ControlCounters {
            ring_full_waits: vec![0; n],
            push_timeouts: vec![0; n],
            ring_blocked_waits: vec![0; n],
            push_closed: vec![0; n],
            reports_received: vec![0; n],
            ..Default::default()
        };
        let produce = cfg.kafka_produce.clone().map(KafkaPush::new);
        Rc::new(Self {
            cfg,
            links: RefCell::new(links),
            shards: RefCell::new(
                (0..n)
                    .map(|_| ShardState {
                        report: None,
                        received_at: None,
                    })
                    .collect(),
            ),
            rooms: RefCell::new(RoomTotals::default()),
            counters: RefCell::new(counters),
            stopping: Cell::new(false),
            started: Instant::now(),
            produce,
            ingest: RefCell::new(None),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.links.borrow().len()
    }

    /// Runs `f` over the latest shard states.
    pub fn with_shards<R>(&self, f: impl FnOnce(&[ShardState]) -> R) -> R {
        f(&self.shards.borrow())
    }

    /// Runs `f` over the node-wide room totals.
    pub fn with_rooms<R>(&self, f: impl FnOnce(&RoomTotals) -> R) -> R {
        f(&self.rooms.borrow())
    }

    /// Ring occupancy and capacity of every shard, and whether it stopped.
    pub fn ring_levels(&self) -> Vec<(usize, usize, bool)> {
        self.links
            .borrow()
            .iter()
            .map(|l| (l.queued(), l.capacity(), l.is_closed()))
            .collect()
    }

    /// Authenticated connections on the node (latest reports).
    pub fn total_conns(&self) -> u64 {
        self.shards
            .borrow()
            .iter()
            .filter_map(|s| s.report.as_ref())
            .map(|r| u64::from(r.conns_ws) + u64::from(r.conns_tcp))
            .sum()
    }

    fn shard_conns(&self, shard: usize) -> u64 {
        self.shards.borrow()[shard]
            .report
            .as_ref()
            .map_or(0, |r| u64::from(r.conns_ws) + u64::from(r.conns_tcp))
    }

    /// Drains every report ring, keeping the newest report of each shard.
    /// Returns whether anything arrived.
    pub fn drain_reports(&self) -> bool {
        let mut links = self.links.borrow_mut();
        let mut shards = self.shards.borrow_mut();
        let mut counters = self.counters.borrow_mut();
        let mut any = false;
        for (i, link) in links.iter_mut().enumerate() {
            while let Some(r) = link.try_recv_report() {
                counters.reports_received[i] += 1;
                shards[i].report = Some(r);
                shards[i].received_at = Some(Instant::now());
                any = true;
            }
        }
        any
    }

    /// Recomputes the node-wide room totals from the latest reports. Returns
    /// whether they changed.
    pub fn merge_rooms(&self) -> bool {
        let mut merged = RoomTotals::default();
        for s in self.shards.borrow().iter() {
            if let Some(r) = &s.report {
                for (room, n) in &r.rooms {
                    *merged.entry(room.clone()).or_insert(0) += u64::from(*n);
                }
            }
        }
        merged.retain(|_, n| *n > 0);
        let mut rooms = self.rooms.borrow_mut();
        if *rooms == merged {
            return false;
        }
        *rooms = merged;
        true
    }

    /// Sends the node-wide room totals to every shard (heartbeat replies carry
    /// the node's count of the room). A snapshot finding a full ring is
    /// skipped: the next change sends a fresh one.
    pub fn broadcast_room_counts(&self) {
        let snapshot = Arc::new(RoomCounts {
            rooms: self
                .rooms
                .borrow()
                .iter()
                .map(|(k, &n)| (k.clone(), u32::try_from(n).unwrap_or(u32::MAX)))
                .collect(),
        });
        let mut links = self.links.borrow_mut();
        let mut counters = self.counters.borrow_mut();
        for link in links.iter_mut() {
            match link.try_send(ShardMsg::RoomCounts(snapshot.clone())) {
                Ok(()) => counters.room_counts_sent += 1,
                Err(_) => counters.room_counts_skipped += 1,
            }
        }
    }

    /// One attempt to queue `msg` for `shard`.
    fn try_send(&self, shard: usize, msg: ShardMsg) -> Result<(), SendError> {
        self.links.borrow_mut()[shard].try_send(msg)
    }

    /// Queues `msg` for `shard`, waiting (bounded by `push_timeout`) while
    /// its ring is full. Other tasks of the executor run while it waits.
    async fn send_to(&self, shard: usize, msg: ShardMsg) -> Result<(), &'static str> {
        self.send_to_within(shard, msg, Some(self.cfg.push_timeout))
            .await
    }

    /// Queues `msg` for `shard`, waiting while its ring is full: at most
    /// `timeout`, or with `None` until the ring takes it or shutdown
    /// (backpressure: a blocked wait is logged every `push_timeout` and
    /// counted in `ring_blocked_waits`).
    async fn send_to_within(
        &self,
        shard: usize,
        msg: ShardMsg,
        timeout: Option<Duration>,
    ) -> Result<(), &'static str> {
        let mut msg = msg;
        let mut deadline: Option<Instant> = None;
        let mut backoff = Duration::from_micros(20);
        loop {
            match self.try_send(shard, msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(_)) => {
                    self.counters.borrow_mut().push_closed[shard] += 1;
                    return Err("shard stopped");
                }
                Err(SendError::Full(m)) => {
                    if timeout.is_none() && self.stopping.get() {
                        return Err("server is shutting down");
                    }
                    let now = Instant::now();
                    let period = timeout.unwrap_or(self.cfg.push_timeout);
                    let due = *deadline.get_or_insert_with(|| {
                        self.counters.borrow_mut().ring_full_waits[shard] += 1;
                        now + period
                    });
                    if now >= due {
                        if timeout.is_some() {
                            self.counters.borrow_mut().push_timeouts[shard] += 1;
                            return Err("shard ring full past push timeout");
                        }
                        self.counters.borrow_mut().ring_blocked_waits[shard] += 1;
                        tracing::warn!(
                            shard,
                            "shard ring still full: holding the Kafka batch (backpressure)"
                        );
                        deadline = Some(now + period);
                    }
                    msg = m;
                }
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(1));
        }
    }

    fn count_push(&self, push: &Push) {
        let mut c = self.counters.borrow_mut();
        c.pushes[kind_index(&push.target)] += 1;
        c.push_body_bytes += (push.packet.len() - crate::fanout::PACKET_HEADER_LEN) as u64;
    }

    /// Hands `push` (already encoded once) to every shard, in shard order.
    /// Rooms, keys, mids and `all` all go to every shard: control keeps no
    /// index of who is where; a shard without a match drops it cheaply.
    ///
    /// Returns after every ring accepted it, or with the shards that could
    /// not take it (each counted in metrics).
    pub async fn dispatch(&self, push: Push) -> Result<(), DispatchError> {
        if self.stopping.get() {
            return Err(DispatchError {
                shards: (0..self.shard_count()).collect(),
                reason: "server is shutting down",
            });
        }
        self.count_push(&push);
        self.send_to_every_shard(|| ShardMsg::Push(push.clone()))
            .await
    }

    /// Hands a batch of pushes (Kafka ingest) to every shard as one ring item
    /// per shard. Unlike [`dispatch`](Self::dispatch) a full ring is waited
    /// out however long it stays full (the consumer stops fetching, so the
    /// offset does not move past undelivered records); each shard gets the
    /// batch once. Only shutdown (or a stopped shard) ends the wait early.
    pub async fn dispatch_batch(&self, batch: PushBatch) -> Result<(), DispatchError> {
        if self.stopping.get() {
            return Err(DispatchError {
                shards: (0..self.shard_count()).collect(),
                reason: "server is shutting down",
            });
        }
        {
            let mut c = self.counters.borrow_mut();
            for p in batch.iter() {
                c.pushes[kind_index(&p.target)] += 1;
                c.push_body_bytes += (p.packet.len() - crate::fanout::PACKET_HEADER_LEN) as u64;
            }
        }
        self.send_to_every_shard_within(|| ShardMsg::Pushes(batch.clone()), None)
            .await
    }

    /// One ring item per shard; the shards whose ring refused it are
    /// returned with the last reason.
    async fn send_to_every_shard(&self, msg: impl Fn() -> ShardMsg) -> Result<(), DispatchError> {
        self.send_to_every_shard_within(msg, Some(self.cfg.push_timeout))
            .await
    }

    /// [`send_to_every_shard`](Self::send_to_every_shard) with each shard's
    /// wait bounded by `timeout` (`None`: until shutdown). Shards are served
    /// in order and each one once, so a retried wait never resends to a
    /// shard that already took the item.
    async fn send_to_every_shard_within(
        &self,
        msg: impl Fn() -> ShardMsg,
        timeout: Option<Duration>,
    ) -> Result<(), DispatchError> {
        let mut failed = Vec::new();
        let mut reason = "";
        for shard in 0..self.shard_count() {
            if let Err(e) = self.send_to_within(shard, msg(), timeout).await {
                failed.push(shard);
                reason = e;
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(DispatchError {
                shards: failed,
                reason,
            })
        }
    }

    /// goim's `speed` for broadcasts: after handing the message to a shard,
    /// wait as long as delivering to that shard's connections takes at
    /// `speed` messages per second, then go on to the next shard.
    pub async fn dispatch_paced(self: Rc<Self>, push: Push, speed: u32) {
        self.count_push(&push);
        self.counters.borrow_mut().paced_in_flight += 1;
        let n = self.shard_count();
        for shard in 0..n {
            if self.stopping.get() {
                break;
            }
            if let Err(e) = self.send_to(shard, ShardMsg::Push(push.clone())).await {
                tracing::warn!(shard, error = e, "paced broadcast not delivered to shard");
                continue;
            }
            let conns = self.shard_conns(shard);
            if shard + 1 < n && conns > 0 && speed > 0 {
                glommio::timer::sleep(Duration::from_secs_f64(conns as f64 / f64::from(speed)))
                    .await;
            }
        }
        self.counters.borrow_mut().paced_in_flight -= 1;
    }

    /// Whether every shard thread has ended.
    pub fn all_shards_closed(&self) -> bool {
        self.links.borrow().iter().all(|l| l.is_closed())
    }
}

/// Handle given to producers of pushes on the control executor (the HTTP
/// API and Kafka ingest): cloneable, `!Send`, valid only on that executor.
#[derive(Clone)]
pub struct Dispatcher {
    state: Rc<ControlState>,
}

impl Dispatcher {
    pub(crate) fn new(state: Rc<ControlState>) -> Self {
        Self { state }
    }

    /// Encodes `body` once and queues it for every shard; waits (bounded)
    /// while a ring is full. See [`ControlState::dispatch`].
    pub async fn push(
        &self,
        target: PushTarget,
        op: u32,
        body: &[u8],
    ) -> Result<(), DispatchError> {
        self.state.dispatch(Push::new(target, op, body)).await
    }

    /// Queues an already encoded push for every shard.
    pub async fn dispatch(&self, push: Push) -> Result<(), DispatchError> {
        self.state.dispatch(push).await
    }

    /// Queues a batch of encoded pushes for every shard (one ring item each).
    pub async fn dispatch_batch(&self, batch: PushBatch) -> Result<(), DispatchError> {
        self.state.dispatch_batch(batch).await
    }

    /// Number of shards fed.
    pub fn shard_count(&self) -> usize {
        self.state.shard_count()
    }

    /// Shows the Kafka consumer's counters and offsets in `/metrics`.
    pub fn attach_ingest_stats(&self, topic: String, stats: Rc<IngestStats>) {
        *self.state.ingest.borrow_mut() = Some((topic, stats));
    }
}
