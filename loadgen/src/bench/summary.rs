//! The one-screen summary printed at the end of `bench`.

use super::{BenchReport, Size};

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{:.0}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

impl BenchReport {
    /// One screen: each figure, and its ratio to the ceiling where one applies.
    pub fn print_summary(&self) {
        let m = &self.machine;
        println!(
            "corecast bench ({:?}) — {} CPUs, Linux {}, server on CPU {}, loadgen on CPU {}, batching window {}",
            self.size.unwrap_or(Size::Standard),
            m.nproc,
            m.kernel,
            self.server_cpus,
            self.loadgen_cpu,
            if self.batch_window_ms == 0 {
                "one loop turn".to_string()
            } else {
                format!("{} ms", self.batch_window_ms)
            }
        );
        println!(
            "{:<34} {:>14} {:>12}  note",
            "figure", "value", "vs ceiling"
        );
        println!("{}", "-".repeat(78));
        let row = |name: &str, v: String, r: String, note: String| {
            println!("{name:<34} {v:>14} {r:>12}  {note}");
        };
        if let Some(c) = &self.ceiling {
            row(
                "ceiling connect+accept/s",
                fmt_rate(c.connects_per_sec),
                "100%".into(),
                String::new(),
            );
            row(
                "ceiling sends/s (64 B)",
                fmt_rate(c.sends_per_sec),
                "100%".into(),
                String::new(),
            );
            row(
                "ceiling frames/s (8 per SendMsg)",
                fmt_rate(c.batched_frames_per_sec),
                String::new(),
                String::new(),
            );
        }
        if let Some(c) = &self.conns {
            row(
                "conns: connect+WS+auth/s",
                fmt_rate(c.connects_per_sec),
                ratio(self.ratios.connects),
                format!("{} conns", c.authed),
            );
            row(
                "conns: server RSS per conn",
                format!("{:.0} B", c.server_bytes_per_conn),
                String::new(),
                format!("loadgen {:.0} B/conn", c.loadgen_bytes_per_conn),
            );
        }
        for (name, r, rat) in [
            (
                "broadcast ws",
                &self.broadcast_ws,
                self.ratios.broadcast_ws_frames,
            ),
            (
                "broadcast tcp",
                &self.broadcast_tcp,
                self.ratios.broadcast_tcp_frames,
            ),
            ("unicast ws", &self.unicast, None),
        ] {
            if let Some(r) = r {
                row(
                    &format!("{name}: msgs/s"),
                    fmt_rate(r.msgs_per_sec),
                    ratio(rat),
                    format!("{} of {} delivered", r.received, r.expected),
                );
                row(
                    &format!("{name}: latency p50/p99"),
                    format!("{}/{} µs", r.latency.p50_us, r.latency.p99_us),
                    String::new(),
                    format!("{} lost by seq", r.gap_lost),
                );
            }
        }
        if let Some(s) = &self.storm {
            row(
                "storm: sessions/s",
                fmt_rate(s.sessions_per_sec),
                String::new(),
                format!("{} failed", s.failed),
            );
        }
        if let Some(s) = &self.slow {
            row(
                "slow: healthy p99 vs baseline",
                format!("{:.2}×", s.p99_ratio),
                String::new(),
                format!("{:.0}% slow clients", s.slow_share * 100.0),
            );
        }
        for f in &self.failures {
            println!("FAILED {f}");
        }
    }
}
