//! The latency plot: each contender's median percentile curve on one
//! chart, the percentile axis stretched toward the tail (one step per
//! "nine": 90, 99, 99.9, 99.99), latency in milliseconds.

use std::fmt::Write as _;

use crate::results::Report;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The axis ends at p99.99.
const MAX_NINES: f64 = 4.0;
const COLOURS: [&str; 4] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];

/// The x position of a percentile: −log10(1 − p/100), capped at p99.99.
fn nines(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-4);
    (-rest.log10()).clamp(0.0, MAX_NINES)
}

/// A round step for about `n` ticks up to `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || max.is_infinite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document of a report's latency curves.
pub fn plot(r: &Report) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let max_ms = r
        .contenders
        .iter()
        .flat_map(|c| c.curve.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let step = tick_step(max_ms, 5.0);
    let y_max = ((max_ms / step).ceil() * step).max(step);
    let x = |p: f64| LEFT + nines(p) / MAX_NINES * plot_w;
    let y = |ms: f64| TOP + plot_h - (ms / y_max).clamp(0.0, 1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="14">{} — latency by percentile ({} rps, {} connections)</text>"#,
        escape(&r.scenario),
        r.settings.rate,
        r.settings.connections
    );
    // Horizontal grid and latency labels.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            trim(v)
        );
        v += step;
    }
    // Vertical grid at the usual percentiles.
    for (p, label) in [
        (0.0, "p0"),
        (50.0, "p50"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
    ] {
        let xx = x(p);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (i, c) in r.contenders.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = c
            .curve
            .iter()
            .map(|(p, ms)| format!("{:.1},{:.1}", x(*p), y(*ms)))
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&c.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick value without needless decimals.
fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_helpers() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert_eq!(nines(100.0), MAX_NINES);
        assert_eq!(tick_step(0.0, 5.0), 1.0);
        assert_eq!(tick_step(f64::NAN, 5.0), 1.0);
        assert!((tick_step(2.3, 5.0) - 0.5).abs() < 1e-9);
        assert!((tick_step(47.0, 5.0) - 10.0).abs() < 1e-9);
        assert_eq!(trim(0.5), "0.5");
        assert_eq!(trim(10.0), "10");
        assert_eq!(escape("a<b&c"), "a&lt;b&amp;c");
    }
}
