//! SPSC hand-off between the control/ingest core and the shards.
//!
//! Every shard has exactly two rings, both [`rtrb`] single-producer
//! single-consumer queues, created together by [`channel`]:
//!
//! ```text
//!   control/ingest core                       shard thread
//!   ───────────────────                       ────────────
//!   ShardLink ── ShardMsg (pushes, room counts, shutdown) ──▶ ShardInbox
//!   ShardLink ◀── ShardReport (stats, online counts, index sizes) ── ShardInbox
//! ```
//!
//! * The control side owns one [`ShardLink`] per shard (it is `Send`, not
//!   `Clone`: one producer per ring). Pushes are encoded once on the control
//!   core ([`Push::new`]) and fanned out to every shard by cloning the
//!   [`Push`] (`Bytes` and `Arc` clones only). Kafka ingest encodes the
//!   pushes of a fetch into one buffer ([`PushBatchBuilder`]) and sends each
//!   shard one [`ShardMsg::Pushes`] per batch.
//! * The shard owns its [`ShardInbox`]; it drains the ring every loop turn
//!   and reports every `report_interval` (see the config).
//!
//! # Wake-ups
//!
//! A shard blocks in `io_uring_enter` when it has nothing to do. Before it
//! blocks it sets its [`Waker`]'s `sleeping` flag, re-checks its ring and only
//! then waits; it is woken by a write to its eventfd, which the shard's ring
//! has a read armed on. The producer writes the eventfd only when it observes
//! `sleeping == true` after its push (and clears the flag, so a burst of
//! pushes costs one syscall). A busy shard is therefore never woken by
//! syscall. Both sides use a `SeqCst` fence between "publish" and "check"
//! (Dekker pattern), so a push can never be missed by a shard going to sleep.
//!
//! # Backpressure
//!
//! [`ShardLink::try_send`] never blocks: a full ring gives the message back in
//! [`SendError::Full`]; [`ShardLink::send_timeout`] spins, yields and then
//! sleeps briefly until there is room or the timeout passes (bounded wait for
//! threads; an async caller should retry `try_send` on its own timer instead).
//! Nothing is dropped silently by this module.

mod batch;
pub mod encode;
mod report;
mod waker;

pub use batch::{PushBatch, PushBatchBuilder};
pub use encode::{
    encode_packet, encode_ws_binary_header, put_packet, ws_container_frame, PACKET_HEADER_LEN,
};
pub use report::{CloseReason, IndexSizes, LoopTurnHistogram, ShardCounters, ShardReport};
pub use waker::{Shutdown, Waker};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Goim op of the raw container packet that wraps pushes for WebSocket clients.
pub const OP_RAW: u32 = 9;

/// Who a push is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// Every member of one room. The room id is goim's `"type://room"`
    /// (what clients send as `room_id`, what `/goim/push/room?type=&room=`
    /// names).
    Room(Arc<str>),
    /// The connections with these keys (`/goim/push/keys`).
    Keys(Arc<[Box<str>]>),
    /// Every connection of these user ids (`/goim/push/mids`).
    Mids(Arc<[i64]>),
    /// Every authenticated connection (`/goim/push/all`).
    All,
}

/// One message for the shards, encoded once on the producing core.
///
/// Cloning is cheap (reference counts only), so the producer builds one
/// `Push` and clones it into every shard's ring.
#[derive(Debug, Clone)]
pub struct Push {
    pub target: PushTarget,
    /// Goim operation of the message (≥ 1000 for application ops). Shards use
    /// it to apply each connection's op filter (auth `accepts`, ops 14–17).
    pub op: u32,
    /// The goim packet (16-byte header + body) as written to TCP clients.
    pub packet: Bytes,
    /// The WebSocket binary frame sent to WS clients: frame header + op-9
    /// container whose body is `packet`.
    pub ws_frame: Bytes,
}

impl Push {
    /// Encodes `body` as a goim packet with `op` (seq 0) and its WebSocket
    /// frame, once. Shards only clone the results.
    pub fn new(target: PushTarget, op: u32, body: &[u8]) -> Push {
        let (packet, ws_frame) = encode::single_push(op, body);
        Push {
            target,
            op,
            packet,
            ws_frame,
        }
    }
}

/// Online counts of the whole node, per room, sent by control to every
/// shard so that a heartbeat reply (op 3) carries the room's node-wide count
/// rather than the shard's share of it.
#[derive(Debug, Clone, Default)]
pub struct RoomCounts {
    pub rooms: ahash::AHashMap<Arc<str>, u32>,
}

/// Message from the control/ingest core to one shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver a push to the matching connections of this shard.
    Push(Push),
    /// Deliver these pushes, in order (Kafka ingest: one ring item per
    /// fetched batch instead of one per record).
    Pushes(PushBatch),
    /// Latest node-wide online counts (replaces the previous snapshot).
    RoomCounts(Arc<RoomCounts>),
    /// Stop accepting, say goodbye to every client (op 6 / WS close 1001),
    /// drain, send a last report and end the shard thread.
    Shutdown,
}

/// Error of [`ShardLink::try_send`] / [`ShardLink::send_timeout`].
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The ring is full; the message is handed back to retry later.
    #[error("shard ring full")]
    Full(ShardMsg),
    /// The shard thread has ended (its inbox was dropped).
    #[error("shard has stopped")]
    Closed(ShardMsg),
}

impl SendError {
    /// The message that could not be sent.
    pub fn into_msg(self) -> ShardMsg {
        match self {
            SendError::Full(m) | SendError::Closed(m) => m,
        }
    }
}

/// Ring sizes for [`channel`].
#[derive(Debug, Clone, Copy)]
pub struct ChannelSizes {
    /// Capacity of the control → shard ring, in messages.
    pub to_shard: usize,
    /// Capacity of the shard → control ring, in reports.
    pub to_control: usize,
}

impl Default for ChannelSizes {
    fn default() -> Self {
        ChannelSizes {
            to_shard: 65536,
            to_control: 64,
        }
    }
}

/// Creates the two rings and the waker of one shard.
///
/// Fails only if the eventfd cannot be created.
pub fn channel(shard: usize, sizes: ChannelSizes) -> std::io::Result<(ShardLink, ShardInbox)> {
    let waker = Arc::new(Waker::new()?);
    let (tx, rx) = rtrb::RingBuffer::new(sizes.to_shard.max(1));
    let (report_tx, report_rx) = rtrb::RingBuffer::new(sizes.to_control.max(1));
    Ok((
        ShardLink {
            shard,
            tx,
            reports: report_rx,
            waker: waker.clone(),
        },
        ShardInbox {
            shard,
            rx,
            reports: report_tx,
            waker,
        },
    ))
}

/// Control-side end of one shard's rings. One per shard; owned by the
/// control/ingest executor.
pub struct ShardLink {
    shard: usize,
    tx: rtrb::Producer<ShardMsg>,
    reports: rtrb::Consumer<Box<ShardReport>>,
    waker: Arc<Waker>,
}

impl ShardLink {
    /// Index of the shard this link feeds.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Queues `msg` without blocking and wakes the shard if it sleeps.
    pub fn try_send(&mut self, msg: ShardMsg) -> Result<(), SendError> {
        match self.tx.push(msg) {
            Ok(()) => {
                self.waker.wake_if_sleeping();
                Ok(())
            }
            Err(rtrb::PushError::Full(msg)) => {
                if self.tx.is_abandoned() {
                    return Err(SendError::Closed(msg));
                }
                // Make sure a sleeping shard drains what is already queued.
                self.waker.wake_if_sleeping();
                Err(SendError::Full(msg))
            }
        }
    }

    /// Queues `msg`, waiting up to `timeout` for room in a full ring (spin,
    /// then yield, then 50 µs sleeps). For plain threads; async callers should
    /// retry [`try_send`](Self::try_send) from their own timer.
    pub fn send_timeout(&mut self, msg: ShardMsg, timeout: Duration) -> Result<(), SendError> {
        let deadline = Instant::now() + timeout;
        let mut msg = msg;
        let mut attempt = 0u32;
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Closed(m)) => return Err(SendError::Closed(m)),
                Err(SendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return Err(SendError::Full(m));
                    }
                    msg = m;
                }
            }
            attempt += 1;
            if attempt < 64 {
                std::hint::spin_loop();
            } else if attempt < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Messages currently queued for the shard (ring occupancy).
    pub fn queued(&self) -> usize {
        self.tx.buffer().capacity() - self.tx.slots()
    }

    /// Capacity of the control → shard ring.
    pub fn capacity(&self) -> usize {
        self.tx.buffer().capacity()
    }

    /// Next report from the shard, if any. Reports are snapshots: when
    /// several are queued only the newest matters for gauges, while counters
    /// in every report are cumulative since the shard started.
    pub fn try_recv_report(&mut self) -> Option<Box<ShardReport>> {
        self.reports.pop().ok()
    }

    /// Whether the shard thread has ended (dropped its inbox).
    pub fn is_closed(&self) -> bool {
        self.tx.is_abandoned()
    }

    /// The shard's waker (e.g. to wake it on shutdown from another thread).
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }
}

/// Shard-side end: the inbound message ring, the outbound report ring and
/// the sleeping flag / eventfd pair.
pub struct ShardInbox {
    shard: usize,
    rx: rtrb::Consumer<ShardMsg>,
    reports: rtrb::Producer<Box<ShardReport>>,
    waker: Arc<Waker>,
}

impl ShardInbox {
    /// Index of this shard.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Next queued message, if any.
    #[inline]
    pub fn try_recv(&mut self) -> Option<ShardMsg> {
        self.rx.pop().ok()
    }

    /// Messages waiting in the ring.
    pub fn pending(&self) -> usize {
        self.rx.slots()
    }

    /// Call right before blocking in `submit_and_wait`. Sets the sleeping
    /// flag, then re-checks the ring: returns `true` if the shard may block
    /// (its eventfd will be written by the next push), `false` if messages
    /// arrived meanwhile (the flag is cleared again; do not block).
    pub fn prepare_to_sleep(&self) -> bool {
        self.waker.set_sleeping();
        if self.rx.is_empty() && !self.waker.shutdown_requested() {
            true
        } else {
            self.waker.clear_sleeping();
            false
        }
    }

    /// Call after waking up (whether or not the eventfd fired).
    pub fn awake(&self) {
        self.waker.clear_sleeping();
    }

    /// The eventfd the shard's ring must keep a read armed on.
    pub fn eventfd(&self) -> std::os::fd::RawFd {
        self.waker.eventfd()
    }

    /// The waker (sleeping flag, eventfd, shutdown flag) of this shard.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.waker
    }

    /// Sends a report to control. A full report ring hands the report back
    /// (control is not reading); the shard drops it and counts the drop.
    pub fn send_report(&mut self, report: Box<ShardReport>) -> Result<(), Box<ShardReport>> {
        self.reports
            .push(report)
            .map_err(|rtrb::PushError::Full(r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_roundtrip_and_full_ring() {
        let (mut link, mut inbox) = channel(
            3,
            ChannelSizes {
                to_shard: 2,
                to_control: 1,
            },
        )
        .unwrap();
        assert_eq!(link.shard(), 3);
        let p = Push::new(PushTarget::All, 1000, b"hi");
        link.try_send(ShardMsg::Push(p.clone())).unwrap();
        link.try_send(ShardMsg::Shutdown).unwrap();
        assert!(matches!(
            link.try_send(ShardMsg::Shutdown),
            Err(SendError::Full(ShardMsg::Shutdown))
        ));
        assert!(matches!(
            link.send_timeout(ShardMsg::Shutdown, Duration::from_millis(1)),
            Err(SendError::Full(_))
        ));
        assert_eq!(link.queued(), 2);
        match inbox.try_recv() {
            Some(ShardMsg::Push(got)) => {
                assert_eq!(got.op, 1000);
                assert_eq!(&got.packet[16..], b"hi");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(inbox.try_recv(), Some(ShardMsg::Shutdown)));
        assert!(inbox.try_recv().is_none());
        inbox.send_report(Box::new(ShardReport::empty(3))).unwrap();
        assert!(inbox.send_report(Box::new(ShardReport::empty(3))).is_err());
        assert_eq!(link.try_recv_report().unwrap().shard, 3);
        drop(inbox);
        assert!(matches!(
            link.try_send(ShardMsg::Shutdown),
            Ok(()) | Err(SendError::Closed(_))
        ));
    }

    #[test]
    fn sleeping_shard_is_woken_once() {
        let (mut link, inbox) = channel(0, ChannelSizes::default()).unwrap();
        assert!(inbox.prepare_to_sleep());
        link.try_send(ShardMsg::Shutdown).unwrap();
        // The push cleared the flag and wrote the eventfd exactly once.
        assert!(!inbox.waker().is_sleeping());
        assert_eq!(inbox.waker().drain_eventfd(), 1);
        link.try_send(ShardMsg::Shutdown).unwrap();
        assert_eq!(
            inbox.waker().drain_eventfd(),
            0,
            "busy shard must not be woken"
        );
        // A non-empty ring means the shard must not block.
        assert!(!inbox.prepare_to_sleep());
        assert!(!inbox.waker().is_sleeping());
    }
}
