//! What a shard reports back to control, periodically and on exit.

use std::sync::Arc;
use std::time::Duration;

/// Why a connection was closed. Counted per reason in [`ShardCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// The peer closed the TCP stream (read returned 0) or reset it.
    PeerClosed = 0,
    /// The peer sent a WebSocket close frame.
    PeerCloseFrame,
    /// No complete WS handshake or op-7 auth within the handshake timeout.
    HandshakeTimeout,
    /// Heartbeat (any inbound packet) missing for 2 intervals plus slack.
    HeartbeatTimeout,
    /// Malformed HTTP upgrade request (answered with 400).
    BadHandshake,
    /// Token rejected or auth body invalid.
    AuthFailed,
    /// WebSocket or goim framing violation (WS close 1002).
    ProtocolError,
    /// Frame or packet larger than the configured maximum (WS close 1009).
    TooBig,
    /// Text frame with invalid UTF-8 (WS close 1007).
    BadUtf8,
    /// Queued output passed the byte cap under policy `close` (WS 1008).
    SlowConsumer,
    /// Server shutdown (op 6 / WS close 1001).
    Shutdown,
    /// Socket error from the kernel.
    IoError,
}

impl CloseReason {
    /// Number of variants (size of per-reason counter arrays).
    pub const COUNT: usize = 12;
    /// Every reason, in counter order.
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::PeerClosed,
        CloseReason::PeerCloseFrame,
        CloseReason::HandshakeTimeout,
        CloseReason::HeartbeatTimeout,
        CloseReason::BadHandshake,
        CloseReason::AuthFailed,
        CloseReason::ProtocolError,
        CloseReason::TooBig,
        CloseReason::BadUtf8,
        CloseReason::SlowConsumer,
        CloseReason::Shutdown,
        CloseReason::IoError,
    ];

    /// Stable snake_case label (metrics, logs, test assertions).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerCloseFrame => "peer_close_frame",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::BadHandshake => "bad_handshake",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TooBig => "too_big",
            CloseReason::BadUtf8 => "bad_utf8",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IoError => "io_error",
        }
    }
}

/// Cumulative counters of one shard since it started (monotonic: control
/// computes rates from differences; gauges live in [`ShardReport`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Connections accepted.
    pub accepts: u64,
    /// Accept completions that failed (other than a full file table).
    pub accept_errors: u64,
    /// Accepts refused because the ring's file table was full (`-ENFILE`).
    pub accept_table_full: u64,
    /// Successful op-7 auths.
    pub auth_ok: u64,
    /// Rejected op-7 auths (bad token, bad body, room not allowed).
    pub auth_failures: u64,
    /// Packets received from clients (after framing).
    pub msgs_in: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Messages delivered to client send queues (pushes and replies; a
    /// batched container counts each message it holds).
    pub msgs_out: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// Send syscalls (SQEs) completed.
    pub sends: u64,
    /// Pushes received from the fan-out ring.
    pub pushes: u64,
    /// Messages dropped for a connection over its byte cap (policy `drop`).
    pub dropped_over_cap: u64,
    /// Reports that could not be sent because the report ring was full.
    pub reports_dropped: u64,
    /// Multishot recv re-armed after the kernel ended it (e.g. out of
    /// provided buffers).
    pub recv_rearms: u64,
    /// Closes by reason, indexed by `CloseReason as usize`.
    pub closes: [u64; CloseReason::COUNT],
}

impl ShardCounters {
    /// Closes counted for `reason`.
    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes[reason as usize]
    }
}

/// Sizes of a shard's indexes and tables: all zero when the shard holds no
/// connection (tests use this to prove no entry leaks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSizes {
    /// Live entries in the connection slab (including ones being closed).
    pub slab: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
    /// Sum of member-list lengths over all rooms.
    pub room_members: usize,
    /// Client-chosen keys in the key index.
    pub keys: usize,
    /// Distinct mids in the mid index.
    pub mids: usize,
    /// Entries in the timing wheel (live plus not yet collected stale ones).
    pub timers: usize,
    /// Connections holding a send queue (heap) right now.
    pub send_queues: usize,
    /// Connections holding a spill buffer (heap) right now.
    pub spill_buffers: usize,
    /// Distinct op filters in use (shared by the connections that have one).
    pub filters: usize,
}

/// Histogram of loop-turn durations: bucket `i` counts turns that took
/// `[2^i, 2^(i+1))` µs (bucket 0 also holds < 1 µs). Cumulative.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopTurnHistogram {
    pub buckets: [u64; LoopTurnHistogram::BUCKETS],
    /// Total time of every recorded turn, in nanoseconds (Prometheus `_sum`).
    pub sum_nanos: u64,
}

impl LoopTurnHistogram {
    pub const BUCKETS: usize = 24;

    /// Records one turn.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        let b = (64 - us.leading_zeros() as usize)
            .saturating_sub(1)
            .min(Self::BUCKETS - 1);
        self.buckets[b] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(d.as_nanos() as u64);
    }

    /// Upper bound of bucket `i` in seconds (for Prometheus `le` labels).
    pub fn upper_bound_secs(i: usize) -> f64 {
        (1u64 << (i + 1)) as f64 / 1e6
    }
}

/// Periodic snapshot from one shard (every `report_interval`, and a last one
/// when the shard stops).
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub shard: usize,
    /// Authenticated WebSocket connections.
    pub conns_ws: u32,
    /// Authenticated TCP connections.
    pub conns_tcp: u32,
    /// Connections not yet authenticated (handshake / waiting for op 7).
    pub conns_pending: u32,
    /// Online count of every room with members on this shard, by room id
    /// (`"type://room"`).
    pub rooms: Vec<(Arc<str>, u32)>,
    pub counters: ShardCounters,
    pub index: IndexSizes,
    pub loop_turns: LoopTurnHistogram,
    /// Set on the final report of a stopping shard.
    pub final_report: bool,
}

impl ShardReport {
    /// A report with nothing in it.
    pub fn empty(shard: usize) -> ShardReport {
        ShardReport {
            shard,
            conns_ws: 0,
            conns_tcp: 0,
            conns_pending: 0,
            rooms: Vec::new(),
            counters: ShardCounters::default(),
            index: IndexSizes::default(),
            loop_turns: LoopTurnHistogram::default(),
            final_report: false,
        }
    }
}
