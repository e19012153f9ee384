//! SVG plots of a set of runs: fragmentation over time, and segments per VM.
//!
//! Drawn with plotters' SVG backend so the files open in any browser and diff as text.

use std::path::Path;

use plotters::prelude::*;

use super::results::Report;

use crate::plot::drawing;
pub use crate::plot::Error;

/// Writes a two-panel SVG to `path`: top, largest free extent over free memory against
/// simulated time, one line per run; bottom, the number of VMs placed in k segments on a
/// log scale, one bar per run and k (rejected VMs are shown at k = 0).
pub fn write_svg(path: &Path, reports: &[Report]) -> Result<(), Error> {
    if reports.is_empty() {
        return Err(Error::Empty("runs"));
    }
    let d = drawing(path);
    let root = SVGBackend::new(path, (1300, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(&d)?;
    // One legend for both panels, beside them, so that it hides no data.
    let (plots, legend) = root.split_horizontally(1000);
    let (top, bottom) = plots.split_vertically(450);
    for (i, r) in reports.iter().enumerate() {
        let color = crate::plot::color(i);
        let y = 50 + 24 * i as i32;
        legend
            .draw(&Rectangle::new([(10, y), (34, y + 14)], color.filled()))
            .map_err(&d)?;
        legend
            .draw(&Text::new(run_label(r), (42, y), ("sans-serif", 15)))
            .map_err(&d)?;
    }

    let tmax = reports
        .iter()
        .flat_map(|r| r.fragmentation.last())
        .map(|s| s.t as f64 / 3600.0)
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Fragmentation: largest free extent / free memory (sum over hosts)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..tmax, 0f64..1.05f64)
        .map_err(&d)?;
    chart
        .configure_mesh()
        .x_desc("simulated time (h)")
        .y_desc("largest extent / free")
        .draw()
        .map_err(&d)?;
    for (i, r) in reports.iter().enumerate() {
        let color = crate::plot::color(i);
        let pts: Vec<(f64, f64)> = r
            .fragmentation
            .iter()
            .map(|s| (s.t as f64 / 3600.0, s.largest_over_free))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(&d)?;
    }

    let maxk = reports
        .iter()
        .flat_map(|r| r.segments_histogram.keys())
        .copied()
        .max()
        .unwrap_or(1);
    let ymax = reports.iter().map(|r| r.vms).max().unwrap_or(1).max(1) as f64 * 2.0;
    let mut hist = ChartBuilder::on(&bottom)
        .caption(
            "VMs by number of segments (0 = rejected)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..maxk as f64 + 0.5, (0.5f64..ymax).log_scale())
        .map_err(&d)?;
    hist.configure_mesh()
        .x_desc("segments per VM")
        .y_desc("VMs (log)")
        .x_labels(maxk + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(&d)?;
    let n = reports.len() as f64;
    let width = 0.8 / n;
    for (i, r) in reports.iter().enumerate() {
        let color = crate::plot::color(i);
        let mut bars: Vec<(usize, u64)> =
            r.segments_histogram.iter().map(|(&k, &v)| (k, v)).collect();
        bars.push((0, r.rejected));
        let x0 = -0.4 + width * i as f64;
        hist.draw_series(bars.into_iter().filter(|b| b.1 > 0).map(|(k, v)| {
            let x = k as f64 + x0;
            Rectangle::new([(x, 0.5), (x + width, v as f64)], color.filled())
        }))
        .map_err(&d)?;
    }
    root.present().map_err(&d)?;
    Ok(())
}

fn run_label(r: &Report) -> String {
    let mut s = r.policy.clone();
    if r.compaction {
        s.push_str(" +compaction");
    }
    if r.balloon {
        s.push_str(" +balloon");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::sim::{simulate, Config};
    use crate::placement::size::GIB;
    use crate::placement::{ClusterSpec, VmRequest, Workload};

    #[test]
    fn writes_an_svg_with_both_panels() {
        let w = Workload {
            source: "t".into(),
            vms: (0..20)
                .map(|i| VmRequest {
                    arrival: i,
                    lifetime: Some(5),
                    memory: GIB,
                })
                .collect(),
            start: 0,
            end: 40,
        };
        let spec = ClusterSpec {
            hosts: 1,
            host_memory: 4 * GIB,
            reserved: 0,
            align: GIB,
            bad_pages_per_host: 0,
            seed: 1,
        };
        let r = simulate(&w, &spec, Config::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.svg");
        write_svg(&p, &[r]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Fragmentation") && svg.contains("segments per VM"));
        assert!(svg.contains("first-fit"), "the legend names the run");
        assert!(matches!(write_svg(&p, &[]), Err(Error::Empty(_))));
        assert!(write_svg(
            &dir.path().join("no/such/dir.svg"),
            &[simulate(&w, &spec, Config::default()).unwrap()]
        )
        .is_err());
    }
}
