//! SVG plots of hotness data: the heat map (guest-physical address against time) and the
//! tier-model comparison. Drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use super::tier::{Grain, Policy, Report};
use super::{Error, HotnessLog, PAGE_SHIFT};
use crate::plot::{drawing, DrawError};

fn draw_err(path: &Path) -> impl Fn(DrawError) -> Error + '_ {
    let d = drawing(path);
    move |e| Error::Plot(d(e))
}

/// Most columns (time bins) and rows (address bins) of the heat map.
const MAX_COLS: usize = 240;
const MAX_ROWS: usize = 160;

/// Writes a two-panel SVG: top, the fraction of each address bin's 4 KiB pages dirtied in
/// each time bin (darker = more); bottom, MiB reported dirty per interval at 4 KiB grain and
/// at the derived 2 MiB grain.
pub fn write_heatmap(path: &Path, log: &HotnessLog, title: &str) -> Result<(), Error> {
    let d = draw_err(path);
    let n = log.intervals.len();
    let span_pages = log
        .ranges
        .iter()
        .map(|r| (r.0 + r.1) >> PAGE_SHIFT)
        .max()
        .unwrap_or(1)
        .max(1);
    let cols = n.clamp(1, MAX_COLS);
    let rows = (span_pages as usize).clamp(1, MAX_ROWS);
    let mut cells = vec![0u64; cols * rows];
    for (k, iv) in log.intervals.iter().enumerate() {
        let c = k * cols / n.max(1);
        for &p in &iv.pages {
            let r = ((p as u128 * rows as u128) / span_pages as u128) as usize;
            cells[c * rows + r.min(rows - 1)] += 1;
        }
    }
    let per_col = n.max(1) as f64 / cols as f64;
    let per_row = span_pages as f64 / rows as f64;
    let secs = |k: f64| k * log.interval_ns as f64 / 1e9;
    let t_end = secs(n.max(1) as f64);
    let mib = |p: f64| p * 4096.0 / (1 << 20) as f64;
    let y_end = mib(span_pages as f64);

    let root = SVGBackend::new(path, (1000, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    let (top, bottom) = root.split_vertically(540);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{title}: pages written (4 KiB grain, {} intervals of {:.0} ms)",
                n,
                log.interval_ns as f64 / 1e6
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_end, 0f64..y_end)
        .map_err(&d)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("time (s)")
        .y_desc("guest-physical address (MiB)")
        .draw()
        .map_err(&d)?;
    let rects = cells
        .iter()
        .enumerate()
        .filter(|(_, &v)| v > 0)
        .map(|(i, &v)| {
            let (c, r) = (i / rows, i % rows);
            let frac = (v as f64 / (per_col * per_row)).clamp(0.0, 1.0);
            let s = frac.sqrt();
            let color = HSLColor(0.16 * (1.0 - s), 1.0, 0.55 - 0.3 * s);
            let x0 = secs(c as f64 * per_col);
            let x1 = secs((c + 1) as f64 * per_col);
            let y0 = mib(r as f64 * per_row);
            let y1 = mib((r + 1) as f64 * per_row);
            Rectangle::new([(x0, y0), (x1, y1)], color.filled())
        });
    chart.draw_series(rects).map_err(&d)?;

    draw_per_interval(&bottom, log, t_end).map_err(&d)?;
    root.present().map_err(&d)?;
    Ok(())
}

/// The heat map's bottom panel: MiB dirtied per interval at 4 KiB and at 2 MiB grain.
fn draw_per_interval(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    log: &HotnessLog,
    t_end: f64,
) -> Result<(), DrawError> {
    let secs = |k: f64| k * log.interval_ns as f64 / 1e9;
    let mib = |p: f64| p * 4096.0 / (1 << 20) as f64;
    let per4: Vec<f64> = log
        .intervals
        .iter()
        .map(|i| mib(i.pages.len() as f64))
        .collect();
    let per2: Vec<f64> = log
        .huge_sets()
        .iter()
        .map(|s| s.len() as f64 * 2.0)
        .collect();
    let ymax = per2.iter().chain(&per4).copied().fold(1e-3, f64::max) * 1.1;
    let mut lines = ChartBuilder::on(area)
        .caption(
            "dirty MiB per interval: 4 KiB tracking vs derived 2 MiB tracking",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_end, 0f64..ymax)?;
    lines
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("MiB")
        .draw()?;
    for (vals, name, color) in [(&per4, "4 KiB", BLUE), (&per2, "2 MiB", RED)] {
        let pts: Vec<(f64, f64)> = vals
            .iter()
            .enumerate()
            .map(|(k, &v)| (secs(k as f64 + 0.5), v))
            .collect();
        lines
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    lines
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Writes a bar chart of the projected slowdown of each policy at each grain.
pub fn write_tier(path: &Path, report: &Report) -> Result<(), Error> {
    let d = draw_err(path);
    let ymax = report
        .results
        .iter()
        .map(|r| r.slowdown)
        .fold(report.params.latency_ratio, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "projected slowdown vs all-fast memory (fast tier {:.1} MiB, latency ratio {})",
                report.fast_pages as f64 / 256.0,
                report.params.latency_ratio
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..3f64, 0f64..ymax)
        .map_err(&d)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            Grain::ALL
                .get(i as usize)
                .filter(|_| (i - (*x - 0.5)).abs() < 0.01)
                .map(|g| g.name().to_string())
                .unwrap_or_default()
        })
        .x_desc("grain")
        .y_desc("slowdown (x)")
        .draw()
        .map_err(&d)?;
    for (pi, policy) in Policy::ALL.iter().enumerate() {
        let color = crate::plot::color(pi);
        let bars: Vec<Rectangle<(f64, f64)>> = report
            .results
            .iter()
            .filter(|r| r.policy == *policy)
            .filter_map(|r| {
                let gi = Grain::ALL.iter().position(|g| *g == r.grain)? as f64;
                let x0 = gi + 0.15 + 0.23 * pi as f64;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.21, r.slowdown)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(&d)?
            .label(policy.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 1.0), (3.0, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(&d)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(&d)?;
    root.present().map_err(&d)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hotness::tier::{simulate, Params};

    #[test]
    fn writes_both_plots() {
        let mut l = HotnessLog::new(100_000_000, 4.0, "test", vec![(0, 64 << 20)]).unwrap();
        for k in 0..20u64 {
            l.push_interval(
                (k + 1) * 100_000_000,
                (0..50).map(|i| (i * 37 + k * 5) % 16384).collect(),
            )
            .unwrap();
        }
        let dir = std::env::temp_dir().join(format!("hotplot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_heatmap(&dir.join("h.svg"), &l, "t").unwrap();
        let r = simulate(&[("g".into(), &l)], &Params::default()).unwrap();
        write_tier(&dir.join("t.svg"), &r).unwrap();
        assert!(std::fs::read_to_string(dir.join("h.svg"))
            .unwrap()
            .contains("<svg"));
        assert!(std::fs::read_to_string(dir.join("t.svg"))
            .unwrap()
            .contains("<svg"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
