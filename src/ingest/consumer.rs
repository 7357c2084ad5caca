//! The consumer: reads every partition of the push topic from its leader.
//!
//! One *session* = bootstrap connection → Metadata → start offsets for new
//! partitions (ListOffsets) → one fetch task per leader broker. A session
//! ends when any of its fetch tasks fails (connection loss, broker restart,
//! NOT_LEADER, unknown topic, …) or when metadata is due for a refresh; the
//! loop then backs off (doubling, logged) and starts a new session.
//! Offsets live in a table outside the sessions and advance only after a
//! record's push was handed to the sink (records are encoded into batches
//! of up to `FLUSH_AT` pushes, one hand-off each), so a new session resumes at the next
//! undelivered record: nothing the broker still retains is skipped, nothing
//! is delivered twice within a process.
//!
//! Pipelining: as soon as a fetch response arrives, the next fetch (with the
//! offsets after the response's whole batches, read from batch headers only)
//! goes on the wire; the broker serves it while this one is decoded and
//! routed. It is skipped when the response had a partition error.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::batch::{next_offset_after, Batches, Records};
use super::conn::BrokerConn;
use super::route::{Route, Stop, FLUSH_AT};
use super::{Backoff, IngestError, IngestStats, KafkaConfig, PushSink, RateLimit, StartFrom};

/// Kafka error codes the consumer reacts to.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// ListOffsets timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// What the consumer knows of the topic between sessions.
#[derive(Debug, Default)]
struct Table {
    /// Next offset to deliver, per partition (absent = not started yet).
    offsets: BTreeMap<i32, i64>,
    /// Partitions the first session saw. Ones added to the topic later start
    /// from their earliest offset, so records produced before this node
    /// noticed the new partition are not skipped.
    initial: Option<std::collections::BTreeSet<i32>>,
}

/// Runs the consumer until `stop` is set. Never returns early on errors: it
/// logs, backs off and reconnects.
pub async fn run_consumer<S: PushSink + 'static>(
    cfg: KafkaConfig,
    sink: S,
    stats: Rc<IngestStats>,
    stop: Arc<AtomicBool>,
) {
    let table = Rc::new(RefCell::new(Table::default()));
    let sink = Rc::new(sink);
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.backoff_min_ms),
        Duration::from_millis(cfg.backoff_max_ms),
    );
    let mut bootstrap_idx = 0usize;
    while !stop.load(Ordering::Relaxed) {
        match session(&cfg, &table, &sink, &stats, &stop, &mut bootstrap_idx).await {
            Ok(progressed) => {
                if progressed {
                    backoff.reset();
                }
            }
            Err((e, progressed)) => {
                if progressed {
                    backoff.reset();
                }
                stats.reconnects.set(stats.reconnects.get() + 1);
                let delay = backoff.next_delay();
                tracing::warn!(topic = %cfg.topic, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "kafka consumer session ended; reconnecting");
                sleep_unless_stopped(delay, &stop).await;
            }
        }
    }
}

async fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        glommio::timer::sleep((end - now).min(Duration::from_millis(50))).await;
    }
}

/// Partition → leader address, from Metadata.
struct Layout {
    /// Topic name and id (fetch v13+ addresses topics by id), no partitions.
    fetch_topic: FetchTopic,
    leaders: BTreeMap<i32, String>,
}

/// Connects to the first reachable bootstrap broker (rotating).
pub(crate) async fn bootstrap(
    cfg: &KafkaConfig,
    idx: &mut usize,
) -> Result<BrokerConn, IngestError> {
    let mut last = String::from("no brokers configured");
    for _ in 0..cfg.brokers.len() {
        let addr = &cfg.brokers[*idx % cfg.brokers.len()];
        match BrokerConn::connect(addr, &cfg.client_id, cfg.request_timeout()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                last = e.to_string();
                *idx += 1;
            }
        }
    }
    Err(IngestError::NoBroker(last))
}

async fn layout(conn: &mut BrokerConn, cfg: &KafkaConfig) -> Result<Layout, IngestError> {
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(cfg.topic.clone())));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    req.allow_auto_topic_creation = false;
    let md = conn.call(&req, cfg.request_timeout()).await?;
    let brokers: BTreeMap<i32, String> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let topic = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(cfg.topic.as_str()))
        .ok_or_else(|| IngestError::NoTopic(cfg.topic.clone()))?;
    if topic.error_code != 0 {
        return Err(IngestError::Broker {
            what: "Metadata",
            code: topic.error_code,
        });
    }
    if topic.partitions.is_empty() {
        return Err(IngestError::NoTopic(cfg.topic.clone()));
    }
    let mut leaders = BTreeMap::new();
    for p in &topic.partitions {
        let addr = brokers.get(&p.leader_id.0).filter(|_| p.error_code == 0);
        match addr {
            Some(a) => {
                leaders.insert(p.partition_index, a.clone());
            }
            None => {
                return Err(IngestError::NoLeader {
                    partition: p.partition_index,
                    reason: format!("error {} leader {}", p.error_code, p.leader_id.0),
                })
            }
        }
    }
    let mut fetch_topic = FetchTopic::default();
    fetch_topic.topic = TopicName(StrBytes::from_string(cfg.topic.clone()));
    fetch_topic.topic_id = topic.topic_id;
    Ok(Layout {
        fetch_topic,
        leaders,
    })
}

/// One session; `Ok(progressed)` when it ended for a metadata refresh or
/// stop, `Err((error, progressed))` otherwise. `progressed` = some fetch
/// succeeded (resets the backoff).
async fn session<S: PushSink + 'static>(
    cfg: &KafkaConfig,
    table: &Rc<RefCell<Table>>,
    sink: &Rc<S>,
    stats: &Rc<IngestStats>,
    stop: &Arc<AtomicBool>,
    bootstrap_idx: &mut usize,
) -> Result<bool, (IngestError, bool)> {
    let mut conn = bootstrap(cfg, bootstrap_idx)
        .await
        .map_err(|e| (e, false))?;
    let layout = Rc::new(layout(&mut conn, cfg).await.map_err(|e| (e, false))?);
    drop(conn);
    table
        .borrow_mut()
        .initial
        .get_or_insert_with(|| layout.leaders.keys().copied().collect());

    // Group partitions by leader.
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (&p, addr) in &layout.leaders {
        by_leader.entry(addr.clone()).or_default().push(p);
    }
    let session_stop = Rc::new(Cell::new(false));
    let first_error: Rc<RefCell<Option<IngestError>>> = Rc::new(RefCell::new(None));
    let progressed = Rc::new(Cell::new(false));
    let refresh_at = Instant::now() + Duration::from_secs(cfg.metadata_refresh_secs.max(1));
    let mut tasks = Vec::new();
    for (addr, parts) in by_leader {
        let ctx = FetchCtx {
            cfg: cfg.clone(),
            addr,
            parts,
            layout: layout.clone(),
            table: table.clone(),
            sink: sink.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            session_stop: session_stop.clone(),
            refresh_at,
            progressed: progressed.clone(),
            malformed_log: RateLimit::new(Duration::from_secs(1)),
            route: RefCell::new(Route::default()),
        };
        let first_error = first_error.clone();
        tasks.push(glommio::spawn_local(async move {
            if let Err(e) = fetch_leader(&ctx).await {
                ctx.session_stop.set(true);
                first_error.borrow_mut().get_or_insert(e);
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let progressed = progressed.get();
    let error = first_error.borrow_mut().take();
    match error {
        Some(e) => Err((e, progressed)),
        None => Ok(progressed),
    }
}

struct FetchCtx<S> {
    cfg: KafkaConfig,
    addr: String,
    parts: Vec<i32>,
    layout: Rc<Layout>,
    table: Rc<RefCell<Table>>,
    sink: Rc<S>,
    stats: Rc<IngestStats>,
    stop: Arc<AtomicBool>,
    session_stop: Rc<Cell<bool>>,
    refresh_at: Instant,
    progressed: Rc<Cell<bool>>,
    malformed_log: RateLimit,
    route: RefCell<Route>,
}

impl<S> FetchCtx<S> {
    fn should_end(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.session_stop.get()
            || Instant::now() >= self.refresh_at
    }

    fn set_offset(&self, partition: i32, offset: i64) {
        self.table.borrow_mut().offsets.insert(partition, offset);
        self.stats.offsets.borrow_mut().insert(partition, offset);
    }

    fn fetch_request(&self, offsets: &BTreeMap<i32, i64>) -> FetchRequest {
        let partitions = offsets
            .iter()
            .map(|(&p, &o)| {
                let mut fp = FetchPartition::default();
                fp.partition = p;
                fp.current_leader_epoch = -1;
                fp.fetch_offset = o;
                fp.last_fetched_epoch = -1;
                fp.log_start_offset = -1;
                fp.partition_max_bytes = self.cfg.partition_max_bytes;
                fp
            })
            .collect();
        let mut ft = self.layout.fetch_topic.clone();
        ft.partitions = partitions;
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = self.cfg.fetch_max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = self.cfg.fetch_max_bytes;
        req.isolation_level = 0;
        req.session_id = 0;
        req.session_epoch = -1;
        req.topics = vec![ft];
        req
    }

    fn current_offsets(&self) -> BTreeMap<i32, i64> {
        let t = self.table.borrow();
        self.parts
            .iter()
            .filter_map(|p| t.offsets.get(p).map(|&o| (*p, o)))
            .collect()
    }
}

/// Resolves start offsets of this leader's partitions that have none.
async fn resolve_start<S>(ctx: &FetchCtx<S>, conn: &mut BrokerConn) -> Result<(), IngestError> {
    let mut todo = Vec::new();
    for &p in &ctx.parts {
        if ctx.table.borrow().offsets.contains_key(&p) {
            continue;
        }
        if let Some(&o) = ctx.cfg.start_offsets.get(&p) {
            ctx.set_offset(p, o);
            continue;
        }
        let added_later = ctx
            .table
            .borrow()
            .initial
            .as_ref()
            .is_some_and(|i| !i.contains(&p));
        let ts = match ctx.cfg.start {
            _ if added_later => EARLIEST,
            StartFrom::Latest => LATEST,
            StartFrom::Earliest => EARLIEST,
        };
        todo.push((p, ts));
    }
    if todo.is_empty() {
        return Ok(());
    }
    for (p, o) in list_offsets(ctx, conn, &todo).await? {
        tracing::info!(topic = %ctx.cfg.topic, partition = p, offset = o, "kafka partition starts");
        ctx.set_offset(p, o);
    }
    Ok(())
}

async fn list_offsets<S>(
    ctx: &FetchCtx<S>,
    conn: &mut BrokerConn,
    parts: &[(i32, i64)],
) -> Result<Vec<(i32, i64)>, IngestError> {
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(ctx.cfg.topic.clone()));
    t.partitions = parts
        .iter()
        .map(|&(p, ts)| {
            let mut lp = ListOffsetsPartition::default();
            lp.partition_index = p;
            lp.current_leader_epoch = -1;
            lp.timestamp = ts;
            lp
        })
        .collect();
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = 0;
    req.timeout_ms = ctx.cfg.request_timeout_ms as i32;
    req.topics = vec![t];
    let resp = conn.call(&req, ctx.cfg.request_timeout()).await?;
    let mut out = Vec::new();
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(IngestError::Broker {
                    what: "ListOffsets",
                    code: p.error_code,
                });
            }
            out.push((p.partition_index, p.offset));
        }
    }
    if out.len() != parts.len() {
        return Err(IngestError::Protocol(
            "ListOffsets answered other partitions",
        ));
    }
    Ok(out)
}

/// Fetch loop of one leader broker.
async fn fetch_leader<S: PushSink>(ctx: &FetchCtx<S>) -> Result<(), IngestError> {
    let mut conn =
        BrokerConn::connect(&ctx.addr, &ctx.cfg.client_id, ctx.cfg.request_timeout()).await?;
    resolve_start(ctx, &mut conn).await?;
    let wait =
        ctx.cfg.request_timeout() + Duration::from_millis(ctx.cfg.fetch_max_wait_ms.max(0) as u64);
    loop {
        if ctx.should_end() {
            return Ok(());
        }
        if conn.in_flight() == 0 {
            conn.send(&ctx.fetch_request(&ctx.current_offsets()))
                .await?;
        }
        let resp: FetchResponse = conn.recv::<FetchRequest>(wait).await?;
        if resp.error_code != 0 {
            return Err(IngestError::Broker {
                what: "Fetch",
                code: resp.error_code,
            });
        }
        // Pipeline the next fetch before decoding this response.
        if !ctx.should_end() {
            if let Some(next) = pipelined_offsets(&resp, ctx.current_offsets()) {
                conn.send(&ctx.fetch_request(&next)).await?;
            }
        }
        let mut out_of_range = Vec::new();
        for topic in resp.responses {
            for p in topic.partitions {
                match p.error_code {
                    0 => {}
                    OFFSET_OUT_OF_RANGE => {
                        out_of_range.push(p.partition_index);
                        continue;
                    }
                    code => {
                        return Err(IngestError::Broker {
                            what: "Fetch partition",
                            code,
                        })
                    }
                }
                if let Some(records) = p.records {
                    deliver_partition(ctx, p.partition_index, records).await;
                }
            }
        }
        ctx.progressed.set(true);
        if !out_of_range.is_empty() {
            // A pipelined fetch would use the bad offsets again: drain it first.
            while conn.in_flight() > 0 {
                conn.recv::<FetchRequest>(wait).await?;
            }
            reset_out_of_range(ctx, &mut conn, &out_of_range).await?;
        }
    }
}

/// Offsets for the next fetch if this response had no partition errors.
fn pipelined_offsets(
    resp: &FetchResponse,
    mut offsets: BTreeMap<i32, i64>,
) -> Option<BTreeMap<i32, i64>> {
    for t in &resp.responses {
        for p in &t.partitions {
            if p.error_code != 0 {
                return None;
            }
            if let Some(next) = p.records.as_ref().and_then(next_offset_after) {
                let cur = offsets.entry(p.partition_index).or_insert(next);
                *cur = (*cur).max(next);
            }
        }
    }
    Some(offsets)
}

/// OFFSET_OUT_OF_RANGE: below the log start (retention removed records) →
/// earliest; above the log end (truncation after a leader change) → latest.
async fn reset_out_of_range<S>(
    ctx: &FetchCtx<S>,
    conn: &mut BrokerConn,
    parts: &[i32],
) -> Result<(), IngestError> {
    let earliest = list_offsets(
        ctx,
        conn,
        &parts.iter().map(|&p| (p, EARLIEST)).collect::<Vec<_>>(),
    )
    .await?;
    let latest = list_offsets(
        ctx,
        conn,
        &parts.iter().map(|&p| (p, LATEST)).collect::<Vec<_>>(),
    )
    .await?;
    for (&(p, first), &(_, end)) in earliest.iter().zip(latest.iter()) {
        let cur = ctx.table.borrow().offsets.get(&p).copied().unwrap_or(first);
        let to = if cur < first {
            first
        } else {
            end.min(cur.max(first))
        };
        tracing::warn!(topic = %ctx.cfg.topic, partition = p, offset = cur, log_start = first, log_end = end,
            reset_to = to, "kafka offset out of range; resetting");
        ctx.set_offset(p, to);
    }
    Ok(())
}

/// Decodes one partition's records into batches of encoded pushes and hands
/// each to the sink; the partition's offset advances after each hand-off
/// (past the records the batch holds and any skipped before them).
async fn deliver_partition<S: PushSink>(ctx: &FetchCtx<S>, partition: i32, records: Bytes) {
    let Some(mut cur) = ctx.table.borrow().offsets.get(&partition).copied() else {
        return;
    };
    for batch in Batches::new(records) {
        let batch = match batch {
            Ok(b) => b,
            Err(skipped) => {
                count_bad_batch(ctx, partition, skipped.base_offset, &skipped.error);
                cur = cur.max(skipped.base_offset + 1);
                continue;
            }
        };
        let last = batch.header.last_offset();
        if last < cur {
            continue;
        }
        if !batch.header.is_control() {
            match batch.verify_crc().and_then(|()| batch.records()) {
                Err(e) => count_bad_batch(ctx, partition, batch.header.base_offset, &e),
                Ok(mut recs) => loop {
                    let more = encode_records(
                        ctx,
                        partition,
                        batch.header.base_offset,
                        &mut recs,
                        &mut cur,
                    );
                    if !more {
                        break;
                    }
                    flush(ctx, partition, cur).await;
                },
            }
        }
        cur = cur.max(last + 1);
    }
    flush(ctx, partition, cur).await;
}

/// Encodes records into the pending batch until it is full (`true`: call
/// again after a flush) or the batch's records end (`false`).
fn encode_records<S>(
    ctx: &FetchCtx<S>,
    partition: i32,
    base_offset: i64,
    recs: &mut Records,
    cur: &mut i64,
) -> bool {
    let stop = ctx
        .route
        .borrow_mut()
        .encode(ctx.cfg.format, recs, cur, FLUSH_AT, |offset, e| {
            ctx.stats.malformed.set(ctx.stats.malformed.get() + 1);
            if let Some(held) = ctx.malformed_log.allow() {
                tracing::warn!(topic = %ctx.cfg.topic, partition, offset,
                    error = %e, similar_since_last = held, "malformed kafka record skipped");
            }
        });
    match stop {
        Stop::Full => true,
        Stop::End => false,
        Stop::Bad(e) => {
            count_bad_batch(ctx, partition, base_offset, &e);
            false
        }
    }
}

/// Hands the pending batch (if any) to the sink, then records `cur` as the
/// partition's next offset.
async fn flush<S: PushSink>(ctx: &FetchCtx<S>, partition: i32, cur: i64) {
    let batch = {
        let mut route = ctx.route.borrow_mut();
        (!route.builder.is_empty()).then(|| route.builder.finish())
    };
    if let Some(batch) = batch {
        let n = batch.len() as u64;
        ctx.sink.deliver_batch(batch).await;
        ctx.stats.records.set(ctx.stats.records.get() + n);
    }
    ctx.set_offset(partition, cur);
}

fn count_bad_batch<S>(
    ctx: &FetchCtx<S>,
    partition: i32,
    base_offset: i64,
    e: &dyn std::fmt::Display,
) {
    ctx.stats.bad_batches.set(ctx.stats.bad_batches.get() + 1);
    if let Some(held) = ctx.malformed_log.allow() {
        tracing::warn!(topic = %ctx.cfg.topic, partition, base_offset, error = %e,
            similar_since_last = held, "kafka record batch skipped");
    }
}

#[cfg(test)]
mod tests;
