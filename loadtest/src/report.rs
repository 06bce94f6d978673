//! Output: the summary table, the progress display, the SVG latency chart and the SVG chart
//! of series over time (`scale`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// A readable table of a JSON report: one row per field, nested objects on one line, and an
/// array of objects (`nodes`) one row per element, named `nodes[i]`.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    let Value::Object(map) = report else {
        return report.to_string();
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    for (key, value) in map {
        if key == "latency_curve" {
            continue;
        }
        match value {
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                for (i, item) in items.iter().enumerate() {
                    rows.push((format!("{key}[{i}]"), inline(item)));
                }
            }
            v => rows.push((key.clone(), inline(v))),
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let _ = writeln!(out, "{}", "-".repeat(width + 40));
    for (key, shown) in rows {
        let _ = writeln!(out, "{key:<width$}  {shown}");
    }
    let _ = writeln!(out, "{}", "-".repeat(width + 40));
    out
}

/// A value on one line: an object as `k v  k v`, an object inside it as `k {k v, k v}`.
fn inline(v: &Value) -> String {
    match v {
        Value::Object(inner) => inner
            .iter()
            .map(|(k, v)| match v {
                Value::Object(o) => format!(
                    "{k} {{{}}}",
                    o.iter()
                        .map(|(k, v)| format!("{k} {}", scalar(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                v => format!("{k} {}", scalar(v)),
            })
            .collect::<Vec<_>>()
            .join("  "),
        v => scalar(v),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 1000.0 {
                    format!("{f:.0}")
                } else if f.abs() >= 10.0 {
                    format!("{f:.1}")
                } else {
                    format!("{f:.3}")
                }
            }
            _ => n.to_string(),
        },
        Value::Object(_) | Value::Array(_) => v.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// A progress bar on a terminal, plain periodic lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    next_line: Instant,
    start: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = ProgressBar::new(total.max(1));
            if let Ok(style) =
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} open  {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Progress {
            bar,
            next_line: Instant::now() + Duration::from_secs(1),
            start: Instant::now(),
        }
    }

    pub fn update(&mut self, phase: &str, opened: u64, total: u64, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total.max(1));
                bar.set_position(opened);
                bar.set_message(format!("{phase}: {msg}"));
            }
            None => {
                if Instant::now() >= self.next_line {
                    self.next_line += Duration::from_secs(1);
                    eprintln!(
                        "[{:>6.1}s] {phase}: open {opened}/{total}  {msg}",
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A hand-written SVG chart of latency (µs) against percentile, log-scaled like HDR plots.
/// `series`: (label, curve of `[quantile, µs]`).
pub fn svg_chart(title: &str, series: &[(String, Vec<[f64; 2]>)]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let x_max = 4.5; // 99.99 % is 4; "max" at 4.5
    let xpos = |q: f64| {
        let x = if q >= 1.0 {
            x_max
        } else {
            (1.0 / (1.0 - q)).log10().min(4.0)
        };
        L + x / x_max * (W - L - R)
    };
    let y_top = series
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p[1]))
        .fold(0.0f64, f64::max);
    let (unit, div) = if y_top >= 5000.0 {
        ("ms", 1000.0)
    } else {
        ("µs", 1.0)
    };
    let y_top = nice_ceiling(y_top / div).max(1e-3);
    let ypos = |us: f64| T + (H - T - B) * (1.0 - (us / div) / y_top);
    let mut s = svg_open(W, H, title);
    for i in 0..=5 {
        let v = y_top * f64::from(i) / 5.0;
        let y = T + (H - T - B) * (1.0 - f64::from(i) / 5.0);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            trim_num(v)
        );
    }
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (1.0, "max"),
    ] {
        let x = xpos(q);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        (W + L) / 2.0,
        H - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency ({unit})</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (label, curve)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", xpos(p[0]), ypos(p[1])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = T + 16.0 * i as f64 + 8.0;
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            L + 12.0,
            ly - 3.0,
            L + 32.0,
            ly + 2.0,
            escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A hand-written SVG chart of series over time, one panel each, stacked and sharing the
/// time axis (seconds), styled like [`svg_chart`]. `panels`: (label with its unit, points
/// `[seconds, value]`).
pub fn svg_timeseries(title: &str, panels: &[(String, Vec<[f64; 2]>)]) -> String {
    const W: f64 = 720.0;
    const PANEL: f64 = 200.0;
    const L: f64 = 80.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const GAP: f64 = 30.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let n = panels.len().max(1) as f64;
    let h = T + n * PANEL + (n - 1.0) * GAP + B;
    let x_top = panels
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q[0]))
        .fold(0.0f64, f64::max);
    // Ticks every `x_step` (a nice step giving at most 7 of them), the axis ending at the first
    // tick past the data: a 302 s run ends at 350, not at 500.
    let x_step = nice_ceiling(x_top / 7.0).max(1e-3);
    let x_ticks = (x_top / x_step).ceil().max(1.0);
    let x_top = x_step * x_ticks;
    let xpos = |t: f64| L + (t / x_top) * (W - L - R);
    let mut s = svg_open(W, h, title);
    for (i, (label, points)) in panels.iter().enumerate() {
        let top = T + i as f64 * (PANEL + GAP);
        let bottom = top + PANEL;
        let y_top = nice_ceiling(points.iter().map(|p| p[1]).fold(0.0f64, f64::max)).max(1e-3);
        let ypos = |v: f64| top + PANEL * (1.0 - v / y_top);
        for j in 0..=4 {
            let v = y_top * f64::from(j) / 4.0;
            let y = ypos(v);
            let _ = writeln!(
                s,
                r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - R,
                L - 6.0,
                y + 4.0,
                trim_num(v)
            );
        }
        for j in 0..=x_ticks as u32 {
            let t = x_step * f64::from(j);
            let x = xpos(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                trim_num(t)
            );
        }
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", xpos(p[0]), ypos(p[1])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            L + 12.0,
            top + 9.0,
            L + 32.0,
            top + 14.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        (W + L) / 2.0,
        h - 10.0
    );
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * mag >= v {
            return step * mag;
        }
    }
    10.0 * mag
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The start of a chart: the `<svg>` element of `width` × `height`, a white background and the
/// centred `title`.
fn svg_open(width: f64, height: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeseries_axis_ends_at_the_first_tick_past_the_data() {
        let points: Vec<[f64; 2]> = (0..=302).map(|t| [f64::from(t), 1.0]).collect();
        let svg = svg_timeseries("run", &[("deliveries/s".into(), points)]);
        // Ticks every 50 s up to 350: not a 500 s axis half empty.
        assert!(svg.contains(">350</text>"), "{svg}");
        assert!(
            !svg.contains(">400</text>") && !svg.contains(">500</text>"),
            "{svg}"
        );
    }

    #[test]
    fn table_and_svg_render() {
        let v = serde_json::json!({"scenario": "echo", "msgs_per_s": 123456.78,
            "latency_us": {"p50": 12.5, "max": 900.0}, "errors": {}});
        let t = table(&v);
        assert!(t.contains("msgs_per_s"));
        assert!(t.contains("p50 12.5"));
        // A node list: one row per node, the nested latency in braces.
        let v = serde_json::json!({"deliveries": 10, "nodes": [
            {"url": "ws://a", "deliveries": 6, "latency_us": {"p50": 1.5, "p99": 20.0}},
            {"url": "ws://b", "deliveries": 4}]});
        let t = table(&v);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 5, "{t}");
        assert!(rows[1].starts_with("deliveries "), "{t}");
        assert!(
            rows[2].starts_with("nodes[0]")
                && rows[2].contains("deliveries 6")
                && rows[2].contains("latency_us {p50 1.500, p99 20.0}"),
            "{t}"
        );
        assert!(
            rows[3].starts_with("nodes[1]") && rows[3].contains("url ws://b"),
            "{t}"
        );
        let svg = svg_chart(
            "a <b>",
            &[("x".into(), vec![[0.0, 10.0], [0.99, 50.0], [1.0, 80.0]])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;"));
        assert_eq!(nice_ceiling(73.0), 100.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
