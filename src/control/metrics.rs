//! `GET /metrics`: Prometheus text exposition (format 0.0.4) built from the
//! shards' latest reports and the control core's own counters.

use std::fmt::Write;
use std::time::Instant;

use crate::fanout::{CloseReason, LoopTurnHistogram, ShardReport};

use super::state::{ControlCounters, ShardState, PUSH_KINDS};

/// Reads one cumulative counter out of a shard report.
type ReportField = fn(&ShardReport) -> u64;

/// Everything the renderer needs about one shard.
pub struct ShardView<'a> {
    pub report: Option<&'a ShardReport>,
    pub report_age_secs: Option<f64>,
    pub ring_queued: usize,
    pub ring_capacity: usize,
    pub stopped: bool,
}

/// Builds the views from the control state's pieces.
pub fn shard_views<'a>(
    shards: &'a [ShardState],
    rings: &[(usize, usize, bool)],
    now: Instant,
) -> Vec<ShardView<'a>> {
    shards
        .iter()
        .zip(rings)
        .map(|(s, &(queued, capacity, stopped))| ShardView {
            report: s.report.as_deref(),
            report_age_secs: s.received_at.map(|t| now.duration_since(t).as_secs_f64()),
            ring_queued: queued,
            ring_capacity: capacity,
            stopped,
        })
        .collect()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one metric family with a `shard` label, taking the value from
/// each shard's latest report (shards that have not reported are left out).
fn per_shard(
    out: &mut String,
    shards: &[ShardView<'_>],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&ShardReport) -> u64,
) {
    header(out, name, kind, help);
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(r));
        }
    }
}

/// Renders the whole exposition.
pub fn render(shards: &[ShardView<'_>], control: &ControlCounters, uptime_secs: f64) -> String {
    let mut out = String::with_capacity(8 * 1024);

    header(&mut out, "corecast_up", "gauge", "1 while the server runs.");
    let _ = writeln!(out, "corecast_up 1");
    header(
        &mut out,
        "corecast_uptime_seconds",
        "gauge",
        "Seconds since the control core started.",
    );
    let _ = writeln!(out, "corecast_uptime_seconds {uptime_secs:.3}");
    header(&mut out, "corecast_shards", "gauge", "Number of shards.");
    let _ = writeln!(out, "corecast_shards {}", shards.len());

    header(
        &mut out,
        "corecast_connections",
        "gauge",
        "Open client connections by shard and protocol (pending = not yet authenticated).",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            for (proto, n) in [
                ("ws", r.conns_ws),
                ("tcp", r.conns_tcp),
                ("pending", r.conns_pending),
            ] {
                let _ = writeln!(
                    out,
                    "corecast_connections{{shard=\"{i}\",protocol=\"{proto}\"}} {n}"
                );
            }
        }
    }

    let counters: [(&str, &str, ReportField); 12] = [
        ("corecast_accepts_total", "Connections accepted.", |r| {
            r.counters.accepts
        }),
        (
            "corecast_accept_errors_total",
            "Failed accepts (other than a full file table).",
            |r| r.counters.accept_errors,
        ),
        (
            "corecast_accept_table_full_total",
            "Accepts refused: registered file table full.",
            |r| r.counters.accept_table_full,
        ),
        ("corecast_auth_ok_total", "Successful op-7 auths.", |r| {
            r.counters.auth_ok
        }),
        (
            "corecast_auth_failures_total",
            "Rejected op-7 auths.",
            |r| r.counters.auth_failures,
        ),
        (
            "corecast_messages_in_total",
            "Packets received from clients.",
            |r| r.counters.msgs_in,
        ),
        (
            "corecast_bytes_in_total",
            "Bytes received from clients.",
            |r| r.counters.bytes_in,
        ),
        (
            "corecast_messages_out_total",
            "Messages queued to clients.",
            |r| r.counters.msgs_out,
        ),
        (
            "corecast_bytes_out_total",
            "Bytes written to client sockets.",
            |r| r.counters.bytes_out,
        ),
        ("corecast_sends_total", "Send operations completed.", |r| {
            r.counters.sends
        }),
        (
            "corecast_shard_pushes_total",
            "Pushes taken from the fan-out ring.",
            |r| r.counters.pushes,
        ),
        (
            "corecast_reports_dropped_total",
            "Shard reports lost to a full report ring.",
            |r| r.counters.reports_dropped,
        ),
    ];
    for (name, help, f) in counters {
        per_shard(&mut out, shards, name, "counter", help, f);
    }

    header(
        &mut out,
        "corecast_drops_total",
        "counter",
        "Messages dropped, by shard and reason.",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            let _ = writeln!(
                out,
                "corecast_drops_total{{shard=\"{i}\",reason=\"over_byte_cap\"}} {}",
                r.counters.dropped_over_cap
            );
        }
    }
    for (i, n) in control.push_timeouts.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_drops_total{{shard=\"{i}\",reason=\"ring_full_timeout\"}} {n}"
        );
    }
    for (i, n) in control.push_closed.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_drops_total{{shard=\"{i}\",reason=\"shard_stopped\"}} {n}"
        );
    }

    header(
        &mut out,
        "corecast_closes_total",
        "counter",
        "Connections closed, by shard and reason.",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            for reason in CloseReason::ALL {
                let _ = writeln!(
                    out,
                    "corecast_closes_total{{shard=\"{i}\",reason=\"{}\"}} {}",
                    reason.as_str(),
                    r.counters.closes_for(reason)
                );
            }
        }
    }

    header(
        &mut out,
        "corecast_index_entries",
        "gauge",
        "Sizes of a shard's indexes and tables.",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            let x = &r.index;
            for (name, n) in [
                ("slab", x.slab),
                ("rooms", x.rooms),
                ("room_members", x.room_members),
                ("keys", x.keys),
                ("mids", x.mids),
                ("timers", x.timers),
                ("send_queues", x.send_queues),
                ("spill_buffers", x.spill_buffers),
                ("filters", x.filters),
            ] {
                let _ = writeln!(
                    out,
                    "corecast_index_entries{{shard=\"{i}\",index=\"{name}\"}} {n}"
                );
            }
        }
    }

    header(
        &mut out,
        "corecast_ring_occupancy",
        "gauge",
        "Messages queued in the control-to-shard ring.",
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_ring_occupancy{{shard=\"{i}\"}} {}",
            s.ring_queued
        );
    }
    header(
        &mut out,
        "corecast_ring_capacity",
        "gauge",
        "Capacity of the control-to-shard ring.",
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_ring_capacity{{shard=\"{i}\"}} {}",
            s.ring_capacity
        );
    }
    header(
        &mut out,
        "corecast_shard_stopped",
        "gauge",
        "1 when the shard thread has ended.",
    );
    for (i, s) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_shard_stopped{{shard=\"{i}\"}} {}",
            u8::from(s.stopped)
        );
    }
    header(
        &mut out,
        "corecast_shard_report_age_seconds",
        "gauge",
        "Age of the shard's latest report.",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(age) = s.report_age_secs {
            let _ = writeln!(
                out,
                "corecast_shard_report_age_seconds{{shard=\"{i}\"}} {age:.3}"
            );
        }
    }

    // Shards count turns in power-of-two microsecond buckets and keep the
    // total turn time, so the family has all of _bucket, _sum and _count.
    header(
        &mut out,
        "corecast_loop_turn_seconds",
        "histogram",
        "Duration of shard loop turns.",
    );
    for (i, s) in shards.iter().enumerate() {
        if let Some(r) = s.report {
            let mut cumulative = 0u64;
            for (b, n) in r.loop_turns.buckets.iter().enumerate() {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "corecast_loop_turn_seconds_bucket{{shard=\"{i}\",le=\"{}\"}} {cumulative}",
                    LoopTurnHistogram::upper_bound_secs(b)
                );
            }
            let _ = writeln!(
                out,
                "corecast_loop_turn_seconds_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "corecast_loop_turn_seconds_sum{{shard=\"{i}\"}} {}",
                r.loop_turns.sum_nanos as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "corecast_loop_turn_seconds_count{{shard=\"{i}\"}} {cumulative}"
            );
        }
    }

    render_control(&mut out, control);
    out
}

fn render_control(out: &mut String, c: &ControlCounters) {
    header(
        out,
        "corecast_http_requests_total",
        "counter",
        "Control API requests by route and status.",
    );
    let mut reqs: Vec<_> = c.http_requests.iter().collect();
    reqs.sort();
    for ((route, status), n) in reqs {
        let _ = writeln!(
            out,
            "corecast_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    header(
        out,
        "corecast_http_connections_accepted_total",
        "counter",
        "Control API connections accepted.",
    );
    let _ = writeln!(
        out,
        "corecast_http_connections_accepted_total {}",
        c.http_conns_accepted
    );
    header(
        out,
        "corecast_http_connections_rejected_total",
        "counter",
        "Control API connections closed at once: too many open.",
    );
    let _ = writeln!(
        out,
        "corecast_http_connections_rejected_total {}",
        c.http_conns_rejected
    );
    header(
        out,
        "corecast_http_connections",
        "gauge",
        "Open control API connections.",
    );
    let _ = writeln!(out, "corecast_http_connections {}", c.http_conns_open);

    header(
        out,
        "corecast_pushes_total",
        "counter",
        "Pushes accepted by control, by target kind.",
    );
    for (kind, n) in PUSH_KINDS.iter().zip(c.pushes) {
        let _ = writeln!(out, "corecast_pushes_total{{target=\"{kind}\"}} {n}");
    }
    header(
        out,
        "corecast_push_body_bytes_total",
        "counter",
        "Message bytes accepted by control.",
    );
    let _ = writeln!(out, "corecast_push_body_bytes_total {}", c.push_body_bytes);
    header(
        out,
        "corecast_ring_full_waits_total",
        "counter",
        "Pushes that waited for room in a full shard ring.",
    );
    for (i, n) in c.ring_full_waits.iter().enumerate() {
        let _ = writeln!(out, "corecast_ring_full_waits_total{{shard=\"{i}\"}} {n}");
    }
    header(
        out,
        "corecast_ring_blocked_waits_total",
        "counter",
        "Push-timeout periods a Kafka batch waited on a full shard ring (held, not dropped).",
    );
    for (i, n) in c.ring_blocked_waits.iter().enumerate() {
        let _ = writeln!(
            out,
            "corecast_ring_blocked_waits_total{{shard=\"{i}\"}} {n}"
        );
    }
    header(
        out,
        "corecast_shard_reports_total",
        "counter",
        "Reports received from each shard.",
    );
    for (i, n) in c.reports_received.iter().enumerate() {
        let _ = writeln!(out, "corecast_shard_reports_total{{shard=\"{i}\"}} {n}");
    }
    header(
        out,
        "corecast_room_counts_sent_total",
        "counter",
        "Node-wide room-count snapshots sent to shards.",
    );
    let _ = writeln!(
        out,
        "corecast_room_counts_sent_total {}",
        c.room_counts_sent
    );
    header(
        out,
        "corecast_room_counts_skipped_total",
        "counter",
        "Room-count snapshots skipped on a full shard ring.",
    );
    let _ = writeln!(
        out,
        "corecast_room_counts_skipped_total {}",
        c.room_counts_skipped
    );
    header(
        out,
        "corecast_paced_broadcasts",
        "gauge",
        "push/all deliveries still being paced by `speed`.",
    );
    let _ = writeln!(out, "corecast_paced_broadcasts {}", c.paced_in_flight);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_shard_and_control_families() {
        let mut r = ShardReport::empty(0);
        r.conns_ws = 3;
        r.conns_tcp = 2;
        r.counters.accepts = 7;
        r.counters.closes[CloseReason::AuthFailed as usize] = 1;
        r.rooms.push((Arc::from("live://1"), 5));
        r.loop_turns.buckets[0] = 4;
        r.loop_turns.buckets[3] = 1;
        let views = vec![
            ShardView {
                report: Some(&r),
                report_age_secs: Some(0.5),
                ring_queued: 2,
                ring_capacity: 8,
                stopped: false,
            },
            ShardView {
                report: None,
                report_age_secs: None,
                ring_queued: 0,
                ring_capacity: 8,
                stopped: true,
            },
        ];
        let mut c = ControlCounters {
            push_timeouts: vec![0, 1],
            push_closed: vec![0, 0],
            ring_full_waits: vec![0, 3],
            reports_received: vec![1, 0],
            ..Default::default()
        };
        c.pushes[0] = 9;
        c.http_requests.insert(("push_room", 200), 9);
        let text = render(&views, &c, 1.0);
        for line in [
            "corecast_connections{shard=\"0\",protocol=\"ws\"} 3",
            "corecast_connections{shard=\"0\",protocol=\"tcp\"} 2",
            "corecast_accepts_total{shard=\"0\"} 7",
            "corecast_closes_total{shard=\"0\",reason=\"auth_failed\"} 1",
            "corecast_ring_occupancy{shard=\"0\"} 2",
            "corecast_shard_stopped{shard=\"1\"} 1",
            "corecast_drops_total{shard=\"1\",reason=\"ring_full_timeout\"} 1",
            "corecast_loop_turn_seconds_bucket{shard=\"0\",le=\"0.000002\"} 4",
            "corecast_loop_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"} 5",
            "corecast_pushes_total{target=\"room\"} 9",
            "corecast_http_requests_total{route=\"push_room\",status=\"200\"} 9",
            "corecast_ring_full_waits_total{shard=\"1\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("corecast_connections{shard=\"1\""));
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "undeclared {name}"
            );
        }
    }

    #[test]
    fn loop_turn_histogram_has_bucket_sum_and_count() {
        use std::time::Duration;
        let mut r = ShardReport::empty(0);
        r.loop_turns.record(Duration::from_micros(1)); // bucket 0
        r.loop_turns.record(Duration::from_micros(3)); // bucket 1
        r.loop_turns.record(Duration::from_micros(1500)); // bucket 10
        let views = vec![ShardView {
            report: Some(&r),
            report_age_secs: Some(0.0),
            ring_queued: 0,
            ring_capacity: 8,
            stopped: false,
        }];
        let text = render(&views, &ControlCounters::default(), 1.0);
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(value("corecast_loop_turn_seconds_count{shard=\"0\"}"), 3.0);
        let sum = value("corecast_loop_turn_seconds_sum{shard=\"0\"}");
        assert!((sum - 0.001504).abs() < 1e-12, "sum {sum}");
        assert_eq!(
            value("corecast_loop_turn_seconds_bucket{shard=\"0\",le=\"0.000004\"}"),
            2.0
        );
        assert_eq!(
            value("corecast_loop_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"}"),
            3.0
        );
        // Prometheus order within a histogram: buckets, then _sum, then _count.
        let pos = |p: &str| text.find(p).unwrap();
        assert!(pos("le=\"+Inf\"") < pos("corecast_loop_turn_seconds_sum"));
        assert!(pos("corecast_loop_turn_seconds_sum") < pos("corecast_loop_turn_seconds_count"));
    }
}
