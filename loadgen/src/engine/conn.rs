//! Per-connection client state and the parsing of what the server sends.
//! Kept small on purpose: an idle connection is this struct and nothing else.

use corecast_protocol::packet::{op, parse_packet, parse_single_packet, raw_packets, PacketRef};
use corecast_protocol::ws::frame::{FrameDecoder, Opcode};
use hdrhistogram::Histogram;

use super::stamp;
use super::stats::Totals;

/// Largest packet accepted from the server (batched op-9 containers included).
pub const MAX_SERVER_PACKET: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not started yet.
    Idle,
    /// socket + bind + connect chain in flight.
    Connecting,
    /// WebSocket upgrade sent, waiting for 101.
    Handshaking,
    /// op 7 sent, waiting for op 8.
    Authing,
    /// Authenticated and reading.
    Ready,
    /// Authenticated, and deliberately not reading any more.
    Slow,
    /// Shutdown + close in flight.
    Closing,
    /// Slot free (may be reused by a reconnect).
    Closed,
}

/// An owned send buffer. Boxed so a connection's slot for it costs 8 bytes
/// (a `Vec` is 24), and a pooled buffer keeps its allocation across uses.
#[allow(clippy::box_collection)]
pub type SendBuf = Box<Vec<u8>>;

/// One client connection. Its fixed-file slot is its index in the worker.
pub struct Conn {
    /// Bytes of a frame/packet that straddled two receives; usually `None`.
    /// Boxed so the idle case costs 8 bytes instead of a 24-byte `Vec`.
    #[allow(clippy::box_collection)]
    pub spill: Option<Box<Vec<u8>>>,
    /// A send buffer the kernel still reads (upgrade + auth, pong); back to
    /// the worker's pool on completion.
    pub pending: Option<SendBuf>,
    /// Connect start, µs since the worker started (auth latency).
    pub started_us: u32,
    /// Last stamped sequence number seen.
    pub last_seq: u32,
    /// Incarnation of the slot, so completions of a previous one are ignored.
    pub gen: u16,
    pub state: State,
    /// The multishot receive is armed.
    pub recv_armed: bool,
    /// Reconnect once the close completes (storm).
    pub reconnect: bool,
}

impl Conn {
    pub fn new() -> Self {
        Self {
            spill: None,
            pending: None,
            started_us: 0,
            last_seq: 0,
            gen: 0,
            state: State::Idle,
            recv_armed: false,
            reconnect: false,
        }
    }
}

/// What a chunk of server output asks the worker to do.
#[derive(Default, Debug)]
pub struct Outcome {
    /// The auth reply: `Ok` on an empty op-8 body, else the server's error body.
    pub auth: Option<Result<(), String>>,
    /// The server closed or the stream is broken: why.
    pub close: Option<String>,
    /// A WebSocket ping payload to answer with a pong.
    pub pong: Option<Vec<u8>>,
}

/// Counters and clocks the parser updates.
pub struct RecvCtx<'a> {
    pub totals: &'a mut Totals,
    pub latency: &'a mut Histogram<u64>,
    pub now_ns: u64,
    /// Present for WebSocket connections.
    pub ws: Option<&'a mut FrameDecoder>,
}

/// Parse as much of `buf` as forms whole frames (WS) or packets (TCP).
/// Returns the bytes consumed; the rest must be kept for the next receive.
pub fn parse_stream(
    ctx: &mut RecvCtx<'_>,
    conn: &mut Conn,
    buf: &mut [u8],
    out: &mut Outcome,
) -> usize {
    let mut pos = 0;
    while pos < buf.len() && out.close.is_none() {
        let step = match ctx.ws.as_deref_mut() {
            Some(dec) => match dec.decode(&mut buf[pos..]) {
                Ok(Some((frame, n))) => {
                    let (opcode, fin, payload) = (frame.opcode, frame.fin, frame.payload);
                    match opcode {
                        Opcode::Binary | Opcode::Text if fin => {
                            ctx.totals.frames += 1;
                            match parse_single_packet(payload, MAX_SERVER_PACKET) {
                                Ok(p) => {
                                    on_packet(ctx.totals, ctx.latency, ctx.now_ns, conn, &p, out)
                                }
                                Err(e) => out.close = Some(format!("bad packet in frame: {e}")),
                            }
                        }
                        Opcode::Ping => out.pong = Some(payload.to_vec()),
                        Opcode::Pong => {}
                        Opcode::Close => {
                            let why = frame.close().map(|(c, r)| format!("{} {r}", c.0));
                            out.close = Some(format!("ws close {}", why.unwrap_or_default()));
                        }
                        // The server never fragments (one packet per frame).
                        _ => out.close = Some("fragmented frame from server".into()),
                    }
                    Some(n)
                }
                Ok(None) => None,
                Err(e) => {
                    out.close = Some(format!("bad frame: {e}"));
                    Some(buf.len() - pos)
                }
            },
            None => match parse_packet(&buf[pos..], MAX_SERVER_PACKET) {
                Ok(Some((p, n))) if p.op >= op::APP_MIN && conn.state == State::Ready => {
                    // TCP has no containers: a batch is its packets back to
                    // back. Count a run of whole application packets like a
                    // container.
                    let (first, mut last, mut len, mut app) = (p.body, p.body, n, 1usize);
                    while let Ok(Some((q, m))) = parse_packet(&buf[pos + len..], MAX_SERVER_PACKET)
                    {
                        if q.op < op::APP_MIN {
                            break;
                        }
                        last = q.body;
                        len += m;
                        app += 1;
                    }
                    if app <= CONTAINER_FULL_PARSE {
                        on_packet(ctx.totals, ctx.latency, ctx.now_ns, conn, &p, out);
                        Some(n)
                    } else {
                        count_run(ctx.totals, ctx.latency, ctx.now_ns, conn, app, first, last);
                        Some(len)
                    }
                }
                Ok(Some((p, n))) => {
                    on_packet(ctx.totals, ctx.latency, ctx.now_ns, conn, &p, out);
                    Some(n)
                }
                Ok(None) => None,
                Err(e) => {
                    out.close = Some(format!("bad packet: {e}"));
                    Some(buf.len() - pos)
                }
            },
        };
        match step {
            Some(n) => pos += n,
            None => break,
        }
    }
    pos
}

fn on_packet(
    totals: &mut Totals,
    latency: &mut Histogram<u64>,
    now_ns: u64,
    conn: &mut Conn,
    p: &PacketRef<'_>,
    out: &mut Outcome,
) {
    match p.op {
        op::AUTH_REPLY if conn.state == State::Authing => {
            out.auth = Some(if p.body.is_empty() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(p.body).into_owned())
            });
        }
        op::HEARTBEAT_REPLY => totals.heartbeat_replies += 1,
        op::RAW => on_container(totals, latency, now_ns, conn, p.body, out),
        op::DISCONNECT_REPLY => {
            out.close = Some(format!("op 6 {}", String::from_utf8_lossy(p.body)));
        }
        o if o >= op::APP_MIN => {
            totals.msgs += 1;
            if let Some((seq, sent_ns)) = stamp::parse(p.body) {
                totals.stamped += 1;
                record_latency(latency, now_ns, sent_ns, 1);
                check_seq(totals, conn, seq as u32);
            }
        }
        _ => {}
    }
}

/// Containers with more application messages than this are counted by
/// walking the packet headers only; their stamps are read at both ends.
const CONTAINER_FULL_PARSE: usize = 4;

/// An op-9 container. A large room batch holds hundreds of messages per
/// frame; parsing every stamp would make the loadgen's core the bottleneck,
/// so past `CONTAINER_FULL_PARSE` messages it counts them by their headers
/// and reads the first and last stamps only. The server batches one room's
/// pushes in arrival order, so within a container the sequence numbers run
/// first..=last: `last - first + 1 - count` messages are missing (negative
/// means duplicates/reordering, counted as out of order). Latency is recorded
/// as the first stamp's for half the messages and the last's for the other
/// half (the oldest and newest message of the frame bound everything between).
fn on_container(
    totals: &mut Totals,
    latency: &mut Histogram<u64>,
    now_ns: u64,
    conn: &mut Conn,
    body: &[u8],
    out: &mut Outcome,
) {
    let (mut app, mut other) = (0usize, 0usize);
    let mut first: Option<&[u8]> = None;
    let mut last: Option<&[u8]> = None;
    for inner in raw_packets(body) {
        match inner {
            Ok(q) if q.op >= op::APP_MIN => {
                app += 1;
                if first.is_none() {
                    first = Some(q.body);
                }
                last = Some(q.body);
            }
            Ok(_) => other += 1,
            Err(e) => {
                totals.protocol_errors += 1;
                out.close = Some(format!("bad op-9 container: {e}"));
                return;
            }
        }
    }
    if app <= CONTAINER_FULL_PARSE || other > 0 {
        // Small, or mixed with control packets: every packet on its own.
        for q in raw_packets(body).flatten() {
            if q.op != op::RAW {
                on_packet(totals, latency, now_ns, conn, &q, out);
            }
        }
        return;
    }
    count_run(
        totals,
        latency,
        now_ns,
        conn,
        app,
        first.unwrap_or_default(),
        last.unwrap_or_default(),
    );
}

/// `app` application messages of one room in order, of which only the first
/// and last bodies are looked at (see `on_container`).
fn count_run(
    totals: &mut Totals,
    latency: &mut Histogram<u64>,
    now_ns: u64,
    conn: &mut Conn,
    app: usize,
    first: &[u8],
    last: &[u8],
) {
    totals.msgs += app as u64;
    let (Some(a), Some(b)) = (stamp::parse(first), stamp::parse(last)) else {
        return;
    };
    totals.stamped += app as u64;
    let half = app as u64 / 2;
    record_latency(latency, now_ns, a.1, half);
    record_latency(latency, now_ns, b.1, app as u64 - half);
    let (first_seq, last_seq) = (a.0 as u32, b.0 as u32);
    check_seq(totals, conn, first_seq);
    let span = last_seq.wrapping_sub(first_seq) as u64 + 1;
    if span > app as u64 {
        totals.lost += span - app as u64;
    } else if span < app as u64 {
        totals.out_of_order += app as u64 - span;
    }
    conn.last_seq = last_seq;
}

fn record_latency(latency: &mut Histogram<u64>, now_ns: u64, sent_ns: u64, n: u64) {
    if n == 0 {
        return;
    }
    let us = now_ns.saturating_sub(sent_ns) / 1000;
    let _ = latency.record_n(us.clamp(1, 60_000_000), n);
}

/// Sequence check of one message against the connection's last one.
fn check_seq(totals: &mut Totals, conn: &mut Conn, seq: u32) {
    let expected = conn.last_seq.wrapping_add(1);
    if seq == expected {
        conn.last_seq = seq;
    } else if seq > expected {
        totals.lost += (seq - expected) as u64;
        conn.last_seq = seq;
    } else {
        totals.out_of_order += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stats::new_histogram;
    use corecast_protocol::packet::{encode_packet, encode_packet_to_vec};

    fn ctx<'a>(t: &'a mut Totals, h: &'a mut Histogram<u64>) -> RecvCtx<'a> {
        RecvCtx {
            totals: t,
            latency: h,
            now_ns: 5_000_000,
            ws: None,
        }
    }

    /// Empty counters, an empty latency histogram and a connection in `state`.
    fn fresh(state: State) -> (Totals, Histogram<u64>, Conn) {
        let mut conn = Conn::new();
        conn.state = state;
        (Totals::default(), new_histogram(), conn)
    }

    #[test]
    fn tcp_stream_counts_messages_gaps_and_keeps_partial_packets() {
        let (mut t, mut h, mut conn) = fresh(State::Ready);
        let mut buf = Vec::new();
        for seq in [1u64, 2, 5] {
            encode_packet(1000, 0, &stamp::encode(seq, 1_000_000, 64), &mut buf);
        }
        let whole = buf.len();
        encode_packet(1000, 0, &stamp::encode(6, 1_000_000, 64), &mut buf);
        buf.truncate(whole + 10);
        let mut out = Outcome::default();
        let n = parse_stream(&mut ctx(&mut t, &mut h), &mut conn, &mut buf, &mut out);
        assert_eq!(n, whole, "the partial fourth packet stays unconsumed");
        assert_eq!((t.msgs, t.stamped, t.lost), (3, 3, 2));
        assert_eq!(h.len(), 3);
        assert!(
            h.max().abs_diff(4000) <= 4,
            "latency is receive time minus stamp"
        );
        assert!(out.close.is_none());
    }

    #[test]
    fn large_containers_count_by_headers_and_find_gaps_from_the_ends() {
        let (mut t, mut h, mut conn) = fresh(State::Ready);
        // Seqs 1..=10 then 12..=20 (11 missing): two containers of 10 and 9.
        let mut buf = Vec::new();
        for seqs in [(1u64..=10).collect::<Vec<_>>(), (12u64..=20).collect()] {
            let mut inner = Vec::new();
            for s in seqs {
                encode_packet(1000, 0, &stamp::encode(s, 1_000_000, 64), &mut inner);
            }
            encode_packet(op::RAW, 0, &inner, &mut buf);
        }
        let mut out = Outcome::default();
        let len = buf.len();
        assert_eq!(
            parse_stream(&mut ctx(&mut t, &mut h), &mut conn, &mut buf, &mut out),
            len
        );
        assert_eq!((t.msgs, t.stamped, t.lost, t.out_of_order), (19, 19, 1, 0));
        assert_eq!(h.len(), 19, "one latency value per message");
        assert_eq!(conn.last_seq, 20);
    }

    #[test]
    fn tcp_runs_of_packets_count_like_containers() {
        let (mut t, mut h, mut conn) = fresh(State::Ready);
        let mut buf = Vec::new();
        for s in (1u64..=6).chain(8..=12) {
            encode_packet(1000, 0, &stamp::encode(s, 1_000_000, 64), &mut buf);
        }
        let whole = buf.len();
        encode_packet(1000, 0, &stamp::encode(13, 1_000_000, 64), &mut buf);
        buf.truncate(whole + 20);
        let mut out = Outcome::default();
        let n = parse_stream(&mut ctx(&mut t, &mut h), &mut conn, &mut buf, &mut out);
        assert_eq!(n, whole, "the partial packet stays unconsumed");
        assert_eq!((t.msgs, t.stamped, t.lost, t.out_of_order), (11, 11, 1, 0));
        assert_eq!(h.len(), 11);
        assert_eq!(conn.last_seq, 12);
    }

    #[test]
    fn op9_containers_unpack_and_auth_reply_is_reported() {
        let (mut t, mut h, mut conn) = fresh(State::Authing);
        let mut buf = encode_packet_to_vec(op::AUTH_REPLY, 1, b"");
        let mut inner = Vec::new();
        encode_packet(1000, 0, b"a", &mut inner);
        encode_packet(1001, 0, b"b", &mut inner);
        encode_packet(op::RAW, 0, &inner, &mut buf);
        let mut out = Outcome::default();
        let len = buf.len();
        assert_eq!(
            parse_stream(&mut ctx(&mut t, &mut h), &mut conn, &mut buf, &mut out),
            len
        );
        assert!(matches!(out.auth, Some(Ok(()))));
        assert_eq!(t.msgs, 2);
        assert_eq!(t.stamped, 0);
    }
}
