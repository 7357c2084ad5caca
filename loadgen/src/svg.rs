//! A hand-written SVG plot of the push scenarios' time series: one panel per
//! scenario, delivered messages/s (left axis, blue) and p99 latency (right
//! axis, red) over time. Written by hand to keep the loadgen's dependencies small.

use std::fmt::Write;

use crate::scenario::push::Sample;

const PANEL_W: f64 = 760.0;
const PANEL_H: f64 = 220.0;
const MARGIN_L: f64 = 80.0;
const MARGIN_R: f64 = 80.0;
const MARGIN_T: f64 = 30.0;
const MARGIN_B: f64 = 40.0;

/// Renders `(title, samples)` panels stacked vertically.
pub fn render(title: &str, panels: &[(String, Vec<Sample>)]) -> String {
    let width = PANEL_W;
    let height = 40.0 + panels.len().max(1) as f64 * PANEL_H;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        width / 2.0,
        esc(title)
    );
    for (i, (name, samples)) in panels.iter().enumerate() {
        panel(&mut s, 40.0 + i as f64 * PANEL_H, name, samples);
    }
    if panels.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="20" y="60">no push scenario produced samples</text>"#
        );
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, top: f64, name: &str, samples: &[Sample]) {
    let x0 = MARGIN_L;
    let x1 = PANEL_W - MARGIN_R;
    let y0 = top + PANEL_H - MARGIN_B;
    let y1 = top + MARGIN_T;
    let t_max = samples.iter().map(|p| p.t).fold(1e-9, f64::max);
    let m_max = nice(samples.iter().map(|p| p.msgs_per_sec).fold(1.0, f64::max));
    let l_max = nice(
        samples
            .iter()
            .map(|p| p.p99_us as f64 / 1000.0)
            .fold(0.1, f64::max),
    );
    let px = |t: f64| x0 + (x1 - x0) * t / t_max;
    let py = |v: f64, max: f64| y0 - (y0 - y1) * v / max;
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-size="13">{}</text>"#,
        top + 18.0,
        esc(name)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        x1 - x0,
        y0 - y1
    );
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let y = y0 - (y0 - y1) * f;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#1f5fbf">{}</text><text x="{}" y="{}" fill="#c0392b">{:.1}</text>"##,
            x0 - 4.0,
            y + 4.0,
            si(m_max * f),
            x1 + 4.0,
            y + 4.0,
            l_max * f
        );
        let t = t_max * f;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{t:.1}s</text>"#,
            px(t),
            y0 + 14.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#1f5fbf" transform="rotate(-90 {} {})" text-anchor="middle">delivered msgs/s</text>"##,
        x0 - 58.0,
        (y0 + y1) / 2.0,
        x0 - 58.0,
        (y0 + y1) / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#c0392b" transform="rotate(90 {} {})" text-anchor="middle">p99 latency (ms)</text>"##,
        x1 + 50.0,
        (y0 + y1) / 2.0,
        x1 + 50.0,
        (y0 + y1) / 2.0
    );
    let line = |f: &dyn Fn(&Sample) -> (f64, f64)| {
        samples
            .iter()
            .map(|p| {
                let (x, y) = f(p);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let msgs = line(&|p| (px(p.t), py(p.msgs_per_sec, m_max)));
    let lat = line(&|p| (px(p.t), py(p.p99_us as f64 / 1000.0, l_max)));
    let _ = writeln!(
        s,
        r##"<polyline points="{msgs}" fill="none" stroke="#1f5fbf" stroke-width="2"/>"##
    );
    let _ = writeln!(
        s,
        r##"<polyline points="{lat}" fill="none" stroke="#c0392b" stroke-width="1.5" stroke-dasharray="4 2"/>"##
    );
}

/// Round an axis maximum up to 1, 2 or 5 × 10^k.
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_panel_per_scenario() {
        let samples: Vec<Sample> = (1..=4)
            .map(|i| Sample {
                t: i as f64 * 0.5,
                msgs_per_sec: 1000.0 * i as f64,
                p99_us: 1500,
                ..Default::default()
            })
            .collect();
        let svg = render(
            "t <1>",
            &[("a".into(), samples.clone()), ("b".into(), samples)],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(nice(3.2), 5.0);
        assert_eq!(nice(120.0), 200.0);
    }
}
