//! Push-driven scenarios (`broadcast`, `unicast`, `slow`): connect clients,
//! push stamped messages through the HTTP API at a fixed rate from pusher
//! threads, sample delivery once per interval, and reconcile what arrived with
//! what was pushed.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use serde::Serialize;

use super::Progress;
use crate::engine::stats::{Percentiles, Totals};
use crate::engine::uring::{mono_ns, pin_to_cpu};
use crate::engine::{stamp, ClientPlan, Engine, Transport};
use crate::http::{check_goim_reply, HttpClient};
use crate::kafka::{OutRecord, Producer};

/// Who a push goes to.
#[derive(Clone, Debug)]
pub enum Targets {
    /// `/goim/push/room?type=<room_type>&room=<n>` for n in 0..rooms.
    Rooms { rooms: u64, room_type: String },
    /// `/goim/push/mids?mids=<mid>` for each mid.
    Mids { first: i64, count: u64 },
}

impl Targets {
    fn count(&self) -> u64 {
        match self {
            Targets::Rooms { rooms, .. } => *rooms,
            Targets::Mids { count, .. } => *count,
        }
    }

    /// The native Kafka record key of target `i`.
    fn kafka_key(&self, i: u64) -> String {
        match self {
            Targets::Rooms { room_type, .. } => format!("room:{room_type}://{i}"),
            Targets::Mids { first, .. } => format!("user:{}", first + i as i64),
        }
    }

    fn path(&self, i: u64, op: u32) -> String {
        match self {
            Targets::Rooms { room_type, .. } => {
                format!("/goim/push/room?operation={op}&type={room_type}&room={i}")
            }
            Targets::Mids { first, .. } => {
                format!("/goim/push/mids?operation={op}&mids={}", first + i as i64)
            }
        }
    }
}

/// How pushes reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
pub enum Via {
    /// goim's HTTP push API, one push per request (keep-alive).
    Http,
    /// Native records produced to the Kafka topic the server consumes.
    Kafka,
}

/// Flags choosing the push path (shared by `broadcast` and `unicast`).
#[derive(Clone, Debug, clap::Args)]
pub struct ViaArgs {
    /// Push through the HTTP API or produce to Kafka (the server must consume
    /// the same topic: `corecast serve --kafka-brokers .. --kafka-topic ..`).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    pub via: Via,
    /// Kafka bootstrap brokers (host:port, comma separated) for `--via kafka`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Kafka topic for `--via kafka` (created with the broker's defaults if
    /// the broker auto-creates topics).
    #[arg(long, default_value = "corecast-push")]
    pub topic: String,
    /// Produce acks (-1 = all, 1 = leader, 0 = none).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
    /// HTTP: pushes written back to back on a pusher's connection before
    /// reading their replies (HTTP/1.1 pipelining; 1 = one at a time). Pushes
    /// due at the same moment go together, so under load one wake-up of the
    /// server's control core takes many.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Most records in one produce request.
    #[arg(long, default_value_t = 500)]
    pub max_batch: usize,
    /// Kafka producer linger: records due are gathered for this long (or
    /// until `max_batch`) before a produce request. Every record is stamped
    /// with the time it was due, so the linger is inside the measured latency.
    #[arg(long, default_value_t = 1000)]
    pub linger_us: u64,
}

impl ViaArgs {
    /// The HTTP API (what `bench` uses).
    pub fn http() -> Self {
        Self {
            via: Via::Http,
            brokers: "127.0.0.1:9092".into(),
            topic: "corecast-push".into(),
            acks: -1,
            pipeline: 1,
            max_batch: 500,
            linger_us: 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PushPlan {
    pub via: ViaArgs,
    pub http: SocketAddrV4,
    pub targets: Targets,
    /// Pushes per second over all targets (spread round-robin).
    pub total_rate: f64,
    pub msg_size: usize,
    pub duration: Duration,
    pub threads: usize,
    pub op: u32,
    pub cpu: Option<usize>,
}

/// One interval of the time series.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds since the first push.
    pub t: f64,
    pub pushes_per_sec: f64,
    pub msgs_per_sec: f64,
    pub frames_per_sec: f64,
    pub bytes_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct PushReport {
    pub scenario: String,
    pub transport: Option<Transport>,
    pub conns: u64,
    /// Members per room (0 for unicast).
    pub room_size: u64,
    pub targets: u64,
    pub msg_size: usize,
    pub push_secs: f64,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
    /// Achieved pushes per second.
    pub push_rate: f64,
    /// Messages the reading clients should receive (pushes × reading members).
    pub expected: u64,
    pub received: u64,
    /// expected − received.
    pub missing: u64,
    /// Messages missing by sequence gaps.
    pub gap_lost: u64,
    pub out_of_order: u64,
    /// First push → last delivery.
    pub delivery_secs: f64,
    pub msgs_per_sec: f64,
    pub frames_per_sec: f64,
    pub bytes_per_sec: f64,
    pub latency: Percentiles,
    /// Authenticated clients the server closed during the run.
    pub closed_by_server: u64,
    pub connect_secs: f64,
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

struct PusherResult {
    /// Successful pushes per target index (for this thread's targets).
    ok_per_target: Vec<(u64, u64)>,
    failed: u64,
    first_error: Option<String>,
}

fn pusher(
    plan: Arc<PushPlan>,
    thread: usize,
    ok_total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> PusherResult {
    if let Some(cpu) = plan.cpu {
        pin_to_cpu(cpu);
    }
    let mine: Vec<u64> = (thread as u64..plan.targets.count())
        .step_by(plan.threads)
        .collect();
    let mut ok = vec![0u64; mine.len()];
    let mut seq = vec![0u64; mine.len()];
    let mut res = PusherResult {
        ok_per_target: Vec::new(),
        failed: 0,
        first_error: None,
    };
    if mine.is_empty() {
        return res;
    }
    let rate = plan.total_rate * mine.len() as f64 / plan.targets.count() as f64;
    if plan.via.via == Via::Kafka {
        kafka_pusher(
            &plan, &mine, rate, &ok_total, &stop, &mut ok, &mut seq, &mut res,
        );
        res.ok_per_target = mine.into_iter().zip(ok).collect();
        return res;
    }
    let mut http = HttpClient::new(plan.http);
    let paths: Vec<String> = mine
        .iter()
        .map(|&i| plan.targets.path(i, plan.op))
        .collect();
    let mut replies = Vec::new();
    let t0 = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let el = t0.elapsed();
        if el >= plan.duration {
            break;
        }
        let due = (el.as_secs_f64() * rate) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        if plan.via.pipeline > 1 {
            let n = (due - sent).min(plan.via.pipeline as u64) as usize;
            let mut batch = Vec::with_capacity(n);
            for _ in 0..n {
                let k = (sent % mine.len() as u64) as usize;
                sent += 1;
                seq[k] += 1;
                batch.push((k, stamp::encode(seq[k], mono_ns(), plan.msg_size)));
            }
            let reqs: Vec<(&str, &[u8])> = batch
                .iter()
                .map(|(k, b)| (paths[*k].as_str(), b.as_slice()))
                .collect();
            let (answered, err) = match http.post_pipelined(&reqs, &mut replies) {
                Ok(()) => (replies.len(), None),
                Err((n, e)) => (n, Some(e)),
            };
            for (i, (k, _)) in batch.iter().enumerate() {
                let outcome = if i < answered {
                    check_goim_reply(&replies[i])
                } else {
                    Err(anyhow::anyhow!(
                        "no reply: {}",
                        err.as_ref().map(|e| format!("{e:#}")).unwrap_or_default()
                    ))
                };
                match outcome {
                    Ok(()) => {
                        ok[*k] += 1;
                        ok_total.fetch_add(1, Ordering::Relaxed);
                    }
                    // Whether the server applied an unanswered push is
                    // unknown: its sequence number stays used (a gap if lost).
                    Err(e) => {
                        res.failed += 1;
                        if res.first_error.is_none() {
                            res.first_error = Some(format!("push {}: {e:#}", paths[*k]));
                        }
                    }
                }
            }
            if res.failed > 100 && ok.iter().all(|&x| x == 0) {
                break;
            }
            continue;
        }
        let k = (sent % mine.len() as u64) as usize;
        sent += 1;
        seq[k] += 1;
        let body = stamp::encode(seq[k], mono_ns(), plan.msg_size);
        let outcome = http
            .post(&paths[k], &body)
            .and_then(|r| check_goim_reply(&r));
        match outcome {
            Ok(()) => {
                ok[k] += 1;
                ok_total.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Reuse the sequence number so a failed push is not counted as a gap.
                seq[k] -= 1;
                res.failed += 1;
                if res.first_error.is_none() {
                    res.first_error = Some(format!("push {}: {e:#}", paths[k]));
                }
                if res.failed > 100 && ok.iter().all(|&x| x == 0) {
                    break; // the API is not there; stop hammering it
                }
            }
        }
    }
    res.ok_per_target = mine.into_iter().zip(ok).collect();
    res
}

/// The Kafka variant of a pusher thread: every record due by now (at most
/// `max_batch`) goes out in one produce request per partition; target `i`
/// always maps to partition `i % partitions`, so one room's records keep
/// their order.
#[allow(clippy::too_many_arguments)]
fn kafka_pusher(
    plan: &PushPlan,
    mine: &[u64],
    rate: f64,
    ok_total: &AtomicU64,
    stop: &AtomicBool,
    ok: &mut [u64],
    seq: &mut [u64],
    res: &mut PusherResult,
) {
    let mut producer = match Producer::connect(&plan.via.brokers, &plan.via.topic, plan.via.acks) {
        Ok(p) => p,
        Err(e) => {
            res.first_error = Some(format!("kafka: {e:#}"));
            return;
        }
    };
    let parts = producer.partitions();
    let keys: Vec<Bytes> = mine
        .iter()
        .map(|&i| Bytes::from(plan.targets.kafka_key(i)))
        .collect();
    let mut by_part: Vec<Vec<(usize, OutRecord)>> = (0..parts).map(|_| Vec::new()).collect();
    let linger = Duration::from_micros(plan.via.linger_us);
    let max_batch = plan.via.max_batch.max(1) as u64;
    let (t0, t0_ns) = (Instant::now(), mono_ns());
    let mut last_send = t0;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let el = now.duration_since(t0);
        if el >= plan.duration {
            break;
        }
        let due = (el.as_secs_f64() * rate) as u64;
        if sent >= due || (due - sent < max_batch && now.duration_since(last_send) < linger) {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        last_send = now;
        let n = (due - sent).min(max_batch);
        for _ in 0..n {
            let k = (sent % mine.len() as u64) as usize;
            // Due time of this record: lingering and falling behind both count.
            let due_ns = t0_ns + (sent as f64 * 1e9 / rate) as u64;
            sent += 1;
            seq[k] += 1;
            let body = stamp::encode(seq[k], due_ns, plan.msg_size);
            by_part[(mine[k] % parts as u64) as usize].push((
                k,
                OutRecord {
                    key: keys[k].clone(),
                    op: plan.op,
                    value: Bytes::from(body),
                },
            ));
        }
        for (part, recs) in by_part.iter_mut().enumerate() {
            if recs.is_empty() {
                continue;
            }
            let out: Vec<OutRecord> = recs
                .iter()
                .map(|(_, r)| OutRecord {
                    key: r.key.clone(),
                    op: r.op,
                    value: r.value.clone(),
                })
                .collect();
            match producer.send(part as u32, &out) {
                Ok(()) => {
                    for (k, _) in recs.iter() {
                        ok[*k] += 1;
                    }
                    ok_total.fetch_add(recs.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // These sequence numbers were never delivered: a gap the
                    // clients will count, and failures here.
                    res.failed += recs.len() as u64;
                    if res.first_error.is_none() {
                        res.first_error = Some(format!("kafka produce: {e:#}"));
                    }
                }
            }
            recs.clear();
        }
    }
}

/// Before a Kafka run: the server's consumer starts at the latest offset
/// once it has found the topic, so records produced earlier are never
/// delivered. Produce an unstamped probe to target 0 until a client sees it.
fn await_kafka_consumer(engine: &Engine, push: &PushPlan) -> Result<()> {
    let mut producer = Producer::connect(&push.via.brokers, &push.via.topic, push.via.acks)?;
    let before = engine.totals().msgs;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let probe = OutRecord {
            key: Bytes::from(push.targets.kafka_key(0)),
            op: push.op,
            value: Bytes::from_static(b"loadgen probe"),
        };
        producer.send(0, &[probe])?;
        let wait = Instant::now() + Duration::from_millis(500);
        while Instant::now() < wait {
            if engine.totals().msgs > before {
                std::thread::sleep(Duration::from_millis(300));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    bail!(
        "no probe record reached a client within 60 s: is the server consuming topic {} from {}?",
        push.via.topic,
        push.via.brokers
    )
}

/// Connect `client` (all must authenticate), push per `push`, reconcile.
/// `readers_of(target)` says how many reading clients each target reaches.
pub fn run(
    scenario: &str,
    client: ClientPlan,
    push: PushPlan,
    readers_of: impl Fn(u64) -> u64,
    progress: &Progress,
) -> Result<PushReport> {
    let conns = client.conns;
    let room_size = client.room_size;
    let transport = client.transport;
    let engine = Engine::start(client)?;
    progress.phase(&format!("{scenario}: connecting"), conns);
    let totals = engine.wait_for(
        Duration::from_secs(120),
        |t| t.authed + t.failed >= conns,
        |t| progress.set(t.authed),
    )?;
    let connect_secs = engine.started().elapsed().as_secs_f64();
    if totals.failed > 0 {
        let res = engine.finish()?;
        bail!(
            "{} of {conns} clients failed to connect or authenticate: {:?}",
            totals.failed,
            res.errors
        );
    }
    if push.via.via == Via::Kafka {
        progress.phase(&format!("{scenario}: waiting for the consumer"), 0);
        await_kafka_consumer(&engine, &push)?;
    }
    engine.reset_latency();
    let _ = engine.drain_interval_latency();

    let push = Arc::new(push);
    let ok_total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..push.threads)
        .map(|i| {
            let (p, ok, s) = (push.clone(), ok_total.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("pusher-{i}"))
                .spawn(move || pusher(p, i, ok, s))
        })
        .collect::<std::io::Result<_>>()?;

    progress.phase(&format!("{scenario}: pushing"), push.duration.as_secs());
    let t0 = Instant::now();
    let base = engine.totals();
    let mut samples = Vec::new();
    let mut prev = (t0, base, 0u64);
    let interval = Duration::from_millis(500);
    let mut pushing = true;
    let mut pushers = Vec::new();
    let mut handles = Some(handles);
    let mut expected = u64::MAX;
    let mut last_growth = Instant::now();
    let mut last_received = 0;
    loop {
        std::thread::sleep(interval.saturating_sub(prev.0.elapsed()));
        let now = Instant::now();
        let t = engine.totals();
        let pushed = ok_total.load(Ordering::Relaxed);
        let dt = now.duration_since(prev.0).as_secs_f64().max(1e-9);
        let h = engine.drain_interval_latency();
        samples.push(Sample {
            t: now.duration_since(t0).as_secs_f64(),
            pushes_per_sec: (pushed - prev.2) as f64 / dt,
            msgs_per_sec: (t.msgs - prev.1.msgs) as f64 / dt,
            frames_per_sec: (t.frames - prev.1.frames) as f64 / dt,
            bytes_per_sec: (t.bytes - prev.1.bytes) as f64 / dt,
            p50_us: if h.is_empty() {
                0
            } else {
                h.value_at_quantile(0.5)
            },
            p99_us: if h.is_empty() {
                0
            } else {
                h.value_at_quantile(0.99)
            },
        });
        prev = (now, t, pushed);
        let received = t.msgs - base.msgs;
        if received > last_received {
            last_received = received;
            last_growth = now;
        }
        progress.set(now.duration_since(t0).as_secs());
        if pushing
            && handles
                .as_ref()
                .is_some_and(|hs| hs.iter().all(|h| h.is_finished()))
        {
            pushing = false;
            for h in handles.take().expect("pushers present") {
                pushers.push(h.join().expect("pusher thread panicked"));
            }
            expected = pushers
                .iter()
                .flat_map(|p| p.ok_per_target.iter())
                .map(|&(target, ok)| ok * readers_of(target))
                .sum();
            progress.phase(&format!("{scenario}: draining"), expected);
        }
        if !pushing {
            progress.set(received);
            // Done when everything arrived, or nothing arrived for 3 s.
            if received >= expected || now.duration_since(last_growth) > Duration::from_secs(3) {
                break;
            }
        }
        if !engine.workers_alive() {
            stop.store(true, Ordering::Relaxed);
            bail!("an engine worker exited during the run");
        }
    }
    let delivery_secs = last_growth.duration_since(t0).as_secs_f64().max(1e-9);
    // Trim the idle tail of the series.
    while samples.len() > 1
        && samples
            .last()
            .is_some_and(|s| s.msgs_per_sec == 0.0 && s.pushes_per_sec == 0.0)
    {
        samples.pop();
    }
    let res = engine.finish()?;
    progress.finish();
    let d = diff(&res.totals, &base);
    let pushes_ok: u64 = pushers
        .iter()
        .flat_map(|p| p.ok_per_target.iter())
        .map(|x| x.1)
        .sum();
    let mut errors = res.errors;
    errors.extend(pushers.iter().filter_map(|p| p.first_error.clone()));
    Ok(PushReport {
        scenario: scenario.into(),
        transport: Some(transport),
        conns,
        room_size,
        targets: push.targets.count(),
        msg_size: push.msg_size.max(stamp::STAMP_LEN),
        push_secs: push.duration.as_secs_f64(),
        pushes_ok,
        pushes_failed: pushers.iter().map(|p| p.failed).sum(),
        push_rate: pushes_ok as f64 / push.duration.as_secs_f64(),
        expected,
        received: d.msgs,
        missing: expected.saturating_sub(d.msgs),
        gap_lost: d.lost,
        out_of_order: d.out_of_order,
        delivery_secs,
        msgs_per_sec: d.msgs as f64 / delivery_secs,
        frames_per_sec: d.frames as f64 / delivery_secs,
        bytes_per_sec: d.bytes as f64 / delivery_secs,
        latency: Percentiles::of(&res.latency),
        closed_by_server: d.closed_by_server,
        connect_secs,
        samples,
        errors,
    })
}

fn diff(a: &Totals, b: &Totals) -> Totals {
    Totals {
        msgs: a.msgs - b.msgs,
        frames: a.frames - b.frames,
        bytes: a.bytes - b.bytes,
        lost: a.lost - b.lost,
        out_of_order: a.out_of_order - b.out_of_order,
        closed_by_server: a.closed_by_server - b.closed_by_server,
        ..*a
    }
}

impl PushReport {
    pub fn print(&self) {
        println!(
            "{} ({:?}, {} conns, {} targets{})",
            self.scenario,
            self.transport.unwrap_or(Transport::Ws),
            self.conns,
            self.targets,
            if self.room_size > 0 {
                format!(" of {} members", self.room_size)
            } else {
                String::new()
            }
        );
        println!(
            "  pushed                 {:>12} ok, {} failed ({:.0}/s, {} B bodies)",
            self.pushes_ok, self.pushes_failed, self.push_rate, self.msg_size
        );
        println!(
            "  delivered              {:>12} of {} expected ({} missing, {} by seq gaps, {} out of order)",
            self.received, self.expected, self.missing, self.gap_lost, self.out_of_order
        );
        println!(
            "  throughput             {:>12.0} msgs/s  {:.0} frames/s  {:.1} MB/s over {:.2} s",
            self.msgs_per_sec,
            self.frames_per_sec,
            self.bytes_per_sec / 1e6,
            self.delivery_secs
        );
        let l = &self.latency;
        println!(
            "  latency (push→recv)    p50 {} µs  p90 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
        if self.closed_by_server > 0 {
            println!("  closed by server       {:>12}", self.closed_by_server);
        }
        for e in &self.errors {
            println!("  error: {e}");
        }
    }
}
