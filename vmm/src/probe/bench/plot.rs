//! The matrix's plots (SVG, plotters): ns/op per workload grouped by backing with one bar
//! per environment and the spread over repeats as a min–max whisker; and the slowdown of
//! each guest environment against native.

use std::path::Path;

use plotters::prelude::*;

use super::output::{Status, Summary};
use crate::memory::Backing;

pub use segment_mmu::plot::Error;
use segment_mmu::plot::{drawing, DrawError};

fn ordered<T: PartialEq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn color(env: &str, i: usize) -> RGBColor {
    match env {
        "native" => RGBColor(90, 90, 90),
        "guest-4k" => RGBColor(31, 119, 180),
        "guest-2m" => RGBColor(214, 39, 40),
        "guest-1g" => RGBColor(44, 160, 44),
        "linux" => RGBColor(148, 103, 189),
        _ => segment_mmu::plot::color(i),
    }
}

/// Labels the category centers of an axis over `0..n` (0.5, 1.5, ...).
fn category_label(names: &[String], x: f64) -> String {
    let g = x - 0.5;
    if g >= -1e-6 && (g - g.round()).abs() < 1e-6 {
        names.get(g.round() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// A bar's value: (median, min, max), or a note where there is none; None: no such cell.
type BarValue = Option<Result<(f64, f64, f64), &'static str>>;

/// One grouped bar panel: groups on x, one bar per series, with whiskers.
struct Bars<'a> {
    title: String,
    y_desc: &'a str,
    groups: Vec<String>,
    series: &'a [String],
    /// (group, series) -> (median, min, max) or None with a note.
    value: &'a dyn Fn(usize, usize) -> BarValue,
    reference_line: Option<f64>,
}

fn draw_bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    b: &Bars,
) -> Result<(), DrawError> {
    let ng = b.groups.len().max(1);
    let ns = b.series.len().max(1);
    let mut ymax = b.reference_line.unwrap_or(0.0);
    for g in 0..ng {
        for s in 0..ns {
            if let Some(Ok((_, _, hi))) = (b.value)(g, s) {
                ymax = ymax.max(hi);
            }
        }
    }
    let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
    let groups = b.groups.clone();
    let mut chart = ChartBuilder::on(area)
        .caption(&b.title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..ng as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * ng + 1)
        .x_label_formatter(&|x| category_label(&groups, *x))
        .y_desc(b.y_desc)
        .draw()?;
    let w = 0.8 / ns as f64;
    for (s, name) in b.series.iter().enumerate() {
        let c = color(name, s);
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        let mut notes = Vec::new();
        for g in 0..ng {
            let x0 = g as f64 + 0.1 + s as f64 * w;
            match (b.value)(g, s) {
                Some(Ok((m, lo, hi))) => {
                    rects.push(Rectangle::new([(x0, 0.0), (x0 + w * 0.9, m)], c.filled()));
                    let xc = x0 + w * 0.45;
                    whiskers.push(PathElement::new(
                        vec![(xc, lo), (xc, hi)],
                        BLACK.stroke_width(1),
                    ));
                    whiskers.push(PathElement::new(
                        vec![(xc - w * 0.2, lo), (xc + w * 0.2, lo)],
                        BLACK.stroke_width(1),
                    ));
                    whiskers.push(PathElement::new(
                        vec![(xc - w * 0.2, hi), (xc + w * 0.2, hi)],
                        BLACK.stroke_width(1),
                    ));
                }
                Some(Err(note)) => notes.push(Text::new(
                    note,
                    (x0, ymax * 0.02),
                    ("sans-serif", 10).into_font().color(&c),
                )),
                None => {}
            }
        }
        chart
            .draw_series(rects)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        chart.draw_series(whiskers)?;
        chart.draw_series(notes)?;
    }
    if let Some(r) = b.reference_line {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, r), (ng as f64, r)],
            BLACK.stroke_width(1),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn panel_grid(n: usize) -> (usize, usize) {
    let cols = n.clamp(1, 3);
    (n.div_ceil(cols), cols)
}

/// `ns_per_op.svg`: one panel per workload (and footprint), backings on x, one bar per
/// environment: median ns/op with the min–max whisker over repeats.
pub fn write_ns_per_op(path: &Path, summary: &[Summary]) -> Result<(), Error> {
    if summary.is_empty() {
        return Err(Error::Empty("results"));
    }
    let d = drawing(path);
    let panels = ordered(summary.iter().map(|s| (s.workload.clone(), s.footprint)));
    let envs = ordered(summary.iter().map(|s| s.environment.clone()));
    let backings: Vec<Backing> = ordered(summary.iter().map(|s| s.backing));
    let (rows, cols) = panel_grid(panels.len());
    let root = SVGBackend::new(path, (520 * cols as u32, 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    for (area, (workload, fp)) in root.split_evenly((rows, cols)).iter().zip(&panels) {
        let value = |g: usize, s: usize| -> BarValue {
            let x = summary.iter().find(|x| {
                &x.workload == workload
                    && x.footprint == *fp
                    && x.backing == backings[g]
                    && x.environment == envs[s]
            })?;
            Some(
                match (x.median_ns_per_op, x.min_ns_per_op, x.max_ns_per_op) {
                    (Some(m), Some(lo), Some(hi)) => Ok((m, lo, hi)),
                    _ if x.status == Status::Unavailable => Err("n/a"),
                    _ => Err("failed"),
                },
            )
        };
        let bars = Bars {
            title: format!("{workload}, {} MiB: ns/op (median, min–max)", fp >> 20),
            y_desc: "ns per operation",
            groups: backings.iter().map(|b| format!("backing {b}")).collect(),
            series: &envs,
            value: &value,
            reference_line: None,
        };
        draw_bars(area, &bars).map_err(&d)?;
    }
    root.present().map_err(&d)?;
    Ok(())
}

/// `slowdown.svg`: for every workload × backing (× footprint), the guest environments'
/// median over the native median; the line marks 1 (native speed).
pub fn write_slowdown(path: &Path, summary: &[Summary]) -> Result<(), Error> {
    let guests: Vec<String> = ordered(
        summary
            .iter()
            .filter(|s| s.environment != "native")
            .map(|s| s.environment.clone()),
    );
    let groups = ordered(
        summary
            .iter()
            .map(|s| (s.workload.clone(), s.backing, s.footprint)),
    );
    if guests.is_empty()
        || groups.is_empty()
        || !summary.iter().any(|s| s.slowdown_vs_native.is_some())
    {
        return Err(Error::Empty("results"));
    }
    let d = drawing(path);
    let multi_fp = ordered(groups.iter().map(|g| g.2)).len() > 1;
    let root =
        SVGBackend::new(path, ((110 * groups.len() as u32).max(600), 420)).into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    let value = |g: usize, s: usize| -> BarValue {
        let (w, b, fp) = &groups[g];
        let x = summary.iter().find(|x| {
            &x.workload == w && x.backing == *b && x.footprint == *fp && x.environment == guests[s]
        })?;
        let native = summary.iter().find(|x| {
            &x.workload == w && x.backing == *b && x.footprint == *fp && x.environment == "native"
        })?;
        Some(
            match (
                x.slowdown_vs_native,
                x.min_ns_per_op,
                x.max_ns_per_op,
                native.median_ns_per_op,
            ) {
                (Some(r), Some(lo), Some(hi), Some(n)) => Ok((r, lo / n, hi / n)),
                _ if x.status == Status::Unavailable => Err("n/a"),
                _ => Err("failed"),
            },
        )
    };
    let bars = Bars {
        title: "Slowdown of the measurement guest against native (median; whisker: min–max over the native median)".into(),
        y_desc: "guest / native",
        groups: groups.iter().map(|(w, b, fp)| if multi_fp { format!("{w}/{b}/{}M", fp >> 20) } else { format!("{w}/{b}") }).collect(),
        series: &guests,
        value: &value,
        reference_line: Some(1.0),
    };
    draw_bars(&root, &bars).map_err(&d)?;
    root.present().map_err(&d)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::bench::output::summarize;
    use crate::probe::bench::output::tests::row;
    use crate::probe::bench::Environment;
    use crate::probe::layout::PageSize;

    #[test]
    fn plots_are_written() {
        let g = Environment::Guest(PageSize::Size4K);
        let rows = vec![
            row(Environment::Native, Backing::Thp, 0, Some(100.0)),
            row(g, Backing::Thp, 0, Some(300.0)),
            row(Environment::Native, Backing::Anon4k, 0, Some(150.0)),
            row(g, Backing::Anon4k, 0, Some(450.0)),
            row(g, Backing::Huge1g, 0, None),
        ];
        let s = summarize(&rows);
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("ns_per_op.svg");
        let b = dir.path().join("slowdown.svg");
        write_ns_per_op(&a, &s).unwrap();
        write_slowdown(&b, &s).unwrap();
        let svg = std::fs::read_to_string(&a).unwrap();
        assert!(
            svg.contains("<svg")
                && svg.contains("guest-4k")
                && svg.contains("backing thp")
                && svg.contains("n/a")
        );
        assert!(std::fs::read_to_string(&b).unwrap().contains("chase/thp"));
        assert!(matches!(write_ns_per_op(&a, &[]), Err(Error::Empty(_))));
    }

    #[test]
    fn category_labels_sit_at_centers() {
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!(category_label(&names, 0.5), "a");
        assert_eq!(category_label(&names, 1.5), "b");
        assert_eq!(category_label(&names, 1.0), "");
        assert_eq!(category_label(&names, 2.5), "");
    }
}
