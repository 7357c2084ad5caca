//! Counters and latency histograms shared between engine workers and the
//! scenario thread. Workers keep plain local counters and publish them with
//! relaxed stores once per loop turn, so the hot path has no atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds up to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// The totals of one worker (or, summed, of the whole engine).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Totals {
    /// Connect attempts started (socket + bind + connect chains).
    pub connects_started: u64,
    /// TCP connects that succeeded.
    pub connected: u64,
    /// Connections whose auth reply (op 8, empty body) arrived.
    pub authed: u64,
    /// Connections that failed before being authenticated.
    pub failed: u64,
    /// Authenticated connections the server closed (EOF, reset, op 6, WS close).
    pub closed_by_server: u64,
    /// Connections this side closed.
    pub closed_by_client: u64,
    /// Application messages (op ≥ 1000) received.
    pub msgs: u64,
    /// Messages that carried a loadgen stamp (sequence + send time).
    pub stamped: u64,
    /// WebSocket frames (or, on TCP, receive completions) carrying data.
    pub frames: u64,
    /// Bytes received after the handshake.
    pub bytes: u64,
    /// Messages missing, by sequence gaps.
    pub lost: u64,
    /// Messages with a sequence number at or below one already seen.
    pub out_of_order: u64,
    /// Heartbeat replies (op 3) received.
    pub heartbeat_replies: u64,
    /// Protocol errors seen in server output.
    pub protocol_errors: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.connects_started += o.connects_started;
        self.connected += o.connected;
        self.authed += o.authed;
        self.failed += o.failed;
        self.closed_by_server += o.closed_by_server;
        self.closed_by_client += o.closed_by_client;
        self.msgs += o.msgs;
        self.stamped += o.stamped;
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.lost += o.lost;
        self.out_of_order += o.out_of_order;
        self.heartbeat_replies += o.heartbeat_replies;
        self.protocol_errors += o.protocol_errors;
    }
}

/// One worker's published counters (one cache line group per worker).
#[derive(Default)]
#[repr(align(128))]
pub struct SharedTotals {
    fields: [AtomicU64; 14],
}

impl SharedTotals {
    pub fn publish(&self, t: &Totals) {
        let v = [
            t.connects_started,
            t.connected,
            t.authed,
            t.failed,
            t.closed_by_server,
            t.closed_by_client,
            t.msgs,
            t.stamped,
            t.frames,
            t.bytes,
            t.lost,
            t.out_of_order,
            t.heartbeat_replies,
            t.protocol_errors,
        ];
        for (a, x) in self.fields.iter().zip(v) {
            a.store(x, Ordering::Relaxed);
        }
    }

    pub fn load(&self) -> Totals {
        let f = |i: usize| self.fields[i].load(Ordering::Relaxed);
        Totals {
            connects_started: f(0),
            connected: f(1),
            authed: f(2),
            failed: f(3),
            closed_by_server: f(4),
            closed_by_client: f(5),
            msgs: f(6),
            stamped: f(7),
            frames: f(8),
            bytes: f(9),
            lost: f(10),
            out_of_order: f(11),
            heartbeat_replies: f(12),
            protocol_errors: f(13),
        }
    }
}

/// Histograms a worker flushes into a few times a second; the scenario thread
/// drains `interval` once per sample and reads `total` at the end.
pub struct SharedHistograms {
    inner: Mutex<HistPair>,
}

struct HistPair {
    /// Message latency since the last drain.
    interval: Histogram<u64>,
    /// Message latency over the whole run.
    total: Histogram<u64>,
    /// Connect start → auth reply, over the whole run.
    auth: Histogram<u64>,
}

impl Default for SharedHistograms {
    fn default() -> Self {
        Self {
            inner: Mutex::new(HistPair {
                interval: new_histogram(),
                total: new_histogram(),
                auth: new_histogram(),
            }),
        }
    }
}

impl SharedHistograms {
    /// Add a worker's local latency and auth histograms, then reset them.
    pub fn flush(&self, latency: &mut Histogram<u64>, auth: &mut Histogram<u64>) {
        if latency.is_empty() && auth.is_empty() {
            return;
        }
        let mut g = self.inner.lock().expect("histogram lock poisoned");
        // Same bounds everywhere, so `add` cannot fail.
        let _ = g.interval.add(&*latency);
        let _ = g.total.add(&*latency);
        let _ = g.auth.add(&*auth);
        latency.reset();
        auth.reset();
    }

    /// Take the interval histogram (leaving an empty one).
    pub fn drain_interval(&self, into: &mut Histogram<u64>) {
        let mut g = self.inner.lock().expect("histogram lock poisoned");
        let _ = into.add(&g.interval);
        g.interval.reset();
    }

    pub fn add_totals(&self, latency: &mut Histogram<u64>, auth: &mut Histogram<u64>) {
        let g = self.inner.lock().expect("histogram lock poisoned");
        let _ = latency.add(&g.total);
        let _ = auth.add(&g.auth);
    }

    pub fn reset_totals(&self) {
        let mut g = self.inner.lock().expect("histogram lock poisoned");
        g.interval.reset();
        g.total.reset();
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}
