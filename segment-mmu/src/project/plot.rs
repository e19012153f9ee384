//! The projection's SVG (`segvmm project --plot`).

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::report::{ProjOut, RunOut};
use crate::plot::{color, drawing, DrawError, Error};

/// The SVG: one panel per workload; per measured run, the measured bar (black, solid)
/// beside the projected bars (coloured, hatched outline), with the checked error above.
pub fn write_svg(path: &Path, out: &ProjOut, columns: &[String]) -> Result<(), Error> {
    let d = drawing(path);
    let mut groups: Vec<(String, u64)> = Vec::new();
    for r in &out.runs {
        if !groups.contains(&(r.workload.clone(), r.footprint)) {
            groups.push((r.workload.clone(), r.footprint));
        }
    }
    if groups.is_empty() {
        return Err(Error::Empty("runs"));
    }
    let per = 120 + 36 * (columns.len() as u32 + 1);
    let width = out
        .runs
        .iter()
        .filter(|r| r.workload == groups[0].0)
        .count()
        .max(1) as u32
        * per
        / 2
        + 200;
    let root = SVGBackend::new(path, (width.clamp(900, 2400), 420 * groups.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    for (area, (w, fp)) in root.split_evenly((groups.len(), 1)).iter().zip(&groups) {
        panel(area, out, columns, w, *fp).map_err(&d)?;
    }
    root.present().map_err(&d)?;
    Ok(())
}

/// One workload's panel: per measured run, the measured bar beside the projected bars.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    out: &ProjOut,
    columns: &[String],
    w: &str,
    fp: u64,
) -> Result<(), DrawError> {
    let runs: Vec<&RunOut> = out
        .runs
        .iter()
        .filter(|r| r.workload == w && r.footprint == fp)
        .collect();
    let n = runs.len();
    let series: Vec<String> = std::iter::once("measured".to_string())
        .chain(columns.iter().cloned())
        .collect();
    let mut ymax: f64 = 0.0;
    for r in &runs {
        ymax = ymax.max(r.measured_ns_per_op);
        for v in r.projected.values() {
            ymax = ymax.max(*v);
        }
    }
    let ymax = if ymax > 0.0 { ymax * 2.0 } else { 1.0 };
    let labels: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} / {} (err {})",
                r.environment,
                r.backing,
                r.model_error
                    .map_or("unchecked".to_string(), |e| format!("{:+.1}%", 100.0 * e))
            )
        })
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{w}, {} MiB: MEASURED (black) vs PROJECTED (colours), ns/op",
                fp >> 20
            ),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&|x| {
            let g = x - 0.5;
            if g >= -1e-6 && (g - g.round()).abs() < 1e-6 {
                labels.get(g.round() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ns per operation")
        .draw()?;
    draw_bars(&mut chart, &runs, &series)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 10))
        .draw()?;
    Ok(())
}

/// Per series (measured, then each design), one bar per run.
fn draw_bars(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    runs: &[&RunOut],
    series: &[String],
) -> Result<(), DrawError> {
    let bw = 0.8 / series.len() as f64;
    for (s, name) in series.iter().enumerate() {
        let measured = s == 0;
        let c = if measured { BLACK } else { color(s) };
        let mut rects = Vec::new();
        for (g, r) in runs.iter().enumerate() {
            let v = if measured {
                Some(r.measured_ns_per_op)
            } else {
                r.projected.get(name).copied()
            };
            let Some(v) = v else { continue };
            let x0 = g as f64 + 0.1 + s as f64 * bw;
            let style = if measured {
                c.filled()
            } else {
                c.mix(0.45).filled()
            };
            rects.push(Rectangle::new([(x0, 0.0), (x0 + bw * 0.9, v)], style));
            if !measured {
                rects.push(Rectangle::new(
                    [(x0, 0.0), (x0 + bw * 0.9, v)],
                    c.stroke_width(1),
                ));
            }
        }
        let label = if measured {
            "MEASURED".to_string()
        } else {
            format!("projected: {name}")
        };
        chart
            .draw_series(rects)?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 10, y + 5)],
                    if measured {
                        c.filled()
                    } else {
                        c.mix(0.45).filled()
                    },
                )
            });
    }
    Ok(())
}
